//! `/metrics` and request ids: what operators see of the calls made.

use crate::helpers::*;
use pb::ApproverRole::Technician;
use tonic::Code;
use toolgate::proto::v1 as pb;

const ARGS: &str = r#"{"user":"bob","group":"Helpdesk"}"#;

fn decisions(verdict: &str, code: &str) -> String {
    format!("toolgate_decisions_total{{verdict=\"{verdict}\",code=\"{code}\"}}")
}

#[tokio::test]
async fn each_counter_moves_by_exactly_the_calls_made() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    let before = app.scrape().await;

    for i in 0..3 {
        let r = app.decide_ok(ask("get_user", "{}", &format!("a{i}"))).await;
        assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
    }
    for i in 0..2 {
        let r = app
            .decide_ok(ask("no_such_tool", "{}", &format!("u{i}")))
            .await;
        assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::UnknownTool));
    }
    assert_status(
        app.decide(&app.agent, ask("get_user", "[1", "bad")).await,
        Code::InvalidArgument,
        "arguments_json",
    );
    assert_status(
        app.decide("tg_k_not_a_key", ask("get_user", "{}", "anon"))
            .await,
        Code::Unauthenticated,
        "API key",
    );
    let pending = app.decide_ok(ask("add_user_to_group", ARGS, "p1")).await;
    assert_eq!(
        verdict(&pending),
        (Verdict::PendingApproval, DecisionCode::ApprovalRequired)
    );
    let approval = pending.approval.expect("approval");
    app.submit(&approval.id, Technician, "tech", true)
        .await
        .expect("approve");
    let go = app
        .decide_ok(with_approval(
            ask("add_user_to_group", ARGS, "p1"),
            &approval.id,
        ))
        .await;
    assert_eq!(
        verdict(&go),
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut s = app
            .client
            .clone()
            .watch_config(with_key(
                &app.agent,
                pb::WatchConfigRequest {
                    since_revision: None,
                    integration_id: String::new(),
                },
            ))
            .await
            .expect("watch")
            .into_inner();
        s.message().await.expect("snapshot").expect("open");
        streams.push(s);
    }

    let after = app.scrape().await;
    let moved = |series: &str| after.delta(&before, series);
    assert_eq!(moved(&decisions("ALLOW", "POLICY_AUTO")), 3.0);
    assert_eq!(moved(&decisions("DENY", "UNKNOWN_TOOL")), 2.0);
    assert_eq!(
        moved(&decisions("PENDING_APPROVAL", "APPROVAL_REQUIRED")),
        1.0
    );
    assert_eq!(moved(&decisions("ALLOW", "APPROVAL_GRANTED")), 1.0);
    assert_eq!(moved(&decisions("DENY", "TOOL_DISABLED")), 0.0);
    assert_eq!(
        moved("toolgate_decide_errors_total{grpc_code=\"INVALID_ARGUMENT\"}"),
        1.0
    );
    assert_eq!(
        moved("toolgate_decide_errors_total{grpc_code=\"UNAUTHENTICATED\"}"),
        1.0
    );
    // Every Decide, answered or refused, is timed.
    assert_eq!(moved("toolgate_decide_duration_seconds_count"), 9.0);
    assert_eq!(
        moved("toolgate_decide_duration_seconds_bucket{le=\"+Inf\"}"),
        9.0
    );
    for (event, n) in [
        ("created", 1.0),
        ("step", 0.0),
        ("approved", 1.0),
        ("denied", 0.0),
        ("consumed", 1.0),
    ] {
        assert_eq!(
            moved(&format!(
                "toolgate_approval_events_total{{event=\"{event}\"}}"
            )),
            n,
            "{event}"
        );
    }
    assert_eq!(moved("toolgate_watch_streams{watch=\"config\"}"), 2.0);
    assert_eq!(
        after.get("toolgate_watch_streams{watch=\"approvals\"}"),
        0.0
    );
    assert_eq!(after.get("toolgate_shed_total{kind=\"request\"}"), 0.0);
    assert_eq!(after.get("toolgate_tools"), 5.0);
    assert_eq!(after.get("toolgate_tenants"), 1.0);
    let revision = app.list_tools(&app.admin, true).await.unwrap().revision;
    assert_eq!(after.get("toolgate_revision_sum"), revision as f64);
    assert_eq!(after.get("toolgate_serving"), 1.0);
    let backend = match crate::BACKEND {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(
        after.get(&format!(
            "toolgate_build_info{{version=\"{}\",backend=\"{backend}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(
        after.get("toolgate_store_errors_total{op=\"insert_approval\",kind=\"unavailable\"}"),
        0.0
    );
    // No tenant, tool, person or argument is ever a label.
    for secret in ["acme", "get_user", "alice", "bob", "Helpdesk", "tech"] {
        assert!(!after.text.contains(secret), "{secret} in the metrics");
    }
}

#[tokio::test]
async fn a_request_id_is_kept_from_the_caller_or_made_and_sent_back() {
    let app = spawn_app().await;
    let mut req = with_key(&app.agent, ask("get_user", "{}", "r1"));
    req.metadata_mut()
        .insert("x-request-id", "4bf92f35-77b3".parse().unwrap());
    let answer = app.client.clone().decide(req).await.expect("decide");
    assert_eq!(
        answer.metadata().get("x-request-id").unwrap(),
        "4bf92f35-77b3"
    );
    let made = |r: &tonic::metadata::MetadataMap| {
        r.get("x-request-id")
            .expect("a request id")
            .to_str()
            .unwrap()
            .to_owned()
    };
    let a = app
        .client
        .clone()
        .decide(with_key(&app.agent, ask("get_user", "{}", "r2")))
        .await
        .expect("decide");
    let b = app
        .client
        .clone()
        .decide(with_key(&app.agent, ask("get_user", "{}", "r3")))
        .await
        .expect("decide");
    assert_ne!(made(a.metadata()), made(b.metadata()));
    // Errors carry it too, so a failed call can be found in the logs.
    let refused = app
        .client
        .clone()
        .decide(with_key("tg_k_nope", ask("get_user", "{}", "r4")))
        .await
        .unwrap_err();
    assert!(refused.metadata().get("x-request-id").is_some());
}

#[tokio::test]
async fn metrics_answer_404_off_the_path() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let mut conn = tokio::net::TcpStream::connect(app.metrics_addr)
        .await
        .unwrap();
    conn.write_all(b"GET /secrets HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
}
