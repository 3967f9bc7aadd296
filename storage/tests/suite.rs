//! One suite, every backend: each behaviour below runs against the memory store and the sled
//! store (real sled and a real WAL in a temp dir). Recovery behaviours, which only the durable
//! store has, follow at the end.

use coreq_storage::{Role, StatusReport, Store, StoreConfig, Token, User};

/// A store plus whatever keeps its files alive.
struct Fixture {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

fn memory() -> Fixture {
    Fixture {
        store: Store::memory(),
        _dir: None,
    }
}

fn sled() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = Store::open(StoreConfig::new(dir.path())).expect("open store");
    Fixture { store, _dir: Some(dir) }
}

fn user(name: &str, role: Role) -> User {
    User {
        name: name.into(),
        password_hash: "$argon2id$fake".into(),
        role,
        must_change_password: false,
    }
}

fn bodies(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect()
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory_backend { $( #[tokio::test] async fn $name() { super::$name(super::memory()).await } )* }
        mod sled_backend { $( #[tokio::test] async fn $name() { super::$name(super::sled()).await } )* }
    };
}

suite!(
    enqueue_returns_consecutive_seqs_in_order,
    enqueued_callbacks_read_back_from_the_head_in_order,
    window_after_a_seq_starts_after_it,
    delivered_callback_leaves_the_queue,
    deliveries_out_of_order_in_one_batch_leave_exactly_the_rest,
    a_callback_delivered_twice_is_counted_once,
    deliveries_spanning_batches_empty_the_first_and_keep_the_rest,
    a_delivered_callback_takes_no_failure_record,
    failure_is_recorded_with_error_and_next_attempt,
    failure_of_an_unknown_callback_changes_nothing,
    deleted_callback_leaves_the_queue_and_unknown_delete_says_so,
    seqs_are_never_reused_after_delivery,
    empty_batch_is_refused,
    large_batch_is_split_but_keeps_one_seq_per_body,
    accepted_message_is_stored_and_queued_for_sending,
    send_queue_is_in_acceptance_order,
    handed_message_leaves_the_send_queue,
    each_status_is_recorded_once,
    status_of_unknown_message_is_not_recorded,
    a_status_with_a_callback_enqueues_the_callback_with_it,
    a_status_reported_twice_in_one_batch_is_recorded_and_called_back_once,
    a_known_status_enqueues_no_callback,
    deleted_messages_are_gone_from_store_and_queue,
    message_ids_page_in_order,
    settings_are_written_together_and_removed_with_none,
    user_round_trips_and_deleting_revokes_their_tokens_only,
    token_revocation_removes_only_that_token,
    cursors_are_named_values,
);

/// Concurrent enqueues finish (are applied) in any order; a reader of the head must still never
/// see a seq while a lower one is missing, or it would deliver out of order.
macro_rules! concurrent_suite {
    ($($name:ident),* $(,)?) => {
        mod memory_backend_concurrent { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::memory()).await } )* }
        mod sled_backend_concurrent { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::sled()).await } )* }
    };
}

concurrent_suite!(
    concurrent_reports_of_one_status_record_it_once,
    head_of_the_queue_never_shows_a_hole_under_concurrent_enqueues,
    send_queue_never_shows_a_hole_under_concurrent_accepts
);

/// While `writers` run, reads `seqs()` over and over and asserts each read is exactly 1..=n.
async fn assert_gap_free_while(writers: Vec<tokio::task::JoinHandle<()>>, what: &str, seqs: impl Fn() -> Vec<u64>) {
    let mut observations = 0;
    while writers.iter().any(|w| !w.is_finished()) && observations < 100_000 {
        let seen = seqs();
        assert!(
            seen.iter().copied().eq(1..=seen.len() as u64),
            "hole in the {what}: {:?}",
            &seen[..seen.len().min(40)]
        );
        observations += 1;
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
}

async fn head_of_the_queue_never_shows_a_hole_under_concurrent_enqueues(f: Fixture) {
    let store = f.store.clone();
    let writers: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    store.enqueue_callbacks(bodies(3), 0).await.unwrap();
                }
            })
        })
        .collect();
    assert_gap_free_while(writers, "callback queue", || {
        store
            .pending_callbacks(None, 10_000)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect()
    })
    .await;
    assert_eq!(store.pending_callbacks(None, 10_000).unwrap().len(), 32 * 20 * 3);
}

async fn send_queue_never_shows_a_hole_under_concurrent_accepts(f: Fixture) {
    let store = f.store.clone();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    store
                        .accept_message(format!("m-{w}-{i}"), "1".into(), vec![], 0)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    assert_gap_free_while(writers, "send queue", || {
        store
            .send_queue(None, 10_000)
            .unwrap()
            .iter()
            .map(|m| m.send_seq)
            .collect()
    })
    .await;
    assert_eq!(store.send_queue_len(), 32 * 20);
}

async fn enqueue_returns_consecutive_seqs_in_order(f: Fixture) {
    let a = f.store.enqueue_callbacks(bodies(3), 10).await.unwrap();
    let b = f.store.enqueue_callbacks(bodies(2), 11).await.unwrap();
    assert_eq!(a, vec![1, 2, 3]);
    assert_eq!(b, vec![4, 5]);
}

async fn enqueued_callbacks_read_back_from_the_head_in_order(f: Fixture) {
    f.store.enqueue_callbacks(bodies(5), 42).await.unwrap();
    let window = f.store.pending_callbacks(None, 3).unwrap();
    assert_eq!(window.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(window[0].body, b"{\"n\":0}");
    assert_eq!(window[0].enqueued_at, 42);
    assert_eq!(window[0].attempts.failures, 0);
    assert_eq!(f.store.pending_callback_count(), 5);
}

async fn window_after_a_seq_starts_after_it(f: Fixture) {
    f.store.enqueue_callbacks(bodies(5), 0).await.unwrap();
    let window = f.store.pending_callbacks(Some(3), 10).unwrap();
    assert_eq!(window.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![4, 5]);
}

async fn delivered_callback_leaves_the_queue(f: Fixture) {
    f.store.enqueue_callbacks(bodies(3), 0).await.unwrap();
    f.store.mark_delivered_lazy(2).unwrap();
    let seqs: Vec<_> = f
        .store
        .pending_callbacks(None, 10)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![1, 3]);
    assert_eq!(f.store.pending_callback_count(), 2);
    assert!(f.store.pending_callback(2).unwrap().is_none());
}

fn pending_seqs(store: &Store, after: Option<u64>) -> Vec<u64> {
    store
        .pending_callbacks(after, 100)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect()
}

async fn deliveries_out_of_order_in_one_batch_leave_exactly_the_rest(f: Fixture) {
    f.store.enqueue_callbacks(bodies(10), 0).await.unwrap();
    f.store.mark_all_delivered_lazy(&[7, 2, 9]).unwrap();
    assert_eq!(pending_seqs(&f.store, None), vec![1, 3, 4, 5, 6, 8, 10]);
    assert_eq!(pending_seqs(&f.store, Some(2)), vec![3, 4, 5, 6, 8, 10]);
    assert_eq!(pending_seqs(&f.store, Some(6)), vec![8, 10]);
    assert_eq!(f.store.pending_callback_count(), 7);
    assert!(f.store.pending_callback(7).unwrap().is_none());
    assert_eq!(f.store.pending_callback(8).unwrap().unwrap().body, b"{\"n\":7}");
}

async fn a_callback_delivered_twice_is_counted_once(f: Fixture) {
    f.store.enqueue_callbacks(bodies(3), 0).await.unwrap();
    f.store.mark_all_delivered_lazy(&[2, 2]).unwrap();
    f.store.mark_delivered_lazy(2).unwrap();
    assert_eq!(f.store.pending_callback_count(), 2);
    assert_eq!(pending_seqs(&f.store, None), vec![1, 3]);
}

async fn deliveries_spanning_batches_empty_the_first_and_keep_the_rest(f: Fixture) {
    f.store.enqueue_callbacks(bodies(3), 0).await.unwrap();
    f.store.enqueue_callbacks(bodies(3), 0).await.unwrap();
    f.store.mark_all_delivered_lazy(&[3, 1, 5, 2]).unwrap();
    assert_eq!(pending_seqs(&f.store, None), vec![4, 6]);
    assert_eq!(f.store.pending_callback_count(), 2);
    f.store.mark_all_delivered_lazy(&[4, 6]).unwrap();
    assert_eq!(pending_seqs(&f.store, None), Vec::<u64>::new());
    assert_eq!(f.store.pending_callback_count(), 0);
}

async fn a_delivered_callback_takes_no_failure_record(f: Fixture) {
    f.store.enqueue_callbacks(bodies(2), 0).await.unwrap();
    f.store.mark_delivered_lazy(1).unwrap();
    f.store.record_failure_lazy(1, 1, "late".into(), 1, 2).unwrap();
    assert!(f.store.pending_callback(1).unwrap().is_none());
    assert_eq!(f.store.pending_callback_count(), 1);
}

async fn failure_is_recorded_with_error_and_next_attempt(f: Fixture) {
    f.store.enqueue_callbacks(bodies(1), 0).await.unwrap();
    f.store.record_failure_lazy(1, 2, "HTTP 500".into(), 100, 6100).unwrap();
    let cb = f.store.pending_callback(1).unwrap().unwrap();
    assert_eq!(cb.attempts.failures, 2);
    assert_eq!(cb.attempts.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(cb.attempts.last_attempt_at, Some(100));
    assert_eq!(cb.attempts.next_attempt_at, Some(6100));
    assert_eq!(cb.body, b"{\"n\":0}", "recording a failure keeps the body");
}

async fn failure_of_an_unknown_callback_changes_nothing(f: Fixture) {
    f.store.enqueue_callbacks(bodies(1), 0).await.unwrap();
    f.store.record_failure_lazy(9, 1, "x".into(), 1, 2).unwrap();
    assert!(f.store.pending_callback(9).unwrap().is_none());
    assert_eq!(f.store.pending_callback_count(), 1);
}

async fn deleted_callback_leaves_the_queue_and_unknown_delete_says_so(f: Fixture) {
    f.store.enqueue_callbacks(bodies(2), 0).await.unwrap();
    assert!(f.store.delete_callback(1).await.unwrap());
    assert!(!f.store.delete_callback(1).await.unwrap());
    assert_eq!(f.store.pending_callbacks(None, 10).unwrap().len(), 1);
}

async fn seqs_are_never_reused_after_delivery(f: Fixture) {
    let first = f.store.enqueue_callbacks(bodies(2), 0).await.unwrap();
    for seq in first {
        f.store.mark_delivered_lazy(seq).unwrap();
    }
    assert_eq!(f.store.enqueue_callbacks(bodies(1), 0).await.unwrap(), vec![3]);
}

async fn empty_batch_is_refused(f: Fixture) {
    assert!(f.store.enqueue_callbacks(Vec::new(), 0).await.is_err());
    assert_eq!(f.store.pending_callback_count(), 0);
}

async fn large_batch_is_split_but_keeps_one_seq_per_body(f: Fixture) {
    let big: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 256 << 10]).collect();
    let seqs = f.store.enqueue_callbacks(big, 0).await.unwrap();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    let window = f.store.pending_callbacks(None, 100).unwrap();
    assert_eq!(window.len(), 40);
    assert!(
        window
            .iter()
            .all(|c| c.body.len() == 256 << 10 && c.body[0] == (c.seq - 1) as u8)
    );
}

async fn accepted_message_is_stored_and_queued_for_sending(f: Fixture) {
    let m = f
        .store
        .accept_message("m1".into(), "15551234".into(), b"{}".to_vec(), 7)
        .await
        .unwrap();
    assert_eq!(m.send_seq, 1);
    let stored = f.store.message("m1").unwrap().unwrap();
    assert_eq!(stored, m);
    assert!(!stored.handed_to_gateway);
    assert_eq!(f.store.send_queue(None, 10).unwrap(), vec![m]);
    assert_eq!(f.store.send_queue_len(), 1);
    assert_eq!(f.store.message_count(), 1);
}

async fn send_queue_is_in_acceptance_order(f: Fixture) {
    for id in ["z", "a", "m"] {
        f.store.accept_message(id.into(), "1".into(), vec![], 0).await.unwrap();
    }
    let ids: Vec<_> = f
        .store
        .send_queue(None, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec!["z", "a", "m"]);
    let after_first: Vec<_> = f
        .store
        .send_queue(Some(1), 10)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(after_first, vec!["a", "m"]);
}

async fn handed_message_leaves_the_send_queue(f: Fixture) {
    let m = f
        .store
        .accept_message("m1".into(), "1".into(), vec![], 0)
        .await
        .unwrap();
    f.store.mark_handed("m1", m.send_seq).await.unwrap();
    assert!(f.store.send_queue(None, 10).unwrap().is_empty());
    assert_eq!(f.store.send_queue_len(), 0);
    assert!(f.store.message("m1").unwrap().unwrap().handed_to_gateway);
}

fn report(id: &str, status: &str, at: u64, callback: Option<&str>) -> StatusReport {
    StatusReport {
        id: id.into(),
        status: status.into(),
        at,
        errors: None,
        callback: callback.map(|c| c.as_bytes().to_vec()),
    }
}

/// Records one status without a callback; true if it was new.
async fn record(store: &Store, id: &str, status: &str, at: u64) -> bool {
    !store
        .record_statuses(vec![report(id, status, at, None)], at)
        .await
        .unwrap()
        .is_empty()
}

async fn each_status_is_recorded_once(f: Fixture) {
    f.store
        .accept_message("m1".into(), "1".into(), vec![], 0)
        .await
        .unwrap();
    assert!(record(&f.store, "m1", "sent", 5).await);
    assert!(!record(&f.store, "m1", "sent", 6).await);
    assert!(record(&f.store, "m1", "delivered", 7).await);
    let statuses: Vec<_> = f
        .store
        .message("m1")
        .unwrap()
        .unwrap()
        .statuses
        .into_iter()
        .map(|s| (s.status, s.at))
        .collect();
    assert_eq!(statuses, vec![("sent".to_string(), 5), ("delivered".to_string(), 7)]);
}

async fn status_of_unknown_message_is_not_recorded(f: Fixture) {
    assert!(!record(&f.store, "nope", "sent", 1).await);
    assert!(f.store.message("nope").unwrap().is_none());
}

async fn a_status_with_a_callback_enqueues_the_callback_with_it(f: Fixture) {
    f.store
        .accept_message("m1".into(), "1".into(), vec![], 0)
        .await
        .unwrap();
    let recorded = f
        .store
        .record_statuses(vec![report("m1", "sent", 5, Some("{\"s\":1}"))], 9)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    let pending = f.store.pending_callbacks(None, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(Some(pending[0].seq), recorded[0].callback_seq);
    assert_eq!(pending[0].body, b"{\"s\":1}");
    assert_eq!(pending[0].enqueued_at, 9);
}

async fn a_status_reported_twice_in_one_batch_is_recorded_and_called_back_once(f: Fixture) {
    f.store
        .accept_message("m1".into(), "1".into(), vec![], 0)
        .await
        .unwrap();
    let recorded = f
        .store
        .record_statuses(
            vec![
                report("m1", "sent", 5, Some("{}")),
                report("m1", "sent", 6, Some("{}")),
                report("m1", "delivered", 7, Some("{}")),
            ],
            9,
        )
        .await
        .unwrap();
    let statuses: Vec<_> = recorded.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["sent", "delivered"]);
    assert_eq!(f.store.pending_callback_count(), 2);
}

async fn a_known_status_enqueues_no_callback(f: Fixture) {
    f.store
        .accept_message("m1".into(), "1".into(), vec![], 0)
        .await
        .unwrap();
    assert!(record(&f.store, "m1", "sent", 5).await);
    let again = f
        .store
        .record_statuses(vec![report("m1", "sent", 6, Some("{}"))], 9)
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(f.store.pending_callback_count(), 0);
}

async fn deleted_messages_are_gone_from_store_and_queue(f: Fixture) {
    f.store.accept_message("a".into(), "1".into(), vec![], 0).await.unwrap();
    f.store.accept_message("b".into(), "1".into(), vec![], 0).await.unwrap();
    f.store.delete_messages(vec!["a".into()]).await.unwrap();
    assert!(f.store.message("a").unwrap().is_none());
    assert_eq!(f.store.message_count(), 1);
    let ids: Vec<_> = f
        .store
        .send_queue(None, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec!["b"]);
}

async fn message_ids_page_in_order(f: Fixture) {
    for id in ["c", "a", "b"] {
        f.store.accept_message(id.into(), "1".into(), vec![], 0).await.unwrap();
    }
    assert_eq!(f.store.message_ids(None, 2).unwrap(), vec!["a", "b"]);
    assert_eq!(f.store.message_ids(Some("b"), 2).unwrap(), vec!["c"]);
}

async fn settings_are_written_together_and_removed_with_none(f: Fixture) {
    f.store
        .put_settings(vec![
            ("a".into(), Some(b"1".to_vec())),
            ("b".into(), Some(b"2".to_vec())),
        ])
        .await
        .unwrap();
    f.store
        .put_settings(vec![("a".into(), None), ("c".into(), Some(b"3".to_vec()))])
        .await
        .unwrap();
    assert_eq!(f.store.setting("a").unwrap(), None);
    assert_eq!(
        f.store.settings().unwrap(),
        vec![("b".to_string(), b"2".to_vec()), ("c".to_string(), b"3".to_vec())]
    );
}

async fn user_round_trips_and_deleting_revokes_their_tokens_only(f: Fixture) {
    f.store.put_user(user("alice", Role::Admin)).await.unwrap();
    f.store.put_user(user("bob", Role::User)).await.unwrap();
    f.store
        .put_token(Token {
            hash: b"t-alice".to_vec(),
            user: "alice".into(),
            expires_at: 9,
        })
        .await
        .unwrap();
    f.store
        .put_token(Token {
            hash: b"t-bob".to_vec(),
            user: "bob".into(),
            expires_at: 9,
        })
        .await
        .unwrap();
    assert_eq!(f.store.user("bob").unwrap(), Some(user("bob", Role::User)));
    f.store.delete_user("bob").await.unwrap();
    assert_eq!(f.store.user("bob").unwrap(), None);
    assert_eq!(f.store.token(b"t-bob").unwrap(), None);
    assert!(f.store.token(b"t-alice").unwrap().is_some());
    assert_eq!(f.store.users().unwrap().len(), 1);
}

async fn token_revocation_removes_only_that_token(f: Fixture) {
    for t in [b"one".to_vec(), b"two".to_vec()] {
        f.store
            .put_token(Token {
                hash: t,
                user: "alice".into(),
                expires_at: 9,
            })
            .await
            .unwrap();
    }
    f.store.revoke_token(b"one".to_vec()).await.unwrap();
    assert!(f.store.token(b"one").unwrap().is_none());
    assert!(f.store.token(b"two").unwrap().is_some());
}

async fn cursors_are_named_values(f: Fixture) {
    assert_eq!(f.store.cursor("mirror").unwrap(), None);
    f.store.set_cursor("mirror", 41).await.unwrap();
    f.store.set_cursor("mirror", 42).await.unwrap();
    assert_eq!(f.store.cursor("mirror").unwrap(), Some(42));
}

// ---- recovery: the durable store only ---------------------------------------------------------

fn reopen(dir: &std::path::Path) -> (Store, coreq_storage::RecoveryReport) {
    Store::open(StoreConfig::new(dir)).expect("reopen")
}

#[tokio::test]
async fn state_is_rebuilt_from_the_wal_alone_when_sled_is_lost_before_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = reopen(dir.path());
        store.enqueue_callbacks(bodies(3), 1).await.unwrap();
        store
            .put_settings(vec![("k".into(), Some(b"v".to_vec()))])
            .await
            .unwrap();
        store.accept_message("m".into(), "1".into(), vec![], 0).await.unwrap();
        store.mark_delivered_lazy(2).unwrap();
    }
    // Only the WAL is left: the state must be exactly its fold.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let (store, report) = reopen(dir.path());
    assert_eq!(report.checkpoint_lsn, 0);
    assert_eq!(report.replayed, 4);
    let seqs: Vec<_> = store
        .pending_callbacks(None, 10)
        .unwrap()
        .into_iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![1, 3]);
    assert_eq!(store.setting("k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.send_queue_len(), 1);
    assert_eq!(store.enqueue_callbacks(bodies(1), 0).await.unwrap(), vec![4]);
}

async fn concurrent_reports_of_one_status_record_it_once(f: Fixture) {
    for i in 0..20 {
        let id = format!("m{i}");
        f.store.accept_message(id.clone(), "1".into(), vec![], 0).await.unwrap();
        let reporters: Vec<_> = (0..4)
            .map(|_| {
                let (store, id) = (f.store.clone(), id.clone());
                tokio::spawn(async move {
                    store
                        .record_statuses(vec![report(&id, "sent", 1, Some("{}"))], 1)
                        .await
                        .unwrap()
                        .len()
                })
            })
            .collect();
        let mut recorded = 0;
        for r in reporters {
            recorded += r.await.unwrap();
        }
        assert_eq!(recorded, 1, "{id}");
    }
    assert_eq!(f.store.pending_callback_count(), 20);
}

#[tokio::test]
async fn a_status_and_its_callback_are_replayed_together_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = reopen(dir.path());
        store.accept_message("m".into(), "1".into(), vec![], 0).await.unwrap();
        store
            .record_statuses(vec![report("m", "sent", 5, Some("{}"))], 5)
            .await
            .unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let (store, report) = reopen(dir.path());
    assert_eq!(report.replayed, 2);
    assert!(store.message("m").unwrap().unwrap().has_status("sent"));
    assert_eq!(store.pending_callback_count(), 1);
    assert_eq!(store.enqueue_callbacks(bodies(1), 0).await.unwrap(), vec![2]);
}

#[tokio::test]
async fn seqs_continue_after_restart_even_when_everything_was_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = reopen(dir.path());
        for seq in store.enqueue_callbacks(bodies(4), 0).await.unwrap() {
            store.mark_delivered_lazy(seq).unwrap();
        }
        store.checkpoint().unwrap();
    }
    let (store, _) = reopen(dir.path());
    assert_eq!(store.pending_callback_count(), 0);
    assert_eq!(store.enqueue_callbacks(bodies(1), 0).await.unwrap(), vec![5]);
}

#[tokio::test]
async fn partial_deliveries_of_a_batch_survive_restarts_with_and_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = reopen(dir.path());
        store.enqueue_callbacks(bodies(10), 0).await.unwrap();
        store.mark_all_delivered_lazy(&[1, 4]).unwrap();
        store.checkpoint().unwrap();
        // After the checkpoint: replayed from the WAL at the next open.
        store.mark_all_delivered_lazy(&[2, 10]).unwrap();
        store.record_failure_lazy(3, 1, "HTTP 500".into(), 5, 6).unwrap();
    }
    let (store, _) = reopen(dir.path());
    assert_eq!(pending_seqs(&store, None), vec![3, 5, 6, 7, 8, 9]);
    assert_eq!(store.pending_callback_count(), 6);
    assert_eq!(store.pending_callback(3).unwrap().unwrap().attempts.failures, 1);
    store.mark_all_delivered_lazy(&[3, 5, 6, 7, 8, 9]).unwrap();
    drop(store);
    let (store, _) = reopen(dir.path());
    assert_eq!(store.pending_callback_count(), 0);
    assert_eq!(pending_seqs(&store, None), Vec::<u64>::new());
}

#[tokio::test]
async fn attempt_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = reopen(dir.path());
        store.enqueue_callbacks(bodies(1), 0).await.unwrap();
        store.record_failure_lazy(1, 3, "timeout".into(), 10, 9010).unwrap();
        store.checkpoint().unwrap();
    }
    let (store, _) = reopen(dir.path());
    let cb = store.pending_callback(1).unwrap().unwrap();
    assert_eq!((cb.attempts.failures, cb.attempts.next_attempt_at), (3, Some(9010)));
}

#[tokio::test]
async fn checkpoint_lets_the_wal_drop_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.wal.segment_bytes = 4096;
    let (store, _) = Store::open(config.clone()).unwrap();
    for _ in 0..50 {
        store.enqueue_callbacks(bodies(10), 0).await.unwrap();
    }
    let before = store.wal_stats().unwrap();
    let checkpoint = store.checkpoint().unwrap();
    let after = store.wal_stats().unwrap();
    assert_eq!(checkpoint.lsn, before.durable_lsn);
    assert!(after.segments < before.segments, "{before:?} -> {after:?}");
    drop(store);
    let (store, _) = Store::open(config).unwrap();
    assert_eq!(store.pending_callback_count(), 500);
}

#[tokio::test]
async fn a_retaining_cursor_holds_the_wal_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.wal.segment_bytes = 4096;
    config.retaining_cursors = vec!["mirror".into()];
    let (store, _) = Store::open(config).unwrap();
    store.set_cursor("mirror", 1).await.unwrap();
    for _ in 0..50 {
        store.enqueue_callbacks(bodies(10), 0).await.unwrap();
    }
    store.checkpoint().unwrap();
    assert_eq!(
        store.wal_stats().unwrap().first_lsn,
        1,
        "records after the mirror's lsn are kept"
    );
    store
        .set_cursor("mirror", store.wal_stats().unwrap().durable_lsn)
        .await
        .unwrap();
    store.checkpoint().unwrap();
    assert!(store.wal_stats().unwrap().first_lsn > 1);
}

#[tokio::test]
async fn a_lost_wal_is_refused_instead_of_reusing_lsns() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = reopen(dir.path());
        store.enqueue_callbacks(bodies(2), 0).await.unwrap();
        store.checkpoint().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let err = Store::open(StoreConfig::new(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("lost or replaced"), "{err}");
}

#[tokio::test]
async fn memory_store_is_volatile_and_sled_store_is_not() {
    assert!(Store::memory().is_volatile());
    assert!(!sled().store.is_volatile());
}

/// Found by the store crash test: a kill while sled writes its start-up snapshot leaves
/// `snap.<n>.generating`, which sled 0.34.7 then takes for the newest snapshot and refuses to
/// open forever after ("Read corrupted data").
#[tokio::test]
async fn an_unfinished_sled_snapshot_left_by_a_crash_does_not_stop_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = reopen(dir.path());
        store.enqueue_callbacks(bodies(3), 0).await.unwrap();
        store.checkpoint().unwrap();
    }
    let partial = dir.path().join("state/snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&partial, [0u8; 4096]).unwrap();
    let (store, _) = reopen(dir.path());
    assert_eq!(store.pending_callback_count(), 3);
    assert!(!partial.exists());
}

/// sled releases its file lock only when its last handle (and its flusher thread) let go; an
/// open meanwhile waits for it instead of failing (sled reports the held lock as an `Other`
/// error, which an earlier version did not recognise).
#[test]
fn an_open_waits_for_the_previous_handle_to_release_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::new(dir.path());
    let (first, _) = Store::open(config.clone()).unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let reopened = Store::open(config);
    holder.join().unwrap();
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}
