//! Every approval path, through Decide and SubmitApproval.

use crate::helpers::*;
use pb::ApproverRole::{Manager, Technician};
use tonic::Code;
use toolgate::proto::v1 as pb;

const ARGS: &str = r#"{"user":"bob","group":"Helpdesk"}"#;

async fn pending(app: &TestApp, tool: &str, request_id: &str) -> pb::Approval {
    let r = app.decide_ok(ask(tool, ARGS, request_id)).await;
    assert_eq!(
        verdict(&r),
        (Verdict::PendingApproval, DecisionCode::ApprovalRequired)
    );
    r.approval.expect("approval")
}

async fn ready_app() -> TestApp {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    app
}

#[tokio::test]
async fn technician_approval_allows_the_exact_call_once() {
    let app = ready_app().await;
    let a = pending(&app, "add_user_to_group", "r1").await;
    let still = app
        .decide_ok(with_approval(ask("add_user_to_group", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(
        verdict(&still),
        (Verdict::PendingApproval, DecisionCode::ApprovalPending)
    );
    let approved = app.submit(&a.id, Technician, "tech", true).await.unwrap();
    assert_eq!(approved.state, pb::ApprovalState::Approved as i32);
    assert_eq!(approved.steps.len(), 1);
    let go = app
        .decide_ok(with_approval(ask("add_user_to_group", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(
        verdict(&go),
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
    let consumed = go.approval.unwrap();
    assert_eq!(consumed.state, pb::ApprovalState::Consumed as i32);
    // One ALLOW, ever: a retry of the same request is refused too, and the approval says
    // that this request consumed it, and when (so a backend whose ALLOW was lost can tell).
    let retry = app
        .decide_ok(with_approval(ask("add_user_to_group", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(
        verdict(&retry),
        (Verdict::Deny, DecisionCode::ApprovalConsumed)
    );
    let shown = retry.approval.expect("the consumed approval");
    assert_eq!(shown.consumed_by_request_id, "r1");
    assert!(shown.consumed_at.is_some(), "{shown:?}");
    assert_eq!(
        shown.consumed_at, consumed.consumed_at,
        "stored as answered"
    );
    let replay = app
        .decide_ok(with_approval(ask("add_user_to_group", ARGS, "r2"), &a.id))
        .await;
    assert_eq!(
        verdict(&replay),
        (Verdict::Deny, DecisionCode::ApprovalConsumed)
    );
}

#[tokio::test]
async fn technician_and_manager_must_both_approve() {
    let app = ready_app().await;
    app.set_one("add_user_to_group", Policy::ApprovalNeeded, Some(true))
        .await;
    let a = pending(&app, "add_user_to_group", "r1").await;
    assert_eq!(a.required_roles, vec![Technician as i32, Manager as i32]);
    app.submit(&a.id, Technician, "tech", true).await.unwrap();
    let r = app
        .decide_ok(with_approval(ask("add_user_to_group", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(
        verdict(&r),
        (Verdict::PendingApproval, DecisionCode::ApprovalPending)
    );
    let done = app.submit(&a.id, Manager, "mgr", true).await.unwrap();
    assert_eq!(done.state, pb::ApprovalState::Approved as i32);
    let r = app
        .decide_ok(with_approval(ask("add_user_to_group", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::ApprovalGranted));
}

#[tokio::test]
async fn a_no_denies() {
    let app = ready_app().await;
    let a = pending(&app, "reset_password", "r1").await;
    let denied = app.submit(&a.id, Technician, "tech", false).await.unwrap();
    assert_eq!(denied.state, pb::ApprovalState::Denied as i32);
    let r = app
        .decide_ok(with_approval(ask("reset_password", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::ApprovalDenied));
    // No more decisions on a denied approval.
    assert_status(
        app.submit(&a.id, Technician, "tech2", true).await,
        Code::FailedPrecondition,
        "denied",
    );
}

#[tokio::test]
async fn approvals_expire() {
    let app = spawn_app_with(|c| c.approval_ttl = std::time::Duration::from_millis(100)).await;
    app.connect_sample().await;
    app.sample_people().await;
    let a = pending(&app, "reset_password", "r1").await;
    app.submit(&a.id, Technician, "tech", true).await.unwrap();
    wait_until_past(a.expires_at.as_ref().unwrap()).await;
    let r = app
        .decide_ok(with_approval(ask("reset_password", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::ApprovalExpired));
    assert_eq!(r.approval.unwrap().state, pb::ApprovalState::Expired as i32);
    let b = pending(&app, "reset_password", "r2").await;
    wait_until_past(b.expires_at.as_ref().unwrap()).await;
    assert_status(
        app.submit(&b.id, Technician, "tech", true).await,
        Code::FailedPrecondition,
        "expired",
    );
}

#[tokio::test]
async fn a_change_of_any_bound_field_is_a_mismatch() {
    let app = ready_app().await;
    let a = pending(&app, "add_user_to_group", "r1").await;
    app.submit(&a.id, Technician, "tech", true).await.unwrap();
    let base = with_approval(ask("add_user_to_group", ARGS, "r1"), &a.id);
    let mut other_args = base.clone();
    other_args.arguments_json = r#"{"user":"bob","group":"Domain Admins"}"#.into();
    let mut other_tool = base.clone();
    other_tool.tool_name = "reset_password".into();
    let mut other_requester = base.clone();
    other_requester.requester_id = "bob".into();
    app.connect(&app.admin, "entra2", &[("add_user_to_group", None)])
        .await;
    let mut other_integration = base.clone();
    other_integration.integration_id = "entra2".into();
    for req in [other_args, other_tool, other_requester, other_integration] {
        let r = app.decide_ok(req).await;
        assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::ApprovalMismatch));
    }
    // The approval is still there, unused, for the call it was granted for.
    let r = app.decide_ok(base).await;
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::ApprovalGranted));
}

#[tokio::test]
async fn nobody_approves_their_own_request() {
    let app = ready_app().await;
    // alice is the requester; make her a technician too.
    app.people(vec![person("alice", "mgr", true)]).await;
    let a = pending(&app, "reset_password", "r1").await;
    assert_status(
        app.submit(&a.id, Technician, "alice", true).await,
        Code::PermissionDenied,
        "own request",
    );
}

#[tokio::test]
async fn approvers_are_checked_against_the_directory() {
    let app = ready_app().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(true))
        .await;
    let a = pending(&app, "reset_password", "r1").await;
    assert_status(
        app.submit(&a.id, Technician, "bob", true).await,
        Code::PermissionDenied,
        "not a technician",
    );
    assert_status(
        app.submit(&a.id, Technician, "ghost", true).await,
        Code::PermissionDenied,
        "not a technician",
    );
    assert_status(
        app.submit(&a.id, Manager, "tech", true).await,
        Code::PermissionDenied,
        "manager of record",
    );
    // Nothing was recorded by the refused steps.
    let got = app
        .client
        .clone()
        .get_approval(with_key(
            &app.approver,
            pb::GetApprovalRequest {
                approval_id: a.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert!(got.steps.is_empty());
}

#[tokio::test]
async fn one_person_cannot_fill_both_roles() {
    let app = ready_app().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(true))
        .await;
    let a = pending(&app, "reset_password", "r1").await;
    // mgr is alice's manager and also a technician.
    app.submit(&a.id, Technician, "mgr", true).await.unwrap();
    assert_status(
        app.submit(&a.id, Manager, "mgr", true).await,
        Code::PermissionDenied,
        "both",
    );
}

#[tokio::test]
async fn a_requester_without_a_manager_cannot_get_manager_approval() {
    let app = ready_app().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(true))
        .await;
    for requester in ["bob", "nobody-in-directory"] {
        let mut req = ask("reset_password", ARGS, &format!("r-{requester}"));
        req.requester_id = requester.into();
        let r = app.decide_ok(req).await;
        assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::ManagerUnknown));
        assert!(r.approval.is_none());
    }
}

#[tokio::test]
async fn sixteen_racing_consumers_get_exactly_one_allow() {
    let app = ready_app().await;
    let a = pending(&app, "reset_password", "r0").await;
    app.submit(&a.id, Technician, "tech", true).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let app_client = app.client.clone();
        let agent = app.agent.clone();
        let req = with_approval(ask("reset_password", ARGS, &format!("race-{i}")), &a.id);
        tasks.push(tokio::spawn(async move {
            let mut c = app_client;
            c.decide(with_key(&agent, req))
                .await
                .expect("decide")
                .into_inner()
        }));
    }
    let mut allows = 0;
    let mut consumed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match verdict(&r) {
            (Verdict::Allow, DecisionCode::ApprovalGranted) => allows += 1,
            (Verdict::Deny, DecisionCode::ApprovalConsumed) => consumed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((allows, consumed), (1, 15));
}

#[tokio::test]
async fn the_policy_at_the_time_of_the_call_rules() {
    let app = ready_app().await;
    let a = pending(&app, "reset_password", "r1").await;
    app.submit(&a.id, Technician, "tech", true).await.unwrap();
    // Manager approval switched on after the technician said yes: not enough any more.
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(true))
        .await;
    let r = app
        .decide_ok(with_approval(ask("reset_password", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(
        verdict(&r),
        (Verdict::PendingApproval, DecisionCode::ApprovalPending)
    );
    assert_eq!(
        r.approval.as_ref().unwrap().required_roles,
        vec![Technician as i32, Manager as i32]
    );
    app.submit(&a.id, Manager, "mgr", true).await.unwrap();
    // Disabled after it was approved: denied, and the approval is not used up.
    app.set_one("reset_password", Policy::Disabled, None).await;
    let r = app
        .decide_ok(with_approval(ask("reset_password", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(verdict(&r), (Verdict::Deny, DecisionCode::ToolDisabled));
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(true))
        .await;
    let r = app
        .decide_ok(with_approval(ask("reset_password", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::ApprovalGranted));
}

#[tokio::test]
async fn submit_approval_checks_its_fields_and_the_role_asked_for() {
    let app = ready_app().await;
    let a = pending(&app, "reset_password", "r1").await;
    assert_status(
        app.submit(&a.id, pb::ApproverRole::Unspecified, "tech", true)
            .await,
        Code::InvalidArgument,
        "role",
    );
    assert_status(
        app.submit(&a.id, Technician, "", true).await,
        Code::InvalidArgument,
        "approver_id",
    );
    assert_status(
        app.submit("apr_nope", Technician, "tech", true).await,
        Code::NotFound,
        "approval_id",
    );
    assert_status(
        app.submit(&a.id, Manager, "mgr", true).await,
        Code::FailedPrecondition,
        "does not need",
    );
    app.submit(&a.id, Technician, "tech", true).await.unwrap();
    assert_status(
        app.submit(&a.id, Technician, "tech2", true).await,
        Code::FailedPrecondition,
        "already made",
    );
}

#[tokio::test]
async fn list_approvals_pages_newest_first_and_filters_by_state() {
    let app = ready_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        // Five different calls (the same call again would return its pending approval).
        let r = app
            .decide_ok(ask(
                "reset_password",
                &format!(r#"{{"n":{i}}}"#),
                &format!("r{i}"),
            ))
            .await;
        ids.push(r.approval.expect("approval").id);
    }
    app.submit(&ids[0], Technician, "tech", false)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .list_approvals(&app.approver, pb::ApprovalState::Unspecified, 2, &token)
            .await
            .unwrap();
        assert!(page.approvals.len() <= 2);
        seen.extend(page.approvals.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let denied = app
        .list_approvals(&app.approver, pb::ApprovalState::Denied, 0, "")
        .await
        .unwrap();
    assert_eq!(denied.approvals.len(), 1);
    assert_eq!(denied.approvals[0].id, ids[0]);
    let bad = app
        .list_approvals(&app.approver, pb::ApprovalState::Unspecified, 2, "garbage")
        .await;
    assert_status(bad, Code::InvalidArgument, "page_token");
}

/// Many approvals created, approved and consumed at the same moment (on SQLite they share
/// batched commits): each is created once per request id, approved once, consumed once.
#[tokio::test]
async fn approvals_asked_at_once_are_each_created_approved_and_consumed_once() {
    use futures_util::future::join_all;
    const N: usize = 40;
    let app = ready_app().await;
    // N request ids, each for a call of its own (the same call under another request id
    // would return the pending approval), the first ten asked twice at once: a repeat is
    // the same approval.
    let args = |i: usize| format!(r#"{{"user":"u{i}"}}"#);
    let requests: Vec<usize> = (0..N).chain(0..10).collect();
    // Whichever of two asks with one request id comes second presents the approval the
    // first made, so either answer code is right; the approval is what must match.
    let app = &app;
    let created = join_all(requests.iter().map(|&i| async move {
        let request = format!("burst-{i}");
        let answer = app
            .decide_ok(ask("reset_password", &args(i), &request))
            .await;
        assert!(
            matches!(
                verdict(&answer),
                (
                    Verdict::PendingApproval,
                    DecisionCode::ApprovalRequired | DecisionCode::ApprovalPending
                )
            ),
            "{answer:?}"
        );
        answer.approval.expect("approval")
    }))
    .await;
    for i in 0..10 {
        assert_eq!(
            created[i].id,
            created[N + i].id,
            "request id burst-{i} made two approvals"
        );
    }
    let ids: Vec<String> = created[..N].iter().map(|a| a.id.clone()).collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), N);

    let approved = join_all(
        ids.iter()
            .map(|id| app.submit(id, Technician, "tech", true)),
    )
    .await;
    for a in approved {
        assert_eq!(a.unwrap().state, pb::ApprovalState::Approved as i32);
    }

    // Each approval presented twice at once by two different requests: one ALLOW each.
    let presented = join_all(ids.iter().enumerate().flat_map(|(i, id)| {
        [format!("burst-{i}"), format!("other-{i}")].map(|request| {
            app.decide_ok(with_approval(ask("reset_password", &args(i), &request), id))
        })
    }))
    .await;
    for (i, pair) in presented.chunks(2).enumerate() {
        let allows = pair
            .iter()
            .filter(|r| verdict(r) == (Verdict::Allow, DecisionCode::ApprovalGranted))
            .count();
        assert_eq!(allows, 1, "approval {i} was used {allows} times");
    }
    let consumed = app
        .list_approvals(&app.approver, pb::ApprovalState::Consumed, 100, "")
        .await
        .unwrap();
    assert_eq!(consumed.approvals.len(), N);
}

async fn cancel(
    app: &TestApp,
    key: &str,
    id: &str,
    reason: &str,
) -> Result<pb::Approval, tonic::Status> {
    app.client
        .clone()
        .cancel_approval(with_key(
            key,
            pb::CancelApprovalRequest {
                approval_id: id.into(),
                reason: reason.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().approval.expect("approval"))
}

/// The agent that asked (or an admin) withdraws a pending approval; nobody else can, and
/// a cancelled approval allows nothing.
#[tokio::test]
async fn the_agent_that_asked_or_an_admin_cancels_a_pending_approval() {
    let app = ready_app().await;
    let a = pending(&app, "add_user_to_group", "r1").await;
    let other_agent = app.mint("acme", toolgate::policy::Role::Agent).await;
    let theirs = cancel(&app, &other_agent, &a.id, "").await;
    assert_status(theirs, Code::NotFound, "approval_id");
    let approver = cancel(&app, &app.approver, &a.id, "").await;
    assert_status(approver, Code::PermissionDenied, "");
    assert_status(
        cancel(&app, &app.agent, "", "").await,
        Code::InvalidArgument,
        "approval_id",
    );
    let long = "x".repeat(100_000);
    assert_status(
        cancel(&app, &app.agent, &a.id, &long).await,
        Code::InvalidArgument,
        "reason",
    );

    let cancelled = cancel(&app, &app.agent, &a.id, "the user withdrew the request")
        .await
        .expect("cancel");
    assert_eq!(cancelled.state, pb::ApprovalState::Cancelled as i32);
    // An approver can no longer approve it, and it allows nothing.
    let late = app.submit(&a.id, Technician, "tech", true).await;
    assert_status(late, Code::FailedPrecondition, "cancelled");
    let go = app
        .decide_ok(with_approval(ask("add_user_to_group", ARGS, "r1"), &a.id))
        .await;
    assert_eq!(verdict(&go), (Verdict::Deny, DecisionCode::ApprovalDenied));
    let again = cancel(&app, &app.agent, &a.id, "").await;
    assert_status(again, Code::FailedPrecondition, "only a pending approval");

    // An admin cancels any pending approval of the tenant; an approved one stays.
    let b = pending(&app, "add_user_to_group", "r2").await;
    let by_admin = cancel(&app, &app.admin, &b.id, "").await.expect("cancel");
    assert_eq!(by_admin.state, pb::ApprovalState::Cancelled as i32);
    let c = pending(&app, "add_user_to_group", "r3").await;
    app.submit(&c.id, Technician, "tech", true).await.unwrap();
    let approved = cancel(&app, &app.admin, &c.id, "").await;
    assert_status(approved, Code::FailedPrecondition, "approved");
}

#[tokio::test]
async fn an_agent_lists_only_the_approvals_it_asked_for() {
    let app = ready_app().await;
    let mine = pending(&app, "add_user_to_group", "r1").await;
    let other_agent = app.mint("acme", toolgate::policy::Role::Agent).await;
    let theirs = app
        .decide(
            &other_agent,
            ask("add_user_to_group", r#"{"user":"eve"}"#, "o1"),
        )
        .await
        .expect("decide")
        .approval
        .expect("approval");
    let ids = |key: String| {
        let app = &app;
        async move {
            app.list_approvals(&key, pb::ApprovalState::Unspecified, 0, "")
                .await
                .expect("list")
                .approvals
                .into_iter()
                .map(|a| a.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(app.agent.clone()).await, vec![mine.id.clone()]);
    assert_eq!(ids(other_agent).await, vec![theirs.id.clone()]);
    assert_eq!(ids(app.approver.clone()).await, [theirs.id, mine.id]);
}
