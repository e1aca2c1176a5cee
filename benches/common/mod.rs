//! Small pieces the bench binaries share.
// Each bench uses some of them.
#![allow(dead_code)]

pub mod bare;

use std::net::SocketAddr;
use std::time::Duration;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

/// The number after `flag` on the command line, or `default`.
pub fn arg(flag: &str, default: usize) -> usize {
    text_arg(flag)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The value after `flag` on the command line, if any.
#[allow(dead_code)] // not every bench takes a text flag
pub fn text_arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A loopback address nothing listens on right now, for a child server to bind.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A channel to a child server, once it has bound its port.
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    for _ in 0..400 {
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        // Waiting for the child process to bind; there is no event to wait on from here.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {addr} did not come up");
}

/// `message` with `authorization: Bearer <key>` (none for an empty key).
pub fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if !key.is_empty() {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("header"),
        );
    }
    r
}

/// A tool definition for the benches: `name`, a description, an object schema.
pub fn tool(name: &str, description: &str) -> toolgate::proto::v1::ToolDefinition {
    toolgate::proto::v1::ToolDefinition {
        name: name.into(),
        description: description.into(),
        input_schema_json: r#"{"type":"object","properties":{"user":{"type":"string"}}}"#.into(),
        annotations: None,
    }
}

/// Connects integration `entra` with `tools` as `admin`; the tools with their seeded
/// policies.
pub async fn connect_entra(
    client: &toolgate::proto::v1::policy_service_client::PolicyServiceClient<Channel>,
    admin: &str,
    tools: Vec<toolgate::proto::v1::ToolDefinition>,
) -> Vec<toolgate::proto::v1::Tool> {
    client
        .clone()
        .connect_integration(with_key(
            admin,
            toolgate::proto::v1::ConnectIntegrationRequest {
                integration_id: "entra".into(),
                kind: "entra_id".into(),
                display_name: "Entra ID".into(),
                tools,
                comment: String::new(),
            },
        ))
        .await
        .expect("connect integration")
        .into_inner()
        .tools
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A server in a child process (toolgate, or a baseline in this bench's own binary),
/// killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A wrapper command set by the bench itself (its profiling mode), taking precedence over
/// `TOOLGATE_BENCH_WRAP`.
static WRAP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs every server started from now on under `command` (for example
/// `valgrind --tool=callgrind`).
pub fn wrap_servers(command: String) {
    WRAP.set(command).expect("servers are wrapped once");
}

/// `program`, run under the wrapper set by [`wrap_servers`] or else the command in
/// `TOOLGATE_BENCH_WRAP`, so a bench's servers can be profiled as they are loaded.
fn wrapped(program: &str) -> std::process::Command {
    let wrap = WRAP
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::var("TOOLGATE_BENCH_WRAP").unwrap_or_default());
    let mut words = wrap.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut c = std::process::Command::new(first);
            c.args(words).arg(program);
            c
        }
        None => std::process::Command::new(program),
    }
}

/// `sqlite://` URL of a new database file in a temporary directory (kept while the
/// directory lives).
pub fn sqlite_temp() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    // `toolgate keys create` never creates a database: make and migrate it as `toolgate
    // serve` would, on a runtime of its own (callers may be inside one).
    let create = url.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            toolgate::store::open(&create, &Default::default())
                .await
                .expect("create the bench database");
        });
    })
    .join()
    .expect("create the bench database");
    (dir, url)
}

/// Reads the server's log from a pipe as a log collector would (a container runtime reads
/// its stderr the same way), so writing it costs what it costs in production. The first
/// lines (start-up, and any error that stops it) are passed on to standard error; after
/// that lines are only counted, a block at a time, so the reader costs the machine little.
fn drain_log(child: &mut std::process::Child) {
    use std::io::{BufRead, Read};
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, stderr);
        let mut line = String::new();
        for _ in 0..8 {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            eprint!("{line}");
        }
        let mut block = vec![0u8; 256 * 1024];
        while let Ok(n) = reader.read(&mut block) {
            if n == 0 {
                return;
            }
            let lines = block[..n].iter().filter(|b| **b == b'\n').count();
            LOG_LINES.fetch_add(lines as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

/// Log lines the servers wrote after their first few (see [`drain_log`]).
pub static LOG_LINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ServerProcess {
    /// `toolgate serve` on `url` with `extra` flags, its metrics on a free port (unless
    /// `extra` says where), with the log level `toolgate serve` has by default (`info`),
    /// as people run it; `TOOLGATE_BENCH_RUST_LOG=warn` (say) sets another. `dir` (the
    /// SQLite file's directory) lives as long as the server.
    pub fn toolgate(url: &str, dir: Option<tempfile::TempDir>, extra: &[&str]) -> Self {
        let level = std::env::var("TOOLGATE_BENCH_RUST_LOG").ok();
        Self::toolgate_logging(url, dir, extra, level.as_deref())
    }

    /// [`ServerProcess::toolgate`] with `RUST_LOG` set to `level` (`None`: unset, the
    /// default `info`).
    pub fn toolgate_logging(
        url: &str,
        dir: Option<tempfile::TempDir>,
        extra: &[&str],
        level: Option<&str>,
    ) -> Self {
        let addr = free_port();
        let mut child = wrapped(env!("CARGO_BIN_EXE_toolgate"))
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--database-url",
                url,
            ])
            .args(if extra.contains(&"--metrics-listen") {
                &[][..]
            } else {
                &["--metrics-listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .env_remove("RUST_LOG")
            .envs(level.map(|level| ("RUST_LOG", level)))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn toolgate");
        drain_log(&mut child);
        ServerProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    /// This bench binary again with `flag`: a baseline server that prints its address.
    pub fn baseline(flag: &str) -> Self {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("exe");
        let mut child = wrapped(exe.to_str().expect("exe path"))
            .arg(flag)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn baseline server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("address");
        ServerProcess {
            child,
            addr: line.trim().parse().expect("address"),
            _dir: None,
        }
    }

    /// Stops the server the way an orchestrator would (stdin closed, SIGTERM) and waits
    /// for it to exit, so a profiler wrapping it writes its report.
    pub fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// The server's resident memory now.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

/// A new API key for `tenant` with `role`, minted by `toolgate keys create` on `url`.
pub fn mint(url: &str, tenant: &str, role: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["keys", "create", "--tenant", tenant, "--role", role])
        .args(["--database-url", url])
        .output()
        .expect("keys create");
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// A database of its own on the PostgreSQL server at `TOOLGATE_BENCH_POSTGRES` (default
/// the local one), dropped by [`PgDatabase::drop_now`].
pub struct PgDatabase {
    admin: sqlx::PgConnection,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create(label: &str) -> Self {
        use sqlx::{Connection, Executor};
        let admin_url = std::env::var("TOOLGATE_BENCH_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("this bench needs PostgreSQL at {admin_url}: {e}"));
        let name = format!("tg_bench_{label}_{}", std::process::id());
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await
            .expect("drop old database");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create database");
        let root = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(r, _)| r);
        let url = format!("{root}/{name}");
        PgDatabase { admin, name, url }
    }

    /// `fsync`, `synchronous_commit` and the server version, for the report.
    pub async fn settings(&mut self) -> String {
        let settings: Vec<String> = sqlx::query_scalar(
            "SELECT name || '=' || setting FROM pg_settings \
             WHERE name IN ('fsync', 'synchronous_commit', 'server_version') ORDER BY name",
        )
        .fetch_all(&mut self.admin)
        .await
        .expect("settings");
        settings.join(", ")
    }

    pub async fn drop_now(mut self) {
        use sqlx::Executor;
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .expect("drop database");
    }
}
