//! Prometheus metrics, served as text on their own port at `/metrics`.
//!
//! Every label set is closed (verdicts, decision codes, approval events, store operations,
//! gRPC codes), so each series is a plain atomic in a fixed array: recording one costs a
//! relaxed add on the Decide path, with no map or lock. No tenant, tool, key or argument
//! ever becomes a label.

use crate::policy::decide::{DecisionCode, Verdict};
use crate::policy::{Approval, ApprovalState};
use crate::store::StoreOp;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const VERDICTS: [(Verdict, &str); 3] = [
    (Verdict::Allow, "ALLOW"),
    (Verdict::PendingApproval, "PENDING_APPROVAL"),
    (Verdict::Deny, "DENY"),
];

const CODES: [(DecisionCode, &str); 11] = [
    (DecisionCode::PolicyAuto, "POLICY_AUTO"),
    (DecisionCode::ToolDisabled, "TOOL_DISABLED"),
    (DecisionCode::UnknownTool, "UNKNOWN_TOOL"),
    (DecisionCode::ApprovalRequired, "APPROVAL_REQUIRED"),
    (DecisionCode::ApprovalPending, "APPROVAL_PENDING"),
    (DecisionCode::ApprovalGranted, "APPROVAL_GRANTED"),
    (DecisionCode::ApprovalDenied, "APPROVAL_DENIED"),
    (DecisionCode::ApprovalExpired, "APPROVAL_EXPIRED"),
    (DecisionCode::ApprovalConsumed, "APPROVAL_CONSUMED"),
    (DecisionCode::ApprovalMismatch, "APPROVAL_MISMATCH"),
    (DecisionCode::ManagerUnknown, "MANAGER_UNKNOWN"),
];

/// gRPC status codes by number, for `toolgate_decide_errors_total{grpc_code}`.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// What happened to an approval: the label of `toolgate_approval_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalEvent {
    Created,
    Step,
    Approved,
    Denied,
    Expired,
    Consumed,
    Cancelled,
}

impl ApprovalEvent {
    const ALL: [ApprovalEvent; 7] = [
        ApprovalEvent::Created,
        ApprovalEvent::Step,
        ApprovalEvent::Approved,
        ApprovalEvent::Denied,
        ApprovalEvent::Expired,
        ApprovalEvent::Consumed,
        ApprovalEvent::Cancelled,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ApprovalEvent::Created => "created",
            ApprovalEvent::Step => "step",
            ApprovalEvent::Approved => "approved",
            ApprovalEvent::Denied => "denied",
            ApprovalEvent::Expired => "expired",
            ApprovalEvent::Consumed => "consumed",
            ApprovalEvent::Cancelled => "cancelled",
        }
    }

    /// The event an approval's new state records: a pending approval with no step yet was
    /// just created; with steps, one more was recorded.
    pub fn of(approval: &Approval) -> Self {
        match approval.state {
            ApprovalState::Pending if approval.steps.is_empty() => ApprovalEvent::Created,
            ApprovalState::Pending => ApprovalEvent::Step,
            ApprovalState::Approved => ApprovalEvent::Approved,
            ApprovalState::Denied => ApprovalEvent::Denied,
            ApprovalState::Expired => ApprovalEvent::Expired,
            ApprovalState::Consumed => ApprovalEvent::Consumed,
            ApprovalState::Cancelled => ApprovalEvent::Cancelled,
        }
    }
}

/// The two streaming calls, for the stream gauges and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Config = 0,
    Approvals = 1,
}

const WATCHES: [(Watch, &str); 2] = [(Watch::Config, "config"), (Watch::Approvals, "approvals")];

/// What a shed request was: the label of `toolgate_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    Request = 0,
    Watch = 1,
}

/// A histogram with fixed upper bounds, in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format_float(*b),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {}", format_float(sum));
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];
const PROPAGATION_BOUNDS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters and gauges of one server.
#[derive(Debug)]
pub struct Metrics {
    backend: &'static str,
    decisions: [[AtomicU64; CODES.len()]; VERDICTS.len()],
    decide_errors: [AtomicU64; GRPC_CODES.len()],
    pub decide_seconds: Histogram,
    approvals: [AtomicU64; ApprovalEvent::ALL.len()],
    watch_open: [AtomicI64; WATCHES.len()],
    watch_total: std::sync::atomic::AtomicUsize,
    watch_resets: [AtomicU64; WATCHES.len()],
    shed: [AtomicU64; 2],
    pub propagation_seconds: Histogram,
    revisions_followed: AtomicU64,
    store_errors: [[AtomicU64; 2]; StoreOp::ALL.len()],
    pub store_seconds: Histogram,
    /// Unix milliseconds of the follower's last successful read of the database.
    last_db_ok_ms: AtomicU64,
}

/// Values read from the server's state at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub tenants: u64,
    pub tools: u64,
    pub revision_sum: u64,
    pub serving: bool,
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Metrics {
    pub fn new(backend: &'static str) -> Self {
        Metrics {
            backend,
            decisions: std::array::from_fn(|_| zeros()),
            decide_errors: zeros(),
            decide_seconds: Histogram::new(LATENCY_BOUNDS),
            approvals: zeros(),
            watch_open: std::array::from_fn(|_| AtomicI64::new(0)),
            watch_total: std::sync::atomic::AtomicUsize::new(0),
            watch_resets: zeros(),
            shed: zeros(),
            propagation_seconds: Histogram::new(PROPAGATION_BOUNDS),
            revisions_followed: AtomicU64::new(0),
            store_errors: std::array::from_fn(|_| zeros()),
            store_seconds: Histogram::new(LATENCY_BOUNDS),
            last_db_ok_ms: AtomicU64::new(unix_ms()),
        }
    }

    pub fn decision(&self, verdict: Verdict, code: DecisionCode) {
        let v = VERDICTS.iter().position(|(x, _)| *x == verdict);
        let c = CODES.iter().position(|(x, _)| *x == code);
        if let (Some(v), Some(c)) = (v, c) {
            self.decisions[v][c].fetch_add(1, Relaxed);
        }
    }

    pub fn decide_error(&self, code: tonic::Code) {
        let i = (code as usize).min(GRPC_CODES.len() - 1);
        self.decide_errors[i].fetch_add(1, Relaxed);
    }

    pub fn approval(&self, approval: &Approval) {
        let e = ApprovalEvent::of(approval);
        if let Some(i) = ApprovalEvent::ALL.iter().position(|x| *x == e) {
            self.approvals[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts an open stream until the guard is dropped; `None` (and counted as shed)
    /// when `limit` streams of either kind are already open.
    pub fn try_open_watch(
        self: &std::sync::Arc<Self>,
        which: Watch,
        limit: usize,
    ) -> Option<StreamGuard> {
        let open = self.watch_total.fetch_add(1, Relaxed);
        if open >= limit {
            self.watch_total.fetch_sub(1, Relaxed);
            self.shed(Shed::Watch);
            return None;
        }
        self.watch_open[which as usize].fetch_add(1, Relaxed);
        Some(StreamGuard {
            metrics: self.clone(),
            which,
        })
    }

    pub fn watch_open(&self, which: Watch) -> i64 {
        self.watch_open[which as usize].load(Relaxed)
    }

    pub fn watch_reset(&self, which: Watch) {
        self.watch_resets[which as usize].fetch_add(1, Relaxed);
    }

    pub fn shed(&self, what: Shed) {
        self.shed[what as usize].fetch_add(1, Relaxed);
    }

    /// Revisions saved by another replica reached this one's snapshot.
    pub fn revisions_followed(&self, n: u64) {
        self.revisions_followed.fetch_add(n, Relaxed);
    }

    pub fn store_error(&self, op: StoreOp, unavailable: bool) {
        self.store_errors[op as usize][usize::from(!unavailable)].fetch_add(1, Relaxed);
    }

    pub fn database_ok(&self) {
        self.last_db_ok_ms.store(unix_ms(), Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        header(
            &mut out,
            "toolgate_build_info",
            "Build of this server; the value is 1.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "toolgate_build_info{{version=\"{}\",backend=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.backend
        );
        header(
            &mut out,
            "toolgate_serving",
            "1 while health is SERVING, 0 while loading, in a database outage or draining.",
            "gauge",
        );
        let _ = writeln!(out, "toolgate_serving {}", u8::from(g.serving));

        header(
            &mut out,
            "toolgate_decisions_total",
            "Decide answers by verdict and code.",
            "counter",
        );
        for (v, (verdict, vname)) in VERDICTS.iter().enumerate() {
            for (c, (code, cname)) in CODES.iter().enumerate() {
                let n = self.decisions[v][c].load(Relaxed);
                // Each code has one natural verdict; other pairs appear once they occur.
                if n > 0 || natural_verdict(*code) == *verdict {
                    let _ = writeln!(
                        out,
                        "toolgate_decisions_total{{verdict=\"{vname}\",code=\"{cname}\"}} {n}"
                    );
                }
            }
        }
        header(
            &mut out,
            "toolgate_decide_errors_total",
            "Decide calls answered with an error status instead of a decision.",
            "counter",
        );
        for (i, name) in GRPC_CODES.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "toolgate_decide_errors_total{{grpc_code=\"{name}\"}} {}",
                self.decide_errors[i].load(Relaxed)
            );
        }
        self.decide_seconds.render(
            &mut out,
            "toolgate_decide_duration_seconds",
            "Time to answer a Decide, from the request's arrival to its answer.",
        );

        header(
            &mut out,
            "toolgate_approval_events_total",
            "Approval changes this replica made, by event.",
            "counter",
        );
        for (i, e) in ApprovalEvent::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "toolgate_approval_events_total{{event=\"{}\"}} {}",
                e.as_str(),
                self.approvals[i].load(Relaxed)
            );
        }

        header(
            &mut out,
            "toolgate_watch_streams",
            "Open WatchConfig and WatchApprovals streams.",
            "gauge",
        );
        for (w, name) in WATCHES {
            let _ = writeln!(
                out,
                "toolgate_watch_streams{{watch=\"{name}\"}} {}",
                self.watch_open(w).max(0)
            );
        }
        header(
            &mut out,
            "toolgate_watch_resets_total",
            "Watchers that fell behind their buffer and were brought current (WatchConfig: a \
             fresh snapshot).",
            "counter",
        );
        for (w, name) in WATCHES {
            let _ = writeln!(
                out,
                "toolgate_watch_resets_total{{watch=\"{name}\"}} {}",
                self.watch_resets[w as usize].load(Relaxed)
            );
        }
        header(
            &mut out,
            "toolgate_shed_total",
            "Calls refused with RESOURCE_EXHAUSTED because a concurrency limit was reached.",
            "counter",
        );
        let _ = writeln!(
            out,
            "toolgate_shed_total{{kind=\"request\"}} {}",
            self.shed[Shed::Request as usize].load(Relaxed)
        );
        let _ = writeln!(
            out,
            "toolgate_shed_total{{kind=\"watch\"}} {}",
            self.shed[Shed::Watch as usize].load(Relaxed)
        );

        header(
            &mut out,
            "toolgate_tenants",
            "Tenants in this replica's snapshot.",
            "gauge",
        );
        let _ = writeln!(out, "toolgate_tenants {}", g.tenants);
        header(
            &mut out,
            "toolgate_tools",
            "Tools in this replica's snapshot, over all tenants.",
            "gauge",
        );
        let _ = writeln!(out, "toolgate_tools {}", g.tools);
        header(
            &mut out,
            "toolgate_revision_sum",
            "Sum over tenants of the revision this replica serves; replicas that agree show \
             the same value.",
            "gauge",
        );
        let _ = writeln!(out, "toolgate_revision_sum {}", g.revision_sum);
        header(
            &mut out,
            "toolgate_revisions_followed_total",
            "Revisions saved by another replica (or process) applied to this one's snapshot.",
            "counter",
        );
        let _ = writeln!(
            out,
            "toolgate_revisions_followed_total {}",
            self.revisions_followed.load(Relaxed)
        );
        self.propagation_seconds.render(
            &mut out,
            "toolgate_propagation_lag_seconds",
            "From another replica's commit of a revision to its arrival in this replica's \
             snapshot (across replicas' clocks).",
        );
        header(
            &mut out,
            "toolgate_snapshot_staleness_seconds",
            "Time since this replica last read the database successfully; the snapshot may \
             lag other replicas' saves by this much.",
            "gauge",
        );
        let age = unix_ms().saturating_sub(self.last_db_ok_ms.load(Relaxed));
        let _ = writeln!(
            out,
            "toolgate_snapshot_staleness_seconds {}",
            format_float(age as f64 / 1000.0)
        );

        header(
            &mut out,
            "toolgate_store_errors_total",
            "Failed store calls by operation; kind=unavailable is an unreachable, slow or busy \
             database, kind=other anything else.",
            "counter",
        );
        for (i, op) in StoreOp::ALL.iter().map(|op| op.as_str()).enumerate() {
            for (k, kind) in ["unavailable", "other"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "toolgate_store_errors_total{{op=\"{op}\",kind=\"{kind}\"}} {}",
                    self.store_errors[i][k].load(Relaxed)
                );
            }
        }
        self.store_seconds.render(
            &mut out,
            "toolgate_store_duration_seconds",
            "Time of store calls, from requests and from background work.",
        );
        out
    }
}

/// Decrements the open-stream gauge when the stream ends.
#[derive(Debug)]
pub struct StreamGuard {
    metrics: std::sync::Arc<Metrics>,
    which: Watch,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.watch_open[self.which as usize].fetch_sub(1, Relaxed);
        self.metrics.watch_total.fetch_sub(1, Relaxed);
    }
}

fn natural_verdict(code: DecisionCode) -> Verdict {
    match code {
        DecisionCode::PolicyAuto | DecisionCode::ApprovalGranted => Verdict::Allow,
        DecisionCode::ApprovalRequired | DecisionCode::ApprovalPending => Verdict::PendingApproval,
        _ => Verdict::Deny,
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn format_float(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn unix_ms() -> u64 {
    crate::policy::UnixMillis::now().0.max(0) as u64
}

/// Serves `GET /metrics` (and `GET /` with a pointer to it) over HTTP/1.1 until the
/// listener task is aborted.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Response, StatusCode};
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let render = render.clone();
            async move {
                let (status, ctype, body) = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/metrics") => (
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        render(),
                    ),
                    (&Method::GET, "/") => (
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        "toolgate: metrics at /metrics\n".to_owned(),
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found; metrics are at GET /metrics\n".to_owned(),
                    ),
                };
                Response::builder()
                    .status(status)
                    .header("content-type", ctype)
                    .body(Full::new(Bytes::from(body)))
            }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 1.0055\n"), "{out}");
    }

    #[test]
    fn every_code_has_a_name_and_unused_odd_pairs_stay_hidden() {
        let m = Metrics::new("sqlite");
        for (code, _) in CODES {
            m.decision(natural_verdict(code), code);
        }
        let text = m.render(Gauges::default());
        for (_, name) in CODES {
            assert!(text.contains(&format!("code=\"{name}\"}} 1\n")), "{name}");
        }
        assert!(!text.contains("verdict=\"ALLOW\",code=\"TOOL_DISABLED\""));
    }
}
