//! ConnectIntegration, SetPolicy, ListTools and UpsertPeople.

use crate::helpers::*;
use pb::PolicySource;
use tonic::Code;
use toolgate::proto::v1 as pb;

fn find<'a>(tools: &'a [pb::Tool], name: &str) -> &'a pb::Tool {
    tools
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

#[tokio::test]
async fn connect_seeds_from_annotations_then_verbs_then_conservatively() {
    let app = spawn_app().await;
    let read_only = pb::ToolAnnotations {
        read_only_hint: Some(true),
        ..Default::default()
    };
    let destructive = pb::ToolAnnotations {
        destructive_hint: Some(true),
        ..Default::default()
    };
    let r = app
        .connect(
            &app.admin,
            "entra",
            &[
                ("directory_tree", Some(read_only)),
                ("get_user", Some(destructive)),
                ("getUser", None),
                ("users.list", None),
                ("Get-MgUser", None),
                ("chat.postMessage", None),
                ("reset_password", None),
                ("frobnicate", None),
            ],
        )
        .await;
    assert_eq!(r.revision, 1);
    let expect = [
        ("directory_tree", Policy::Auto, PolicySource::Annotation),
        ("get_user", Policy::ApprovalNeeded, PolicySource::Annotation),
        ("getUser", Policy::Auto, PolicySource::Verb),
        ("users.list", Policy::Auto, PolicySource::Verb),
        ("Get-MgUser", Policy::Auto, PolicySource::Verb),
        (
            "chat.postMessage",
            Policy::ApprovalNeeded,
            PolicySource::Verb,
        ),
        ("reset_password", Policy::ApprovalNeeded, PolicySource::Verb),
        ("frobnicate", Policy::ApprovalNeeded, PolicySource::Fallback),
    ];
    for (name, policy, source) in expect {
        let t = find(&r.tools, name);
        assert_eq!(
            (t.policy, t.source),
            (policy as i32, source as i32),
            "{name}"
        );
        assert!(!t.source_reason.is_empty(), "{name} has no reason");
        assert_eq!(t.revision, 1);
    }
}

#[tokio::test]
async fn reconnecting_seeds_only_new_tools_keeps_admin_choices_and_removes_the_rest() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("reset_password", Policy::Disabled, None).await;
    app.set_one("get_user", Policy::ApprovalNeeded, Some(true))
        .await;
    let r = app
        .connect(
            &app.admin,
            "entra",
            &[
                ("get_user", None),
                ("reset_password", None),
                ("list_groups", None),
                ("create_user", None),
            ],
        )
        .await;
    assert_eq!(r.revision, 4, "one revision for the whole reconnect");
    let names: Vec<&str> = r.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["create_user", "get_user", "list_groups", "reset_password"]
    );
    let reset = find(&r.tools, "reset_password");
    assert_eq!(
        (reset.policy, reset.source),
        (Policy::Disabled as i32, PolicySource::Admin as i32)
    );
    let get = find(&r.tools, "get_user");
    assert_eq!(get.policy, Policy::ApprovalNeeded as i32);
    assert!(get.manager_approval);
    assert_eq!(
        find(&r.tools, "create_user").source,
        PolicySource::Verb as i32
    );
    // Removed tools are unknown now: denied.
    let d = app.decide_ok(ask("delete_user", "{}", "r1")).await;
    assert_eq!(verdict(&d), (Verdict::Deny, DecisionCode::UnknownTool));
    // The same catalogue again changes nothing, so makes no revision.
    let again = app
        .connect(
            &app.admin,
            "entra",
            &[
                ("get_user", None),
                ("reset_password", None),
                ("list_groups", None),
                ("create_user", None),
            ],
        )
        .await;
    assert_eq!(again.revision, 4);
}

#[tokio::test]
async fn connect_rejects_bad_tool_definitions_and_changes_nothing() {
    let app = spawn_app().await;
    let before = app.connect_sample().await;
    let mut client = app.client.clone();
    let def = |name: &str, schema: &str| pb::ToolDefinition {
        name: name.into(),
        description: String::new(),
        input_schema_json: schema.into(),
        annotations: None,
    };
    for (tools, mentions) in [
        (
            vec![def("get_user", ""), def("get_user", "")],
            "tools[1].name: duplicates tools[0]",
        ),
        (
            vec![def("get_user", ""), def("bad name", "")],
            "tools[1].name",
        ),
        (vec![def("get_user", "[1]")], "tools[0].input_schema_json"),
    ] {
        let r = client
            .connect_integration(with_key(
                &app.admin,
                pb::ConnectIntegrationRequest {
                    integration_id: "entra".into(),
                    kind: "entra_id".into(),
                    display_name: String::new(),
                    tools,
                    comment: String::new(),
                },
            ))
            .await;
        assert_status(r, Code::InvalidArgument, mentions);
    }
    let after = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.tools.len(), before.tools.len());
}

#[tokio::test]
async fn set_policy_is_one_atomic_revision() {
    let app = spawn_app().await;
    let connected = app.connect_sample().await;
    let saved = app
        .set_policy(
            vec![
                change("entra", "get_user", Policy::Disabled, None),
                change(
                    "entra",
                    "reset_password",
                    Policy::ApprovalNeeded,
                    Some(true),
                ),
                change("entra", "list_groups", Policy::ApprovalNeeded, None),
            ],
            Some(connected.revision),
        )
        .await
        .unwrap();
    assert_eq!(saved.revision, connected.revision + 1);
    assert_eq!(saved.tools.len(), 3);
    assert!(
        saved
            .tools
            .iter()
            .all(|t| t.revision == saved.revision && t.source == PolicySource::Admin as i32)
    );
    let listed = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(listed.revision, saved.revision);
    assert_eq!(
        find(&listed.tools, "get_user").policy,
        Policy::Disabled as i32
    );
    assert!(find(&listed.tools, "reset_password").manager_approval);
}

#[tokio::test]
async fn a_batch_with_one_bad_entry_changes_nothing() {
    let app = spawn_app().await;
    let connected = app.connect_sample().await;
    let good = change("entra", "get_user", Policy::Disabled, None);
    let cases = [
        (
            change("entra", "nope", Policy::Auto, None),
            Code::NotFound,
            "changes[1]: no tool \"nope\"",
        ),
        (
            change("entra", "reset_password", Policy::Unspecified, None),
            Code::InvalidArgument,
            "changes[1].policy",
        ),
        (
            change("entra", "reset_password", Policy::Auto, Some(true)),
            Code::InvalidArgument,
            "changes[1].manager_approval",
        ),
        (
            change("entra", "get_user", Policy::Auto, None),
            Code::InvalidArgument,
            "changes[1].tool_name",
        ),
        (
            change("", "get_user", Policy::Auto, None),
            Code::InvalidArgument,
            "changes[1].integration_id",
        ),
    ];
    for (bad, code, mentions) in cases {
        assert_status(
            app.set_policy(vec![good.clone(), bad], None).await,
            code,
            mentions,
        );
    }
    let mut out_of_range = change("entra", "get_user", Policy::Auto, None);
    out_of_range.policy = 42;
    assert_status(
        app.set_policy(vec![out_of_range], None).await,
        Code::InvalidArgument,
        "42",
    );
    assert_status(
        app.set_policy(vec![], None).await,
        Code::InvalidArgument,
        "changes",
    );
    let after = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(after.revision, connected.revision);
    assert_eq!(find(&after.tools, "get_user").policy, Policy::Auto as i32);
}

#[tokio::test]
async fn a_stale_expected_revision_is_refused_with_the_current_one() {
    let app = spawn_app().await;
    let connected = app.connect_sample().await;
    app.set_one("get_user", Policy::Disabled, None).await;
    let r = app
        .set_policy(
            vec![change("entra", "get_user", Policy::Auto, None)],
            Some(connected.revision),
        )
        .await;
    assert_status(
        r,
        Code::FailedPrecondition,
        &format!("revision {}", connected.revision + 1),
    );
    let listed = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(
        find(&listed.tools, "get_user").policy,
        Policy::Disabled as i32
    );
}

#[tokio::test]
async fn agents_never_see_disabled_tools_or_why_a_policy_was_chosen() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("delete_user", Policy::Disabled, None).await;
    let agent_view = app.list_tools(&app.agent, false).await.unwrap();
    assert!(agent_view.tools.iter().all(|t| t.name != "delete_user"));
    assert_eq!(agent_view.tools.len(), 4);
    assert!(
        agent_view
            .tools
            .iter()
            .all(|t| t.source == 0 && t.source_reason.is_empty())
    );
    assert_status(
        app.list_tools(&app.agent, true).await,
        Code::PermissionDenied,
        "include_disabled",
    );
    let admin_view = app.list_tools(&app.admin, true).await.unwrap();
    assert_eq!(admin_view.tools.len(), 5);
    assert!(admin_view.tools.iter().all(|t| !t.source_reason.is_empty()));
}

#[tokio::test]
async fn upsert_people_validates_every_entry_first() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let r = client
        .upsert_people(with_key(
            &app.admin,
            pb::UpsertPeopleRequest {
                people: vec![person("alice", "mgr", false), person("bob", "bob", false)],
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "people[1].manager_id");
    let r = client
        .upsert_people(with_key(
            &app.admin,
            pb::UpsertPeopleRequest {
                people: vec![person("alice", "", false), person("alice", "", true)],
            },
        ))
        .await;
    assert_status(r, Code::InvalidArgument, "people[1].id");
    let ok = client
        .upsert_people(with_key(
            &app.admin,
            pb::UpsertPeopleRequest {
                people: vec![person("alice", "mgr", false), person("mgr", "", true)],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.upserted, 2);
}
