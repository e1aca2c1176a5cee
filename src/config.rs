//! Configuration. Each setting of `serve` is a field of [`ServeArgs`], where clap gives it
//! a flag and a `TOOLGATE_*` environment variable (a flag beats its variable) and its name
//! is its TOML key, and a field of [`Config`], with its type and, in `Config::default()`,
//! its default. [`Config::resolve`] puts what clap found over the optional TOML file
//! (figment) and extracts `Config`: flags > environment > file > defaults. Durations are
//! humantime's (`250ms`, `90s`, `30m`, `24h`, `7d`) or a bare number of seconds.

use clap::{Args, Parser, Subcommand};
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "toolgate",
    version,
    about = "Policy decision point for AI agents' tool calls"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(Box<ServeArgs>),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check or export the tenants' hash-chained history, straight from the database.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every tenant's hash chains (revisions, approval events); exit 1 naming the
    /// first record that does not match.
    Verify {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// One JSON line per revision of a tenant, then one per approval event: its chain, its
    /// record, its hash and the hash before.
    Export {
        #[arg(long)]
        tenant: String,
        /// Only revisions after this one.
        #[arg(long, default_value_t = 0)]
        since_revision: u64,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Mint a key; prints the key alone on standard output, once.
    Create {
        #[arg(long)]
        tenant: String,
        /// agent, approver or admin.
        #[arg(long)]
        role: String,
        /// A name for the key. Keys of a tenant with the same name are one principal: a
        /// key made to rotate another (same name) may use the approvals the other asked
        /// for; a key without a name is a principal of its own.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// List keys (never their secrets).
    List {
        /// table (default) or json (one object per key, a line each).
        #[arg(long, default_value = "table")]
        output: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Make a key without a database, for `bootstrap_admin_key`: prints the token alone on
    /// standard output, and on standard error the `<tenant>:<key id>:<sha256>` value to give
    /// the server (a Kubernetes Secret holds it; it grants nothing if read).
    Generate {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by id; running servers refuse it within key_refresh_interval.
    Revoke {
        id: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Debug, Args, Serialize)]
pub struct DatabaseArgs {
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, env = "TOOLGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// TOML file with the same settings as `serve`.
    #[arg(long, env = "TOOLGATE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// `serve`'s settings, each declared here once: its flag, its environment variable and, by
/// its field name, its TOML key. Unset ones serialize to nothing and leave the file's value.
#[derive(Debug, Default, Args, Serialize)]
pub struct ServeArgs {
    /// TOML file; flags and environment variables override it.
    #[arg(long, env = "TOOLGATE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address of the gRPC server [default: 127.0.0.1:50051].
    #[arg(long, env = "TOOLGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://toolgate.db, created if missing].
    #[arg(long, env = "TOOLGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// How long an approval stays valid, e.g. 24h, 30m, 90s [default: 24h].
    #[arg(long, env = "TOOLGATE_APPROVAL_TTL")]
    pub approval_ttl: Option<String>,
    /// Largest arguments_json accepted, in bytes [default: 65536].
    #[arg(long, env = "TOOLGATE_MAX_ARGUMENTS_BYTES")]
    pub max_arguments_bytes: Option<usize>,
    /// How long a Decide or ListTools waits for min_revision [default: 2s].
    #[arg(long, env = "TOOLGATE_MIN_REVISION_WAIT")]
    pub min_revision_wait: Option<String>,
    /// How long in-flight calls may run after SIGTERM [default: 20s].
    #[arg(long, env = "TOOLGATE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "TOOLGATE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Heartbeat on an idle WatchConfig stream [default: 15s].
    #[arg(long, env = "TOOLGATE_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Revisions a WatchConfig resume may replay; older resumes get a snapshot [default: 1000].
    #[arg(long, env = "TOOLGATE_WATCH_HISTORY")]
    pub watch_history: Option<u64>,
    /// Revisions buffered per tenant for watchers that fall behind [default: 64].
    #[arg(long, env = "TOOLGATE_WATCH_BUFFER")]
    pub watch_buffer: Option<usize>,
    /// Bytes of replayed changes one WatchConfig stream may queue; more is a snapshot [default: 1048576].
    #[arg(long, env = "TOOLGATE_WATCH_STREAM_BUFFER")]
    pub watch_stream_buffer: Option<usize>,
    /// How often expired approvals are marked and pushed to watchers [default: 5s].
    #[arg(long, env = "TOOLGATE_EXPIRY_SWEEP")]
    pub expiry_sweep: Option<String>,
    /// Bound on every database query and connection wait [default: 5s].
    #[arg(long, env = "TOOLGATE_DB_TIMEOUT")]
    pub db_timeout: Option<String>,
    /// How often the change log is polled for revisions other replicas saved (NOTIFY is only a hint) [default: 1s].
    #[arg(long, env = "TOOLGATE_CATCH_UP_INTERVAL")]
    pub catch_up_interval: Option<String>,
    /// How often approval changes made by other replicas are read, for WatchApprovals [default: 250ms].
    #[arg(long, env = "TOOLGATE_APPROVAL_POLL_INTERVAL")]
    pub approval_poll_interval: Option<String>,
    /// How often the in-memory key cache is reloaded; a revocation takes effect within it [default: 1s].
    #[arg(long, env = "TOOLGATE_KEY_REFRESH_INTERVAL")]
    pub key_refresh_interval: Option<String>,
    /// Health turns NOT_SERVING after this long without the database [default: 10s].
    #[arg(long, env = "TOOLGATE_DB_UNAVAILABLE_AFTER")]
    pub db_unavailable_after: Option<String>,
    /// Most connections to PostgreSQL this replica opens [default: 16].
    #[arg(long, env = "TOOLGATE_DB_POOL_SIZE")]
    pub db_pool_size: Option<u32>,
    /// Address of the Prometheus endpoint, GET /metrics [default: 127.0.0.1:9464].
    #[arg(long, env = "TOOLGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// OpenTelemetry collector to export traces to over OTLP/gRPC, e.g. http://otel-collector:4317: a span per RPC (continuing the caller's traceparent) with its store calls inside [default: off].
    #[arg(long, env = "TOOLGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// A first admin key, by its hash: `<tenant>:<key id>:<sha256>` as `toolgate keys generate` prints it. Created at start if no key has that id (a revoked one stays revoked) [default: none].
    #[arg(long, env = "TOOLGATE_BOOTSTRAP_ADMIN_KEY")]
    pub bootstrap_admin_key: Option<String>,
    /// Address of the HTTP listener for Slack's interaction requests, POST /slack/interactions; the one port that faces Slack through an ingress [default: off].
    #[arg(long, env = "TOOLGATE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Largest request message accepted, in bytes [default: 4194304].
    #[arg(long, env = "TOOLGATE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// HTTP/2 streams one connection may have open at once [default: 1024].
    #[arg(long, env = "TOOLGATE_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Unary calls in progress at once; beyond it calls get RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "TOOLGATE_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Unary calls one API key may have in progress at once; beyond it its calls get RESOURCE_EXHAUSTED. Lower it below max_concurrent_requests so one key cannot take every place [default: 1024].
    #[arg(long, env = "TOOLGATE_MAX_CONCURRENT_REQUESTS_PER_KEY")]
    pub max_concurrent_requests_per_key: Option<usize>,
    /// Unary calls one connection may have in progress at once; beyond it its calls get RESOURCE_EXHAUSTED [default: 128].
    #[arg(long, env = "TOOLGATE_MAX_CONCURRENT_REQUESTS_PER_CONNECTION")]
    pub max_concurrent_requests_per_connection: Option<usize>,
    /// Longest a unary call's request body may take to arrive, e.g. 5s; past it the call ends DEADLINE_EXCEEDED [default: 5s].
    #[arg(long, env = "TOOLGATE_REQUEST_BODY_TIMEOUT")]
    pub request_body_timeout: Option<String>,
    /// Connections open at once to the gRPC port, and apart to the HTTP listener; beyond it new ones are closed as they are accepted [default: 10000].
    #[arg(long, env = "TOOLGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest a new connection may take to finish its TLS and HTTP/2 handshake before it is closed [default: 10s].
    #[arg(long, env = "TOOLGATE_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<String>,
    /// Open WatchConfig and WatchApprovals streams; beyond it new ones get RESOURCE_EXHAUSTED [default: 20000].
    #[arg(long, env = "TOOLGATE_MAX_WATCH_STREAMS")]
    pub max_watch_streams: Option<usize>,
    /// Longest a unary call may take, e.g. 10s (a shorter grpc-timeout from the client wins) [default: none].
    #[arg(long, env = "TOOLGATE_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// HTTP/2 ping to an idle connection this often; 0 = never [default: 0, never: TCP keepalive finds vanished peers].
    #[arg(long, env = "TOOLGATE_KEEPALIVE_INTERVAL")]
    pub keepalive_interval: Option<String>,
    /// A connection whose ping is unanswered this long is closed [default: 20s].
    #[arg(long, env = "TOOLGATE_KEEPALIVE_TIMEOUT")]
    pub keepalive_timeout: Option<String>,
    /// Connections are asked to close (GOAWAY) after this long, to rebalance; 0 = never [default: 30m].
    #[arg(long, env = "TOOLGATE_MAX_CONNECTION_AGE")]
    pub max_connection_age: Option<String>,
    /// After max_connection_age, calls and streams still open get this long before the connection closes [default: 30s].
    #[arg(long, env = "TOOLGATE_MAX_CONNECTION_AGE_GRACE")]
    pub max_connection_age_grace: Option<String>,
    /// After SIGTERM, keep serving this long with health NOT_SERVING before draining [default: 0s].
    #[arg(long, env = "TOOLGATE_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<String>,
    /// Approvals of one tenant that may wait for people at once; a Decide that would ask for another gets RESOURCE_EXHAUSTED [default: 1000].
    #[arg(long, env = "TOOLGATE_MAX_PENDING_APPROVALS")]
    pub max_pending_approvals: Option<u64>,
    /// First wait before a failed delivery is tried again; each retry waits about twice as long, with jitter [default: 1s].
    #[arg(long, env = "TOOLGATE_DELIVERY_RETRY_INITIAL")]
    pub delivery_retry_initial: Option<String>,
    /// Longest wait between two attempts of a delivery (a receiver's Retry-After may ask for more) [default: 10m].
    #[arg(long, env = "TOOLGATE_DELIVERY_RETRY_MAX")]
    pub delivery_retry_max: Option<String>,
    /// A delivery not accepted this long after it was queued is FAILED (RetryDelivery queues it again) [default: 24h].
    #[arg(long, env = "TOOLGATE_DELIVERY_MAX_AGE")]
    pub delivery_max_age: Option<String>,
    /// Longest one delivery attempt may take, connection included, before it counts as failed [default: 10s].
    #[arg(long, env = "TOOLGATE_DELIVERY_TIMEOUT")]
    pub delivery_timeout: Option<String>,
    /// Deliveries one replica sends to one channel at once [default: 4].
    #[arg(long, env = "TOOLGATE_DELIVERY_CONCURRENCY")]
    pub delivery_concurrency: Option<usize>,
    /// Channels may point only at public addresses (no loopback, private or unique-local ones); link-local and metadata addresses are always refused [default: false].
    #[arg(long, env = "TOOLGATE_DELIVERY_PUBLIC_ONLY")]
    pub delivery_public_only: Option<bool>,
    /// PEM certificate chain; with tls_key, serves gRPC over TLS [default: plaintext].
    #[arg(long, env = "TOOLGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of tls_cert.
    #[arg(long, env = "TOOLGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "TOOLGATE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Files of the optional TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        }
    }
}

/// A database URL whose password never reaches a log.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl DatabaseUrl {
    /// The URL with its password, if any, as `***`: `scheme://user:***@host`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let userinfo = &url[s + 3..at];
                match userinfo.find(':') {
                    Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                    None => url.clone(),
                }
            }
            _ => url.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// Serialized (for the start-up log) without its password.
impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Everything `serve` needs, resolved.
/// Its fields are the TOML keys (but `tls`, from `tls_cert`, `tls_key` and `tls_client_ca`);
/// a key left unset keeps its value from `Config::default()`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    #[serde(with = "duration")]
    pub approval_ttl: Duration,
    pub max_arguments_bytes: usize,
    #[serde(with = "duration")]
    pub min_revision_wait: Duration,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    pub watch_history: u64,
    pub watch_buffer: usize,
    pub watch_stream_buffer: usize,
    #[serde(with = "duration")]
    pub expiry_sweep: Duration,
    #[serde(with = "duration")]
    pub db_timeout: Duration,
    #[serde(with = "duration")]
    pub catch_up_interval: Duration,
    #[serde(with = "duration")]
    pub approval_poll_interval: Duration,
    #[serde(with = "duration")]
    pub key_refresh_interval: Duration,
    #[serde(with = "duration")]
    pub db_unavailable_after: Duration,
    pub db_pool_size: u32,
    pub metrics_listen: SocketAddr,
    /// `None`: no HTTP listener (Slack's buttons are not taken).
    pub http_listen: Option<SocketAddr>,
    /// `None`: no traces exported.
    pub otlp_endpoint: Option<String>,
    /// `<tenant>:<key id>:<sha256>`: an admin key created at start if missing.
    pub bootstrap_admin_key: Option<String>,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub max_concurrent_requests: usize,
    pub max_concurrent_requests_per_key: usize,
    pub max_concurrent_requests_per_connection: usize,
    /// How long a unary call's request body may take to arrive.
    #[serde(with = "duration")]
    pub request_body_timeout: Duration,
    pub max_connections: usize,
    /// How long a new connection may take to finish its handshake.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    pub max_watch_streams: usize,
    /// `None`: no server-side bound.
    #[serde(with = "duration::zero_is_off")]
    pub request_timeout: Option<Duration>,
    /// `None`: no HTTP/2 pings.
    #[serde(with = "duration::zero_is_off")]
    pub keepalive_interval: Option<Duration>,
    #[serde(with = "duration")]
    pub keepalive_timeout: Duration,
    /// `None`: connections live as long as their clients keep them.
    #[serde(with = "duration::zero_is_off")]
    pub max_connection_age: Option<Duration>,
    #[serde(with = "duration")]
    pub max_connection_age_grace: Duration,
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    pub max_pending_approvals: u64,
    #[serde(with = "duration")]
    pub delivery_retry_initial: Duration,
    #[serde(with = "duration")]
    pub delivery_retry_max: Duration,
    #[serde(with = "duration")]
    pub delivery_max_age: Duration,
    #[serde(with = "duration")]
    pub delivery_timeout: Duration,
    pub delivery_concurrency: usize,
    pub delivery_public_only: bool,
    #[serde(skip)]
    pub tls: Option<TlsFiles>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: DatabaseUrl::new("sqlite://toolgate.db"),
            approval_ttl: Duration::from_secs(24 * 3600),
            max_arguments_bytes: 64 * 1024,
            min_revision_wait: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(20),
            log_format: LogFormat::Text,
            heartbeat_interval: Duration::from_secs(15),
            watch_history: 1000,
            watch_buffer: 64,
            watch_stream_buffer: 1024 * 1024,
            expiry_sweep: Duration::from_secs(5),
            db_timeout: Duration::from_secs(5),
            catch_up_interval: Duration::from_secs(1),
            approval_poll_interval: Duration::from_millis(250),
            key_refresh_interval: Duration::from_secs(1),
            db_unavailable_after: Duration::from_secs(10),
            db_pool_size: 16,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            http_listen: None,
            bootstrap_admin_key: None,
            otlp_endpoint: None,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 1024,
            max_concurrent_requests: 1024,
            max_concurrent_requests_per_key: 1024,
            max_concurrent_requests_per_connection: 128,
            request_body_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_watch_streams: 20_000,
            // Off: every store call is bounded by db_timeout and every wait by
            // min_revision_wait already, and a server-side timer on every call costs
            // 10-30 µs of latency at low concurrency (benches/grpc.rs). Clients' own
            // grpc-timeout is always honoured.
            request_timeout: None,
            // Off, as in tonic and Envoy: TCP keepalive (server.rs) already finds a peer
            // that vanished, while hyper's ping timer costs every call about 1 100
            // instructions (BENCHMARKS.md, "Keepalive off, and small cuts").
            // Behind a mesh either reaches only the sidecar.
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: Some(Duration::from_secs(30 * 60)),
            max_connection_age_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            max_pending_approvals: 1000,
            delivery_retry_initial: Duration::from_secs(1),
            delivery_retry_max: Duration::from_secs(600),
            delivery_max_age: Duration::from_secs(24 * 3600),
            delivery_timeout: Duration::from_secs(10),
            delivery_concurrency: 4,
            delivery_public_only: false,
            tls: None,
        }
    }
}

/// A configuration value that could not be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<figment::Error> for ConfigError {
    /// `key: problem`, and the file when the value came from it.
    fn from(e: figment::Error) -> Self {
        let mut message = format!("{}: {}", e.path.join("."), e.kind);
        if let Some(file) = e
            .metadata
            .as_ref()
            .and_then(|m| m.source.as_ref()?.file_path())
        {
            message += &format!(" (config file {})", file.display());
        }
        ConfigError(message)
    }
}

impl Config {
    /// The PostgreSQL connection settings (unused with SQLite).
    pub fn pg_settings(&self) -> crate::store::PgSettings {
        crate::store::PgSettings {
            query_timeout: self.db_timeout,
            max_connections: self.db_pool_size,
        }
    }

    /// `serve`'s configuration: its flags and environment variables over its file.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        load(args.config.as_deref(), args)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = self.first_zero() {
            return Err(ConfigError(format!("{name}: must be more than zero")));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !matches!(
                url::Url::parse(endpoint)
                    .map(|u| u.scheme().to_owned())
                    .as_deref(),
                Ok("http" | "https")
            )
        {
            return Err(ConfigError(format!(
                "otlp_endpoint: {endpoint:?} is not an http:// or https:// URL of an OTLP/gRPC collector"
            )));
        }
        if let Some(value) = &self.bootstrap_admin_key {
            crate::keys::Bootstrap::parse(value)
                .map_err(|e| ConfigError(format!("bootstrap_admin_key: {e}")))?;
        }
        if self.delivery_retry_max < self.delivery_retry_initial {
            return Err(ConfigError(format!(
                "delivery_retry_max: {} is shorter than delivery_retry_initial ({})",
                humantime::format_duration(self.delivery_retry_max),
                humantime::format_duration(self.delivery_retry_initial)
            )));
        }
        if self.max_arguments_bytes >= self.max_message_bytes {
            return Err(ConfigError(format!(
                "max_arguments_bytes: {} does not fit in max_message_bytes ({})",
                self.max_arguments_bytes, self.max_message_bytes
            )));
        }
        Ok(())
    }

    /// The first setting that is zero where zero makes no sense (where it does, it reads
    /// as "off": zero_is_off).
    fn first_zero(&self) -> Option<&'static str> {
        let zero = [
            ("approval_ttl", self.approval_ttl.is_zero()),
            ("heartbeat_interval", self.heartbeat_interval.is_zero()),
            ("expiry_sweep", self.expiry_sweep.is_zero()),
            ("db_timeout", self.db_timeout.is_zero()),
            ("catch_up_interval", self.catch_up_interval.is_zero()),
            (
                "approval_poll_interval",
                self.approval_poll_interval.is_zero(),
            ),
            ("key_refresh_interval", self.key_refresh_interval.is_zero()),
            ("db_unavailable_after", self.db_unavailable_after.is_zero()),
            ("keepalive_timeout", self.keepalive_timeout.is_zero()),
            ("request_body_timeout", self.request_body_timeout.is_zero()),
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("max_connections", self.max_connections == 0),
            ("db_pool_size", self.db_pool_size == 0),
            ("watch_buffer", self.watch_buffer == 0),
            ("watch_stream_buffer", self.watch_stream_buffer == 0),
            ("max_message_bytes", self.max_message_bytes == 0),
            ("max_concurrent_streams", self.max_concurrent_streams == 0),
            ("max_concurrent_requests", self.max_concurrent_requests == 0),
            (
                "max_concurrent_requests_per_key",
                self.max_concurrent_requests_per_key == 0,
            ),
            (
                "max_concurrent_requests_per_connection",
                self.max_concurrent_requests_per_connection == 0,
            ),
            ("max_watch_streams", self.max_watch_streams == 0),
            ("max_arguments_bytes", self.max_arguments_bytes == 0),
            (
                "delivery_retry_initial",
                self.delivery_retry_initial.is_zero(),
            ),
            ("delivery_max_age", self.delivery_max_age.is_zero()),
            ("delivery_timeout", self.delivery_timeout.is_zero()),
            ("delivery_concurrency", self.delivery_concurrency == 0),
            ("max_pending_approvals", self.max_pending_approvals == 0),
        ];
        zero.iter()
            .find(|(_, is_zero)| *is_zero)
            .map(|(name, _)| *name)
    }
}

/// The database URL for the `keys` commands: flag or env, then the TOML file, then default.
pub fn resolve_database_url(args: &DatabaseArgs) -> Result<DatabaseUrl, ConfigError> {
    Ok(load(args.config.as_deref(), args)?.database_url)
}

/// The one loader: the TOML file at `file`, if any, under the settings clap found in `given`
/// (flags and environment), over the defaults; then the checks.
fn load(file: Option<&Path>, given: &impl Serialize) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // A setting clap did not find serializes as empty; dropped, it leaves the file's value.
    let mut given = Value::serialize(given)?.into_dict().unwrap_or_default();
    given.retain(|_, value| !matches!(value, Value::Empty(..)));
    let figment = figment.merge(Serialized::defaults(given));

    let settings = ServeArgs::augment_args(clap::Command::new("serve"));
    let is_setting =
        |key: &str| key != "config" && settings.get_arguments().any(|arg| arg.get_id() == key);
    // Only the file can fail to read, or hold a key that is no setting.
    let in_file = |problem: String| {
        let file = file.map_or("".into(), |f| format!("config file {}: ", f.display()));
        ConfigError(format!("{file}{}", problem.trim_end()))
    };
    let data = figment.data().map_err(|e| in_file(e.kind.to_string()))?;
    if let Some(key) = data
        .values()
        .flat_map(|d| d.keys())
        .find(|k| !is_setting(k))
    {
        return Err(in_file(format!("unknown setting {key:?}")));
    }

    let mut config: Config = figment.extract()?;
    let path = |key| match figment.contains(key) {
        true => figment
            .extract_inner(key)
            .map(Some)
            .map_err(ConfigError::from),
        false => Ok(None),
    };
    config.tls = tls_files(path("tls_cert")?, path("tls_key")?, path("tls_client_ca")?)?;
    config.validate()?;
    Ok(config)
}

/// TLS needs both a certificate and its key; a client CA only makes sense with them.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err(ConfigError(
            "tls_client_ca: needs tls_cert and tls_key as well".into(),
        )),
        (Some(_), None) => Err(ConfigError("tls_key: is required with tls_cert".into())),
        (None, Some(_)) => Err(ConfigError("tls_cert: is required with tls_key".into())),
    }
}

/// Parses a humantime duration (`250ms`, `90s`, `30m`, `24h`, `7d`, `1h 30m`) or a bare
/// number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    };
    match parsed {
        Ok(d) if d.as_millis() <= u128::from(u64::MAX) => Ok(d),
        Ok(_) => Err(format!("invalid duration {text:?}: too long")),
        // humantime's "unknown time unit" lists the units itself.
        Err(e) if e.contains("unit") => Err(format!("invalid duration {text:?}: {e}")),
        Err(e) => Err(format!(
            "invalid duration {text:?}: {e}; write e.g. 250ms, 90s, 30m, 24h or 7d"
        )),
    }
}

/// `#[serde(with)]` for durations written as text.
mod duration {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    /// As the settings are written: `30s`, `1h 30m`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// A duration where `0` switches the feature off (`None`).
    pub mod zero_is_off {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(|d| (!d.is_zero()).then_some(d))
        }

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(&d.unwrap_or_default(), s)
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // Jail's closures return figment's Result, as Jail asks.
mod tests {
    use super::*;
    use figment::Jail;

    /// `toolgate serve ARGS` as the binary parses and resolves it. Clap reads the process
    /// environment, so only call it inside a `Jail` (one at a time, variables restored).
    fn serve(args: &[&str]) -> Result<Config, ConfigError> {
        let argv = ["toolgate", "serve"].iter().chain(args);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        Config::resolve(&args)
    }

    fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("toolgate.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("600000000000y").is_err());
        let err = parse_duration("5x").unwrap_err();
        assert!(err.starts_with("invalid duration \"5x\": "), "{err}");
    }

    #[test]
    fn database_password_never_shows_in_debug() {
        let url = DatabaseUrl::new("postgres://toolgate:hunter2@db:5432/toolgate");
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("toolgate:***@db"), "{shown}");
        let config = Config {
            database_url: url,
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let args = ServeArgs {
            config: Some(file(
                &dir,
                "listen = \"127.0.0.1:7000\"\napproval_ttl = \"1h\"\n",
            )),
            listen: Some("127.0.0.1:8000".parse().unwrap()),
            database_url: None,
            approval_ttl: None,
            max_arguments_bytes: None,
            min_revision_wait: None,
            shutdown_grace: None,
            log_format: None,
            heartbeat_interval: None,
            watch_history: None,
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).unwrap();
        assert_eq!(config.listen.port(), 8000);
        assert_eq!(config.approval_ttl, Duration::from_secs(3600));
        assert_eq!(config.database_url.expose(), "sqlite://toolgate.db");
    }

    #[test]
    fn file_then_environment_then_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "toolgate.toml",
                "approval_ttl = \"1h\"\nwatch_buffer = 10\ndb_pool_size = 3\n",
            )?;
            jail.set_env("TOOLGATE_CONFIG", "toolgate.toml");
            let config = serve(&[]).unwrap();
            assert_eq!(config.approval_ttl, Duration::from_secs(3600));
            assert_eq!(config.watch_buffer, 10);

            jail.set_env("TOOLGATE_APPROVAL_TTL", "30m");
            jail.set_env("TOOLGATE_WATCH_BUFFER", "20");
            let config = serve(&[]).unwrap();
            assert_eq!(config.approval_ttl, Duration::from_secs(1800));
            assert_eq!(config.watch_buffer, 20);

            let config = serve(&["--approval-ttl", "90s", "--watch-buffer", "30"]).unwrap();
            assert_eq!(config.approval_ttl, Duration::from_secs(90));
            assert_eq!(config.watch_buffer, 30);
            // What no layer sets keeps the file's value, or the default.
            assert_eq!(config.db_pool_size, 3);
            assert_eq!(config.expiry_sweep, Duration::from_secs(5));

            // The keys commands read the same file, under their own flag and variable.
            jail.create_file("keys.toml", "database_url = \"sqlite://from-file.db\"\n")?;
            let keys = |url: Option<&str>| DatabaseArgs {
                database_url: url.map(String::from),
                config: Some("keys.toml".into()),
            };
            let url = resolve_database_url(&keys(None)).unwrap();
            assert_eq!(url.expose(), "sqlite://from-file.db");
            let url = resolve_database_url(&keys(Some("sqlite://flag.db"))).unwrap();
            assert_eq!(url.expose(), "sqlite://flag.db");
            Ok(())
        });
    }

    #[test]
    fn a_bad_duration_is_refused_naming_its_setting_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, "approval_ttl = \"5x\"\n");
        let from_file = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&from_file).unwrap_err().0;
        assert!(
            err.starts_with("approval_ttl: invalid duration \"5x\""),
            "{err}"
        );
        assert!(err.contains(&path.display().to_string()), "{err}");

        let from_flag = ServeArgs {
            config: Some(file(&dir, "approval_ttl = \"1h\"\n")),
            keepalive_timeout: Some("soon".into()),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&from_flag).unwrap_err().0;
        assert!(
            err.starts_with("keepalive_timeout: invalid duration \"soon\""),
            "{err}"
        );

        Jail::expect_with(|jail| {
            jail.set_env("TOOLGATE_EXPIRY_SWEEP", "1 fortnight");
            let err = serve(&[]).unwrap_err().0;
            assert!(err.starts_with("expiry_sweep: invalid duration"), "{err}");
            Ok(())
        });

        let number = file(&dir, "watch_buffer = \"many\"\n");
        let err = Config::resolve(&ServeArgs {
            config: Some(number),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.0.starts_with("watch_buffer: "), "{err}");
        let format = ServeArgs {
            log_format: Some("xml".into()),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&format).unwrap_err();
        assert_eq!(err.0, "log_format: \"xml\" is not text or json");
    }

    #[test]
    fn zero_switches_optional_limits_off_and_tls_needs_both_files() {
        let args = ServeArgs {
            max_connection_age: Some("0s".into()),
            request_timeout: Some("3s".into()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).unwrap();
        assert_eq!(config.max_connection_age, None);
        assert_eq!(config.request_timeout, Some(Duration::from_secs(3)));
        assert_eq!(Config::default().request_timeout, None);
        assert_eq!(config.keepalive_interval, None);
        let half = ServeArgs {
            tls_cert: Some("cert.pem".into()),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&half).unwrap_err();
        assert!(err.0.starts_with("tls_key:"), "{err}");
        let zero = ServeArgs {
            max_concurrent_requests: Some(0),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&zero).unwrap_err();
        assert!(err.0.starts_with("max_concurrent_requests:"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let zero_ttl = ServeArgs {
            config: Some(file(&dir, "approval_ttl = \"0s\"\n")),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&zero_ttl).unwrap_err();
        assert_eq!(err.0, "approval_ttl: must be more than zero");
        let too_big = ServeArgs {
            max_arguments_bytes: Some(4 * 1024 * 1024),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&too_big).unwrap_err();
        assert!(err.0.starts_with("max_arguments_bytes:"), "{err}");
    }

    #[test]
    fn unknown_file_settings_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["listne = \"127.0.0.1:7000\"\n", "config = \"other.toml\"\n"] {
            let path = file(&dir, text);
            let key = text.split(' ').next().unwrap();
            let args = ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            };
            let err = Config::resolve(&args).unwrap_err().0;
            assert!(err.contains(&format!("unknown setting \"{key}\"")), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            let keys = DatabaseArgs {
                database_url: None,
                config: Some(path),
            };
            let err = resolve_database_url(&keys).unwrap_err().0;
            assert!(err.contains(key), "{err}");
        }
        let missing = ServeArgs {
            config: Some(dir.path().join("missing.toml")),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&missing).unwrap_err().0;
        assert!(err.starts_with("config file "), "{err}");
        let broken = ServeArgs {
            config: Some(file(&dir, "listen = \n")),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&broken).unwrap_err().0;
        assert!(err.starts_with("config file "), "{err}");
    }

    /// Every flag, variable and key sets a field of `Config`, and every field is set by one.
    /// The start-up log shows every setting as written, and no password.
    #[test]
    fn settings_serialize_as_written_without_the_password() {
        let config = Config {
            database_url: DatabaseUrl::new("postgres://toolgate:s3cret@db:5432/toolgate"),
            request_timeout: None,
            ..Config::default()
        };
        let v = serde_json::to_value(&config).unwrap();
        assert_eq!(
            v["database_url"],
            "postgres://toolgate:***@db:5432/toolgate"
        );
        assert!(!v.to_string().contains("s3cret"));
        assert_eq!(v["approval_ttl"], "1day");
        assert_eq!(v["request_timeout"], "0s");
        assert_eq!(v["log_format"], "text");
        assert_eq!(v["listen"], "127.0.0.1:50051");
        // Serialized settings read back as the same settings.
        let back: Config = serde_json::from_value(v).unwrap();
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
    }

    #[test]
    fn every_setting_reaches_config() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
            listen = "127.0.0.1:7000"
            database_url = "sqlite://other.db"
            approval_ttl = "1h"
            max_arguments_bytes = 1000
            min_revision_wait = "3s"
            shutdown_grace = "21s"
            log_format = "json"
            heartbeat_interval = "16s"
            watch_history = 7
            watch_buffer = 8
            watch_stream_buffer = 4096
            expiry_sweep = "6s"
            db_timeout = "4s"
            catch_up_interval = "2s"
            approval_poll_interval = "100ms"
            key_refresh_interval = "3s"
            db_unavailable_after = "11s"
            db_pool_size = 2
            metrics_listen = "127.0.0.1:7001"
            http_listen = "127.0.0.1:7002"
            otlp_endpoint = "http://127.0.0.1:4317"
            bootstrap_admin_key = "acme:k0123456789abcdef:0000000000000000000000000000000000000000000000000000000000000000"
            max_message_bytes = 100000
            max_concurrent_streams = 9
            max_concurrent_requests = 10
            max_concurrent_requests_per_key = 11
            max_concurrent_requests_per_connection = 12
            request_body_timeout = "7s"
            max_connections = 14
            handshake_timeout = "15s"
            max_watch_streams = 13
            request_timeout = "8s"
            keepalive_interval = "45s"
            keepalive_timeout = "9s"
            max_connection_age = "1h"
            max_connection_age_grace = "10s"
            shutdown_delay = "1s"
            max_pending_approvals = 17
            delivery_retry_initial = "2s"
            delivery_retry_max = "3m"
            delivery_max_age = "2h"
            delivery_timeout = "4s"
            delivery_concurrency = 2
            delivery_public_only = true
            tls_cert = "cert.pem"
            tls_key = "key.pem"
            tls_client_ca = "ca.pem"
        "#;
        let settings = ServeArgs::augment_args(clap::Command::new("serve"));
        let keys = text.lines().filter(|l| l.contains(" = ")).count();
        assert_eq!(
            keys,
            settings.get_arguments().count() - 1,
            "a key per setting"
        );
        let args = ServeArgs {
            config: Some(file(&dir, text)),
            ..ServeArgs::default()
        };
        let config = format!("{:#?}", Config::resolve(&args).unwrap());
        let default = format!("{:#?}", Config::default());
        // One entry per field: its line and the lines of its value.
        let fields = |shown: &str| {
            let mut fields: Vec<String> = Vec::new();
            for line in shown.lines().skip(1) {
                let starts_field = line.as_bytes().get(4).is_some_and(u8::is_ascii_lowercase);
                match (starts_field, fields.last_mut()) {
                    (false, Some(field)) => field.push_str(line),
                    _ => fields.push(line.to_owned()),
                }
            }
            fields
        };
        let (config, default) = (fields(&config), fields(&default));
        assert_eq!(config.len(), default.len());
        // `tls` takes three keys; every other field one.
        assert_eq!(config.len() + 2, keys, "a setting that reaches no field");
        for (set, unset) in config.iter().zip(&default) {
            assert_ne!(set, unset, "no setting reached this field");
        }
    }

    /// README.md's table is the contract: one row per setting, with its flag and variable.
    #[test]
    fn every_setting_has_its_flag_variable_and_key_in_the_readme() {
        let rows: Vec<Vec<&str>> = include_str!("../README.md")
            .lines()
            .filter(|l| l.starts_with("| `--"))
            .map(|l| l.split('|').map(|c| c.trim().trim_matches('`')).collect())
            .collect();
        let settings = ServeArgs::augment_args(clap::Command::new("serve"));
        let mut documented = 0;
        for arg in settings.get_arguments() {
            let id = arg.get_id().as_str();
            let long = arg.get_long().unwrap();
            let env = arg.get_env().unwrap().to_str().unwrap();
            assert_eq!(long, id.replace('_', "-"));
            assert_eq!(env, format!("TOOLGATE_{}", id.to_uppercase()));
            let key = if id == "config" { "" } else { id };
            let flag = format!("--{long}");
            let row = rows.iter().find(|r| r[1] == flag);
            assert_eq!(
                row.map(|r| (r[2], r[3])),
                Some((env, key)),
                "README row of {flag}"
            );
            documented += 1;
        }
        assert_eq!(rows.len(), documented, "README rows without a setting");
    }
}
