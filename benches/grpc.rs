//! Decide over gRPC beside a bare tonic echo server, under the same load generator.
//!
//! toolgate answers an authenticated Decide for an `auto` tool; the echo server is the
//! benches' bare baseline (`common/bare.rs`: the same generated service, tonic, codec,
//! runtime settings and TCP_NODELAY), whose Decide returns a fixed answer of the same size
//! without looking at anything. Both run as
//! their own processes; the load comes from this one (C connections, N calls in flight in
//! all, each a loop of unary calls), level by level, echo first then toolgate.
//!
//! Run: `cargo bench --bench grpc` (levels 1x1, 4x64, 50x1000; 5 s each after 1 s warm-up);
//! `cargo bench --bench grpc -- --seconds 2` for a quicker look.

mod common;

use common::{connect, free_port, with_key};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Request;
use tonic::transport::Channel;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

/// (connections, calls in flight in all).
const LEVELS: [(usize, usize); 3] = [(1, 1), (4, 64), (50, 1000)];

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if std::env::args().any(|a| a == "--serve-echo") {
        runtime.block_on(common::bare::serve_bare(pb::WatchConfigResponse::default()));
        return;
    }
    let seconds = common::arg("--seconds", 5) as u64;
    println!(
        "Decide over gRPC: toolgate vs bare tonic echo, {seconds} s per level after 1 s warm-up, on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let echo = start_echo();
    let toolgate = start_toolgate();
    runtime.block_on(async {
        let request = toolgate.prepare().await;
        // Both answers must be the same size, so the two servers move the same bytes.
        let echo_size = first_answer(echo.addr, "", &request).await;
        let toolgate_size = first_answer(toolgate.addr, &toolgate.agent, &request).await;
        assert_eq!(echo_size, toolgate_size, "answer sizes differ");
        println!(
            "request {} B, answer {} B",
            prost::Message::encoded_len(&request),
            toolgate_size
        );
        println!();
        println!(
            "{:<9} {:<9} {:>10} {:>9} {:>9}",
            "level", "server", "calls/s", "p50 µs", "p99 µs"
        );
        let mut verdicts = Vec::new();
        for (connections, in_flight) in LEVELS {
            let level = format!("{connections}x{in_flight}");
            let e = load(echo.addr, "", &request, connections, in_flight, seconds).await;
            println!("{:<9} {:<9} {}", level, "echo", e.row());
            let t = load(
                toolgate.addr,
                &toolgate.agent,
                &request,
                connections,
                in_flight,
                seconds,
            )
            .await;
            println!("{:<9} {:<9} {}", level, "toolgate", t.row());
            let throughput = t.per_second / e.per_second;
            let p50_extra = t.p50_us - e.p50_us;
            let p99_ratio = t.p99_us / e.p99_us;
            println!(
                "{:<9} {:<9} {:>9.2}x {:>+8.1}µs {:>8.2}x",
                level, "ratio", throughput, p50_extra, p99_ratio
            );
            verdicts.push(format!(
                "{level}: throughput {throughput:.2}x echo (target >= 0.85x: {})",
                met(throughput >= 0.85)
            ));
            if (connections, in_flight) == (1, 1) {
                verdicts.push(format!(
                    "{level}: p50 echo + {p50_extra:.1} µs (target <= +5 µs: {})",
                    met(p50_extra <= 5.0)
                ));
            }
            if (connections, in_flight) == (4, 64) {
                verdicts.push(format!(
                    "{level}: p99 {p99_ratio:.2}x echo (target <= 1.2x: {})",
                    met(p99_ratio <= 1.2)
                ));
            }
        }
        println!();
        for v in verdicts {
            println!("{v}");
        }
    });
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

struct Outcome {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Outcome {
    fn row(&self) -> String {
        format!(
            "{:>10.0} {:>9.1} {:>9.1}",
            self.per_second, self.p50_us, self.p99_us
        )
    }
}

/// The size of the first answer, after checking it is an ALLOW.
async fn first_answer(addr: SocketAddr, key: &str, request: &pb::DecideRequest) -> usize {
    let mut client = PolicyServiceClient::new(connect(addr).await);
    let answer = client
        .decide(with_key(key, request.clone()))
        .await
        .expect("decide")
        .into_inner();
    assert_eq!(answer.verdict, pb::Verdict::Allow as i32, "{answer:?}");
    prost::Message::encoded_len(&answer)
}

/// Runs `in_flight` call loops over `connections` connections: 1 s of warm-up, then
/// `seconds` measured.
async fn load(
    addr: SocketAddr,
    key: &str,
    request: &pb::DecideRequest,
    connections: usize,
    in_flight: usize,
    seconds: u64,
) -> Outcome {
    let mut channels = Vec::new();
    for _ in 0..connections {
        // One HTTP/2 connection per channel.
        channels.push(connect(addr).await);
    }
    let warm_until = Instant::now() + Duration::from_secs(1);
    let until = warm_until + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let channel: Channel = channels[i % connections].clone();
        let request = with_key(key, request.clone());
        let (metadata, message) = (request.metadata().clone(), request.into_inner());
        tasks.push(tokio::spawn(async move {
            let mut client = PolicyServiceClient::new(channel);
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            loop {
                let started = Instant::now();
                if started >= until {
                    break;
                }
                let mut r = Request::new(message.clone());
                *r.metadata_mut() = metadata.clone();
                client.decide(r).await.expect("decide under load");
                if started >= warm_until {
                    let ns = started.elapsed().as_nanos();
                    latencies.push(u32::try_from(ns).unwrap_or(u32::MAX));
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
    Outcome {
        per_second: all.len() as f64 / seconds as f64,
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    agent: String,
    admin: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Connects an integration whose `get_user` is `auto`, and returns a Decide for it.
    async fn prepare(&self) -> pb::DecideRequest {
        let mut admin = PolicyServiceClient::new(connect(self.addr).await);
        let connected = admin
            .connect_integration(with_key(
                &self.admin,
                pb::ConnectIntegrationRequest {
                    integration_id: "entra".into(),
                    kind: "entra_id".into(),
                    display_name: "Entra ID".into(),
                    tools: vec![pb::ToolDefinition {
                        name: "get_user".into(),
                        description: "Reads a user".into(),
                        input_schema_json: r#"{"type":"object"}"#.into(),
                        annotations: None,
                    }],
                },
            ))
            .await
            .expect("connect integration")
            .into_inner();
        assert_eq!(connected.tools[0].policy, pb::Policy::Auto as i32);
        pb::DecideRequest {
            integration_id: "entra".into(),
            tool_name: "get_user".into(),
            arguments_json: r#"{"user":"bob@example.com"}"#.into(),
            requester_id: "alice".into(),
            request_id: "req-1".into(),
            approval_id: String::new(),
            min_revision: None,
        }
    }
}

fn start_toolgate() -> ServerProcess {
    let bin = env!("CARGO_BIN_EXE_toolgate");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let key = |role: &str| {
        let out = Command::new(bin)
            .args(["keys", "create", "--tenant", "bench", "--role", role])
            .args(["--database-url", &url])
            .output()
            .expect("keys create");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    };
    let (admin, agent) = (key("admin"), key("agent"));
    let addr = free_port();
    let child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--database-url",
            &url,
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        // Default limits: 1000 calls in flight stay under max_concurrent_requests (1024).
        // TOOLGATE_BENCH_SERVE_ARGS adds flags, to see what a setting costs.
        .args(
            std::env::var("TOOLGATE_BENCH_SERVE_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn toolgate");
    ServerProcess {
        child,
        addr,
        agent,
        admin,
        _dir: Some(dir),
    }
}

fn start_echo() -> ServerProcess {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("--serve-echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn echo server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    ServerProcess {
        child,
        addr: line.trim().parse().expect("address"),
        agent: String::new(),
        admin: String::new(),
        _dir: None,
    }
}
