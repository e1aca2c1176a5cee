//! The operator CLI: the real binary against the real server, as an operator runs it.

use crate::helpers::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use toolgate::proto::v1::Policy;

/// Runs `toolgate ARGS` against `app` with `key`; its exit code, stdout and stderr.
async fn toolgate(app: &TestApp, key: &str, args: &[&str]) -> (i32, String, String) {
    toolgate_env(app, key, &[], args).await
}

/// [`toolgate`] with more environment variables.
async fn toolgate_env(
    app: &TestApp,
    key: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_toolgate"));
    command
        .args(args)
        .envs(env.iter().copied())
        .env("TOOLGATE_SERVER", format!("http://{}", app.addr))
        .env("TOOLGATE_API_KEY", key)
        .env_remove("RUST_LOG");
    let output: Output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run toolgate");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    let (stdout, stderr) = (text(output.stdout), text(output.stderr));
    // The key is never printed, whatever happened.
    assert!(
        !stdout.contains(key) && !stderr.contains(key),
        "{stdout}{stderr}"
    );
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

#[tokio::test]
async fn tools_list_as_a_table_and_as_protobuf_json() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let (code, table, _) = toolgate(&app, &app.admin, &["tools", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        table.lines().next().unwrap().starts_with("integration"),
        "{table}"
    );
    assert!(
        table.contains("get_user") && table.contains("auto"),
        "{table}"
    );

    let (code, json, _) = toolgate(&app, &app.admin, &["tools", "list", "--output", "json"]).await;
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON document");
    let tools = value["tools"].as_array().expect("tools");
    let get_user = tools
        .iter()
        .find(|t| t["name"] == "get_user")
        .expect("get_user");
    assert_eq!(get_user["policy"], "POLICY_AUTO");
    assert_eq!(get_user["integrationId"], "entra");
}

#[tokio::test]
async fn policy_set_changes_the_tool_and_a_stale_expected_revision_exits_1() {
    let app = spawn_app().await;
    let connected = app.connect_sample().await;
    let args = [
        "policy",
        "set",
        "entra",
        "get_user",
        "disabled",
        "--comment",
        "ticket 4711",
        "--output",
        "json",
    ];
    let (code, out, err) = toolgate(&app, &app.admin, &args).await;
    assert_eq!(code, 0, "{out}");
    let saved: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert!(
        saved["revision"].is_string(),
        "uint64 is a string in JSON: {saved}"
    );
    assert!(err.is_empty(), "{err}");
    let (_, table, _) = toolgate(&app, &app.admin, &["tools", "list", "--include-disabled"]).await;
    let line = table
        .lines()
        .find(|l| l.contains("get_user"))
        .expect("listed");
    assert!(line.contains("disabled"), "{line}");

    let stale = connected.revision.to_string();
    let args = [
        "policy",
        "set",
        "entra",
        "get_user",
        "auto",
        "--expected-revision",
        &stale,
    ];
    let (code, _, err) = toolgate(&app, &app.admin, &args).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: FAILED_PRECONDITION: "), "{err}");
}

#[tokio::test]
async fn approvals_list_show_and_approve() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    app.set_one("add_user_to_group", Policy::ApprovalNeeded, None)
        .await;
    let asked = app
        .decide_ok(ask("add_user_to_group", r#"{"user":"bob"}"#, "r1"))
        .await;
    let id = asked.approval.expect("approval").id;

    let (code, list, _) = toolgate(
        &app,
        &app.approver,
        &["approvals", "list", "--state", "pending"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(list.contains(&id) && list.contains("pending"), "{list}");
    let (code, shown, _) = toolgate(&app, &app.approver, &["approvals", "show", &id]).await;
    assert_eq!(code, 0);
    assert!(shown.contains(r#"{"user":"bob"}"#), "{shown}");

    let args = [
        "approvals",
        "approve",
        &id,
        "--as",
        "tech",
        "--output",
        "json",
    ];
    let (code, out, err) = toolgate(&app, &app.approver, &args).await;
    assert_eq!(code, 0, "{err}");
    let approval: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(approval["state"], "APPROVAL_STATE_APPROVED");
    // Approving one's own request is refused by the same rules as SubmitApproval.
    let args = ["approvals", "approve", &id, "--as", "alice"];
    let (code, _, err) = toolgate(&app, &app.approver, &args).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}

#[tokio::test]
async fn bad_usage_exits_2_and_a_bad_key_exits_1_unauthenticated() {
    let app = spawn_app().await;
    let (code, _, _) = toolgate(&app, &app.admin, &["policy", "set", "entra"]).await;
    assert_eq!(code, 2);
    let (code, _, _) = toolgate(&app, &app.admin, &["tools", "list", "--output", "yaml"]).await;
    assert_eq!(code, 2);
    let (code, _, err) = toolgate(&app, &app.admin, &["tools", "list", "--server", "nohost"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: --server"), "{err}");
    // Certificates with an http:// server would send the key in the clear: refused.
    let args = ["tools", "list", "--ca-cert", "ca.crt"];
    let (code, _, err) = toolgate(&app, &app.admin, &args).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("https://"), "{err}");
    let bad = "tg_k0000000000000000_".to_owned() + &"0".repeat(64);
    let (code, _, err) = toolgate(&app, &bad, &["tools", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: UNAUTHENTICATED: "), "{err}");
}

#[tokio::test]
async fn integrations_connect_and_people_upsert_from_protobuf_json_files() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let connect = dir.path().join("connect.json");
    std::fs::write(
        &connect,
        r#"{"integrationId":"jira","kind":"jira","displayName":"Jira",
            "tools":[{"name":"get_issue"},{"name":"delete_issue",
            "annotations":{"destructiveHint":true}}]}"#,
    )
    .unwrap();
    let path = connect.to_str().unwrap();
    let (code, out, err) = toolgate(&app, &app.admin, &["integrations", "connect", path]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("revision 1"), "{out}");
    let delete = out
        .lines()
        .find(|l| l.contains("delete_issue"))
        .expect("listed");
    assert!(delete.contains("approval_needed"), "{delete}");

    let people = dir.path().join("people.json");
    std::fs::write(
        &people,
        r#"{"people":[{"id":"ann","displayName":"Ann","technician":true}]}"#,
    )
    .unwrap();
    let path = people.to_str().unwrap();
    let (code, out, _) = toolgate(&app, &app.admin, &["people", "upsert", path]).await;
    assert_eq!((code, out.trim()), (0, "upserted 1"));

    std::fs::write(&people, r#"{"people":[{"idd":"x"}]}"#).unwrap();
    let (code, _, err) = toolgate(&app, &app.admin, &["people", "upsert", path]).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn watch_config_prints_a_json_line_per_event() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["watch", "config"])
        .env("TOOLGATE_SERVER", format!("http://{}", app.addr))
        .env("TOOLGATE_API_KEY", &app.admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run toolgate watch");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = async |lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("a line in time")
            .expect("the watch runs");
        serde_json::from_str::<serde_json::Value>(&line).expect("a JSON line")
    };
    let first = next(&mut lines).await;
    assert!(first.get("snapshot").is_some(), "{first}");
    let saved = app.set_one("get_user", Policy::Disabled, None).await;
    let revision = saved.revision.to_string();
    // Lines (heartbeats may come first) until this Save's change; uint64 is a JSON string.
    let change = loop {
        let event = next(&mut lines).await;
        if event.get("change").is_some() && event["revision"] == revision.as_str() {
            break event;
        }
    };
    let upserted = &change["change"]["upserted"][0];
    assert_eq!(upserted["name"], "get_user", "{change}");
    assert_eq!(upserted["policy"], "POLICY_DISABLED");
    child.kill().expect("stop the watch");
    let _ = child.wait();
}

#[tokio::test]
async fn over_mutual_tls_with_the_ca_and_a_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let issue = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue("127.0.0.1");
    let (client_cert, client_key) = issue("operator");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let files = toolgate::config::TlsFiles {
        cert: path("tls.crt", &server_cert).into(),
        key: path("tls.key", &server_key).into(),
        client_ca: Some(path("ca.crt", &ca.pem()).into()),
    };
    let (ca_file, cert_file, key_file) = (
        path("ca.crt", &ca.pem()),
        path("client.crt", &client_cert),
        path("client.key", &client_key),
    );
    let app = spawn_app_with(|c| c.tls = Some(files)).await;
    let server = format!("https://{}", app.addr);
    let args = [
        "tools",
        "list",
        "--server",
        &server,
        "--ca-cert",
        &ca_file,
        "--client-cert",
        &cert_file,
        "--client-key",
        &key_file,
    ];
    let (code, out, err) = toolgate(&app, &app.agent, &args).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("integration"), "{out}");
    // Without a client certificate the server does not serve it.
    let args = ["tools", "list", "--server", &server, "--ca-cert", &ca_file];
    let (code, _, err) = toolgate(&app, &app.agent, &args).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}

#[tokio::test]
async fn revisions_list_shows_the_comment_and_rollback_restores() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let args = [
        "policy",
        "set",
        "entra",
        "reset_password",
        "disabled",
        "--comment",
        "ticket 4711",
    ];
    let (code, _, err) = toolgate(&app, &app.admin, &args).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        toolgate(&app, &app.admin, &["rollback", "1", "--comment", "undo"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("revision 3"), "{out}");
    assert!(out.contains("reset_password"), "{out}");
    let (code, table, _) = toolgate(&app, &app.admin, &["revisions", "list"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("revision"), "{table}");
    assert!(
        lines[1].starts_with("3 ") && lines[1].contains("rollback") && lines[1].ends_with("undo"),
        "{table}"
    );
    assert!(
        lines[2].contains("entra/reset_password: disabled -> approval_needed"),
        "{table}"
    );
    assert!(table.contains("ticket 4711"), "{table}");
    let (code, json, _) = toolgate(
        &app,
        &app.admin,
        &["revisions", "list", "--output", "json", "--page-size", "2"],
    )
    .await;
    assert_eq!(code, 0);
    let pages: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(pages.len(), 2, "every page is printed: {json}");
    assert_eq!(pages[0]["revisions"][0]["kind"], "REVISION_KIND_ROLLBACK");
    let (code, _, err) = toolgate(&app, &app.admin, &["rollback", "9"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: INVALID_ARGUMENT: to_revision"),
        "{err}"
    );
}

/// Policies kept in a file: export, edit, see the difference, apply it as one Save; a Save
/// in between is a conflict.
#[tokio::test]
async fn policy_export_then_apply_a_file_as_one_save() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let (code, exported, err) = toolgate(&app, &app.admin, &["policy", "export"]).await;
    assert_eq!(code, 0, "{err}");
    let mut file: serde_json::Value = serde_json::from_str(&exported).expect("a policy file");
    assert_eq!(file["revision"], 1);
    let policies = file["policies"].as_array_mut().expect("policies");
    assert_eq!(policies.len(), 5);
    for p in policies.iter_mut() {
        match p["tool_name"].as_str().unwrap() {
            "get_user" => p["policy"] = "disabled".into(),
            "reset_password" => p["manager_approval"] = true.into(),
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let path = path.to_str().unwrap();

    let (code, plan, _) = toolgate(
        &app,
        &app.admin,
        &["policy", "apply", "-f", path, "--dry-run"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(plan.contains("entra/get_user: auto -> disabled"), "{plan}");
    assert!(
        plan.contains("entra/reset_password: approval_needed -> approval_needed +manager"),
        "{plan}"
    );
    assert!(plan.contains("2 changes; not applied"), "{plan}");
    let tools = app.list_tools(&app.admin, true).await.expect("list");
    assert_eq!(tools.revision, 1, "a dry run changes nothing");

    let args = ["policy", "apply", "-f", path, "--comment", "from git"];
    let (code, out, err) = toolgate(&app, &app.admin, &args).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied as revision 2"), "{out}");
    let (_, again, _) = toolgate(&app, &app.admin, &["policy", "apply", "-f", path]).await;
    assert!(again.contains("no changes (revision 2)"), "{again}");

    // A tool the server does not have: bad usage, nothing applied.
    file["policies"][0]["tool_name"] = "no_such_tool".into();
    std::fs::write(path, file.to_string()).unwrap();
    let (code, _, err) = toolgate(&app, &app.admin, &["policy", "apply", "-f", path]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no tool \"no_such_tool\""), "{err}");
    // The wrong role is the server's refusal: exit 1.
    let (code, _, err) = toolgate(&app, &app.agent, &["policy", "export"]).await;
    assert_eq!(
        (code, err.starts_with("error: PERMISSION_DENIED")),
        (1, true),
        "{err}"
    );
}

#[tokio::test]
async fn channels_and_deliveries_from_the_command_line() {
    use crate::receiver::{Answer, Receiver, SECRET};
    let receiver = Receiver::start(|_, _| Answer::Status(500)).await;
    let app = spawn_app_with(|c| c.delivery_max_age = Duration::from_millis(300)).await;
    app.connect_sample().await;
    app.sample_people().await;
    let secret = [("TOOLGATE_CHANNEL_SECRET", SECRET)];
    let set = ["channels", "set", "ops", "--url", &receiver.url];
    let (code, out, err) = toolgate_env(&app, &app.admin, &secret, &set).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ops") && out.contains("webhook"), "{out}");
    let (code, out, _) =
        toolgate(&app, &app.admin, &["channels", "list", "--output", "json"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("whsec_"), "secrets are never shown: {out}");
    let listed: serde_json::Value = serde_json::from_str(out.trim()).expect("one channel");
    assert_eq!(listed["url"], receiver.url.as_str());

    let asked = app
        .decide_ok(ask("add_user_to_group", r#"{"user":"bob"}"#, "r1"))
        .await;
    let approval = asked.approval.expect("approval").id;
    // The receiver refuses, the maximum age passes: failed.
    let failed = loop {
        let (code, out, err) = toolgate(
            &app,
            &app.admin,
            &[
                "deliveries",
                "list",
                "--state",
                "failed",
                "--output",
                "json",
            ],
        )
        .await;
        assert_eq!(code, 0, "{err}");
        if let Some(line) = out.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).expect("a delivery");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(failed["approvalId"], approval.as_str());
    assert_eq!(failed["eventType"], "approval.requested");
    assert!(
        failed["lastError"].as_str().unwrap().contains("HTTP 500"),
        "{failed}"
    );
    let (code, table, _) = toolgate(&app, &app.admin, &["deliveries", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        table.lines().next().unwrap().starts_with("delivery"),
        "{table}"
    );
    assert!(
        table.contains("failed") && table.contains("HTTP 500"),
        "{table}"
    );

    receiver.set_script(|_, _| Answer::Status(204));
    let id = failed["id"].as_str().unwrap();
    let (code, out, err) = toolgate(&app, &app.admin, &["deliveries", "retry", id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pending"), "{out}");
    let (code, _, err) = toolgate(&app, &app.admin, &["deliveries", "retry", "dlv_nope"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    let (code, out, _) = toolgate(&app, &app.admin, &["channels", "delete", "ops"]).await;
    assert_eq!((code, out.trim()), (0, "deleted ops"));
}

#[tokio::test]
async fn key_commands_never_create_a_database() {
    // SQLite only (this module runs in the SQLite suite): a PostgreSQL database must exist
    // to be connected to at all.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("elsewhere.db");
    let url = format!("sqlite://{}", file.display());
    let bin = env!("CARGO_BIN_EXE_toolgate");
    for args in [
        vec!["keys", "create", "--tenant", "acme", "--role", "admin"],
        vec!["keys", "list"],
        vec!["keys", "revoke", "k1"],
        vec!["audit", "verify"],
    ] {
        let out = std::process::Command::new(bin)
            .args(&args)
            .args(["--database-url", &url])
            .env_remove("TOOLGATE_DATABASE_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("no such file"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("elsewhere.db"),
            "{args:?} names the database: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: no key printed");
        assert!(!file.exists(), "{args:?} created {}", file.display());
    }
}

#[tokio::test]
async fn a_slack_channel_from_the_command_line() {
    use crate::slack_api::{BOT_TOKEN, SIGNING_SECRET};
    let app = spawn_app().await;
    let set = ["channels", "set", "slack", "--slack-channel", "C0OPS"];
    // The signing secret is required, and is read from the environment only.
    let token_only = [("TOOLGATE_CHANNEL_SECRET", BOT_TOKEN)];
    let (code, _, err) = toolgate_env(&app, &app.admin, &token_only, &set).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("channel.slack_signing_secret"), "{err}");
    let both = [
        ("TOOLGATE_CHANNEL_SECRET", BOT_TOKEN),
        ("TOOLGATE_SLACK_SIGNING_SECRET", SIGNING_SECRET),
    ];
    let (code, out, err) = toolgate_env(&app, &app.admin, &both, &set).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("slack"), "{out}");
    let (code, out, _) =
        toolgate(&app, &app.admin, &["channels", "list", "--output", "json"]).await;
    assert_eq!(code, 0);
    assert!(
        !out.contains(BOT_TOKEN) && !out.contains(SIGNING_SECRET),
        "secrets are never shown: {out}"
    );
    let listed: serde_json::Value = serde_json::from_str(out.trim()).expect("one channel");
    assert_eq!(listed["kind"], "CHANNEL_KIND_SLACK");
    assert_eq!(listed["slackChannel"], "C0OPS");
}
