//! The approval write path on SQLite and on PostgreSQL, each beside a raw single-row INSERT
//! on the same database in the same run.
//!
//! Per backend, one after another on the same database:
//! 1. **gRPC**: C clients each run approval cycles through a `toolgate serve` process: a
//!    Decide that creates the approval, a SubmitApproval that approves it, and a Decide that
//!    consumes it. Each of the three is one committed write.
//! 2. **In-process**: the same three writes through the store in this process (no gRPC,
//!    no server work), to show how much of the cost is the database's.
//! 3. **Raw INSERT**: single-row INSERTs into a one-index table, each its own commit, with
//!    the durability toolgate uses: on SQLite one connection (SQLite has one writer, as
//!    toolgate's store does) with WAL and `synchronous=FULL`, and for reference
//!    `synchronous=NORMAL`; on PostgreSQL C connections.
//!
//! Ratios are committed approval writes per second over raw INSERTs per second.
//!
//! Run: `cargo bench --bench writes` (defaults: 16 clients, 5 s per figure);
//! `-- --clients 4 --seconds 2` for less, `-- --only sqlite` (or `postgres`) for one backend. PostgreSQL comes from `TOOLGATE_BENCH_POSTGRES`
//! (default the local server); the bench makes a database for the run and drops it.

mod common;

use common::{PgDatabase, ServerProcess, mint, with_key};
use sqlx::{ConnectOptions, Connection, Executor};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

type Client = PolicyServiceClient<Channel>;

#[derive(Clone, Copy)]
struct Options {
    clients: usize,
    seconds: u64,
}

fn main() {
    let opts = Options {
        clients: common::arg("--clients", 16),
        seconds: common::arg("--seconds", 5) as u64,
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!(
            "approval writes: {} clients, {} s per figure, {} cores",
            opts.clients,
            opts.seconds,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let only = common::text_arg("--only");
        let wanted = |backend: &str| only.as_deref().is_none_or(|o| o == backend);
        if wanted("sqlite") {
            sqlite_figures(opts).await;
        }
        if wanted("postgres") {
            let mut db = PgDatabase::create("writes").await;
            let settings = db.settings().await;
            let url = db.url.clone();
            let pg = measure(opts, &url).await;
            let raw = pg_raw(opts, &url).await;
            report(&format!("PostgreSQL ({settings})"), pg, raw, "");
            db.drop_now().await;
        }
    });
}

async fn sqlite_figures(opts: Options) {
    let (dir, url) = common::sqlite_temp();
    let sqlite = measure(opts, &url).await;
    let raw_full = sqlite_raw(opts, &url, sqlx::sqlite::SqliteSynchronous::Full).await;
    let raw_normal = sqlite_raw(opts, &url, sqlx::sqlite::SqliteSynchronous::Normal).await;
    drop(dir);
    report(
        "SQLite (WAL, synchronous=FULL)",
        sqlite,
        raw_full,
        &format!(
            "raw INSERT with synchronous=NORMAL, for reference: {raw_normal:.0}/s \
                 (toolgate keeps FULL: a committed approval survives a power cut)"
        ),
    );
}

/// Writes per second through gRPC, then through the store in-process.
struct Measured {
    grpc: f64,
    store: f64,
}

fn report(backend: &str, m: Measured, raw: f64, note: &str) {
    println!("{backend}");
    println!("  raw single-row INSERT      {raw:>8.0} commits/s");
    println!(
        "  approval writes, in-process {:>7.0} writes/s  ratio {:.2}",
        m.store,
        m.store / raw
    );
    println!(
        "  approval writes, gRPC      {:>8.0} writes/s  ratio {:.2}  ({:.0} approvals created \
         and consumed/s)  target >= 0.80: {}",
        m.grpc,
        m.grpc / raw,
        m.grpc / 3.0,
        if m.grpc / raw >= 0.8 { "met" } else { "MISSED" }
    );
    if !note.is_empty() {
        println!("  {note}");
    }
}

async fn measure(opts: Options, url: &str) -> Measured {
    let (admin, agent, approver) = (
        mint(url, "bench", "admin"),
        mint(url, "bench", "agent"),
        mint(url, "bench", "approver"),
    );
    let server = ServerProcess::toolgate(url, None, &[]);
    let client = PolicyServiceClient::new(common::connect(server.addr).await);
    setup(&client, &admin).await;
    let grpc = for_each_client(opts, move |w, n| {
        let (client, agent, approver) = (client.clone(), agent.clone(), approver.clone());
        async move { approval_cycle(&client, &agent, &approver, &format!("w{w}-{n}")).await }
    })
    .await
        * 3.0;
    drop(server);
    let store = store_writes(opts, url).await;
    Measured { grpc, store }
}

/// Runs `work(task, n)` for n = 0, 1, ... on each of `opts.clients` tasks until
/// `opts.seconds` have passed; completed runs per second.
async fn for_each_client<F, Fut>(opts: Options, work: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let work = Arc::new(work);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.seconds);
    let mut tasks = Vec::new();
    for w in 0..opts.clients {
        let (work, done) = (work.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                work(w, n).await;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn setup(client: &Client, admin: &str) {
    let tools = vec![common::tool("reset_password", "Reset a user's password")];
    let connected = common::connect_entra(client, admin, tools).await;
    assert_eq!(connected[0].policy, pb::Policy::ApprovalNeeded as i32);
    let person = |id: &str, manager: &str, technician: bool| pb::Person {
        id: id.into(),
        display_name: id.into(),
        email: format!("{id}@example.com"),
        manager_id: manager.into(),
        technician,
    };
    client
        .clone()
        .upsert_people(with_key(
            admin,
            pb::UpsertPeopleRequest {
                people: vec![person("alice", "mgr", false), person("tech", "", true)],
            },
        ))
        .await
        .expect("people");
}

/// Create (a Decide on an `approval_needed` tool), approve, consume (the same Decide with
/// the approval): three committed writes.
async fn approval_cycle(client: &Client, agent: &str, approver: &str, request: &str) {
    let ask = |approval_id: String| pb::DecideRequest {
        integration_id: "entra".into(),
        tool_name: "reset_password".into(),
        arguments_json: format!(r#"{{"user":"{request}"}}"#),
        requester_id: "alice".into(),
        request_id: request.into(),
        approval_id,
        min_revision: None,
    };
    let pending = client
        .clone()
        .decide(with_key(agent, ask(String::new())))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(pending.verdict, pb::Verdict::PendingApproval as i32);
    let id = pending.approval.expect("approval").id;
    client
        .clone()
        .submit_approval(with_key(
            approver,
            pb::SubmitApprovalRequest {
                approval_id: id.clone(),
                role: pb::ApproverRole::Technician as i32,
                approver_id: "tech".into(),
                approve: true,
                comment: String::new(),
            },
        ))
        .await
        .expect("approve");
    let go = client
        .clone()
        .decide(with_key(agent, ask(id)))
        .await
        .expect("consume")
        .into_inner();
    assert_eq!(go.verdict, pb::Verdict::Allow as i32, "{go:?}");
}

/// The same three writes straight through the store, in this process.
async fn store_writes(opts: Options, url: &str) -> f64 {
    use toolgate::policy::{Approval, ApprovalState, ApprovalStep, ApproverRole, UnixMillis};
    use toolgate::store::{AnyStore, People, Store, pg::PgSettings};
    let settings = PgSettings {
        max_connections: opts.clients as u32,
        ..Default::default()
    };
    let store = AnyStore::open(url, &settings).await.expect("open store");
    let cycles = for_each_client(opts, move |w, n| {
        let store = store.clone();
        async move {
            let now = UnixMillis::now();
            let a = Approval {
                id: format!("apr_store_{w}_{n}"),
                state: ApprovalState::Pending,
                integration_id: "entra".into(),
                tool_name: "reset_password".into(),
                arguments_json: format!(r#"{{"user":"s{w}-{n}"}}"#),
                arguments_sha256: "0".repeat(64),
                requester_id: "alice".into(),
                request_id: format!("store-{w}-{n}"),
                required_roles: vec![ApproverRole::Technician],
                steps: Vec::new(),
                created_at: now,
                expires_at: now.plus(Duration::from_secs(3600)),
                created_by_key: "bench".into(),
                consumed_by_request: None,
            };
            store.insert_approval("bench", &a).await.expect("insert");
            let approve = |a: &Approval, _: &People| {
                let mut next = a.clone();
                next.state = ApprovalState::Approved;
                next.steps.push(ApprovalStep {
                    role: ApproverRole::Technician,
                    approver_id: "tech".into(),
                    approved: true,
                    comment: String::new(),
                    decided_at: UnixMillis::now(),
                });
                Ok::<_, std::convert::Infallible>((Some(next), ()))
            };
            store
                .update_approval("bench", &a.id, vec!["tech".into()], approve)
                .await
                .expect("approve");
            let consume = |a: &Approval, _: &People| {
                let mut next = a.clone();
                next.state = ApprovalState::Consumed;
                next.consumed_by_request = Some(a.request_id.clone());
                Ok::<_, std::convert::Infallible>((Some(next), ()))
            };
            store
                .update_approval("bench", &a.id, Vec::new(), consume)
                .await
                .expect("consume");
        }
    })
    .await;
    cycles * 3.0
}

const RAW_TABLE: &str = "CREATE TABLE bench_raw (seq INTEGER PRIMARY KEY, tenant TEXT NOT NULL, \
     id TEXT NOT NULL, payload TEXT NOT NULL)";

/// Single-row INSERTs on one connection to the SQLite file, each its own commit.
async fn sqlite_raw(opts: Options, url: &str, sync: sqlx::sqlite::SqliteSynchronous) -> f64 {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .expect("url")
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sync)
        .connect()
        .await
        .expect("open sqlite");
    conn.execute("DROP TABLE IF EXISTS bench_raw")
        .await
        .expect("drop table");
    conn.execute(RAW_TABLE).await.expect("create table");
    let payload = "x".repeat(300);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        sqlx::query("INSERT INTO bench_raw (tenant, id, payload) VALUES (?, ?, ?)")
            .bind("bench")
            .bind(format!("r-{n}"))
            .bind(&payload)
            .execute(&mut conn)
            .await
            .expect("insert");
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Single-row INSERTs by `opts.clients` connections, each its own commit.
async fn pg_raw(opts: Options, url: &str) -> f64 {
    let mut setup = sqlx::PgConnection::connect(url).await.expect("connect");
    setup
        .execute(
            "CREATE TABLE bench_raw (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             tenant TEXT NOT NULL, id TEXT NOT NULL, payload TEXT NOT NULL)",
        )
        .await
        .expect("create table");
    let mut conns = Vec::new();
    for _ in 0..opts.clients {
        conns.push(tokio::sync::Mutex::new(
            sqlx::PgConnection::connect(url).await.expect("connect"),
        ));
    }
    let conns = Arc::new(conns);
    let payload: Arc<str> = "x".repeat(300).into();
    for_each_client(opts, move |w, n| {
        let (conns, payload) = (conns.clone(), payload.clone());
        async move {
            let mut conn = conns[w].lock().await;
            sqlx::query("INSERT INTO bench_raw (tenant, id, payload) VALUES ($1, $2, $3)")
                .bind("bench")
                .bind(format!("w{w}-{n}"))
                .bind(&*payload)
                .execute(&mut *conn)
                .await
                .expect("insert");
        }
    })
    .await
}
