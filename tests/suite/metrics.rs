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

/// The `grpc_server_*` series of one PolicyService method, go-grpc-prometheus style.
fn rpc(kind: &str, service: &str, method: &str) -> String {
    format!("grpc_type=\"{kind}\",grpc_service=\"{service}\",grpc_method=\"{method}\"")
}

fn handled(labels: &str, code: &str) -> String {
    format!("grpc_server_handled_total{{{labels},grpc_code=\"{code}\"}}")
}

async fn channel(app: &TestApp) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// Calls `path` with an empty message, as a client that knows no such method might.
async fn call_path(app: &TestApp, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel(app).await);
    grpc.ready().await.expect("ready");
    grpc.unary::<(), (), _>(
        with_key(&app.agent, ()),
        http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err("no such method")
}

#[tokio::test]
async fn grpc_server_metrics_count_every_call_by_method_and_code() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app().await;
    app.connect_sample().await;
    let before = app.scrape().await;

    let r = app.decide_ok(ask("get_user", "{}", "g1")).await;
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
    assert_status(
        app.decide("tg_k_not_a_key", ask("get_user", "{}", "g2"))
            .await,
        Code::Unauthenticated,
        "API key",
    );
    HealthClient::new(channel(&app).await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health");
    for path in [
        "/evil.Service/Steal",
        "/toolgate.v1.PolicyService/Steal",
        "/toolgate.v1.PolicyService/Decide/x",
    ] {
        assert_eq!(call_path(&app, path).await.code(), Code::Unimplemented);
    }
    // Recorded before the last frame of each answer is sent: no waiting needed.
    let after = app.scrape().await;
    let moved = |series: &str| after.delta(&before, series);

    let decide = rpc("unary", "toolgate.v1.PolicyService", "Decide");
    assert_eq!(
        moved(&format!("grpc_server_started_total{{{decide}}}")),
        2.0
    );
    assert_eq!(moved(&handled(&decide, "OK")), 1.0);
    assert_eq!(moved(&handled(&decide, "Unauthenticated")), 1.0);
    assert_eq!(moved(&handled(&decide, "Internal")), 0.0);
    assert_eq!(
        moved(&format!("grpc_server_handling_seconds_count{{{decide}}}")),
        2.0
    );
    assert_eq!(
        moved(&format!(
            "grpc_server_handling_seconds_bucket{{{decide},le=\"+Inf\"}}"
        )),
        2.0
    );
    let check = rpc("unary", "grpc.health.v1.Health", "Check");
    assert_eq!(moved(&handled(&check, "OK")), 1.0);
    let unknown = rpc("unknown", "unknown", "unknown");
    assert_eq!(
        moved(&format!("grpc_server_started_total{{{unknown}}}")),
        3.0
    );
    assert_eq!(moved(&handled(&unknown, "Unimplemented")), 3.0);
    // A caller cannot make series: only the methods the server has are labels.
    for made_up in ["evil", "Steal", "Decide/x"] {
        assert!(!after.text.contains(made_up), "{made_up} in the metrics");
    }
    for secret in [app.agent.as_str(), "tg_k_not_a_key"] {
        assert!(!after.text.contains(secret), "a key in the metrics");
    }
    #[cfg(target_os = "linux")]
    {
        assert!(after.get("process_resident_memory_bytes") > 0.0);
        assert!(after.get("process_open_fds") > 0.0);
        assert!(after.get("process_cpu_seconds_total") >= 0.0);
    }
}

#[tokio::test]
async fn a_stream_the_client_drops_is_counted_canceled() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let watch = rpc("server_stream", "toolgate.v1.PolicyService", "WatchConfig");
    let before = app.scrape().await;
    let mut stream = app
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
    stream.message().await.expect("snapshot").expect("open");
    let open = app.scrape().await;
    assert_eq!(
        open.delta(&before, &format!("grpc_server_started_total{{{watch}}}")),
        1.0
    );
    assert_eq!(open.delta(&before, &handled(&watch, "Canceled")), 0.0);
    drop(stream);
    // The server learns of the reset on its own time: wait for it, within a bound.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = app.scrape().await;
        if now.delta(&before, &handled(&watch, "Canceled")) == 1.0 {
            assert_eq!(
                now.delta(
                    &before,
                    &format!("grpc_server_handling_seconds_count{{{watch}}}")
                ),
                1.0
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped stream was never counted:\n{}",
            now.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
