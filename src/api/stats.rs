//! The stats and metrics nodes (spec §6): `GET /v1/stats/app`, `GET /v1/stats/db` and
//! `GET /metrics`, Bearer or Apikey. All three serve the one exporter's text: as Prometheus
//! exposition when `?format=prometheus` is given or the `Accept` header asks for text or
//! OpenMetrics (as Prometheus does), as On-Premises JSON otherwise. They answer during recovery
//! too, with the event metrics only (the levels need the store).

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, json};

use crate::api::auth::Monitor;
use crate::api::error::ApiError;
use crate::api::{AppState, Services, meta};
use crate::telemetry::catalog::{self, Area, Levels};
use crate::telemetry::exposition;

/// The exposition format we render (metrics-exporter-prometheus writes text format 0.0.4,
/// which Prometheus accepts whatever it prefers).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/stats/app", get(app))
        .route("/v1/stats/db", get(db))
        .route("/metrics", get(all))
}

async fn app(
    state: State<AppState>,
    _: Monitor,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(&state, &[Area::App], query, &headers).await
}

async fn db(
    state: State<AppState>,
    _: Monitor,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(&state, &[Area::Db], query, &headers).await
}

async fn all(
    state: State<AppState>,
    _: Monitor,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(&state, &[Area::App, Area::Db], query, &headers).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Prometheus,
    Json,
}

/// `?format=` decides; without it, an `Accept` naming text/plain or OpenMetrics means text.
fn format(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<Format, ApiError> {
    match query.get("format").map(String::as_str) {
        Some("prometheus") => return Ok(Format::Prometheus),
        Some("json") => return Ok(Format::Json),
        Some(_) => return Err(ApiError::invalid("format", "must be prometheus or json")),
        None => {}
    }
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let wants_text = accept
        .split(',')
        .map(|range| range.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .any(|media| media == "text/plain" || media == "application/openmetrics-text");
    Ok(if wants_text { Format::Prometheus } else { Format::Json })
}

async fn answer(
    state: &AppState,
    areas: &[Area],
    query: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let query: HashMap<String, String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let format = format(&query, headers)?;
    let services = state.services().ok().cloned();
    let text = tokio::task::spawn_blocking(move || {
        let levels = services.as_deref().map(levels);
        catalog::scrape(levels.as_ref())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("scrape task: {e}")))?;
    let families: Vec<_> = exposition::parse(&text)
        .into_iter()
        .filter(|f| catalog::area_of(&f.name).is_some_and(|area| areas.contains(&area)))
        .collect();
    Ok(match format {
        Format::Prometheus => {
            let body: String = families.iter().map(|f| f.text.as_str()).collect::<Vec<_>>().join("\n");
            ([(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT))], body).into_response()
        }
        Format::Json => {
            let mut stats = Map::new();
            for area in areas {
                let share: Vec<_> = families
                    .iter()
                    .filter(|f| catalog::area_of(&f.name) == Some(*area))
                    .cloned()
                    .collect();
                stats.insert(area_name(*area).into(), exposition::to_json(&share));
            }
            Json(json!({ "stats": stats, "meta": meta() })).into_response()
        }
    })
}

fn area_name(area: Area) -> &'static str {
    match area {
        Area::App => "app",
        Area::Db => "db",
    }
}

/// The levels of the answering server.
fn levels(services: &Services) -> Levels {
    let store = &services.store;
    let delivery = &services.delivery;
    let oldest_pending_age_seconds = match delivery.head() {
        Ok(Some(head)) => delivery.now_ms().saturating_sub(head.enqueued_at) as f64 / 1000.0,
        _ => 0.0,
    };
    Levels {
        pending_callbacks: delivery.pending_count(),
        in_flight_callbacks: delivery.in_flight(),
        oldest_pending_age_seconds,
        pending_messages: store.send_queue_len(),
        stored_messages: store.message_count(),
        wal: store.wal_stats(),
        free_space: services.space.free(),
        mirror: services.mirror.as_ref().map(|m| m.status()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn prometheus_scrape_accept_header_selects_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(
            format(&HashMap::new(), &accept(prometheus)).ok(),
            Some(Format::Prometheus)
        );
    }

    #[test]
    fn curl_and_json_clients_get_json() {
        assert_eq!(format(&HashMap::new(), &accept("*/*")).ok(), Some(Format::Json));
        assert_eq!(
            format(&HashMap::new(), &accept("application/json")).ok(),
            Some(Format::Json)
        );
        assert_eq!(format(&HashMap::new(), &HeaderMap::new()).ok(), Some(Format::Json));
    }

    #[test]
    fn the_format_parameter_wins_over_accept() {
        let query = HashMap::from([("format".to_owned(), "prometheus".to_owned())]);
        assert_eq!(
            format(&query, &accept("application/json")).ok(),
            Some(Format::Prometheus)
        );
    }

    #[test]
    fn an_unknown_format_is_refused_naming_the_parameter() {
        let query = HashMap::from([("format".to_owned(), "xml".to_owned())]);
        assert!(matches!(format(&query, &HeaderMap::new()), Err(ApiError::Invalid { field, .. }) if field == "format"));
    }
}
