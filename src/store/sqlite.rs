//! The embedded SQLite store: one file, WAL, `synchronous=FULL`.
//!
//! All writes go through a pool of one connection and open with `BEGIN IMMEDIATE`, so
//! writers queue in-process instead of failing with SQLITE_BUSY, and a second process (the
//! `keys` CLI) waits on the busy timeout. Reads use a separate pool.
//!
//! **Group commit for approval writes.** SQLite has one writer and `synchronous=FULL`
//! fsyncs every commit, so approval writes one transaction each queue behind one fsync
//! each. Instead they go to a writer task ([`group_writer`]) that takes every write waiting
//! (up to [`MAX_BATCH`]), runs them one after another in one transaction, commits once, and
//! only then answers each caller. Durability per write is unchanged: no caller hears
//! "done" before the fsync that covers its write; a failed commit fails every write of the
//! batch with [`StoreError::NotCommitted`]. Each approval write is one statement (a new
//! head, or a new version in `approval_events`, see [`super::approvals`]), so a write that
//! fails changes nothing and needs no savepoint of its own.

use super::approvals::{self, ApprovalCache, ApprovalIo, ForUpdate, Write};
use super::rows::{
    APPROVAL_COLUMNS, Cols, TOOL_COLUMNS, approval_from_row, approval_page, caller_from_row,
    corrupt, current_tool_from_row, group_changes, migrator, people_from_json, person_from_row,
    roles_to_text, stamp, steps_to_json, u64_of,
};
use super::{
    ApprovalCursor, ApprovalQuery, Inserted, IntegrationMeta, KeyInfo, People, ReadScope,
    SaveError, SaveKind, Saved, Store, StoreError, TenantTools, UpdateError, Updated, Wakeup,
};
use crate::policy::{
    Approval, ApprovalState, Caller, Person, RevisionChanges, Role, Tool, ToolChange, UnixMillis,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool as Pool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
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
];

#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: Pool,
    reader: Pool,
    /// Approval writes for [`group_writer`].
    jobs: tokio::sync::mpsc::Sender<Job>,
    /// Open approvals and people as last read or written (see [`super::approvals`]).
    cache: Arc<ApprovalCache>,
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Answers one batched write's caller once the batch's commit is known (`Some` = the
/// commit failed, with why).
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

/// One write for the group writer: runs on the writer connection inside the batch's
/// transaction and says how to answer its caller. Its writes are one statement, or it
/// returns an error only before writing: a failed statement changes nothing, and there is
/// no savepoint per write.
type Job = Box<dyn for<'c> FnOnce(&'c mut sqlx::SqliteConnection) -> BoxFuture<'c, Reply> + Send>;

/// Most writes committed together.
const MAX_BATCH: usize = 128;

/// Runs queued approval writes in batches: one transaction and one commit per batch,
/// answers after the commit. A write that panics rolls its whole batch back (every caller
/// hears NotCommitted). Ends when every store handle is gone.
async fn group_writer(pool: Pool, mut jobs: tokio::sync::mpsc::Receiver<Job>) {
    use futures_util::FutureExt;
    use sqlx::Executor;
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A job dropped without running answers its caller NotCommitted (its reply
        // channel closes).
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "SQLite writer connection unavailable");
                continue;
            }
        };
        if let Err(e) = conn.execute("BEGIN IMMEDIATE").await {
            tracing::error!(error = %e, writes = batch.len(), "SQLite batch could not begin");
            continue;
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut broken = None;
        for job in batch {
            // A panicking rule must not take the writer down with it; what it may have
            // written goes with the batch.
            match std::panic::AssertUnwindSafe(job(&mut conn))
                .catch_unwind()
                .await
            {
                Ok(reply) => replies.push(reply),
                Err(_) => {
                    broken = Some("a write in the batch panicked".to_owned());
                    break;
                }
            }
        }
        let failure = match broken {
            Some(why) => Some(why),
            None => conn.execute("COMMIT").await.err().map(|e| e.to_string()),
        };
        if let Some(why) = &failure {
            tracing::error!(error = %why, writes = replies.len(), "SQLite batch did not commit");
            let _ = conn.execute("ROLLBACK").await;
        }
        for reply in replies {
            reply(failure.as_deref());
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
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
        let (jobs, queue) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(group_writer(writer.clone(), queue));
        Ok(SqliteStore {
            writer,
            reader,
            jobs,
            cache: Arc::default(),
        })
    }

    /// Runs `work` in the group writer's next batch; its result once that batch committed.
    async fn grouped<T, E, W>(&self, work: W) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        W: for<'c> FnOnce(&'c mut sqlx::SqliteConnection) -> BoxFuture<'c, Result<T, E>>
            + Send
            + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = work(conn).await;
                let reply: Reply = Box::new(move |failure: Option<&str>| {
                    let _ = tx.send(match (result, failure) {
                        (Ok(_), Some(why)) => Err(E::from(StoreError::NotCommitted(why.into()))),
                        (result, _) => result,
                    });
                });
                reply
            })
        });
        self.jobs.send(job).await.map_err(|_| {
            E::from(StoreError::NotCommitted(
                "the SQLite writer has stopped".into(),
            ))
        })?;
        rx.await.map_err(|_| {
            E::from(StoreError::NotCommitted(
                "the write was abandoned (it panicked, or its batch could not begin)".into(),
            ))
        })?
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Binds the twelve [`TOOL_COLUMNS`] in order.
fn bind_tool<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    t: &'q Tool,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
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

/// Loads an approval as it is now, by `column` (`id` or `request_id`).
async fn fetch_approval(
    conn: &mut sqlx::SqliteConnection,
    tenant: &str,
    column: &str,
    value: &str,
) -> Result<Option<Approval>, StoreError> {
    let sql = format!(
        "SELECT {APPROVAL_COLUMNS} FROM approval_current WHERE tenant = ? AND {column} = ?"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(value)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(approval_from_row).transpose()
}

async fn ensure_tenant(conn: &mut sqlx::SqliteConnection, tenant: &str) -> Result<u64, StoreError> {
    create_tenant(conn, tenant).await?;
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM tenants WHERE id = ?")
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
    Ok(u64_of(revision))
}

async fn read_scope(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: &str,
    scope: &ReadScope,
) -> Result<Vec<Tool>, StoreError> {
    let sql = format!("SELECT {TOOL_COLUMNS}, revision FROM tools WHERE tenant = ?");
    let mut tools = Vec::new();
    match scope {
        ReadScope::Integration(integration) => {
            let sql = format!("{sql} AND integration_id = ? ORDER BY name");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(integration)
                .fetch_all(&mut **tx)
                .await?;
            for row in &rows {
                tools.push(current_tool_from_row(row)?);
            }
        }
        ReadScope::Tools(keys) => {
            let sql = format!("{sql} AND integration_id = ? AND name = ?");
            for (integration, name) in keys {
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(tenant)
                    .bind(integration)
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?;
                if let Some(row) = row {
                    tools.push(current_tool_from_row(&row)?);
                }
            }
        }
    }
    Ok(tools)
}

async fn write_change(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: &str,
    revision: u64,
    change: &ToolChange,
) -> Result<(), StoreError> {
    match change {
        ToolChange::Upsert(tool) => {
            let sql = format!(
                "INSERT INTO tools (tenant, {TOOL_COLUMNS}, revision) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
                .execute(&mut **tx)
                .await?;
            let sql = format!(
                "INSERT INTO tool_changes (tenant, revision, removed, {TOOL_COLUMNS}) \
                 VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            );
            bind_tool(
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(revision as i64),
                tool,
            )
            .execute(&mut **tx)
            .await?;
        }
        ToolChange::Remove {
            integration_id,
            name,
        } => {
            sqlx::query("DELETE FROM tools WHERE tenant = ? AND integration_id = ? AND name = ?")
                .bind(tenant)
                .bind(integration_id)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO tool_changes (tenant, revision, integration_id, name, removed) \
                 VALUES (?, ?, ?, ?, 1)",
            )
            .bind(tenant)
            .bind(revision as i64)
            .bind(integration_id)
            .bind(name)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_key(
        &self,
        id: &str,
        tenant: &str,
        role: Role,
        secret_sha256: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        ensure_tenant(&mut tx, tenant).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, tenant, role, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(tenant)
        .bind(role.as_str())
        .bind(secret_sha256)
        .bind(UnixMillis::now().0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, role, created_at, revoked_at FROM api_keys ORDER BY tenant, created_at, id",
        )
        .fetch_all(&self.reader)
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
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(UnixMillis::now().0)
                .bind(id)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn caller_by_secret(&self, secret_sha256: &str) -> Result<Option<Caller>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant, role FROM api_keys WHERE secret_sha256 = ? AND revoked_at IS NULL",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(caller_from_row).transpose()
    }

    async fn load_all_tools(&self) -> Result<Vec<TenantTools>, StoreError> {
        let tenants = sqlx::query("SELECT id, revision FROM tenants ORDER BY id")
            .fetch_all(&self.reader)
            .await?;
        let mut by_tenant: HashMap<String, TenantTools> = HashMap::new();
        for row in &tenants {
            let tenant: String = row.try_get("id")?;
            let revision: i64 = row.try_get("revision")?;
            by_tenant.insert(
                tenant.clone(),
                TenantTools {
                    tenant,
                    revision: u64_of(revision),
                    tools: Vec::new(),
                },
            );
        }
        let sql = format!("SELECT tenant, {TOOL_COLUMNS}, revision FROM tools");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.reader)
            .await?;
        for row in &rows {
            let tenant: String = row.try_get("tenant")?;
            let tool = current_tool_from_row(row)?;
            if let Some(t) = by_tenant.get_mut(&tenant) {
                t.tools.push(tool);
            }
        }
        let mut all: Vec<TenantTools> = by_tenant.into_values().collect();
        all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        Ok(all)
    }

    async fn load_tenant_tools(&self, tenant: &str) -> Result<TenantTools, StoreError> {
        // One read transaction, so the revision and the tools agree.
        let mut tx = self.reader.begin().await?;
        let revision: Option<i64> = sqlx::query_scalar("SELECT revision FROM tenants WHERE id = ?")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
        let sql = format!("SELECT {TOOL_COLUMNS}, revision FROM tools WHERE tenant = ?");
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
    }

    async fn changes_since(
        &self,
        tenant: &str,
        after: u64,
    ) -> Result<Vec<RevisionChanges>, StoreError> {
        let sql = format!(
            "SELECT revision, removed, {TOOL_COLUMNS} FROM tool_changes \
             WHERE tenant = ? AND revision > ? ORDER BY revision, integration_id, name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(after as i64)
            .fetch_all(&self.reader)
            .await?;
        group_changes(&rows)
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
        let mut tx = self.begin().await?;
        let current = ensure_tenant(&mut tx, tenant).await?;
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
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, id) DO UPDATE SET \
                 kind = excluded.kind, display_name = excluded.display_name, updated_at = excluded.updated_at",
            )
            .bind(tenant)
            .bind(&meta.id)
            .bind(&meta.kind)
            .bind(&meta.display_name)
            .bind(now)
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
        sqlx::query("UPDATE tenants SET revision = ? WHERE id = ?")
            .bind(revision as i64)
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        sqlx::query(
            "INSERT INTO revisions (tenant, revision, kind, actor_key_id, created_at) VALUES (?, ?, ?, ?, ?)",
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
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Saved { revision, changes })
    }

    async fn upsert_people(&self, tenant: &str, people: &[Person]) -> Result<u32, StoreError> {
        let mut tx = self.begin().await?;
        ensure_tenant(&mut tx, tenant).await?;
        let now = UnixMillis::now().0;
        for p in people {
            sqlx::query(
                "INSERT INTO people (tenant, id, display_name, email, manager_id, technician, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, id) DO UPDATE SET \
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
    }

    async fn get_person(&self, tenant: &str, id: &str) -> Result<Option<Person>, StoreError> {
        let row = sqlx::query(
            "SELECT id, display_name, email, manager_id, technician FROM people WHERE tenant = ? AND id = ?",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(person_from_row).transpose()
    }

    async fn insert_approval(&self, tenant: &str, a: &Approval) -> Result<Inserted, StoreError> {
        let (tenant, a) = (tenant.to_owned(), a.clone());
        let cache = self.cache.clone();
        self.grouped(move |conn| {
            Box::pin(async move {
                let inserted = insert_approval_in(conn, &tenant, a).await?;
                if let Inserted::New(created) = &inserted {
                    cache.created(&tenant, created);
                }
                Ok(inserted)
            })
        })
        .await
    }

    async fn get_approval(&self, tenant: &str, id: &str) -> Result<Option<Approval>, StoreError> {
        fetch_approval(&mut *self.reader.acquire().await?, tenant, "id", id).await
    }

    async fn list_approvals(
        &self,
        tenant: &str,
        q: &ApprovalQuery,
    ) -> Result<(Vec<Approval>, Option<i64>), StoreError> {
        // Filter on the state a reader sees: open approvals past expiry count as expired.
        let state_clause = match q.state {
            None => "1 = 1",
            Some(ApprovalState::Expired) => {
                "(state = 'expired' OR (state IN ('pending', 'approved') AND expires_at <= ?2))"
            }
            Some(ApprovalState::Pending | ApprovalState::Approved) => {
                "state = ?1 AND expires_at > ?2"
            }
            Some(_) => "state = ?1",
        };
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approval_current WHERE tenant = ?3 AND {state_clause} \
             AND (?4 IS NULL OR created_by_key = ?4) AND (?5 IS NULL OR seq < ?5) \
             ORDER BY seq DESC LIMIT ?6"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(q.state.map(|s| s.as_str()))
            .bind(q.now)
            .bind(tenant)
            .bind(q.created_by_key.as_deref())
            .bind(q.before_seq)
            .bind(i64::from(q.limit) + 1)
            .fetch_all(&self.reader)
            .await?;
        approval_page(&rows, q.limit)
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
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let cache = self.cache.clone();
        self.grouped(move |conn| {
            Box::pin(async move {
                let mut io = Writer(conn);
                approvals::update(&mut io, &cache, &tenant, &id, &person_ids, &f).await
            })
        })
        .await
    }

    async fn expire_due(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        let mut tx = self.begin().await?;
        let swept_to: i64 = sqlx::query_scalar("SELECT swept_to FROM approval_sweep WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        // Each open approval that expired since the sweep last got there (and a margin)
        // gets its next version, 'expired'. The same statement decides and writes, so a
        // decision made meanwhile is never overwritten: its version is taken.
        let rows = sqlx::query(
            "INSERT INTO approval_events (tenant, approval_id, version, state, required_roles, \
             consumed_by_request, steps, created_at) \
             SELECT tenant, id, version + 1, 'expired', required_roles, consumed_by_request, \
             steps, ?1 FROM approval_current WHERE expires_at > ?2 AND expires_at <= ?1 \
             AND state IN ('pending', 'approved') ORDER BY expires_at LIMIT ?3 \
             ON CONFLICT DO NOTHING RETURNING tenant, approval_id",
        )
        .bind(now)
        .bind(swept_to - approvals::SWEEP_MARGIN_MS)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut expired = Vec::with_capacity(rows.len());
        for row in &rows {
            let tenant: String = row.try_get("tenant")?;
            let id: String = row.try_get("approval_id")?;
            self.cache.forget(&tenant, &id);
            if let Some(a) = fetch_approval(&mut tx, &tenant, "id", &id).await? {
                expired.push((tenant, a));
            }
        }
        let reached = approvals::swept_to(&expired, limit, now);
        sqlx::query("UPDATE approval_sweep SET swept_to = max(swept_to, ?) WHERE id = 1")
            .bind(reached)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(expired)
    }

    async fn tenant_revisions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT id, revision FROM tenants")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, u64_of(row.try_get("revision")?))))
            .collect()
    }

    async fn live_keys(&self) -> Result<Vec<(String, Caller)>, StoreError> {
        let rows = sqlx::query(
            "SELECT secret_sha256, id, tenant, role FROM api_keys WHERE revoked_at IS NULL",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("secret_sha256")?, caller_from_row(row)?)))
            .collect()
    }

    async fn wakeups(&self) -> Result<tokio::sync::mpsc::Receiver<Wakeup>, StoreError> {
        // One process writes this file; the receiver stays open and silent.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move { tx.closed().await });
        Ok(rx)
    }

    async fn approval_changes(
        &self,
        _cursor: &mut ApprovalCursor,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        Ok(Vec::new())
    }
}

/// Creates the tenant's row if it has none yet.
async fn create_tenant(conn: &mut sqlx::SqliteConnection, tenant: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO tenants (id, revision) VALUES (?, 0) ON CONFLICT (id) DO NOTHING")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Inserts an approval (or finds the one its request id made) inside the writer's batch:
/// one statement, version 0 (pending, no steps) being the head alone.
async fn insert_approval_in(
    tx: &mut sqlx::SqliteConnection,
    tenant: &str,
    a: Approval,
) -> Result<Inserted, StoreError> {
    debug_assert!(a.state == ApprovalState::Pending && a.steps.is_empty());
    // Nothing comes back when the request id already made one, which is then read.
    let created = sqlx::query(
        "INSERT INTO approvals (tenant, id, integration_id, tool_name, arguments_json, \
         arguments_sha256, requester_id, request_id, required_roles, created_at, expires_at, \
         created_by_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (tenant, request_id) DO NOTHING RETURNING seq",
    )
    .bind(tenant)
    .bind(&a.id)
    .bind(&a.integration_id)
    .bind(&a.tool_name)
    .bind(&a.arguments_json)
    .bind(&a.arguments_sha256)
    .bind(&a.requester_id)
    .bind(&a.request_id)
    .bind(roles_to_text(&a.required_roles))
    .bind(a.created_at.0)
    .bind(a.expires_at.0)
    .bind(&a.created_by_key)
    .fetch_optional(&mut *tx)
    .await?;
    if created.is_some() {
        return Ok(Inserted::New(a));
    }
    let existing = fetch_approval(tx, tenant, "request_id", &a.request_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("approval vanished inside its transaction".into()))?;
    Ok(Inserted::Existing(existing))
}

/// The writer connection inside its batch, as [`approvals::update`] reads and writes.
struct Writer<'c>(&'c mut sqlx::SqliteConnection);

impl ApprovalIo for Writer<'_> {
    async fn read(
        &mut self,
        tenant: &str,
        id: &str,
        person_ids: &[String],
    ) -> Result<Option<ForUpdate>, StoreError> {
        // The approval and the people named (and its requester), in one statement.
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS}, \
             (SELECT json_group_array(json_object('id', p.id, 'display_name', p.display_name, \
              'email', p.email, 'manager_id', p.manager_id, \
              'technician', json(iif(p.technician, 'true', 'false')), 'version', p.version)) \
              FROM people p WHERE p.tenant = a.tenant AND (p.id = a.requester_id \
              OR p.id IN (SELECT value FROM json_each(?3)))) AS people \
             FROM approval_current a WHERE a.tenant = ?1 AND a.id = ?2"
        );
        let person_ids =
            serde_json::to_string(person_ids).map_err(|e| corrupt("person ids", &e.to_string()))?;
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(id)
            .bind(person_ids)
            .fetch_optional(&mut *self.0)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(ForUpdate {
            approval: approval_from_row(&row)?,
            version: row.int("version")?,
            people: people_from_json(&row.text("people")?)?,
        }))
    }

    async fn write(&mut self, w: &Write) -> Result<bool, StoreError> {
        // Only if the approval is at the version before (version 0 is the head alone), the
        // version is free (the primary key), and the people read are unchanged.
        let written = sqlx::query(
            "INSERT INTO approval_events (tenant, approval_id, version, state, required_roles, \
             consumed_by_request, steps, created_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 \
             WHERE (CASE WHEN ?3 = 1 THEN EXISTS (SELECT 1 FROM approvals \
              WHERE tenant = ?1 AND id = ?2) ELSE EXISTS (SELECT 1 FROM approval_events \
              WHERE tenant = ?1 AND approval_id = ?2 AND version = ?3 - 1) END) \
             AND (SELECT coalesce(group_concat(p.id || ' ' || p.version, ' ' ORDER BY p.id), '') \
              FROM people p WHERE p.tenant = ?1 AND p.id IN (SELECT value FROM json_each(?9))) = ?10 \
             ON CONFLICT DO NOTHING RETURNING version",
        )
        .bind(&w.tenant)
        .bind(&w.id)
        .bind(w.version)
        .bind(w.next.state.as_str())
        .bind(roles_to_text(&w.next.required_roles))
        .bind(w.next.consumed_by_request.as_deref())
        .bind(steps_to_json(&w.next.steps))
        .bind(UnixMillis::now().0)
        .bind(&w.people.ids_json)
        .bind(&w.people.expect)
        .fetch_optional(&mut *self.0)
        .await?;
        Ok(written.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Write = Box<
        dyn for<'c> FnOnce(&'c mut sqlx::SqliteConnection) -> BoxFuture<'c, Result<(), StoreError>>
            + Send,
    >;

    fn insert<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        id: &'static str,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        let q = sqlx::query("INSERT INTO tenants (id, revision) VALUES (?, 0)").bind(id);
        Box::pin(async move { q.execute(conn).await.map(|_| ()).map_err(StoreError::from) })
    }

    /// Waits until `n` writes wait in the writer's queue (they are sent in this order).
    async fn queued(store: &SqliteStore, n: usize) {
        while store.jobs.max_capacity() - store.jobs.capacity() < n {
            tokio::task::yield_now().await;
        }
    }

    type Observation = Result<(i64, i64), StoreError>;

    fn spawn_observer<W>(store: &SqliteStore, work: W) -> tokio::task::JoinHandle<Observation>
    where
        W: for<'c> FnOnce(&'c mut sqlx::SqliteConnection) -> BoxFuture<'c, Observation>
            + Send
            + 'static,
    {
        let store = store.clone();
        tokio::spawn(async move { store.grouped(work).await })
    }

    async fn tenant_ids(store: &SqliteStore) -> Vec<String> {
        sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
            .fetch_all(&store.reader)
            .await
            .unwrap()
    }

    type Held = (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), StoreError>>,
    );

    /// Holds the writer inside a batch until released, so the writes queued meanwhile run
    /// together in the next one: (started, release, the holder).
    fn hold(store: &SqliteStore) -> Held {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let store = store.clone();
        let holder = tokio::spawn(async move {
            store
                .grouped(move |_conn| {
                    Box::pin(async move {
                        let _ = started_tx.send(());
                        let _ = released.await;
                        Ok::<_, StoreError>(())
                    }) as BoxFuture<'_, Result<(), StoreError>>
                })
                .await
        });
        (started, release, holder)
    }

    /// Writes queued together share one transaction (a later one runs before an earlier
    /// one is visible to readers, and all become visible at one commit); one that fails
    /// changes nothing and the others commit; one that panics takes its batch with it.
    #[tokio::test]
    async fn queued_writes_commit_together_a_failing_one_alone_fails_and_a_panic_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let spawn = |work: Write| {
            let store = store.clone();
            tokio::spawn(async move { store.grouped(work).await })
        };

        let (started, release, holder) = hold(&store);
        started.await.unwrap();
        let first = spawn(Box::new(|conn| insert(conn, "first")));
        queued(&store, 1).await;
        // The same id again: the statement fails, and changes nothing.
        let fails = spawn(Box::new(|conn| insert(conn, "first")));
        queued(&store, 2).await;
        let commits = spawn(Box::new(|conn| insert(conn, "commits")));
        queued(&store, 3).await;
        // Queued after "commits": what a reader sees while the batch is still open.
        let reader = store.reader.clone();
        let observes = spawn_observer(&store, move |conn| {
            Box::pin(async move {
                let own: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM tenants WHERE id = 'commits'")
                        .fetch_one(&mut *conn)
                        .await?;
                let readers: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM tenants WHERE id = 'commits'")
                        .fetch_one(&reader)
                        .await?;
                Ok((own, readers))
            })
        });
        queued(&store, 4).await;
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert!(matches!(fails.await.unwrap(), Err(StoreError::Database(_))));
        commits.await.unwrap().unwrap();
        // The batch's writer saw "commits"; readers did not yet: one open transaction.
        assert_eq!(observes.await.unwrap().unwrap(), (1, 0));
        assert_eq!(tenant_ids(&store).await, ["commits", "first"]);

        let (started, release, holder) = hold(&store);
        started.await.unwrap();
        let lost = spawn(Box::new(|conn| insert(conn, "lost")));
        queued(&store, 1).await;
        let panics = spawn(Box::new(|conn| {
            Box::pin(async move {
                insert(conn, "panics").await?;
                panic!("a rule that panics after writing");
            })
        }));
        queued(&store, 2).await;
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert!(matches!(
            lost.await.unwrap(),
            Err(StoreError::NotCommitted(_))
        ));
        assert!(matches!(
            panics.await.unwrap(),
            Err(StoreError::NotCommitted(_))
        ));
        assert_eq!(tenant_ids(&store).await, ["commits", "first"]);
    }

    fn pending(id: &str) -> Approval {
        crate::store::approvals::test_approval(id, &format!("req-{id}"))
    }

    fn person(id: &str, technician: bool) -> Person {
        Person {
            id: id.into(),
            display_name: id.into(),
            email: format!("{id}@example.com"),
            manager_id: String::new(),
            technician,
        }
    }

    /// Approves as `approver` if the directory says they are a technician.
    fn approve_as(
        approver: &'static str,
    ) -> impl Fn(&Approval, &People) -> Result<(Option<Approval>, ()), &'static str> + Send + Sync
    {
        move |a, people| {
            if !people.get(approver).is_some_and(|p| p.technician) {
                return Err("not a technician");
            }
            let mut next = a.clone();
            next.state = ApprovalState::Approved;
            Ok((Some(next), ()))
        }
    }

    async fn store_with_approval(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store
            .upsert_people("t", &[person("tom", true)])
            .await
            .unwrap();
        let Inserted::New(_) = store.insert_approval("t", &pending("a")).await.unwrap() else {
            panic!("a new approval");
        };
        // Reads the people, so the next decision on "a" is taken from the cache.
        let look = |a: &Approval, _: &People| Ok::<_, &'static str>((None, a.state));
        store
            .update_approval("t", "a", vec!["tom".into()], look)
            .await
            .unwrap();
        store
    }

    /// What the process last read is only a shortcut: a directory change it did not
    /// make (another process on the file) rules the next decision.
    #[tokio::test]
    async fn a_directory_change_made_elsewhere_rules_a_decision_the_cache_would_allow() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_approval(&dir).await;
        sqlx::query("UPDATE people SET technician = 0, version = version + 1 WHERE id = 'tom'")
            .execute(&store.writer)
            .await
            .unwrap();
        let refused = store
            .update_approval("t", "a", vec!["tom".into()], approve_as("tom"))
            .await;
        assert!(
            matches!(refused, Err(UpdateError::Rule("not a technician"))),
            "{refused:?}"
        );
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM approval_events")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(events, 0, "nothing was written");
    }

    /// `approval`'s version 1, `denied`, written as another process would (not through
    /// this store or its cache).
    async fn denied_elsewhere(store: &SqliteStore, approval: &str) {
        sqlx::query(
            "INSERT INTO approval_events (tenant, approval_id, version, state, required_roles, \
             consumed_by_request, steps, created_at) \
             VALUES ('t', ?, 1, 'denied', 'technician', NULL, '[]', 2)",
        )
        .bind(approval)
        .execute(&store.writer)
        .await
        .unwrap();
    }

    /// An approval changed elsewhere: an answer that writes nothing is never the cached
    /// one, and a decision the cache would write is refused by its version and made again
    /// from a fresh read.
    #[tokio::test]
    async fn an_approval_changed_elsewhere_is_decided_again_from_a_fresh_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_approval(&dir).await;
        denied_elsewhere(&store, "a").await;
        let look = |a: &Approval, _: &People| Ok::<_, &'static str>((None, a.state));
        let seen = store
            .update_approval("t", "a", Vec::new(), look)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.out, ApprovalState::Denied, "not the cached 'pending'");
        // A second approval, cached with its people, then denied elsewhere: the cached
        // decision (approve) is refused by version 1 being taken, then made again.
        let Inserted::New(_) = store.insert_approval("t", &pending("b")).await.unwrap() else {
            panic!("a new approval");
        };
        denied_elsewhere(&store, "b").await;
        let approve = approve_as("tom");
        let decided = store
            .update_approval("t", "b", vec!["tom".into()], move |a, people| {
                if a.state == ApprovalState::Denied {
                    return Ok((None, ()));
                }
                approve(a, people)
            })
            .await
            .unwrap()
            .unwrap();
        assert!(!decided.changed);
        assert_eq!(decided.approval.state, ApprovalState::Denied);
        let events: i64 =
            sqlx::query_scalar("SELECT count(*) FROM approval_events WHERE approval_id = 'b'")
                .fetch_one(&store.reader)
                .await
                .unwrap();
        assert_eq!(events, 1, "only the denial elsewhere");
    }

    /// An approval whose batch never committed is still in the cache; a decision taken
    /// from it is refused (its version 0 is not there) and the fresh read finds nothing.
    #[tokio::test]
    async fn a_cached_approval_whose_commit_failed_is_not_found_and_gets_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_approval(&dir).await;
        let (started, release, holder) = hold(&store);
        started.await.unwrap();
        let ghost = {
            let store = store.clone();
            tokio::spawn(async move { store.insert_approval("t", &pending("ghost")).await })
        };
        queued(&store, 1).await;
        let panics = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .grouped(|_conn| -> BoxFuture<'_, Result<(), StoreError>> {
                        Box::pin(async { panic!("a rule that panics") })
                    })
                    .await
            })
        };
        queued(&store, 2).await;
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert!(matches!(
            ghost.await.unwrap(),
            Err(StoreError::NotCommitted(_))
        ));
        assert!(panics.await.unwrap().is_err());
        let decided = store
            .update_approval("t", "ghost", vec!["tom".into()], approve_as("tom"))
            .await;
        assert!(matches!(decided, Ok(None)), "{decided:?}");
        let events: i64 =
            sqlx::query_scalar("SELECT count(*) FROM approval_events WHERE approval_id = 'ghost'")
                .fetch_one(&store.reader)
                .await
                .unwrap();
        assert_eq!(events, 0);
    }
}
