//! The tables, created or migrated on first use under an advisory lock, so members that
//! start together do not race. Several groups share them, keyed by `grp`.

use super::DbError;
use tokio_postgres::Client;

/// The schema this broker writes. A database with a newer one is refused, not guessed at.
pub const SCHEMA_VERSION: i32 = 1;

/// Table names, from `storage.database.tablePrefix` (validated: `[a-z0-9_]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub prefix: String,
    /// One row per group: `holder`, `epoch`, `expires_at` (database clock), the live's
    /// STOMP address, and `next_id`, the floor of message ids the next live may use.
    pub lease: String,
    /// Persistent messages not acknowledged yet, with the epoch they were written under.
    pub messages: String,
    /// Duplicate-detection ids of stored messages, acknowledged ones too (the newest
    /// `REMEMBERED_MAX` per group).
    pub dedup: String,
    pub schema: String,
}

impl Tables {
    pub fn new(prefix: &str) -> Tables {
        Tables {
            prefix: prefix.to_string(),
            lease: format!("{prefix}_lease"),
            messages: format!("{prefix}_messages"),
            dedup: format!("{prefix}_dedup"),
            schema: format!("{prefix}_schema"),
        }
    }

    fn create(&self) -> String {
        let Tables { lease, messages, dedup, .. } = self;
        format!(
            "CREATE TABLE IF NOT EXISTS {lease} (
                grp text PRIMARY KEY,
                holder text NOT NULL,
                epoch bigint NOT NULL,
                expires_at timestamptz NOT NULL,
                stomp text NOT NULL DEFAULT '',
                next_id bigint NOT NULL DEFAULT 0,
                acquired_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE IF NOT EXISTS {messages} (
                grp text NOT NULL,
                id bigint NOT NULL,
                epoch bigint NOT NULL,
                destination text NOT NULL,
                headers jsonb NOT NULL,
                body bytea NOT NULL,
                PRIMARY KEY (grp, id)
            );
            CREATE TABLE IF NOT EXISTS {dedup} (
                grp text NOT NULL,
                id bigint NOT NULL,
                value text NOT NULL,
                PRIMARY KEY (grp, id)
            );"
        )
    }
}

/// Creates the tables, or checks their version; blocks other members doing the same.
pub async fn migrate(client: &mut Client, tables: &Tables) -> Result<(), DbError> {
    let what = "create or check the database schema";
    let query = |source| DbError::Query { what, source };
    let tx = client.transaction().await.map_err(query)?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&tables.schema]).await.map_err(query)?;
    // `IF NOT EXISTS` on tables that are there already would log a NOTICE.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await.map_err(query)?;
    // Only a missing schema needs the right to create tables: a database prepared by its
    // administrator works with a user that may only read and write.
    let exists: Option<String> =
        tx.query_one("SELECT to_regclass($1)::text", &[&tables.schema]).await.map_err(query)?.get(0);
    if exists.is_none() {
        tx.batch_execute(&format!("CREATE TABLE {} (version integer NOT NULL)", tables.schema)).await.map_err(query)?;
    }
    let found: Option<i32> =
        tx.query_one(&format!("SELECT max(version) FROM {}", tables.schema), &[]).await.map_err(query)?.get(0);
    match found {
        Some(v) if v > SCHEMA_VERSION => return Err(DbError::SchemaTooNew { found: v, known: SCHEMA_VERSION }),
        Some(v) if v == SCHEMA_VERSION => {}
        // Version 1 is the first: nothing to migrate from yet.
        _ => {
            tx.batch_execute(&tables.create()).await.map_err(query)?;
            tx.execute(&format!("DELETE FROM {}", tables.schema), &[]).await.map_err(query)?;
            tx.execute(&format!("INSERT INTO {} (version) VALUES ($1)", tables.schema), &[&SCHEMA_VERSION])
                .await
                .map_err(query)?;
            tracing::info!(version = SCHEMA_VERSION, prefix = %tables.prefix, "database schema created");
        }
    }
    tx.commit().await.map_err(query)
}
