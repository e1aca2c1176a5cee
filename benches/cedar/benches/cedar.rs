//! In-process decision: toolgate against cedar-policy, on the same tools.
//!
//! Run: `cargo bench -p toolgate-cedar-bench` (also part of `cargo bench --workspace`)
//!
//! For 2, 200 and 2 000 tools (half `auto`, half `disabled`), each engine answers "may this
//! tool be called?" for an auto tool, a disabled tool and an unknown one:
//!
//! - toolgate: `snapshots.get(tenant)` then `decide_by_policy(snapshot.tool(integration,
//!   name))`, as Decide runs it after authentication and argument parsing (100 other
//!   tenants sit beside the measured one, as on a shared server);
//! - Cedar: one `PolicySet` with a `permit` per auto tool and a `forbid` per disabled one
//!   (Cedar's default deny covers unknown tools), empty `Entities` and one `Authorizer`,
//!   all built once; per decision the `Request` is built from the call's strings (as a
//!   PDP would for each incoming call) and `is_authorized` runs. A second Cedar column
//!   times `is_authorized` alone on a prebuilt request.
//!
//! Both engines are checked to give the same verdict for every tool before timing. Each
//! figure is the median of 41 batches of calls, each batch about 2 ms, after a warm-up.
//! Targets (from the issue): toolgate ≤ 0.5× Cedar's time at 2 tools and ≤ 1/500 of it
//! at 2 000 tools, for every case, with the request built per call.

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request,
};
use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};
use toolgate::policy::decide::{PolicyOutcome, Verdict, decide_by_policy};
use toolgate::policy::{Annotations, Policy, PolicySource, Tool};
use toolgate::snapshot::{Snapshots, TenantSnapshot};

const SIZES: [usize; 3] = [2, 200, 2_000];
const TENANT: &str = "acme";
const BATCHES: usize = 41;
const BATCH_TIME: Duration = Duration::from_millis(2);
const WARM_UP: Duration = Duration::from_millis(50);

fn tool(i: usize, policy: Policy) -> Tool {
    Tool {
        integration_id: format!("integration_{}", i % 10),
        name: format!("tool_number_{i}"),
        description: "a tool".into(),
        input_schema_json: r#"{"type":"object"}"#.into(),
        annotations: Annotations::default(),
        policy,
        manager_approval: false,
        source: PolicySource::Admin,
        source_reason: "bench".into(),
        revision: 1,
    }
}

/// Tool `i` is auto when `i` is even, disabled when odd.
fn tools(n: usize) -> Vec<Tool> {
    (0..n)
        .map(|i| {
            let policy = if i % 2 == 0 {
                Policy::Auto
            } else {
                Policy::Disabled
            };
            tool(i, policy)
        })
        .collect()
}

fn snapshots_with(tools: Vec<Tool>) -> Snapshots {
    let snapshots = Snapshots::new();
    snapshots.replace(TENANT, TenantSnapshot::new(1, tools));
    for t in 0..100 {
        let others = (0..10).map(|i| tool(i, Policy::Auto)).collect();
        snapshots.replace(&format!("tenant_{t}"), TenantSnapshot::new(1, others));
    }
    snapshots
}

/// toolgate's decision, lookup of the tenant's snapshot included.
fn toolgate_decide(snapshots: &Snapshots, tenant: &str, integration: &str, name: &str) -> Verdict {
    let snapshot = snapshots.get(tenant);
    match decide_by_policy(snapshot.tool(integration, name)) {
        PolicyOutcome::Final(decision) => decision.verdict,
        PolicyOutcome::NeedsApproval(_) => Verdict::PendingApproval,
    }
}

struct Cedar {
    policies: PolicySet,
    entities: Entities,
    authorizer: Authorizer,
    agent_type: EntityTypeName,
    tool_type: EntityTypeName,
    action: EntityUid,
}

impl Cedar {
    fn new(tools: &[Tool]) -> Self {
        let mut text = String::new();
        for t in tools {
            let effect = match t.policy {
                Policy::Auto => "permit",
                Policy::Disabled => "forbid",
                Policy::ApprovalNeeded => unreachable!("only auto and disabled tools here"),
            };
            text.push_str(&format!(
                "{effect}(principal, action == Action::\"call\", resource == Tool::\"{}/{}\");\n",
                t.integration_id, t.name
            ));
        }
        let policies = PolicySet::from_str(&text).expect("policies parse");
        assert_eq!(policies.policies().count(), tools.len());
        Cedar {
            policies,
            entities: Entities::empty(),
            authorizer: Authorizer::new(),
            agent_type: EntityTypeName::from_str("Agent").unwrap(),
            tool_type: EntityTypeName::from_str("Tool").unwrap(),
            action: EntityUid::from_str(r#"Action::"call""#).unwrap(),
        }
    }

    /// The request for one call, built from the call's strings.
    fn request(&self, tenant: &str, integration: &str, name: &str) -> Request {
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(tenant));
        let resource = EntityUid::from_type_name_and_id(
            self.tool_type.clone(),
            EntityId::new(format!("{integration}/{name}")),
        );
        Request::new(
            principal,
            self.action.clone(),
            resource,
            Context::empty(),
            None,
        )
        .expect("request without a schema")
    }

    fn authorize(&self, request: &Request) -> cedar_policy::Response {
        self.authorizer
            .is_authorized(request, &self.policies, &self.entities)
    }

    fn decide(&self, tenant: &str, integration: &str, name: &str) -> Verdict {
        verdict(
            self.authorize(&self.request(tenant, integration, name))
                .decision(),
        )
    }
}

fn verdict(d: CedarDecision) -> Verdict {
    match d {
        CedarDecision::Allow => Verdict::Allow,
        CedarDecision::Deny => Verdict::Deny,
    }
}

/// Median nanoseconds per call of `f`, over `BATCHES` batches of about `BATCH_TIME` each.
fn measure<R>(mut f: impl FnMut() -> R) -> f64 {
    let mut run = |iters: u64| {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        start.elapsed()
    };
    // Warm up, and find how many calls fill a batch.
    let warm = Instant::now();
    let mut iters = 1u64;
    while run(iters) < BATCH_TIME {
        iters *= 2;
    }
    while warm.elapsed() < WARM_UP {
        run(iters);
    }
    let mut per_call: Vec<f64> = (0..BATCHES)
        .map(|_| run(iters).as_nanos() as f64 / iters as f64)
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[BATCHES / 2]
}

struct Row {
    case: &'static str,
    toolgate: f64,
    cedar: f64,
    cedar_prebuilt: f64,
}

fn bench_size(n: usize) -> Vec<Row> {
    let tools = tools(n);
    let cedar = Cedar::new(&tools);
    let snapshots = snapshots_with(tools.clone());

    // Same verdict from both engines for every tool, and for an unknown one.
    for t in &tools {
        let want = match t.policy {
            Policy::Auto => Verdict::Allow,
            _ => Verdict::Deny,
        };
        assert_eq!(
            toolgate_decide(&snapshots, TENANT, &t.integration_id, &t.name),
            want
        );
        assert_eq!(cedar.decide(TENANT, &t.integration_id, &t.name), want);
        // Exactly the tool's own policy decided it.
        let response = cedar.authorize(&cedar.request(TENANT, &t.integration_id, &t.name));
        assert_eq!(response.diagnostics().reason().count(), 1);
        assert_eq!(response.diagnostics().errors().count(), 0);
    }
    let unknown = ("integration_0".to_owned(), "no_such_tool".to_owned());
    assert_eq!(
        toolgate_decide(&snapshots, TENANT, &unknown.0, &unknown.1),
        Verdict::Deny
    );
    let response = cedar.authorize(&cedar.request(TENANT, &unknown.0, &unknown.1));
    assert_eq!(response.decision(), CedarDecision::Deny);
    assert_eq!(response.diagnostics().reason().count(), 0, "default deny");

    // The last auto and the last disabled tool (the policy set's order does not matter to
    // Cedar, which keeps it in a map, but the last ones are the worst case for a scan).
    let last_auto = tools
        .iter()
        .rev()
        .find(|t| t.policy == Policy::Auto)
        .unwrap();
    let last_disabled = tools
        .iter()
        .rev()
        .find(|t| t.policy == Policy::Disabled)
        .unwrap();
    let cases = [
        (
            "auto",
            (last_auto.integration_id.clone(), last_auto.name.clone()),
        ),
        (
            "disabled",
            (
                last_disabled.integration_id.clone(),
                last_disabled.name.clone(),
            ),
        ),
        ("unknown", unknown),
    ];

    cases
        .into_iter()
        .map(|(case, (integration, name))| {
            let toolgate = measure(|| {
                toolgate_decide(
                    &snapshots,
                    black_box(TENANT),
                    black_box(&integration),
                    black_box(&name),
                )
            });
            let cedar_built = measure(|| {
                cedar.decide(black_box(TENANT), black_box(&integration), black_box(&name))
            });
            let request = cedar.request(TENANT, &integration, &name);
            let cedar_prebuilt = measure(|| cedar.authorize(black_box(&request)).decision());
            Row {
                case,
                toolgate,
                cedar: cedar_built,
                cedar_prebuilt,
            }
        })
        .collect()
}

fn main() {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    println!(
        "{:>6}  {:<9} {:>12} {:>14} {:>16} {:>16}",
        "tools", "case", "toolgate ns", "cedar ns", "cedar ns", "toolgate/cedar"
    );
    println!(
        "{:>6}  {:<9} {:>12} {:>14} {:>16} {:>16}",
        "", "", "", "(req per call)", "(req prebuilt)", "(req per call)"
    );
    let mut verdicts = Vec::new();
    for n in SIZES {
        let rows = bench_size(n);
        for r in &rows {
            println!(
                "{:>6}  {:<9} {:>12.1} {:>14.1} {:>16.1} {:>16.5}",
                n,
                r.case,
                r.toolgate,
                r.cedar,
                r.cedar_prebuilt,
                r.toolgate / r.cedar
            );
        }
        let worst = rows
            .iter()
            .map(|r| r.toolgate / r.cedar)
            .fold(0.0, f64::max);
        let target = match n {
            2 => Some(0.5),
            2_000 => Some(1.0 / 500.0),
            _ => None,
        };
        if let Some(target) = target {
            verdicts.push((n, worst, target));
        }
    }
    println!();
    for (n, worst, target) in verdicts {
        let met = if worst <= target { "MET" } else { "MISSED" };
        println!(
            "target at {n} tools: toolgate/cedar <= {target} ({:.0}x faster); worst case {worst:.5} ({:.0}x faster): {met}",
            1.0 / target,
            1.0 / worst
        );
    }
}
