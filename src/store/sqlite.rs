//! What only SQLite needs: opening the file (created if missing) with WAL and
//! `synchronous=FULL`, one writer connection and a pool of readers, and its migrations.
//!
//! Every write goes through the pool of one connection and a write transaction opens with
//! `BEGIN IMMEDIATE`, so writers queue in-process instead of failing with SQLITE_BUSY, and a
//! second process (the `keys` command) waits on the busy timeout. Reads use the readers,
//! which WAL lets run beside the writer.

use super::StoreError;
use super::rows::migrator;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "approval_events",
        include_str!("../../migrations/sqlite/0002_approval_events.sql"),
    ),
    (
        3,
        "indexes",
        include_str!("../../migrations/sqlite/0003_indexes.sql"),
    ),
];

/// Opens (creating if missing) the database at `url` and runs the migrations; the writer
/// and the reader pools.
pub(super) async fn connect(url: &str) -> Result<(SqlitePool, SqlitePool), StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed approval or Save survives a power cut, not just a crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    migrator(MIGRATIONS).run(&writer).await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options.read_only(true))
        .await?;
    Ok((writer, reader))
}
