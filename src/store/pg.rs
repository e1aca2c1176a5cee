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

use super::rows::{Cols, approval_from_row, corrupt, migrator};
use super::{ApprovalCursor, StoreError, Wakeup};
use crate::policy::Approval;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "approval_events",
        include_str!("../../migrations/postgres/0002_approval_events.sql"),
    ),
    (
        3,
        "indexes",
        include_str!("../../migrations/postgres/0003_indexes.sql"),
    ),
    (
        4,
        "principals",
        include_str!("../../migrations/postgres/0004_principals.sql"),
    ),
];

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
        migrator(MIGRATIONS).run(&pool),
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
/// `approval_events_by_xid_key`. `$1` the frontier, `$2` this replica's origin; `$after`
/// narrows it to the rows after the page before.
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
            "WHERE e.xid >= $1::text::xid8 AND e.origin <> $2",
            $after,
            " ORDER BY e.xid, e.tenant, e.approval_id, e.version LIMIT 1000"
        )
    };
}

/// Rows of the change feed read at once (the `LIMIT` of [`feed_page!`]).
const FEED_PAGE: usize = 1000;
const FEED_FIRST_PAGE: &str = feed_page!("");
const FEED_NEXT_PAGE: &str =
    feed_page!(" AND (e.xid, e.tenant, e.approval_id, e.version) > ($3::text::xid8, $4, $5, $6)");

/// Where a feed row stands in `approval_events_by_xid_key`: (xid, tenant, approval, version).
type FeedKey = (String, String, String, i64);

/// The page of the feed after `after` (the first page when `None`).
async fn feed_page(
    tx: &mut sqlx::PgConnection,
    frontier: u64,
    origin: &str,
    after: Option<&FeedKey>,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    let query = match after {
        None => sqlx::query(FEED_FIRST_PAGE),
        Some(_) => sqlx::query(FEED_NEXT_PAGE),
    };
    let mut query = query.bind(frontier.to_string()).bind(origin);
    if let Some((xid, tenant, id, version)) = after {
        query = query.bind(xid).bind(tenant).bind(id).bind(*version);
    }
    Ok(query.fetch_all(&mut *tx).await?)
}

/// A feed row: its transaction id, its place, its tenant and the approval as that change
/// made it.
fn feed_row(row: &sqlx::postgres::PgRow) -> Result<(u64, FeedKey, String, Approval), StoreError> {
    let xid_text: String = row.try_get("xid")?;
    let xid: u64 = xid_text.parse().map_err(|_| corrupt("xid", &xid_text))?;
    let tenant: String = row.try_get("tenant")?;
    let approval = approval_from_row(row)?;
    let key = (
        xid_text,
        tenant.clone(),
        approval.id.clone(),
        row.int("version")?,
    );
    Ok((xid, key, tenant, approval))
}

/// Approvals changed by other replicas since `cursor`: every `approval_events` row whose
/// transaction is at or after the cursor's frontier, less those this replica wrote (it
/// published them itself) and those already delivered. See [`ApprovalCursor`].
pub(super) async fn approval_changes(
    pool: &PgPool,
    origin: &str,
    cursor: &mut ApprovalCursor,
) -> Result<Vec<(String, Approval)>, StoreError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    // Planned for the frontier at hand (the pool plans every statement for its values, see
    // `connect`): a generic plan cannot tell that `xid >= $1` keeps only the newest rows.
    let xmin: String = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(&mut *tx)
        .await?;
    let xmin: u64 = xmin.parse().map_err(|_| corrupt("snapshot xmin", &xmin))?;
    let Some(frontier) = cursor.frontier else {
        tx.commit().await?;
        cursor.frontier = Some(xmin);
        return Ok(Vec::new());
    };
    // Read in pages, each one index range of `approval_events_by_xid_key` starting after
    // the last row of the page before, all in this one snapshot.
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut after: Option<FeedKey> = None;
    loop {
        let rows = feed_page(&mut tx, frontier, origin, after.as_ref()).await?;
        for row in &rows {
            let (xid, key, tenant, approval) = feed_row(row)?;
            let change = (tenant.clone(), approval.id.clone(), key.3);
            if !cursor.seen.contains(&change) {
                out.push((tenant, approval));
            }
            if xid >= xmin {
                // Not yet below every running transaction: it is read again next time.
                seen.insert(change);
            }
            after = Some(key);
        }
        if rows.len() < FEED_PAGE {
            break;
        }
    }
    tx.commit().await?;
    cursor.frontier = Some(xmin);
    cursor.seen = seen;
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
