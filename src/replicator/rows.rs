//! The mirror's rows, and what a run of WAL records does to them.
//!
//! A [`Batch`] is the net effect of consecutive records on each row: later records on the same
//! key replace or amend earlier ones, so a batch touches each row a bounded number of times
//! and the engines can write it with a few set-based statements. Applying a batch is
//! idempotent: inserts keep a row that is already there, updates and deletes carry absolute
//! values (the same rule as `Change` itself).
//!
//! A row may already exist, holding a *later* state, when a batch inserts it: a rebuild reads
//! the local state after its position, and the start-up correction writes current attempts.
//! So an update is never only folded into its batch's insert (the insert would be skipped and
//! the update lost): it is kept as an update too, and updates run after inserts.
//!
//! [`MirrorState`] is the whole mirrored state (what `mirror verify` compares and a resync
//! writes); the local store reads into the same shape.

use std::collections::{BTreeMap, BTreeSet};

use coreq_storage::{Attempts, Change, Message, PendingCallback, StatusEntry, Store};
use coreq_wal::Lsn;

use super::MirrorError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub id: String,
    pub recipient: String,
    pub body: String,
    pub accepted_at: i64,
    pub send_seq: i64,
    pub handed_to_gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub message_id: String,
    pub status: String,
    pub at: i64,
    pub errors: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRow {
    pub seq: i64,
    pub enqueued_at: i64,
    pub body: String,
    pub attempts: AttemptsRow,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptsRow {
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub next_attempt_at: Option<i64>,
}

/// Everything the mirror holds besides its position, keyed as in the tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorState {
    pub messages: BTreeMap<String, MessageRow>,
    pub statuses: BTreeMap<(String, String), StatusRow>,
    pub callbacks: BTreeMap<i64, CallbackRow>,
    pub settings: BTreeMap<String, String>,
}

/// The net effect of a run of records, in the order the engines write it, table by table:
/// deletes, then inserts (kept if present), then updates (which may name a row inserted just
/// before: see the module doc).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub deleted_messages: Vec<String>,
    pub messages: Vec<MessageRow>,
    pub handed: Vec<String>,
    pub statuses: Vec<StatusRow>,
    pub deleted_callbacks: Vec<i64>,
    pub callbacks: Vec<CallbackRow>,
    pub attempts: Vec<(i64, AttemptsRow)>,
    pub deleted_settings: Vec<String>,
    pub settings: Vec<(String, String)>,
}

enum Op<Row> {
    Insert(Row),
    Delete,
}

/// Folds records into per-key operations (see [`Batch`]).
#[derive(Default)]
pub struct Folder {
    messages: BTreeMap<String, Op<MessageRow>>,
    handed: BTreeSet<String>,
    statuses: BTreeMap<(String, String), StatusRow>,
    callbacks: BTreeMap<i64, Op<CallbackRow>>,
    attempts: BTreeMap<i64, AttemptsRow>,
    settings: BTreeMap<String, Option<String>>,
    /// True once a record that changes mirrored state was folded (cursor moves, users and
    /// tokens are not mirrored).
    pub changes_state: bool,
}

impl Folder {
    pub fn fold(&mut self, change: &Change) {
        change.for_each_leaf(&mut |leaf| self.fold_leaf(leaf));
    }

    fn fold_leaf(&mut self, change: &Change) {
        match change {
            Change::CallbacksEnqueued {
                first_seq,
                enqueued_at,
                bodies,
            } => {
                for (seq, body) in (*first_seq..).zip(bodies) {
                    let row = CallbackRow {
                        seq: sql_int(seq),
                        enqueued_at: sql_int(*enqueued_at),
                        body: text(body),
                        attempts: AttemptsRow::default(),
                    };
                    self.callbacks.insert(row.seq, Op::Insert(row));
                }
            }
            Change::CallbackFailed {
                seq,
                failures,
                error,
                at,
                next_attempt_at,
            } => {
                let seq = sql_int(*seq);
                let attempts = attempts_row(&Attempts::failed(*failures, error, *at, *next_attempt_at));
                match self.callbacks.get_mut(&seq) {
                    Some(Op::Delete) => return,
                    Some(Op::Insert(row)) => row.attempts = attempts.clone(),
                    None => {}
                }
                self.attempts.insert(seq, attempts);
            }
            Change::CallbackDelivered { seq } | Change::CallbackDeleted { seq } => {
                self.attempts.remove(&sql_int(*seq));
                self.callbacks.insert(sql_int(*seq), Op::Delete);
            }
            Change::MessageAccepted { message } => {
                for status in &message.statuses {
                    let row = status_row(&message.id, status);
                    self.statuses.insert((row.message_id.clone(), row.status.clone()), row);
                }
                self.messages
                    .insert(message.id.clone(), Op::Insert(message_row(message)));
            }
            Change::MessageHanded { id, .. } => {
                match self.messages.get_mut(id) {
                    Some(Op::Delete) => return,
                    Some(Op::Insert(row)) => row.handed_to_gateway = true,
                    None => {}
                }
                self.handed.insert(id.clone());
            }
            Change::MessageStatus { id, status, at, errors } => {
                if !matches!(self.messages.get(id), Some(Op::Delete)) {
                    // Recorded once: the first record of a status wins, as in the store.
                    self.statuses
                        .entry((id.clone(), status.clone()))
                        .or_insert_with(|| StatusRow {
                            message_id: id.clone(),
                            status: status.clone(),
                            at: sql_int(*at),
                            errors: errors.as_deref().map(text),
                        });
                }
            }
            Change::MessagesDeleted { ids } => {
                for id in ids {
                    self.statuses.retain(|(message, _), _| message != id);
                    self.handed.remove(id);
                    self.messages.insert(id.clone(), Op::Delete);
                }
            }
            Change::SettingsPut { entries } => {
                for (name, value) in entries {
                    self.settings.insert(name.clone(), value.as_deref().map(text));
                }
            }
            Change::UserPut { .. }
            | Change::UserDeleted { .. }
            | Change::TokenPut { .. }
            | Change::TokenRevoked { .. }
            | Change::CursorSet { .. }
            | Change::Together { .. } => return,
        }
        self.changes_state = true;
    }

    pub fn into_batch(self) -> Batch {
        let mut batch = Batch::default();
        for (id, op) in self.messages {
            match op {
                Op::Insert(row) => batch.messages.push(row),
                Op::Delete => batch.deleted_messages.push(id),
            }
        }
        batch.handed = self.handed.into_iter().collect();
        batch.statuses = self.statuses.into_values().collect();
        for (seq, op) in self.callbacks {
            match op {
                Op::Insert(row) => batch.callbacks.push(row),
                Op::Delete => batch.deleted_callbacks.push(seq),
            }
        }
        batch.attempts = self.attempts.into_iter().collect();
        for (name, value) in self.settings {
            match value {
                Some(value) => batch.settings.push((name, value)),
                None => batch.deleted_settings.push(name),
            }
        }
        batch
    }
}

impl Batch {
    /// The inserts that write `state` into empty tables (a resync).
    pub fn inserting(state: MirrorState) -> Batch {
        Batch {
            messages: state.messages.into_values().collect(),
            statuses: state.statuses.into_values().collect(),
            callbacks: state.callbacks.into_values().collect(),
            settings: state.settings.into_iter().collect(),
            ..Batch::default()
        }
    }
}

impl MirrorState {
    /// Reads the local store's mirrored state. Every record up to the store's settled LSN
    /// (read first) is reflected; later records may be too, and applying them again from
    /// that LSN on converges (see the module doc). Blocking: run off the async workers.
    pub fn read_local(store: &Store) -> Result<(Lsn, MirrorState), MirrorError> {
        let settled = store.settled_lsn();
        let mut state = MirrorState::default();
        let mut after: Option<String> = None;
        loop {
            let ids = store.message_ids(after.as_deref(), 1024)?;
            let Some(last) = ids.last().cloned() else { break };
            for id in ids {
                // Deleted since the id was listed: its deletion is a later record.
                let Some(message) = store.message(&id)? else { continue };
                for status in &message.statuses {
                    let row = status_row(&message.id, status);
                    state.statuses.insert((row.message_id.clone(), row.status.clone()), row);
                }
                state.messages.insert(id, message_row(&message));
            }
            after = Some(last);
        }
        let mut after = None;
        loop {
            let page = store.pending_callbacks(after, 1024)?;
            let Some(last) = page.last().map(|c| c.seq) else { break };
            for callback in page {
                let row = callback_row(&callback);
                state.callbacks.insert(row.seq, row);
            }
            after = Some(last);
        }
        for (name, value) in store.settings()? {
            state.settings.insert(name, text(&value));
        }
        Ok((settled, state))
    }
}

pub fn message_row(message: &Message) -> MessageRow {
    MessageRow {
        id: message.id.clone(),
        recipient: message.recipient.clone(),
        body: text(&message.body),
        accepted_at: sql_int(message.accepted_at),
        send_seq: sql_int(message.send_seq),
        handed_to_gateway: message.handed_to_gateway,
    }
}

fn status_row(id: &str, status: &StatusEntry) -> StatusRow {
    StatusRow {
        message_id: id.to_owned(),
        status: status.status.clone(),
        at: sql_int(status.at),
        errors: status.errors.as_deref().map(text),
    }
}

pub fn callback_row(callback: &PendingCallback) -> CallbackRow {
    CallbackRow {
        seq: sql_int(callback.seq),
        enqueued_at: sql_int(callback.enqueued_at),
        body: text(&callback.body),
        attempts: attempts_row(&callback.attempts),
    }
}

fn attempts_row(attempts: &Attempts) -> AttemptsRow {
    AttemptsRow {
        failures: i64::from(attempts.failures),
        last_error: attempts.last_error.clone(),
        last_attempt_at: attempts.last_attempt_at.map(sql_int),
        next_attempt_at: attempts.next_attempt_at.map(sql_int),
    }
}

/// Seqs, LSNs and millisecond times as SQL `BIGINT`. They stay far below 2^63 (a seq per
/// nanosecond would take 292 years), so the conversion saturates only on a corrupt value.
pub fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Bodies, errors and settings are JSON, validated as UTF-8 where they entered coreq; a lossy
/// conversion can only show up as a difference in `mirror verify`, never stop the mirror.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(changes: &[Change]) -> Batch {
        let mut folder = Folder::default();
        for c in changes {
            folder.fold(c);
        }
        folder.into_batch()
    }

    fn message(id: &str) -> Message {
        Message {
            id: id.into(),
            recipient: "123".into(),
            body: b"{}".to_vec(),
            accepted_at: 5,
            send_seq: 1,
            handed_to_gateway: false,
            statuses: Vec::new(),
        }
    }

    #[test]
    fn a_callback_enqueued_and_delivered_in_one_batch_is_only_deleted() {
        let batch = fold(&[
            Change::CallbacksEnqueued {
                first_seq: 7,
                enqueued_at: 1,
                bodies: vec![b"a".to_vec(), b"b".to_vec()],
            },
            Change::CallbackDelivered { seq: 7 },
        ]);
        assert_eq!(batch.deleted_callbacks, vec![7]);
        assert_eq!(batch.callbacks.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn a_failure_after_the_enqueue_amends_the_insert_and_updates_an_existing_row() {
        let batch = fold(&[
            Change::CallbacksEnqueued {
                first_seq: 1,
                enqueued_at: 1,
                bodies: vec![b"a".to_vec()],
            },
            Change::CallbackFailed {
                seq: 1,
                failures: 2,
                error: "500".into(),
                at: 3,
                next_attempt_at: 4,
            },
        ]);
        assert_eq!(batch.callbacks[0].attempts.failures, 2);
        assert_eq!(
            batch.attempts.len(),
            1,
            "the row may exist already (a rebuild read past its position)"
        );
    }

    #[test]
    fn the_latest_failure_of_a_mirrored_callback_is_an_update() {
        let failed = |failures| Change::CallbackFailed {
            seq: 3,
            failures,
            error: "timeout".into(),
            at: 10,
            next_attempt_at: 20,
        };
        let batch = fold(&[failed(1), failed(2)]);
        assert_eq!(batch.attempts.len(), 1);
        assert_eq!(batch.attempts[0].1.failures, 2);
    }

    #[test]
    fn a_deleted_message_takes_its_statuses_along() {
        let batch = fold(&[
            Change::MessageAccepted { message: message("m1") },
            Change::MessageHanded {
                id: "m1".into(),
                send_seq: 1,
            },
            Change::MessageStatus {
                id: "m1".into(),
                status: "sent".into(),
                at: 9,
                errors: None,
            },
            Change::MessagesDeleted { ids: vec!["m1".into()] },
        ]);
        assert_eq!(batch.deleted_messages, vec!["m1".to_owned()]);
        assert!(batch.messages.is_empty() && batch.statuses.is_empty() && batch.handed.is_empty());
    }

    #[test]
    fn handing_over_a_message_in_its_batch_sets_the_flag_on_the_insert_and_on_an_existing_row() {
        let batch = fold(&[
            Change::MessageAccepted { message: message("m1") },
            Change::MessageHanded {
                id: "m1".into(),
                send_seq: 1,
            },
        ]);
        assert!(batch.messages[0].handed_to_gateway);
        assert_eq!(batch.handed, vec!["m1".to_owned()], "the row may exist already");
    }

    #[test]
    fn the_first_record_of_a_status_wins() {
        let status = |at| Change::MessageStatus {
            id: "m1".into(),
            status: "read".into(),
            at,
            errors: None,
        };
        let batch = fold(&[status(1), status(2)]);
        assert_eq!(batch.statuses.len(), 1);
        assert_eq!(batch.statuses[0].at, 1);
    }

    #[test]
    fn the_last_write_of_a_setting_wins_and_none_deletes_it() {
        let put = |value: Option<&str>| Change::SettingsPut {
            entries: vec![("webhooks".into(), value.map(|v| v.as_bytes().to_vec()))],
        };
        assert_eq!(
            fold(&[put(Some("1")), put(None)]).deleted_settings,
            vec!["webhooks".to_owned()]
        );
        assert_eq!(
            fold(&[put(None), put(Some("2"))]).settings,
            vec![("webhooks".to_owned(), "2".to_owned())]
        );
    }

    #[test]
    fn cursor_moves_and_accounts_are_not_mirrored() {
        let mut folder = Folder::default();
        folder.fold(&Change::CursorSet {
            name: "mirror".into(),
            value: 3,
        });
        folder.fold(&Change::TokenRevoked { hash: vec![1] });
        assert!(!folder.changes_state);
        assert_eq!(folder.into_batch(), Batch::default());
    }

    #[test]
    fn the_parts_of_a_together_record_are_folded() {
        let mut folder = Folder::default();
        folder.fold(&Change::Together {
            changes: vec![
                Change::MessageStatus {
                    id: "m1".into(),
                    status: "sent".into(),
                    at: 1,
                    errors: None,
                },
                Change::CallbacksEnqueued {
                    first_seq: 4,
                    enqueued_at: 1,
                    bodies: vec![b"{}".to_vec()],
                },
            ],
        });
        assert!(folder.changes_state);
        let batch = folder.into_batch();
        assert_eq!((batch.statuses.len(), batch.callbacks.len()), (1, 1));
    }
}
