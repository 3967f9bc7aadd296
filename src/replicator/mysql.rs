//! The mirror in MySQL and MariaDB. No array parameters here: inserts and deletes are
//! multi-row statements of up to [`ROWS_PER_STATEMENT`] rows; attempt updates, rare (one per
//! failed webhook call), are one prepared statement each.

use std::str::FromStr;

use sqlx::migrate::MigrateError;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Encode, MySql, QueryBuilder, Transaction, Type};

use super::decode::{self, ATTEMPT_COLUMNS, CALLBACK_COLUMNS, MESSAGE_COLUMNS, STATUS_COLUMNS};
use super::rows::{AttemptsRow, Batch, MirrorState};
use super::schema::{Dialect, Tables, migrator};
use super::{MirrorError, MirrorTuning, Position};

/// Rows per multi-row statement: well under the 65,535 placeholders a statement may hold, and
/// small enough that one statement stays under `max_allowed_packet` with ordinary bodies.
const ROWS_PER_STATEMENT: usize = 256;

pub struct MySqlMirror {
    pool: MySqlPool,
    t: Tables,
    prefix: String,
}

impl MySqlMirror {
    pub async fn connect(url: &str, prefix: &str, tuning: &MirrorTuning) -> Result<MySqlMirror, MirrorError> {
        let options = MySqlConnectOptions::from_str(url)?.charset("utf8mb4");
        let pool = MySqlPoolOptions::new()
            .max_connections(tuning.pool_size)
            .min_connections(0)
            .acquire_timeout(tuning.connect_timeout)
            .idle_timeout(Some(tuning.idle_timeout))
            .connect_with(options)
            .await?;
        Ok(MySqlMirror {
            pool,
            t: Tables::new(prefix),
            prefix: prefix.to_owned(),
        })
    }

    pub async fn server_version(&self) -> Result<String, MirrorError> {
        let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(&self.pool).await?;
        Ok(format!("MySQL {version}"))
    }

    /// Runs the migrations. DDL commits at once here, so a migration cut off half-way stays
    /// marked dirty; ours are re-runnable (`IF NOT EXISTS`), so the mark is cleared and the
    /// migration run again.
    pub async fn migrate(&self) -> Result<(), MirrorError> {
        let migrator = migrator(Dialect::Mysql, &self.prefix);
        match migrator.run(&self.pool).await {
            Err(MigrateError::Dirty(version)) => {
                tracing::warn!(version, "mirror: re-running a migration that was cut off");
                let sql = format!(
                    "DELETE FROM {} WHERE version = ? AND success = FALSE",
                    self.t.migrations
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(version)
                    .execute(&self.pool)
                    .await?;
                migrator.run(&self.pool).await?;
            }
            other => other?,
        }
        Ok(())
    }

    pub async fn position(&self) -> Result<Option<Position>, MirrorError> {
        let sql = format!("SELECT origin, lsn FROM {} WHERE id = 1", self.t.position);
        let row: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(sql)).fetch_optional(&self.pool).await?;
        Ok(row.map(|(origin, lsn)| Position { origin, lsn }))
    }

    /// Applies `batch` and moves the position from `at` to `to`, in one transaction. Fails
    /// with [`MirrorError::Moved`] (and changes nothing) if the position is no longer `at`.
    pub async fn apply(&self, batch: &Batch, at: Position, to: i64, now: i64) -> Result<(), MirrorError> {
        let mut tx = self.pool.begin().await?;
        // Read under a row lock first: two writers then queue instead of racing, and the
        // check does not depend on how the server counts affected rows.
        let sql = format!("SELECT origin, lsn FROM {} WHERE id = 1 FOR UPDATE", self.t.position);
        let found: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(sql)).fetch_optional(&mut *tx).await?;
        if found != Some((at.origin, at.lsn)) {
            return Err(MirrorError::Moved { expected: at.lsn });
        }
        self.write(&mut tx, batch).await?;
        let sql = format!("UPDATE {} SET lsn = ?, updated_at = ? WHERE id = 1", self.t.position);
        sqlx::query(AssertSqlSafe(sql))
            .bind(to)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces everything with `batch` (inserts only) at position `at`, in one transaction.
    pub async fn replace_all(&self, batch: &Batch, at: Position, now: i64) -> Result<(), MirrorError> {
        let mut tx = self.pool.begin().await?;
        // DELETE, not TRUNCATE: TRUNCATE is DDL here and would commit on the spot.
        for table in [&self.t.statuses, &self.t.messages, &self.t.callbacks, &self.t.settings] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await?;
        }
        self.write(&mut tx, batch).await?;
        let sql = format!(
            "INSERT INTO {} (id, origin, lsn, updated_at) VALUES (1, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE origin = VALUES(origin), lsn = VALUES(lsn), updated_at = VALUES(updated_at)",
            self.t.position
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(at.origin)
            .bind(at.lsn)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes corrections (deletes and attempt updates) without moving the position.
    pub async fn correct(&self, batch: &Batch) -> Result<(), MirrorError> {
        let mut tx = self.pool.begin().await?;
        self.write(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write(&self, tx: &mut Transaction<'_, MySql>, batch: &Batch) -> Result<(), MirrorError> {
        let t = &self.t;
        delete_in(tx, &t.statuses, "message_id", &batch.deleted_messages).await?;
        delete_in(tx, &t.messages, "id", &batch.deleted_messages).await?;
        for chunk in batch.messages.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(format!("INSERT INTO {} ({MESSAGE_COLUMNS}) ", t.messages));
            q.push_values(chunk, |mut row, m| {
                row.push_bind(m.id.as_str())
                    .push_bind(m.recipient.as_str())
                    .push_bind(m.body.as_str())
                    .push_bind(m.accepted_at)
                    .push_bind(m.send_seq)
                    .push_bind(m.handed_to_gateway);
            });
            q.push(" ON DUPLICATE KEY UPDATE id = id");
            q.build().persistent(false).execute(&mut **tx).await?;
        }
        for chunk in batch.handed.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(format!(
                "UPDATE {} SET handed_to_gateway = TRUE WHERE id IN (",
                t.messages
            ));
            let mut ids = q.separated(", ");
            for id in chunk {
                ids.push_bind(id.as_str());
            }
            q.push(")");
            q.build().persistent(false).execute(&mut **tx).await?;
        }
        for chunk in batch.statuses.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(format!("INSERT INTO {} ({STATUS_COLUMNS}) ", t.statuses));
            q.push_values(chunk, |mut row, s| {
                row.push_bind(s.message_id.as_str())
                    .push_bind(s.status.as_str())
                    .push_bind(s.at)
                    .push_bind(s.errors.as_deref());
            });
            q.push(" ON DUPLICATE KEY UPDATE status = status");
            q.build().persistent(false).execute(&mut **tx).await?;
        }
        delete_in(tx, &t.callbacks, "seq", &batch.deleted_callbacks).await?;
        for chunk in batch.callbacks.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(format!("INSERT INTO {} ({CALLBACK_COLUMNS}) ", t.callbacks));
            q.push_values(chunk, |mut row, c| {
                row.push_bind(c.seq)
                    .push_bind(c.enqueued_at)
                    .push_bind(c.body.as_str())
                    .push_bind(c.attempts.failures)
                    .push_bind(c.attempts.last_error.as_deref())
                    .push_bind(c.attempts.last_attempt_at)
                    .push_bind(c.attempts.next_attempt_at);
            });
            q.push(" ON DUPLICATE KEY UPDATE seq = seq");
            q.build().persistent(false).execute(&mut **tx).await?;
        }
        let update = format!(
            "UPDATE {} SET failures = ?, last_error = ?, last_attempt_at = ?, next_attempt_at = ? WHERE seq = ?",
            t.callbacks
        );
        for (seq, a) in &batch.attempts {
            sqlx::query(AssertSqlSafe(update.clone()))
                .bind(a.failures)
                .bind(a.last_error.as_deref())
                .bind(a.last_attempt_at)
                .bind(a.next_attempt_at)
                .bind(*seq)
                .execute(&mut **tx)
                .await?;
        }
        delete_in(tx, &t.settings, "name", &batch.deleted_settings).await?;
        for chunk in batch.settings.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(format!("INSERT INTO {} (name, value) ", t.settings));
            q.push_values(chunk, |mut row, (name, value)| {
                row.push_bind(name.as_str()).push_bind(value.as_str());
            });
            q.push(" ON DUPLICATE KEY UPDATE value = VALUES(value)");
            q.build().persistent(false).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The attempts of every mirrored callback with a seq below `below`.
    pub async fn attempts_below(&self, below: i64) -> Result<Vec<(i64, AttemptsRow)>, MirrorError> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM {} WHERE seq < ?", self.t.callbacks);
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(below)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(decode::attempts).collect::<Result<_, _>>()?)
    }

    /// Everything mirrored (for `mirror verify`).
    pub async fn read_state(&self) -> Result<MirrorState, MirrorError> {
        decode::read_state(&self.pool, &self.t).await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `DELETE FROM table WHERE column IN (…)`, a chunk of `keys` at a time.
async fn delete_in<K>(tx: &mut Transaction<'_, MySql>, table: &str, column: &str, keys: &[K]) -> Result<(), MirrorError>
where
    K: for<'k> Encode<'k, MySql> + Type<MySql> + Clone,
{
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(format!("DELETE FROM {table} WHERE {column} IN ("));
        let mut list = q.separated(", ");
        for key in chunk {
            list.push_bind(key.clone());
        }
        q.push(")");
        q.build().persistent(false).execute(&mut **tx).await?;
    }
    Ok(())
}
