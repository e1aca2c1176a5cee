//! WatchConfig and WatchApprovals: every saved change pushed, in order, to the right people.

use crate::helpers::*;
use pb::watch_config_response::Event;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use tonic::codec::Streaming;
use toolgate::policy::Role;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

/// A bound on how long a test waits for an event that must come; it fails, never passes.
const MUST_ARRIVE: Duration = Duration::from_secs(20);

async fn watch(
    app: &TestApp,
    key: &str,
    since: Option<u64>,
    integration: &str,
) -> Streaming<pb::WatchConfigResponse> {
    app.client
        .clone()
        .watch_config(with_key(
            key,
            pb::WatchConfigRequest {
                since_revision: since,
                integration_id: integration.into(),
            },
        ))
        .await
        .expect("watch config")
        .into_inner()
}

async fn next<T>(stream: &mut Streaming<T>) -> Result<T, tonic::Status> {
    tokio::time::timeout(MUST_ARRIVE, stream.message())
        .await
        .expect("an event within the bound")
        .map(|m| m.expect("stream still open"))
}

async fn next_event(stream: &mut Streaming<pb::WatchConfigResponse>) -> (u64, Event) {
    let r = next(stream).await.expect("event");
    (r.revision, r.event.expect("event set"))
}

/// Reads until the first non-heartbeat event.
async fn next_news(stream: &mut Streaming<pb::WatchConfigResponse>) -> (u64, Event) {
    loop {
        match next_event(stream).await {
            (_, Event::Heartbeat(_)) => continue,
            other => return other,
        }
    }
}

type State = BTreeMap<(String, String), i32>;

fn apply(state: &mut State, event: &Event) {
    match event {
        Event::Snapshot(s) => {
            state.clear();
            for t in &s.tools {
                state.insert((t.integration_id.clone(), t.name.clone()), t.policy);
            }
        }
        Event::Change(c) => {
            for t in &c.upserted {
                state.insert((t.integration_id.clone(), t.name.clone()), t.policy);
            }
            for r in &c.removed {
                state.remove(&(r.integration_id.clone(), r.tool_name.clone()));
            }
        }
        Event::Heartbeat(_) => {}
    }
}

#[tokio::test]
async fn first_a_snapshot_then_one_change_per_save() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("delete_user", Policy::Disabled, None).await;
    let mut s = watch(&app, &app.agent, None, "").await;
    let (rev, event) = next_news(&mut s).await;
    assert_eq!(rev, 2);
    let Event::Snapshot(snap) = event else {
        panic!("{event:?}")
    };
    assert!(!snap.reset);
    assert_eq!(
        snap.tools.len(),
        4,
        "the disabled tool is not sent to an agent"
    );
    app.set_policy(
        vec![
            change("entra", "get_user", Policy::ApprovalNeeded, None),
            change("entra", "list_groups", Policy::ApprovalNeeded, None),
        ],
        None,
    )
    .await
    .unwrap();
    let (rev, event) = next_news(&mut s).await;
    assert_eq!(rev, 3);
    let Event::Change(c) = event else {
        panic!("{event:?}")
    };
    assert_eq!(c.upserted.len(), 2, "one event carries the whole Save");
    assert!(
        c.upserted
            .iter()
            .all(|t| t.source == 0 && t.source_reason.is_empty())
    );
}

#[tokio::test]
async fn disabling_a_tool_is_a_removal_for_agents_and_an_update_for_admins() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let mut agent = watch(&app, &app.agent, None, "").await;
    let mut admin = watch(&app, &app.admin, None, "").await;
    next_news(&mut agent).await;
    next_news(&mut admin).await;
    app.set_one("get_user", Policy::Disabled, None).await;
    let (_, Event::Change(c)) = next_news(&mut agent).await else {
        panic!()
    };
    assert!(c.upserted.is_empty());
    assert_eq!(
        c.removed,
        vec![pb::ToolRef {
            integration_id: "entra".into(),
            tool_name: "get_user".into()
        }]
    );
    let (_, Event::Change(c)) = next_news(&mut admin).await else {
        panic!()
    };
    assert_eq!(c.upserted[0].policy, Policy::Disabled as i32);
    // Removed from the integration: a removal for everyone.
    app.connect(&app.admin, "entra", &[("list_groups", None)])
        .await;
    let (_, Event::Change(c)) = next_news(&mut admin).await else {
        panic!()
    };
    assert_eq!(c.removed.len(), 4);
}

#[tokio::test]
async fn resume_from_every_revision_returns_exactly_the_missed_changes() {
    let app = spawn_app().await;
    app.connect_sample().await;
    for (i, tool) in [
        "get_user",
        "list_groups",
        "reset_password",
        "delete_user",
        "add_user_to_group",
        "get_user",
    ]
    .iter()
    .enumerate()
    {
        let policy = if i % 2 == 0 {
            Policy::Disabled
        } else {
            Policy::ApprovalNeeded
        };
        app.set_one(tool, policy, None).await;
    }
    let last = 7;
    let mut streams = Vec::new();
    for since in 0..=last {
        streams.push((since, watch(&app, &app.admin, Some(since), "").await));
    }
    // A marker Save after every stream is open: everything before it is the replay.
    app.set_one("list_groups", Policy::Auto, None).await;
    for (since, mut s) in streams {
        let mut revisions = Vec::new();
        loop {
            let (rev, event) = next_news(&mut s).await;
            assert!(
                matches!(event, Event::Change(_)),
                "since {since}: {event:?}"
            );
            if rev == last + 1 {
                break;
            }
            revisions.push(rev);
        }
        assert_eq!(
            revisions,
            (since + 1..=last).collect::<Vec<_>>(),
            "since {since}"
        );
    }
}

#[tokio::test]
async fn a_resume_older_than_the_history_gets_a_reset_snapshot() {
    let app = spawn_app_with(|c| c.watch_history = 2).await;
    app.connect_sample().await;
    for tool in ["get_user", "list_groups", "reset_password", "delete_user"] {
        app.set_one(tool, Policy::Disabled, None).await;
    }
    let mut s = watch(&app, &app.admin, Some(1), "").await;
    let (rev, event) = next_news(&mut s).await;
    let Event::Snapshot(snap) = event else {
        panic!("{event:?}")
    };
    assert!(snap.reset);
    assert_eq!(rev, 5);
    assert_eq!(snap.tools.len(), 5);
    // Within the history: the changes.
    let mut s = watch(&app, &app.admin, Some(3), "").await;
    assert_eq!(next_news(&mut s).await.0, 4);
    assert_eq!(next_news(&mut s).await.0, 5);
}

#[tokio::test]
async fn integration_filter_sends_only_that_integration() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.connect(
        &app.admin,
        "jira",
        &[("get_issue", None), ("create_issue", None)],
    )
    .await;
    let mut s = watch(&app, &app.admin, None, "jira").await;
    let (_, Event::Snapshot(snap)) = next_news(&mut s).await else {
        panic!()
    };
    assert!(snap.tools.iter().all(|t| t.integration_id == "jira"));
    assert_eq!(snap.tools.len(), 2);
    app.set_one("get_user", Policy::Disabled, None).await;
    app.set_policy(
        vec![change("jira", "get_issue", Policy::Disabled, None)],
        None,
    )
    .await
    .unwrap();
    let (rev, Event::Change(c)) = next_news(&mut s).await else {
        panic!()
    };
    assert_eq!(rev, 4, "the entra save is not sent");
    assert_eq!(c.upserted[0].name, "get_issue");
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats_with_the_current_revision() {
    let app = spawn_app_with(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let connected = app.connect_sample().await;
    let mut s = watch(&app, &app.agent, None, "").await;
    next_event(&mut s).await;
    let (rev, event) = next_event(&mut s).await;
    assert!(matches!(event, Event::Heartbeat(_)), "{event:?}");
    assert_eq!(rev, connected.revision);
}

#[tokio::test]
async fn two_tenants_saving_at_once_never_see_each_others_events() {
    let app = spawn_app().await;
    let globex_admin = app.mint("globex", Role::Admin).await;
    let mut acme = watch(&app, &app.admin, None, "").await;
    let mut globex = watch(&app, &globex_admin, None, "").await;
    assert_eq!(next_news(&mut acme).await.0, 0);
    assert_eq!(next_news(&mut globex).await.0, 0);
    let (a, g) = tokio::join!(
        app.connect(&app.admin, "entra", &[("get_user", None)]),
        app.connect(&globex_admin, "jira", &[("get_issue", None)])
    );
    assert_eq!((a.revision, g.revision), (1, 1));
    let (_, Event::Change(c)) = next_news(&mut acme).await else {
        panic!()
    };
    assert!(c.upserted.iter().all(|t| t.integration_id == "entra"));
    let (_, Event::Change(c)) = next_news(&mut globex).await else {
        panic!()
    };
    assert!(c.upserted.iter().all(|t| t.integration_id == "jira"));
    // Nothing else is queued for either: the next news is the next own Save.
    app.connect(
        &app.admin,
        "entra",
        &[("get_user", None), ("list_users", None)],
    )
    .await;
    assert_eq!(next_news(&mut acme).await.0, 2);
    app.connect(
        &globex_admin,
        "jira",
        &[("get_issue", None), ("list_issues", None)],
    )
    .await;
    let (rev, Event::Change(c)) = next_news(&mut globex).await else {
        panic!()
    };
    assert_eq!(rev, 2);
    assert!(c.upserted.iter().all(|t| t.integration_id == "jira"));
}

#[tokio::test]
async fn hundred_watchers_see_the_same_gapless_sequence_while_four_admins_save() {
    let app = spawn_app_with(|c| c.watch_buffer = 1024).await;
    let tools: Vec<String> = (0..4).map(|i| format!("get_thing_{i}")).collect();
    let defs: Vec<(&str, Option<pb::ToolAnnotations>)> =
        tools.iter().map(|t| (t.as_str(), None)).collect();
    app.connect(&app.admin, "entra", &defs).await;
    let mut watchers = Vec::new();
    for _ in 0..100 {
        let s = watch(&app, &app.admin, None, "").await;
        watchers.push(tokio::spawn(async move {
            let mut s = s;
            let mut state = State::new();
            let mut seen = Vec::new();
            loop {
                let (rev, event) = next_news(&mut s).await;
                if let Event::Snapshot(ref snap) = event {
                    assert!(
                        !snap.reset,
                        "no watcher falls behind a 1024-revision buffer here"
                    );
                }
                apply(&mut state, &event);
                seen.push(rev);
                if rev == 201 {
                    return (seen, state);
                }
            }
        }));
    }
    let mut admins = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let mut client = app.client.clone();
        let key = app.admin.clone();
        let tool = tool.clone();
        admins.push(tokio::spawn(async move {
            for n in 0..50 {
                let policy = if (n + i) % 2 == 0 {
                    Policy::Disabled
                } else {
                    Policy::ApprovalNeeded
                };
                client
                    .set_policy(with_key(
                        &key,
                        pb::SetPolicyRequest {
                            changes: vec![change("entra", &tool, policy, None)],
                            expected_revision: None,
                            comment: String::new(),
                        },
                    ))
                    .await
                    .expect("save");
            }
        }));
    }
    for a in admins {
        a.await.unwrap();
    }
    let listed = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(listed.revision, 201);
    let truth: State = listed
        .tools
        .iter()
        .map(|t| ((t.integration_id.clone(), t.name.clone()), t.policy))
        .collect();
    for w in watchers {
        let (seen, state) = w.await.unwrap();
        let first = seen[0];
        assert_eq!(
            seen,
            (first..=201).collect::<Vec<_>>(),
            "gapless and in order"
        );
        assert_eq!(state, truth);
    }
}

#[tokio::test]
async fn a_watcher_that_never_reads_does_not_stall_saves_or_other_watchers() {
    let app = spawn_app_with(|c| c.watch_buffer = 4).await;
    // Big events, so the unread stream's buffers fill after a few Saves.
    let names: Vec<String> = (0..100).map(|i| format!("get_record_{i}")).collect();
    let catalogue = |round: usize| -> Vec<pb::ToolDefinition> {
        names
            .iter()
            .map(|n| pb::ToolDefinition {
                name: n.clone(),
                description: format!("{round}{}", "x".repeat(2000)),
                input_schema_json: String::new(),
                annotations: None,
            })
            .collect()
    };
    // The silent watcher has its own connection, so its flow control is its own.
    let silent_channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut silent = PolicyServiceClient::new(silent_channel)
        .watch_config(with_key(&app.admin, pb::WatchConfigRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut reader = watch(&app, &app.admin, None, "").await;
    next_news(&mut reader).await;
    let rounds = 40;
    for round in 1..=rounds {
        app.client
            .clone()
            .connect_integration(with_key(
                &app.admin,
                pb::ConnectIntegrationRequest {
                    integration_id: "records".into(),
                    kind: "crm".into(),
                    display_name: String::new(),
                    tools: catalogue(round),
                    comment: String::new(),
                },
            ))
            .await
            .expect("saves never wait for a watcher");
        let (rev, event) = next_news(&mut reader).await;
        assert_eq!(rev, round as u64);
        assert!(matches!(event, Event::Change(_)));
    }
    // The silent watcher, read at last, is brought current: with a fresh snapshot when it
    // stalled between messages, or, when it stalled part-way through a message whose
    // revision is gone, its stream ends RESOURCE_EXHAUSTED and a resume brings it current.
    let mut state = State::new();
    let mut position = None;
    let mut caught_up_by = "";
    while position != Some(rounds as u64) {
        match next(&mut silent).await {
            Ok(r) => {
                let event = r.event.expect("event set");
                if let Event::Snapshot(ref s) = event
                    && s.reset
                {
                    caught_up_by = "reset snapshot";
                }
                apply(&mut state, &event);
                position = Some(r.revision);
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert_eq!(caught_up_by, "", "ended once, and not after a reset");
                caught_up_by = "resume after RESOURCE_EXHAUSTED";
                silent = watch(&app, &app.admin, position, "").await;
            }
        }
    }
    assert_ne!(
        caught_up_by, "",
        "a watcher behind its buffer is brought current"
    );
    assert_eq!(state.len(), 100);
}

#[tokio::test]
async fn drain_ends_open_streams_with_unavailable() {
    let mut app = spawn_app().await;
    app.connect_sample().await;
    let mut config = watch(&app, &app.agent, None, "").await;
    next_news(&mut config).await;
    let mut approvals = app
        .client
        .clone()
        .watch_approvals(with_key(
            &app.approver,
            pb::WatchApprovalsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    app.stop().await;
    let err = next(&mut config)
        .await
        .expect_err("stream ends with a status");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("since_revision"),
        "{}",
        err.message()
    );
    let err = next(&mut approvals)
        .await
        .expect_err("stream ends with a status");
    assert_eq!(err.code(), Code::Unavailable);
}

async fn watch_approvals(
    app: &TestApp,
    key: &str,
    id: &str,
) -> Streaming<pb::WatchApprovalsResponse> {
    app.client
        .clone()
        .watch_approvals(with_key(
            key,
            pb::WatchApprovalsRequest {
                approval_id: id.into(),
            },
        ))
        .await
        .expect("watch approvals")
        .into_inner()
}

async fn next_state(s: &mut Streaming<pb::WatchApprovalsResponse>) -> (String, pb::ApprovalState) {
    let a = next(s).await.expect("event").approval.expect("approval");
    (a.id, pb::ApprovalState::try_from(a.state).expect("state"))
}

#[tokio::test]
async fn approval_changes_reach_the_asking_agent_and_the_approvers() {
    use pb::ApprovalState::*;
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    let mut approvers = watch_approvals(&app, &app.approver, "").await;
    let other_agent = app.mint("acme", Role::Agent).await;
    let mut other = watch_approvals(&app, &other_agent, "").await;
    let a = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .unwrap();
    assert_eq!(next_state(&mut approvers).await, (a.id.clone(), Pending));
    let mut mine = watch_approvals(&app, &app.agent, &a.id).await;
    assert_eq!(
        next_state(&mut mine).await,
        (a.id.clone(), Pending),
        "starts with the current state"
    );
    app.submit(&a.id, pb::ApproverRole::Technician, "tech", true)
        .await
        .unwrap();
    assert_eq!(next_state(&mut mine).await, (a.id.clone(), Approved));
    assert_eq!(next_state(&mut approvers).await, (a.id.clone(), Approved));
    app.decide_ok(with_approval(ask("reset_password", "{}", "r1"), &a.id))
        .await;
    assert_eq!(next_state(&mut mine).await, (a.id.clone(), Consumed));
    assert_eq!(next_state(&mut approvers).await, (a.id.clone(), Consumed));
    // The other agent saw none of that: its first event is its own approval.
    let own = app
        .decide(&other_agent, ask("reset_password", "{}", "r2"))
        .await
        .unwrap()
        .approval
        .unwrap();
    assert_eq!(next_state(&mut other).await, (own.id, Pending));
    // Nor may it watch someone else's approval by id.
    let r = app
        .client
        .clone()
        .watch_approvals(with_key(
            &other_agent,
            pb::WatchApprovalsRequest {
                approval_id: a.id.clone(),
            },
        ))
        .await;
    assert_status(r, Code::NotFound, "approval_id");
}

#[tokio::test]
async fn expiry_is_pushed_without_anyone_asking() {
    let app = spawn_app_with(|c| {
        c.approval_ttl = Duration::from_millis(150);
        c.expiry_sweep = Duration::from_millis(50);
    })
    .await;
    app.connect_sample().await;
    let a = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .unwrap();
    let mut s = watch_approvals(&app, &app.agent, &a.id).await;
    let (_, first) = next_state(&mut s).await;
    if first != pb::ApprovalState::Expired {
        assert_eq!(first, pb::ApprovalState::Pending);
        assert_eq!(
            next_state(&mut s).await,
            (a.id.clone(), pb::ApprovalState::Expired)
        );
    }
    let listed = app
        .list_approvals(&app.admin, pb::ApprovalState::Expired, 0, "")
        .await
        .unwrap();
    assert_eq!(listed.approvals.len(), 1);
    // The sweep's event is in the tenant's chain of approval events.
    let (code, out, err) = audit(app.config.database_url.expose(), &["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 approval events verified"), "{out}");
}
