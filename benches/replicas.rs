//! Two `toolgate` replicas on one PostgreSQL database: a Save on replica A, and the time
//! until the last of N WatchConfig streams on replica B has its Change (median and max over
//! the rounds). Approval writes on PostgreSQL are in the `writes` bench.
//!
//! Run: `cargo bench --bench replicas` (defaults: 1000 streams, 20 rounds);
//! `-- --streams 200 --rounds 5` for less. Needs PostgreSQL at `TOOLGATE_BENCH_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); it creates a database for the
//! run and drops it after.

mod common;

use common::{PgDatabase, ServerProcess, mint, ms, with_key};
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

type Client = PolicyServiceClient<Channel>;

struct Options {
    streams: usize,
    rounds: usize,
}

fn options() -> Options {
    let get = common::arg;
    Options {
        streams: get("--streams", 1000),
        rounds: get("--rounds", 20),
    }
}

fn start_replica(url: &str) -> ServerProcess {
    ServerProcess::toolgate(
        url,
        None,
        &["--heartbeat-interval", "1h", "--watch-buffer", "256"],
    )
}

fn main() {
    let opts = options();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(opts));
}

async fn run(opts: Options) {
    let mut db = PgDatabase::create("replicas").await;
    let url = db.url.clone();
    println!(
        "replicas: 2 toolgate processes on PostgreSQL ({}), {} cores",
        db.settings().await,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let admin = mint(&url, "bench", "admin");
    let a = start_replica(&url);
    let b = start_replica(&url);
    let ca = PolicyServiceClient::new(common::connect(a.addr).await);
    let cb_channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..(opts.streams / 100).max(1) {
            v.push(common::connect(b.addr).await);
        }
        v
    };
    setup(&ca, &admin).await;
    propagation(&opts, &ca, &cb_channels, &admin).await;
    drop((a, b));
    db.drop_now().await;
}

async fn setup(client: &Client, admin: &str) {
    let tools = ["get_user", "reset_password", "t0"]
        .iter()
        .map(|name| common::tool(name, &format!("{name} tool")))
        .collect();
    common::connect_entra(client, admin, tools).await;
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
                    comment: String::new(),
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
