//! The store's one implementation: every statement written once, run on SQLite or on
//! PostgreSQL.
//!
//! Each method's body is written once inside [`on_pool!`], which compiles it once per
//! backend with that backend's pool: the SQL uses `$N` parameters (both drivers take
//! them), `ON CONFLICT`, `RETURNING` and `TRUE`/`FALSE` (both databases have them), and
//! the few statements that exist on one backend only are chosen outside the body
//! ([`SqlStore::begin_sql`], [`SqlStore::notify_sql`]). Every call goes through
//! [`SqlStore::call`], the one place that bounds it in time and records it for `/metrics`.

use super::approval_sql::{EVENT_INSERT, PENDING_REMOVE};
use super::chain::{self, Link};
use super::group_commit::{ApprovalWrite, GroupCommit, Target};
use super::rows::{
    APPROVAL_COLUMNS, Cols, TOOL_COLUMNS, approval_from_row, approval_page, caller_from_row,
    corrupt, current_tool_from_row, diff_from_row, group_changes, person_from_row, policy_of,
    revision_from_row, stamp, u64_of,
};
use super::{
    ApprovalCursor, ApprovalEventChain, ApprovalQuery, ChainedRevision, ForUpdate, Inserted,
    KeyInfo, People, PgSettings, PolicyAt, PolicyDiff, ReadScope, RevisionCommit, RevisionQuery,
    RevisionRecord, SaveRead, Saved, Store, StoreError, StoreOp, TenantTools, Wakeup, pg, sqlite,
};
use super::{DeliveryQuery, Lease, Pending, Retried};
use crate::delivery::slack::SlackMessage;
use crate::delivery::{Channel, Claimed, Delivery, Outcome};
use crate::metrics::Metrics;
use crate::policy::audit::ChainHead;
use crate::policy::{
    Approval, ApprovalState, Caller, Person, RevisionChanges, Role, ToolChange, UnixMillis, audit,
};
use sqlx::Connection;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The database behind the store, chosen once at start-up.
#[derive(Debug, Clone)]
enum Db {
    /// Writes go through the one writer connection (SQLite has one writer; writers queue
    /// on its mutex instead of failing busy), reads through a pool of read-only
    /// connections.
    Sqlite {
        writer: sqlite::Writer,
        reader: sqlx::SqlitePool,
    },
    Postgres(sqlx::PgPool),
}

/// Runs (awaits) the same code on whichever database the store has: `read` gives SQLite's
/// reader pool, `write` its writer connection (`&mut`, so a body uses it once: for one
/// statement, or to begin a transaction); PostgreSQL has one pool for both.
macro_rules! on_pool {
    ($store:expr, read, |$pool:ident| $body:expr) => {
        match &$store.db {
            Db::Sqlite { reader: $pool, .. } => $body.await,
            Db::Postgres($pool) => $body.await,
        }
    };
    ($store:expr, write, |$pool:ident| $body:expr) => {
        match &$store.db {
            Db::Sqlite { writer, .. } => {
                let mut connection = writer.lock().await;
                let $pool = &mut *connection;
                $body.await
            }
            Db::Postgres($pool) => $body.await,
        }
    };
}

mod outbox;

/// The SQLite or PostgreSQL store.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Db,
    /// Approval creations and changes, committed together (see [`super::group_commit`]).
    approvals: GroupCommit,
    /// This process's id, written on each approval change, so PostgreSQL's change feed
    /// skips what this replica already published itself.
    origin: Arc<str>,
    /// Bound on each call (PostgreSQL; SQLite waits on its busy timeout instead).
    timeout: Option<Duration>,
    metrics: Option<Arc<Metrics>>,
}

/// Opens the store named by the URL's scheme (created and migrated if needed).
pub async fn open(url: &str, pg: &PgSettings) -> Result<SqlStore, StoreError> {
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    let origin: Arc<str> = crate::keys::random_id("rep_")
        .map_err(|e| StoreError::Corrupt(format!("no randomness for a replica id: {e}")))?
        .into();
    let (db, approvals, timeout) = match scheme {
        "sqlite" => {
            let (writer, reader) = sqlite::connect(url).await?;
            let approvals = Target::Sqlite(writer.clone());
            (Db::Sqlite { writer, reader }, approvals, None)
        }
        "postgres" | "postgresql" => {
            let (pool, options) = pg::connect(url, pg).await?;
            let timeout = pg.query_timeout;
            let options = Box::new(options);
            let approvals = Target::Postgres { options, timeout };
            (Db::Postgres(pool), approvals, Some(timeout))
        }
        other => return Err(StoreError::UnsupportedUrl(other.to_owned())),
    };
    let approvals = GroupCommit::start(approvals, origin.clone());
    Ok(SqlStore {
        db,
        approvals,
        origin,
        timeout,
        metrics: None,
    })
}

/// Attempts at a conditional write that lost its race before the caller is told to retry.
pub const MAX_ATTEMPTS: usize = 16;

/// How far behind where it got to the expiry sweep looks again: an approval committed late
/// (a slow commit, a replica's clock a little behind) whose expiry the sweep has already
/// passed is still found.
const SWEEP_MARGIN_MS: i64 = 60_000;

impl SqlStore {
    /// Records every call's time and failures in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs one store call: bounded by the query timeout, timed, and its failure counted.
    async fn call<T>(
        &self,
        op: StoreOp,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let work = tracing::Instrument::instrument(work, crate::telemetry::store_span(op.as_str()));
        let result = match self.timeout {
            // Loading and the change feed run in pages or in the background, and `audit
            // verify` reads whole chains: each statement is bounded by the server's
            // statement_timeout instead.
            Some(limit)
                if !matches!(
                    op,
                    StoreOp::LoadAllTools
                        | StoreOp::ApprovalChanges
                        | StoreOp::RevisionChain
                        | StoreOp::ApprovalEventChain
                ) =>
            {
                tokio::time::timeout(limit, work)
                    .await
                    .unwrap_or(Err(StoreError::Timeout(limit)))
            }
            _ => work.await,
        };
        if let Some(metrics) = &self.metrics {
            metrics
                .store_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                metrics.store_error(op, e.is_unavailable());
            }
        }
        result
    }

    /// How a write transaction begins: SQLite takes its write lock at once, so a
    /// transaction never fails half-way to upgrade a read lock.
    fn begin_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite { .. } => "BEGIN IMMEDIATE",
            Db::Postgres(_) => "BEGIN",
        }
    }

    /// A read-only transaction that sees one snapshot throughout (SQLite's read
    /// transactions always do).
    fn snapshot_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite { .. } => "BEGIN",
            Db::Postgres(_) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }

    /// `NOTIFY channel, payload` inside a transaction (delivered at commit); PostgreSQL
    /// only: on SQLite one server process writes the file.
    fn notify_sql(&self) -> Option<&'static str> {
        match self.db {
            Db::Sqlite { .. } => None,
            Db::Postgres(_) => Some("SELECT pg_notify($1, $2)"),
        }
    }
}

/// Creates the tenant's row if it has none yet.
const ENSURE_TENANT: &str =
    "INSERT INTO tenants (id, revision) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING";

const TOOL_UPSERT: &str = "INSERT INTO tools (tenant, integration_id, name, description, \
     input_schema_json, read_only_hint, destructive_hint, idempotent_hint, open_world_hint, \
     policy, manager_approval, source, source_reason, revision) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (tenant, integration_id, name) DO UPDATE SET \
     description = excluded.description, input_schema_json = excluded.input_schema_json, \
     read_only_hint = excluded.read_only_hint, destructive_hint = excluded.destructive_hint, \
     idempotent_hint = excluded.idempotent_hint, open_world_hint = excluded.open_world_hint, \
     policy = excluded.policy, manager_approval = excluded.manager_approval, \
     source = excluded.source, source_reason = excluded.source_reason, \
     revision = excluded.revision";

const TOOL_CHANGE_UPSERT: &str = "INSERT INTO tool_changes (tenant, integration_id, name, \
     description, input_schema_json, read_only_hint, destructive_hint, idempotent_hint, \
     open_world_hint, policy, manager_approval, source, source_reason, revision, removed) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, FALSE)";

/// A connect's integration metadata, written whether or not a tool changed.
const INTEGRATION_UPSERT: &str = "INSERT INTO integrations (tenant, id, kind, display_name, \
     connected_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (tenant, id) DO \
     UPDATE SET kind = excluded.kind, display_name = excluded.display_name, \
     updated_at = excluded.updated_at";

/// Moves the tenant from revision `$3` to `$1`; nothing when it is no longer at `$3`.
const REVISION_MOVE: &str = "UPDATE tenants SET revision = $1 WHERE id = $2 AND revision = $3";

const REVISION_INSERT: &str = "INSERT INTO revisions (tenant, revision, kind, actor_key_id, \
     created_at, comment, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// A page of history: `$1` tenant, before revision `$2`, at most `$3`; `$4` the integration
/// when there is one.
fn revisions_sql(integration: bool) -> String {
    let filter = if integration {
        " AND EXISTS (SELECT 1 FROM tool_changes c WHERE c.tenant = r.tenant \
         AND c.revision = r.revision AND c.integration_id = $4)"
    } else {
        ""
    };
    format!(
        "SELECT r.revision, r.created_at, r.actor_key_id, r.kind, r.comment, r.hash, \
         coalesce((SELECT p.hash FROM revisions p WHERE p.tenant = r.tenant \
         AND p.revision = r.revision - 1), '') AS previous_hash, \
         coalesce(k.name, '') AS actor_name, coalesce(k.role, '') AS actor_role \
         FROM revisions r LEFT JOIN api_keys k ON k.id = r.actor_key_id \
         WHERE r.tenant = $1 AND r.revision < $2{filter} ORDER BY r.revision DESC LIMIT $3"
    )
}

/// The diffs of revisions `$2` to `$3`: each changed tool's state after (its row) and
/// before (its previous row, if any); `$4` the integration when there is one.
fn diffs_sql(integration: bool) -> String {
    let previous = |column: &str| {
        format!(
            "(SELECT p.{column} FROM tool_changes p WHERE p.tenant = c.tenant \
             AND p.integration_id = c.integration_id AND p.name = c.name \
             AND p.revision < c.revision ORDER BY p.revision DESC LIMIT 1)"
        )
    };
    let filter = if integration {
        " AND c.integration_id = $4"
    } else {
        ""
    };
    format!(
        "SELECT c.revision, c.integration_id, c.name, c.policy, c.manager_approval, \
         {} AS policy_before, {} AS manager_before FROM tool_changes c \
         WHERE c.tenant = $1 AND c.revision >= $2 AND c.revision <= $3{filter} \
         ORDER BY c.revision, c.integration_id, c.name",
        previous("policy"),
        previous("manager_approval")
    )
}

/// Every tool's last change at or before revision `$2`, unless it was a removal.
const POLICIES_AT: &str = "SELECT c.integration_id, c.name, c.policy, c.manager_approval \
     FROM tool_changes c WHERE c.tenant = $1 AND c.removed = FALSE AND c.revision = \
     (SELECT max(p.revision) FROM tool_changes p WHERE p.tenant = c.tenant \
     AND p.integration_id = c.integration_id AND p.name = c.name AND p.revision <= $2) \
     ORDER BY c.integration_id, c.name";

const TOOL_DELETE: &str =
    "DELETE FROM tools WHERE tenant = $1 AND integration_id = $2 AND name = $3";

const TOOL_CHANGE_REMOVAL: &str = "INSERT INTO tool_changes (tenant, integration_id, name, \
     revision, removed) VALUES ($1, $2, $3, $4, TRUE)";

/// A new revision's place in the chain, after `previous` (the revision before's stored
/// hash; none, or empty for one saved before chains, starts the chain).
fn revision_hash(
    previous: Option<&str>,
    head: &audit::RevisionHead<'_>,
    changes: &[ToolChange],
) -> String {
    let previous = previous.filter(|h| !h.is_empty()).unwrap_or(audit::GENESIS);
    audit::chain_hash(previous, &audit::record(head, changes))
}

/// Writes one tool change of a revision: the current tool (or its removal) and the change
/// log's row.
macro_rules! write_tool_change {
    ($tx:expr, $tenant:expr, $revision:expr, $change:expr) => {
        match $change {
            ToolChange::Upsert(tool) => {
                let query = bind_tool!(sqlx::query(TOOL_UPSERT), $tenant, tool, $revision);
                query.execute($tx).await?;
                let query = bind_tool!(sqlx::query(TOOL_CHANGE_UPSERT), $tenant, tool, $revision);
                query.execute($tx).await?;
            }
            ToolChange::Remove {
                integration_id,
                name,
            } => {
                let query = sqlx::query(TOOL_DELETE).bind($tenant).bind(integration_id);
                query.bind(name).execute($tx).await?;
                let query = sqlx::query(TOOL_CHANGE_REMOVAL)
                    .bind($tenant)
                    .bind(integration_id);
                query.bind(name).bind($revision).execute($tx).await?;
            }
        }
    };
}

/// Binds a tool's columns after the tenant, in [`TOOL_UPSERT`]'s order, then `revision`.
macro_rules! bind_tool {
    ($query:expr, $tenant:expr, $tool:expr, $revision:expr) => {
        $query
            .bind($tenant)
            .bind(&$tool.integration_id)
            .bind(&$tool.name)
            .bind(&$tool.description)
            .bind(&$tool.input_schema_json)
            .bind($tool.annotations.read_only)
            .bind($tool.annotations.destructive)
            .bind($tool.annotations.idempotent)
            .bind($tool.annotations.open_world)
            .bind($tool.policy.as_str())
            .bind($tool.manager_approval)
            .bind($tool.source.as_str())
            .bind(&$tool.source_reason)
            .bind($revision)
    };
}

fn key_info<R: Cols>(row: &R) -> Result<KeyInfo, StoreError> {
    let role = row.text("role")?;
    Ok(KeyInfo {
        id: row.text("id")?,
        tenant: row.text("tenant")?,
        role: Role::parse(&role).ok_or_else(|| corrupt("role", &role))?,
        name: row.opt_text("name")?,
        created_at: row.int("created_at")?,
        revoked_at: row.opt_int("revoked_at")?,
    })
}

/// `SELECT … FROM approval_current WHERE tenant = $1 AND <column> = $2`.
fn approval_by(column: &str) -> String {
    format!("SELECT {APPROVAL_COLUMNS} FROM approval_current WHERE tenant = $1 AND {column} = $2")
}

/// The tools a Save reads: one integration's, or the tools named (`$2`, `$3` pairs).
fn scope_sql(scope: &ReadScope) -> String {
    let select = format!("SELECT {TOOL_COLUMNS}, revision FROM tools WHERE tenant = $1");
    match scope {
        ReadScope::Integration(_) => format!("{select} AND integration_id = $2 ORDER BY name"),
        ReadScope::Tools(_) => format!("{select} AND integration_id = $2 AND name = $3"),
        ReadScope::Tenant => format!("{select} ORDER BY integration_id, name"),
    }
}

/// `$first, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The list query's filter on the state a reader sees: open approvals past their expiry
/// count as expired.
fn state_clause(state: Option<ApprovalState>) -> &'static str {
    match state {
        None => "TRUE",
        Some(ApprovalState::Expired) => {
            "(state = 'expired' OR (state IN ('pending', 'approved') AND expires_at <= $2))"
        }
        Some(ApprovalState::Pending | ApprovalState::Approved) => "state = $1 AND expires_at > $2",
        Some(_) => "state = $1",
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite { .. } => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    async fn create_key(
        &self,
        id: &str,
        tenant: &str,
        role: Role,
        secret_sha256: &str,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        let work = async {
            on_pool!(self, write, |pool| async {
                let mut tx = pool.begin_with(self.begin_sql()).await?;
                sqlx::query(ENSURE_TENANT)
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant, role, secret_sha256, created_at, name) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(tenant)
                .bind(role.as_str())
                .bind(secret_sha256)
                .bind(UnixMillis::now().0)
                .bind(name)
                .execute(&mut *tx)
                .await?;
                if let Some(notify) = self.notify_sql() {
                    let query = sqlx::query(notify).bind(pg::KEYS_CHANNEL).bind("");
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            })
        };
        self.call(StoreOp::CreateKey, work).await
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let sql = "SELECT id, tenant, role, name, created_at, revoked_at FROM api_keys \
                   ORDER BY tenant, created_at, id";
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query(sql).fetch_all(pool).await?;
                rows.iter().map(key_info).collect()
            })
        };
        self.call(StoreOp::ListKeys, work).await
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let work = async {
            on_pool!(self, write, |pool| async {
                let mut tx = pool.begin_with(self.begin_sql()).await?;
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(UnixMillis::now().0)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                if let Some(notify) = self.notify_sql() {
                    let query = sqlx::query(notify).bind(pg::KEYS_CHANNEL).bind("");
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            })
        };
        self.call(StoreOp::RevokeKey, work).await
    }

    async fn caller_by_secret(&self, secret_sha256: &str) -> Result<Option<Caller>, StoreError> {
        let sql = "SELECT id, tenant, role, name FROM api_keys \
                   WHERE secret_sha256 = $1 AND revoked_at IS NULL";
        let work = async {
            on_pool!(self, read, |pool| async {
                let row = sqlx::query(sql)
                    .bind(secret_sha256)
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(caller_from_row).transpose()
            })
        };
        self.call(StoreOp::CallerBySecret, work).await
    }

    async fn live_keys(&self) -> Result<Vec<(String, Caller)>, StoreError> {
        let sql =
            "SELECT secret_sha256, id, tenant, role, name FROM api_keys WHERE revoked_at IS NULL";
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query(sql).fetch_all(pool).await?;
                rows.iter()
                    .map(|row| Ok((row.text("secret_sha256")?, caller_from_row(row)?)))
                    .collect()
            })
        };
        self.call(StoreOp::LiveKeys, work).await
    }

    async fn load_all_tools(&self) -> Result<Vec<TenantTools>, StoreError> {
        let tools_sql = format!("SELECT tenant, {TOOL_COLUMNS}, revision FROM tools");
        let work = async {
            on_pool!(self, read, |pool| async {
                let mut by_tenant: HashMap<String, TenantTools> = HashMap::new();
                for row in sqlx::query("SELECT id, revision FROM tenants")
                    .fetch_all(pool)
                    .await?
                {
                    let tenant = row.text("id")?;
                    let revision = u64_of(row.int("revision")?);
                    let tools = Vec::new();
                    by_tenant.insert(
                        tenant.clone(),
                        TenantTools {
                            tenant,
                            revision,
                            tools,
                        },
                    );
                }
                let rows = sqlx::query(sqlx::AssertSqlSafe(tools_sql))
                    .fetch_all(pool)
                    .await?;
                for row in &rows {
                    if let Some(t) = by_tenant.get_mut(&row.text("tenant")?) {
                        t.tools.push(current_tool_from_row(row)?);
                    }
                }
                let mut all: Vec<TenantTools> = by_tenant.into_values().collect();
                all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
                Ok(all)
            })
        };
        self.call(StoreOp::LoadAllTools, work).await
    }

    async fn load_tenant_tools(&self, tenant: &str) -> Result<TenantTools, StoreError> {
        let tools_sql = format!("SELECT {TOOL_COLUMNS}, revision FROM tools WHERE tenant = $1");
        let work = async {
            on_pool!(self, read, |pool| async {
                // One read transaction that sees one snapshot, so the revision and the
                // tools agree.
                let mut tx = pool.begin_with(self.snapshot_sql()).await?;
                let revision: Option<i64> =
                    sqlx::query_scalar("SELECT revision FROM tenants WHERE id = $1")
                        .bind(tenant)
                        .fetch_optional(&mut *tx)
                        .await?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(tools_sql))
                    .bind(tenant)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                let tools = rows
                    .iter()
                    .map(current_tool_from_row)
                    .collect::<Result<_, _>>()?;
                let revision = u64_of(revision.unwrap_or(0));
                Ok(TenantTools {
                    tenant: tenant.to_owned(),
                    revision,
                    tools,
                })
            })
        };
        self.call(StoreOp::LoadTenantTools, work).await
    }

    async fn changes_since(
        &self,
        tenant: &str,
        after: u64,
    ) -> Result<Vec<RevisionChanges>, StoreError> {
        let sql = format!(
            "SELECT revision, removed, {TOOL_COLUMNS} FROM tool_changes \
             WHERE tenant = $1 AND revision > $2 ORDER BY revision, integration_id, name"
        );
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(after as i64)
                    .fetch_all(pool)
                    .await?;
                group_changes(&rows)
            })
        };
        self.call(StoreOp::ChangesSince, work).await
    }

    async fn tenant_revisions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query("SELECT id, revision FROM tenants")
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.text("id")?, u64_of(row.int("revision")?))))
                    .collect()
            })
        };
        self.call(StoreOp::TenantRevisions, work).await
    }

    async fn read_for_save(&self, tenant: &str, scope: &ReadScope) -> Result<SaveRead, StoreError> {
        let sql = scope_sql(scope);
        let work = async {
            on_pool!(self, read, |pool| async {
                // The revision first: a Save that lands between the two reads moves the
                // revision, and the commit planned on this read is then refused.
                let revision: Option<i64> =
                    sqlx::query_scalar("SELECT revision FROM tenants WHERE id = $1")
                        .bind(tenant)
                        .fetch_optional(pool)
                        .await?;
                let mut tools = Vec::new();
                match scope {
                    ReadScope::Integration(integration) => {
                        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .bind(tenant)
                            .bind(integration);
                        for row in query.fetch_all(pool).await? {
                            tools.push(current_tool_from_row(&row)?);
                        }
                    }
                    ReadScope::Tenant => {
                        let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
                        for row in query.fetch_all(pool).await? {
                            tools.push(current_tool_from_row(&row)?);
                        }
                    }
                    ReadScope::Tools(keys) => {
                        for (integration, name) in keys {
                            let query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                                .bind(tenant)
                                .bind(integration)
                                .bind(name);
                            if let Some(row) = query.fetch_optional(pool).await? {
                                tools.push(current_tool_from_row(&row)?);
                            }
                        }
                    }
                }
                Ok(SaveRead {
                    revision: u64_of(revision.unwrap_or(0)),
                    tools,
                })
            })
        };
        self.call(StoreOp::ReadForSave, work).await
    }

    async fn commit_revision(&self, c: RevisionCommit<'_>) -> Result<Option<Saved>, StoreError> {
        let tenant = c.tenant;
        let work = async {
            on_pool!(self, write, |pool| async {
                let mut tx = pool.begin_with(self.begin_sql()).await?;
                sqlx::query(ENSURE_TENANT)
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
                let now = UnixMillis::now().0;
                if let Some(meta) = c.integration {
                    let query = sqlx::query(INTEGRATION_UPSERT).bind(tenant).bind(&meta.id);
                    let query = query.bind(&meta.kind).bind(&meta.display_name).bind(now);
                    query.execute(&mut *tx).await?;
                }
                if c.changes.is_empty() {
                    tx.commit().await?;
                    let changes = Vec::new();
                    return Ok(Some(Saved {
                        revision: c.base,
                        changes,
                    }));
                }
                let revision = c.base + 1;
                // The condition that orders Saves across replicas: only one commit moves the
                // tenant from `base`; the others find it moved and plan again.
                let query = sqlx::query(REVISION_MOVE)
                    .bind(revision as i64)
                    .bind(tenant);
                let moved = query.bind(c.base as i64).execute(&mut *tx).await?;
                if moved.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let head = audit::RevisionHead {
                    tenant,
                    revision,
                    kind: c.kind.as_str(),
                    actor_key_id: c.actor_key_id,
                    saved_at_ms: now,
                    comment: c.comment,
                };
                let changes = stamp(c.changes, revision);
                // The chain: this revision's hash covers the previous one's (read after the
                // move above, which waited for the commit that wrote it).
                let previous: Option<String> = sqlx::query_scalar(
                    "SELECT hash FROM revisions WHERE tenant = $1 AND revision = $2",
                )
                .bind(tenant)
                .bind(c.base as i64)
                .fetch_optional(&mut *tx)
                .await?;
                let hash = revision_hash(previous.as_deref(), &head, &changes);
                let query = sqlx::query(REVISION_INSERT)
                    .bind(tenant)
                    .bind(revision as i64);
                let query = query.bind(c.kind.as_str()).bind(c.actor_key_id).bind(now);
                query.bind(c.comment).bind(hash).execute(&mut *tx).await?;
                for change in &changes {
                    write_tool_change!(&mut *tx, tenant, revision as i64, change);
                }
                if let Some(notify) = self.notify_sql() {
                    // `<revision>@<unix ms> <tenant>`: the time lets followers measure lag.
                    let payload = format!("{revision}@{} {tenant}", UnixMillis::now().0);
                    let query = sqlx::query(notify)
                        .bind(pg::REVISIONS_CHANNEL)
                        .bind(payload);
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(Some(Saved { revision, changes }))
            })
        };
        self.call(StoreOp::CommitRevision, work).await
    }

    async fn list_revisions(
        &self,
        tenant: &str,
        q: &RevisionQuery,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        let integration = q.integration.as_deref();
        let revisions_sql = revisions_sql(integration.is_some());
        let diffs_sql = diffs_sql(integration.is_some());
        let before = q.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let work = async {
            on_pool!(self, read, |pool| async {
                let query = sqlx::query(sqlx::AssertSqlSafe(revisions_sql))
                    .bind(tenant)
                    .bind(before)
                    .bind(i64::from(q.limit));
                let query = match integration {
                    Some(i) => query.bind(i),
                    None => query,
                };
                let rows = query.fetch_all(pool).await?;
                let mut records = rows
                    .iter()
                    .map(revision_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let (Some(newest), Some(oldest)) = (records.first(), records.last()) else {
                    return Ok(records);
                };
                let query = sqlx::query(sqlx::AssertSqlSafe(diffs_sql))
                    .bind(tenant)
                    .bind(oldest.revision as i64)
                    .bind(newest.revision as i64);
                let query = match integration {
                    Some(i) => query.bind(i),
                    None => query,
                };
                let rows = query.fetch_all(pool).await?;
                let mut by_revision: HashMap<u64, Vec<PolicyDiff>> = HashMap::new();
                for row in &rows {
                    let revision = u64_of(row.int("revision")?);
                    by_revision
                        .entry(revision)
                        .or_default()
                        .push(diff_from_row(row)?);
                }
                for record in &mut records {
                    record.diffs = by_revision.remove(&record.revision).unwrap_or_default();
                }
                Ok(records)
            })
        };
        self.call(StoreOp::ListRevisions, work).await
    }

    async fn revision_chain(&self, tenant: &str) -> Result<Vec<ChainedRevision>, StoreError> {
        let changes_sql = format!(
            "SELECT revision, removed, {TOOL_COLUMNS} FROM tool_changes \
             WHERE tenant = $1 ORDER BY revision, integration_id, name"
        );
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query(
                    "SELECT revision, kind, actor_key_id, created_at, comment, hash \
                     FROM revisions WHERE tenant = $1 ORDER BY revision",
                )
                .bind(tenant)
                .fetch_all(pool)
                .await?;
                let change_rows = sqlx::query(sqlx::AssertSqlSafe(changes_sql))
                    .bind(tenant)
                    .fetch_all(pool)
                    .await?;
                let mut changes: HashMap<u64, Vec<ToolChange>> = group_changes(&change_rows)?
                    .into_iter()
                    .map(|rc| (rc.revision, rc.changes))
                    .collect();
                rows.iter()
                    .map(|row| {
                        let revision = u64_of(row.int("revision")?);
                        Ok(ChainedRevision {
                            revision,
                            kind: row.text("kind")?,
                            actor_key_id: row.text("actor_key_id")?,
                            saved_at_ms: row.int("created_at")?,
                            comment: row.text("comment")?,
                            hash: row.text("hash")?,
                            changes: changes.remove(&revision).unwrap_or_default(),
                        })
                    })
                    .collect()
            })
        };
        self.call(StoreOp::RevisionChain, work).await
    }

    async fn approval_chain_heads(&self) -> Result<Vec<(String, ChainHead, u64)>, StoreError> {
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
                    "SELECT tenant, seq, hash, before_chain FROM approval_chain ORDER BY tenant",
                )
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(tenant, seq, hash, before)| {
                        let head = chain::head(seq, hash);
                        (tenant, head, u64_of(before))
                    })
                    .collect())
            })
        };
        self.call(StoreOp::ApprovalChainHeads, work).await
    }

    async fn approval_event_chain(&self, tenant: &str) -> Result<ApprovalEventChain, StoreError> {
        let work = async {
            on_pool!(self, read, |pool| async {
                // One snapshot: a head read before events committed later would be behind.
                let mut tx = pool.begin_with(self.snapshot_sql()).await?;
                let head: Option<(i64, String, i64)> = sqlx::query_as(
                    "SELECT seq, hash, before_chain FROM approval_chain WHERE tenant = $1",
                )
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
                let rows = sqlx::query(chain::EVENT_CHAIN_SELECT)
                    .bind(tenant)
                    .fetch_all(&mut *tx)
                    .await?;
                let events = rows
                    .iter()
                    .map(|row| chain::event_from_row(tenant, row))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let unchained: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM approval_events \
                     WHERE tenant = $1 AND chain_seq IS NULL",
                )
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?;
                let arguments: Vec<(String, String, String)> =
                    sqlx::query_as(chain::CHAINED_ARGUMENTS)
                        .bind(tenant)
                        .fetch_all(&mut *tx)
                        .await?;
                tx.commit().await?;
                let arguments_changed = arguments
                    .into_iter()
                    .find(|(_, json, sha)| crate::policy::canonical::sha256_hex(json) != *sha)
                    .map(|(id, _, _)| id);
                let (head, before_chain) = head.map_or_else(
                    || (audit::ChainHead::genesis(), 0),
                    |(seq, hash, before)| (chain::head(seq, hash), u64_of(before)),
                );
                Ok(ApprovalEventChain {
                    head,
                    before_chain,
                    events,
                    unchained: u64_of(unchained),
                    arguments_changed,
                })
            })
        };
        self.call(StoreOp::ApprovalEventChain, work).await
    }

    async fn policies_at(&self, tenant: &str, revision: u64) -> Result<Vec<PolicyAt>, StoreError> {
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query(POLICIES_AT)
                    .bind(tenant)
                    .bind(revision as i64)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(PolicyAt {
                            integration_id: row.text("integration_id")?,
                            tool_name: row.text("name")?,
                            policy: policy_of(row.text("policy")?)?,
                            manager_approval: row.flag("manager_approval")?,
                        })
                    })
                    .collect()
            })
        };
        self.call(StoreOp::PoliciesAt, work).await
    }

    async fn upsert_people(&self, tenant: &str, people: &[Person]) -> Result<u32, StoreError> {
        let work = async {
            on_pool!(self, write, |pool| async {
                let mut tx = pool.begin_with(self.begin_sql()).await?;
                sqlx::query(ENSURE_TENANT)
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
                let now = UnixMillis::now().0;
                for p in people {
                    sqlx::query(
                        "INSERT INTO people (tenant, id, display_name, email, manager_id, \
                     technician, updated_at, slack_user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (tenant, id) DO UPDATE SET \
                     display_name = excluded.display_name, email = excluded.email, \
                     manager_id = excluded.manager_id, technician = excluded.technician, \
                     updated_at = excluded.updated_at, slack_user_id = excluded.slack_user_id, \
                     version = people.version + 1",
                    )
                    .bind(tenant)
                    .bind(&p.id)
                    .bind(&p.display_name)
                    .bind(&p.email)
                    .bind(&p.manager_id)
                    .bind(p.technician)
                    .bind(now)
                    .bind(&p.slack_user_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(people.len() as u32)
            })
        };
        self.call(StoreOp::UpsertPeople, work).await
    }

    async fn get_person(&self, tenant: &str, id: &str) -> Result<Option<Person>, StoreError> {
        let sql = "SELECT id, display_name, email, manager_id, technician, slack_user_id FROM people \
                   WHERE tenant = $1 AND id = $2";
        let work = async {
            on_pool!(self, read, |pool| async {
                let row = sqlx::query(sql)
                    .bind(tenant)
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(person_from_row).transpose()
            })
        };
        self.call(StoreOp::GetPerson, work).await
    }

    async fn insert_approval(&self, tenant: &str, a: &Approval) -> Result<Inserted, StoreError> {
        debug_assert!(a.state == ApprovalState::Pending && a.steps.is_empty());
        let work = async {
            let approval = a.clone();
            let create = ApprovalWrite::Create {
                tenant: tenant.to_owned(),
                approval,
            };
            let created = self.approvals.write(create).await?;
            if created {
                return Ok(Inserted::New(a.clone()));
            }
            // The principal's approval for this request id is committed (the conflict
            // waited for it).
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approval_current \
                 WHERE tenant = $1 AND principal = $2 AND request_id = $3"
            );
            let existing = on_pool!(self, read, |pool| async {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(&a.principal)
                    .bind(&a.request_id);
                approval_from_row(&query.fetch_one(pool).await?)
            })?;
            Ok(Inserted::Existing(existing))
        };
        self.call(StoreOp::InsertApproval, work).await
    }

    async fn get_approval(&self, tenant: &str, id: &str) -> Result<Option<Approval>, StoreError> {
        let sql = approval_by("id");
        let work = async {
            on_pool!(self, read, |pool| async {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(id);
                let row = query.fetch_optional(pool).await?;
                row.as_ref().map(approval_from_row).transpose()
            })
        };
        self.call(StoreOp::GetApproval, work).await
    }

    async fn approval_by_request(
        &self,
        tenant: &str,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<Approval>, StoreError> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approval_current \
             WHERE tenant = $1 AND principal = $2 AND request_id = $3"
        );
        let work = async {
            on_pool!(self, read, |pool| async {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(principal)
                    .bind(request_id);
                let row = query.fetch_optional(pool).await?;
                row.as_ref().map(approval_from_row).transpose()
            })
        };
        self.call(StoreOp::ApprovalByRequest, work).await
    }

    async fn find_pending(
        &self,
        tenant: &str,
        like: &Approval,
        now: i64,
        count_to: u64,
    ) -> Result<Pending, StoreError> {
        // One round trip over the heads and `pending_approvals` (what waits for people),
        // not the `approval_current` view: this runs before every new approval.
        let sql = "SELECT (SELECT count(*) FROM (SELECT 1 FROM pending_approvals \
             WHERE tenant = $1 AND expires_at > $7 LIMIT $8) AS counted) AS pending, \
             (SELECT h.id FROM approvals h JOIN pending_approvals p \
             ON p.tenant = h.tenant AND p.approval_id = h.id \
             WHERE h.tenant = $1 AND h.principal = $2 AND h.requester_id = $3 \
             AND h.integration_id = $4 AND h.tool_name = $5 AND h.arguments_sha256 = $6 \
             AND p.expires_at > $7 ORDER BY h.seq DESC LIMIT 1) AS same_call";
        let work = async {
            let (count, same_call) = on_pool!(self, read, |pool| async {
                let row = sqlx::query(sql)
                    .bind(tenant)
                    .bind(&like.principal)
                    .bind(&like.requester_id)
                    .bind(&like.integration_id)
                    .bind(&like.tool_name)
                    .bind(&like.arguments_sha256)
                    .bind(now)
                    .bind(i64::try_from(count_to).unwrap_or(i64::MAX))
                    .fetch_one(pool)
                    .await?;
                Ok::<_, StoreError>((row.int("pending")?, row.opt_text("same_call")?))
            })?;
            // Read whole only when there is one (a repeated ask, rare).
            let same_call = match same_call {
                Some(id) => {
                    let sql = approval_by("id");
                    on_pool!(self, read, |pool| async {
                        let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(&id);
                        let row = query.fetch_optional(pool).await?;
                        row.as_ref().map(approval_from_row).transpose()
                    })?
                }
                None => None,
            };
            Ok(Pending {
                same_call,
                tenant_pending: u64_of(count),
            })
        };
        self.call(StoreOp::FindPending, work).await
    }

    async fn list_approvals(
        &self,
        tenant: &str,
        q: &ApprovalQuery,
    ) -> Result<(Vec<Approval>, Option<String>), StoreError> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approval_current WHERE tenant = $3 AND {} \
             AND ($4 IS NULL OR seq < (SELECT b.seq FROM approvals b WHERE b.tenant = $3 AND b.id = $4)) \
             AND ($6 IS NULL OR principal = $6) ORDER BY seq DESC LIMIT $5",
            state_clause(q.state)
        );
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(q.state.map(|s| s.as_str()))
                    .bind(q.now)
                    .bind(tenant)
                    .bind(q.before_id.as_deref())
                    .bind(i64::from(q.limit) + 1)
                    .bind(q.principal.as_deref())
                    .fetch_all(pool)
                    .await?;
                approval_page(&rows, q.limit)
            })
        };
        self.call(StoreOp::ListApprovals, work).await
    }

    async fn approval_for_update(
        &self,
        tenant: &str,
        id: &str,
        person_ids: &[String],
    ) -> Result<Option<ForUpdate>, StoreError> {
        // The approval and the people its rules read, in one statement: a row per person
        // found, or one row with no person.
        let columns: Vec<String> = APPROVAL_COLUMNS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect();
        let sql = format!(
            "SELECT {}, p.id AS person_id, p.display_name, p.email, p.manager_id, \
             p.technician, p.slack_user_id FROM approval_current a LEFT JOIN people p \
             ON p.tenant = a.tenant AND (p.id = a.requester_id OR p.id IN ({})) \
             WHERE a.tenant = $1 AND a.id = $2",
            columns.join(", "),
            placeholders(3, person_ids.len().max(1))
        );
        let work = async {
            on_pool!(self, read, |pool| async {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(id);
                for person in person_ids {
                    query = query.bind(person);
                }
                if person_ids.is_empty() {
                    query = query.bind(Option::<&str>::None);
                }
                let rows = query.fetch_all(pool).await?;
                let Some(first) = rows.first() else {
                    return Ok(None);
                };
                let mut people = People::new();
                for row in &rows {
                    if let Some(id) = row.opt_text("person_id")? {
                        let person = Person {
                            id: id.clone(),
                            display_name: row.text("display_name")?,
                            email: row.text("email")?,
                            manager_id: row.text("manager_id")?,
                            technician: row.flag("technician")?,
                            slack_user_id: row.text("slack_user_id")?,
                        };
                        people.insert(id, person);
                    }
                }
                let approval = approval_from_row(first)?;
                let version = first.int("version")?;
                Ok(Some(ForUpdate {
                    approval,
                    version,
                    people,
                }))
            })
        };
        self.call(StoreOp::ApprovalForUpdate, work).await
    }

    async fn append_approval(
        &self,
        tenant: &str,
        version: i64,
        next: &Approval,
    ) -> Result<bool, StoreError> {
        let append = ApprovalWrite::Append {
            tenant: tenant.to_owned(),
            version,
            approval: next.clone(),
        };
        self.call(StoreOp::AppendApproval, self.approvals.write(append))
            .await
    }

    async fn expire_due(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        let due_sql = format!(
            "SELECT tenant, {APPROVAL_COLUMNS} FROM approval_current \
             WHERE expires_at > $1 AND expires_at <= $2 AND state IN ('pending', 'approved') \
             ORDER BY expires_at LIMIT $3"
        );
        let work = async {
            on_pool!(self, write, |pool| async {
                let mut tx = pool.begin_with(self.begin_sql()).await?;
                let swept_to: i64 = sqlx::query_scalar("SELECT swept_to FROM approval_sweep")
                    .fetch_one(&mut *tx)
                    .await?;
                // Each open approval that expired since the sweep last got there (and a
                // margin) gets its next version, 'expired'. A decision written meanwhile, or
                // another replica sweeping at once, took that version: the approval is skipped.
                let rows = sqlx::query(sqlx::AssertSqlSafe(due_sql))
                    .bind(swept_to - SWEEP_MARGIN_MS)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut expired = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut a = approval_from_row(row)?;
                    a.state = ApprovalState::Expired;
                    let tenant = row.text("tenant")?;
                    let version = row.int("version")? + 1;
                    let query = bind_event!(
                        sqlx::query(EVENT_INSERT),
                        &tenant,
                        version,
                        &*self.origin,
                        &a,
                        now
                    );
                    if query.execute(&mut *tx).await?.rows_affected() == 1 {
                        sqlx::query(PENDING_REMOVE)
                            .bind(&tenant)
                            .bind(&a.id)
                            .execute(&mut *tx)
                            .await?;
                        expired.push((tenant, version, a));
                    }
                }
                let events = expired.iter().map(|(t, v, a)| chain::event(t, *v, a, now));
                Link::link(&mut *tx, events.collect()).await?;
                // Where it got to: now, or, if the batch was full and more may be due, the
                // last expiry it reached.
                let reached = if rows.len() < limit as usize {
                    now
                } else {
                    expired
                        .iter()
                        .map(|(_, _, a)| a.expires_at.0)
                        .max()
                        .unwrap_or(now)
                };
                sqlx::query("UPDATE approval_sweep SET swept_to = CASE WHEN swept_to < $1 THEN $1 ELSE swept_to END")
                .bind(reached)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(expired.into_iter().map(|(t, _, a)| (t, a)).collect())
            })
        };
        self.call(StoreOp::ExpireDue, work).await
    }

    async fn set_channel(&self, tenant: &str, channel: &Channel) -> Result<Channel, StoreError> {
        self.call(
            StoreOp::SetChannel,
            self.outbox_set_channel(tenant, channel),
        )
        .await
    }

    async fn channel_tenants(&self) -> Result<Vec<String>, StoreError> {
        let work = async {
            on_pool!(self, read, |pool| async {
                let sql = "SELECT DISTINCT tenant FROM notification_channels WHERE enabled = TRUE";
                Ok(sqlx::query_scalar(sql).fetch_all(pool).await?)
            })
        };
        self.call(StoreOp::ChannelTenants, work).await
    }

    async fn list_channels(&self, tenant: &str) -> Result<Vec<Channel>, StoreError> {
        self.call(StoreOp::ListChannels, self.outbox_list_channels(tenant))
            .await
    }

    async fn delete_channel(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        self.call(
            StoreOp::DeleteChannel,
            self.outbox_delete_channel(tenant, id),
        )
        .await
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        query: &DeliveryQuery,
    ) -> Result<(Vec<Delivery>, Option<i64>), StoreError> {
        let work = self.outbox_list_deliveries(tenant, query);
        self.call(StoreOp::ListDeliveries, work).await
    }

    async fn retry_delivery(
        &self,
        tenant: &str,
        id: &str,
        now: UnixMillis,
    ) -> Result<Retried, StoreError> {
        self.call(StoreOp::RetryDelivery, self.outbox_retry(tenant, id, now))
            .await
    }

    async fn due_channels(&self, now: UnixMillis) -> Result<Vec<(String, String)>, StoreError> {
        self.call(StoreOp::DueChannels, self.outbox_due_channels(now))
            .await
    }

    async fn claim_deliveries(
        &self,
        lease: &Lease<'_>,
        tenant: &str,
        channel_id: &str,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let work = self.outbox_claim(lease, tenant, channel_id, limit);
        self.call(StoreOp::ClaimDeliveries, work).await
    }

    async fn delivery_context(
        &self,
        tenant: &str,
        delivery: &Delivery,
    ) -> Result<Option<(Channel, Approval, UnixMillis)>, StoreError> {
        let work = self.outbox_context(tenant, delivery);
        self.call(StoreOp::DeliveryContext, work).await
    }

    async fn finish_delivery(
        &self,
        claimed: &Claimed,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let work = self.outbox_finish(claimed, outcome);
        self.call(StoreOp::FinishDelivery, work).await
    }

    async fn oldest_pending_delivery(&self) -> Result<Option<UnixMillis>, StoreError> {
        let work = self.outbox_oldest_pending();
        self.call(StoreOp::OldestPendingDelivery, work).await
    }

    async fn slack_channels(&self) -> Result<Vec<(String, Channel)>, StoreError> {
        self.call(StoreOp::SlackChannels, self.outbox_slack_channels())
            .await
    }

    async fn people_by_slack_user(
        &self,
        tenant: &str,
        slack_user_id: &str,
    ) -> Result<Vec<Person>, StoreError> {
        let sql = "SELECT id, display_name, email, manager_id, technician, slack_user_id \
                   FROM people WHERE tenant = $1 AND slack_user_id = $2 AND slack_user_id <> ''";
        let work = async {
            on_pool!(self, read, |pool| async {
                let rows = sqlx::query(sql)
                    .bind(tenant)
                    .bind(slack_user_id)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(person_from_row).collect()
            })
        };
        self.call(StoreOp::PeopleBySlackUser, work).await
    }

    async fn slack_messages(
        &self,
        tenant: &str,
        approval_id: &str,
        channel_id: &str,
    ) -> Result<Vec<SlackMessage>, StoreError> {
        let work = self.outbox_slack_messages(tenant, approval_id, channel_id);
        self.call(StoreOp::SlackMessages, work).await
    }

    async fn record_slack_message(
        &self,
        tenant: &str,
        approval_id: &str,
        channel_id: &str,
        message: &SlackMessage,
    ) -> Result<(), StoreError> {
        let work = self.outbox_record_slack_message(tenant, approval_id, channel_id, message);
        self.call(StoreOp::RecordSlackMessage, work).await
    }

    async fn wakeups(&self) -> Result<tokio::sync::mpsc::Receiver<Wakeup>, StoreError> {
        match &self.db {
            Db::Postgres(pool) => Ok(pg::wakeups(pool.clone())),
            Db::Sqlite { .. } => {
                // One process writes this file; the receiver stays open and silent.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move { tx.closed().await });
                Ok(rx)
            }
        }
    }

    async fn approval_changes(
        &self,
        cursor: &mut ApprovalCursor,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        match &self.db {
            Db::Postgres(pool) => {
                let work = pg::approval_changes(pool, &self.origin, cursor);
                self.call(StoreOp::ApprovalChanges, work).await
            }
            Db::Sqlite { .. } => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_from_the_first() {
        assert_eq!(placeholders(3, 1), "$3");
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
    }
}
