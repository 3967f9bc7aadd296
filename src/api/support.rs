//! The support node (spec §5): `GET /v1/support`, Bearer only. What a support engineer asks
//! first, in the On-Premises shape, plus coreq's `wal`, `replication` and `callbacks`. Every
//! secret in `env` is replaced by `****`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::{AppState, Services, meta};
use crate::replicator::ReplicationStatus;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/support", get(support))
}

async fn support(State(state): State<AppState>, _caller: Caller) -> Result<Json<Value>, ApiError> {
    let services = state.services()?.clone();
    // statvfs, os-release and the store's head are blocking reads: keep them off the workers.
    let support = tokio::task::spawn_blocking(move || describe(&services))
        .await
        .map_err(|e| ApiError::Internal(format!("support task: {e}")))??;
    Ok(Json(json!({ "support": support, "meta": meta() })))
}

fn describe(services: &Services) -> Result<Value, ApiError> {
    let config = &services.config;
    let settings = services.settings.current()?;
    let free = services.space.free();
    let free_of = |volume: &str| free.iter().find(|(v, _)| *v == volume).map_or(0, |(_, b)| *b);
    let (lc, lg) = locale(&config.environment);
    let (os_name, os_version) = operating_system();
    let mut schema: serde_json::Map<String, Value> = coreq_storage::SCHEMA_VERSIONS
        .iter()
        .map(|(area, version)| ((*area).to_owned(), json!(version)))
        .collect();
    schema.insert("wal".into(), json!(coreq_wal::frame::FORMAT_POSTCARD_V1));
    let mirror = services.mirror.as_ref().map(|m| m.status());
    let mut db_info = vec![
        coreq_storage::sled_state::ENGINE.to_owned(),
        format!("coreq-wal frame format {}", coreq_wal::frame::FORMAT_POSTCARD_V1),
    ];
    if let Some(status) = &mirror {
        schema.insert("mirror".into(), json!(status.schema_version));
        db_info.push(
            status
                .server
                .clone()
                .unwrap_or_else(|| format!("{} (not connected)", status.engine)),
        );
    }
    Ok(json!({
        "context": "healthcheck",
        "db_engine": mirror.as_ref().map_or("SLED", |status| status.engine),
        "db_info": db_info,
        "debug_info": settings.wa_id.as_deref().unwrap_or("unregistered"),
        "description": concat!("coreq ", env!("CARGO_PKG_VERSION")),
        "device_iso8601": OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| OffsetDateTime::now_utc()).format(&Rfc3339).unwrap_or_default(),
        "env": masked_environment(&config.environment),
        "free_space_data": free_of("data"),
        "free_space_logs": free_of("logs"),
        // Media lives under the data directory.
        "free_space_media_incoming": free_of("data"),
        "free_space_media_outgoing": free_of("data"),
        "lc": lc,
        "lg": lg,
        "multi_connect": false,
        "os_name": os_name,
        "os_version": os_version,
        "schema": schema,
        "socket_conn": services.link.get().socket_conn(),
        "version": env!("CARGO_PKG_VERSION"),
        "wal": wal(services),
        "replication": replication(mirror.as_ref()),
        "callbacks": callbacks(services)?,
    }))
}

fn wal(services: &Services) -> Value {
    match services.store.wal_stats() {
        Some(w) => json!({
            "first_lsn": w.first_lsn,
            "last_lsn": w.durable_lsn,
            "next_lsn": w.next_lsn,
            "bytes": w.bytes,
            "segments": w.segments,
            "fsyncs": w.fsyncs,
            "corrupt_records_quarantined": w.quarantined,
        }),
        None => Value::Null,
    }
}

fn replication(status: Option<&ReplicationStatus>) -> Value {
    match status {
        Some(s) => json!({
            "target": s.target,
            "connected": s.connected,
            "mirrored_lsn": s.mirrored_lsn,
            "lag_records": s.lag_records,
            "lag_seconds": s.lag_seconds,
            "last_error": s.last_error,
        }),
        None => {
            json!({ "target": null, "connected": false, "mirrored_lsn": null, "lag_records": null, "lag_seconds": null, "last_error": null })
        }
    }
}

fn callbacks(services: &Services) -> Result<Value, ApiError> {
    let delivery = &services.delivery;
    let head = delivery.head()?;
    let now = delivery.now_ms();
    Ok(json!({
        "pending": delivery.pending_count(),
        "in_flight": delivery.in_flight(),
        "oldest_pending_age_seconds": head.as_ref().map(|h| now.saturating_sub(h.enqueued_at) / 1000),
        "head": head.map(|h| json!({ "id": h.seq.to_string(), "attempts": h.attempts.failures })),
    }))
}

/// `NAME=value` for every `COREQ_*` and `WA_*` variable, sorted, with secrets masked.
pub fn masked_environment(environment: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = environment
        .iter()
        .filter(|(name, _)| name.starts_with("COREQ_") || name.starts_with("WA_"))
        .map(|(name, value)| format!("{name}={}", masked(name, value)))
        .collect();
    out.sort();
    out
}

const SECRET_NAME_PARTS: [&str; 6] = ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "API_KEY"];

fn masked(name: &str, value: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if SECRET_NAME_PARTS.iter().any(|part| upper.contains(part)) {
        return "****".into();
    }
    crate::config::masked_url(value).unwrap_or_else(|| value.to_owned())
}

/// On-Premises `lc`/`lg` from the locale variables: `en_US.UTF-8` → (`en`, `US`); `ZZ` when
/// unknown.
fn locale(environment: &[(String, String)]) -> (String, String) {
    let var = |name: &str| {
        environment
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let locale = var("LC_ALL")
        .or_else(|| var("LC_MESSAGES"))
        .or_else(|| var("LANG"))
        .unwrap_or("");
    let base = locale.split(['.', '@']).next().unwrap_or("");
    let (language, country) = base.split_once('_').unwrap_or((base, ""));
    let valid = |s: &str, lens: &[usize]| lens.contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphabetic());
    (
        if valid(language, &[2]) {
            language.to_ascii_lowercase()
        } else {
            "ZZ".into()
        },
        if valid(country, &[2, 3]) {
            country.to_ascii_uppercase()
        } else {
            "ZZ".into()
        },
    )
}

/// (`<distribution>-<arch>`, distribution version) from `/etc/os-release`, like the
/// On-Premises `ubuntu-x86_64` / `16.04`.
fn operating_system() -> (String, String) {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let distribution = field("ID").unwrap_or_else(|| std::env::consts::OS.to_owned());
    (
        format!("{distribution}-{}", std::env::consts::ARCH),
        field("VERSION_ID").unwrap_or_else(|| "unknown".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn secret_variables_are_masked_by_name() {
        let shown = masked_environment(&env(&[
            ("WA_API_KEY", "abcdefghijklmnop"),
            ("COREQ_ADMIN_PASSWORD", "S3cret!pass"),
            ("WA_DB_PASSWORD", "dbpass"),
            ("COREQ_LISTEN", "127.0.0.1:8080"),
        ]));
        assert_eq!(
            shown,
            [
                "COREQ_ADMIN_PASSWORD=****",
                "COREQ_LISTEN=127.0.0.1:8080",
                "WA_API_KEY=****",
                "WA_DB_PASSWORD=****"
            ]
        );
    }

    #[test]
    fn credentials_and_query_values_inside_urls_are_masked() {
        let shown = masked_environment(&env(&[
            ("COREQ_DATABASE_URL", "postgres://app:hunter2@db.local:5432/coreq"),
            ("COREQ_GATEWAY_URL", "https://gw.local/send?token=t0ps3cret&mode=fast"),
        ]));
        assert_eq!(
            shown,
            [
                "COREQ_DATABASE_URL=postgres://****@db.local:5432/coreq",
                "COREQ_GATEWAY_URL=https://gw.local/send?token=****&mode=****"
            ]
        );
    }

    #[test]
    fn variables_of_other_programs_are_not_shown() {
        assert!(masked_environment(&env(&[("HOME", "/root"), ("LANG", "en_US.UTF-8")])).is_empty());
    }

    #[test]
    fn locale_comes_from_lc_all_then_lang_and_is_zz_when_unknown() {
        assert_eq!(locale(&env(&[("LANG", "pt_BR.UTF-8")])), ("pt".into(), "BR".into()));
        assert_eq!(
            locale(&env(&[("LANG", "pt_BR.UTF-8"), ("LC_ALL", "fr_FR")])),
            ("fr".into(), "FR".into())
        );
        assert_eq!(locale(&env(&[("LANG", "C.UTF-8")])), ("ZZ".into(), "ZZ".into()));
        assert_eq!(locale(&[]), ("ZZ".into(), "ZZ".into()));
    }
}
