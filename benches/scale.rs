//! Scale: memory, time to SERVING and Decide throughput as tenants and tools grow.
//!
//! For each size (tenants × tools per tenant) a SQLite database is filled through the API
//! (one integration per tenant, every tool `auto`), then a fresh `toolgate serve` is
//! started on it and timed from spawn to health SERVING (every snapshot loaded), its
//! resident memory read, and Decide driven over gRPC at 4 connections × 64 calls in
//! flight, each call for another tenant and tool, spread over the whole set. The first
//! row, an empty database, is the baseline for memory and start-up; throughput is compared
//! with the smallest loaded size.
//!
//! Run: `cargo bench --bench scale` (sizes up to 1 000 × 100, 5 s of load per size);
//! `-- --tenants 100 --seconds 2` for a smaller largest size.

mod common;

use common::{ServerProcess, with_key};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;
use toolgate::store::{PgSettings, Store};

const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 64;

fn main() {
    let max_tenants = common::arg("--tenants", 1000);
    let tools = common::arg("--tools", 100);
    let seconds = common::arg("--seconds", 5) as u64;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        println!(
            "scale: SQLite, {CONNECTIONS} connections x {IN_FLIGHT} Decides in flight, {seconds} s per \
             size, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:>8} {:>6} {:>9} {:>12} {:>10} {:>14} {:>12} {:>7}",
            "tenants", "tools", "in all", "to SERVING", "RSS", "RSS over empty", "Decide/s", "ratio"
        );
        let mut first_rate = None;
        let mut empty_rss = 0;
        let mut sizes = vec![(0, 0), (1, tools)];
        for t in [10, 100, 1000, 10_000] {
            if t <= max_tenants {
                sizes.push((t, tools));
            }
        }
        for (tenants, tools) in sizes {
            let r = measure(tenants, tools, seconds).await;
            let total = tenants * tools;
            if tenants == 0 {
                empty_rss = r.rss;
            }
            let over = r.rss.saturating_sub(empty_rss);
            let (rate, ratio) = match (r.rate, first_rate) {
                (Some(rate), None) => {
                    first_rate = Some(rate);
                    (format!("{rate:.0}"), "1.00".to_owned())
                }
                (Some(rate), Some(first)) => (format!("{rate:.0}"), format!("{:.2}", rate / first)),
                (None, _) => ("-".to_owned(), "-".to_owned()),
            };
            println!(
                "{:>8} {:>6} {:>9} {:>9.0} ms {:>7.1} MB {:>9.1} MB {:>12} {:>7}{}",
                tenants,
                tools,
                total,
                common::ms(r.startup),
                r.rss as f64 / 1e6,
                over as f64 / 1e6,
                rate,
                ratio,
                if total > 0 {
                    format!("  ({:.0} B per tool)", over as f64 / total as f64)
                } else {
                    String::new()
                }
            );
        }
    });
}

struct Measured {
    startup: Duration,
    rss: u64,
    rate: Option<f64>,
}

/// One agent key per tenant, made through the store (minting thousands through the CLI
/// would take minutes); returns each tenant's agent token.
async fn fill(url: &str, tenants: usize, tools: usize) -> Vec<String> {
    let store = toolgate::store::open(url, &PgSettings::default())
        .await
        .expect("open store");
    let mut agents = Vec::new();
    let mut admins = Vec::new();
    for t in 0..tenants {
        for (role, into) in [
            (toolgate::policy::Role::Agent, &mut agents),
            (toolgate::policy::Role::Admin, &mut admins),
        ] {
            let key = toolgate::keys::generate().expect("random");
            store
                .create_key(&key.id, &tenant(t), role, &key.secret_sha256, None)
                .await
                .expect("create key");
            into.push(key.token);
        }
    }
    drop(store);
    if tenants == 0 {
        return agents;
    }
    // The tools go in through the API, as an admin would connect them.
    let server = ServerProcess::toolgate(url, None, &[]);
    let channel = common::connect(server.addr).await;
    let admins = Arc::new(admins);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (channel, admins, next) = (channel.clone(), admins.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let client = PolicyServiceClient::new(channel);
            loop {
                let t = next.fetch_add(1, Ordering::Relaxed) as usize;
                if t >= admins.len() {
                    break;
                }
                let tools = (0..tools)
                    .map(|i| common::tool(&tool(i), &format!("Reads record {i} of the directory")))
                    .collect();
                let connected = common::connect_entra(&client, &admins[t], tools).await;
                assert!(
                    connected
                        .iter()
                        .all(|t| t.policy == pb::Policy::Auto as i32)
                );
            }
        }));
    }
    for w in workers {
        w.await.expect("filler");
    }
    agents
}

fn tenant(t: usize) -> String {
    format!("tenant{t:05}")
}

fn tool(i: usize) -> String {
    format!("get_record_{i:03}")
}

async fn measure(tenants: usize, tools: usize, seconds: u64) -> Measured {
    let (dir, url) = common::sqlite_temp();
    let agents = fill(&url, tenants, tools).await;
    let spawned = Instant::now();
    let server = ServerProcess::toolgate(&url, None, &[]);
    let channel = common::connect(server.addr).await;
    let mut health = HealthClient::new(channel.clone());
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            break;
        }
        // Polling a child process's health; nothing to wait on from here.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let startup = spawned.elapsed();
    let rss = server.rss_bytes();
    let rate = if tenants == 0 {
        None
    } else {
        Some(decide_load(&server, &agents, tools, seconds).await)
    };
    drop(server);
    drop(dir);
    Measured { startup, rss, rate }
}

/// Decides per second, each call for another tenant and tool.
async fn decide_load(server: &ServerProcess, agents: &[String], tools: usize, seconds: u64) -> f64 {
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(common::connect(server.addr).await);
    }
    let agents: Arc<Vec<String>> = Arc::new(agents.to_vec());
    let warm_until = Instant::now() + Duration::from_secs(1);
    let until = warm_until + Duration::from_secs(seconds);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..IN_FLIGHT {
        let (channel, agents, done) = (
            channels[i % CONNECTIONS].clone(),
            agents.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = PolicyServiceClient::new(channel);
            // A different stride per task, so calls spread over every tenant and tool.
            let mut k = i * 7919;
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                k = k.wrapping_add(104_729);
                let (t, j) = (k % agents.len(), (k / agents.len()) % tools);
                let answer = client
                    .decide(with_key(
                        &agents[t],
                        pb::DecideRequest {
                            integration_id: "entra".into(),
                            tool_name: tool(j),
                            arguments_json: r#"{"id":"42"}"#.into(),
                            requester_id: "alice".into(),
                            request_id: format!("r{k}"),
                            approval_id: String::new(),
                            min_revision: None,
                        },
                    ))
                    .await
                    .expect("decide under load")
                    .into_inner();
                assert_eq!(answer.verdict, pb::Verdict::Allow as i32, "{answer:?}");
                if now >= warm_until {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task");
    }
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}
