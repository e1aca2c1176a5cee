//! Audit and history: ListRevisions shows who saved what, when and why; RollbackPolicies
//! restores an earlier revision's policies as one revision; every Decide is one event of
//! the decision log.

use crate::helpers::*;
use std::time::Duration;
use tonic::Code;
use toolgate::policy::Role;
use toolgate::proto::v1 as pb;

async fn history(
    app: &TestApp,
    key: &str,
    integration: &str,
    page_size: u32,
    token: &str,
) -> Result<pb::ListRevisionsResponse, tonic::Status> {
    app.client
        .clone()
        .list_revisions(with_key(
            key,
            pb::ListRevisionsRequest {
                integration_id: integration.into(),
                page_size,
                page_token: token.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn rollback(
    app: &TestApp,
    to: u64,
    expected: Option<u64>,
    comment: &str,
) -> Result<pb::RollbackPoliciesResponse, tonic::Status> {
    app.client
        .clone()
        .rollback_policies(with_key(
            &app.admin,
            pb::RollbackPoliciesRequest {
                to_revision: to,
                expected_revision: expected,
                comment: comment.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn save(app: &TestApp, key: &str, changes: Vec<pb::PolicyChange>, comment: &str) -> u64 {
    app.client
        .clone()
        .set_policy(with_key(
            key,
            pb::SetPolicyRequest {
                changes,
                expected_revision: None,
                comment: comment.into(),
            },
        ))
        .await
        .expect("save")
        .into_inner()
        .revision
}

fn diff(
    integration: &str,
    tool: &str,
    before: (Policy, bool),
    after: (Policy, bool),
) -> pb::PolicyDiff {
    pb::PolicyDiff {
        integration_id: integration.into(),
        tool_name: tool.into(),
        policy_before: before.0 as i32,
        policy_after: after.0 as i32,
        manager_approval_before: before.1,
        manager_approval_after: after.1,
    }
}

const NEW: (Policy, bool) = (Policy::Unspecified, false);
const AUTO: (Policy, bool) = (Policy::Auto, false);
const ASK: (Policy, bool) = (Policy::ApprovalNeeded, false);
const ASK_MANAGER: (Policy, bool) = (Policy::ApprovalNeeded, true);
const OFF: (Policy, bool) = (Policy::Disabled, false);

#[tokio::test]
async fn history_after_connect_two_saves_and_a_rollback() {
    let app = spawn_app().await;
    let alice = app.mint_named("acme", Role::Admin, Some("alice")).await;
    let alice_id = alice.split('_').nth(1).expect("key id").to_owned();
    let connected = app
        .client
        .clone()
        .connect_integration(with_key(
            &alice,
            pb::ConnectIntegrationRequest {
                integration_id: "entra".into(),
                kind: "entra_id".into(),
                display_name: "Entra ID".into(),
                tools: ["get_user", "reset_password"]
                    .iter()
                    .map(|n| pb::ToolDefinition {
                        name: n.to_string(),
                        description: String::new(),
                        input_schema_json: String::new(),
                        annotations: None,
                    })
                    .collect(),
                comment: "onboarding".into(),
            },
        ))
        .await
        .expect("connect")
        .into_inner();
    assert_eq!(connected.revision, 1);
    let freeze = change("entra", "reset_password", Policy::Disabled, None);
    assert_eq!(save(&app, &alice, vec![freeze], "incident 42").await, 2);
    let tighten = change("entra", "get_user", Policy::ApprovalNeeded, Some(true));
    assert_eq!(
        save(&app, &app.admin, vec![tighten], "audit finding").await,
        3
    );
    // An agent following from revision 3 sees the rollback as one ordinary change.
    let mut watcher = app
        .client
        .clone()
        .watch_config(with_key(
            &app.agent,
            pb::WatchConfigRequest {
                since_revision: Some(3),
                integration_id: String::new(),
            },
        ))
        .await
        .expect("watch")
        .into_inner();

    let rolled = rollback(&app, 1, Some(3), "undo both")
        .await
        .expect("rollback");
    assert_eq!(rolled.revision, 4);
    let mut restored: Vec<(String, i32, bool)> = rolled
        .tools
        .iter()
        .map(|t| (t.name.clone(), t.policy, t.manager_approval))
        .collect();
    restored.sort();
    assert_eq!(
        restored,
        vec![
            ("get_user".into(), Policy::Auto as i32, false),
            (
                "reset_password".into(),
                Policy::ApprovalNeeded as i32,
                false
            ),
        ]
    );
    let event = loop {
        let event = watcher.message().await.expect("event").expect("open");
        if !matches!(
            event.event,
            Some(pb::watch_config_response::Event::Heartbeat(_))
        ) {
            break event;
        }
    };
    assert_eq!(event.revision, 4);
    let Some(pb::watch_config_response::Event::Change(change)) = event.event else {
        panic!("one change: {event:?}");
    };
    let mut names: Vec<&str> = change.upserted.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["get_user", "reset_password"]);

    let page = history(&app, &app.admin, "", 0, "").await.expect("history");
    assert!(page.next_page_token.is_empty());
    let seen: Vec<(u64, i32, &str, &str, &str)> = page
        .revisions
        .iter()
        .map(|r| {
            (
                r.revision,
                r.kind,
                r.comment.as_str(),
                r.actor_name.as_str(),
                r.actor_role.as_str(),
            )
        })
        .collect();
    use pb::RevisionKind as K;
    assert_eq!(
        seen,
        vec![
            (4, K::Rollback as i32, "undo both", "", "admin"),
            (3, K::SetPolicy as i32, "audit finding", "", "admin"),
            (2, K::SetPolicy as i32, "incident 42", "alice", "admin"),
            (1, K::Connect as i32, "onboarding", "alice", "admin"),
        ]
    );
    assert_eq!(page.revisions[3].actor_key_id, alice_id);
    // Each revision names the hash of the one before: one chain, newest first.
    assert_eq!(page.revisions[3].previous_hash, "0".repeat(64));
    for pair in page.revisions.windows(2) {
        assert_eq!(pair[0].previous_hash, pair[1].hash);
        assert_eq!(pair[0].hash.len(), 64);
    }
    assert!(page.revisions.iter().all(|r| r.saved_at.is_some()));
    let diffs: Vec<Vec<pb::PolicyDiff>> = page.revisions.iter().map(|r| r.diffs.clone()).collect();
    assert_eq!(
        diffs,
        vec![
            vec![
                diff("entra", "get_user", ASK_MANAGER, AUTO),
                diff("entra", "reset_password", OFF, ASK),
            ],
            vec![diff("entra", "get_user", AUTO, ASK_MANAGER)],
            vec![diff("entra", "reset_password", ASK, OFF)],
            vec![
                diff("entra", "get_user", NEW, AUTO),
                diff("entra", "reset_password", NEW, ASK),
            ],
        ]
    );
}

#[tokio::test]
async fn rollback_leaves_later_tools_alone_and_a_stale_expected_revision_changes_nothing() {
    let app = spawn_app().await;
    app.connect_sample().await; // 1
    app.set_one("reset_password", Policy::Disabled, None).await; // 2
    app.connect(&app.admin, "mail", &[("send_email", None)])
        .await; // 3
    let later = vec![change("mail", "send_email", Policy::Disabled, None)];
    app.set_policy(later, None).await.expect("save"); // 4

    let stale = rollback(&app, 1, Some(3), "").await;
    assert_status(stale, Code::FailedPrecondition, "expected_revision");
    let tools = app.list_tools(&app.admin, true).await.expect("list");
    assert_eq!(tools.revision, 4, "nothing changed");

    let rolled = rollback(&app, 1, Some(4), "").await.expect("rollback");
    assert_eq!(rolled.revision, 5);
    let names: Vec<&str> = rolled.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["reset_password"], "only what differed");
    let tools = app.list_tools(&app.admin, true).await.expect("list");
    let policy_of = |name: &str| {
        tools
            .tools
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.policy)
            .expect("tool")
    };
    assert_eq!(policy_of("reset_password"), Policy::ApprovalNeeded as i32);
    assert_eq!(
        policy_of("send_email"),
        Policy::Disabled as i32,
        "a tool that came later keeps its policy"
    );
    // Nothing differs any more: no new revision.
    let again = rollback(&app, 1, None, "").await.expect("rollback");
    assert_eq!(again.revision, 5);
    assert!(again.tools.is_empty());
}

#[tokio::test]
async fn history_pages_stay_stable_while_saves_continue() {
    let app = spawn_app().await;
    app.connect_sample().await;
    for policy in [Policy::Disabled, Policy::Auto, Policy::Disabled] {
        app.set_one("get_user", policy, None).await;
    }
    let first = history(&app, &app.admin, "", 2, "").await.expect("page 1");
    let revisions: Vec<u64> = first.revisions.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [4, 3]);
    // A Save lands between pages: later pages neither repeat nor skip.
    app.set_one("get_user", Policy::Auto, None).await;
    let second = history(&app, &app.admin, "", 2, &first.next_page_token)
        .await
        .expect("page 2");
    let revisions: Vec<u64> = second.revisions.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [2, 1]);
    assert!(second.next_page_token.is_empty());
    // One integration's history holds only revisions that changed its tools.
    app.connect(&app.admin, "mail", &[("send_email", None)])
        .await;
    let mail = history(&app, &app.admin, "mail", 0, "")
        .await
        .expect("mail");
    let revisions: Vec<u64> = mail.revisions.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [6]);
    assert_eq!(mail.revisions[0].diffs.len(), 1);
}

#[tokio::test]
async fn bad_history_and_rollback_input_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("get_user", Policy::Disabled, None).await;
    assert_status(
        rollback(&app, 0, None, "").await,
        Code::InvalidArgument,
        "to_revision",
    );
    assert_status(
        rollback(&app, 9, None, "").await,
        Code::InvalidArgument,
        "to_revision",
    );
    let long = "x".repeat(100_000);
    assert_status(
        rollback(&app, 1, None, &long).await,
        Code::InvalidArgument,
        "comment",
    );
    for forged in ["42", "r1.", "r1.-1", "r1.0", "v2.apr_1"] {
        let refused = history(&app, &app.admin, "", 0, forged).await;
        assert_status(refused, Code::InvalidArgument, "page_token");
    }
    let refused = history(&app, &app.admin, "not an id!", 0, "").await;
    assert_status(refused, Code::InvalidArgument, "integration_id");
    assert_status(
        history(&app, &app.agent, "", 0, "").await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        history(&app, &app.approver, "", 0, "").await,
        Code::PermissionDenied,
        "",
    );
    // Another tenant's admin sees none of acme's history and cannot roll it back.
    let other = app.mint("other", Role::Admin).await;
    let theirs = history(&app, &other, "", 0, "").await.expect("history");
    assert!(theirs.revisions.is_empty());
    let tools = app.list_tools(&app.admin, true).await.expect("list");
    assert_eq!(tools.revision, 2, "nothing changed");
}

/// One decision-log event per Decide, with what was asked and answered, parsed from the
/// JSON log of the binary; no argument value ever reaches the log. Every line is one flat
/// object (the call's request id at the top), admin changes name their tenant and key, and
/// refused credentials are logged without the token.
#[tokio::test]
async fn every_decide_is_one_decision_log_event_without_the_arguments() {
    let db = fresh_database().await;
    let config = toolgate::config::Config {
        database_url: toolgate::config::DatabaseUrl::new(db.url.clone()),
        ..Default::default()
    };
    let store = toolgate::server::open_store(&config).await.expect("store");
    let admin = mint(&store, "acme", Role::Admin).await;
    let agent = mint(&store, "acme", Role::Agent).await;
    drop(store);
    let server = Binary::serve(&db.url).await;
    let mut client =
        pb::policy_service_client::PolicyServiceClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
    let tools = ["get_user", "reset_password"]
        .iter()
        .map(|n| pb::ToolDefinition {
            name: n.to_string(),
            description: String::new(),
            input_schema_json: String::new(),
            annotations: None,
        })
        .collect();
    let connect = pb::ConnectIntegrationRequest {
        integration_id: "entra".into(),
        kind: "entra_id".into(),
        display_name: String::new(),
        tools,
        comment: String::new(),
    };
    client
        .connect_integration(with_key(&admin, connect))
        .await
        .expect("connect");
    const SECRET: &str = "hunter2-Secret-Value-7f3a";
    let args = format!(r#"{{"user":"bob","password":"{SECRET}"}}"#);
    let mut answers = Vec::new();
    let mut call_ids = Vec::new();
    for (tool, request_id) in [
        ("get_user", "r1"),
        ("reset_password", "r2"),
        ("drop_db", "r3"),
    ] {
        let response = client
            .decide(with_key(&agent, ask(tool, &args, request_id)))
            .await
            .expect("decide");
        call_ids.push(call_id(&response));
        answers.push(response.into_inner());
    }
    let ids: std::collections::HashSet<&str> =
        answers.iter().map(|a| a.decision_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each answer has its own decision id");
    assert!(ids.iter().all(|id| id.starts_with("dec_")), "{ids:?}");
    let is_decision = |v: &serde_json::Value| v["target"] == "toolgate::decision";
    let events = server.log_lines(3, is_decision).await;
    assert_eq!(events.len(), 3, "one event per Decide: {events:?}");
    let text = |v: &serde_json::Value, name: &str| {
        log_field(v, name)
            .map(|f| f.as_str().map_or_else(|| f.to_string(), str::to_owned))
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    for ((event, answer), call_id) in events.iter().zip(&answers).zip(&call_ids) {
        assert_eq!(text(event, "decision_id"), answer.decision_id);
        // The call's own id, as the answer carried it back.
        assert_eq!(text(event, "request_id"), *call_id);
        assert_eq!(text(event, "method"), "Decide");
        assert_eq!(text(event, "tenant"), "acme");
        assert_eq!(text(event, "integration"), "entra");
        assert_eq!(text(event, "revision"), answer.revision.to_string());
        assert_eq!(text(event, "requester"), "alice");
        assert!(!text(event, "key_id").is_empty());
    }
    let fields = |e: &serde_json::Value| (text(e, "tool"), text(e, "verdict"), text(e, "code"));
    assert_eq!(
        events.iter().map(fields).collect::<Vec<_>>(),
        vec![
            ("get_user".into(), "ALLOW".into(), "POLICY_AUTO".into()),
            (
                "reset_password".into(),
                "PENDING_APPROVAL".into(),
                "APPROVAL_REQUIRED".into()
            ),
            ("drop_db".into(), "DENY".into(), "UNKNOWN_TOOL".into()),
        ]
    );
    let approval = answers[1].approval.as_ref().expect("approval");
    assert_eq!(text(&events[1], "approval_id"), approval.id);
    assert_eq!(
        text(&events[1], "arguments_sha256"),
        approval.arguments_sha256
    );
    let log = server.log.lock().unwrap();
    for line in log.iter() {
        assert!(
            !line.to_string().contains(SECRET),
            "an argument value in the log: {line}"
        );
    }
}

/// The call's own id, as its answer carried it back (`x-request-id`).
fn call_id<T>(response: &tonic::Response<T>) -> String {
    let id = response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id");
    id.to_str().expect("printable").to_owned()
}

/// A server process that is killed if the test ends without stopping it.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // Nothing happens to a process already waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `toolgate serve --log-format FORMAT` with `RUST_LOG=rust_log` on `url`: the agent asks
/// for get_user twice, then the server is stopped with SIGTERM. Every line it logged (it
/// writes what is queued as it stops), and each answer's decision id with the call's
/// `x-request-id`.
async fn two_decides_then_stop(
    url: &str,
    format: &str,
    rust_log: &str,
    agent: &str,
) -> (Vec<String>, Vec<(String, String)>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", format])
        .args(["--metrics-listen", "127.0.0.1:0", "--database-url", url])
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start toolgate");
    let stderr = child.stderr.take().expect("stderr");
    let mut server = KilledOnDrop(child);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // `addr=127.0.0.1:PORT` in text, `"addr":"127.0.0.1:PORT"` in JSON.
            if line.contains("toolgate serving")
                && let Some(at) = line.find("addr")
            {
                let addr: String = line[at + 4..]
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                let _ = addr_tx.send(addr);
            }
            lines.push(line);
        }
        lines
    });
    let addr = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("join")
        .expect("`toolgate serving` with its address");
    let mut client =
        pb::policy_service_client::PolicyServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
    let mut answers = Vec::new();
    for request_id in ["r1", "r2"] {
        let response = client
            .decide(with_key(agent, ask("get_user", "{}", request_id)))
            .await
            .expect("decide");
        let call_id = call_id(&response);
        answers.push((response.into_inner().decision_id, call_id));
    }
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = tokio::task::spawn_blocking(move || server.0.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status}");
    let lines = tokio::task::spawn_blocking(move || reader.join())
        .await
        .expect("join")
        .expect("the log reader");
    assert!(
        lines.iter().any(|l| l.contains("toolgate stopped")),
        "the log was read to its end: {lines:?}"
    );
    (lines, answers)
}

/// In the text format (standard error not a terminal), each Decide's line reads as
/// tracing-subscriber's format would write the event: the time, the call's method and
/// request id, the target, then the fields. The log filter silences the decision log and
/// nothing else.
#[tokio::test]
async fn the_decision_log_as_text_and_silenced_by_the_log_filter() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let url = app.config.database_url.expose().to_owned();

    let (lines, answers) = two_decides_then_stop(&url, "text", "info", &app.agent).await;
    let decisions: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" toolgate::decision: "))
        .collect();
    assert_eq!(decisions.len(), 2, "one line per Decide: {lines:?}");
    for (line, (decision_id, call_id)) in decisions.iter().zip(&answers) {
        let (time, rest) = line.split_once(' ').expect("the time first");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{line}");
        let start = format!(
            r#" INFO rpc{{method=Decide request_id="{call_id}"}}: toolgate::decision: decision decision_id="{decision_id}" tenant="acme" key_id=""#
        );
        assert!(
            rest.starts_with(&start),
            "{line}\nshould start with\n{start}"
        );
        assert!(
            rest.ends_with(
                r#" integration="entra" tool="get_user" verdict="ALLOW" code="POLICY_AUTO" revision=1 requester="alice""#
            ),
            "{line}"
        );
    }

    let (lines, answers) =
        two_decides_then_stop(&url, "json", "info,toolgate::decision=off", &app.agent).await;
    assert_eq!(answers.len(), 2);
    assert!(
        !lines.iter().any(|l| l.contains("toolgate::decision")),
        "silenced: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("toolgate serving")),
        "other lines stay: {lines:?}"
    );
}

/// One statement straight on the test's database, as someone with database access would
/// tamper with it.
async fn tamper(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .expect("tamper");
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .expect("tamper");
    }
}

/// Three Saves in tenant acme: revision 2 changes reset_password, 3 get_user.
async fn three_saves() -> (TestApp, String) {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("reset_password", Policy::Disabled, None).await;
    app.set_one("get_user", Policy::Disabled, None).await;
    let url = app.config.database_url.expose().to_owned();
    (app, url)
}

#[tokio::test]
async fn audit_verify_holds_on_an_untouched_database_and_names_a_tampered_record() {
    let (_app, url) = three_saves().await;
    let (code, out, err) = audit(&url, &["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"acme\": 3 revisions verified"), "{out}");

    // A diff changed after the fact.
    tamper(
        &url,
        "UPDATE tool_changes SET policy = 'auto' WHERE tenant = 'acme' AND revision = 2",
    )
    .await;
    let (code, _, err) = audit(&url, &["verify"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("revision 2 does not match"), "{err}");
}

#[tokio::test]
async fn audit_verify_finds_a_removed_change_and_two_records_swapped() {
    let (_app, url) = three_saves().await;
    tamper(
        &url,
        "DELETE FROM tool_changes WHERE tenant = 'acme' AND revision = 3",
    )
    .await;
    let (code, _, err) = audit(&url, &["verify"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("revision 3 does not match"), "{err}");

    let (_app, url) = three_saves().await;
    // Two revisions' times swapped: each record is intact, the order is not.
    tamper(
        &url,
        "UPDATE revisions SET created_at = CASE revision WHEN 2 THEN \
         (SELECT created_at FROM revisions WHERE tenant = 'acme' AND revision = 3) ELSE \
         (SELECT created_at FROM revisions WHERE tenant = 'acme' AND revision = 2) END \
         WHERE tenant = 'acme' AND revision IN (2, 3)",
    )
    .await;
    let (code, _, err) = audit(&url, &["verify"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("revision 2 does not match"), "{err}");
}

/// An export line's hash as a third party computes it: SHA-256 of the previous hash, a
/// newline, and the line's record, whose text is already canonical and hashed as it stands.
fn exported_hash(previous: &str, line: &str) -> String {
    use sha2::{Digest, Sha256};
    let record = &line[line.find("\"record\":").expect("a record") + 9..line.len() - 1];
    let mut h = Sha256::new();
    h.update(previous.as_bytes());
    h.update(b"\n");
    h.update(record.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The export is enough to re-check the chain without toolgate's database: each line's
/// hash is SHA-256 of the previous hash, a newline, and the record's canonical text.
#[tokio::test]
async fn audit_export_can_be_rechecked_from_its_lines_alone() {
    let (_app, url) = three_saves().await;
    let (code, out, err) = audit(&url, &["export", "--tenant", "acme"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    let mut previous = "0".repeat(64);
    for (line, raw) in lines.iter().zip(out.lines()) {
        assert_eq!(line["previous_hash"], previous.as_str());
        let hash = exported_hash(&previous, raw);
        assert_eq!(line["hash"], hash.as_str());
        previous = hash;
    }
    assert_eq!(lines[1]["record"]["changes"][0]["name"], "reset_password");
    let (_, since, _) = audit(
        &url,
        &["export", "--tenant", "acme", "--since-revision", "2"],
    )
    .await;
    assert_eq!(since.lines().count(), 1);
}

/// `message` with the key and a W3C `traceparent` naming `trace` and the caller's span.
fn traced<T>(key: &str, trace: &str, parent: &str, message: T) -> tonic::Request<T> {
    let mut request = with_key(key, message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    request
}

/// An OTLP/gRPC trace receiver on 127.0.0.1:0 (the collector's own service definition):
/// keeps every span it is sent.
struct OtlpReceiver {
    addr: std::net::SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    arrived: tokio::sync::watch::Receiver<usize>,
}

#[derive(Clone)]
struct Collector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    arrived: std::sync::Arc<tokio::sync::watch::Sender<usize>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let spans: Vec<_> = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect();
        let n = {
            let mut kept = self.spans.lock().unwrap();
            kept.extend(spans);
            kept.len()
        };
        self.arrived.send_replace(n);
        Ok(tonic::Response::new(Default::default()))
    }
}

impl OtlpReceiver {
    async fn start() -> OtlpReceiver {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, arrived) = tokio::sync::watch::channel(0);
        let collector = Collector {
            spans: Default::default(),
            arrived: std::sync::Arc::new(tx),
        };
        let spans = collector.spans.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        OtlpReceiver {
            addr,
            spans,
            arrived,
        }
    }

    /// The spans so far, once `done` holds for them (at most 60 s: the exporter sends in
    /// batches, every few seconds).
    async fn spans_when(
        &self,
        done: impl Fn(&[opentelemetry_proto::tonic::trace::v1::Span]) -> bool,
    ) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        let mut arrived = self.arrived.clone();
        let found = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                let spans = self.spans.lock().unwrap().clone();
                if done(&spans) {
                    return spans;
                }
                arrived.changed().await.expect("receiver running");
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            let names: Vec<String> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect();
            panic!("the spans waited for never arrived; got {names:?}")
        })
    }
}

/// With `--otlp-endpoint`, each RPC is a span named by its method that continues the
/// caller's `traceparent`, with its store calls as child spans, exported over OTLP.
#[tokio::test]
async fn traces_continue_the_callers_traceparent_and_reach_an_otlp_receiver() {
    let receiver = OtlpReceiver::start().await;
    let db = fresh_database().await;
    let config = toolgate::config::Config {
        database_url: toolgate::config::DatabaseUrl::new(db.url.clone()),
        ..Default::default()
    };
    let store = toolgate::server::open_store(&config).await.expect("store");
    let admin = mint(&store, "acme", Role::Admin).await;
    let agent = mint(&store, "acme", Role::Agent).await;
    drop(store);
    let endpoint = format!("http://{}", receiver.addr);
    let server = Binary::serve_with(&db.url, &["--otlp-endpoint", &endpoint]).await;
    let mut client =
        pb::policy_service_client::PolicyServiceClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
    const CONNECT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CONNECT_PARENT: &str = "00f067aa0ba902b7";
    const DECIDE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const DECIDE_PARENT: &str = "b7ad6b7169203331";
    let connect = pb::ConnectIntegrationRequest {
        integration_id: "entra".into(),
        kind: "entra_id".into(),
        display_name: String::new(),
        tools: vec![pb::ToolDefinition {
            name: "get_user".into(),
            description: String::new(),
            input_schema_json: String::new(),
            annotations: None,
        }],
        comment: String::new(),
    };
    client
        .connect_integration(traced(&admin, CONNECT_TRACE, CONNECT_PARENT, connect))
        .await
        .expect("connect");
    client
        .decide(traced(
            &agent,
            DECIDE_TRACE,
            DECIDE_PARENT,
            ask("get_user", "{}", "r1"),
        ))
        .await
        .expect("decide");

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let rpc = |spans: &[opentelemetry_proto::tonic::trace::v1::Span], trace: &str, name: &str| {
        spans
            .iter()
            .find(|s| hex(&s.trace_id) == trace && s.name == name)
            .cloned()
    };
    let spans = receiver
        .spans_when(|spans| {
            rpc(
                spans,
                CONNECT_TRACE,
                "/toolgate.v1.PolicyService/ConnectIntegration",
            )
            .is_some()
                && rpc(spans, DECIDE_TRACE, "/toolgate.v1.PolicyService/Decide").is_some()
                && spans.iter().any(|s| s.name == "store")
        })
        .await;
    let connect = rpc(
        &spans,
        CONNECT_TRACE,
        "/toolgate.v1.PolicyService/ConnectIntegration",
    )
    .unwrap();
    assert_eq!(
        hex(&connect.parent_span_id),
        CONNECT_PARENT,
        "the caller's span is the parent"
    );
    let decide = rpc(&spans, DECIDE_TRACE, "/toolgate.v1.PolicyService/Decide").unwrap();
    assert_eq!(hex(&decide.parent_span_id), DECIDE_PARENT);
    let inside: Vec<&opentelemetry_proto::tonic::trace::v1::Span> = spans
        .iter()
        .filter(|s| s.name == "store" && s.parent_span_id == connect.span_id)
        .collect();
    assert!(
        !inside.is_empty() && inside.iter().all(|s| hex(&s.trace_id) == CONNECT_TRACE),
        "the Save's store calls are spans inside it: {spans:#?}"
    );
}

/// Six approval events in tenant acme, one call at a time, so their places in the chain are
/// known: 1-3 an approval asked for, approved and used; 4-5 one asked for and denied; 6 one
/// still pending.
async fn six_approval_events() -> (TestApp, String) {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, None)
        .await;
    let pending = |request: &'static str| {
        let app = &app;
        async move {
            let answer = app
                .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, request))
                .await;
            assert_eq!(verdict(&answer).0, Verdict::PendingApproval);
            answer.approval.expect("approval").id
        }
    };
    let first = pending("r1").await;
    app.submit(&first, pb::ApproverRole::Technician, "tech", true)
        .await
        .expect("approve");
    let used = app
        .decide_ok(with_approval(
            ask("reset_password", r#"{"user":"bob"}"#, "r1-run"),
            &first,
        ))
        .await;
    assert_eq!(verdict(&used).0, Verdict::Allow);
    let second = pending("r2").await;
    app.submit(&second, pb::ApproverRole::Technician, "tech", false)
        .await
        .expect("deny");
    pending("r3").await;
    let url = app.config.database_url.expose().to_owned();
    (app, url)
}

/// On a fresh database of six approval events, `sql` run as someone with database access
/// would; then `audit verify` must exit 1 naming `record`.
async fn after_tampering_verify_names(sql: &str, record: &str) {
    let (_app, url) = six_approval_events().await;
    tamper(&url, sql).await;
    verify_names(&url, record).await;
}

/// Runs `audit verify` on a tampered database: exit 1, and standard error names `record`.
async fn verify_names(url: &str, record: &str) {
    let (code, out, err) = audit(url, &["verify"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(record), "expected {record:?} in: {err}");
}

#[tokio::test]
async fn approval_events_form_a_chain_that_audit_verify_checks() {
    let (_app, url) = six_approval_events().await;
    let (code, out, err) = audit(&url, &["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 approval events verified"), "{out}");

    // One event edited after the fact: the denial made an approval.
    tamper(
        &url,
        "UPDATE approval_events SET state = 'approved' WHERE tenant = 'acme' AND state = 'denied'",
    )
    .await;
    verify_names(&url, "approval event 5 does not match").await;

    // The approval's head edited: someone else asked for it.
    after_tampering_verify_names(
        "UPDATE approvals SET requester_id = 'mallory' WHERE tenant = 'acme' AND request_id = 'r2'",
        "approval event 4 does not match",
    )
    .await;

    // The arguments an approver saw, edited: the chain covers their hash, which no longer
    // matches them.
    after_tampering_verify_names(
        "UPDATE approvals SET arguments_json = '{\"user\":\"mallory\"}' \
         WHERE tenant = 'acme' AND request_id = 'r3'",
        "stored arguments are not the ones",
    )
    .await;
}

#[tokio::test]
async fn audit_verify_finds_a_deleted_approval_event_and_two_reordered() {
    // An event deleted from the middle of the chain: the approval's use.
    after_tampering_verify_names(
        "DELETE FROM approval_events WHERE tenant = 'acme' AND state = 'consumed'",
        "approval event 3 is missing",
    )
    .await;

    // The last event deleted: the chain's head still counts it.
    after_tampering_verify_names(
        "DELETE FROM approval_events WHERE tenant = 'acme' AND chain_seq = 6",
        "approval event 6 is missing (the chain's head is at 6)",
    )
    .await;

    // Two events swapped in the chain: each is intact, the order is not.
    after_tampering_verify_names(
        "UPDATE approval_events SET chain_seq = CASE chain_seq WHEN 2 THEN 3 ELSE 2 END \
         WHERE tenant = 'acme' AND chain_seq IN (2, 3)",
        "approval event 2 does not match",
    )
    .await;

    // An event inserted by hand, outside the chain: the pending approval approved.
    after_tampering_verify_names(
        "INSERT INTO approval_events (tenant, approval_id, version, origin, state, \
         required_roles, consumed_by_request, steps, created_at) \
         SELECT tenant, approval_id, version + 1, origin, 'approved', required_roles, NULL, \
         steps, created_at FROM approval_events WHERE tenant = 'acme' AND chain_seq = 6",
        "1 approval events are outside the chain, but 0 were",
    )
    .await;
}

/// The approval events' lines of an export are re-checked with SHA-256 alone, as the
/// revisions' are.
#[tokio::test]
async fn approval_events_in_an_export_can_be_rechecked_from_their_lines_alone() {
    let (_app, url) = six_approval_events().await;
    let (code, out, err) = audit(&url, &["export", "--tenant", "acme"]).await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(r#"{"chain":"approval_events""#))
        .collect();
    assert_eq!(events.len(), 6, "{out}");
    let mut previous = "0".repeat(64);
    for (n, raw) in events.iter().enumerate() {
        let line: serde_json::Value = serde_json::from_str(raw).expect("a JSON line");
        assert_eq!(line["seq"], n as u64 + 1);
        assert_eq!(line["record"]["seq"], n as u64 + 1);
        assert_eq!(line["previous_hash"], previous.as_str());
        let hash = exported_hash(&previous, raw);
        assert_eq!(line["hash"], hash.as_str());
        previous = hash;
    }
    let states: Vec<&str> = events
        .iter()
        .map(|raw| {
            let line: serde_json::Value = serde_json::from_str(raw).unwrap();
            match line["record"]["state"].as_str() {
                Some("pending") => "pending",
                Some("approved") => "approved",
                Some("consumed") => "consumed",
                Some("denied") => "denied",
                other => panic!("state {other:?}"),
            }
        })
        .collect();
    assert_eq!(
        states,
        [
            "pending", "approved", "consumed", "pending", "denied", "pending"
        ]
    );
    // The arguments themselves are not in the record, only their hash.
    assert!(!out.contains("bob"), "{out}");
}
