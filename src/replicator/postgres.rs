//! The mirror in PostgreSQL. Each part of a batch is one set-based statement over arrays
//! (`UNNEST`, `= ANY`), so a batch costs a handful of round trips whatever its size.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use super::decode::{self, ATTEMPT_COLUMNS};
use super::rows::{AttemptsRow, Batch, MirrorState};
use super::schema::{Dialect, Tables, migrator};
use super::{MirrorError, MirrorTuning, Position};

pub struct PgMirror {
    pool: PgPool,
    t: Tables,
    prefix: String,
}

impl PgMirror {
    pub async fn connect(url: &str, prefix: &str, tuning: &MirrorTuning) -> Result<PgMirror, MirrorError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("coreq")
            // A statement the server stalls on fails instead of holding the mirror forever.
            .options([("statement_timeout", tuning.statement_timeout.as_millis())]);
        let pool = PgPoolOptions::new()
            .max_connections(tuning.pool_size)
            .min_connections(0)
            .acquire_timeout(tuning.connect_timeout)
            .idle_timeout(Some(tuning.idle_timeout))
            .connect_with(options)
            .await?;
        Ok(PgMirror {
            pool,
            t: Tables::new(prefix),
            prefix: prefix.to_owned(),
        })
    }

    pub async fn server_version(&self) -> Result<String, MirrorError> {
        let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&self.pool).await?;
        Ok(format!("PostgreSQL {version}"))
    }

    pub async fn migrate(&self) -> Result<(), MirrorError> {
        migrator(Dialect::Postgres, &self.prefix).run(&self.pool).await?;
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
        self.write(&mut tx, batch).await?;
        let sql = format!(
            "UPDATE {} SET lsn = $1, updated_at = $2 WHERE id = 1 AND origin = $3 AND lsn = $4",
            self.t.position
        );
        let moved = sqlx::query(AssertSqlSafe(sql))
            .bind(to)
            .bind(now)
            .bind(at.origin)
            .bind(at.lsn)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            return Err(MirrorError::Moved { expected: at.lsn });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces everything with `batch` (inserts only) at position `at`, in one transaction.
    pub async fn replace_all(&self, batch: &Batch, at: Position, now: i64) -> Result<(), MirrorError> {
        let mut tx = self.pool.begin().await?;
        for table in [&self.t.statuses, &self.t.messages, &self.t.callbacks, &self.t.settings] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await?;
        }
        self.write(&mut tx, batch).await?;
        let sql = format!(
            "INSERT INTO {} (id, origin, lsn, updated_at) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET origin = EXCLUDED.origin, lsn = EXCLUDED.lsn, updated_at = EXCLUDED.updated_at",
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

    async fn write(&self, tx: &mut Transaction<'_, Postgres>, batch: &Batch) -> Result<(), MirrorError> {
        let t = &self.t;
        if !batch.deleted_messages.is_empty() {
            for (table, column) in [(&t.statuses, "message_id"), (&t.messages, "id")] {
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE {column} = ANY($1)")))
                    .bind(&batch.deleted_messages)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        if !batch.messages.is_empty() {
            let m = &batch.messages;
            let sql = format!(
                "INSERT INTO {} (id, recipient, body, accepted_at, send_seq, handed_to_gateway) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[]) \
                 ON CONFLICT (id) DO NOTHING",
                t.messages
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(m.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.recipient.as_str()).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.accepted_at).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.send_seq).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.handed_to_gateway).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        if !batch.handed.is_empty() {
            let sql = format!("UPDATE {} SET handed_to_gateway = TRUE WHERE id = ANY($1)", t.messages);
            sqlx::query(AssertSqlSafe(sql))
                .bind(&batch.handed)
                .execute(&mut **tx)
                .await?;
        }
        if !batch.statuses.is_empty() {
            let s = &batch.statuses;
            let sql = format!(
                "INSERT INTO {} (message_id, status, at, errors) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[]) \
                 ON CONFLICT (message_id, status) DO NOTHING",
                t.statuses
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(s.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.at).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.errors.as_deref()).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        if !batch.deleted_callbacks.is_empty() {
            let sql = format!("DELETE FROM {} WHERE seq = ANY($1)", t.callbacks);
            sqlx::query(AssertSqlSafe(sql))
                .bind(&batch.deleted_callbacks)
                .execute(&mut **tx)
                .await?;
        }
        if !batch.callbacks.is_empty() {
            let c = &batch.callbacks;
            let sql = format!(
                "INSERT INTO {} (seq, enqueued_at, body, failures, last_error, last_attempt_at, next_attempt_at) \
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::int8[]) \
                 ON CONFLICT (seq) DO NOTHING",
                t.callbacks
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(c.iter().map(|r| r.seq).collect::<Vec<_>>())
                .bind(c.iter().map(|r| r.enqueued_at).collect::<Vec<_>>())
                .bind(c.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
                .bind(c.iter().map(|r| r.attempts.failures).collect::<Vec<_>>())
                .bind(c.iter().map(|r| r.attempts.last_error.as_deref()).collect::<Vec<_>>())
                .bind(c.iter().map(|r| r.attempts.last_attempt_at).collect::<Vec<_>>())
                .bind(c.iter().map(|r| r.attempts.next_attempt_at).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        if !batch.attempts.is_empty() {
            let a = &batch.attempts;
            let sql = format!(
                "UPDATE {} AS c SET failures = v.failures, last_error = v.last_error, \
                 last_attempt_at = v.last_attempt_at, next_attempt_at = v.next_attempt_at \
                 FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::int8[]) \
                 AS v(seq, failures, last_error, last_attempt_at, next_attempt_at) WHERE c.seq = v.seq",
                t.callbacks
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(a.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
                .bind(a.iter().map(|(_, r)| r.failures).collect::<Vec<_>>())
                .bind(a.iter().map(|(_, r)| r.last_error.as_deref()).collect::<Vec<_>>())
                .bind(a.iter().map(|(_, r)| r.last_attempt_at).collect::<Vec<_>>())
                .bind(a.iter().map(|(_, r)| r.next_attempt_at).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        if !batch.deleted_settings.is_empty() {
            let sql = format!("DELETE FROM {} WHERE name = ANY($1)", t.settings);
            sqlx::query(AssertSqlSafe(sql))
                .bind(&batch.deleted_settings)
                .execute(&mut **tx)
                .await?;
        }
        if !batch.settings.is_empty() {
            let s = &batch.settings;
            let sql = format!(
                "INSERT INTO {} (name, value) SELECT * FROM UNNEST($1::text[], $2::text[]) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                t.settings
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(s.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
                .bind(s.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The attempts of every mirrored callback with a seq below `below`.
    pub async fn attempts_below(&self, below: i64) -> Result<Vec<(i64, AttemptsRow)>, MirrorError> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM {} WHERE seq < $1", self.t.callbacks);
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
