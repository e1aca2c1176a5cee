//! Decide over gRPC beside a bare tonic echo server, under the same load generator.
//!
//! toolgate answers an authenticated Decide for an `auto` tool; the echo server is the
//! benches' bare baseline (`common/bare.rs`: the same generated service, tonic, codec,
//! runtime settings, TCP_NODELAY and log level), whose Decide returns a fixed answer of the
//! same size without looking at anything. Both get the same request bytes, `authorization`
//! header included (the echo server ignores it). Both run as
//! their own processes; the load comes from this one (C connections, N calls in flight in
//! all, each a loop of unary calls), level by level, echo first then toolgate.
//!
//! Run: `cargo bench --bench grpc` (levels 1x1, 4x64, 50x1000; per level 5 rounds in which
//! echo then toolgate each take 1 s of load after 300 ms of warm-up; medians reported);
//! `cargo bench --bench grpc -- --seconds 2` for a quicker look. With h2load installed, the
//! same levels are driven by h2load too, and each of its rows also gives the two servers'
//! CPU time per call (from `/proc`), which the machine's changing speed moves less than a
//! rate.
//!
//! The decision log's cost: `cargo bench --bench grpc -- --decision-log` compares toolgate
//! with its decision log on (the default) and silenced, under h2load at 4x16, one server
//! after the other in alternating rounds; with `--together` both servers take their load
//! at the same moment, so a change in the machine's speed falls on both alike.
//!
//! One h2load level alone: `cargo bench --bench grpc -- --h2load-level 4x16` (no Rust
//! driver, no other level; add `--rounds 9 --seconds 2` for a steadier median).
//!
//! Profile: `cargo bench --bench grpc -- --callgrind 2000` runs both servers under
//! `valgrind --tool=callgrind` and sends each 2 000 Decides one at a time after a warm-up,
//! counting only those: it prints instructions per call for both (repeatable, unlike
//! timings on a shared machine) and leaves the profiles for `callgrind_annotate`. With
//! `--h2load-level 4x16` h2load sends the counted calls at that level instead, so the
//! counts include what concurrency shares out (fewer system calls and wake-ups per call).

mod common;

use common::{ServerProcess, connect, mint, with_key};
use std::net::SocketAddr;
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
    let only = h2load_level();
    let calls = common::arg("--callgrind", 0);
    if calls > 0 {
        runtime.block_on(callgrind(calls, only));
        return;
    }
    let rounds = common::arg("--rounds", 5);
    let seconds = common::arg("--seconds", 1) as u64;
    if std::env::args().any(|a| a == "--decision-log") {
        let together = std::env::args().any(|a| a == "--together");
        runtime.block_on(decision_log_cost(rounds, seconds, together));
        return;
    }
    println!(
        "Decide over gRPC: toolgate vs bare tonic echo, {rounds} alternating rounds of {seconds} s \
         per server and level (each after 300 ms of warm-up), on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let toolgate = start_toolgate();
    let echo = start_echo(&toolgate.agent);
    runtime.block_on(async {
        let request = toolgate.prepare().await;
        // Both answers must be the same size, so the two servers move the same bytes.
        let echo_size = first_answer(echo.server.addr, &echo.agent, &request).await;
        let toolgate_size = first_answer(toolgate.server.addr, &toolgate.agent, &request).await;
        assert_eq!(echo_size, toolgate_size, "answer sizes differ");
        println!(
            "request {} B, answer {} B",
            prost::Message::encoded_len(&request),
            toolgate_size
        );
        println!();
        println!(
            "{:<9} {:<9} {:>10} {:>9} {:>9}   (medians over the rounds)",
            "level", "server", "calls/s", "p50 µs", "p99 µs"
        );
        let mut verdicts = Vec::new();
        // `--h2load-level`: h2load alone.
        let levels: &[(usize, usize)] = if only.is_some() { &[] } else { &LEVELS };
        for &(connections, in_flight) in levels {
            let level = format!("{connections}x{in_flight}");
            // Echo and toolgate take turns, so a slow spell of this shared machine falls on
            // both; each figure is the median over the rounds, each ratio the median of the
            // rounds' ratios.
            let (mut e, mut t) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                for (target, into) in [(&echo, &mut e), (&toolgate, &mut t)] {
                    into.push(
                        load(
                            target.server.addr,
                            &target.agent,
                            &request,
                            connections,
                            in_flight,
                            seconds,
                        )
                        .await,
                    );
                }
            }
            println!("{:<9} {:<9} {}", level, "echo", Outcome::median(&e).row());
            println!("{:<9} {:<9} {}", level, "toolgate", Outcome::median(&t).row());
            let pairs = e.iter().zip(&t);
            let throughput = median(pairs.clone().map(|(e, t)| t.per_second / e.per_second));
            let p50_extra = median(pairs.clone().map(|(e, t)| t.p50_us - e.p50_us));
            let p99_ratio = median(pairs.clone().map(|(e, t)| t.p99_us / e.p99_us));
            let ratios: Vec<f64> = pairs.clone().map(|(e, t)| t.per_second / e.per_second).collect();
            let (lo, hi) = range(&ratios);
            println!(
                "{:<9} {:<9} {:>9.2}x {:>+8.1}µs {:>8.2}x   (throughput ratio {lo:.2}-{hi:.2} over the rounds)",
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
        let h2load_levels = only.map_or(H2LOAD_LEVELS.to_vec(), |level| vec![level]);
        verdicts.extend(by_h2load(
            &echo,
            &toolgate,
            &request,
            &h2load_levels,
            rounds,
            seconds,
        ));
        println!();
        println!(
            "log: {} lines from toolgate (a decision log line per Decide), read from its \
             stderr pipe",
            common::LOG_LINES.load(std::sync::atomic::Ordering::Relaxed)
        );
        for v in verdicts {
            println!("{v}");
        }
    });
}

/// Levels for h2load: (connections, streams in flight per connection).
const H2LOAD_LEVELS: [(usize, usize); 3] = [(1, 1), (4, 16), (50, 20)];

/// `--h2load-level CxS`, if given: h2load alone, at that level only.
fn h2load_level() -> Option<(usize, usize)> {
    let text = common::text_arg("--h2load-level")?;
    let level = text
        .split_once('x')
        .and_then(|(c, s)| Some((c.parse().ok()?, s.parse().ok()?)));
    Some(level.expect("--h2load-level takes connections x streams, e.g. 4x16"))
}

/// The same comparison driven by h2load, nghttp2's HTTP/2 load generator (written by
/// neither side): the same request bytes, as one gRPC frame, to each server in turn.
/// Skipped, loudly, when h2load is not installed (Debian: `apt-get install nghttp2-client`).
fn by_h2load(
    echo: &Target,
    toolgate: &Target,
    request: &pb::DecideRequest,
    levels: &[(usize, usize)],
    rounds: usize,
    seconds: u64,
) -> Vec<String> {
    let found = std::process::Command::new("h2load")
        .arg("--version")
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        println!();
        println!(
            "h2load NOT FOUND: the h2load figures are skipped (install nghttp2-client, e.g. \
             `apt-get install nghttp2-client`)"
        );
        return Vec::new();
    }
    let body = h2load_body(request);
    println!();
    println!("by h2load ({rounds} alternating rounds of {seconds} s, after 300 ms of warm-up):");
    println!(
        "{:<9} {:>12} {:>12} {:>7}",
        "level", "echo/s", "toolgate/s", "ratio"
    );
    let mut verdicts = Vec::new();
    for &(connections, streams) in levels {
        let (mut e, mut t, mut ratios, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            // Calls per second, and the server's CPU seconds per call (user + system, over
            // the warm-up and the load; the same for both), which the machine's speed
            // moves less than a rate.
            let run = |target: &Target| {
                let pid = target.server.child.id();
                let before = cpu_seconds(pid);
                let rate = h2load_run(target, body.path(), connections, streams, seconds);
                let calls = rate * (seconds as f64 + 0.3);
                (rate, (cpu_seconds(pid) - before) / calls)
            };
            let ((echo_rate, echo_cpu), (toolgate_rate, toolgate_cpu)) = (run(echo), run(toolgate));
            ratios.push(toolgate_rate / echo_rate);
            cpu.push(toolgate_cpu / echo_cpu);
            e.push(echo_rate);
            t.push(toolgate_rate);
        }
        let (lo, hi) = range(&ratios);
        let ratio = median(ratios.into_iter());
        let level = format!("{connections}x{streams}");
        println!(
            "{level:<9} {:>12.0} {:>12.0} {ratio:>6.2}x   (rounds {lo:.2}-{hi:.2}; server CPU per call {:.2}x echo's)",
            median(e.into_iter()),
            median(t.into_iter()),
            median(cpu.into_iter())
        );
        if connections > 1 {
            verdicts.push(format!(
                "{level} (h2load): throughput {ratio:.2}x echo (target >= 0.85x: {})",
                met(ratio >= 0.85)
            ));
        }
    }
    verdicts
}

/// What the decision log costs Decide's throughput at 4x16 (h2load), the audit issue's
/// budget: two toolgate servers with default settings, one with the decision log silenced
/// (`RUST_LOG=info,toolgate::decision=off`), taking turns (or, `together`, both loaded at
/// the same moment); each round's ratio is on / off.
async fn decision_log_cost(rounds: usize, seconds: u64, together: bool) {
    let on = start_toolgate();
    let off = start_toolgate_logging(Some("info,toolgate::decision=off"));
    let request = on.prepare().await;
    off.prepare().await;
    let body = h2load_body(&request);
    let (connections, streams) = (4, 16);
    let how = if together {
        "both loaded at once"
    } else {
        "alternating"
    };
    println!(
        "decision log on / off, h2load {connections}x{streams}, {rounds} rounds of {seconds} s, {how}:"
    );
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if together {
            // Calls per second and the server's CPU seconds per call, for both at once;
            // this process reads only the log that is on.
            let servers = [&on, &off].map(|t| cpu_seconds(t.server.child.id()));
            let reader = cpu_seconds(std::process::id());
            let [on_rate, off_rate] = std::thread::scope(|s| {
                [&on, &off]
                    .map(|t| {
                        let body = body.path();
                        s.spawn(move || h2load_run(t, body, connections, streams, seconds))
                    })
                    .map(|h| h.join().expect("h2load thread"))
            });
            let per_call = |t: &Target, before: f64, rate: f64| {
                (cpu_seconds(t.server.child.id()) - before) / (rate * seconds as f64) * 1e6
            };
            let (on_cpu, off_cpu) = (
                per_call(&on, servers[0], on_rate),
                per_call(&off, servers[1], off_rate),
            );
            let reader = (cpu_seconds(std::process::id()) - reader) / (on_rate * seconds as f64);
            println!(
                "round {round}: on {on_rate:.0}/s, off {off_rate:.0}/s, {:.3}x; server CPU per \
                 call on {on_cpu:.1} µs, off {off_cpu:.1} µs; log reader {:.2} µs",
                on_rate / off_rate,
                reader * 1e6
            );
            ratios.push(on_rate / off_rate);
            cpu_ratios.push(on_cpu / off_cpu);
            continue;
        }
        // Calls per second, and CPU seconds per call of the server (its log thread
        // included) and of this process (which reads the server's log).
        let run = |target: &Target| {
            let before = (
                cpu_seconds(target.server.child.id()),
                cpu_seconds(std::process::id()),
            );
            let rate = h2load_run(target, body.path(), connections, streams, seconds);
            let calls = rate * seconds as f64;
            let server = (cpu_seconds(target.server.child.id()) - before.0) / calls;
            let reader = (cpu_seconds(std::process::id()) - before.1) / calls;
            (rate, server, reader)
        };
        // Alternate which goes first, so a trend in the machine's speed falls on both.
        let (on_run, off_run) = if round % 2 == 0 {
            let on_run = run(&on);
            (on_run, run(&off))
        } else {
            let off_run = run(&off);
            (run(&on), off_run)
        };
        let us = |s: f64| s * 1e6;
        println!(
            "round {round}: on {:.0}/s, off {:.0}/s, {:.3}x; server CPU per call on {:.1} µs, \
             off {:.1} µs; log reader {:.2} / {:.2} µs",
            on_run.0,
            off_run.0,
            on_run.0 / off_run.0,
            us(on_run.1),
            us(off_run.1),
            us(on_run.2),
            us(off_run.2)
        );
        ratios.push(on_run.0 / off_run.0);
        cpu_ratios.push(on_run.1 / off_run.1);
    }
    println!(
        "server CPU per call, on / off: {:.3}x (median)",
        median(cpu_ratios.into_iter())
    );
    let (lo, hi) = range(&ratios);
    let ratio = median(ratios.into_iter());
    println!(
        "decision log on / off: {ratio:.3}x (rounds {lo:.3}-{hi:.3}); cost {:.1} % (budget <= 3 %: {})",
        (1.0 - ratio) * 100.0,
        met(ratio >= 0.97)
    );
}

/// User and system CPU time `pid` has used (Linux, from `/proc`), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// The request as h2load sends it: one gRPC frame, in a file.
fn h2load_body(request: &pb::DecideRequest) -> tempfile::NamedTempFile {
    let body = tempfile::NamedTempFile::new().expect("temp file");
    let encoded = prost::Message::encode_to_vec(request);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    std::fs::write(body.path(), frame).expect("write the request");
    body
}

/// One h2load run of `seconds` against `target`: completed Decides per second.
fn h2load_run(
    target: &Target,
    body: &std::path::Path,
    connections: usize,
    streams: usize,
    seconds: u64,
) -> f64 {
    let seconds = seconds.to_string();
    let text = h2load(
        target,
        body,
        (connections, streams),
        &["-D", &seconds, "--warm-up-time", "300ms"],
    );
    text.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("h2load printed no rate:\n{text}"))
}

/// Runs h2load against `target`'s Decide at `(connections, streams)` with `extra` flags (how
/// long, or how many calls), and returns what it printed. Every request must succeed (an
/// error answer is still HTTP 200, so the check is on h2load's own count of failed and
/// errored requests and on the server having answered).
fn h2load(
    target: &Target,
    body: &std::path::Path,
    (connections, streams): (usize, usize),
    extra: &[&str],
) -> String {
    let out = std::process::Command::new("h2load")
        .args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        .args(extra)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!("authorization: Bearer {}", target.agent)])
        .arg("-d")
        .arg(body)
        .arg(format!(
            "http://{}/toolgate.v1.PolicyService/Decide",
            target.server.addr
        ))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests: "))
        .is_some_and(|l| l.contains(" 0 failed, 0 errored"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(succeeded, "h2load saw failures:\n{text}{err}");
    text
}

/// The lowest and the highest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Instructions per Decide in each server, counted by callgrind between a warm-up and the
/// end of `calls` sequential calls (or, with `level`, `calls` sent by h2load at that level).
async fn callgrind(calls: usize, level: Option<(usize, usize)>) {
    let dir = std::env::temp_dir().join(format!("toolgate-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("profile dir");
    common::wrap_servers(format!(
        "valgrind --tool=callgrind --callgrind-out-file={}/%p.out",
        dir.display()
    ));
    let mut toolgate = start_toolgate();
    let request = toolgate.prepare().await;
    let mut echo = start_echo(&toolgate.agent);
    let body = h2load_body(&request);
    let mut per_call = Vec::new();
    for (name, target) in [("echo", &mut echo), ("toolgate", &mut toolgate)] {
        let pid = target.server.child.id().to_string();
        let mut client = PolicyServiceClient::new(connect(target.server.addr).await);
        let one = |client: &mut PolicyServiceClient<Channel>| {
            let r = with_key(&target.agent, request.clone());
            let mut client = client.clone();
            async move { client.decide(r).await.expect("decide") }
        };
        for _ in 0..200 {
            one(&mut client).await;
        }
        control(&["-z", &pid]);
        match level {
            Some(level) => {
                h2load(target, body.path(), level, &["-n", &calls.to_string()]);
            }
            None => {
                for _ in 0..calls {
                    one(&mut client).await;
                }
            }
        }
        control(&["-d", &pid]);
        target.server.stop();
        let instructions = dumped_instructions(&dir, &pid);
        println!(
            "{name:<9} {:>9.0} instructions per Decide  (profile: {}/{pid}.out.1)",
            instructions as f64 / calls as f64,
            dir.display()
        );
        per_call.push(instructions as f64 / calls as f64);
    }
    println!(
        "toolgate {:.2}x the echo server's instructions per call; read a profile with \
         callgrind_annotate --inclusive=yes <file>",
        per_call[1] / per_call[0]
    );
}

fn control(args: &[&str]) {
    let out = std::process::Command::new("callgrind_control")
        .args(args)
        .output()
        .expect("callgrind_control (valgrind) must be installed");
    assert!(out.status.success(), "callgrind_control {args:?} failed");
}

/// The instruction total of the dump `callgrind_control -d` wrote for `pid`.
fn dumped_instructions(dir: &std::path::Path, pid: &str) -> u64 {
    let text = std::fs::read_to_string(dir.join(format!("{pid}.out.1"))).expect("callgrind dump");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("instruction total in the dump")
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
    /// Each figure's median over `rounds`.
    fn median(rounds: &[Outcome]) -> Outcome {
        Outcome {
            per_second: median(rounds.iter().map(|o| o.per_second)),
            p50_us: median(rounds.iter().map(|o| o.p50_us)),
            p99_us: median(rounds.iter().map(|o| o.p99_us)),
        }
    }

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
    let warm_until = Instant::now() + Duration::from_millis(300);
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

/// A server under load, with the keys to call it (empty for the echo server).
struct Target {
    server: ServerProcess,
    agent: String,
    admin: String,
}

impl Target {
    /// Connects an integration whose `get_user` is `auto`, and returns a Decide for it.
    async fn prepare(&self) -> pb::DecideRequest {
        let admin = PolicyServiceClient::new(connect(self.server.addr).await);
        let tools = vec![common::tool("get_user", "Reads a user")];
        let connected = common::connect_entra(&admin, &self.admin, tools).await;
        assert_eq!(connected[0].policy, pb::Policy::Auto as i32);
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

fn start_toolgate() -> Target {
    let level = std::env::var("TOOLGATE_BENCH_RUST_LOG").ok();
    start_toolgate_logging(level.as_deref())
}

/// toolgate with `RUST_LOG` set to `level` (`None`: the default).
fn start_toolgate_logging(level: Option<&str>) -> Target {
    let (dir, url) = common::sqlite_temp();
    let (admin, agent) = (mint(&url, "bench", "admin"), mint(&url, "bench", "agent"));
    // Default limits: 1000 calls in flight stay under max_concurrent_requests (1024).
    // TOOLGATE_BENCH_SERVE_ARGS adds flags, to see what a setting costs.
    let extra = std::env::var("TOOLGATE_BENCH_SERVE_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    Target {
        server: ServerProcess::toolgate_logging(&url, Some(dir), &extra, level),
        agent,
        admin,
    }
}

/// The echo server, called with the same `authorization` header as toolgate (it ignores
/// it), so both receive the same bytes.
fn start_echo(agent: &str) -> Target {
    Target {
        server: ServerProcess::baseline("--serve-echo"),
        agent: agent.to_owned(),
        admin: String::new(),
    }
}
