//! Prometheus metrics through `prometheus-client`, served as text on their own port at
//! `/metrics`.
//!
//! Every label set is closed (verdicts, decision codes, approval events, store operations,
//! gRPC codes, the RPC methods this server has), so each series is resolved once, when
//! [`Metrics`] is made, and its handle kept in a fixed array: counting is a relaxed atomic
//! add on the Decide path, with no family look-up or lock. (A histogram observation takes
//! the histogram's own short mutex; that is how `prometheus-client` keeps buckets, sum and
//! count consistent.) No tenant, tool, key or argument ever becomes a label.

#[cfg(target_os = "linux")]
mod process;

use crate::policy::decide::{DecisionCode, Verdict};
use crate::policy::{Approval, ApprovalState};
use crate::store::StoreOp;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// A closed label set: label names and values are all written in this file.
type Labels<const N: usize> = [(&'static str, &'static str); N];

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

/// gRPC status codes by number as go-grpc-prometheus names them (grpc-go's
/// `codes.Code.String()`), for `grpc_server_handled_total{grpc_code}`.
const GO_GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// What happened to an approval: the label of `toolgate_approval_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
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
    const ALL: &'static [ApprovalEvent] = <ApprovalEvent as strum::VariantArray>::VARIANTS;

    fn as_str(self) -> &'static str {
        self.into()
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

const WATCHES: [&str; 2] = ["config", "approvals"];

/// What a shed request was: the label of `toolgate_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    Request = 0,
    Watch = 1,
}

const SHEDS: [&str; 2] = ["request", "watch"];

/// Why a connection was closed before it carried calls: the label of
/// `toolgate_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// `max_connections` were open.
    Limit = 0,
    /// Its handshake was not done within `handshake_timeout`.
    HandshakeTimeout = 1,
    /// Its handshake was not done when the server drained.
    Draining = 2,
}

const REFUSALS: [&str; 3] = ["limit", "handshake_timeout", "draining"];

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered = 0,
    /// It failed and will be tried again.
    Retry = 1,
    /// It failed for good (maximum age, channel deleted).
    Failed = 2,
}

const ATTEMPT_OUTCOMES: [&str; 3] = ["delivered", "retry", "failed"];

/// What became of a request to `POST /slack/interactions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackOutcome {
    /// A click whose step was recorded.
    Recorded = 0,
    /// A click from Slack that the rules refused (nothing changed).
    Refused = 1,
    /// Not shown to come from Slack (401).
    Unauthorized = 2,
    /// From Slack, but not a click on toolgate's buttons (400).
    BadRequest = 3,
}

const SLACK_OUTCOMES: [&str; 4] = ["recorded", "refused", "unauthorized", "bad_request"];

/// The kind of an RPC: the `grpc_type` label, with go-grpc-prometheus' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum RpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl RpcType {
    fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Every RPC this server answers: (type, service, method). These are the only values of
/// `grpc_service` and `grpc_method` besides `unknown`, which counts every other path, so a
/// caller cannot make new series by calling made-up methods.
pub const RPC_METHODS: [(RpcType, &str, &str); 22] = {
    use RpcType::{BidiStream, ServerStream, Unary};
    const POLICY: &str = "toolgate.v1.PolicyService";
    [
        (Unary, POLICY, "ConnectIntegration"),
        (Unary, POLICY, "ListTools"),
        (Unary, POLICY, "SetPolicy"),
        (Unary, POLICY, "UpsertPeople"),
        (Unary, POLICY, "Decide"),
        (Unary, POLICY, "SubmitApproval"),
        (Unary, POLICY, "GetApproval"),
        (Unary, POLICY, "ListApprovals"),
        (ServerStream, POLICY, "WatchConfig"),
        (ServerStream, POLICY, "WatchApprovals"),
        (Unary, POLICY, "ListRevisions"),
        (Unary, POLICY, "RollbackPolicies"),
        (Unary, POLICY, "CancelApproval"),
        (Unary, POLICY, "SetNotificationChannel"),
        (Unary, POLICY, "ListNotificationChannels"),
        (Unary, POLICY, "DeleteNotificationChannel"),
        (Unary, POLICY, "ListDeliveries"),
        (Unary, POLICY, "RetryDelivery"),
        (Unary, "grpc.health.v1.Health", "Check"),
        (ServerStream, "grpc.health.v1.Health", "Watch"),
        (
            BidiStream,
            "grpc.reflection.v1.ServerReflection",
            "ServerReflectionInfo",
        ),
        (
            BidiStream,
            "grpc.reflection.v1alpha.ServerReflection",
            "ServerReflectionInfo",
        ),
    ]
};

/// An RPC method by its place in [`RPC_METHODS`]; one past the end is `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcMethod(usize);

impl RpcMethod {
    /// Every path that names no method of [`RPC_METHODS`].
    pub const UNKNOWN: RpcMethod = RpcMethod(RPC_METHODS.len());

    /// The method a request path (`/package.Service/Method`) names: one look-up of the
    /// whole path, where splitting it and comparing both halves along the table cost about
    /// 300 instructions a call (BENCHMARKS.md, "Keepalive off, and small cuts").
    pub fn of_path(path: &str) -> RpcMethod {
        static PATHS: std::sync::LazyLock<crate::FastMap<String, RpcMethod>> =
            std::sync::LazyLock::new(|| {
                (RPC_METHODS.iter().enumerate())
                    .map(|(i, (_, service, method))| (format!("/{service}/{method}"), RpcMethod(i)))
                    .collect()
            });
        PATHS.get(path).copied().unwrap_or(RpcMethod::UNKNOWN)
    }

    /// Its `grpc_type`, `grpc_service` and `grpc_method` labels.
    fn labels(self) -> Labels<3> {
        let (kind, service, method) = match RPC_METHODS.get(self.0) {
            Some((kind, service, method)) => (kind.as_str(), *service, *method),
            None => ("unknown", "unknown", "unknown"),
        };
        [
            ("grpc_type", kind),
            ("grpc_service", service),
            ("grpc_method", method),
        ]
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];
const PROPAGATION_BOUNDS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Prometheus' default buckets (go-grpc-prometheus uses them), with finer ones below 5ms
/// where unary calls of this server fall.
const RPC_BOUNDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BOUNDS.iter().copied())
}

/// The `grpc_server_*` series of one RPC method.
#[derive(Debug)]
struct RpcSeries {
    started: Counter,
    /// By gRPC status code.
    handled: [Counter; GO_GRPC_CODES.len()],
    seconds: Histogram,
}

/// Counters, gauges and histograms of one server, and the registry that exposes them.
/// Approval delivery's series.
#[derive(Debug)]
pub struct DeliveryMetrics {
    attempts: [Counter; ATTEMPT_OUTCOMES.len()],
    ended: [Counter; 2],
    pub seconds: Histogram,
    oldest_pending: Gauge<f64, AtomicU64>,
    slack: [Counter; SLACK_OUTCOMES.len()],
}

impl DeliveryMetrics {
    fn register(r: &mut Registry) -> Self {
        let (family, attempts) = one_label("outcome", ATTEMPT_OUTCOMES);
        r.register(
            "toolgate_delivery_attempts",
            "Delivery attempts (webhooks and Slack) by outcome: delivered, retry (failed, \
             tried again), failed (failed for good)",
            family,
        );
        let (family, ended) = one_label("outcome", ["delivered", "failed"]);
        r.register(
            "toolgate_deliveries",
            "Deliveries that ended, by outcome",
            family,
        );
        let seconds = Histogram::new(PROPAGATION_BOUNDS.iter().copied());
        r.register(
            "toolgate_delivery_attempt_duration_seconds",
            "Time of one delivery attempt, from its claim to the receiver's answer",
            seconds.clone(),
        );
        let oldest_pending = Gauge::default();
        r.register(
            "toolgate_delivery_oldest_pending_seconds",
            "Age of the oldest delivery not yet delivered or failed (0 when none), as the \
             delivery worker last read it",
            oldest_pending.clone(),
        );
        let (family, slack) = one_label("outcome", SLACK_OUTCOMES);
        r.register(
            "toolgate_slack_interactions",
            "Requests to POST /slack/interactions by outcome: recorded, refused (by the \
             approval rules), unauthorized (signature or timestamp), bad_request",
            family,
        );
        DeliveryMetrics {
            attempts,
            ended,
            seconds,
            oldest_pending,
            slack,
        }
    }

    /// Counts one delivery attempt, and the delivery's end when it ended.
    pub fn attempt(&self, outcome: AttemptOutcome) {
        self.attempts[outcome as usize].inc();
        match outcome {
            AttemptOutcome::Delivered => self.ended[0].inc(),
            AttemptOutcome::Failed => self.ended[1].inc(),
            AttemptOutcome::Retry => 0,
        };
    }

    pub fn slack_interaction(&self, outcome: SlackOutcome) {
        self.slack[outcome as usize].inc();
    }

    /// The age of the oldest pending delivery, in seconds (0: none).
    pub fn set_oldest_pending(&self, seconds: f64) {
        self.oldest_pending.set(seconds);
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Each verdict's natural codes are resolved at start; any other pair on its first
    /// occurrence, so pairs that never occur are not shown.
    decisions: DecisionCounters,
    decisions_family: Family<Labels<2>, Counter>,
    /// By gRPC code; `OK` (never an error) is counted nowhere.
    decide_errors: [Counter; GRPC_CODES.len()],
    pub decide_seconds: Histogram,
    approvals: [Counter; ApprovalEvent::ALL.len()],
    load: LoadMetrics,
    pub snapshot: SnapshotMetrics,
    /// By operation, then `unavailable` / `other`.
    store_errors: [[Counter; 2]; StoreOp::ALL.len()],
    pub store_seconds: Histogram,
    /// By [`RpcMethod`], the last one `unknown`.
    rpcs: Box<[RpcSeries]>,
    /// Set at scrape time from [`Gauges`].
    serving: Gauge,
    pub deliveries: DeliveryMetrics,
}

/// Values read from the server's state at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub tenants: u64,
    pub tools: u64,
    pub revision_sum: u64,
    pub serving: bool,
}

/// A family of `M` with one label, its handles resolved for each of `values`.
fn one_label<M, const N: usize>(
    label: &'static str,
    values: [&'static str; N],
) -> (Family<Labels<1>, M>, [M; N])
where
    M: prometheus_client::metrics::TypedMetric + Clone + Default,
{
    let family = Family::<Labels<1>, M>::default();
    let handles = values.map(|value| family.get_or_create_owned(&[(label, value)]));
    (family, handles)
}

/// `metric`, registered in `r` under `name` with `help`, for the caller to keep.
fn registered<M>(r: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    r.register(name, help, metric.clone());
    metric
}

/// Decide's answers, by verdict then code.
type DecisionCounters = [[OnceLock<Counter>; CODES.len()]; VERDICTS.len()];

/// Decide's answers by verdict and code, its errors by gRPC code, and its time.
fn register_decide(
    r: &mut Registry,
) -> (
    DecisionCounters,
    Family<Labels<2>, Counter>,
    [Counter; GRPC_CODES.len()],
    Histogram,
) {
    let decisions_family = Family::<Labels<2>, Counter>::default();
    let decisions: DecisionCounters = Default::default();
    for (v, (verdict, vname)) in VERDICTS.iter().enumerate() {
        for (c, (code, cname)) in CODES.iter().enumerate() {
            if natural_verdict(*code) == *verdict {
                let counter =
                    decisions_family.get_or_create_owned(&[("verdict", vname), ("code", cname)]);
                let _ = decisions[v][c].set(counter);
            }
        }
    }
    r.register(
        "toolgate_decisions",
        "Decide answers by verdict and code",
        decisions_family.clone(),
    );
    let errors = Family::<Labels<1>, Counter>::default();
    let decide_errors = std::array::from_fn(|i| match i {
        0 => Counter::default(),
        _ => errors.get_or_create_owned(&[("grpc_code", GRPC_CODES[i])]),
    });
    r.register(
        "toolgate_decide_errors",
        "Decide calls answered with an error status instead of a decision",
        errors,
    );
    let decide_seconds = registered(
        r,
        "toolgate_decide_duration_seconds",
        "Time to answer a Decide, from the request's arrival to its answer",
        Histogram::new(LATENCY_BOUNDS.iter().copied()),
    );
    (decisions, decisions_family, decide_errors, decide_seconds)
}

/// Failed store calls by operation and kind, and the store calls' time.
fn register_store(r: &mut Registry) -> ([[Counter; 2]; StoreOp::ALL.len()], Histogram) {
    let family = Family::<Labels<2>, Counter>::default();
    let store_errors = std::array::from_fn(|i| {
        let op = StoreOp::ALL[i].as_str();
        ["unavailable", "other"]
            .map(|kind| family.get_or_create_owned(&[("op", op), ("kind", kind)]))
    });
    r.register(
        "toolgate_store_errors",
        "Failed store calls by operation; kind=unavailable is an unreachable, slow or busy \
             database, kind=other anything else",
        family,
    );
    let store_seconds = registered(
        r,
        "toolgate_store_duration_seconds",
        "Time of store calls, from requests and from background work",
        Histogram::new(LATENCY_BOUNDS.iter().copied()),
    );
    (store_errors, store_seconds)
}

/// The server's load and what it turned away: open watch streams (bounded by
/// `max_watch_streams`) and their resets, calls shed at a concurrency limit, open
/// connections and those closed before they carried calls.
#[derive(Debug)]
struct LoadMetrics {
    watch_open: [Gauge; WATCHES.len()],
    watch_total: AtomicUsize,
    watch_resets: [Counter; WATCHES.len()],
    shed: [Counter; SHEDS.len()],
    connections_open: Gauge,
    connections_refused: [Counter; REFUSALS.len()],
}

impl LoadMetrics {
    fn register(r: &mut Registry) -> Self {
        let (family, watch_open) = one_label("watch", WATCHES);
        r.register(
            "toolgate_watch_streams",
            "Open WatchConfig and WatchApprovals streams",
            family,
        );
        let (family, watch_resets) = one_label("watch", WATCHES);
        r.register(
            "toolgate_watch_resets",
            "Watchers that fell behind their buffer and were brought current (WatchConfig: a \
             fresh snapshot)",
            family,
        );
        let (family, shed) = one_label("kind", SHEDS);
        r.register(
            "toolgate_shed",
            "Calls refused with RESOURCE_EXHAUSTED because a concurrency limit was reached",
            family,
        );
        let connections_open = registered(
            r,
            "toolgate_connections_open",
            "Open connections to the gRPC port (at most max_connections)",
            Gauge::default(),
        );
        let (family, connections_refused) = one_label("reason", REFUSALS);
        r.register(
            "toolgate_connections_refused",
            "Connections closed before they carried calls: over max_connections, or their \
             handshake not done within handshake_timeout or when the server drained",
            family,
        );
        LoadMetrics {
            watch_open,
            watch_total: AtomicUsize::new(0),
            watch_resets,
            shed,
            connections_open,
            connections_refused,
        }
    }
}

/// This replica's snapshot and how it follows the others': its sizes and the time since
/// its last good read of the database (set at scrape time), the revisions it took from
/// other replicas, and how long they took to arrive.
#[derive(Debug)]
pub struct SnapshotMetrics {
    tenants: Gauge<u64, AtomicU64>,
    tools: Gauge<u64, AtomicU64>,
    revision_sum: Gauge<u64, AtomicU64>,
    revisions_followed: Counter,
    pub propagation_seconds: Histogram,
    staleness_seconds: Gauge<f64, AtomicU64>,
    /// Unix milliseconds of the follower's last successful read of the database.
    last_db_ok_ms: AtomicU64,
}

impl SnapshotMetrics {
    fn register(r: &mut Registry) -> Self {
        let tenants = registered(
            r,
            "toolgate_tenants",
            "Tenants in this replica's snapshot",
            Gauge::default(),
        );
        let tools = registered(
            r,
            "toolgate_tools",
            "Tools in this replica's snapshot, over all tenants",
            Gauge::default(),
        );
        let revision_sum = registered(
            r,
            "toolgate_revision_sum",
            "Sum over tenants of the revision this replica serves; replicas that agree show \
             the same value",
            Gauge::default(),
        );
        let revisions_followed = registered(
            r,
            "toolgate_revisions_followed",
            "Revisions saved by another replica (or process) applied to this one's snapshot",
            Counter::default(),
        );
        let propagation_seconds = registered(
            r,
            "toolgate_propagation_lag_seconds",
            "From another replica's commit of a revision to its arrival in this replica's \
             snapshot (across replicas' clocks)",
            Histogram::new(PROPAGATION_BOUNDS.iter().copied()),
        );
        let staleness_seconds = registered(
            r,
            "toolgate_snapshot_staleness_seconds",
            "Time since this replica last read the database successfully; the snapshot may \
             lag other replicas' saves by this much",
            Gauge::default(),
        );
        SnapshotMetrics {
            tenants,
            tools,
            revision_sum,
            revisions_followed,
            propagation_seconds,
            staleness_seconds,
            last_db_ok_ms: AtomicU64::new(unix_ms()),
        }
    }

    /// The gauges read at scrape time.
    fn set(&self, g: &Gauges) {
        self.tenants.set(g.tenants);
        self.tools.set(g.tools);
        self.revision_sum.set(g.revision_sum);
        let age = unix_ms().saturating_sub(self.last_db_ok_ms.load(Relaxed));
        self.staleness_seconds.set(age as f64 / 1000.0);
    }
}

impl Metrics {
    pub fn new(backend: &'static str) -> Self {
        let mut r = Registry::default();

        let build_info = Family::<Labels<2>, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION")), ("backend", backend)])
            .set(1);
        r.register(
            "toolgate_build_info",
            "Build of this server; the value is 1",
            build_info,
        );
        let serving = registered(
            &mut r,
            "toolgate_serving",
            "1 while health is SERVING, 0 while loading, in a database outage or draining",
            Gauge::default(),
        );

        let (decisions, decisions_family, decide_errors, decide_seconds) = register_decide(&mut r);

        let (family, approvals) = one_label(
            "event",
            std::array::from_fn(|i| ApprovalEvent::ALL[i].as_str()),
        );
        r.register(
            "toolgate_approval_events",
            "Approval changes this replica made, by event",
            family,
        );
        let load = LoadMetrics::register(&mut r);
        let snapshot = SnapshotMetrics::register(&mut r);

        let (store_errors, store_seconds) = register_store(&mut r);

        let deliveries = DeliveryMetrics::register(&mut r);
        let rpcs = register_rpcs(&mut r);
        #[cfg(target_os = "linux")]
        r.register_collector(Box::new(process::ProcessCollector));

        Metrics {
            registry: r,
            decisions,
            decisions_family,
            decide_errors,
            decide_seconds,
            approvals,
            load,
            snapshot,
            store_errors,
            store_seconds,
            rpcs,
            serving,
            deliveries,
        }
    }

    pub fn decision(&self, verdict: Verdict, code: DecisionCode) {
        let v = VERDICTS.iter().position(|(x, _)| *x == verdict);
        let c = CODES.iter().position(|(x, _)| *x == code);
        if let (Some(v), Some(c)) = (v, c) {
            self.decisions[v][c]
                .get_or_init(|| {
                    self.decisions_family
                        .get_or_create_owned(&[("verdict", VERDICTS[v].1), ("code", CODES[c].1)])
                })
                .inc();
        }
    }

    pub fn decide_error(&self, code: tonic::Code) {
        let i = (code as usize).min(GRPC_CODES.len() - 1);
        self.decide_errors[i].inc();
    }

    pub fn approval(&self, approval: &Approval) {
        let e = ApprovalEvent::of(approval);
        if let Some(i) = ApprovalEvent::ALL.iter().position(|x| *x == e) {
            self.approvals[i].inc();
        }
    }

    /// Counts an open stream until the guard is dropped; `None` (and counted as shed)
    /// when `limit` streams of either kind are already open.
    pub fn try_open_watch(
        self: &std::sync::Arc<Self>,
        which: Watch,
        limit: usize,
    ) -> Option<StreamGuard> {
        let open = self.load.watch_total.fetch_add(1, Relaxed);
        if open >= limit {
            self.load.watch_total.fetch_sub(1, Relaxed);
            self.shed(Shed::Watch);
            return None;
        }
        self.load.watch_open[which as usize].inc();
        Some(StreamGuard {
            metrics: self.clone(),
            which,
        })
    }

    pub fn watch_open(&self, which: Watch) -> i64 {
        self.load.watch_open[which as usize].get()
    }

    pub fn watch_reset(&self, which: Watch) {
        self.load.watch_resets[which as usize].inc();
    }

    pub fn shed(&self, what: Shed) {
        self.load.shed[what as usize].inc();
    }

    pub fn connections_open(&self, delta: i64) {
        self.load.connections_open.inc_by(delta);
    }

    pub fn connection_refused(&self, why: ConnectionRefusal) {
        self.load.connections_refused[why as usize].inc();
    }

    /// Revisions saved by another replica reached this one's snapshot.
    pub fn revisions_followed(&self, n: u64) {
        self.snapshot.revisions_followed.inc_by(n);
    }

    pub fn store_error(&self, op: StoreOp, unavailable: bool) {
        self.store_errors[op as usize][usize::from(!unavailable)].inc();
    }

    pub fn database_ok(&self) {
        self.snapshot.last_db_ok_ms.store(unix_ms(), Relaxed);
    }

    /// An RPC of `method` arrived.
    pub fn rpc_started(&self, method: RpcMethod) {
        if let Some(series) = self.rpcs.get(method.0) {
            series.started.inc();
        }
    }

    /// An RPC of `method` ended with `code` after `elapsed`.
    pub fn rpc_handled(&self, method: RpcMethod, code: tonic::Code, elapsed: Duration) {
        if let Some(series) = self.rpcs.get(method.0) {
            let i = (code as usize).min(GO_GRPC_CODES.len() - 1);
            series.handled[i].inc();
            series.seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: Gauges) -> String {
        self.serving.set(i64::from(g.serving));
        self.snapshot.set(&g);
        let mut out = String::with_capacity(64 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `grpc_server_*` families (go-grpc-prometheus' names and labels) with every
/// method's series made up front, so each is shown from the start (at zero).
fn register_rpcs(r: &mut Registry) -> Box<[RpcSeries]> {
    let started = Family::<Labels<3>, Counter>::default();
    let handled = Family::<Labels<4>, Counter>::default();
    let seconds =
        Family::<Labels<3>, Histogram, fn() -> Histogram>::new_with_constructor(rpc_histogram);
    let rpcs = (0..=RPC_METHODS.len())
        .map(|i| {
            let [kind, service, method] = RpcMethod(i).labels();
            RpcSeries {
                started: started.get_or_create_owned(&[kind, service, method]),
                handled: GO_GRPC_CODES.map(|code| {
                    handled.get_or_create_owned(&[kind, service, method, ("grpc_code", code)])
                }),
                seconds: seconds.get_or_create_owned(&[kind, service, method]),
            }
        })
        .collect();
    r.register(
        "grpc_server_started",
        "Total number of RPCs started on the server",
        started,
    );
    r.register(
        "grpc_server_handled",
        "Total number of RPCs completed on the server, regardless of success or failure",
        handled,
    );
    r.register(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level \
         handled by the server",
        seconds,
    );
    rpcs
}

/// Decrements the open-stream gauge when the stream ends.
#[derive(Debug)]
pub struct StreamGuard {
    metrics: std::sync::Arc<Metrics>,
    which: Watch,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.load.watch_open[self.which as usize].dec();
        self.metrics.load.watch_total.fetch_sub(1, Relaxed);
    }
}

fn natural_verdict(code: DecisionCode) -> Verdict {
    match code {
        DecisionCode::PolicyAuto | DecisionCode::ApprovalGranted => Verdict::Allow,
        DecisionCode::ApprovalRequired | DecisionCode::ApprovalPending => Verdict::PendingApproval,
        _ => Verdict::Deny,
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
                    (&Method::GET, "/metrics") => {
                        (StatusCode::OK, prometheus_text::CONTENT_TYPE, render())
                    }
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
    fn names_types_and_labels_are_as_documented() {
        let m = Metrics::new("sqlite");
        m.decide_seconds.observe(0.000_5);
        m.decide_seconds.observe(0.005);
        m.decide_seconds.observe(1.0);
        m.decide_error(tonic::Code::Unauthenticated);
        m.revisions_followed(2);
        let text = m.render(Gauges {
            tenants: 3,
            serving: true,
            ..Gauges::default()
        });
        for line in [
            "# TYPE toolgate_decisions_total counter\n",
            "# HELP toolgate_decide_errors_total Decide calls answered with an error status \
             instead of a decision.\n",
            "toolgate_decide_errors_total{grpc_code=\"UNAUTHENTICATED\"} 1\n",
            "# TYPE toolgate_decide_duration_seconds histogram\n",
            "toolgate_decide_duration_seconds_bucket{le=\"0.0005\"} 1\n",
            "toolgate_decide_duration_seconds_bucket{le=\"0.005\"} 2\n",
            "toolgate_decide_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "toolgate_decide_duration_seconds_count 3\n",
            "toolgate_decide_duration_seconds_sum 1.0055\n",
            "toolgate_revisions_followed_total 2\n",
            "toolgate_tenants 3\n",
            "toolgate_serving 1\n",
            "# TYPE toolgate_watch_streams gauge\n",
            "toolgate_shed_total{kind=\"watch\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert!(
            !text.contains("toolgate_decide_errors_total{grpc_code=\"OK\"}"),
            "OK is never a Decide error"
        );
        assert!(!text.contains("_total_total"));
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
        m.decision(Verdict::Allow, DecisionCode::ToolDisabled);
        let text = m.render(Gauges::default());
        assert!(text.contains("{verdict=\"ALLOW\",code=\"TOOL_DISABLED\"} 1\n"));
    }

    #[test]
    fn only_known_methods_are_labels() {
        let decide = RpcMethod::of_path("/toolgate.v1.PolicyService/Decide");
        assert_eq!(
            decide.labels(),
            [
                ("grpc_type", "unary"),
                ("grpc_service", "toolgate.v1.PolicyService"),
                ("grpc_method", "Decide"),
            ]
        );
        for (i, (_, service, method)) in RPC_METHODS.iter().enumerate() {
            let path = format!("/{service}/{method}");
            assert_eq!(RpcMethod::of_path(&path), RpcMethod(i), "{path}");
        }
        for path in [
            "/toolgate.v1.PolicyService/Nope",
            "/toolgate.v1.PolicyService/Decide/x",
            "/evil.Service/Decide",
            "toolgate.v1.PolicyService/Decide",
            "/",
            "",
        ] {
            assert_eq!(RpcMethod::of_path(path), RpcMethod::UNKNOWN, "{path}");
        }
        let m = Metrics::new("sqlite");
        m.rpc_started(decide);
        m.rpc_handled(decide, tonic::Code::Cancelled, Duration::from_millis(1));
        m.rpc_handled(
            RpcMethod::UNKNOWN,
            tonic::Code::Unimplemented,
            Duration::ZERO,
        );
        let text = m.render(Gauges::default());
        let decide = "grpc_type=\"unary\",grpc_service=\"toolgate.v1.PolicyService\",\
                      grpc_method=\"Decide\"";
        for line in [
            format!("grpc_server_started_total{{{decide}}} 1\n"),
            format!("grpc_server_handled_total{{{decide},grpc_code=\"Canceled\"}} 1\n"),
            format!("grpc_server_handled_total{{{decide},grpc_code=\"OK\"}} 0\n"),
            format!("grpc_server_handling_seconds_count{{{decide}}} 1\n"),
            "grpc_server_handled_total{grpc_type=\"unknown\",grpc_service=\"unknown\",\
             grpc_method=\"unknown\",grpc_code=\"Unimplemented\"} 1\n"
                .to_owned(),
        ] {
            assert!(text.contains(&line), "{line} not in:\n{text}");
        }
    }

    /// The method table names every method of the services the server registers, with
    /// its streaming kind, and nothing else.
    #[test]
    fn the_method_table_is_the_served_descriptors() {
        use prost::Message as _;
        let mut served = Vec::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).expect("descriptor set");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => RpcType::Unary,
                            (true, false) => RpcType::ClientStream,
                            (false, true) => RpcType::ServerStream,
                            (true, true) => RpcType::BidiStream,
                        };
                        served.push((
                            kind,
                            format!("{}.{}", file.package(), service.name()),
                            method.name().to_owned(),
                        ));
                    }
                }
            }
        }
        let table: Vec<_> = RPC_METHODS
            .iter()
            .map(|(k, s, m)| (*k, (*s).to_owned(), (*m).to_owned()))
            .collect();
        served.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        let mut sorted = table.clone();
        sorted.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        assert_eq!(sorted, served);
    }
}
