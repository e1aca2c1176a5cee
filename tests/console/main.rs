//! The web console in a real headless browser (Debian's Chromium, driven through
//! ChromeDriver's WebDriver protocol), against the real server on 127.0.0.1:0.
//!
//! Built only with `--features browser-tests` (`.ci/run` installs Chromium and runs it);
//! without Chromium and ChromeDriver it fails, saying so.

const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

#[path = "../suite/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use helpers::*;
use serde_json::{Value, json};
use std::time::Duration;
use toolgate::proto::v1 as pb;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// ChromeDriver, running while this lives.
struct Driver {
    process: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let process = std::process::Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the console test needs ChromeDriver ({binary}: {e}); install Debian's \
                     chromium and chromium-driver, as .ci/run does"
                )
            });
        let driver = Driver {
            process,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // ChromeDriver says when it is ready: /status answers `ready: true`.
        loop {
            if let Ok(r) = client.get(format!("{}/status", driver.url)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ChromeDriver never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One browser session.
struct Browser {
    client: reqwest::Client,
    session: String,
}

impl Browser {
    async fn open(driver: &Driver) -> Browser {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let client = reqwest::Client::new();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let answer: Value = client
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await
            .expect("ChromeDriver answers")
            .json()
            .await
            .expect("JSON");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session (is Chromium at {binary}?): {answer}"))
            .to_owned();
        Browser {
            client,
            session: format!("{}/session/{session}", driver.url),
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("ChromeDriver answers")
            .json()
            .await
            .expect("JSON");
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The element `css` names, once there is one that is displayed (at most 30 s): the
    /// page updates as its calls and streams answer, and the DOM is the only way to see it.
    async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .command(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = found[ELEMENT].as_str() {
                let shown = self
                    .command(
                        reqwest::Method::GET,
                        &format!("/element/{id}/displayed"),
                        None,
                    )
                    .await;
                if shown == true {
                    return id.to_owned();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never appeared ({found}); the page says: {}",
                self.text_of("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn text_of(&self, css: &str) -> String {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits (at most 30 s) until the text of `css` holds `part`.
    async fn wait_text(&self, css: &str, part: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text_of(css).await;
            if text.contains(part) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never said {part:?}; it says {text:?}; the page: {}",
                self.text_of("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the policy select of `tool` shows `policy`.
    async fn wait_policy(&self, tool: &str, policy: &str) {
        let css = format!("select[data-tool='{tool}']");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let value = self
                .script(
                    "const e = document.querySelector(arguments[0]); return e ? e.value : null;",
                    json!([css]),
                )
                .await;
            if value == policy {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{tool} never showed {policy}; it shows {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn sign_in(&self, key: &str) {
        self.type_into("#key", key).await;
        // The form is submitted from the keyboard: Enter in the key field.
        let id = self.find("#key").await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": "\u{E007}"})),
        )
        .await;
    }

    /// A PNG of the window, kept in a folder of its own under the temporary directory, so a
    /// person can look at what the test saw; returns its path.
    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a screenshot"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = tempfile::Builder::new()
            .prefix("toolgate-console-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    async fn close(self) {
        self.command(reqwest::Method::DELETE, "", None).await;
    }
}

async fn policy_of(app: &TestApp, tool: &str) -> i32 {
    app.list_tools(&app.admin, true)
        .await
        .expect("list tools")
        .tools
        .into_iter()
        .find(|t| t.name == tool)
        .expect("the tool")
        .policy
}

#[tokio::test]
async fn an_admin_sets_policies_sees_others_saves_live_and_is_told_of_a_conflict() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let driver = Driver::start().await;
    let browser = Browser::open(&driver).await;
    browser.go(&format!("http://{}/", app.http_addr)).await;

    // A wrong key is refused, and says so.
    browser.sign_in("tg_wrong_key").await;
    browser.wait_text("#sign-in-error", "refused").await;

    browser.sign_in(&app.admin).await;
    browser
        .find("select[data-tool='entra/reset_password']")
        .await;
    // A second window, open on the same page: it sees the first one's Save without a reload.
    let second = Browser::open(&driver).await;
    second.go(&format!("http://{}/", app.http_addr)).await;
    second.sign_in(&app.admin).await;
    second.wait_text("#live", "revision 1").await;
    let page = browser.text_of("#integrations").await;
    assert!(
        page.contains("name's verb: "),
        "the seeded source and reason are shown: {page}"
    );
    let url = browser
        .script("return window.location.href;", json!([]))
        .await;
    assert!(
        !url.as_str().unwrap().contains(&app.admin),
        "the key is never in the URL"
    );

    // One Save of two edits: one revision with both.
    browser
        .click("select[data-tool='entra/get_user'] option[value='POLICY_DISABLED']")
        .await;
    browser
        .click("select[data-tool='entra/add_user_to_group'] option[value='POLICY_APPROVAL_NEEDED']")
        .await;
    browser
        .click("input[data-manager='entra/add_user_to_group']")
        .await;
    browser.type_into("#save-comment", "ticket 4711").await;
    browser.click("#save").await;
    browser.wait_text("#status", "Saved revision 2").await;
    second
        .wait_policy("entra/get_user", "POLICY_DISABLED")
        .await;
    second
        .wait_policy("entra/add_user_to_group", "POLICY_APPROVAL_NEEDED")
        .await;
    second.wait_text("#live", "revision 2").await;
    let shot = browser.screenshot("integration-page").await;
    println!("screenshot of the integration page: {}", shot.display());
    assert_eq!(
        policy_of(&app, "get_user").await,
        pb::Policy::Disabled as i32
    );
    let tools = app.list_tools(&app.admin, true).await.expect("tools").tools;
    let add = tools
        .iter()
        .find(|t| t.name == "add_user_to_group")
        .unwrap();
    assert_eq!(add.policy, pb::Policy::ApprovalNeeded as i32);
    assert!(add.manager_approval);

    // Someone else's Save reaches the open page.
    app.set_one("list_groups", Policy::Disabled, None).await;
    browser
        .wait_policy("entra/list_groups", "POLICY_DISABLED")
        .await;
    browser.wait_text("#live", "revision 3").await;

    // An edit begun at revision 3, someone else saves revision 4: the Save is refused,
    // names their change, keeps the edit, and the second Save goes through.
    let delete_user = policy_of(&app, "delete_user").await;
    assert_ne!(delete_user, pb::Policy::Auto as i32);
    browser
        .click("select[data-tool='entra/delete_user'] option[value='POLICY_AUTO']")
        .await;
    app.set_one("reset_password", Policy::Auto, None).await;
    browser.wait_text("#live", "revision 4").await;
    browser.click("#save").await;
    let alert = browser.wait_text("#alert", "Someone else saved").await;
    assert!(alert.contains("entra/reset_password"), "{alert}");
    assert_eq!(policy_of(&app, "delete_user").await, delete_user);
    browser
        .wait_policy("entra/delete_user", "POLICY_AUTO")
        .await;
    browser.click("#save").await;
    browser.wait_text("#status", "Saved revision 5").await;
    assert_eq!(
        policy_of(&app, "delete_user").await,
        pb::Policy::Auto as i32
    );

    // History: roll back to revision 1 with two clicks.
    browser.click("#tab-history").await;
    browser.wait_text("#revisions", "ticket 4711").await;
    browser.click("button[data-rollback='1']").await;
    browser.click("button[data-confirm-rollback='1']").await;
    browser.wait_text("#status", "Rolled back").await;
    assert_eq!(policy_of(&app, "get_user").await, pb::Policy::Auto as i32);

    // An unsaved edit of a tool that someone else's Save removes is dropped, and the page
    // says so; the next edit saves at once, without a conflict.
    second.wait_text("#live", "revision 6").await;
    second
        .click("select[data-tool='entra/delete_user'] option[value='POLICY_DISABLED']")
        .await;
    second.wait_text("#unsaved", "1 unsaved").await;
    let kept: Vec<(&str, Option<pb::ToolAnnotations>)> = ["get_user", "list_groups"]
        .into_iter()
        .chain(["add_user_to_group", "reset_password"])
        .map(|name| (name, None))
        .collect();
    app.connect(&app.admin, "entra", &kept).await;
    second.wait_text("#live", "revision 7").await;
    second
        .wait_text("#alert", "entra/delete_user no longer exists")
        .await;
    assert_eq!(second.text_of("#unsaved").await, "");
    assert_ne!(
        policy_of(&app, "list_groups").await,
        pb::Policy::ApprovalNeeded as i32
    );
    second
        .click("select[data-tool='entra/list_groups'] option[value='POLICY_APPROVAL_NEEDED']")
        .await;
    second.click("#save").await;
    second.wait_text("#status", "Saved revision 8").await;
    assert_eq!(
        policy_of(&app, "list_groups").await,
        pb::Policy::ApprovalNeeded as i32
    );
    browser.close().await;
    second.close().await;
}

#[tokio::test]
async fn an_approver_approves_from_the_console_and_sees_only_approvals() {
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(false))
        .await;
    app.sample_people().await;
    let args = r#"{"user":"bob@example.com","note":"<script>alert(1)</script>"}"#;
    let approval = app
        .decide_ok(ask("reset_password", args, "r1"))
        .await
        .approval
        .expect("approval");
    let driver = Driver::start().await;
    let browser = Browser::open(&driver).await;
    browser.go(&format!("http://{}/", app.http_addr)).await;
    browser.sign_in(&app.approver).await;
    let card = format!("article[data-approval='{}']", approval.id);
    let text = browser.wait_text(&card, "bob@example.com").await;
    assert!(
        text.contains("<script>"),
        "arguments are shown as text: {text}"
    );
    let tabs = browser
        .script(
            "return [...document.querySelectorAll('[role=tab]')].filter(t => !t.hidden).map(t => t.id);",
            json!([]),
        )
        .await;
    assert_eq!(
        tabs,
        json!(["tab-approvals"]),
        "an approver sees approvals only"
    );

    // Without saying who they are, nothing is sent.
    browser
        .click(&format!("button[data-approve='{}']", approval.id))
        .await;
    browser.wait_text("#alert", "Say who you are").await;
    browser.type_into("#approver-id", "tech").await;
    browser
        .click(&format!("button[data-approve='{}']", approval.id))
        .await;
    browser.wait_text("#status", "Recorded: approved").await;
    let now = app
        .client
        .clone()
        .get_approval(with_key(
            &app.approver,
            pb::GetApprovalRequest {
                approval_id: approval.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .approval
        .expect("approval");
    assert_eq!(now.state, pb::ApprovalState::Approved as i32);
    assert_eq!(now.steps[0].approver_id, "tech");
    browser.wait_text("#approvals", "Nothing waits").await;

    // A key that may not: an agent key cannot call SetPolicy through the console's API.
    let agent = &app.agent;
    let refused = reqwest::Client::new()
        .post(format!("http://{}/api/SetPolicy", app.http_addr))
        .bearer_auth(agent)
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status().as_u16(), 403);
    browser.close().await;
}

#[tokio::test]
async fn failed_deliveries_are_listed_and_retried_from_the_console() {
    // Nothing listens on port 9: every attempt is refused, and past the maximum age the
    // delivery is FAILED.
    let app = spawn_app_with(|c| {
        c.delivery_max_age = Duration::from_millis(300);
        c.delivery_retry_initial = Duration::from_millis(50);
    })
    .await;
    app.connect_sample().await;
    app.sample_people().await;
    app.client
        .clone()
        .set_notification_channel(with_key(
            &app.admin,
            pb::SetNotificationChannelRequest {
                channel: Some(pb::NotificationChannel {
                    id: "ops".into(),
                    kind: pb::ChannelKind::Webhook as i32,
                    url: "http://127.0.0.1:9/hook".into(),
                    secret: "whsec_dG9vbGdhdGUtdGVzdC1zaWduaW5nLWtleS0zMmJ5dGVz".into(),
                    enabled: true,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("channel");
    let approval = app
        .decide_ok(ask("add_user_to_group", r#"{"user":"bob"}"#, "r1"))
        .await
        .approval
        .expect("approval");
    let driver = Driver::start().await;
    let browser = Browser::open(&driver).await;
    browser.go(&format!("http://{}/", app.http_addr)).await;
    browser.sign_in(&app.admin).await;
    browser.find("select[data-tool='entra/get_user']").await;
    // The page reads the list when the tab opens: open it once the delivery has failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed = app
            .client
            .clone()
            .list_deliveries(with_key(
                &app.admin,
                pb::ListDeliveriesRequest {
                    approval_id: approval.id.clone(),
                    state: pb::DeliveryState::Failed as i32,
                    page_size: 10,
                    page_token: String::new(),
                },
            ))
            .await
            .expect("list")
            .into_inner()
            .deliveries;
        if !failed.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.click("#tab-deliveries").await;
    browser.wait_text("#deliveries", &approval.id).await;
    let row = browser.text_of("#deliveries").await;
    assert!(
        row.contains("approval.requested") && row.contains("maximum age"),
        "{row}"
    );
    let deliveries = || {
        let mut client = app.client.clone();
        let admin = app.admin.clone();
        let approval_id = approval.id.clone();
        async move {
            client
                .list_deliveries(with_key(
                    &admin,
                    pb::ListDeliveriesRequest {
                        approval_id,
                        state: pb::DeliveryState::Unspecified as i32,
                        page_size: 10,
                        page_token: String::new(),
                    },
                ))
                .await
                .expect("list")
                .into_inner()
                .deliveries
        }
    };
    let before = deliveries().await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].state, pb::DeliveryState::Failed as i32);
    browser.click("button[data-retry]").await;
    browser.wait_text("#status", "queued again").await;
    // Queued again, it is attempted again (and, nothing listening, fails again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while deliveries().await[0].attempts <= before[0].attempts {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried delivery was never attempted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.close().await;
}
