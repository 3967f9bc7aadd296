//! Reading mirror rows back, the same for both engines: the `SELECT` lists and the decoding of
//! their columns by position.

use sqlx::{AssertSqlSafe, ColumnIndex, Database, Decode, Executor, IntoArguments, Pool, Row, Type};

use super::MirrorError;
use super::rows::{AttemptsRow, CallbackRow, MessageRow, MirrorState, StatusRow};
use super::schema::Tables;

pub const MESSAGE_COLUMNS: &str = "id, recipient, body, accepted_at, send_seq, handed_to_gateway";
pub const STATUS_COLUMNS: &str = "message_id, status, at, errors";
pub const CALLBACK_COLUMNS: &str = "seq, enqueued_at, body, failures, last_error, last_attempt_at, next_attempt_at";
/// The seq and the attempts of a callback.
pub const ATTEMPT_COLUMNS: &str = "seq, failures, last_error, last_attempt_at, next_attempt_at";

pub fn message<'r, R>(r: &'r R) -> Result<MessageRow, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(MessageRow {
        id: r.try_get(0)?,
        recipient: r.try_get(1)?,
        body: r.try_get(2)?,
        accepted_at: r.try_get(3)?,
        send_seq: r.try_get(4)?,
        handed_to_gateway: r.try_get(5)?,
    })
}

pub fn status<'r, R>(r: &'r R) -> Result<StatusRow, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(StatusRow {
        message_id: r.try_get(0)?,
        status: r.try_get(1)?,
        at: r.try_get(2)?,
        errors: r.try_get(3)?,
    })
}

pub fn callback<'r, R>(r: &'r R) -> Result<CallbackRow, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(CallbackRow {
        seq: r.try_get(0)?,
        enqueued_at: r.try_get(1)?,
        body: r.try_get(2)?,
        attempts: attempts_from(r, 3)?,
    })
}

/// A row of [`ATTEMPT_COLUMNS`].
pub fn attempts<'r, R>(r: &'r R) -> Result<(i64, AttemptsRow), sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok((r.try_get(0)?, attempts_from(r, 1)?))
}

fn attempts_from<'r, R>(r: &'r R, first: usize) -> Result<AttemptsRow, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AttemptsRow {
        failures: r.try_get(first)?,
        last_error: r.try_get(first + 1)?,
        last_attempt_at: r.try_get(first + 2)?,
        next_attempt_at: r.try_get(first + 3)?,
    })
}

/// Everything mirrored in `t` (for `mirror verify`), read the same way on both engines.
pub async fn read_state<DB>(pool: &Pool<DB>, t: &Tables) -> Result<MirrorState, MirrorError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    <DB as Database>::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
{
    let all = |columns: &str, table: &str| sqlx::query::<DB>(AssertSqlSafe(format!("SELECT {columns} FROM {table}")));
    let mut state = MirrorState::default();
    for r in all(MESSAGE_COLUMNS, &t.messages).fetch_all(pool).await? {
        let row = message(&r)?;
        state.messages.insert(row.id.clone(), row);
    }
    for r in all(STATUS_COLUMNS, &t.statuses).fetch_all(pool).await? {
        let row = status(&r)?;
        state.statuses.insert((row.message_id.clone(), row.status.clone()), row);
    }
    for r in all(CALLBACK_COLUMNS, &t.callbacks).fetch_all(pool).await? {
        let row = callback(&r)?;
        state.callbacks.insert(row.seq, row);
    }
    for r in all("name, value", &t.settings).fetch_all(pool).await? {
        state.settings.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(state)
}
