//! Health, reflection, restarts and the keys CLI.

use crate::helpers::*;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use toolgate::proto::v1 as pb;

#[tokio::test]
async fn health_is_serving_for_the_server_and_the_policy_service() {
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "toolgate.v1.PolicyService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_policy_service() {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "toolgate.v1.PolicyService")
    );
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "toolgate.v1.PolicyService")
    );
}

#[tokio::test]
async fn a_restart_on_the_same_file_keeps_policies_revisions_approvals_and_keys() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    app.set_one("get_user", Policy::Disabled, None).await;
    let pending = app
        .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, "r1"))
        .await
        .approval
        .unwrap();
    app.submit(&pending.id, pb::ApproverRole::Technician, "tech", true)
        .await
        .unwrap();
    let before = app.list_tools(&app.admin, true).await.unwrap();

    let app = app.restart().await;
    let after = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(after, before);
    let d = app.decide_ok(ask("get_user", "{}", "r9")).await;
    assert_eq!(verdict(&d), (Verdict::Deny, DecisionCode::ToolDisabled));
    let go = app
        .decide_ok(with_approval(
            ask("reset_password", r#"{"user":"bob"}"#, "r1"),
            &pending.id,
        ))
        .await;
    assert_eq!(
        verdict(&go),
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
}

#[tokio::test]
async fn keys_create_prints_the_key_alone_on_stdout_and_list_never_shows_it() {
    let db = fresh_database().await;
    let url = db.url.clone();
    let bin = env!("CARGO_BIN_EXE_toolgate");
    let out = std::process::Command::new(bin)
        .args([
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "admin",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout:?}");
    assert!(lines[0].starts_with("tg_k"));
    let list = std::process::Command::new(bin)
        .args(["keys", "list", "--database-url", &url])
        .output()
        .unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.contains("acme") && listed.contains("admin"),
        "{listed}"
    );
    assert!(!listed.contains(lines[0]));
    let bad = std::process::Command::new(bin)
        .args([
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "root",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--role"));
}

#[test]
fn bad_configuration_exits_non_zero_with_one_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--approval-ttl", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("approval_ttl"), "{err}");
}
