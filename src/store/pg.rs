//! What only PostgreSQL has: connecting (with the migrations, once across replicas), the
//! LISTEN/NOTIFY hints between replicas, and the feed of other replicas' approval changes.
//!
//! Several replicas share one database. A Save notifies `toolgate_revisions` with the new
//! revision (delivered at commit) and a key change `toolgate_keys`, so other replicas catch
//! up at once; the change log stays the truth. Approval changes are not notified (NOTIFY
//! takes a database-wide lock at commit): other replicas read the `approval_events` rows by
//! transaction id instead ([`approval_changes`]). Every call is bounded by the query
//! timeout, on the server (`statement_timeout`) and in the store (a lost connection that
//! never answers).

use super::rows::{Cols, approval_from_row, corrupt};
use super::{ApprovalCursor, FeedSnapshot, StoreError, Wakeup};
use crate::policy::Approval;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The channel a Save notifies, with `<revision>@<unix ms> <tenant>` as payload.
pub(super) const REVISIONS_CHANNEL: &str = "toolgate_revisions";

/// The channel a key change notifies (no payload: the cache reloads).
pub(super) const KEYS_CHANNEL: &str = "toolgate_keys";

/// Connection settings for PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// Bound on every query and on waiting for a pooled connection.
    pub query_timeout: Duration,
    pub max_connections: u32,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            query_timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// Connects the pool and runs the migrations (under PostgreSQL's advisory lock, so replicas
/// starting together migrate once); the pool, and how to open a connection of one's own.
pub(super) async fn connect(
    url: &str,
    settings: &PgSettings,
) -> Result<(PgPool, PgConnectOptions), StoreError> {
    let timeout_ms = settings.query_timeout.as_millis().max(1).to_string();
    let options = PgConnectOptions::from_str(url)?
        .application_name("toolgate")
        // JIT off: every statement here is a point query or a short scan, and a generic
        // plan's cost estimate for an open-ended one (the change feed's `xid >= $1`) grows
        // with the table past `jit_above_cost`, so each run compiled it anew, at a cost
        // that grew with the table (`BENCHMARKS.md`, "Approval writes").
        //
        // Custom plans only: a prepared statement's generic plan is chosen once, for the
        // table as it was then, and kept. Chosen while `approvals` was small, a lookup by
        // (tenant, id) went through the (tenant, seq) index and read the tenant's every
        // approval once the table had grown; the change feed's `xid >= $1` scanned the whole
        // table. Planning each statement for its values costs a little CPU per statement and
        // keeps every plan right for the table as it is.
        .options([
            ("statement_timeout", timeout_ms.as_str()),
            ("jit", "off"),
            ("plan_cache_mode", "force_custom_plan"),
        ]);
    // One connection first, alone: the pool retries a failing connect until its timeout
    // and then says only "pool timed out", while the driver's own error says why (refused,
    // no such host, authentication).
    match tokio::time::timeout(
        settings.query_timeout,
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
    )
    .await
    {
        Ok(Ok(first)) => {
            let _ = sqlx::Connection::close(first).await;
        }
        Ok(Err(e)) => return Err(StoreError::Database(e)),
        Err(_) => return Err(StoreError::Timeout(settings.query_timeout)),
    }
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(2))
        // sqlx pings every connection as it is handed back; a second ping as it is handed
        // out would add a round trip to every statement. A connection that died while
        // idle fails one call with UNAVAILABLE (retryable), and is then dropped.
        .test_before_acquire(false)
        .acquire_timeout(settings.query_timeout)
        .connect_with(options.clone())
        .await?;
    tokio::time::timeout(
        settings.query_timeout.max(Duration::from_secs(30)),
        sqlx::migrate!("migrations/postgres").run(&pool),
    )
    .await
    .map_err(|_| StoreError::Timeout(settings.query_timeout))??;
    Ok((pool, options))
}

/// Hints from other replicas, forwarded until the receiver is dropped.
pub(super) fn wakeups(pool: PgPool) -> tokio::sync::mpsc::Receiver<Wakeup> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(forward_notifications(pool, tx));
    rx
}

/// `<revision>@<unix ms> <tenant>`, or `<revision> <tenant>` from an older replica.
fn parse_revision_payload(payload: &str) -> Option<Wakeup> {
    let (head, tenant) = payload.split_once(' ')?;
    let (revision, saved_at) = match head.split_once('@') {
        Some((r, at)) => (r, Some(at.parse().ok()?)),
        None => (head, None),
    };
    Some(Wakeup::Revision {
        tenant: tenant.to_owned(),
        revision: revision.parse().ok()?,
        saved_at,
    })
}

/// Listens on one connection, forwarding hints, until the receiver is dropped. A lost
/// connection is re-established (with backoff) and reported as [`Wakeup::Reconnected`].
async fn forward_notifications(pool: PgPool, tx: tokio::sync::mpsc::Sender<Wakeup>) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([REVISIONS_CHANNEL, KEYS_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot LISTEN; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        backoff = Duration::from_millis(100);
        // Anything committed while not listening is found by the catch-up this triggers.
        if !first && tx.send(Wakeup::Reconnected).await.is_err() {
            return;
        }
        first = false;
        loop {
            let next = tokio::select! {
                n = listener.try_recv() => n,
                () = tx.closed() => return,
            };
            let wakeup = match next {
                Ok(Some(n)) if n.channel() == KEYS_CHANNEL => Wakeup::Keys,
                Ok(Some(n)) => match parse_revision_payload(n.payload()) {
                    Some(w) => w,
                    None => {
                        tracing::warn!(payload = n.payload(), "unreadable revision notification");
                        Wakeup::Reconnected
                    }
                },
                Ok(None) | Err(_) => {
                    tracing::warn!("lost the LISTEN connection; reconnecting");
                    break;
                }
            };
            if tx.send(wakeup).await.is_err() {
                return;
            }
        }
    }
}

/// A page of the change feed: each change as it was made, the approval's head (looked up
/// per event, by its unique index) with that version's state, in the order of
/// `approval_events_by_xid_key`. `$1` the last read's `xmax`, `$2` this replica's origin,
/// `$3` the transactions running at the last read; `$after` narrows it to the rows after
/// the page before.
macro_rules! feed_page {
    ($after:literal) => {
        concat!(
            "SELECT e.xid::text AS xid, e.tenant, e.version, h.seq, h.id, e.state, ",
            "h.integration_id, h.tool_name, h.arguments_json, h.arguments_sha256, ",
            "h.requester_id, h.request_id, e.required_roles, h.created_at, h.expires_at, ",
            "h.created_by_key, h.principal, e.consumed_by_request, e.steps, ",
            "e.created_at AS updated_at ",
            "FROM approval_events e CROSS JOIN LATERAL (SELECT * FROM approvals a ",
            "WHERE a.tenant = e.tenant AND a.id = e.approval_id LIMIT 1) h ",
            "WHERE (e.xid >= $1::text::xid8 OR e.xid = ANY($3::text[]::xid8[])) ",
            "AND e.origin <> $2",
            $after,
            " ORDER BY e.xid, e.tenant, e.approval_id, e.version LIMIT 1000"
        )
    };
}

/// Rows of the change feed read at once (the `LIMIT` of [`feed_page!`]).
const FEED_PAGE: usize = 1000;
const FEED_FIRST_PAGE: &str = feed_page!("");
const FEED_NEXT_PAGE: &str =
    feed_page!(" AND (e.xid, e.tenant, e.approval_id, e.version) > ($4::text::xid8, $5, $6, $7)");

/// Where a feed row stands in `approval_events_by_xid_key`: (xid, tenant, approval, version).
type FeedKey = (String, String, String, i64);

/// The page of the feed after `after` (the first page when `None`).
async fn feed_page(
    tx: &mut sqlx::PgConnection,
    last: &FeedSnapshot,
    origin: &str,
    after: Option<&FeedKey>,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    let query = match after {
        None => sqlx::query(FEED_FIRST_PAGE),
        Some(_) => sqlx::query(FEED_NEXT_PAGE),
    };
    let running: Vec<String> = last.running.iter().map(u64::to_string).collect();
    let mut query = query.bind(last.xmax.to_string()).bind(origin).bind(running);
    if let Some((xid, tenant, id, version)) = after {
        query = query.bind(xid).bind(tenant).bind(id).bind(*version);
    }
    Ok(query.fetch_all(&mut *tx).await?)
}

/// A feed row: its place, its tenant and the approval as that change made it.
fn feed_row(row: &sqlx::postgres::PgRow) -> Result<(FeedKey, String, Approval), StoreError> {
    let xid: String = row.try_get("xid")?;
    let tenant: String = row.try_get("tenant")?;
    let approval = approval_from_row(row)?;
    let key = (
        xid,
        tenant.clone(),
        approval.id.clone(),
        row.int("version")?,
    );
    Ok((key, tenant, approval))
}

/// This transaction's snapshot: its `xmax` and the transactions running below it.
async fn feed_snapshot(tx: &mut sqlx::PgConnection) -> Result<FeedSnapshot, StoreError> {
    let row = sqlx::query(
        "SELECT pg_snapshot_xmax(s)::text AS xmax, \
         ARRAY(SELECT x::text FROM pg_snapshot_xip(s) AS x) AS running \
         FROM pg_current_snapshot() AS s",
    )
    .fetch_one(&mut *tx)
    .await?;
    let xid = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| corrupt("snapshot xid", text))
    };
    let xmax: String = row.try_get("xmax")?;
    let running: Vec<String> = row.try_get("running")?;
    Ok(FeedSnapshot {
        xmax: xid(&xmax)?,
        running: running.iter().map(|x| xid(x)).collect::<Result<_, _>>()?,
    })
}

/// Approvals changed by other replicas since `cursor`: every `approval_events` row that
/// became visible since the cursor's snapshot, less those this replica wrote (it published
/// them itself). See [`ApprovalCursor`].
pub(super) async fn approval_changes(
    pool: &PgPool,
    origin: &str,
    cursor: &mut ApprovalCursor,
) -> Result<Vec<(String, Approval)>, StoreError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    // The statements are planned for the values at hand (the pool plans every statement
    // for its values, see `connect`): a generic plan cannot tell that `xid >= $1` keeps
    // only the newest rows.
    let now = feed_snapshot(&mut tx).await?;
    let mut out = Vec::new();
    if let Some(last) = &cursor.last {
        // Read in pages, each one index range of `approval_events_by_xid_key` starting
        // after the last row of the page before, all in this one snapshot.
        let mut after: Option<FeedKey> = None;
        loop {
            let rows = feed_page(&mut tx, last, origin, after.as_ref()).await?;
            for row in &rows {
                let (key, tenant, approval) = feed_row(row)?;
                out.push((tenant, approval));
                after = Some(key);
            }
            if rows.len() < FEED_PAGE {
                break;
            }
        }
    }
    tx.commit().await?;
    // Moved on only once everything up to `now` is in hand: after an error the next read
    // starts from the same place.
    cursor.last = Some(now);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_payload_parses_tenants_with_spaces_and_refuses_garbage() {
        assert_eq!(
            parse_revision_payload("12@1700000000123 acme corp"),
            Some(Wakeup::Revision {
                tenant: "acme corp".into(),
                revision: 12,
                saved_at: Some(1_700_000_000_123),
            })
        );
        assert_eq!(
            parse_revision_payload("12 acme"),
            Some(Wakeup::Revision {
                tenant: "acme".into(),
                revision: 12,
                saved_at: None,
            })
        );
        assert_eq!(parse_revision_payload("x acme"), None);
        assert_eq!(parse_revision_payload("12@x acme"), None);
        assert_eq!(parse_revision_payload("12"), None);
    }
}
