//! Approval delivery, as `toolgate serve` runs it with its default settings (but a
//! `max_pending_approvals` above the 1 200 approvals the run leaves pending), on SQLite and
//! on PostgreSQL, beside a raw single-row INSERT on the same database in the same run.
//!
//! Per backend:
//! 1. **Raw INSERT**: one connection, single-row INSERTs each its own commit (SQLite: WAL,
//!    `synchronous=FULL`, as toolgate keeps it); the mean time of one, and the rate.
//! 2. **Latency**: approvals made one at a time (a Decide that creates one); for each, the
//!    time from its `createdAt` (set just before its commit) to its webhook's arrival at a
//!    receiver in this process that answers 204 at once; p50, p99, max.
//! 3. **Throughput**: `--burst` approvals made as fast as `--clients` clients can, then the
//!    time until the last webhook arrived; deliveries per second over that time, beside
//!    the rate the approvals were made at.
//!
//! Run: `cargo bench --bench delivery` (defaults: 200 approvals for latency, a burst of
//! 1000 from 16 clients); `-- --only sqlite` (or `postgres`) for one backend. PostgreSQL
//! comes from `TOOLGATE_BENCH_POSTGRES` (default the local server).

mod common;

use common::{PgDatabase, ServerProcess, mint, with_key};
use sqlx::{ConnectOptions, Connection, Executor};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

const SECRET: &str = "whsec_dG9vbGdhdGUtdGVzdC1zaWduaW5nLWtleS0zMmJ5dGVz";

#[derive(Clone, Copy)]
struct Options {
    latency_n: usize,
    burst: usize,
    clients: usize,
}

fn main() {
    let opts = Options {
        latency_n: common::arg("--latency", 200),
        burst: common::arg("--burst", 1000),
        clients: common::arg("--clients", 16),
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!(
            "approval delivery, toolgate serve with default settings; {} approvals one at a \
             time, then a burst of {} from {} clients; {} cores",
            opts.latency_n,
            opts.burst,
            opts.clients,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let only = common::text_arg("--only");
        let wanted = |backend: &str| only.as_deref().is_none_or(|o| o == backend);
        if wanted("sqlite") {
            let (dir, url) = common::sqlite_temp();
            let raw = sqlite_raw(&url).await;
            let figures = measure(opts, &url, Some(dir)).await;
            report("SQLite (WAL, synchronous=FULL)", raw, &figures);
        }
        if wanted("postgres") {
            let mut db = PgDatabase::create("delivery").await;
            let settings = db.settings().await;
            let raw = pg_raw(&db.url).await;
            let figures = measure(opts, &db.url, None).await;
            report(&format!("PostgreSQL ({settings})"), raw, &figures);
            db.drop_now().await;
        }
    });
}

struct Figures {
    latencies_ms: Vec<f64>,
    made_per_s: f64,
    delivered_per_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(backend: &str, raw: Duration, f: &Figures) {
    let mut l = f.latencies_ms.clone();
    l.sort_by(f64::total_cmp);
    println!("{backend}");
    println!(
        "  raw single-row INSERT (one commit)   {:>7.2} ms each ({:.0}/s)",
        raw.as_secs_f64() * 1000.0,
        1.0 / raw.as_secs_f64()
    );
    println!(
        "  approval commit -> webhook arrived   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} approvals)",
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(0.0),
        l.len()
    );
    println!(
        "  burst: approvals made {:>7.0}/s, delivered {:>7.0}/s (first Decide to last arrival)",
        f.made_per_s, f.delivered_per_s
    );
}

/// Arrival time of every webhook, by the approval id in its body.
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<String, SystemTime>>,
}

async fn receiver(arrivals: Arc<Arrivals>, count: watch::Sender<usize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (arrivals, count) = (arrivals.clone(), count.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (arrivals, count) = (arrivals.clone(), count.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let now = SystemTime::now();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let v: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            if let Some(id) = v["data"]["approval"]["id"].as_str() {
                                arrivals
                                    .at
                                    .lock()
                                    .unwrap()
                                    .entry(id.to_owned())
                                    .or_insert(now);
                                count.send_modify(|c| *c += 1);
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(204)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .expect("response"),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/hook")
}

async fn measure(opts: Options, url: &str, dir: Option<tempfile::TempDir>) -> Figures {
    let admin = mint(url, "acme", "admin");
    let agent = mint(url, "acme", "agent");
    // Default settings but one: the run leaves 1 200 approvals pending, above the default
    // max_pending_approvals (1 000), which would refuse the last of the burst.
    let server = ServerProcess::toolgate(url, dir, &["--max-pending-approvals", "100000"]);
    let channel = common::connect(server.addr).await;
    let mut client = PolicyServiceClient::new(channel.clone());
    let tools = vec![common::tool("reset_password", "Reset a user's password")];
    common::connect_entra(&client, &admin, tools).await;
    let arrivals = Arc::new(Arrivals::default());
    let (count_tx, count) = watch::channel(0usize);
    let hook = receiver(arrivals.clone(), count_tx).await;
    client
        .set_notification_channel(with_key(
            &admin,
            pb::SetNotificationChannelRequest {
                channel: Some(pb::NotificationChannel {
                    id: "bench".into(),
                    kind: pb::ChannelKind::Webhook as i32,
                    url: hook,
                    secret: SECRET.into(),
                    enabled: true,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("channel");
    let decide = move |client: &mut PolicyServiceClient<_>, n: String| {
        let req = pb::DecideRequest {
            integration_id: "entra".into(),
            tool_name: "reset_password".into(),
            arguments_json: format!(r#"{{"user":"{n}"}}"#),
            requester_id: "alice".into(),
            request_id: n,
            approval_id: String::new(),
            min_revision: None,
        };
        let mut client = client.clone();
        let agent = agent.clone();
        async move {
            let answer = client
                .decide(with_key(&agent, req))
                .await
                .expect("decide")
                .into_inner();
            let a = answer.approval.expect("an approval");
            let created = a.created_at.expect("created_at");
            let ms = created.seconds as u64 * 1000 + created.nanos as u64 / 1_000_000;
            (a.id, SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        }
    };

    // Latency: one at a time, each waited for.
    let mut latencies = Vec::new();
    let mut arrived = count.clone();
    for i in 0..opts.latency_n {
        let (id, created) = decide(&mut client, format!("l{i}")).await;
        arrived.wait_for(|c| *c > i).await.expect("receiver");
        let at = arrivals.at.lock().unwrap()[&id];
        let ms = at.duration_since(created).unwrap_or_default().as_secs_f64() * 1000.0;
        latencies.push(ms);
    }

    // Throughput: a burst, then wait for every arrival.
    let before = *count.borrow();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..opts.clients {
        let (next, mut client) = (next.clone(), client.clone());
        let burst = opts.burst;
        let decide = decide.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= burst {
                    return;
                }
                decide(&mut client, format!("b{n}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let made = started.elapsed();
    let mut arrived = count.clone();
    tokio::time::timeout(
        Duration::from_secs(600),
        arrived.wait_for(|c| *c >= before + opts.burst),
    )
    .await
    .expect("every burst webhook arrives within 10 minutes")
    .expect("receiver");
    let all = started.elapsed();
    drop(server);
    Figures {
        latencies_ms: latencies,
        made_per_s: opts.burst as f64 / made.as_secs_f64(),
        delivered_per_s: opts.burst as f64 / all.as_secs_f64(),
    }
}

const RAW_N: u32 = 300;

/// The mean time of one single-row INSERT, each its own commit, on one connection.
async fn sqlite_raw(url: &str) -> Duration {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .expect("url")
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .connect()
        .await
        .expect("open sqlite");
    conn.execute(
        "CREATE TABLE bench_raw (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, payload TEXT NOT NULL)",
    )
    .await
    .expect("create table");
    let payload = "x".repeat(300);
    let started = Instant::now();
    for n in 0..RAW_N {
        sqlx::query("INSERT INTO bench_raw (id, payload) VALUES (?, ?)")
            .bind(format!("r-{n}"))
            .bind(&payload)
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let each = started.elapsed() / RAW_N;
    conn.execute("DROP TABLE bench_raw").await.expect("drop");
    each
}

async fn pg_raw(url: &str) -> Duration {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    conn.execute(
        "CREATE TABLE bench_raw (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         id TEXT NOT NULL, payload TEXT NOT NULL)",
    )
    .await
    .expect("create table");
    let payload = "x".repeat(300);
    let started = Instant::now();
    for n in 0..RAW_N {
        sqlx::query("INSERT INTO bench_raw (id, payload) VALUES ($1, $2)")
            .bind(format!("r-{n}"))
            .bind(&payload)
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let each = started.elapsed() / RAW_N;
    conn.execute("DROP TABLE bench_raw").await.expect("drop");
    each
}
