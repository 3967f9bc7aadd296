//! The mirror's schema: the shipped migrations with the configured table prefix, and the
//! table names every statement uses.

use sqlx::migrate::{Migration, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
static MYSQL: Migrator = sqlx::migrate!("./migrations/mysql");

/// The mirror's table names under one prefix (`WA_DB_NAME_PREFIX`, checked at configuration
/// to be letters, digits and `_`, so it is safe inside SQL text).
#[derive(Debug, Clone)]
pub struct Tables {
    pub position: String,
    pub messages: String,
    pub statuses: String,
    pub callbacks: String,
    pub settings: String,
    pub migrations: String,
}

impl Tables {
    pub fn new(prefix: &str) -> Tables {
        let name = |table: &str| format!("{prefix}coreq_{table}");
        Tables {
            position: name("mirror_position"),
            messages: name("messages"),
            statuses: name("message_statuses"),
            callbacks: name("callbacks"),
            settings: name("settings"),
            migrations: name("schema_migrations"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// The migrations of `dialect` with `{prefix}` replaced, recorded in the prefixed migrations
/// table. The checksums are those of the replaced text, the same on every start.
pub fn migrator(dialect: Dialect, prefix: &str) -> Migrator {
    let shipped = match dialect {
        Dialect::Postgres => &POSTGRES,
        Dialect::Mysql => &MYSQL,
    };
    let migrations = shipped
        .iter()
        .map(|m| {
            let sql = m.sql.as_str().replace("{prefix}", prefix);
            Migration::new(
                m.version,
                m.description.clone(),
                m.migration_type,
                AssertSqlSafe(sql).into_sql_str(),
                m.no_tx,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(Tables::new(prefix).migrations);
    migrator
}

/// The newest schema version shipped for `dialect` (what `/v1/support` reports once applied).
pub fn latest_version(dialect: Dialect) -> i64 {
    let shipped = match dialect {
        Dialect::Postgres => &POSTGRES,
        Dialect::Mysql => &MYSQL,
    };
    shipped.iter().map(|m| m.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_every_migration_carries_the_prefix() {
        for dialect in [Dialect::Postgres, Dialect::Mysql] {
            let migrator = migrator(dialect, "wa_");
            assert_eq!(migrator.iter().count(), 5);
            for m in migrator.iter() {
                let sql = m.sql.as_str();
                assert!(sql.contains("CREATE TABLE IF NOT EXISTS wa_coreq_"), "{sql}");
                assert!(!sql.contains("{prefix}"), "{sql}");
            }
        }
    }

    #[test]
    fn both_engines_ship_the_same_versions() {
        let versions = |d| migrator(d, "").iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(Dialect::Postgres), versions(Dialect::Mysql));
        assert_eq!(latest_version(Dialect::Postgres), 5);
    }
}
