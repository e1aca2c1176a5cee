//! Two `toolgate` replicas on one PostgreSQL database.
//!
//! 1. **Propagation**: a Save on replica A, and the time until the last of N WatchConfig
//!    streams on replica B has its Change (median and max over the rounds).
//! 2. **Approval writes**: approvals created, approved and consumed through replica A by C
//!    concurrent clients, beside raw single-row INSERTs by C connections on the same
//!    database, for the same time, in the same run. Each approval write (create, approve,
//!    consume) is one committed transaction, as is each raw INSERT; the ratio compares the
//!    two per committed write.
//!
//! Run: `cargo bench --bench replicas` (defaults: 1000 streams, 20 rounds, 16 clients, 5 s);
//! `-- --streams 200 --rounds 5 --clients 8 --seconds 2` for less. Needs PostgreSQL at
//! `TOOLGATE_BENCH_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`); it
//! creates a database for the run and drops it after.

mod common;

use common::{free_port, ms, with_key};
use sqlx::{Connection, Executor, PgConnection};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

type Client = PolicyServiceClient<Channel>;

struct Options {
    streams: usize,
    rounds: usize,
    clients: usize,
    seconds: u64,
}

fn options() -> Options {
    let get = common::arg;
    Options {
        streams: get("--streams", 1000),
        rounds: get("--rounds", 20),
        clients: get("--clients", 16),
        seconds: get("--seconds", 5) as u64,
    }
}

struct Replica(Child, SocketAddr);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_replica(url: &str) -> Replica {
    let addr = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args([
            "serve",
            "--metrics-listen",
            "127.0.0.1:0",
            "--listen",
            &addr.to_string(),
            "--database-url",
            url,
        ])
        .args(["--heartbeat-interval", "1h", "--watch-buffer", "256"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn toolgate");
    Replica(child, addr)
}

fn mint(url: &str, role: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["keys", "create", "--tenant", "bench", "--role", role])
        .args(["--database-url", url])
        .output()
        .expect("keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

fn main() {
    let opts = options();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(opts));
}

async fn run(opts: Options) {
    let admin_url = std::env::var("TOOLGATE_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut pg = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("this bench needs PostgreSQL at {admin_url}: {e}"));
    let name = format!("tg_bench_{}", std::process::id());
    pg.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create database");
    let root = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(r, _)| r);
    let url = format!("{root}/{name}");
    let settings: Vec<String> = sqlx::query_scalar(
        "SELECT name || '=' || setting FROM pg_settings \
         WHERE name IN ('fsync', 'synchronous_commit', 'server_version')",
    )
    .fetch_all(&mut pg)
    .await
    .expect("settings");
    println!(
        "replicas: 2 toolgate processes on PostgreSQL ({}), {} cores",
        settings.join(", "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let (admin, agent, approver) = (
        mint(&url, "admin"),
        mint(&url, "agent"),
        mint(&url, "approver"),
    );
    let a = start_replica(&url);
    let b = start_replica(&url);
    let ca = PolicyServiceClient::new(common::connect(a.1).await);
    let cb_channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..(opts.streams / 100).max(1) {
            v.push(common::connect(b.1).await);
        }
        v
    };
    setup(&ca, &admin).await;
    propagation(&opts, &ca, &cb_channels, &admin).await;
    approvals(&opts, &ca, &url, &agent, &approver).await;

    drop((a, b));
    pg.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .await
    .expect("drop database");
}

async fn setup(client: &Client, admin: &str) {
    let tools = ["get_user", "reset_password", "t0"]
        .iter()
        .map(|name| pb::ToolDefinition {
            name: name.to_string(),
            description: format!("{name} tool"),
            input_schema_json: r#"{"type":"object","properties":{"user":{"type":"string"}}}"#
                .into(),
            annotations: None,
        })
        .collect();
    client
        .clone()
        .connect_integration(with_key(
            admin,
            pb::ConnectIntegrationRequest {
                integration_id: "entra".into(),
                kind: "entra_id".into(),
                display_name: "Entra ID".into(),
                tools,
            },
        ))
        .await
        .expect("connect");
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

/// Save on A; the time until the last stream on B has that revision.
async fn propagation(opts: &Options, a: &Client, b: &[Channel], admin: &str) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    for i in 0..opts.streams {
        let mut client = PolicyServiceClient::new(b[i % b.len()].clone());
        let (tx, ready) = (tx.clone(), ready_tx.clone());
        let admin = admin.to_owned();
        tokio::spawn(async move {
            let mut stream = client
                .watch_config(with_key(&admin, pb::WatchConfigRequest::default()))
                .await
                .expect("watch")
                .into_inner();
            let _ = stream.message().await;
            let _ = ready.send(());
            while let Ok(Some(m)) = stream.message().await {
                if let Some(pb::watch_config_response::Event::Change(_)) = m.event {
                    let _ = tx.send((m.revision, Instant::now()));
                }
            }
        });
    }
    for _ in 0..opts.streams {
        ready_rx.recv().await.expect("stream ready");
    }
    let mut latencies = Vec::new();
    for round in 0..opts.rounds {
        let policy = [pb::Policy::Disabled, pb::Policy::Auto][round % 2];
        let started = Instant::now();
        let revision = a
            .clone()
            .set_policy(with_key(
                admin,
                pb::SetPolicyRequest {
                    changes: vec![pb::PolicyChange {
                        integration_id: "entra".into(),
                        tool_name: "t0".into(),
                        policy: policy as i32,
                        manager_approval: None,
                    }],
                    expected_revision: None,
                },
            ))
            .await
            .expect("save")
            .into_inner()
            .revision;
        let mut last = started;
        let mut got = 0;
        while got < opts.streams {
            let (r, at) = rx.recv().await.expect("arrival");
            if r == revision {
                got += 1;
                last = last.max(at);
            }
        }
        latencies.push(last - started);
    }
    latencies.sort();
    println!(
        "propagation: Save on A -> last of {} streams on B: median {:.2} ms, max {:.2} ms ({} Saves)",
        opts.streams,
        ms(latencies[latencies.len() / 2]),
        ms(*latencies.last().expect("rounds")),
        opts.rounds
    );
}

/// Approval writes through A, then raw INSERTs on the same database, for the same time.
async fn approvals(opts: &Options, a: &Client, url: &str, agent: &str, approver: &str) {
    let writes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let mut workers = Vec::new();
    for w in 0..opts.clients {
        let (client, writes) = (a.clone(), writes.clone());
        let (agent, approver) = (agent.to_owned(), approver.to_owned());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                approval_cycle(&client, &agent, &approver, &format!("w{w}-{n}")).await;
                writes.fetch_add(3, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for w in workers {
        w.await.expect("worker");
    }
    let toolgate = writes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();

    let mut setup = PgConnection::connect(url).await.expect("connect");
    setup
        .execute(
            "CREATE TABLE bench_raw (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             tenant TEXT NOT NULL, id TEXT NOT NULL, payload TEXT NOT NULL)",
        )
        .await
        .expect("create table");
    let inserts = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let mut workers = Vec::new();
    for w in 0..opts.clients {
        let (url, inserts) = (url.to_owned(), inserts.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.expect("connect");
            let payload = "x".repeat(300);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                sqlx::query("INSERT INTO bench_raw (tenant, id, payload) VALUES ($1, $2, $3)")
                    .bind("bench")
                    .bind(format!("w{w}-{n}"))
                    .bind(&payload)
                    .execute(&mut conn)
                    .await
                    .expect("insert");
                inserts.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for w in workers {
        w.await.expect("worker");
    }
    let raw = inserts.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let store = store_writes(opts, url).await;
    println!(
        "approval writes in-process ({} tasks, {} s, the store's own SQL, no gRPC): {:.0} \
         writes/s vs raw INSERT {:.0}/s: ratio {:.2}",
        opts.clients,
        opts.seconds,
        store,
        raw,
        store / raw
    );
    println!(
        "approval writes ({} clients, {} s): toolgate {:.0} writes/s ({:.0} create+approve+consume \
         cycles/s) vs raw INSERT {:.0}/s: ratio {:.2} (target >= 0.80)",
        opts.clients,
        opts.seconds,
        toolgate,
        toolgate / 3.0,
        raw,
        toolgate / raw
    );
}

/// The same three writes straight through the PostgreSQL store, in this process: what the
/// database path costs without gRPC and the server's per-call work.
async fn store_writes(opts: &Options, url: &str) -> f64 {
    use toolgate::policy::{Approval, ApprovalState, ApprovalStep, ApproverRole, UnixMillis};
    use toolgate::store::Store;
    let settings = toolgate::store::pg::PgSettings {
        max_connections: opts.clients as u32,
        ..Default::default()
    };
    let store = toolgate::store::pg::PgStore::connect(url, &settings)
        .await
        .expect("open store");
    let writes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let mut workers = Vec::new();
    for w in 0..opts.clients {
        let (store, writes) = (store.clone(), writes.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
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
                let step = |a: &Approval, _: &toolgate::store::People| {
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
                    .update_approval("bench", &a.id, vec!["tech".into()], step)
                    .await
                    .expect("approve");
                let consume = |a: &Approval, _: &toolgate::store::People| {
                    let mut next = a.clone();
                    next.state = ApprovalState::Consumed;
                    next.consumed_by_request = Some(a.request_id.clone());
                    Ok::<_, std::convert::Infallible>((Some(next), ()))
                };
                store
                    .update_approval("bench", &a.id, Vec::new(), consume)
                    .await
                    .expect("consume");
                writes.fetch_add(3, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for w in workers {
        w.await.expect("worker");
    }
    writes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

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
