//! `spawn_app()`: the real server on 127.0.0.1:0 over a fresh database of the suite's
//! backend (a temporary SQLite file, or a new PostgreSQL database), with keys minted
//! through the store and a generated client.

use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use toolgate::config::{Config, DatabaseUrl};
use toolgate::policy::Role;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;
use toolgate::store::Store;

pub use pb::{DecisionCode, Policy, Verdict};

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// Where GET /metrics answers.
    pub metrics_addr: std::net::SocketAddr,
    /// Where POST /slack/interactions answers.
    pub http_addr: std::net::SocketAddr,
    pub client: PolicyServiceClient<Channel>,
    pub admin: String,
    pub agent: String,
    pub approver: String,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), toolgate::server::RunError>>>,
    _db: std::sync::Arc<TestDb>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(fresh_database().await, adjust).await
}

/// The server on `db` as it is (a database an earlier release wrote, say), with new keys
/// for tenant `acme`.
pub async fn spawn_app_on(db: TestDb, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config {
        database_url: DatabaseUrl::new(db.url.clone()),
        // Short, so tests of revocation and of other writers need not wait long.
        key_refresh_interval: Duration::from_millis(100),
        catch_up_interval: Duration::from_millis(200),
        approval_poll_interval: Duration::from_millis(50),
        ..Config::default()
    };
    adjust(&mut config);
    let store = toolgate::server::open_store(&config)
        .await
        .expect("open store");
    let admin = mint(&store, "acme", Role::Admin).await;
    let agent = mint(&store, "acme", Role::Agent).await;
    let approver = mint(&store, "acme", Role::Approver).await;
    drop(store);
    start(config, std::sync::Arc::new(db), admin, agent, approver).await
}

async fn start(
    config: Config,
    db: std::sync::Arc<TestDb>,
    admin: String,
    agent: String,
    approver: String,
) -> TestApp {
    let listeners = toolgate::server::Listeners {
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        metrics: tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics"),
        http: Some(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind http"),
        ),
    };
    let addr = listeners.grpc.local_addr().expect("addr");
    let metrics_addr = listeners.metrics.local_addr().expect("metrics addr");
    let http_addr = listeners
        .http
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .expect("http addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let tls = config.tls.is_some();
    let server = tokio::spawn(toolgate::run(config.clone(), listeners, async {
        let _ = stop_rx.await;
    }));
    // The listener is bound already: the connection waits in the backlog until serving.
    // A TLS test makes its own client.
    let client = if tls {
        PolicyServiceClient::new(Channel::from_static("http://127.0.0.1:9").connect_lazy())
    } else {
        PolicyServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
    };
    TestApp {
        addr,
        metrics_addr,
        http_addr,
        client,
        admin,
        agent,
        approver,
        config,
        stop: Some(stop_tx),
        server: Some(server),
        _db: db,
    }
}

pub async fn mint(store: &impl Store, tenant: &str, role: Role) -> String {
    mint_named(store, tenant, role, None).await
}

/// A key with a name (`keys create --name`): keys of a tenant with the same name are one
/// principal.
pub async fn mint_named(
    store: &impl Store,
    tenant: &str,
    role: Role,
    name: Option<&str>,
) -> String {
    let key = toolgate::keys::generate().expect("randomness");
    store
        .create_key(&key.id, tenant, role, &key.secret_sha256, name)
        .await
        .expect("create key");
    key.token
}

pub fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii header"),
    );
    req
}

impl TestApp {
    /// Stops the server and waits until it has exited.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server exits cleanly");
        }
    }

    /// Stops the server and starts a new one on the same database file.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        start(
            self.config.clone(),
            self._db.clone(),
            self.admin.clone(),
            self.agent.clone(),
            self.approver.clone(),
        )
        .await
    }

    /// Mints a key of another tenant (or this one) while the server runs.
    pub async fn mint(&self, tenant: &str, role: Role) -> String {
        self.mint_named(tenant, role, None).await
    }

    /// Mints a named key while the server runs.
    pub async fn mint_named(&self, tenant: &str, role: Role, name: Option<&str>) -> String {
        let store = toolgate::server::open_store(&self.config)
            .await
            .expect("open store");
        mint_named(&store, tenant, role, name).await
    }

    pub async fn connect(
        &self,
        key: &str,
        integration: &str,
        tools: &[(&str, Option<pb::ToolAnnotations>)],
    ) -> pb::ConnectIntegrationResponse {
        let tools = tools
            .iter()
            .map(|(name, annotations)| pb::ToolDefinition {
                name: name.to_string(),
                description: format!("{name} tool"),
                input_schema_json: r#"{"type":"object"}"#.into(),
                annotations: *annotations,
            })
            .collect();
        self.client
            .clone()
            .connect_integration(with_key(
                key,
                pb::ConnectIntegrationRequest {
                    integration_id: integration.into(),
                    kind: "entra_id".into(),
                    display_name: "Entra ID".into(),
                    tools,
                    comment: String::new(),
                },
            ))
            .await
            .expect("connect integration")
            .into_inner()
    }

    /// Connects the standard sample integration `entra` for the admin.
    pub async fn connect_sample(&self) -> pb::ConnectIntegrationResponse {
        self.connect(
            &self.admin,
            "entra",
            &[
                ("get_user", None),
                ("list_groups", None),
                ("add_user_to_group", None),
                ("reset_password", None),
                ("delete_user", None),
            ],
        )
        .await
    }

    pub async fn set_policy(
        &self,
        changes: Vec<pb::PolicyChange>,
        expected: Option<u64>,
    ) -> Result<pb::SetPolicyResponse, Status> {
        self.client
            .clone()
            .set_policy(with_key(
                &self.admin,
                pb::SetPolicyRequest {
                    changes,
                    expected_revision: expected,
                    comment: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn set_one(
        &self,
        tool: &str,
        policy: Policy,
        manager: Option<bool>,
    ) -> pb::SetPolicyResponse {
        self.set_policy(vec![change("entra", tool, policy, manager)], None)
            .await
            .expect("set policy")
    }

    pub async fn people(&self, people: Vec<pb::Person>) {
        self.client
            .clone()
            .upsert_people(with_key(&self.admin, pb::UpsertPeopleRequest { people }))
            .await
            .expect("upsert people");
    }

    /// The standard directory: alice (requester, manager mgr), tech (technician),
    /// tech2 (technician), mgr (alice's manager, also a technician), bob (no manager).
    pub async fn sample_people(&self) {
        self.people(vec![
            person("alice", "mgr", false),
            person("tech", "", true),
            person("tech2", "", true),
            person("mgr", "", true),
            person("bob", "", false),
        ])
        .await;
    }

    pub async fn decide(
        &self,
        key: &str,
        req: pb::DecideRequest,
    ) -> Result<pb::DecideResponse, Status> {
        self.client
            .clone()
            .decide(with_key(key, req))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn decide_ok(&self, req: pb::DecideRequest) -> pb::DecideResponse {
        self.decide(&self.agent, req).await.expect("decide")
    }

    pub async fn submit(
        &self,
        approval_id: &str,
        role: pb::ApproverRole,
        approver: &str,
        approve: bool,
    ) -> Result<pb::Approval, Status> {
        self.client
            .clone()
            .submit_approval(with_key(
                &self.approver,
                pb::SubmitApprovalRequest {
                    approval_id: approval_id.into(),
                    role: role as i32,
                    approver_id: approver.into(),
                    approve,
                    comment: "checked".into(),
                },
            ))
            .await
            .map(|r| r.into_inner().approval.expect("approval"))
    }

    pub async fn list_approvals(
        &self,
        key: &str,
        state: pb::ApprovalState,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListApprovalsResponse, Status> {
        self.client
            .clone()
            .list_approvals(with_key(
                key,
                pb::ListApprovalsRequest {
                    state: state as i32,
                    page_size,
                    page_token: page_token.into(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn list_tools(
        &self,
        key: &str,
        include_disabled: bool,
    ) -> Result<pb::ListToolsResponse, Status> {
        self.client
            .clone()
            .list_tools(with_key(
                key,
                pb::ListToolsRequest {
                    integration_id: String::new(),
                    include_disabled,
                    min_revision: None,
                },
            ))
            .await
            .map(|r| r.into_inner())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn change(
    integration: &str,
    tool: &str,
    policy: Policy,
    manager: Option<bool>,
) -> pb::PolicyChange {
    pb::PolicyChange {
        integration_id: integration.into(),
        tool_name: tool.into(),
        policy: policy as i32,
        manager_approval: manager,
    }
}

pub fn person(id: &str, manager: &str, technician: bool) -> pb::Person {
    pb::Person {
        id: id.into(),
        display_name: id.to_uppercase(),
        email: format!("{id}@example.com"),
        manager_id: manager.into(),
        technician,
        slack_user_id: String::new(),
    }
}

/// A Decide of `tool` in `entra` by alice with these arguments.
pub fn ask(tool: &str, args: &str, request_id: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        integration_id: "entra".into(),
        tool_name: tool.into(),
        arguments_json: args.into(),
        requester_id: "alice".into(),
        request_id: request_id.into(),
        approval_id: String::new(),
        min_revision: None,
    }
}

pub fn with_approval(mut req: pb::DecideRequest, approval_id: &str) -> pb::DecideRequest {
    req.approval_id = approval_id.into();
    req
}

pub fn verdict(r: &pb::DecideResponse) -> (Verdict, DecisionCode) {
    (
        Verdict::try_from(r.verdict).expect("verdict"),
        DecisionCode::try_from(r.code).expect("code"),
    )
}

pub fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, mentions: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} mentioning {mentions:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "status {s:?}");
            assert!(
                s.message().contains(mentions),
                "{:?} does not mention {mentions:?}",
                s.message()
            );
        }
    }
}

/// Waits until the wall clock is past `t` (an approval's expiry): the event itself, checked,
/// rather than a guess at how long it takes.
pub async fn wait_until_past(t: &prost_types::Timestamp) {
    let deadline_ms = t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        if now > deadline_ms {
            return;
        }
        tokio::task::yield_now().await;
    }
}

pub const SHORT: Duration = Duration::from_millis(200);

/// A database of the suite's backend that nobody else uses.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    #[allow(dead_code)] // used by the replica tests
    pub fn postgres(url: String) -> TestDb {
        TestDb { url, _dir: None }
    }
}

/// Which backend a suite binary runs against (`crate::BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each suite binary names one of them
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of the suite's backend.
pub async fn fresh_database() -> TestDb {
    match crate::BACKEND {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            TestDb {
                url: format!("sqlite://{}", dir.path().join("toolgate.db").display()),
                _dir: Some(dir),
            }
        }
        Backend::Postgres => TestDb {
            url: pg::create_database().await,
            _dir: None,
        },
    }
}

/// Fresh PostgreSQL databases for tests: `tg_test_<pid>_<n>` on the server named by
/// `TOOLGATE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`).
/// Databases left by earlier runs whose process is gone are dropped first.
pub mod pg {
    use sqlx::{Connection, Executor, PgConnection};
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

    pub fn admin_url() -> String {
        std::env::var("TOOLGATE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    pub async fn admin() -> PgConnection {
        let url = admin_url();
        match PgConnection::connect(&url).await {
            Ok(c) => c,
            Err(e) => panic!(
                "\n\n*** PostgreSQL tests need a server: cannot connect to {url}: {e}\n\
                 *** Start one (CI does: .ci/run) or point TOOLGATE_TEST_POSTGRES at one.\n\n"
            ),
        }
    }

    /// Creates an empty database and returns its URL.
    pub async fn create_database() -> String {
        let mut conn = admin().await;
        SWEPT
            .get_or_init(|| async { drop_orphans(&mut admin().await).await })
            .await;
        let name = format!(
            "tg_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("CREATE DATABASE");
        let base = admin_url();
        let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
        format!("{root}/{name}")
    }

    /// Drops test databases of processes that are no longer running.
    async fn drop_orphans(conn: &mut PgConnection) {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'tg_test_%'")
                .fetch_all(&mut *conn)
                .await
                .expect("list test databases");
        for name in names {
            let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = conn
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await;
            }
        }
    }
}

/// One scrape of `/metrics`: every sample by its series (`name{labels}`), checked line
/// by line against the text format.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: std::collections::HashMap<String, f64>,
}

impl Scrape {
    /// The sample's value; a series that is not there fails the test.
    pub fn get(&self, series: &str) -> f64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in:\n{}", self.text),
        }
    }

    /// How far a series moved since `before`.
    pub fn delta(&self, before: &Scrape, series: &str) -> f64 {
        self.get(series) - before.samples.get(series).copied().unwrap_or(0.0)
    }
}

/// GETs `/metrics` over plain HTTP/1.1 and parses the Prometheus text format strictly.
pub async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: toolgate\r\nconnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut samples = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().expect("TYPE name");
            let kind = parts.next().expect("TYPE kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind} in {line:?}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels in {line:?}"));
            for pair in inner.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("label in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line:?}"
                );
                assert!(!v.contains('\n'), "{line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no # TYPE before it");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        assert!(
            samples.insert(series.to_owned(), v).is_none(),
            "{series} twice"
        );
    }
    Scrape {
        text: body.to_owned(),
        samples,
    }
}

impl TestApp {
    pub async fn scrape(&self) -> Scrape {
        scrape(self.metrics_addr).await
    }
}

/// `toolgate serve` as users run it (JSON logs), on `database_url`; killed when dropped.
/// Its log lines are kept, parsed, in `log`.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    /// The number of lines read so far, for waiting on the next one.
    read: tokio::sync::watch::Receiver<usize>,
}

impl Binary {
    pub async fn serve(database_url: &str) -> Binary {
        Binary::serve_with(database_url, &[]).await
    }

    /// [`Binary::serve`] with more flags.
    pub async fn serve_with(database_url: &str, flags: &[&str]) -> Binary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .args(flags)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start toolgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        let (read_tx, read) = tokio::sync::watch::channel(0);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
                if let Some(addr) = log_field(&v, "addr").and_then(|a| a.as_str())
                    && line.contains("toolgate serving")
                {
                    let _ = tx.send(addr.to_owned());
                }
                let count = {
                    let mut lines = lines.lock().unwrap();
                    lines.push(v);
                    lines.len()
                };
                read_tx.send_replace(count);
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("join")
            .expect("toolgate serving")
            .parse()
            .expect("address");
        Binary {
            child,
            addr,
            log,
            read,
        }
    }

    /// The log lines so far that satisfy `keep`, once there are at least `n` of them:
    /// checked again as each new line is read, for at most 20 s.
    pub async fn log_lines(
        &self,
        n: usize,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut read = self.read.clone();
        let found = |log: &Vec<serde_json::Value>| -> Vec<serde_json::Value> {
            log.iter().filter(|v| keep(v)).cloned().collect()
        };
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let now = found(&self.log.lock().unwrap());
                if now.len() >= n {
                    return now;
                }
                if read.changed().await.is_err() {
                    // The server is gone: what it wrote is all there will be.
                    return found(&self.log.lock().unwrap());
                }
            }
        })
        .await;
        match waited {
            Ok(lines) if lines.len() >= n => lines,
            _ => panic!(
                "fewer than {n} such log lines after 20 s: {:?}",
                self.log.lock().unwrap()
            ),
        }
    }
}

/// A field of a JSON log line (every field is at the top level).
pub fn log_field<'a>(line: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    line.get(name)
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `toolgate audit ARGS --database-url URL`: exit code, stdout, stderr.
pub async fn audit(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"));
    command
        .arg("audit")
        .args(args)
        .args(["--database-url", url]);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run toolgate audit");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// A self-signed certificate for `toolgate.test`, and its files in a temporary directory
/// (kept while the directory lives) as the server's TLS settings.
pub fn self_signed_tls() -> (
    tempfile::TempDir,
    toolgate::config::TlsFiles,
    rcgen::CertifiedKey<rcgen::KeyPair>,
) {
    let dir = tempfile::tempdir().unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["toolgate.test".into()]).unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    let files = toolgate::config::TlsFiles {
        cert,
        key,
        client_ca: None,
    };
    (dir, files, issued)
}
