//! Approval statements for PostgreSQL, batched across concurrent callers.
//!
//! Every approval create, read-for-update and versioned write is one statement over
//! arrays (`unnest`), so the statement for one caller and for forty is the same. A
//! [`Batcher`] runs up to `concurrency` such statements at once; callers that arrive while
//! all are busy wait in its queue, and the next free slot takes the whole queue as one
//! statement and one commit. At low load every call runs at once, alone; under load the
//! database sees a few multi-row statements instead of one per call, which is what a
//! single-row INSERT cannot do.
//!
//! A batch is one statement, so it applies entirely or not at all. If it fails, each of
//! its requests is run again alone, so one request that the database refuses fails alone.

use super::rows::{
    APPROVAL_COLUMNS, Cols, approval_from_row, corrupt, people_from_json, roles_to_text,
    steps_from_json,
};
use super::{People, StoreError};
use crate::policy::{Approval, ApprovalStep, UnixMillis};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One statement for a slice of requests: one answer per request, in order.
pub(super) type RunFn<Req, Resp> =
    for<'a> fn(&'a PgPool, &'a str, &'a [Req]) -> BoxFuture<'a, Result<Vec<Resp>, StoreError>>;

/// Most requests in one statement.
const MAX_BATCH: usize = 64;

type Queued<Req, Resp> = (Req, oneshot::Sender<Result<Resp, StoreError>>);

/// Runs requests of one kind as batched statements (see the module docs).
pub(super) struct Batcher<Req, Resp> {
    queue: mpsc::Sender<Queued<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batcher's task; it ends when the last handle is dropped.
    pub(super) fn start(
        pool: PgPool,
        origin: Arc<str>,
        concurrency: usize,
        run: RunFn<Req, Resp>,
    ) -> Self {
        let (queue, jobs) = mpsc::channel(8 * MAX_BATCH);
        tokio::spawn(collect(pool, origin, concurrency.max(1), run, jobs));
        Batcher { queue }
    }

    /// Runs `req` in the next batch with a free slot.
    pub(super) async fn submit(&self, req: Req) -> Result<Resp, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((req, tx))
            .await
            .map_err(|_| StoreError::NotCommitted("the approval writer has stopped".into()))?;
        rx.await.map_err(|_| {
            StoreError::NotCommitted("the approval statement was abandoned (it panicked)".into())
        })?
    }
}

async fn collect<Req: Send + 'static, Resp: Send + 'static>(
    pool: PgPool,
    origin: Arc<str>,
    concurrency: usize,
    run: RunFn<Req, Resp>,
    mut jobs: mpsc::Receiver<Queued<Req, Resp>>,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    loop {
        // A slot first, then the queue: while every slot is busy, callers queue up and
        // the next slot takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = jobs.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let origin = origin.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (reqs, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
            match run(&pool, &origin, &reqs).await {
                Ok(answers) => {
                    debug_assert_eq!(answers.len(), reqs.len());
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) if reqs.len() == 1 => {
                    let _ = replies.into_iter().next().map(|r| r.send(Err(e)));
                }
                Err(e) => {
                    // Nothing of the batch was written (one statement): run each alone, so
                    // that whatever the database refused fails alone.
                    tracing::debug!(error = %e, requests = reqs.len(), "approval batch failed; running each alone");
                    for (i, reply) in replies.into_iter().enumerate() {
                        let answer = run(&pool, &origin, &reqs[i..=i]).await.and_then(|mut one| {
                            one.pop().ok_or_else(|| {
                                StoreError::Corrupt("a batch of one gave no answer".into())
                            })
                        });
                        let _ = reply.send(answer);
                    }
                }
            }
        });
    }
}

/// Creates an approval; `None` when its request id already made one (read that instead).
pub(super) struct CreateReq {
    pub tenant: String,
    pub approval: Approval,
}

pub(super) fn run_creates<'a>(
    pool: &'a PgPool,
    origin: &'a str,
    reqs: &'a [CreateReq],
) -> BoxFuture<'a, Result<Vec<Option<Approval>>, StoreError>> {
    Box::pin(async move {
        // A second create with the same request id in one batch waits for the next
        // statement: it then finds the first one's approval.
        let mut seen = HashSet::new();
        let fresh: Vec<&CreateReq> = reqs
            .iter()
            .filter(|r| seen.insert((r.tenant.as_str(), r.approval.request_id.as_str())))
            .collect();
        let col = |f: fn(&CreateReq) -> &str| fresh.iter().map(|r| f(r)).collect::<Vec<_>>();
        let roles: Vec<String> = fresh
            .iter()
            .map(|r| roles_to_text(&r.approval.required_roles))
            .collect();
        // One statement: the approvals and their first changes (a new approval has no
        // steps to read back).
        let sql = format!(
            "WITH c AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
             $11::bigint[], $12::bigint[], $13::text[]) WITH ORDINALITY AS c(c_tenant, c_id, \
             c_state, c_integration, c_tool, c_arguments, c_sha256, c_requester, c_request, \
             c_roles, c_created, c_expires, c_key, c_n)), \
             created AS (INSERT INTO approvals (tenant, id, state, integration_id, tool_name, \
             arguments_json, arguments_sha256, requester_id, request_id, required_roles, \
             created_at, expires_at, created_by_key, consumed_by_request, updated_at) \
             SELECT c_tenant, c_id, c_state, c_integration, c_tool, c_arguments, c_sha256, \
             c_requester, c_request, c_roles, c_created, c_expires, c_key, NULL, c_created \
             FROM c ORDER BY c_n \
             ON CONFLICT (tenant, request_id) DO NOTHING RETURNING *), \
             logged AS (INSERT INTO approval_changes (tenant, approval_id, origin, state, \
             required_roles, consumed_by_request, step_count, created_at) \
             SELECT tenant, id, $14::text, state, required_roles, NULL, 0, created_at \
             FROM created) \
             SELECT tenant, {APPROVAL_COLUMNS} FROM created"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(col(|r| &r.tenant))
            .bind(col(|r| &r.approval.id))
            .bind(col(|r| r.approval.state.as_str()))
            .bind(col(|r| &r.approval.integration_id))
            .bind(col(|r| &r.approval.tool_name))
            .bind(col(|r| &r.approval.arguments_json))
            .bind(col(|r| &r.approval.arguments_sha256))
            .bind(col(|r| &r.approval.requester_id))
            .bind(col(|r| &r.approval.request_id))
            .bind(&roles)
            .bind(
                fresh
                    .iter()
                    .map(|r| r.approval.created_at.0)
                    .collect::<Vec<_>>(),
            )
            .bind(
                fresh
                    .iter()
                    .map(|r| r.approval.expires_at.0)
                    .collect::<Vec<_>>(),
            )
            .bind(col(|r| &r.approval.created_by_key))
            .bind(origin)
            .fetch_all(pool)
            .await?;
        let mut created = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let tenant: String = row.try_get("tenant")?;
            let approval = approval_from_row(row)?;
            created.insert((tenant, approval.id.clone()), approval);
        }
        Ok(reqs
            .iter()
            .map(|r| created.remove(&(r.tenant.clone(), r.approval.id.clone())))
            .collect())
    })
}

/// Reads an approval with its steps and version, and the people named (and its
/// requester); `None` when there is no such approval.
pub(super) struct ReadReq {
    pub tenant: String,
    pub id: String,
    pub person_ids: Vec<String>,
}

pub(super) type ForUpdate = Option<(Approval, i64, People)>;

pub(super) fn run_reads<'a>(
    pool: &'a PgPool,
    _origin: &'a str,
    reqs: &'a [ReadReq],
) -> BoxFuture<'a, Result<Vec<ForUpdate>, StoreError>> {
    Box::pin(async move {
        let people_json = reqs
            .iter()
            .map(|r| serde_json::to_string(&r.person_ids))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt("person ids", &e.to_string()))?;
        let sql = format!(
            "SELECT r.q_n, {APPROVAL_COLUMNS}, a.version, \
             (SELECT coalesce(json_agg(json_build_object('role', s.role, 'approver_id', \
              s.approver_id, 'approved', s.approved, 'comment', s.comment, 'decided_at', \
              s.decided_at) ORDER BY s.decided_at, s.step), '[]')::text \
              FROM approval_steps s WHERE s.tenant = a.tenant AND s.approval_id = a.id) AS steps, \
             (SELECT coalesce(json_agg(json_build_object('id', p.id, 'display_name', \
              p.display_name, 'email', p.email, 'manager_id', p.manager_id, 'technician', \
              p.technician)), '[]')::text FROM people p \
              WHERE p.tenant = a.tenant AND (p.id = a.requester_id OR p.id IN \
              (SELECT json_array_elements_text(r.q_people::json)))) AS people \
             FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
              AS r(q_tenant, q_id, q_people, q_n) \
             JOIN approvals a ON a.tenant = r.q_tenant AND a.id = r.q_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(reqs.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
            .bind(reqs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
            .bind(&people_json)
            .fetch_all(pool)
            .await?;
        let mut answers: Vec<ForUpdate> = reqs.iter().map(|_| None).collect();
        for row in &rows {
            let n: i64 = row.try_get("q_n")?;
            *answer_for(&mut answers, n)? = Some(for_update_from_row(row)?);
        }
        Ok(answers)
    })
}

/// The answer for the request at 1-based position `n` of a batch.
fn answer_for<T>(answers: &mut [T], n: i64) -> Result<&mut T, StoreError> {
    usize::try_from(n - 1)
        .ok()
        .and_then(|i| answers.get_mut(i))
        .ok_or_else(|| StoreError::Corrupt(format!("batch row {n} out of range")))
}

fn for_update_from_row(row: &PgRow) -> Result<(Approval, i64, People), StoreError> {
    let mut approval = approval_from_row(row)?;
    approval.steps = steps_from_json(&row.text("steps")?)?;
    let people = people_from_json(&row.text("people")?)?;
    Ok((approval, row.int("version")?, people))
}

/// Writes an approval's new state (its new steps, and the change for other replicas) if
/// it is still at `version`; `false` if it changed since it was read (read it again).
pub(super) struct WriteReq {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub next: Approval,
    /// How many of `next.steps` were already stored.
    pub stored_steps: usize,
}

pub(super) fn run_writes<'a>(
    pool: &'a PgPool,
    origin: &'a str,
    reqs: &'a [WriteReq],
) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
    Box::pin(async move {
        // One write per approval per statement (an UPDATE changes a row once): a second
        // write to the same approval in this batch answers "changed", and its caller reads
        // again and sees the first one's outcome.
        let mut seen = HashSet::new();
        let take: Vec<bool> = reqs
            .iter()
            .map(|r| seen.insert((r.tenant.as_str(), r.id.as_str())))
            .collect();
        let writes: Vec<(usize, &WriteReq)> =
            reqs.iter().enumerate().filter(|(i, _)| take[*i]).collect();
        let mut step_of = Vec::new();
        let mut steps: Vec<&ApprovalStep> = Vec::new();
        for (i, w) in &writes {
            let new = &w.next.steps[w.stored_steps.min(w.next.steps.len())..];
            step_of.extend(std::iter::repeat_n(*i as i64 + 1, new.len()));
            steps.extend(new);
        }
        let now = UnixMillis::now().0;
        let ords: Vec<i64> = writes.iter().map(|(i, _)| *i as i64 + 1).collect();
        let written: Vec<i64> = sqlx::query_scalar(
            "WITH w AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], \
             $4::bigint[], $5::text[], $6::text[], $7::text[], $8::int[]) \
             AS w(w_n, w_tenant, w_id, w_version, w_state, w_roles, w_consumed, w_step_count)), \
             updated AS (UPDATE approvals a SET state = w.w_state, required_roles = w.w_roles, \
             consumed_by_request = w.w_consumed, updated_at = $9::bigint, version = a.version + 1 \
             FROM w WHERE a.tenant = w.w_tenant AND a.id = w.w_id AND a.version = w.w_version \
             RETURNING w.w_n, a.tenant, a.id, w.w_state, w.w_roles, w.w_consumed, \
             w.w_step_count), \
             logged AS (INSERT INTO approval_changes (tenant, approval_id, origin, state, \
             required_roles, consumed_by_request, step_count, created_at) \
             SELECT tenant, id, $10::text, w_state, w_roles, w_consumed, w_step_count, \
             $9::bigint FROM updated), \
             stepped AS (INSERT INTO approval_steps \
             (tenant, approval_id, role, approver_id, approved, comment, decided_at) \
             SELECT u.tenant, u.id, s.role, s.approver_id, s.approved, s.comment, s.decided_at \
             FROM unnest($11::bigint[], $12::text[], $13::text[], $14::bool[], $15::text[], \
             $16::bigint[]) WITH ORDINALITY \
             AS s(s_n, role, approver_id, approved, comment, decided_at, s_order) \
             JOIN updated u ON u.w_n = s.s_n ORDER BY s.s_order) \
             SELECT w_n FROM updated",
        )
        .bind(&ords)
        .bind(
            writes
                .iter()
                .map(|(_, w)| w.tenant.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, w)| w.id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(writes.iter().map(|(_, w)| w.version).collect::<Vec<_>>())
        .bind(
            writes
                .iter()
                .map(|(_, w)| w.next.state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, w)| roles_to_text(&w.next.required_roles))
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, w)| w.next.consumed_by_request.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, w)| w.next.steps.len() as i32)
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .bind(origin)
        .bind(&step_of)
        .bind(steps.iter().map(|s| s.role.as_str()).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|s| s.approver_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|s| s.approved).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.comment.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.decided_at.0).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
        let mut answers = vec![false; reqs.len()];
        for n in written {
            *answer_for(&mut answers, n)? = true;
        }
        Ok(answers)
    })
}

/// Against a real PostgreSQL (`TOOLGATE_TEST_POSTGRES`, default the local server), in a
/// fresh database per test.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ApprovalState, ApproverRole};
    use crate::store::pg::{PgSettings, PgStore};
    use sqlx::{Connection, Executor, PgConnection};
    use std::future::Future;
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);
    const ORIGIN: &str = "rep_test";

    fn admin_url() -> String {
        std::env::var("TOOLGATE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// A migrated database of its own; dropped by [`Db::drop_now`] (the suites' sweep
    /// drops what a failed test leaves, by its `tg_test_<pid>_` name).
    struct Db {
        name: String,
        pool: PgPool,
    }

    impl Db {
        async fn create() -> Db {
            let admin = admin_url();
            let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!(
                    "\n\n*** PostgreSQL tests need a server: cannot connect to {admin}: {e}\n\
                     *** Start one (CI does: .ci/run) or point TOOLGATE_TEST_POSTGRES at one.\n\n"
                )
            });
            let name = format!(
                "tg_test_{}_batch{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .expect("CREATE DATABASE");
            let root = admin.rsplit_once('/').map_or(admin.as_str(), |(r, _)| r);
            let url = format!("{root}/{name}");
            // The store's own migrations, then a plain pool for the statements under test.
            drop(
                PgStore::connect(&url, &PgSettings::default())
                    .await
                    .expect("migrate"),
            );
            let pool = PgPool::connect(&url).await.expect("connect");
            sqlx::query("INSERT INTO tenants (id, revision) VALUES ('t', 0)")
                .execute(&pool)
                .await
                .expect("tenant");
            Db { name, pool }
        }

        async fn drop_now(self) {
            self.pool.close().await;
            let mut conn = PgConnection::connect(&admin_url()).await.expect("admin");
            conn.execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .expect("DROP DATABASE");
        }

        async fn count(&self, sql: &'static str) -> i64 {
            sqlx::query_scalar(sql)
                .fetch_one(&self.pool)
                .await
                .expect(sql)
        }
    }

    fn approval(id: &str, request_id: &str) -> Approval {
        Approval {
            id: id.into(),
            state: ApprovalState::Pending,
            integration_id: "entra".into(),
            tool_name: "reset_password".into(),
            arguments_json: "{}".into(),
            arguments_sha256: "00".into(),
            requester_id: "alice".into(),
            request_id: request_id.into(),
            required_roles: vec![ApproverRole::Technician],
            steps: Vec::new(),
            created_at: UnixMillis(1),
            expires_at: UnixMillis(i64::MAX / 2),
            created_by_key: "key_1".into(),
            consumed_by_request: None,
        }
    }

    fn create(a: Approval) -> CreateReq {
        CreateReq {
            tenant: "t".into(),
            approval: a,
        }
    }

    /// `current` with one more step, in state `state`.
    fn decided(current: &Approval, state: ApprovalState, approver: &str) -> Approval {
        let mut next = current.clone();
        next.state = state;
        next.steps.push(ApprovalStep {
            role: ApproverRole::Technician,
            approver_id: approver.into(),
            approved: state == ApprovalState::Approved,
            comment: String::new(),
            decided_at: UnixMillis(2),
        });
        next
    }

    /// Polls `f` once: enough for [`Batcher::submit`] to queue its request.
    async fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) {
        let mut f = Some(f);
        std::future::poll_fn(|cx| {
            if let Some(f) = f.take() {
                assert!(f.poll(cx).is_pending(), "answered before its batch ran");
            }
            std::task::Poll::Ready(())
        })
        .await;
    }

    #[tokio::test]
    async fn a_batch_the_database_refuses_is_run_again_one_by_one_so_only_the_bad_request_fails() {
        let db = Db::create().await;
        let batcher = Batcher::start(db.pool.clone(), ORIGIN.into(), 1, run_creates);
        let mut bad = approval("apr_bad", "req_bad");
        // PostgreSQL refuses NUL in text: the whole multi-row INSERT fails.
        bad.arguments_json = "{\"a\":\"\0\"}".into();
        let good1 = std::pin::pin!(batcher.submit(create(approval("apr_1", "req_1"))));
        let bad = std::pin::pin!(batcher.submit(create(bad)));
        let good2 = std::pin::pin!(batcher.submit(create(approval("apr_2", "req_2"))));
        let (mut good1, mut bad, mut good2) = (good1, bad, good2);
        // All three are queued before the batcher's task runs (this runtime has one
        // thread and nothing yields in between): they go to the database as one statement.
        poll_once(good1.as_mut()).await;
        poll_once(bad.as_mut()).await;
        poll_once(good2.as_mut()).await;
        let good1 = good1.await.expect("the first good create");
        let bad = bad.await;
        let good2 = good2.await.expect("the second good create");
        assert_eq!(good1.map(|a| a.id), Some("apr_1".to_string()));
        assert_eq!(good2.map(|a| a.id), Some("apr_2".to_string()));
        assert!(
            matches!(bad, Err(StoreError::Database(_))),
            "the bad request fails: {bad:?}"
        );
        assert_eq!(db.count("SELECT count(*) FROM approvals").await, 2);
        assert_eq!(db.count("SELECT count(*) FROM approval_changes").await, 2);
        db.drop_now().await;
    }

    #[tokio::test]
    async fn creates_in_one_statement_make_one_approval_per_request_id() {
        let db = Db::create().await;
        let made = run_creates(
            &db.pool,
            ORIGIN,
            &[
                create(approval("apr_a", "req_same")),
                create(approval("apr_b", "req_other")),
                create(approval("apr_c", "req_same")),
            ],
        )
        .await
        .expect("creates");
        let ids: Vec<Option<String>> = made.into_iter().map(|a| a.map(|a| a.id)).collect();
        assert_eq!(
            ids,
            [Some("apr_a".into()), Some("apr_b".into()), None],
            "the second create with req_same finds the first one's approval"
        );
        // Again, in a later statement: the request id already made one.
        let again = run_creates(&db.pool, ORIGIN, &[create(approval("apr_d", "req_other"))])
            .await
            .expect("create again");
        assert!(again[0].is_none());
        assert_eq!(db.count("SELECT count(*) FROM approvals").await, 2);
        db.drop_now().await;
    }

    #[tokio::test]
    async fn reads_and_writes_in_one_statement_answer_each_request_and_write_each_approval_once() {
        let db = Db::create().await;
        run_creates(
            &db.pool,
            ORIGIN,
            &[
                create(approval("apr_a", "req_a")),
                create(approval("apr_b", "req_b")),
            ],
        )
        .await
        .expect("creates");
        sqlx::query(
            "INSERT INTO people (tenant, id, display_name, email, manager_id, technician, \
             updated_at) VALUES ('t', 'alice', 'Alice', 'a@x', 'mo', FALSE, 0), \
             ('t', 'tom', 'Tom', 't@x', '', TRUE, 0)",
        )
        .execute(&db.pool)
        .await
        .expect("people");

        let read = |id: &str, people: &[&str]| ReadReq {
            tenant: "t".into(),
            id: id.into(),
            person_ids: people.iter().map(|p| p.to_string()).collect(),
        };
        let reads = run_reads(
            &db.pool,
            ORIGIN,
            &[
                read("apr_a", &["tom"]),
                read("apr_none", &[]),
                read("apr_b", &[]),
            ],
        )
        .await
        .expect("reads");
        let [
            Some((a, a_version, a_people)),
            None,
            Some((b, b_version, b_people)),
        ] = <[ForUpdate; 3]>::try_from(reads).expect("three answers")
        else {
            panic!("each read answers its own request");
        };
        assert_eq!((a.id.as_str(), b.id.as_str()), ("apr_a", "apr_b"));
        assert_eq!((a_version, b_version), (0, 0));
        let mut named: Vec<&String> = a_people.keys().collect();
        named.sort();
        assert_eq!(
            named,
            ["alice", "tom"],
            "the person asked for and the requester"
        );
        assert_eq!(b_people.keys().collect::<Vec<_>>(), ["alice"]);

        let write = |current: &Approval, version: i64, next: Approval| WriteReq {
            tenant: "t".into(),
            id: current.id.clone(),
            version,
            next,
            stored_steps: current.steps.len(),
        };
        let written = run_writes(
            &db.pool,
            ORIGIN,
            &[
                write(&a, 0, decided(&a, ApprovalState::Approved, "tom")),
                // The same approval again in the same statement: refused, read again.
                write(&a, 0, decided(&a, ApprovalState::Denied, "tina")),
                // A version that is no longer current: refused.
                write(&b, 7, decided(&b, ApprovalState::Approved, "tom")),
            ],
        )
        .await
        .expect("writes");
        assert_eq!(written, [true, false, false]);

        let after = run_reads(&db.pool, ORIGIN, &[read("apr_a", &[]), read("apr_b", &[])])
            .await
            .expect("read back");
        let (a, a_version, _) = after[0].clone().expect("apr_a");
        let (b, b_version, _) = after[1].clone().expect("apr_b");
        assert_eq!((a.state, a_version), (ApprovalState::Approved, 1));
        assert_eq!(
            a.steps
                .iter()
                .map(|s| s.approver_id.as_str())
                .collect::<Vec<_>>(),
            ["tom"],
            "only the written request's step is stored"
        );
        assert_eq!(
            (b.state, b_version, b.steps.len()),
            (ApprovalState::Pending, 0, 0)
        );
        // Two creations and the one write, for other replicas.
        assert_eq!(db.count("SELECT count(*) FROM approval_changes").await, 3);
        db.drop_now().await;
    }
}
