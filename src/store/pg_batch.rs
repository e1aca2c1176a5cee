//! Approval statements for PostgreSQL, batched across concurrent callers.
//!
//! Every approval read and write is one statement over arrays (`unnest`), so the
//! statement for one caller and for forty is the same. A [`Batcher`] runs one such
//! statement at a time on a connection of its own; callers that arrive meanwhile wait in
//! its queue, and the next statement takes the whole queue (under load, after a few yields
//! to let callers about to arrive join it). At low load every call runs at once, alone; under load the database sees one multi-row statement and one commit (one
//! WAL flush) for every caller waiting, which is what single-row INSERTs cannot do.
//!
//! A batch is one statement, so it applies entirely or not at all. If the database refuses
//! it, each of its requests is run again alone, so one request that the database refuses
//! fails alone; if the database cannot be reached, every caller of the batch hears so at
//! once.
//! A statement that does not answer within the query timeout fails its batch, and its
//! connection is closed and replaced.

use super::StoreError;
use super::approvals::{ForUpdate, Write};
use super::rows::{
    APPROVAL_COLUMNS, Cols, approval_from_row, corrupt, people_from_json, roles_to_text,
    steps_to_json,
};
use crate::policy::{Approval, UnixMillis};
use sqlx::Row;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One statement for a slice of requests: one answer per request, in order.
pub(super) type RunFn<Req, Resp> = for<'a> fn(
    &'a mut PgConnection,
    &'a str,
    &'a [Req],
) -> BoxFuture<'a, Result<Vec<Resp>, StoreError>>;

/// Most requests in one statement.
const MAX_BATCH: usize = 64;

/// Under load (the last batch held more than one request), how many times the batcher
/// yields to the scheduler to gather more requests before it sends a batch. In `cargo
/// bench --bench writes -- --only postgres`, four gave 14 000–16 200 writes/s in-process
/// and 7 000–7 900 over gRPC, none 12 200–13 000 and 6 000–6 100, sixteen no better than
/// four. At low load a request is sent at once.
const GATHER_YIELDS: usize = 4;

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

/// What a batcher runs on, and how long a statement may take.
struct Runner<Req, Resp> {
    pool: PgPool,
    origin: Arc<str>,
    timeout: Duration,
    run: RunFn<Req, Resp>,
    /// Kept between batches, so a batch is one round trip (a connection taken from the
    /// pool is pinged first); dropped after any failure and taken afresh.
    conn: Option<PoolConnection<Postgres>>,
}

impl<Req: Send + Sync + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batcher's task; it ends when the last handle is dropped.
    pub(super) fn start(
        pool: PgPool,
        origin: Arc<str>,
        timeout: Duration,
        run: RunFn<Req, Resp>,
    ) -> Self {
        let (queue, jobs) = mpsc::channel(8 * MAX_BATCH);
        let runner = Runner {
            pool,
            origin,
            timeout,
            run,
            conn: None,
        };
        tokio::spawn(collect(runner, jobs));
        Batcher { queue }
    }

    /// Runs `req` in the next batch.
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

impl<Req, Resp> Runner<Req, Resp> {
    /// One statement for `reqs` on the kept connection, within the timeout.
    async fn run(&mut self, reqs: &[Req]) -> Result<Vec<Resp>, StoreError> {
        use futures_util::FutureExt;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let fresh = tokio::time::timeout(self.timeout, self.pool.acquire())
                    .await
                    .map_err(|_| StoreError::Timeout(self.timeout))??;
                self.conn.insert(fresh)
            }
        };
        let statement = std::panic::AssertUnwindSafe((self.run)(conn, &self.origin, reqs));
        let outcome = match tokio::time::timeout(self.timeout, statement.catch_unwind()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::NotCommitted(
                "the approval statement panicked".into(),
            )),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        if outcome.is_err() {
            // It may be broken, or still busy with the abandoned statement.
            if let Some(mut conn) = self.conn.take() {
                conn.close_on_drop();
            }
        }
        outcome
    }
}

async fn collect<Req: Send + Sync + 'static, Resp: Send + 'static>(
    mut runner: Runner<Req, Resp>,
    mut jobs: mpsc::Receiver<Queued<Req, Resp>>,
) {
    // One statement at a time: while it runs, callers queue up and the next one takes
    // them all.
    // The size of the last batch: more than one means callers are queueing.
    let mut last = 0;
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        for round in 0..=GATHER_YIELDS {
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if last < 2 || round == GATHER_YIELDS || batch.len() == MAX_BATCH {
                break;
            }
            // Under load, let the callers other tasks are about to send in join this
            // batch: a yield costs microseconds, the commit a batch shares hundreds.
            tokio::task::yield_now().await;
        }
        last = batch.len();
        let (reqs, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
        match runner.run(&reqs).await {
            Ok(answers) => {
                debug_assert_eq!(answers.len(), reqs.len());
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) if reqs.len() == 1 => {
                let _ = replies.into_iter().next().map(|r| r.send(Err(e)));
            }
            Err(e) if e.is_unavailable() => {
                // The database is unreachable or too slow, not refusing a request: every
                // caller hears so now, rather than after one attempt each.
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Unavailable(why.clone())));
                }
            }
            Err(e) => {
                // Nothing of the batch was written (one statement): run each alone, so
                // that whatever the database refused fails alone.
                tracing::debug!(error = %e, requests = reqs.len(), "approval batch failed; running each alone");
                for (i, reply) in replies.into_iter().enumerate() {
                    let answer = runner.run(&reqs[i..=i]).await.and_then(|mut one| {
                        one.pop().ok_or_else(|| {
                            StoreError::Corrupt("a batch of one gave no answer".into())
                        })
                    });
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

/// Reads an approval with its version, and the people named (and its requester) with
/// theirs; `None` when there is no such approval.
pub(super) struct ReadReq {
    pub tenant: String,
    pub id: String,
    pub person_ids: Vec<String>,
}

pub(super) fn run_reads<'a>(
    conn: &'a mut PgConnection,
    _origin: &'a str,
    reqs: &'a [ReadReq],
) -> BoxFuture<'a, Result<Vec<Option<ForUpdate>>, StoreError>> {
    Box::pin(async move {
        let people_json = reqs
            .iter()
            .map(|r| serde_json::to_string(&r.person_ids))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt("person ids", &e.to_string()))?;
        let sql = format!(
            "SELECT r.q_n, {APPROVAL_COLUMNS}, \
             (SELECT coalesce(json_agg(json_build_object('id', p.id, 'display_name', \
              p.display_name, 'email', p.email, 'manager_id', p.manager_id, 'technician', \
              p.technician, 'version', p.version)), '[]')::text FROM people p \
              WHERE p.tenant = a.tenant AND (p.id = a.requester_id OR p.id IN \
              (SELECT json_array_elements_text(r.q_people::json)))) AS people \
             FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
              AS r(q_tenant, q_id, q_people, q_n) \
             JOIN approval_current a ON a.tenant = r.q_tenant AND a.id = r.q_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(reqs.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
            .bind(reqs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
            .bind(&people_json)
            .fetch_all(&mut *conn)
            .await?;
        let mut answers: Vec<Option<ForUpdate>> = reqs.iter().map(|_| None).collect();
        for row in &rows {
            let n: i64 = row.try_get("q_n")?;
            *answer_for(&mut answers, n)? = Some(ForUpdate {
                approval: approval_from_row(row)?,
                version: row.int("version")?,
                people: people_from_json(&row.text("people")?)?,
            });
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

/// An approval write: a new approval (its head and its version 0, pending, which other
/// replicas read), or an approval's next version. Both kinds share one statement and one
/// commit, so a batch costs one WAL flush whatever it holds.
pub(super) enum Change {
    /// `false` when its request id already made one (read that instead).
    Create { tenant: String, approval: Approval },
    /// Appended only if the approval is at the version before it (and its own is still
    /// free: the primary key) and the people its decision read are unchanged; `false`
    /// for one that is not (read it again).
    Append(Write),
}

pub(super) fn run_changes<'a>(
    conn: &'a mut PgConnection,
    origin: &'a str,
    reqs: &'a [Change],
) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
    Box::pin(async move {
        // A second create with the same request id in one batch waits for the next
        // statement: it then finds the first one's approval. Of two writes to the same
        // approval only the first is sent; the second answers "changed", and its caller
        // reads again and sees the first one's outcome.
        let (mut requests, mut approvals) = (HashSet::new(), HashSet::new());
        let mut creates: Vec<(&str, &Approval)> = Vec::new();
        let mut writes: Vec<&Write> = Vec::new();
        for r in reqs {
            match r {
                Change::Create { tenant, approval } => {
                    if requests.insert((tenant.as_str(), approval.request_id.as_str())) {
                        creates.push((tenant, approval));
                    }
                }
                Change::Append(w) => {
                    if approvals.insert((w.tenant.as_str(), w.id.as_str())) {
                        writes.push(w);
                    }
                }
            }
        }
        // Every batch takes its index entries in the same order, so batches of two
        // replicas rarely wait on each other in a cycle (and if they do, the database
        // ends one, and its requests are run again one by one).
        creates.sort_by(|a, b| (a.0, &a.1.request_id).cmp(&(b.0, &b.1.request_id)));
        writes.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
        let create_col =
            |f: fn(&Approval) -> &str| creates.iter().map(|(_, a)| f(a)).collect::<Vec<_>>();
        let write_col = |f: fn(&Write) -> &str| writes.iter().map(|w| f(w)).collect::<Vec<_>>();
        let rows = sqlx::query(
            "WITH c AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
             $11::bigint[], $12::text[]) WITH ORDINALITY AS c(c_tenant, c_id, c_integration, \
             c_tool, c_arguments, c_sha256, c_requester, c_request, c_roles, c_created, \
             c_expires, c_key, c_n)), \
             created AS (INSERT INTO approvals (tenant, id, integration_id, tool_name, \
             arguments_json, arguments_sha256, requester_id, request_id, required_roles, \
             created_at, expires_at, created_by_key) \
             SELECT c_tenant, c_id, c_integration, c_tool, c_arguments, c_sha256, c_requester, \
             c_request, c_roles, c_created, c_expires, c_key FROM c ORDER BY c_n \
             ON CONFLICT (tenant, request_id) DO NOTHING \
             RETURNING tenant, id, required_roles, created_at), \
             first AS (INSERT INTO approval_events (tenant, approval_id, version, origin, state, \
             required_roles, consumed_by_request, steps, created_at) \
             SELECT tenant, id, 0, $13::text, 'pending', required_roles, NULL, '[]', created_at \
             FROM created), \
             w AS (SELECT * FROM unnest($14::text[], $15::text[], $16::bigint[], $17::text[], \
             $18::text[], $19::text[], $20::text[], $21::text[], $22::text[]) WITH ORDINALITY \
             AS w(w_tenant, w_id, w_version, w_state, w_roles, w_consumed, w_steps, w_people, \
             w_expect, w_n)), \
             written AS (INSERT INTO approval_events (tenant, approval_id, version, origin, \
             state, required_roles, consumed_by_request, steps, created_at) \
             SELECT w_tenant, w_id, w_version, $13::text, w_state, w_roles, w_consumed, \
             w_steps, $23::bigint FROM w \
             WHERE EXISTS (SELECT 1 FROM approval_events x WHERE x.tenant = w.w_tenant \
              AND x.approval_id = w.w_id AND x.version = w.w_version - 1) \
             AND (SELECT coalesce(string_agg(p.id || ' ' || p.version, ' ' \
              ORDER BY p.id COLLATE \"C\"), '') FROM people p WHERE p.tenant = w.w_tenant \
              AND p.id IN (SELECT json_array_elements_text(w.w_people::json))) = w.w_expect \
             ORDER BY w_n \
             ON CONFLICT DO NOTHING RETURNING tenant, approval_id) \
             SELECT TRUE AS create, tenant, id FROM created \
             UNION ALL SELECT FALSE, tenant, approval_id FROM written",
        )
        .bind(creates.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        .bind(create_col(|a| &a.id))
        .bind(create_col(|a| &a.integration_id))
        .bind(create_col(|a| &a.tool_name))
        .bind(create_col(|a| &a.arguments_json))
        .bind(create_col(|a| &a.arguments_sha256))
        .bind(create_col(|a| &a.requester_id))
        .bind(create_col(|a| &a.request_id))
        .bind(
            creates
                .iter()
                .map(|(_, a)| roles_to_text(&a.required_roles))
                .collect::<Vec<_>>(),
        )
        .bind(
            creates
                .iter()
                .map(|(_, a)| a.created_at.0)
                .collect::<Vec<_>>(),
        )
        .bind(
            creates
                .iter()
                .map(|(_, a)| a.expires_at.0)
                .collect::<Vec<_>>(),
        )
        .bind(create_col(|a| &a.created_by_key))
        .bind(origin)
        .bind(write_col(|w| &w.tenant))
        .bind(write_col(|w| &w.id))
        .bind(writes.iter().map(|w| w.version).collect::<Vec<_>>())
        .bind(write_col(|w| w.next.state.as_str()))
        .bind(
            writes
                .iter()
                .map(|w| roles_to_text(&w.next.required_roles))
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|w| w.next.consumed_by_request.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|w| steps_to_json(&w.next.steps))
                .collect::<Vec<_>>(),
        )
        .bind(write_col(|w| &w.people.ids_json))
        .bind(write_col(|w| &w.people.expect))
        .bind(UnixMillis::now().0)
        .fetch_all(&mut *conn)
        .await?;
        let (mut created, mut written) = (HashSet::new(), HashSet::new());
        for row in &rows {
            let key = (row.text("tenant")?, row.text("id")?);
            if row.flag("create")? {
                created.insert(key);
            } else {
                written.insert(key);
            }
        }
        // Only the first of two writes to one approval was sent.
        let mut answered = HashSet::new();
        Ok(reqs
            .iter()
            .map(|r| match r {
                Change::Create { tenant, approval } => {
                    created.contains(&(tenant.clone(), approval.id.clone()))
                }
                Change::Append(w) => {
                    let key = (w.tenant.clone(), w.id.clone());
                    written.contains(&key) && answered.insert(key)
                }
            })
            .collect())
    })
}

/// Against a real PostgreSQL (`TOOLGATE_TEST_POSTGRES`, default the local server), in a
/// fresh database per test.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ApprovalState, ApprovalStep, ApproverRole};
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

        async fn conn(&self) -> PoolConnection<Postgres> {
            self.pool.acquire().await.expect("connection")
        }

        async fn count(&self, sql: &'static str) -> i64 {
            sqlx::query_scalar(sql)
                .fetch_one(&self.pool)
                .await
                .expect(sql)
        }
    }

    fn approval(id: &str, request_id: &str) -> Approval {
        crate::store::approvals::test_approval(id, request_id)
    }

    fn create(a: Approval) -> Change {
        Change::Create {
            tenant: "t".into(),
            approval: a,
        }
    }

    fn write(current: &ForUpdate, next: Approval, asked: &[&str], expect: &str) -> Change {
        Change::Append(Write {
            tenant: "t".into(),
            id: current.approval.id.clone(),
            version: current.version + 1,
            next,
            people: crate::store::approvals::PeopleSeen {
                ids_json: serde_json::to_string(asked).expect("ids"),
                expect: expect.into(),
            },
        })
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
        let batcher = Batcher::start(
            db.pool.clone(),
            ORIGIN.into(),
            Duration::from_secs(5),
            run_changes,
        );
        let mut bad = approval("apr_bad", "req_bad");
        // PostgreSQL refuses NUL in text: the whole multi-row INSERT fails.
        bad.arguments_json = "{\"a\":\"\0\"}".into();
        {
            let good1 = std::pin::pin!(batcher.submit(create(approval("apr_1", "req_1"))));
            let bad = std::pin::pin!(batcher.submit(create(bad)));
            let good2 = std::pin::pin!(batcher.submit(create(approval("apr_2", "req_2"))));
            let (mut good1, mut bad, mut good2) = (good1, bad, good2);
            // All three are queued before the batcher's task runs (this runtime has one
            // thread and nothing yields in between): they go to the database as one statement.
            poll_once(good1.as_mut()).await;
            poll_once(bad.as_mut()).await;
            poll_once(good2.as_mut()).await;
            assert!(good1.await.expect("the first good create"));
            let bad = bad.await;
            assert!(good2.await.expect("the second good create"));
            assert!(
                matches!(bad, Err(StoreError::Database(_))),
                "the bad request fails: {bad:?}"
            );
        }
        assert_eq!(db.count("SELECT count(*) FROM approvals").await, 2);
        assert_eq!(
            db.count("SELECT count(*) FROM approval_events WHERE version = 0")
                .await,
            2
        );
        // Its task, and the connection it keeps, end with the last handle.
        drop(batcher);
        db.drop_now().await;
    }

    #[tokio::test]
    async fn creates_in_one_statement_make_one_approval_per_request_id() {
        let db = Db::create().await;
        let made = run_changes(
            &mut *db.conn().await,
            ORIGIN,
            &[
                create(approval("apr_a", "req_same")),
                create(approval("apr_b", "req_other")),
                create(approval("apr_c", "req_same")),
            ],
        )
        .await
        .expect("creates");
        assert_eq!(
            made,
            [true, true, false],
            "the second create with req_same finds the first one's approval"
        );
        // Again, in a later statement: the request id already made one. A new version
        // of another approval shares the statement.
        let a = ForUpdate {
            approval: approval("apr_a", "req_same"),
            version: 0,
            people: Vec::new(),
        };
        let approved = decided(&a.approval, ApprovalState::Approved, "tom");
        let again = run_changes(
            &mut *db.conn().await,
            ORIGIN,
            &[
                create(approval("apr_d", "req_other")),
                write(&a, approved, &["alice"], ""),
            ],
        )
        .await
        .expect("create again, and write");
        assert_eq!(again, [false, true]);
        assert_eq!(db.count("SELECT count(*) FROM approvals").await, 2);
        assert_eq!(db.count("SELECT count(*) FROM approval_events").await, 3);
        db.drop_now().await;
    }

    #[tokio::test]
    async fn reads_and_writes_in_one_statement_answer_each_request_and_write_each_approval_once() {
        let db = Db::create().await;
        run_changes(
            &mut *db.conn().await,
            ORIGIN,
            &[
                create(approval("apr_a", "req_a")),
                create(approval("apr_b", "req_b")),
                create(approval("apr_c", "req_c")),
            ],
        )
        .await
        .expect("creates");
        sqlx::query(
            "INSERT INTO people (tenant, id, display_name, email, manager_id, technician, \
             updated_at, version) VALUES ('t', 'alice', 'Alice', 'a@x', 'mo', FALSE, 0, 0), \
             ('t', 'tom', 'Tom', 't@x', '', TRUE, 0, 4)",
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
            &mut *db.conn().await,
            ORIGIN,
            &[
                read("apr_a", &["tom"]),
                read("apr_none", &[]),
                read("apr_b", &[]),
                read("apr_c", &["tom"]),
            ],
        )
        .await
        .expect("reads");
        let [Some(a), None, Some(b), Some(c)] =
            <[Option<ForUpdate>; 4]>::try_from(reads).expect("four answers")
        else {
            panic!("each read answers its own request");
        };
        assert_eq!(
            (a.approval.id.as_str(), b.approval.id.as_str()),
            ("apr_a", "apr_b")
        );
        assert_eq!((a.version, b.version), (0, 0));
        let mut named: Vec<(&str, i64)> =
            a.people.iter().map(|(p, v)| (p.id.as_str(), *v)).collect();
        named.sort();
        assert_eq!(
            named,
            [("alice", 0), ("tom", 4)],
            "the person asked for and the requester, with their versions"
        );
        assert_eq!(b.people.len(), 1);

        let approved = |r: &ForUpdate| decided(&r.approval, ApprovalState::Approved, "tom");
        let mut stale = write(&b, approved(&b), &["alice"], "alice 0");
        if let Change::Append(w) = &mut stale {
            w.version = 8;
        }
        let written = run_changes(
            &mut *db.conn().await,
            ORIGIN,
            &[
                write(&a, approved(&a), &["alice", "tom"], "alice 0 tom 4"),
                // The same approval again in the same statement: refused, read again.
                write(
                    &a,
                    decided(&a.approval, ApprovalState::Denied, "tina"),
                    &["alice"],
                    "alice 0",
                ),
                // A version that does not follow the current one: refused.
                stale,
                // People that changed since they were read: refused.
                write(&c, approved(&c), &["alice", "tom"], "alice 0 tom 3"),
            ],
        )
        .await
        .expect("writes");
        assert_eq!(written, [true, false, false, false]);
        // The version is taken now: the same write again is refused.
        let again = run_changes(
            &mut *db.conn().await,
            ORIGIN,
            &[write(&a, approved(&a), &["alice", "tom"], "alice 0 tom 4")],
        )
        .await
        .expect("write again");
        assert_eq!(again, [false]);

        let after = run_reads(
            &mut *db.conn().await,
            ORIGIN,
            &[read("apr_a", &[]), read("apr_b", &[]), read("apr_c", &[])],
        )
        .await
        .expect("read back");
        let a = after[0].clone().expect("apr_a");
        assert_eq!((a.approval.state, a.version), (ApprovalState::Approved, 1));
        assert_eq!(
            a.approval
                .steps
                .iter()
                .map(|s| s.approver_id.as_str())
                .collect::<Vec<_>>(),
            ["tom"],
            "only the written request's step is stored"
        );
        for unchanged in &after[1..] {
            let r = unchanged.clone().expect("apr_b, apr_c");
            assert_eq!((r.approval.state, r.version), (ApprovalState::Pending, 0));
        }
        // Three creations and the one write, for other replicas.
        assert_eq!(db.count("SELECT count(*) FROM approval_events").await, 4);
        db.drop_now().await;
    }
}
