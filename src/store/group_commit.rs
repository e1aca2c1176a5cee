//! Group commit for approval writes: the one batcher the store keeps, because the
//! measurement needs it.
//!
//! An approval write committed alone waits for its own WAL flush (PostgreSQL) or fsync
//! (SQLite, `synchronous=FULL`), and the flushes queue: committed one by one, these writes
//! missed the rates this store must hold over gRPC (`BENCHMARKS.md`, "Approval writes").
//! Here a writer task takes every approval write waiting (up to [`MAX_BATCH`]), runs them
//! one after another in one transaction on a connection of its own, commits once, and
//! only then answers each caller.
//!
//! What a caller is told is unchanged: a write it hears "done" of is committed (the flush
//! covering it is over), and each write is decided as if alone, since the writes of a
//! batch run in order and each sees those before it. If any statement of a batch fails,
//! the whole batch rolls back and every caller gets an error (the failing one its own, the
//! others "retry"): nothing half-written, and a retried write starts from a fresh read.
//! Replicas still meet only in the database: the version key decides which write of an
//! approval's version goes in, whichever batch it is in.
//!
//! Before it commits, a batch links the events it wrote into their tenants' hash chains
//! ([`super::chain`]), hashing each as this batch stored it.

use super::StoreError;
use super::approval_sql::{EVENT_INSERT, HEAD_INSERT, PENDING_ADD, PENDING_REMOVE};
use super::chain::{self, Link};
use super::sqlite::Writer;
use crate::policy::Approval;
use crate::policy::audit::ApprovalEvent;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most writes committed together.
const MAX_BATCH: usize = 128;

/// One approval write.
#[derive(Debug)]
pub(super) enum ApprovalWrite {
    /// A new approval's head and its version 0; `false` when the request id already made
    /// one (nothing is written).
    Create { tenant: String, approval: Approval },
    /// `approval` as version `version`; `false` when that version is taken.
    Append {
        tenant: String,
        version: i64,
        approval: Approval,
    },
}

type Job = (ApprovalWrite, oneshot::Sender<Result<bool, StoreError>>);

/// Each write's outcome, or the batch's failure: the index of the write that failed, if
/// one did, and why.
type Outcome = Result<Vec<bool>, (Option<usize>, StoreError)>;

/// Where the batches are committed.
pub(super) enum Target {
    /// SQLite's one writer connection (which the store's other writes share).
    Sqlite(Writer),
    /// A PostgreSQL connection of the committer's own, outside the pool (a pooled one is
    /// pinged at every release); opened when needed, replaced after a failure, and every
    /// batch bounded by `timeout`.
    Postgres {
        options: Box<PgConnectOptions>,
        timeout: Duration,
    },
}

/// The queue to the writer task; cloned with the store, the task ends with the last clone.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    pub(super) fn start(target: Target, origin: Arc<str>) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(target, origin, queue));
        GroupCommit { jobs }
    }

    /// Queues `write`; its outcome once its batch has committed.
    pub(super) async fn write(&self, write: ApprovalWrite) -> Result<bool, StoreError> {
        let gone = || StoreError::Unavailable("the approval writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.jobs.send((write, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(target: Target, origin: Arc<str>, mut queue: mpsc::Receiver<Job>) {
    let mut postgres: Option<PgConnection> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = match &target {
            Target::Sqlite(writer) => {
                let mut connection = writer.lock().await;
                commit_sqlite(&mut connection, &origin, &batch).await
            }
            Target::Postgres { options, timeout } => {
                let batch = commit_postgres(&mut postgres, options, &origin, &batch);
                let outcome = tokio::time::timeout(*timeout, batch)
                    .await
                    .unwrap_or(Err((None, StoreError::Timeout(*timeout))));
                if let Err((_, e)) = &outcome
                    && e.is_unavailable()
                {
                    // Lost, or too slow to trust: the next batch opens a new connection.
                    postgres = None;
                }
                outcome
            }
        };
        answer(batch, outcome);
    }
}

async fn commit_postgres(
    connection: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    origin: &str,
    batch: &[Job],
) -> Outcome {
    let connection = match connection {
        Some(open) => open,
        None => connection.insert(options.connect().await.map_err(|e| (None, e.into()))?),
    };
    commit_pg_rows(connection, origin, batch).await
}

/// The creations of a batch, over arrays: heads, and version 0 of each head that went in.
/// `$13` is the origin. Returns the (tenant, id) of each approval created.
const CREATE_ROWS_PG: &str = "WITH head AS (INSERT INTO approvals (tenant, id, integration_id, \
     tool_name, arguments_json, arguments_sha256, requester_id, request_id, required_roles, \
     created_at, expires_at, created_by_key, principal) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::text[], \
     $14::text[]) \
     ON CONFLICT (tenant, principal, request_id) DO NOTHING \
     RETURNING tenant, id, required_roles, created_at, expires_at), \
     version_0 AS (INSERT INTO approval_events (tenant, approval_id, version, origin, state, \
     required_roles, consumed_by_request, steps, created_at) \
     SELECT tenant, id, 0, $13, 'pending', required_roles, NULL, '[]', created_at FROM head), \
     pending AS (INSERT INTO pending_approvals (tenant, approval_id, expires_at) \
     SELECT tenant, id, expires_at FROM head ON CONFLICT DO NOTHING) \
     SELECT tenant, id FROM head";

/// The changes of a batch, over arrays (`$4` the origin). Returns the
/// (tenant, approval, version) of each change written.
const APPEND_ROWS_PG: &str = "WITH written AS (INSERT INTO approval_events (tenant, \
     approval_id, version, origin, state, required_roles, consumed_by_request, steps, \
     created_at) \
     SELECT t, a, v, $4, s, r, c, st, at FROM unnest($1::text[], $2::text[], $3::bigint[], \
     $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[]) AS u(t, a, v, s, r, c, st, at) \
     ON CONFLICT DO NOTHING RETURNING tenant, approval_id, version, state), \
     gone AS (DELETE FROM pending_approvals p USING written w WHERE w.state <> 'pending' \
     AND p.tenant = w.tenant AND p.approval_id = w.approval_id) \
     SELECT tenant, approval_id, version FROM written";

/// PostgreSQL: a batch is at most two statements over arrays (`unnest`), the creations and
/// the changes, in one transaction. A round trip per kind rather than per write: on two
/// cores shared with the database, the round trips (each a wake-up on both sides), not the
/// WAL flushes, were what held these writes back.
async fn commit_pg_rows(connection: &mut PgConnection, origin: &str, batch: &[Job]) -> Outcome {
    // Within a batch a request id creates once and a version is written once: the first
    // in the queue, as one by one.
    let (mut creates, mut appends) = (Vec::new(), Vec::new());
    let mut firsts = std::collections::HashSet::new();
    for (i, (write, _)) in batch.iter().enumerate() {
        let (kind, key) = match write {
            ApprovalWrite::Create { tenant, approval } => (
                &mut creates,
                (tenant, &approval.request_id, -1, &approval.principal),
            ),
            ApprovalWrite::Append {
                tenant,
                version,
                approval,
            } => (
                &mut appends,
                (tenant, &approval.id, *version, &approval.principal),
            ),
        };
        if firsts.insert(key) {
            kind.push(i);
        }
    }
    let mut tx = connection.begin().await.map_err(|e| (None, e.into()))?;
    let created = create_rows(&mut tx, origin, batch, &creates).await;
    let appended = append_rows(&mut tx, origin, batch, &appends).await;
    let (mut created, appended) = (
        created.map_err(|e| (None, e))?,
        appended.map_err(|e| (None, e))?,
    );
    let keys = |events: &[ApprovalEvent]| -> std::collections::HashSet<(String, String, i64)> {
        let key = |e: &ApprovalEvent| (e.tenant.clone(), e.approval_id.clone(), e.version);
        events.iter().map(key).collect()
    };
    let (created_keys, appended_keys) = (keys(&created), keys(&appended));
    created.extend(appended);
    tx.link(created).await.map_err(|e| (None, e.into()))?;
    tx.commit().await.map_err(|e| (None, e.into()))?;
    let mut outcomes = vec![false; batch.len()];
    for (i, (write, _)) in batch.iter().enumerate() {
        outcomes[i] = match write {
            ApprovalWrite::Create { tenant, approval } => {
                let key = (tenant.clone(), approval.id.clone(), 0);
                creates.contains(&i) && created_keys.contains(&key)
            }
            ApprovalWrite::Append {
                tenant,
                version,
                approval,
            } => {
                let key = (tenant.clone(), approval.id.clone(), *version);
                appends.contains(&i) && appended_keys.contains(&key)
            }
        };
    }
    Ok(outcomes)
}

/// The version 0 of each approval created, in batch order.
async fn create_rows(
    tx: &mut PgConnection,
    origin: &str,
    batch: &[Job],
    which: &[usize],
) -> Result<Vec<ApprovalEvent>, StoreError> {
    let creates: Vec<(&str, &Approval)> = which
        .iter()
        .filter_map(|&i| match &batch[i].0 {
            ApprovalWrite::Create { tenant, approval } => Some((tenant.as_str(), approval)),
            ApprovalWrite::Append { .. } => None,
        })
        .collect();
    if creates.is_empty() {
        return Ok(Default::default());
    }
    // One array per column, in CREATE_ROWS_PG's order.
    let text = |column: fn(&Approval) -> &str| -> Vec<&str> {
        creates.iter().map(|(_, a)| column(a)).collect()
    };
    let int = |column: fn(&Approval) -> i64| -> Vec<i64> {
        creates.iter().map(|(_, a)| column(a)).collect()
    };
    let roles: Vec<String> = creates
        .iter()
        .map(|(_, a)| super::rows::roles_to_text(&a.required_roles))
        .collect();
    let rows = sqlx::query(CREATE_ROWS_PG)
        .bind(creates.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        .bind(text(|a| &a.id))
        .bind(text(|a| &a.integration_id))
        .bind(text(|a| &a.tool_name))
        .bind(text(|a| &a.arguments_json))
        .bind(text(|a| &a.arguments_sha256))
        .bind(text(|a| &a.requester_id))
        .bind(text(|a| &a.request_id))
        .bind(roles)
        .bind(int(|a| a.created_at.0))
        .bind(int(|a| a.expires_at.0))
        .bind(text(|a| &a.created_by_key))
        .bind(origin)
        .bind(text(|a| &a.principal))
        .fetch_all(&mut *tx)
        .await?;
    let created = rows
        .iter()
        .map(|row| Ok((row.try_get("tenant")?, row.try_get("id")?)))
        .collect::<Result<std::collections::HashSet<(String, String)>, StoreError>>()?;
    Ok(creates
        .into_iter()
        .filter(|(t, a)| created.contains(&(t.to_string(), a.id.clone())))
        .map(|(t, a)| chain::created_event(t, a))
        .collect())
}

/// Each change written, in batch order.
async fn append_rows(
    tx: &mut PgConnection,
    origin: &str,
    batch: &[Job],
    which: &[usize],
) -> Result<Vec<ApprovalEvent>, StoreError> {
    let (mut tenants, mut ids, mut versions, mut states) = (vec![], vec![], vec![], vec![]);
    let (mut roles, mut consumers, mut steps, mut times) = (vec![], vec![], vec![], vec![]);
    let mut events = Vec::with_capacity(which.len());
    for &i in which {
        let ApprovalWrite::Append {
            tenant,
            version,
            approval: a,
        } = &batch[i].0
        else {
            continue;
        };
        tenants.push(tenant.clone());
        ids.push(a.id.clone());
        versions.push(*version);
        states.push(a.state.as_str());
        roles.push(super::rows::roles_to_text(&a.required_roles));
        consumers.push(a.consumed_by_request.clone());
        steps.push(super::rows::steps_to_json(&a.steps));
        let at = super::rows::change_time(a);
        times.push(at);
        events.push(chain::event(tenant, *version, a, at));
    }
    if versions.is_empty() {
        return Ok(Default::default());
    }
    let rows = sqlx::query(APPEND_ROWS_PG)
        .bind(tenants)
        .bind(ids)
        .bind(versions)
        .bind(origin)
        .bind(states)
        .bind(roles)
        .bind(consumers)
        .bind(steps)
        .bind(times)
        .fetch_all(&mut *tx)
        .await?;
    let written = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get("tenant")?,
                row.try_get("approval_id")?,
                row.try_get("version")?,
            ))
        })
        .collect::<Result<std::collections::HashSet<(String, String, i64)>, StoreError>>()?;
    events.retain(|e| written.contains(&(e.tenant.clone(), e.approval_id.clone(), e.version)));
    Ok(events)
}

/// One batch's transaction, a statement per write (SQLite, where a statement is a call
/// into the library, not a round trip).
async fn commit_sqlite(connection: &mut SqliteConnection, origin: &str, batch: &[Job]) -> Outcome {
    let mut tx = connection
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| (None, e.into()))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut written = Vec::new();
    for (i, (write, _)) in batch.iter().enumerate() {
        // On an error the transaction is dropped, which rolls it back.
        let event = write_sqlite(&mut tx, origin, write)
            .await
            .map_err(|e| (Some(i), e.into()))?;
        outcomes.push(event.is_some());
        written.extend(event);
    }
    tx.link(written).await.map_err(|e| (None, e.into()))?;
    tx.commit().await.map_err(|e| (None, e.into()))?;
    Ok(outcomes)
}

/// One write of a SQLite batch: the event it wrote, as stored, or `None` when it wrote
/// nothing (the request id already made an approval, or the version is taken).
async fn write_sqlite(
    tx: &mut SqliteConnection,
    origin: &str,
    write: &ApprovalWrite,
) -> Result<Option<ApprovalEvent>, sqlx::Error> {
    match write {
        ApprovalWrite::Create { tenant, approval } => {
            let head = bind_head!(sqlx::query(HEAD_INSERT), tenant, approval);
            if head.execute(&mut *tx).await?.rows_affected() == 0 {
                return Ok(None);
            }
            let at = approval.created_at.0;
            let version_0 = bind_event!(
                sqlx::query(EVENT_INSERT),
                tenant,
                0_i64,
                origin,
                approval,
                at
            );
            // A new head has no events: a version 0 already there would be linked in place
            // of this one.
            if version_0.execute(&mut *tx).await?.rows_affected() != 1 {
                return Err(sqlx::Error::Protocol(format!(
                    "approval {} has a version 0 but no head",
                    approval.id
                )));
            }
            sqlx::query(PENDING_ADD)
                .bind(tenant)
                .bind(&approval.id)
                .bind(approval.expires_at.0)
                .execute(&mut *tx)
                .await?;
            Ok(Some(chain::event(tenant, 0, approval, at)))
        }
        ApprovalWrite::Append {
            tenant,
            version,
            approval,
        } => {
            let at = super::rows::change_time(approval);
            let event = bind_event!(
                sqlx::query(EVENT_INSERT),
                tenant,
                *version,
                origin,
                approval,
                at
            );
            if event.execute(&mut *tx).await?.rows_affected() == 0 {
                return Ok(None);
            }
            if approval.state != crate::policy::ApprovalState::Pending {
                let gone = sqlx::query(PENDING_REMOVE).bind(tenant).bind(&approval.id);
                gone.execute(&mut *tx).await?;
            }
            Ok(Some(chain::event(tenant, *version, approval, at)))
        }
    }
}

fn answer(batch: Vec<Job>, outcome: Outcome) {
    match outcome {
        Ok(outcomes) => {
            for ((_, reply), done) in batch.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(done));
            }
        }
        Err((failed, error)) => {
            let why = error.to_string();
            let mut own = Some(error);
            for (i, (_, reply)) in batch.into_iter().enumerate() {
                let error = own.take_if(|_| failed == Some(i)).unwrap_or_else(|| {
                    StoreError::Unavailable(format!(
                        "the batch this write was part of did not commit ({why}); retry"
                    ))
                });
                let _ = reply.send(Err(error));
            }
        }
    }
}
