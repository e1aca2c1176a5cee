//! Decide for every policy and decision code, and its input checks.

use crate::helpers::*;
use tonic::Code;
use toolgate::proto::v1 as pb;

#[tokio::test]
async fn auto_tool_is_allowed_at_once() {
    let app = spawn_app().await;
    let connected = app.connect_sample().await;
    let r = app
        .decide_ok(ask("get_user", r#"{"user":"bob"}"#, "r1"))
        .await;
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
    assert_eq!(r.revision, connected.revision);
    assert!(r.approval.is_none());
}

#[tokio::test]
async fn disabled_tool_is_denied() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("get_user", Policy::Disabled, None).await;
    let r = app.decide_ok(ask("get_user", "{}", "r1")).await;
    assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::ToolDisabled));
}

#[tokio::test]
async fn unknown_tool_and_unknown_integration_fail_closed() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let r = app.decide_ok(ask("format_hard_drive", "{}", "r1")).await;
    assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::UnknownTool));
    let mut req = ask("get_user", "{}", "r2");
    req.integration_id = "jira".into();
    let r = app.decide_ok(req).await;
    assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::UnknownTool));
}

#[tokio::test]
async fn approval_needed_tool_returns_a_bound_approval_request() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let r = app
        .decide_ok(ask(
            "add_user_to_group",
            r#"{ "group": "Helpdesk", "user": "bob" }"#,
            "r1",
        ))
        .await;
    assert_eq!(
        verdict(&r),
        (Verdict::PendingApproval, DecisionCode::ApprovalRequired)
    );
    let a = r.approval.expect("approval");
    assert_eq!(a.state, pb::ApprovalState::Pending as i32);
    assert_eq!(a.tool_name, "add_user_to_group");
    assert_eq!(a.requester_id, "alice");
    assert_eq!(a.arguments_json, r#"{"group":"Helpdesk","user":"bob"}"#);
    assert_eq!(a.arguments_sha256.len(), 64);
    assert_eq!(a.required_roles, vec![pb::ApproverRole::Technician as i32]);
    assert!(a.expires_at.unwrap().seconds > a.created_at.unwrap().seconds);
}

#[tokio::test]
async fn the_same_request_id_never_creates_a_second_approval() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let first = app
        .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, "r1"))
        .await;
    // Same call, keys in another order: same request.
    let again = app
        .decide_ok(ask("reset_password", r#"{ "user" : "bob" }"#, "r1"))
        .await;
    assert_eq!(
        first.approval.as_ref().unwrap().id,
        again.approval.as_ref().unwrap().id
    );
    assert_eq!(verdict(&again).0, Verdict::PendingApproval);
    // The same request id for a different call is refused, not merged.
    let other = app
        .decide_ok(ask("reset_password", r#"{"user":"carol"}"#, "r1"))
        .await;
    assert_eq!(
        verdict(&other),
        (Verdict::Deny, DecisionCode::ApprovalMismatch)
    );
    let listed = app
        .list_approvals(&app.admin, pb::ApprovalState::Unspecified, 0, "")
        .await
        .unwrap();
    assert_eq!(listed.approvals.len(), 1);
}

#[tokio::test]
async fn bad_arguments_are_invalid_and_create_nothing() {
    let app = spawn_app_with(|c| c.max_arguments_bytes = 64).await;
    app.connect_sample().await;
    for (args, mentions) in [
        ("[1,2]", "JSON object"),
        ("{not json", "not valid JSON"),
        (
            r#"{"group":"Helpdesk","group":"Domain Admins"}"#,
            "duplicate object key",
        ),
        (r#"{"id":9007199254740993}"#, "number 9007199254740993"),
        (
            r#"{"amount":18446744073709551617}"#,
            "number 18446744073709551617",
        ),
        ("\u{3000}", "not valid JSON"),
        (&format!(r#"{{"pad":"{}"}}"#, "x".repeat(80)), "at most 64"),
    ] {
        let r = app
            .decide(&app.agent, ask("add_user_to_group", args, "r1"))
            .await;
        assert_status(r, Code::InvalidArgument, "arguments_json");
        let r = app
            .decide(&app.agent, ask("add_user_to_group", args, "r1"))
            .await;
        assert_status(r, Code::InvalidArgument, mentions);
    }
    // Even an auto tool gets its arguments checked.
    assert_status(
        app.decide(&app.agent, ask("get_user", "7", "r1")).await,
        Code::InvalidArgument,
        "arguments_json",
    );
    let listed = app
        .list_approvals(&app.admin, pb::ApprovalState::Unspecified, 0, "")
        .await
        .unwrap();
    assert!(listed.approvals.is_empty());
}

#[tokio::test]
async fn malformed_fields_name_the_field() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let mut req = ask("get_user", "{}", "r1");
    req.tool_name = String::new();
    assert_status(
        app.decide(&app.agent, req).await,
        Code::InvalidArgument,
        "tool_name: is required",
    );
    let mut req = ask("get_user", "{}", "r1");
    req.integration_id = "en tra".into();
    assert_status(
        app.decide(&app.agent, req).await,
        Code::InvalidArgument,
        "integration_id",
    );
    let mut req = ask("reset_password", "{}", "r1");
    req.requester_id = String::new();
    assert_status(
        app.decide(&app.agent, req).await,
        Code::InvalidArgument,
        "requester_id",
    );
    let req = ask("reset_password", "{}", "");
    assert_status(
        app.decide(&app.agent, req).await,
        Code::InvalidArgument,
        "request_id",
    );
    let req = with_approval(ask("reset_password", "{}", "r1"), "apr_nope");
    assert_status(
        app.decide(&app.agent, req).await,
        Code::NotFound,
        "approval_id",
    );
}

#[tokio::test]
async fn min_revision_ahead_of_the_server_is_unavailable_not_stale() {
    let app = spawn_app_with(|c| c.min_revision_wait = SHORT).await;
    let connected = app.connect_sample().await;
    let mut req = ask("get_user", "{}", "r1");
    req.min_revision = Some(connected.revision);
    assert_eq!(verdict(&app.decide_ok(req.clone()).await).0, Verdict::Allow);
    req.min_revision = Some(connected.revision + 1);
    assert_status(
        app.decide(&app.agent, req).await,
        Code::Unavailable,
        "min_revision",
    );
}
