//! The PostgreSQL store: several replicas share one database.
//!
//! - A Save locks its tenant's row (`FOR NO KEY UPDATE`) for the whole transaction, so each
//!   tenant's revisions are gapless and committed in order whichever replica saves; it
//!   sends `NOTIFY toolgate_revisions` with the new revision, delivered at commit.
//! - An approval change is one INSERT of its next version into `approval_events`, written
//!   only if that version is still free and the people its decision read are unchanged
//!   (else it reads again and decides again), so single use holds across replicas with one
//!   statement and one commit, and no row is ever locked or updated
//!   ([`super::approvals`]). A decision this replica can take from what it last read or
//!   wrote skips the read.
//! - The events are also what other replicas read, by transaction id
//!   ([`Store::approval_changes`]), to push each change to their watchers, instead of being
//!   sent a NOTIFY (which takes a database-wide lock at commit).
//! - Approval creates, reads-for-update and writes from concurrent callers are batched:
//!   whoever arrives while earlier statements are running shares the next one
//!   ([`super::pg_batch`]).
//! - Every call is bounded by the query timeout, both on the server (`statement_timeout`)
//!   and here (a lost connection that never answers).

use super::approvals::{self, ApprovalCache, ApprovalIo, ForUpdate, Write};
use super::pg_batch::{Batcher, Change, ReadReq, run_changes, run_reads};
use super::rows::{
    APPROVAL_COLUMNS, Cols, TOOL_COLUMNS, approval_from_row, approval_page, caller_from_row,
    corrupt, current_tool_from_row, group_changes, migrator, person_from_row, stamp, u64_of,
};
use super::{
    ApprovalCursor, ApprovalQuery, Inserted, IntegrationMeta, KeyInfo, People, ReadScope,
    SaveError, SaveKind, Saved, Store, StoreError, TenantTools, UpdateError, Updated, Wakeup,
};
use crate::policy::{
    Approval, ApprovalState, Caller, Person, RevisionChanges, Role, Tool, ToolChange, UnixMillis,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, Postgres};
use sqlx::{Row, Transaction};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
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
];

/// The channel a Save notifies, with `<revision> <tenant>` as payload.
const REVISIONS_CHANNEL: &str = "toolgate_revisions";

/// The channel a key change notifies (no payload: the cache reloads).
const KEYS_CHANNEL: &str = "toolgate_keys";

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

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// This process's id, written on each approval change, so the change feed skips what
    /// this replica already published itself.
    origin: Arc<str>,
    timeout: Duration,
    /// Approval statements, batched across concurrent callers (see [`super::pg_batch`]).
    reads: Batcher<ReadReq, Option<ForUpdate>>,
    writes: Batcher<Change, bool>,
    /// Open approvals and people as last read or written (see [`super::approvals`]).
    cache: Arc<ApprovalCache>,
}

impl PgStore {
    /// Connects and runs the migrations (under PostgreSQL's advisory lock, so replicas
    /// starting together migrate once).
    pub async fn connect(url: &str, settings: &PgSettings) -> Result<Self, StoreError> {
        let timeout_ms = settings.query_timeout.as_millis().max(1).to_string();
        let options = PgConnectOptions::from_str(url)?
            .application_name("toolgate")
            .options([("statement_timeout", timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .acquire_timeout(settings.query_timeout)
            .connect_with(options)
            .await?;
        tokio::time::timeout(
            settings.query_timeout.max(Duration::from_secs(30)),
            migrator(MIGRATIONS).run(&pool),
        )
        .await
        .map_err(|_| StoreError::Timeout(settings.query_timeout))??;
        let origin = crate::keys::random_id("rep_")
            .map_err(|e| StoreError::Corrupt(format!("no randomness for a replica id: {e}")))?;
        let origin: Arc<str> = origin.into();
        // One batched statement at a time for reads and one for writes, each on a
        // connection of its own; every caller waiting shares the next one, and a batch of
        // writes is one WAL flush. Running two or more write statements at once measured
        // worse in `cargo bench --bench writes -- --only postgres` (in-process, 16
        // clients: 13 366 writes/s with one, 8 989 with two, 5 745 with eight): each
        // flushes fewer rows, and they contend for the same index pages.
        let timeout = settings.query_timeout;
        Ok(PgStore {
            reads: Batcher::start(pool.clone(), origin.clone(), timeout, run_reads),
            writes: Batcher::start(pool.clone(), origin.clone(), timeout, run_changes),
            cache: Arc::default(),
            pool,
            origin,
            timeout: settings.query_timeout,
        })
    }

    /// Runs `f` within the query timeout.
    async fn timed<T, E: From<StoreError>>(
        &self,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.timeout).into()),
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// A read-only transaction that sees one snapshot throughout.
    async fn begin_snapshot(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }
}

/// An expired approval's [`APPROVAL_COLUMNS`], from the approval `d` and its new event `e`.
const EXPIRED_COLUMNS: &str = "d.seq, d.id, e.state, d.integration_id, d.tool_name, \
     d.arguments_json, d.arguments_sha256, d.requester_id, d.request_id, d.required_roles, \
     d.created_at, d.expires_at, d.created_by_key, d.consumed_by_request, d.steps, e.version";

/// The store's batched statements, as [`approvals::update`] reads and writes.
struct Statements<'a>(&'a PgStore);

impl ApprovalIo for Statements<'_> {
    async fn read(
        &mut self,
        tenant: &str,
        id: &str,
        person_ids: &[String],
    ) -> Result<Option<ForUpdate>, StoreError> {
        self.0
            .reads
            .submit(ReadReq {
                tenant: tenant.to_owned(),
                id: id.to_owned(),
                person_ids: person_ids.to_vec(),
            })
            .await
    }

    async fn write(&mut self, w: &Write) -> Result<bool, StoreError> {
        self.0.writes.submit(Change::Append(w.clone())).await
    }
}

/// Binds the twelve [`TOOL_COLUMNS`] in order.
fn bind_tool<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    t: &'q Tool,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&t.integration_id)
        .bind(&t.name)
        .bind(&t.description)
        .bind(&t.input_schema_json)
        .bind(t.annotations.read_only)
        .bind(t.annotations.destructive)
        .bind(t.annotations.idempotent)
        .bind(t.annotations.open_world)
        .bind(t.policy.as_str())
        .bind(t.manager_approval)
        .bind(t.source.as_str())
        .bind(&t.source_reason)
}

/// An approval as it is now, by `column` (`id` or `request_id`).
async fn fetch_approval(
    conn: &mut PgConnection,
    tenant: &str,
    column: &str,
    value: &str,
) -> Result<Option<Approval>, StoreError> {
    let sql = format!(
        "SELECT {APPROVAL_COLUMNS} FROM approval_current WHERE tenant = $1 AND {column} = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(value)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(approval_from_row).transpose()
}

/// Creates the tenant if new, and locks its row: the lock is what orders Saves.
async fn lock_tenant(conn: &mut PgConnection, tenant: &str) -> Result<u64, StoreError> {
    sqlx::query("INSERT INTO tenants (id, revision) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    let revision: i64 =
        sqlx::query_scalar("SELECT revision FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
            .bind(tenant)
            .fetch_one(&mut *conn)
            .await?;
    Ok(u64_of(revision))
}

async fn ensure_tenant(conn: &mut PgConnection, tenant: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO tenants (id, revision) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn read_scope(
    conn: &mut PgConnection,
    tenant: &str,
    scope: &ReadScope,
) -> Result<Vec<Tool>, StoreError> {
    let rows = match scope {
        ReadScope::Integration(integration) => {
            let sql = format!(
                "SELECT {TOOL_COLUMNS}, revision FROM tools \
                 WHERE tenant = $1 AND integration_id = $2 ORDER BY name"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(integration)
                .fetch_all(&mut *conn)
                .await?
        }
        ReadScope::Tools(keys) => {
            let (integrations, names): (Vec<&str>, Vec<&str>) =
                keys.iter().map(|(i, n)| (i.as_str(), n.as_str())).unzip();
            let sql = format!(
                "SELECT {TOOL_COLUMNS}, revision FROM tools WHERE tenant = $1 \
                 AND (integration_id, name) IN (SELECT * FROM unnest($2::text[], $3::text[]))"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(integrations)
                .bind(names)
                .fetch_all(&mut *conn)
                .await?
        }
    };
    rows.iter().map(current_tool_from_row).collect()
}

async fn write_change(
    conn: &mut PgConnection,
    tenant: &str,
    revision: u64,
    change: &ToolChange,
) -> Result<(), StoreError> {
    match change {
        ToolChange::Upsert(tool) => {
            let sql = format!(
                "INSERT INTO tools (tenant, {TOOL_COLUMNS}, revision) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (tenant, integration_id, name) DO UPDATE SET \
                 description = excluded.description, input_schema_json = excluded.input_schema_json, \
                 read_only_hint = excluded.read_only_hint, destructive_hint = excluded.destructive_hint, \
                 idempotent_hint = excluded.idempotent_hint, open_world_hint = excluded.open_world_hint, \
                 policy = excluded.policy, manager_approval = excluded.manager_approval, \
                 source = excluded.source, source_reason = excluded.source_reason, \
                 revision = excluded.revision"
            );
            bind_tool(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant), tool)
                .bind(revision as i64)
                .execute(&mut *conn)
                .await?;
            let sql = format!(
                "INSERT INTO tool_changes (tenant, revision, removed, {TOOL_COLUMNS}) \
                 VALUES ($1, $2, FALSE, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            );
            bind_tool(
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(revision as i64),
                tool,
            )
            .execute(&mut *conn)
            .await?;
        }
        ToolChange::Remove {
            integration_id,
            name,
        } => {
            sqlx::query(
                "DELETE FROM tools WHERE tenant = $1 AND integration_id = $2 AND name = $3",
            )
            .bind(tenant)
            .bind(integration_id)
            .bind(name)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO tool_changes (tenant, revision, integration_id, name, removed) \
                 VALUES ($1, $2, $3, $4, TRUE)",
            )
            .bind(tenant)
            .bind(revision as i64)
            .bind(integration_id)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn notify(conn: &mut PgConnection, channel: &str, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
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

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create_key(
        &self,
        id: &str,
        tenant: &str,
        role: Role,
        secret_sha256: &str,
    ) -> Result<(), StoreError> {
        self.timed(async {
            let mut tx = self.begin().await?;
            ensure_tenant(&mut tx, tenant).await?;
            sqlx::query(
                "INSERT INTO api_keys (id, tenant, role, secret_sha256, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(tenant)
            .bind(role.as_str())
            .bind(secret_sha256)
            .bind(UnixMillis::now().0)
            .execute(&mut *tx)
            .await?;
            notify(&mut tx, KEYS_CHANNEL, "").await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        self.timed(async {
            let rows = sqlx::query(
                "SELECT id, tenant, role, created_at, revoked_at FROM api_keys \
                 ORDER BY tenant, created_at, id",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let role: String = row.try_get("role")?;
                    Ok(KeyInfo {
                        id: row.try_get("id")?,
                        tenant: row.try_get("tenant")?,
                        role: Role::parse(&role).ok_or_else(|| corrupt("role", &role))?,
                        created_at: row.try_get("created_at")?,
                        revoked_at: row.try_get("revoked_at")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        self.timed(async {
            let mut tx = self.begin().await?;
            let done = sqlx::query(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(UnixMillis::now().0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            notify(&mut tx, KEYS_CHANNEL, "").await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn caller_by_secret(&self, secret_sha256: &str) -> Result<Option<Caller>, StoreError> {
        self.timed(async {
            let row = sqlx::query(
                "SELECT id, tenant, role FROM api_keys \
                 WHERE secret_sha256 = $1 AND revoked_at IS NULL",
            )
            .bind(secret_sha256)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(caller_from_row).transpose()
        })
        .await
    }

    async fn load_all_tools(&self) -> Result<Vec<TenantTools>, StoreError> {
        // Loading may take longer than one query's bound; each statement still has it.
        let mut tx = self.begin_snapshot().await?;
        let tenants = sqlx::query("SELECT id, revision FROM tenants ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        let mut all = Vec::with_capacity(tenants.len());
        let mut index = std::collections::HashMap::new();
        for row in &tenants {
            let tenant: String = row.try_get("id")?;
            index.insert(tenant.clone(), all.len());
            all.push(TenantTools {
                tenant,
                revision: u64_of(row.try_get("revision")?),
                tools: Vec::new(),
            });
        }
        let sql = format!("SELECT tenant, {TOOL_COLUMNS}, revision FROM tools");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let tenant: String = row.try_get("tenant")?;
            if let Some(&i) = index.get(&tenant) {
                all[i].tools.push(current_tool_from_row(row)?);
            }
        }
        tx.commit().await?;
        Ok(all)
    }

    async fn load_tenant_tools(&self, tenant: &str) -> Result<TenantTools, StoreError> {
        self.timed(async {
            let mut tx = self.begin_snapshot().await?;
            let revision: Option<i64> =
                sqlx::query_scalar("SELECT revision FROM tenants WHERE id = $1")
                    .bind(tenant)
                    .fetch_optional(&mut *tx)
                    .await?;
            let sql = format!("SELECT {TOOL_COLUMNS}, revision FROM tools WHERE tenant = $1");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await?;
            let tools = rows
                .iter()
                .map(current_tool_from_row)
                .collect::<Result<_, _>>()?;
            tx.commit().await?;
            Ok(TenantTools {
                tenant: tenant.to_owned(),
                revision: u64_of(revision.unwrap_or(0)),
                tools,
            })
        })
        .await
    }

    async fn changes_since(
        &self,
        tenant: &str,
        after: u64,
    ) -> Result<Vec<RevisionChanges>, StoreError> {
        self.timed(async {
            let sql = format!(
                "SELECT revision, removed, {TOOL_COLUMNS} FROM tool_changes \
                 WHERE tenant = $1 AND revision > $2 ORDER BY revision, integration_id, name"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(after as i64)
                .fetch_all(&self.pool)
                .await?;
            group_changes(&rows)
        })
        .await
    }

    async fn save_revision<F, E>(
        &self,
        tenant: &str,
        actor_key_id: &str,
        kind: SaveKind,
        expected_revision: Option<u64>,
        integration: Option<IntegrationMeta>,
        scope: ReadScope,
        plan: F,
    ) -> Result<Saved, SaveError<E>>
    where
        F: FnOnce(&[Tool]) -> Result<Vec<ToolChange>, E> + Send,
        E: Send,
    {
        self.timed(async {
            let mut tx = self.begin().await?;
            let current = lock_tenant(&mut tx, tenant).await?;
            if let Some(expected) = expected_revision
                && expected != current
            {
                return Err(SaveError::Stale { current });
            }
            let existing = read_scope(&mut tx, tenant, &scope).await?;
            let changes = plan(&existing).map_err(SaveError::Plan)?;
            let now = UnixMillis::now().0;
            if let Some(meta) = &integration {
                sqlx::query(
                    "INSERT INTO integrations (tenant, id, kind, display_name, connected_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (tenant, id) DO UPDATE SET \
                     kind = excluded.kind, display_name = excluded.display_name, \
                     updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(&meta.id)
                .bind(&meta.kind)
                .bind(&meta.display_name)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
            if changes.is_empty() {
                tx.commit().await.map_err(StoreError::from)?;
                return Ok(Saved {
                    revision: current,
                    changes,
                });
            }
            let revision = current + 1;
            sqlx::query("UPDATE tenants SET revision = $1 WHERE id = $2")
                .bind(revision as i64)
                .bind(tenant)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            sqlx::query(
                "INSERT INTO revisions (tenant, revision, kind, actor_key_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(tenant)
            .bind(revision as i64)
            .bind(kind.as_str())
            .bind(actor_key_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
            let changes = stamp(changes, revision);
            for change in &changes {
                write_change(&mut tx, tenant, revision, change).await?;
            }
            // `<revision>@<unix ms> <tenant>`: the time lets followers measure lag.
            let payload = format!("{revision}@{} {tenant}", UnixMillis::now().0);
            notify(&mut tx, REVISIONS_CHANNEL, &payload).await?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok(Saved { revision, changes })
        })
        .await
    }

    async fn upsert_people(&self, tenant: &str, people: &[Person]) -> Result<u32, StoreError> {
        self.timed(async {
            let mut tx = self.begin().await?;
            ensure_tenant(&mut tx, tenant).await?;
            let now = UnixMillis::now().0;
            for p in people {
                sqlx::query(
                    "INSERT INTO people (tenant, id, display_name, email, manager_id, technician, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, id) DO UPDATE SET \
                     display_name = excluded.display_name, email = excluded.email, \
                     manager_id = excluded.manager_id, technician = excluded.technician, \
                     updated_at = excluded.updated_at, version = people.version + 1",
                )
                .bind(tenant)
                .bind(&p.id)
                .bind(&p.display_name)
                .bind(&p.email)
                .bind(&p.manager_id)
                .bind(p.technician)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            self.cache.forget_people(tenant);
            Ok(people.len() as u32)
        })
        .await
    }

    async fn get_person(&self, tenant: &str, id: &str) -> Result<Option<Person>, StoreError> {
        self.timed(async {
            let row = sqlx::query(
                "SELECT id, display_name, email, manager_id, technician FROM people \
                 WHERE tenant = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(person_from_row).transpose()
        })
        .await
    }

    async fn insert_approval(&self, tenant: &str, a: &Approval) -> Result<Inserted, StoreError> {
        debug_assert!(a.state == ApprovalState::Pending && a.steps.is_empty());
        self.timed(async {
            let created = self
                .writes
                .submit(Change::Create {
                    tenant: tenant.to_owned(),
                    approval: a.clone(),
                })
                .await?;
            if created {
                self.cache.created(tenant, a);
                return Ok(Inserted::New(a.clone()));
            }
            let mut conn = self.pool.acquire().await?;
            let existing = fetch_approval(&mut conn, tenant, "request_id", &a.request_id)
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt("an approval's request id conflicted, then vanished".into())
                })?;
            Ok(Inserted::Existing(existing))
        })
        .await
    }

    async fn get_approval(&self, tenant: &str, id: &str) -> Result<Option<Approval>, StoreError> {
        self.timed(async {
            let mut conn = self.pool.acquire().await?;
            fetch_approval(&mut conn, tenant, "id", id).await
        })
        .await
    }

    async fn list_approvals(
        &self,
        tenant: &str,
        q: &ApprovalQuery,
    ) -> Result<(Vec<Approval>, Option<i64>), StoreError> {
        self.timed(async {
            let state_clause = match q.state {
                None => "TRUE",
                Some(ApprovalState::Expired) => {
                    "(state = 'expired' OR (state IN ('pending', 'approved') AND expires_at <= $2))"
                }
                Some(ApprovalState::Pending | ApprovalState::Approved) => {
                    "state = $1 AND expires_at > $2"
                }
                Some(_) => "state = $1",
            };
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approval_current WHERE tenant = $3 \
                 AND {state_clause} AND ($4::text IS NULL OR created_by_key = $4) \
                 AND ($5::bigint IS NULL OR seq < $5) ORDER BY seq DESC LIMIT $6"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(q.state.map(|s| s.as_str()))
                .bind(q.now)
                .bind(tenant)
                .bind(q.created_by_key.as_deref())
                .bind(q.before_seq)
                .bind(i64::from(q.limit) + 1)
                .fetch_all(&self.pool)
                .await?;
            approval_page(&rows, q.limit)
        })
        .await
    }

    async fn update_approval<F, T, E>(
        &self,
        tenant: &str,
        id: &str,
        person_ids: Vec<String>,
        f: F,
    ) -> Result<Option<Updated<T>>, UpdateError<E>>
    where
        F: Fn(&Approval, &People) -> Result<(Option<Approval>, T), E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.timed(async {
            let mut io = Statements(self);
            approvals::update(&mut io, &self.cache, tenant, id, &person_ids, &f).await
        })
        .await
    }

    async fn expire_due(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        self.timed(async {
            let mut tx = self.begin().await?;
            // Each open approval that expired since the sweep last got there (and a margin)
            // gets its next version, 'expired'. A decision written meanwhile, or another
            // replica sweeping at once, took that version: the approval is skipped.
            let sql = format!(
                "WITH due AS (SELECT a.* FROM approval_current a, approval_sweep s \
                 WHERE a.expires_at > s.swept_to - $4 AND a.expires_at <= $1 \
                 AND a.state IN ('pending', 'approved') ORDER BY a.expires_at LIMIT $2), \
                 expired AS (INSERT INTO approval_events (tenant, approval_id, version, origin, \
                 state, required_roles, consumed_by_request, steps, created_at) \
                 SELECT tenant, id, version + 1, $3, 'expired', required_roles, \
                 consumed_by_request, steps, $1 FROM due ORDER BY tenant, id \
                 ON CONFLICT DO NOTHING RETURNING tenant, approval_id, version, state) \
                 SELECT d.tenant, {EXPIRED_COLUMNS} FROM due d JOIN expired e \
                 ON e.tenant = d.tenant AND e.approval_id = d.id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(i64::from(limit))
                .bind(&*self.origin)
                .bind(approvals::SWEEP_MARGIN_MS)
                .fetch_all(&mut *tx)
                .await?;
            let mut expired = Vec::with_capacity(rows.len());
            for row in &rows {
                let tenant: String = row.try_get("tenant")?;
                let a = approval_from_row(row)?;
                self.cache.forget(&tenant, &a.id);
                expired.push((tenant, a));
            }
            let reached = approvals::swept_to(&expired, limit, now);
            sqlx::query("UPDATE approval_sweep SET swept_to = GREATEST(swept_to, $1)")
                .bind(reached)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(expired)
        })
        .await
    }

    async fn tenant_revisions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.timed(async {
            let rows = sqlx::query("SELECT id, revision FROM tenants")
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("id")?, u64_of(row.try_get("revision")?))))
                .collect()
        })
        .await
    }

    async fn live_keys(&self) -> Result<Vec<(String, Caller)>, StoreError> {
        self.timed(async {
            let rows = sqlx::query(
                "SELECT secret_sha256, id, tenant, role FROM api_keys WHERE revoked_at IS NULL",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("secret_sha256")?, caller_from_row(row)?)))
                .collect()
        })
        .await
    }

    async fn wakeups(&self) -> Result<tokio::sync::mpsc::Receiver<Wakeup>, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(forward_notifications(self.pool.clone(), tx));
        Ok(rx)
    }

    async fn approval_changes(
        &self,
        cursor: &mut ApprovalCursor,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        self.timed(async {
            let mut tx = self.begin_snapshot().await?;
            let xmin: String =
                sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                    .fetch_one(&mut *tx)
                    .await?;
            let xmin: u64 = xmin.parse().map_err(|_| corrupt("snapshot xmin", &xmin))?;
            let Some(frontier) = cursor.frontier else {
                tx.commit().await?;
                cursor.frontier = Some(xmin);
                return Ok(Vec::new());
            };
            // Each change as it was made: the approval's head with that version's state.
            let rows = sqlx::query(
                "SELECT e.xid::text AS xid, e.tenant, e.version, h.seq, h.id, e.state, \
                 h.integration_id, h.tool_name, h.arguments_json, h.arguments_sha256, \
                 h.requester_id, h.request_id, e.required_roles, h.created_at, h.expires_at, \
                 h.created_by_key, e.consumed_by_request, e.steps \
                 FROM approval_events e JOIN approvals h \
                 ON h.tenant = e.tenant AND h.id = e.approval_id \
                 WHERE e.xid >= $1::text::xid8 AND e.origin <> $2 ORDER BY e.xid, e.version",
            )
            .bind(frontier.to_string())
            .bind(&*self.origin)
            .fetch_all(&mut *tx)
            .await?;
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for row in &rows {
                let xid: String = row.try_get("xid")?;
                let xid: u64 = xid.parse().map_err(|_| corrupt("xid", &xid))?;
                let tenant: String = row.try_get("tenant")?;
                let a = approval_from_row(row)?;
                let key = (tenant.clone(), a.id.clone(), row.int("version")?);
                if xid >= xmin {
                    // Not yet below every running transaction: it is read again next time.
                    seen.insert(key.clone());
                }
                if cursor.seen.contains(&key) {
                    continue;
                }
                // Changed by another replica: what this one cached of it is behind.
                self.cache.forget(&tenant, &a.id);
                out.push((tenant, a));
            }
            tx.commit().await?;
            cursor.frontier = Some(xmin);
            cursor.seen = seen;
            Ok(out)
        })
        .await
    }
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
