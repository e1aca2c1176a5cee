//! What only SQLite needs: opening the file (created if missing) with WAL and
//! `synchronous=FULL`, one writer connection and a pool of readers, and its migrations.
//!
//! Every write goes through the one writer connection, held behind a mutex (not a pool: a
//! pool pings each connection as it is handed back, and on SQLite's single writer that
//! ping would stand between every two writes). A write transaction opens with
//! `BEGIN IMMEDIATE`, so writers queue in-process instead of failing with SQLITE_BUSY, and
//! a second process (the `keys` command) waits on the busy timeout. Reads use the readers,
//! which WAL lets run beside the writer.

use super::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// The one writer connection.
pub(super) type Writer = std::sync::Arc<tokio::sync::Mutex<SqliteConnection>>;

/// Opens (creating if missing) the database at `url` and runs the migrations; the writer
/// and the reader pool.
pub(super) async fn connect(url: &str) -> Result<(Writer, SqlitePool), StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed approval or Save survives a power cut, not just a crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let mut writer = options.connect().await?;
    sqlx::migrate!("migrations/sqlite")
        .run_direct(None, &mut writer, false)
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(4)
        // Connections to a local file do not go stale; the release ping suffices.
        .test_before_acquire(false)
        .connect_with(options.read_only(true))
        .await?;
    Ok((std::sync::Arc::new(tokio::sync::Mutex::new(writer)), reader))
}
