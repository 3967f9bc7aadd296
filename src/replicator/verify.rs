//! `coreq mirror verify`: brings the mirror up to the local WAL, then compares every mirrored
//! row with the local state and lists the differences. The tool for after an incident; run it
//! with the service stopped (it opens the data directory).

use std::collections::BTreeMap;
use std::fmt::Debug;

use coreq_storage::Store;
use coreq_wal::Lsn;

use super::rows::MirrorState;
use super::{MirrorError, MirrorTuning, Replicator, Until};
use crate::config::{Config, DatabaseConfig};

/// What `mirror verify` found.
#[derive(Debug)]
pub struct Report {
    /// The mirror's position after catching up.
    pub mirrored_lsn: Lsn,
    /// Rows compared, by table.
    pub compared: Vec<(&'static str, usize)>,
    /// One line per row that is missing on one side or differs.
    pub differences: Vec<String>,
}

/// Opens the data directory of `config` (recovering it as the service would), then
/// [`verify`]s its mirror. Fails if no mirror database is configured.
pub async fn verify_data_dir(config: &Config) -> Result<Report, MirrorError> {
    let db = config.database.clone().ok_or_else(|| {
        MirrorError::Task("no mirror database is configured (--database-url/COREQ_DATABASE_URL or WA_DB_*)".into())
    })?;
    let store_config = config.store_config();
    let (store, _) = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .map_err(|e| MirrorError::Task(e.to_string()))??;
    let report = verify(store.clone(), db, config.mirror.clone()).await;
    // Keep what catching up wrote (the mirror cursor) without a replay next time.
    tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .map_err(|e| MirrorError::Task(e.to_string()))??;
    report
}

/// Catches the mirror up with `store`, then compares the two.
pub async fn verify(store: Store, db: DatabaseConfig, tuning: MirrorTuning) -> Result<Report, MirrorError> {
    let replicator = Replicator::new(store.clone(), db, tuning);
    // No corrections here: verify reports differences, it does not repair them.
    let (mut failures, mut reconciled) = (0, true);
    let mirror = replicator
        .session(&mut failures, &mut reconciled, Until::CaughtUp)
        .await?;
    let compared = async {
        let local = tokio::task::spawn_blocking(move || MirrorState::read_local(&store))
            .await
            .map_err(|e| MirrorError::Task(e.to_string()))??
            .1;
        let remote = mirror.read_state().await?;
        Ok::<_, MirrorError>((local, remote))
    }
    .await;
    mirror.close().await;
    let (local, remote) = compared?;
    Ok(Report {
        mirrored_lsn: replicator.status().mirrored_lsn.unwrap_or(0),
        compared: vec![
            ("messages", local.messages.len()),
            ("message_statuses", local.statuses.len()),
            ("callbacks", local.callbacks.len()),
            ("settings", local.settings.len()),
        ],
        differences: differences(&local, &remote),
    })
}

/// Every row present on one side only or different, as `table key: what`.
pub fn differences(local: &MirrorState, mirror: &MirrorState) -> Vec<String> {
    let mut out = Vec::new();
    compare("messages", &local.messages, &mirror.messages, &mut out);
    compare("message_statuses", &local.statuses, &mirror.statuses, &mut out);
    compare("callbacks", &local.callbacks, &mirror.callbacks, &mut out);
    compare("settings", &local.settings, &mirror.settings, &mut out);
    out
}

fn compare<K: Ord + Debug, V: PartialEq + Debug>(
    table: &str,
    local: &BTreeMap<K, V>,
    mirror: &BTreeMap<K, V>,
    out: &mut Vec<String>,
) {
    for (key, value) in local {
        match mirror.get(key) {
            None => out.push(format!("{table} {key:?}: missing from the mirror")),
            Some(mirrored) if mirrored != value => out.push(format!(
                "{table} {key:?}: differs: local {} mirror {}",
                shortened(value),
                shortened(mirrored)
            )),
            Some(_) => {}
        }
    }
    for key in mirror.keys().filter(|k| !local.contains_key(k)) {
        out.push(format!("{table} {key:?}: only in the mirror"));
    }
}

/// A row's debug text, cut to a readable length (bodies can be large).
fn shortened(value: &impl Debug) -> String {
    const MAX: usize = 240;
    let text = format!("{value:?}");
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_on_one_side_only_and_changed_rows_are_listed() {
        let mut local = MirrorState::default();
        local.settings.insert("a".into(), "1".into());
        local.settings.insert("b".into(), "2".into());
        let mut mirror = MirrorState::default();
        mirror.settings.insert("b".into(), "3".into());
        mirror.settings.insert("c".into(), "4".into());
        assert_eq!(
            differences(&local, &mirror),
            vec![
                r#"settings "a": missing from the mirror"#.to_owned(),
                r#"settings "b": differs: local "2" mirror "3""#.to_owned(),
                r#"settings "c": only in the mirror"#.to_owned(),
            ]
        );
    }

    #[test]
    fn equal_states_have_no_differences() {
        let mut state = MirrorState::default();
        state.settings.insert("a".into(), "1".into());
        assert!(differences(&state, &state.clone()).is_empty());
    }
}
