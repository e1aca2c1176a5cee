//! Credentials, roles and tenant isolation.

use crate::helpers::*;
use std::time::Duration;
use tonic::{Code, Request};
use toolgate::policy::Role;
use toolgate::proto::v1 as pb;

#[tokio::test]
async fn calls_without_a_known_live_key_are_unauthenticated() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let mut client = app.client.clone();
    let r = client
        .decide(Request::new(ask("get_user", "{}", "r1")))
        .await;
    assert_status(r, Code::Unauthenticated, "authorization");
    let r = client
        .decide(with_key("tg_kdeadbeef_0000", ask("get_user", "{}", "r1")))
        .await;
    assert_status(r, Code::Unauthenticated, "unknown or revoked");
    let mut basic = Request::new(ask("get_user", "{}", "r1"));
    basic
        .metadata_mut()
        .insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    assert_status(client.decide(basic).await, Code::Unauthenticated, "Bearer");
}

#[tokio::test]
async fn a_key_revoked_with_the_cli_is_refused_within_the_key_refresh_interval() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let key = app.mint("acme", Role::Agent).await;
    let r = app.decide(&key, ask("get_user", "{}", "r1")).await.unwrap();
    assert_eq!(verdict(&r).0, Verdict::Allow);
    // The key's own watch stream ends when the server reloads its keys and finds it gone:
    // the event the refusal below waits on.
    let mut stream = app
        .client
        .clone()
        .watch_config(with_key(&key, pb::WatchConfigRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    stream.message().await.expect("snapshot").expect("open");
    let key_id = key.split('_').nth(1).unwrap().to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["keys", "revoke", &key_id, "--database-url"])
        .arg(app.config.database_url.expose())
        .output()
        .expect("run toolgate keys revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The running server learns of it from its key cache reload (100 ms in tests).
    let ended = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the reload comes within the bound");
    assert_status(ended, Code::Unauthenticated, "revoked");
    let refused = app.decide(&key, ask("get_user", "{}", "r2")).await;
    assert_status(refused, Code::Unauthenticated, "revoked");
}

#[tokio::test]
async fn each_role_calls_only_what_the_contract_allows() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let mut c = app.client.clone();
    // Agents may not administer or approve.
    denied(
        c.set_policy(with_key(&app.agent, pb::SetPolicyRequest::default()))
            .await,
    );
    denied(
        c.connect_integration(with_key(
            &app.agent,
            pb::ConnectIntegrationRequest::default(),
        ))
        .await,
    );
    denied(
        c.upsert_people(with_key(&app.agent, pb::UpsertPeopleRequest::default()))
            .await,
    );
    denied(
        c.submit_approval(with_key(&app.agent, pb::SubmitApprovalRequest::default()))
            .await,
    );
    // Approvers may not decide or administer.
    denied(
        c.decide(with_key(&app.approver, ask("get_user", "{}", "r1")))
            .await,
    );
    denied(
        c.set_policy(with_key(&app.approver, pb::SetPolicyRequest::default()))
            .await,
    );
    denied(
        c.list_tools(with_key(&app.approver, pb::ListToolsRequest::default()))
            .await,
    );
    // Admins may decide too.
    let r = app
        .decide(&app.admin, ask("get_user", "{}", "r1"))
        .await
        .unwrap();
    assert_eq!(verdict(&r).0, Verdict::Allow);
}

#[tokio::test]
async fn an_agent_sees_only_its_own_approvals() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let other_agent = app.mint("acme", Role::Agent).await;
    let a = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .unwrap();
    let mut c = app.client.clone();
    let own = c
        .get_approval(with_key(
            &app.agent,
            pb::GetApprovalRequest {
                approval_id: a.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(own.into_inner().approval.unwrap().id, a.id);
    let r = c
        .get_approval(with_key(
            &other_agent,
            pb::GetApprovalRequest {
                approval_id: a.id.clone(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "approval_id");
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_and_its_data_never_shows() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    let a = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .unwrap();
    let globex_admin = app.mint("globex", Role::Admin).await;
    let globex_agent = app.mint("globex", Role::Agent).await;
    let globex_approver = app.mint("globex", Role::Approver).await;
    let mut c = app.client.clone();
    // Tools: none of acme's.
    let tools = app.list_tools(&globex_admin, true).await.unwrap();
    assert!(tools.tools.is_empty());
    assert_eq!(tools.revision, 0);
    let d = app
        .decide(&globex_agent, ask("get_user", "{}", "r1"))
        .await
        .unwrap();
    assert_eq!(verdict(&d), (Verdict::Deny, DecisionCode::UnknownTool));
    // Approvals: not found, not listed, not approvable, not usable.
    let r = c
        .get_approval(with_key(
            &globex_admin,
            pb::GetApprovalRequest {
                approval_id: a.id.clone(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "approval_id");
    let listed = app
        .list_approvals(&globex_approver, pb::ApprovalState::Unspecified, 0, "")
        .await
        .unwrap();
    assert!(listed.approvals.is_empty());
    let r = c
        .submit_approval(with_key(
            &globex_approver,
            pb::SubmitApprovalRequest {
                approval_id: a.id.clone(),
                role: pb::ApproverRole::Technician as i32,
                approver_id: "tech".into(),
                approve: true,
                comment: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "approval_id");
    // Globex connecting the same integration id touches only its own tools.
    app.connect(&globex_admin, "entra", &[("reset_password", None)])
        .await;
    let r = c
        .set_policy(with_key(
            &globex_admin,
            pb::SetPolicyRequest {
                changes: vec![change("entra", "get_user", Policy::Disabled, None)],
                expected_revision: None,
                comment: String::new(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "get_user");
    let acme = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(acme.tools.len(), 5);
    assert_eq!(acme.revision, 1);
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    assert_status(r, Code::PermissionDenied, "may not call");
}
