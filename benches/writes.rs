//! The approval write path on SQLite and on PostgreSQL, each beside a raw single-row INSERT
//! on the same database in the same run.
//!
//! Per backend, in rounds, each round one figure after another on the same database:
//! 1. **Raw INSERT**: single-row INSERTs into a one-index table, each its own commit, with
//!    the durability toolgate uses: on SQLite one connection (SQLite has one writer, as
//!    toolgate's store does) with WAL and `synchronous=FULL`; on PostgreSQL C connections.
//! 2. **gRPC**: C clients (over a few HTTP/2 connections) each run approval cycles through
//!    a `toolgate serve` process: a Decide that creates the approval, a SubmitApproval that
//!    approves it, and a Decide that consumes it. Each of the three is one committed write.
//! 3. **In-process**: the same three writes through the store in this process (no gRPC,
//!    no server work): the store's write path against the same database client the raw
//!    INSERTs use.
//!
//! Ratios are committed approval writes per second over the raw INSERTs per second of the
//! same round; this machine's speed drifts within a minute, so the median of the rounds'
//! ratios is the figure, printed with their range.
//!
//! Run: `cargo bench --bench writes` (defaults: 16 clients over 4 connections, 3 rounds of
//! 4 s per figure); `-- --clients 4 --seconds 2 --rounds 1` for less, `-- --only sqlite`
//! (or `postgres`) for one backend. PostgreSQL comes from `TOOLGATE_BENCH_POSTGRES`
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
use toolgate::store::SqlStore;

type Client = PolicyServiceClient<Channel>;

#[derive(Clone, Copy)]
struct Options {
    clients: usize,
    /// HTTP/2 connections the gRPC clients share.
    connections: usize,
    seconds: u64,
    rounds: usize,
}

fn main() {
    let opts = Options {
        clients: common::arg("--clients", 16),
        connections: common::arg("--connections", 4),
        seconds: common::arg("--seconds", 4) as u64,
        rounds: common::arg("--rounds", 3).max(1),
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!(
            "approval writes: {} clients ({} gRPC connections), {} rounds of {} s per figure, \
             {} cores",
            opts.clients,
            opts.connections,
            opts.rounds,
            opts.seconds,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let only = common::text_arg("--only");
        let wanted = |backend: &str| only.as_deref().is_none_or(|o| o == backend);
        if wanted("sqlite") {
            let (dir, url) = common::sqlite_temp();
            let rounds = measure(opts, &url, |opts| {
                sqlite_raw(opts, &url, sqlx::sqlite::SqliteSynchronous::Full)
            })
            .await;
            let normal = sqlite_raw(opts, &url, sqlx::sqlite::SqliteSynchronous::Normal).await;
            drop(dir);
            report("SQLite (WAL, synchronous=FULL)", &rounds, 0.5);
            println!(
                "  raw INSERT with synchronous=NORMAL, for reference: {normal:.0}/s (toolgate \
                 keeps FULL: a committed approval survives a power cut)"
            );
        }
        if wanted("postgres") {
            let mut db = PgDatabase::create("writes").await;
            let settings = db.settings().await;
            let url = db.url.clone();
            let rounds = measure(opts, &url, |opts| pg_raw(opts, &url)).await;
            report(&format!("PostgreSQL ({settings})"), &rounds, 0.15);
            db.drop_now().await;
        }
    });
}

/// One round's rates: raw INSERTs, and approval writes over gRPC and in-process, per second.
struct Round {
    raw: f64,
    grpc: f64,
    store: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// `grpc_target`: the least ratio over gRPC the application-layer issue asks for (SQLite
/// 0.5, PostgreSQL 0.15); the in-process figure has none (it shows what the server adds).
fn report(backend: &str, rounds: &[Round], grpc_target: f64) {
    let raws: Vec<f64> = rounds.iter().map(|r| r.raw).collect();
    let (lo, hi) = spread(&raws);
    println!("{backend}");
    println!(
        "  raw single-row INSERT        {:>7.0} commits/s  (rounds {lo:.0}-{hi:.0})",
        median(raws.clone())
    );
    let figure = |name: &str, rate: fn(&Round) -> f64, target: Option<f64>| {
        let rates: Vec<f64> = rounds.iter().map(rate).collect();
        let ratios: Vec<f64> = rounds.iter().map(|r| rate(r) / r.raw).collect();
        let (lo, hi) = spread(&ratios);
        let ratio = median(ratios);
        let approvals = median(rates.clone()) / 3.0;
        let verdict = match target {
            Some(t) if ratio >= t => format!("  target >= {t:.2}: met"),
            Some(t) => format!("  target >= {t:.2}: MISSED"),
            None => String::new(),
        };
        println!(
            "  approval writes, {name:<11} {:>7.0} writes/s   ratio {ratio:.2} (rounds \
             {lo:.2}-{hi:.2}; {approvals:.0} approvals created and consumed/s){verdict}",
            median(rates),
        );
    };
    figure("in-process", |r| r.store, None);
    figure("gRPC", |r| r.grpc, Some(grpc_target));
}

/// `opts.rounds` rounds of: raw INSERTs (`raw`), approval cycles over gRPC, the same
/// writes in-process.
async fn measure<F, Fut>(opts: Options, url: &str, raw: F) -> Vec<Round>
where
    F: Fn(Options) -> Fut,
    Fut: Future<Output = f64>,
{
    let (admin, agent, approver) = (
        mint(url, "bench", "admin"),
        mint(url, "bench", "agent"),
        mint(url, "bench", "approver"),
    );
    // TOOLGATE_BENCH_SERVE_ARGS adds flags (a fixed `--metrics-listen`, say, to read the
    // server's own latency histograms while it runs).
    let extra = std::env::var("TOOLGATE_BENCH_SERVE_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let server = ServerProcess::toolgate(url, None, &extra);
    let mut clients = Vec::new();
    for _ in 0..opts.connections.max(1) {
        clients.push(PolicyServiceClient::new(common::connect(server.addr).await));
    }
    setup(&clients[0], &admin).await;
    let clients = Arc::new(clients);
    let settings = toolgate::store::PgSettings {
        max_connections: opts.clients as u32,
        ..Default::default()
    };
    let store = toolgate::store::open(url, &settings)
        .await
        .expect("open store");
    let mut rounds = Vec::new();
    for round in 0..opts.rounds {
        let raw = raw(opts).await;
        let (clients, agent, approver) = (clients.clone(), agent.clone(), approver.clone());
        let grpc = for_each_client(opts, move |w, n| {
            let client = clients[w % clients.len()].clone();
            let (agent, approver) = (agent.clone(), approver.clone());
            let request = format!("r{round}-w{w}-{n}");
            async move { approval_cycle(&client, &agent, &approver, &request).await }
        })
        .await
            * 3.0;
        let store = store_writes(opts, store.clone(), round).await;
        rounds.push(Round { raw, grpc, store });
    }
    drop(server);
    rounds
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
        slack_user_id: String::new(),
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
async fn store_writes(opts: Options, store: SqlStore, round: usize) -> f64 {
    use toolgate::policy::{Approval, ApprovalState, ApprovalStep, ApproverRole, UnixMillis};
    use toolgate::store::Store;
    let cycles = for_each_client(opts, move |w, n| {
        let store = store.clone();
        async move {
            let now = UnixMillis::now();
            let a = Approval {
                id: format!("apr_store_{round}_{w}_{n}"),
                state: ApprovalState::Pending,
                integration_id: "entra".into(),
                tool_name: "reset_password".into(),
                arguments_json: format!(r#"{{"user":"s{round}-{w}-{n}"}}"#),
                arguments_sha256: "0".repeat(64),
                requester_id: "alice".into(),
                request_id: format!("store-{round}-{w}-{n}"),
                required_roles: vec![ApproverRole::Technician],
                steps: Vec::new(),
                created_at: now,
                expires_at: now.plus(Duration::from_secs(3600)),
                created_by_key: "bench".into(),
                principal: "key:bench".into(),
                consumed_by_request: None,
                consumed_at: None,
            };
            store.insert_approval("bench", &a).await.expect("insert");
            // Each change as the application makes it: read, decide, append the next
            // version.
            let read = store
                .approval_for_update("bench", &a.id, &["tech".into()])
                .await
                .expect("read")
                .expect("found");
            let mut next = read.approval.clone();
            next.state = ApprovalState::Approved;
            next.steps.push(ApprovalStep {
                role: ApproverRole::Technician,
                approver_id: "tech".into(),
                approved: true,
                comment: String::new(),
                decided_at: UnixMillis::now(),
            });
            let appended = store
                .append_approval("bench", read.version + 1, &next)
                .await;
            assert!(appended.expect("approve"), "approve: version taken");
            let read = store
                .approval_for_update("bench", &a.id, &[])
                .await
                .expect("read")
                .expect("found");
            let mut next = read.approval.clone();
            next.state = ApprovalState::Consumed;
            next.consumed_by_request = Some(a.request_id.clone());
            let appended = store
                .append_approval("bench", read.version + 1, &next)
                .await;
            assert!(appended.expect("consume"), "consume: version taken");
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
            "CREATE TABLE IF NOT EXISTS bench_raw (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
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
