//! The in-process decision for `auto`, `disabled` and unknown tools: a snapshot lookup and
//! the policy rule, as Decide runs it after authentication and argument parsing.
//!
//! Run: `cargo bench --bench decide`. The aim is well under a microsecond, flat in the
//! number of tools.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use toolgate::policy::decide::{PolicyOutcome, Verdict, decide_by_policy};
use toolgate::policy::{Annotations, Policy, PolicySource, Tool};
use toolgate::snapshot::{Snapshots, TenantSnapshot};

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

fn snapshots_with(tools_in_tenant: usize) -> Snapshots {
    let snapshots = Snapshots::new();
    let policies = [Policy::Auto, Policy::Disabled, Policy::ApprovalNeeded];
    let tools = (0..tools_in_tenant)
        .map(|i| tool(i, policies[i % 3]))
        .collect();
    snapshots.replace("acme", TenantSnapshot::new(1, tools));
    // Other tenants around it, as on a shared server.
    for t in 0..100 {
        let tools = (0..10).map(|i| tool(i, Policy::Auto)).collect();
        snapshots.replace(&format!("tenant_{t}"), TenantSnapshot::new(1, tools));
    }
    snapshots
}

fn verdict(snapshots: &Snapshots, integration: &str, name: &str) -> Option<Verdict> {
    let snapshot = snapshots.get("acme");
    match decide_by_policy(snapshot.tool(integration, name)) {
        PolicyOutcome::Final(decision) => Some(decision.verdict),
        PolicyOutcome::NeedsApproval(_) => None,
    }
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_in_process");
    for n in [10usize, 1_000, 100_000] {
        let snapshots = snapshots_with(n);
        // Tool 0 is auto and tool 1 disabled (policies cycle by index).
        let auto = (format!("integration_{}", 0), "tool_number_0".to_owned());
        let disabled = (format!("integration_{}", 1), "tool_number_1".to_owned());
        assert_eq!(verdict(&snapshots, &auto.0, &auto.1), Some(Verdict::Allow));
        assert_eq!(
            verdict(&snapshots, &disabled.0, &disabled.1),
            Some(Verdict::Deny)
        );
        for (label, (integration, name)) in [
            ("auto", auto),
            ("disabled", disabled),
            (
                "unknown",
                ("integration_0".to_owned(), "no_such_tool".to_owned()),
            ),
        ] {
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| verdict(&snapshots, black_box(&integration), black_box(&name)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
