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
    // The database exists (as `toolgate serve` leaves it): key commands create none.
    drop(
        toolgate::store::open(&url, &Default::default())
            .await
            .expect("open"),
    );
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
    // Times are dates; the database used is named on standard error.
    let row = listed
        .lines()
        .find(|l| l.contains("acme"))
        .expect("the key's row");
    assert!(
        row.split_whitespace()
            .any(|w| humantime::parse_rfc3339(w).is_ok()),
        "{row}"
    );
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("database: "),
        "{:?}",
        list.stderr
    );
    let json = std::process::Command::new(bin)
        .args(["keys", "list", "--output", "json", "--database-url", &url])
        .output()
        .unwrap();
    let keys: Vec<serde_json::Value> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["tenant"], "acme");
    assert_eq!(keys[0]["role"], "admin");
    assert!(keys[0]["revoked_at"].is_null());
    assert!(humantime::parse_rfc3339(keys[0]["created_at"].as_str().unwrap()).is_ok());
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

/// A PostgreSQL that is not there is named, with the driver's reason, not "pool timed out".
#[test]
fn an_unreachable_postgres_says_why() {
    // Port 1 on the loopback address: nothing listens, the connection is refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args([
            "serve",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/toolgate",
        ])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("pool timed out"), "{err}");
}

/// The real binary, serving on ports it chose, with its JSON log read as it runs.
struct Process {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The log reader; it ends when the process's standard error closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    async fn start(url: &str, extra: &[&str]) -> Process {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--database-url",
                url,
            ])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start toolgate");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "toolgate serving"
                    && let Some(addr) = v["addr"].as_str()
                {
                    let _ = addr_tx.send(addr.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = tokio::task::spawn_blocking(move || {
            addr_rx.recv_timeout(std::time::Duration::from_secs(30))
        })
        .await
        .unwrap()
        .expect("`toolgate serving` with its address in the log")
        .parse()
        .unwrap();
        Process {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    /// Waits until every line the process wrote has been read (after it exited: its last
    /// lines are written as it stops).
    async fn read_to_end(&mut self) {
        if let Some(reader) = self.reader.take() {
            tokio::task::spawn_blocking(move || reader.join())
                .await
                .unwrap()
                .unwrap();
        }
    }

    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_turns_health_not_serving_then_finishes_calls_ends_streams_and_exits_zero() {
    use tonic::Code;
    let db = fresh_database().await;
    let store = toolgate::store::open(&db.url, &Default::default())
        .await
        .unwrap();
    let admin = mint(&store, "acme", toolgate::policy::Role::Admin).await;
    let agent = mint(&store, "acme", toolgate::policy::Role::Agent).await;
    drop(store);
    // The delay is the window in which the server, already NOT_SERVING, still serves.
    let mut server = Process::start(
        &db.url,
        &[
            "--shutdown-delay",
            "5s",
            "--shutdown-grace",
            "10s",
            "--min-revision-wait",
            "60s",
        ],
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        toolgate::proto::v1::policy_service_client::PolicyServiceClient::new(channel.clone());
    let connect = pb::ConnectIntegrationRequest {
        integration_id: "entra".into(),
        kind: "entra_id".into(),
        display_name: "Entra ID".into(),
        tools: vec![pb::ToolDefinition {
            name: "get_user".into(),
            description: "read a user".into(),
            input_schema_json: "{}".into(),
            annotations: None,
        }],
        comment: String::new(),
    };
    let revision = client
        .connect_integration(with_key(&admin, connect))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut health = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = health.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let mut watcher = client
        .watch_config(with_key(
            &agent,
            pb::WatchConfigRequest {
                since_revision: Some(revision),
                integration_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // In flight across the SIGTERM: waits for a revision that is saved only afterwards.
    let mut held = ask("get_user", "{}", "held");
    held.min_revision = Some(revision + 1);
    let mut held_client = client.clone();
    let held = tokio::spawn(async move { held_client.decide(with_key(&agent, held)).await });

    server.signal("-TERM");
    let next = health.message().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Not serving, but not gone: calls still succeed until the delay is over.
    let saved = client
        .set_policy(with_key(
            &admin,
            pb::SetPolicyRequest {
                changes: vec![change("entra", "get_user", Policy::Disabled, None)],
                expected_revision: Some(revision),
                comment: String::new(),
            },
        ))
        .await
        .expect("a save while NOT_SERVING")
        .into_inner();
    let answered = held.await.unwrap().expect("the in-flight call completes");
    assert_eq!(answered.into_inner().revision, saved.revision);
    // The watcher gets the save, then UNAVAILABLE so it resumes elsewhere.
    let pushed = watcher.message().await.unwrap().unwrap();
    assert_eq!(pushed.revision, saved.revision);
    let ended = watcher.message().await.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("since_revision"));
    // The health watch ends as well (cleanly, after NOT_SERVING), rather than holding the
    // shutdown until the grace period runs out.
    let health_end = health.message().await;
    assert!(matches!(health_end, Ok(None)), "{health_end:?}");
    let pid = server.child.id().to_string();
    let mut child = std::mem::replace(
        &mut server.child,
        std::process::Command::new("true").spawn().unwrap(),
    );
    let exited = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await;
    let Ok(status) = exited else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        panic!("still running 30 s after SIGTERM (grace 10 s)");
    };
    let status = status.unwrap().unwrap();
    server.read_to_end().await;
    assert_eq!(status.code(), Some(0), "{:?}", server.log.lock().unwrap());
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("toolgate stopped"), "{log}");
    assert!(!log.contains("grace period over"), "{log}");
}

#[tokio::test]
async fn a_bootstrap_admin_key_is_created_once_and_a_revoked_one_stays_revoked() {
    let bin = env!("CARGO_BIN_EXE_toolgate");
    let out = std::process::Command::new(bin)
        .args(["keys", "generate", "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let value = stderr.lines().last().unwrap().to_owned();
    assert!(
        value.starts_with("acme:k") && !value.contains(&token),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "the token is on stdout only");

    let admin_call = |app: &TestApp| {
        let mut client = app.client.clone();
        let token = token.clone();
        async move {
            client
                .list_notification_channels(with_key(
                    &token,
                    pb::ListNotificationChannelsRequest {},
                ))
                .await
        }
    };
    let app = spawn_app_with(|c| c.bootstrap_admin_key = Some(value.clone())).await;
    admin_call(&app)
        .await
        .expect("the bootstrap key is an admin key");
    // A second start finds it made.
    let app = app.restart().await;
    admin_call(&app).await.expect("still the same key");
    let id = value.split(':').nth(1).unwrap().to_owned();
    let store = toolgate::server::open_store(&app.config)
        .await
        .expect("store");
    assert!(
        toolgate::store::Store::revoke_key(&store, &id)
            .await
            .expect("revoke")
    );
    drop(store);
    let app = app.restart().await;
    let refused = admin_call(&app).await.expect_err("revoked stays revoked");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}
