//! Configuration: command-line flags, then `TOOLGATE_*` environment variables, then an
//! optional TOML file, then defaults. Resolved once into [`Config`].

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
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
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Revoke a key by id; running servers refuse it within key_refresh_interval.
    Revoke {
        id: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, env = "TOOLGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// TOML file with the same settings as `serve`.
    #[arg(long, env = "TOOLGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file; flags and environment variables override it.
    #[arg(long, env = "TOOLGATE_CONFIG")]
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
    /// Open WatchConfig and WatchApprovals streams; beyond it new ones get RESOURCE_EXHAUSTED [default: 20000].
    #[arg(long, env = "TOOLGATE_MAX_WATCH_STREAMS")]
    pub max_watch_streams: Option<usize>,
    /// Longest a unary call may take, e.g. 10s (a shorter grpc-timeout from the client wins) [default: none].
    #[arg(long, env = "TOOLGATE_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// HTTP/2 ping to an idle connection this often; 0 = never [default: 60s].
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

/// The settings a TOML file may hold; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub approval_ttl: Option<String>,
    pub max_arguments_bytes: Option<usize>,
    pub min_revision_wait: Option<String>,
    pub shutdown_grace: Option<String>,
    pub log_format: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub watch_history: Option<u64>,
    pub watch_buffer: Option<usize>,
    pub expiry_sweep: Option<String>,
    pub db_timeout: Option<String>,
    pub catch_up_interval: Option<String>,
    pub approval_poll_interval: Option<String>,
    pub key_refresh_interval: Option<String>,
    pub db_unavailable_after: Option<String>,
    pub db_pool_size: Option<u32>,
    pub metrics_listen: Option<SocketAddr>,
    pub max_message_bytes: Option<usize>,
    pub max_concurrent_streams: Option<u32>,
    pub max_concurrent_requests: Option<usize>,
    pub max_concurrent_requests_per_key: Option<usize>,
    pub max_concurrent_requests_per_connection: Option<usize>,
    pub request_body_timeout: Option<String>,
    pub max_watch_streams: Option<usize>,
    pub request_timeout: Option<String>,
    pub keepalive_interval: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub max_connection_age: Option<String>,
    pub max_connection_age_grace: Option<String>,
    pub shutdown_delay: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A database URL whose password never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:secret@host → scheme://user:***@host
        let url = &self.0;
        let redacted = match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let userinfo = &url[s + 3..at];
                match userinfo.find(':') {
                    Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                    None => url.clone(),
                }
            }
            _ => url.clone(),
        };
        write!(f, "{redacted:?}")
    }
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    pub approval_ttl: Duration,
    pub max_arguments_bytes: usize,
    pub min_revision_wait: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub heartbeat_interval: Duration,
    pub watch_history: u64,
    pub watch_buffer: usize,
    pub expiry_sweep: Duration,
    pub db_timeout: Duration,
    pub catch_up_interval: Duration,
    pub approval_poll_interval: Duration,
    pub key_refresh_interval: Duration,
    pub db_unavailable_after: Duration,
    pub db_pool_size: u32,
    pub metrics_listen: SocketAddr,
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub max_concurrent_requests: usize,
    pub max_concurrent_requests_per_key: usize,
    pub max_concurrent_requests_per_connection: usize,
    /// How long a unary call's request body may take to arrive.
    pub request_body_timeout: Duration,
    pub max_watch_streams: usize,
    /// `None`: no server-side bound.
    pub request_timeout: Option<Duration>,
    /// `None`: no HTTP/2 pings.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// `None`: connections live as long as their clients keep them.
    pub max_connection_age: Option<Duration>,
    pub max_connection_age_grace: Duration,
    pub shutdown_delay: Duration,
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
            expiry_sweep: Duration::from_secs(5),
            db_timeout: Duration::from_secs(5),
            catch_up_interval: Duration::from_secs(1),
            approval_poll_interval: Duration::from_millis(250),
            key_refresh_interval: Duration::from_secs(1),
            db_unavailable_after: Duration::from_secs(10),
            db_pool_size: 16,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 1024,
            max_concurrent_requests: 1024,
            max_concurrent_requests_per_key: 1024,
            max_concurrent_requests_per_connection: 128,
            request_body_timeout: Duration::from_secs(5),
            max_watch_streams: 20_000,
            // Off: every store call is bounded by db_timeout and every wait by
            // min_revision_wait already, and a server-side timer on every call costs
            // 10-30 µs of latency at low concurrency (benches/grpc.rs). Clients' own
            // grpc-timeout is always honoured.
            request_timeout: None,
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: Some(Duration::from_secs(30 * 60)),
            max_connection_age_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            tls: None,
        }
    }
}

/// A configuration value that could not be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The PostgreSQL connection settings (unused with SQLite).
    pub fn pg_settings(&self) -> crate::store::PgSettings {
        crate::store::PgSettings {
            query_timeout: self.db_timeout,
            max_connections: self.db_pool_size,
        }
    }

    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = read_file(args.config.as_deref())?;
        let d = Config::default();
        let ttl = args.approval_ttl.clone().or(file.approval_ttl);
        let wait = args.min_revision_wait.clone().or(file.min_revision_wait);
        let grace = args.shutdown_grace.clone().or(file.shutdown_grace);
        let format = args.log_format.clone().or(file.log_format);
        let heartbeat = args.heartbeat_interval.clone().or(file.heartbeat_interval);
        let sweep = args.expiry_sweep.clone().or(file.expiry_sweep);
        let config = Config {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            database_url: args
                .database_url
                .clone()
                .or(file.database_url)
                .map(DatabaseUrl::new)
                .unwrap_or(d.database_url),
            approval_ttl: opt_duration("approval_ttl", ttl)?.unwrap_or(d.approval_ttl),
            max_arguments_bytes: args
                .max_arguments_bytes
                .or(file.max_arguments_bytes)
                .unwrap_or(d.max_arguments_bytes),
            min_revision_wait: opt_duration("min_revision_wait", wait)?
                .unwrap_or(d.min_revision_wait),
            shutdown_grace: opt_duration("shutdown_grace", grace)?.unwrap_or(d.shutdown_grace),
            heartbeat_interval: opt_duration("heartbeat_interval", heartbeat)?
                .unwrap_or(d.heartbeat_interval),
            watch_history: args
                .watch_history
                .or(file.watch_history)
                .unwrap_or(d.watch_history),
            watch_buffer: args
                .watch_buffer
                .or(file.watch_buffer)
                .unwrap_or(d.watch_buffer),
            expiry_sweep: opt_duration("expiry_sweep", sweep)?.unwrap_or(d.expiry_sweep),
            db_timeout: opt_duration("db_timeout", args.db_timeout.clone().or(file.db_timeout))?
                .unwrap_or(d.db_timeout),
            catch_up_interval: opt_duration(
                "catch_up_interval",
                args.catch_up_interval.clone().or(file.catch_up_interval),
            )?
            .unwrap_or(d.catch_up_interval),
            approval_poll_interval: opt_duration(
                "approval_poll_interval",
                args.approval_poll_interval
                    .clone()
                    .or(file.approval_poll_interval),
            )?
            .unwrap_or(d.approval_poll_interval),
            key_refresh_interval: opt_duration(
                "key_refresh_interval",
                args.key_refresh_interval
                    .clone()
                    .or(file.key_refresh_interval),
            )?
            .unwrap_or(d.key_refresh_interval),
            db_unavailable_after: opt_duration(
                "db_unavailable_after",
                args.db_unavailable_after
                    .clone()
                    .or(file.db_unavailable_after),
            )?
            .unwrap_or(d.db_unavailable_after),
            db_pool_size: args
                .db_pool_size
                .or(file.db_pool_size)
                .unwrap_or(d.db_pool_size),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or(d.metrics_listen),
            max_message_bytes: args
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(d.max_message_bytes),
            max_concurrent_streams: args
                .max_concurrent_streams
                .or(file.max_concurrent_streams)
                .unwrap_or(d.max_concurrent_streams),
            max_concurrent_requests: args
                .max_concurrent_requests
                .or(file.max_concurrent_requests)
                .unwrap_or(d.max_concurrent_requests),
            max_concurrent_requests_per_key: args
                .max_concurrent_requests_per_key
                .or(file.max_concurrent_requests_per_key)
                .unwrap_or(d.max_concurrent_requests_per_key),
            max_concurrent_requests_per_connection: args
                .max_concurrent_requests_per_connection
                .or(file.max_concurrent_requests_per_connection)
                .unwrap_or(d.max_concurrent_requests_per_connection),
            request_body_timeout: opt_duration(
                "request_body_timeout",
                args.request_body_timeout
                    .clone()
                    .or(file.request_body_timeout),
            )?
            .unwrap_or(d.request_body_timeout),
            max_watch_streams: args
                .max_watch_streams
                .or(file.max_watch_streams)
                .unwrap_or(d.max_watch_streams),
            request_timeout: zero_is_off(
                "request_timeout",
                args.request_timeout.clone().or(file.request_timeout),
                d.request_timeout,
            )?,
            keepalive_interval: zero_is_off(
                "keepalive_interval",
                args.keepalive_interval.clone().or(file.keepalive_interval),
                d.keepalive_interval,
            )?,
            keepalive_timeout: opt_duration(
                "keepalive_timeout",
                args.keepalive_timeout.clone().or(file.keepalive_timeout),
            )?
            .unwrap_or(d.keepalive_timeout),
            max_connection_age: zero_is_off(
                "max_connection_age",
                args.max_connection_age.clone().or(file.max_connection_age),
                d.max_connection_age,
            )?,
            max_connection_age_grace: opt_duration(
                "max_connection_age_grace",
                args.max_connection_age_grace
                    .clone()
                    .or(file.max_connection_age_grace),
            )?
            .unwrap_or(d.max_connection_age_grace),
            shutdown_delay: opt_duration(
                "shutdown_delay",
                args.shutdown_delay.clone().or(file.shutdown_delay),
            )?
            .unwrap_or(d.shutdown_delay),
            tls: tls_files(
                args.tls_cert.clone().or(file.tls_cert),
                args.tls_key.clone().or(file.tls_key),
                args.tls_client_ca.clone().or(file.tls_client_ca),
            )?,
            log_format: match format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "log_format: {other:?} is not text or json"
                    )));
                }
            },
        };
        if config.approval_ttl.is_zero() {
            return Err(ConfigError("approval_ttl: must be more than zero".into()));
        }
        for (name, d) in [
            ("heartbeat_interval", config.heartbeat_interval),
            ("expiry_sweep", config.expiry_sweep),
            ("db_timeout", config.db_timeout),
            ("catch_up_interval", config.catch_up_interval),
            ("approval_poll_interval", config.approval_poll_interval),
            ("key_refresh_interval", config.key_refresh_interval),
            ("db_unavailable_after", config.db_unavailable_after),
            ("keepalive_timeout", config.keepalive_timeout),
            ("request_body_timeout", config.request_body_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name}: must be more than zero")));
            }
        }
        if config.db_pool_size == 0 {
            return Err(ConfigError("db_pool_size: must be more than zero".into()));
        }
        if config.watch_buffer == 0 {
            return Err(ConfigError("watch_buffer: must be more than zero".into()));
        }
        for (name, n) in [
            ("max_message_bytes", config.max_message_bytes),
            (
                "max_concurrent_streams",
                config.max_concurrent_streams as usize,
            ),
            ("max_concurrent_requests", config.max_concurrent_requests),
            (
                "max_concurrent_requests_per_key",
                config.max_concurrent_requests_per_key,
            ),
            (
                "max_concurrent_requests_per_connection",
                config.max_concurrent_requests_per_connection,
            ),
            ("max_watch_streams", config.max_watch_streams),
        ] {
            if n == 0 {
                return Err(ConfigError(format!("{name}: must be more than zero")));
            }
        }
        if config.max_arguments_bytes >= config.max_message_bytes {
            return Err(ConfigError(format!(
                "max_arguments_bytes: {} does not fit in max_message_bytes ({})",
                config.max_arguments_bytes, config.max_message_bytes
            )));
        }
        if config.max_arguments_bytes == 0 {
            return Err(ConfigError(
                "max_arguments_bytes: must be more than zero".into(),
            ));
        }
        Ok(config)
    }
}

/// The database URL for the `keys` commands: flag or env, then the TOML file, then default.
pub fn resolve_database_url(args: &DatabaseArgs) -> Result<DatabaseUrl, ConfigError> {
    if let Some(url) = &args.database_url {
        return Ok(DatabaseUrl::new(url.clone()));
    }
    let file = read_file(args.config.as_deref())?;
    Ok(file
        .database_url
        .map(DatabaseUrl::new)
        .unwrap_or(Config::default().database_url))
}

fn read_file(path: Option<&std::path::Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}

/// A duration where `0` switches the feature off.
fn zero_is_off(
    name: &str,
    value: Option<String>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    Ok(match opt_duration(name, value)? {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => default,
    })
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

fn opt_duration(name: &str, value: Option<String>) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|v| parse_duration(&v).map_err(|e| ConfigError(format!("{name}: {e}"))))
        .transpose()
}

/// Parses `500ms`, `90s`, `15m`, `24h`, `7d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 90s, 15m, 24h or 7d"))?;
    let per_unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?}; use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn database_password_never_shows_in_debug() {
        let url = DatabaseUrl::new("postgres://toolgate:hunter2@db:5432/toolgate");
        let shown = format!("{url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("toolgate:***@db"), "{shown}");
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toolgate.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\napproval_ttl = \"1h\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
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
        assert_eq!(config.keepalive_interval, Some(Duration::from_secs(60)));
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
    }

    #[test]
    fn unknown_file_settings_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toolgate.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:7000\"\n").unwrap();
        let err = read_file(Some(&path)).unwrap_err();
        assert!(err.0.contains("listne"), "{err}");
    }
}
