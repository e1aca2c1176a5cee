//! The use cases without a server: an [`App`] over a real SQLite store in a temporary file,
//! called directly, as every transport calls it.

use super::approvals::SubmitInput;
use super::decide::{DecideInput, DecideOutcome};
use super::save::SaveRequest;
use super::watch::ConfigStart;
use super::*;
use crate::policy::decide::{DecisionCode, Verdict};
use crate::policy::names::{ApprovalId, IntegrationId, PersonId, RequestId, ToolName};
use crate::policy::save::PolicyEdit;
use crate::policy::{
    Annotations, ApprovalState, ApproverRole, Caller, Person, Policy, Role, ToolDefinition,
};
use crate::store::{IntegrationMeta, ReadScope, RevisionCommit, SaveKind};

struct Fixture {
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let store = crate::store::open(&url, &Default::default())
        .await
        .expect("open store");
    let limits = Limits {
        approval_ttl: Duration::from_secs(3600),
        max_arguments_bytes: 64 * 1024,
        min_revision_wait: Duration::from_millis(50),
        heartbeat_interval: Duration::from_secs(60),
        watch_history: 100,
        watch_stream_buffer: 64 * 1024,
        max_watch_streams: 8,
        delivery_public_only: false,
        max_pending_approvals: 1000,
    };
    let app = App::new(
        Arc::new(store),
        Snapshots::new(),
        ApprovalHub::new(16),
        limits,
        tokio_util::sync::CancellationToken::new(),
        Arc::new(Metrics::new("sqlite")),
    );
    Fixture {
        app: Arc::new(app),
        _dir: dir,
    }
}

fn caller(key_id: &str, role: Role) -> Caller {
    Caller {
        key_id: key_id.into(),
        principal: format!("key:{key_id}"),
        tenant: "acme".into(),
        role,
    }
}

fn admin() -> Caller {
    caller("k_admin", Role::Admin)
}

fn agent() -> Caller {
    caller("k_agent", Role::Agent)
}

fn tool(name: &str, destructive: bool) -> ToolDefinition {
    ToolDefinition {
        name: name.into(),
        description: String::new(),
        input_schema_json: String::new(),
        annotations: Annotations {
            destructive: destructive.then_some(true),
            ..Annotations::default()
        },
    }
}

fn connect_entra() -> SaveRequest {
    SaveRequest::Connect {
        integration: IntegrationMeta {
            id: "entra".into(),
            kind: "entra_id".into(),
            display_name: "Entra".into(),
        },
        tools: vec![tool("get_user", false), tool("reset_password", true)],
        comment: String::new(),
    }
}

fn person(id: &str, manager: &str, technician: bool) -> Person {
    Person {
        id: id.into(),
        display_name: id.into(),
        email: format!("{id}@example.com"),
        manager_id: manager.into(),
        technician,
        slack_user_id: String::new(),
    }
}

fn ask(tool: &str, request_id: &str, approval_id: &str) -> DecideInput {
    DecideInput {
        integration_id: IntegrationId::parse("integration_id", "entra").unwrap(),
        tool_name: ToolName::parse("tool_name", tool).unwrap(),
        arguments_json: r#"{"user":"bob"}"#.into(),
        requester_id: PersonId::parse_optional("requester_id", "alice").unwrap(),
        request_id: RequestId::parse_optional("request_id", request_id).unwrap(),
        approval_id: ApprovalId::parse_optional("approval_id", approval_id).unwrap(),
        min_revision: None,
    }
}

fn approval_id(id: &str) -> ApprovalId {
    ApprovalId::parse("approval_id", id).unwrap()
}

/// Connects entra and syncs alice (the requester) and tom (a technician).
async fn connected(f: &Fixture) {
    f.app
        .save(&admin(), connect_entra())
        .await
        .expect("connect");
    let people = [person("alice", "mo", false), person("tom", "", true)];
    f.app
        .upsert_people(&admin(), &people)
        .await
        .expect("people");
}

/// Connects, syncs the directory, and has alice ask for `reset_password` (request `r1`).
async fn requested(f: &Fixture) -> crate::policy::Approval {
    connected(f).await;
    let first = decided(f, "reset_password", "r1", "").await;
    *first.approval.expect("an approval")
}

/// Alice's Decide of `tool` as the agent, under `request_id`, presenting `approval_id`.
async fn decided(f: &Fixture, tool: &str, request_id: &str, approval_id: &str) -> DecideOutcome {
    let outcome = f
        .app
        .decide(&agent(), &ask(tool, request_id, approval_id))
        .await;
    outcome.expect("decide")
}

/// The approval `id` as a decision on it reads it.
async fn for_update(f: &Fixture, id: &str) -> crate::store::ForUpdate {
    let read = f.app.store.approval_for_update("acme", id, &[]).await;
    read.expect("read").expect("found")
}

#[tokio::test]
async fn a_connect_seeds_and_a_set_policy_is_guarded_by_the_expected_revision() {
    let f = fixture().await;
    let saved = f
        .app
        .save(&admin(), connect_entra())
        .await
        .expect("connect");
    assert_eq!(saved.revision, 1);
    let policies: Vec<_> = saved
        .tools
        .iter()
        .map(|t| (t.name.as_str(), t.policy))
        .collect();
    assert_eq!(
        policies,
        [
            ("get_user", Policy::Auto),
            ("reset_password", Policy::ApprovalNeeded)
        ]
    );
    let disable = |expected| SaveRequest::SetPolicy {
        edits: vec![PolicyEdit {
            integration_id: "entra".into(),
            tool_name: "get_user".into(),
            policy: Policy::Disabled,
            manager_approval: None,
        }],
        expected_revision: Some(expected),
        comment: String::new(),
    };
    let stale = f.app.save(&admin(), disable(0)).await;
    assert!(
        matches!(stale, Err(AppError::FailedPrecondition(_))),
        "{stale:?}"
    );
    assert_eq!(
        f.app.snapshots.get("acme").revision,
        1,
        "a refused Save changes nothing"
    );
    let saved = f.app.save(&admin(), disable(1)).await.expect("set policy");
    assert_eq!(saved.revision, 2);
    let snapshot = f.app.snapshots.get("acme");
    assert_eq!(
        snapshot.tool("entra", "get_user").map(|t| t.policy),
        Some(Policy::Disabled)
    );
}

#[tokio::test]
async fn a_save_planned_on_a_revision_another_process_moved_is_planned_again() {
    let f = fixture().await;
    f.app
        .save(&admin(), connect_entra())
        .await
        .expect("connect");
    // Another replica commits revision 2 straight to the database.
    let scope = ReadScope::Integration("entra".into());
    let read = f
        .app
        .store
        .read_for_save("acme", &scope)
        .await
        .expect("read");
    let elsewhere = |base| RevisionCommit {
        tenant: "acme",
        actor_key_id: "k_other",
        kind: SaveKind::Connect,
        comment: "",
        base,
        integration: None,
        changes: crate::policy::save::plan_connect("entra", &[tool("get_group", false)], &[]),
    };
    let committed = f.app.store.commit_revision(elsewhere(read.revision)).await;
    assert_eq!(committed.expect("commit").map(|s| s.revision), Some(2));
    let again = f.app.store.commit_revision(elsewhere(read.revision)).await;
    assert_eq!(
        again.expect("commit"),
        None,
        "a second commit on the same base is refused"
    );
    // This process has not heard of revision 2; its Save reads, plans and commits 3.
    let saved = f
        .app
        .save(&admin(), connect_entra())
        .await
        .expect("reconnect");
    assert_eq!(saved.revision, 3);
    assert_eq!(
        f.app.snapshots.get("acme").revision,
        3,
        "caught up in order"
    );
    assert!(
        f.app
            .snapshots
            .get("acme")
            .tool("entra", "get_group")
            .is_none()
    );
}

#[tokio::test]
async fn auto_is_allowed_and_unknown_tools_are_denied_from_the_snapshot() {
    let f = fixture().await;
    connected(&f).await;
    let allow = decided(&f, "get_user", "", "").await;
    assert_eq!(
        (allow.decision.verdict, allow.decision.code),
        (Verdict::Allow, DecisionCode::PolicyAuto)
    );
    let unknown = decided(&f, "drop_tables", "", "").await;
    assert_eq!(unknown.decision.code, DecisionCode::UnknownTool);
    let bad = f
        .app
        .decide(
            &agent(),
            &DecideInput {
                arguments_json: "[1]".into(),
                ..ask("get_user", "", "")
            },
        )
        .await;
    assert!(
        matches!(bad, Err(AppError::Invalid(ref e)) if e.field == "arguments_json"),
        "{bad:?}"
    );
}

#[tokio::test]
async fn an_approval_is_requested_approved_by_a_technician_and_allows_exactly_once() {
    let f = fixture().await;
    connected(&f).await;
    let first = decided(&f, "reset_password", "r1", "").await;
    assert_eq!(first.decision.code, DecisionCode::ApprovalRequired);
    let approval = first.approval.expect("approval");
    let again = decided(&f, "reset_password", "r1", "").await;
    assert_eq!(
        again.approval.map(|a| a.id),
        Some(approval.id.clone()),
        "one approval per request id"
    );

    let approver = caller("k_approver", Role::Approver);
    let submit = |who: &str| SubmitInput {
        approval_id: approval_id(&approval.id),
        role: ApproverRole::Technician,
        approver_id: PersonId::parse("approver_id", who).unwrap(),
        approve: true,
        comment: String::new(),
    };
    let own = f.app.submit_approval(&approver, submit("alice")).await;
    assert!(
        matches!(
            own,
            Err(AppError::PermissionDenied(_) | AppError::FailedPrecondition(_))
        ),
        "{own:?}"
    );
    let approved = f
        .app
        .submit_approval(&approver, submit("tom"))
        .await
        .expect("approve");
    assert_eq!(approved.state, ApprovalState::Approved);

    let go = decided(&f, "reset_password", "r1", &approval.id).await;
    assert_eq!(
        (go.decision.verdict, go.decision.code),
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
    let other = decided(&f, "reset_password", "r2", &approval.id).await;
    assert_eq!(
        (other.decision.verdict, other.decision.code),
        (Verdict::Deny, DecisionCode::ApprovalConsumed)
    );
}

#[tokio::test]
async fn an_approval_version_is_written_once() {
    let f = fixture().await;
    let id = requested(&f).await.id;
    let read = for_update(&f, &id).await;
    let mut denied = read.approval.clone();
    denied.state = ApprovalState::Denied;
    assert!(
        f.app
            .store
            .append_approval("acme", read.version + 1, &denied)
            .await
            .expect("append")
    );
    assert!(
        !f.app
            .store
            .append_approval("acme", read.version + 1, &read.approval)
            .await
            .expect("append"),
        "a second write of the same version is refused"
    );
    let now = f
        .app
        .get_approval(&agent(), &approval_id(&id))
        .await
        .expect("get");
    assert_eq!(now.state, ApprovalState::Denied);
}

#[tokio::test]
async fn agents_see_only_their_own_approvals() {
    let f = fixture().await;
    let id = requested(&f).await.id;
    let other = caller("k_other_agent", Role::Agent);
    assert!(matches!(
        f.app.get_approval(&other, &approval_id(&id)).await,
        Err(AppError::NotFound(_))
    ));
    assert!(
        f.app
            .get_approval(&agent(), &approval_id(&id))
            .await
            .is_ok()
    );
    let page = f
        .app
        .list_approvals(
            &caller("k_approver", Role::Approver),
            Some(ApprovalState::Pending),
            0,
            "",
        )
        .await
        .expect("list");
    assert_eq!(page.approvals.len(), 1);
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn a_watch_resumes_from_the_change_log_or_starts_over() {
    let f = fixture().await;
    f.app
        .save(&admin(), connect_entra())
        .await
        .expect("connect");
    let fresh = f.app.watch_config(&agent(), None).await.expect("watch");
    assert!(matches!(
        fresh.start,
        ConfigStart::Snapshot { reset: false }
    ));
    let resumed = f.app.watch_config(&agent(), Some(0)).await.expect("resume");
    match resumed.start {
        ConfigStart::Replay(revisions) => assert_eq!(revisions.len(), 1),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(resumed.position, 1);
    let ahead = f.app.watch_config(&agent(), Some(9)).await;
    assert!(
        matches!(ahead, Err(AppError::Unavailable(_))),
        "a revision not reached yet"
    );
}

#[tokio::test]
async fn keys_authenticate_by_role_and_unknown_tokens_are_refused() {
    let f = fixture().await;
    let key = crate::keys::generate().expect("random");
    f.app
        .store
        .create_key(&key.id, "acme", Role::Agent, &key.secret_sha256, None)
        .await
        .expect("mint");
    let header = format!("Bearer {}", key.token);
    let who = f
        .app
        .authenticate(Some(header.as_bytes()), Operation::Decide)
        .await;
    assert_eq!(who.expect("authenticated").key_id, key.id);
    let refused = f
        .app
        .authenticate(Some(header.as_bytes()), Operation::SetPolicy)
        .await;
    assert!(
        matches!(refused, Err(AppError::PermissionDenied(_))),
        "{refused:?}"
    );
    let unknown = crate::keys::generate().expect("random");
    let header = format!("Bearer {}", unknown.token);
    for _ in 0..2 {
        let who = f
            .app
            .authenticate(Some(header.as_bytes()), Operation::Decide)
            .await;
        assert!(matches!(who, Err(AppError::Unauthenticated(_))), "{who:?}");
    }
}

#[tokio::test]
async fn the_sweep_expires_due_approvals_and_a_late_use_is_denied() {
    let f = fixture().await;
    let approval = requested(&f).await;
    let later = approval.expires_at.0 + 1;
    let expired = f.app.store.expire_due(later, 500).await.expect("sweep");
    assert_eq!(
        expired
            .iter()
            .map(|(_, a)| a.id.as_str())
            .collect::<Vec<_>>(),
        [approval.id.as_str()]
    );
    assert_eq!(expired[0].1.state, ApprovalState::Expired);
    let late = decided(&f, "reset_password", "r1", &approval.id).await;
    assert_eq!(late.decision.code, DecisionCode::ApprovalExpired);
}

#[tokio::test]
async fn of_concurrent_writes_of_one_version_exactly_one_goes_in() {
    let f = fixture().await;
    let id = requested(&f).await.id;
    let read = for_update(&f, &id).await;
    // Queued together, these share a batch of the group commit (or follow each other):
    // either way the version key lets one in.
    let writes = (0..8).map(|n| {
        let (store, mut next) = (f.app.store.clone(), read.approval.clone());
        next.state = if n % 2 == 0 {
            ApprovalState::Denied
        } else {
            ApprovalState::Cancelled
        };
        async move { store.append_approval("acme", read.version + 1, &next).await }
    });
    let results = futures_util::future::join_all(writes).await;
    let written = results
        .into_iter()
        .map(|r| r.expect("append"))
        .filter(|w| *w)
        .count();
    assert_eq!(written, 1);
}

/// Fuzz target for resume positions (issue "Hardening"): any `since_revision` a client
/// sends either replays exactly the revisions after it, starts over with a snapshot, or,
/// ahead of this server, is UNAVAILABLE; never an error of ours, never a wrong replay.
#[test]
fn any_resume_revision_replays_exactly_or_starts_over() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let f = runtime.block_on(async {
        let f = fixture().await;
        connected(&f).await;
        for policy in [Policy::Disabled, Policy::Auto, Policy::Disabled] {
            let edit = SaveRequest::SetPolicy {
                edits: vec![PolicyEdit {
                    integration_id: "entra".into(),
                    tool_name: "get_user".into(),
                    policy,
                    manager_approval: None,
                }],
                expected_revision: None,
                comment: String::new(),
            };
            f.app.save(&admin(), edit).await.expect("save");
        }
        f
    });
    let current = f.app.snapshots.get("acme").revision;
    assert_eq!(current, 4);
    let cases = ProptestConfig::with_cases(64);
    let since = prop_oneof![0..=current + 2, any::<u64>()];
    proptest!(cases, |(since in since)| {
        let got = runtime.block_on(f.app.watch_config(&agent(), Some(since)));
        match got {
            Ok(sub) => {
                prop_assert!(since <= current);
                prop_assert_eq!(sub.position, current);
                match sub.start {
                    ConfigStart::Replay(replay) => {
                        let revisions: Vec<u64> = replay.iter().map(|r| r.revision).collect();
                        prop_assert_eq!(revisions, (since + 1..=current).collect::<Vec<_>>());
                    }
                    ConfigStart::Snapshot { reset } => prop_assert!(reset),
                }
            }
            Err(AppError::Unavailable(message)) => {
                prop_assert!(since > current, "{message}");
            }
            Err(other) => prop_assert!(false, "since {since}: {other:?}"),
        }
    });
}
