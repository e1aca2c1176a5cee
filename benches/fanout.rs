//! WatchConfig fan-out: N streams over C connections on one server, an admin Save, and the
//! time until the last stream has the Change; plus the server's memory per open stream.
//! Measured for toolgate and, in the same run, for a bare tonic server that forwards one
//! broadcast event of the same size to every stream (same proto, same tonic, same runtime).
//!
//! Run: `cargo bench --bench fanout` (defaults: 10000 streams, 100 connections, 5 rounds);
//! `cargo bench --bench fanout -- --streams 2000 --connections 20 --rounds 3` for less.
//! Both servers run as their own processes so their memory is read from /proc alone.

mod common;

use common::{ServerProcess, mint, ms, with_key};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

struct Options {
    streams: usize,
    connections: usize,
    rounds: usize,
}

fn options() -> Options {
    let get = common::arg;
    Options {
        streams: get("--streams", 10_000),
        connections: get("--connections", 100),
        rounds: get("--rounds", 5),
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if std::env::args().any(|a| a == "--serve-bare") {
        runtime.block_on(common::bare::serve_bare(bare_change(2)));
        return;
    }
    let opts = options();
    println!(
        "fan-out: {} streams over {} connections, {} Saves each, on {} cores",
        opts.streams,
        opts.connections,
        opts.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let bare = runtime.block_on(measure("bare tonic broadcast", Target::Bare, &opts));
    let toolgate = runtime.block_on(measure("toolgate WatchConfig", Target::Toolgate, &opts));
    println!();
    println!(
        "{:<22} {:>12} {:>12} {:>14}",
        "", "last p50", "last max", "server B/stream"
    );
    for r in [&bare, &toolgate] {
        println!(
            "{:<22} {:>10.1}ms {:>10.1}ms {:>14.0}",
            r.name,
            ms(r.p50),
            ms(r.max),
            r.bytes_per_stream
        );
    }
    println!(
        "ratio toolgate/bare: last-delivery p50 {:.2}x, max {:.2}x; memory per stream {:.2}x (target: <= 1.0x time, <= 6144 B/stream)",
        ms(toolgate.p50) / ms(bare.p50),
        ms(toolgate.max) / ms(bare.max),
        toolgate.bytes_per_stream / bare.bytes_per_stream.max(1.0)
    );
}

#[derive(Clone, Copy)]
enum Target {
    Bare,
    Toolgate,
}

struct Result_ {
    name: &'static str,
    p50: Duration,
    max: Duration,
    bytes_per_stream: f64,
}

/// A server under test, with the keys to call it (empty for the bare server).
struct Running {
    server: ServerProcess,
    admin: String,
    agent: String,
}

fn start(target: Target) -> Running {
    match target {
        Target::Bare => Running {
            server: ServerProcess::baseline("--serve-bare"),
            admin: String::new(),
            agent: String::new(),
        },
        Target::Toolgate => {
            let (dir, url) = common::sqlite_temp();
            let (admin, agent) = (mint(&url, "bench", "admin"), mint(&url, "bench", "agent"));
            Running {
                server: ServerProcess::toolgate(
                    &url,
                    Some(dir),
                    &["--heartbeat-interval", "1h", "--watch-buffer", "64"],
                ),
                admin,
                agent,
            }
        }
    }
}

/// The tool every Save changes; the bare server sends the same tool in its event.
fn bench_tool(policy: pb::Policy) -> pb::ToolDefinition {
    let _ = policy;
    pb::ToolDefinition {
        name: "reset_password".into(),
        description: "Reset a user's password and require a change at next sign-in".into(),
        input_schema_json:
            r#"{"type":"object","properties":{"user":{"type":"string"}},"required":["user"]}"#
                .into(),
        annotations: None,
    }
}

async fn measure(name: &'static str, target: Target, opts: &Options) -> Result_ {
    let server = start(target);
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..opts.connections {
            v.push(common::connect(server.server.addr).await);
        }
        v
    };
    let mut admin = PolicyServiceClient::new(channels[0].clone());
    if let Target::Toolgate = target {
        common::connect_entra(
            &admin,
            &server.admin,
            vec![bench_tool(pb::Policy::ApprovalNeeded)],
        )
        .await;
    }
    let before = server.server.rss_bytes();
    // Open every stream and read its first event, so each is fully set up.
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut ready = Vec::new();
    for i in 0..opts.streams {
        let mut client = PolicyServiceClient::new(channels[i % channels.len()].clone());
        let agent = server.agent.clone();
        let arrived = arrived_tx.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        tokio::spawn(async move {
            let mut s = client
                .watch_config(with_key(&agent, pb::WatchConfigRequest::default()))
                .await
                .expect("watch")
                .into_inner();
            s.message().await.expect("first event").expect("open");
            let _ = ready_tx.send(());
            let mut round = 0;
            while let Ok(Some(m)) = s.message().await {
                if matches!(m.event, Some(pb::watch_config_response::Event::Change(_))) {
                    let _ = arrived.send((round, Instant::now()));
                    round += 1;
                }
            }
        });
    }
    for r in ready {
        r.await.expect("stream ready");
    }
    let after = server.server.rss_bytes();
    let bytes_per_stream = after.saturating_sub(before) as f64 / opts.streams as f64;

    let mut lasts = Vec::new();
    for round in 0..opts.rounds {
        let policy = if round % 2 == 0 {
            pb::Policy::Auto
        } else {
            pb::Policy::ApprovalNeeded
        };
        let t0 = Instant::now();
        admin
            .set_policy(with_key(
                &server.admin,
                pb::SetPolicyRequest {
                    changes: vec![pb::PolicyChange {
                        integration_id: "entra".into(),
                        tool_name: "reset_password".into(),
                        policy: policy as i32,
                        manager_approval: None,
                    }],
                    expected_revision: None,
                    comment: String::new(),
                },
            ))
            .await
            .expect("save");
        let mut last = t0;
        for _ in 0..opts.streams {
            let (r, at) = arrived_rx.recv().await.expect("delivery");
            assert_eq!(r, round, "every stream gets every Save, in order");
            last = last.max(at);
        }
        lasts.push(last - t0);
    }
    lasts.sort();
    let result = Result_ {
        name,
        p50: lasts[lasts.len() / 2],
        max: *lasts.last().expect("rounds"),
        bytes_per_stream,
    };
    println!(
        "{name}: last delivery p50 {:.1} ms, max {:.1} ms; server RSS {:.1} MiB → {:.1} MiB ({:.0} B/stream)",
        ms(result.p50),
        ms(result.max),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        bytes_per_stream
    );
    result
}

fn bare_change(revision: u64) -> pb::WatchConfigResponse {
    let def = bench_tool(pb::Policy::Auto);
    pb::WatchConfigResponse {
        revision,
        event: Some(pb::watch_config_response::Event::Change(pb::Change {
            upserted: vec![pb::Tool {
                integration_id: "entra".into(),
                name: def.name,
                description: def.description,
                input_schema_json: def.input_schema_json,
                annotations: Some(pb::ToolAnnotations::default()),
                policy: pb::Policy::Auto as i32,
                manager_approval: false,
                source: 0,
                source_reason: String::new(),
                revision,
            }],
            removed: vec![],
        })),
    }
}
