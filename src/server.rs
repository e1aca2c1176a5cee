//! Builds and runs the gRPC server: store, snapshot, health, reflection, metrics, limits,
//! TLS and graceful drain.

use crate::app::follow::{FollowSettings, HealthSwitch, follow};
use crate::app::sweep::sweep_expired;
use crate::app::{App, Limits};
use crate::config::{Config, TlsFiles};
use crate::grpc::PolicyApi;
use crate::grpc::connections::{self, ConnectionLimits};
use crate::grpc::direct::DirectLayer;
use crate::grpc::gate::{Gate, GateLimits};
use crate::grpc::routes::{RouteSettings, Routes};
use crate::grpc::rpc_metrics::RpcMetricsLayer;
use crate::hub::ApprovalHub;
use crate::metrics::{Gauges, Metrics, serve_metrics};
use crate::proto::v1::policy_service_server::PolicyServiceServer;
use crate::snapshot::Snapshots;
use crate::store::{SqlStore, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
// A background task is aborted when its handle drops, so no early return leaves one behind.
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    #[error("{0}")]
    Tls(String),
    #[error("HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// The sockets toolgate serves on, bound by the caller (so port 0 works in tests and a
/// bind error is reported before anything starts).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    /// Prometheus `/metrics`.
    pub metrics: TcpListener,
    /// Slack's interactions (`http_listen`); none when it is off.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, String> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen: cannot listen on {}: {e}", config.listen))?;
        let metrics = TcpListener::bind(config.metrics_listen)
            .await
            .map_err(|e| {
                format!(
                    "metrics_listen: cannot listen on {}: {e}",
                    config.metrics_listen
                )
            })?;
        let http = match config.http_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("http_listen: cannot listen on {addr}: {e}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            grpc,
            metrics,
            http,
        })
    }
}

/// Opens the store named by the URL's scheme (created and migrated if needed).
pub async fn open_store(config: &Config) -> Result<SqlStore, StoreError> {
    crate::store::open(config.database_url.expose(), &config.pg_settings()).await
}

/// Creates the bootstrap admin key unless a key with its id exists (a revoked one stays
/// revoked; one that differs is left alone, with a warning). Replicas starting together
/// may race to create it: the loser finds it made.
async fn ensure_bootstrap_key(
    store: &dyn Store,
    bootstrap: &crate::keys::Bootstrap,
) -> Result<(), StoreError> {
    let existing =
        |keys: Vec<crate::store::KeyInfo>| keys.into_iter().find(|k| k.id == bootstrap.id);
    let key = match existing(store.list_keys().await?) {
        Some(key) => key,
        None => {
            let created = store
                .create_key(
                    &bootstrap.id,
                    &bootstrap.tenant,
                    crate::policy::Role::Admin,
                    &bootstrap.secret_sha256,
                    Some("bootstrap"),
                )
                .await;
            match (created, existing(store.list_keys().await?)) {
                (Ok(()), _) => {
                    tracing::info!(key_id = %bootstrap.id, tenant = %bootstrap.tenant, "bootstrap admin key created");
                    return Ok(());
                }
                (Err(_), Some(key)) => key,
                (Err(e), None) => return Err(e),
            }
        }
    };
    if key.revoked_at.is_some() {
        tracing::info!(key_id = %key.id, "bootstrap admin key was revoked; it stays revoked");
    } else if key.tenant != bootstrap.tenant || key.role != crate::policy::Role::Admin {
        tracing::warn!(
            key_id = %key.id,
            "bootstrap_admin_key names a key that exists with another tenant or role; left as it is"
        );
    }
    Ok(())
}

/// The health service name that stays SERVING while the process runs: Kubernetes'
/// liveness probe asks for it, so a database outage or a drain never restarts the pod.
pub const LIVENESS: &str = "liveness";

/// Health of the policy service and of the server as a whole (the empty name), together.
/// Once draining, nothing turns it back to SERVING.
#[derive(Clone)]
struct Health {
    reporter: tonic_health::server::HealthReporter,
    serving: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Health {
    async fn report(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.serving.store(serving, Ordering::Relaxed);
        self.reporter
            .set_service_status("toolgate.v1.PolicyService", status)
            .await;
        self.reporter.set_service_status("", status).await;
    }
}

impl HealthSwitch for Health {
    async fn set(&self, serving: bool) {
        if serving && self.draining.load(Ordering::Relaxed) {
            return;
        }
        self.report(serving).await;
    }
}

/// Runs toolgate on `listeners` until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = open_store(&config).await?;
    serve(store, config, listeners, shutdown).await
}

/// Starts the HTTP listener (Slack's clicks and the console) on `listener`; it stops when
/// the handle is dropped.
fn start_http(
    listener: TcpListener,
    app: Arc<App>,
    api: impl crate::console::Api,
    config: &Config,
) -> Result<AbortOnDropHandle<()>, RunError> {
    let addr = listener.local_addr()?;
    let client =
        crate::delivery::http_client(config.delivery_timeout, config.delivery_public_only)?;
    tracing::info!(%addr, "HTTP listener serving the console at / and Slack's clicks at {}", crate::http::SLACK_INTERACTIONS);
    let settings = crate::http::HttpSettings {
        max_body: config.max_message_bytes,
        // Keys would cross this plain-HTTP port in clear, and a client certificate the
        // gRPC port demands would not be asked for.
        console_api: config.tls.is_none(),
        max_connections: config.max_connections,
    };
    let serve = crate::http::serve_http(listener, app, client, api, settings);
    Ok(AbortOnDropHandle::new(tokio::spawn(serve)))
}

/// Runs toolgate over an opened store. Metrics answer at once; health turns SERVING only
/// once the snapshot of every tenant is loaded. On shutdown health turns NOT_SERVING
/// first, the server keeps serving for `shutdown_delay` (while load balancers notice),
/// then stops accepting, ends watch streams with UNAVAILABLE, lets in-flight calls finish
/// within `shutdown_grace`, and returns.
pub async fn serve(
    store: SqlStore,
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let drain = CancellationToken::new();
    let app = build_app(store, &config, drain.clone()).await?;
    let metrics = app.metrics.clone();
    let serving = Arc::new(AtomicBool::new(false));
    let metrics_addr = listeners.metrics.local_addr()?;
    let _metrics_server = AbortOnDropHandle::new(tokio::spawn(serve_metrics(
        listeners.metrics,
        scrape(app.clone(), serving.clone()),
    )));
    tracing::info!(addr = %metrics_addr, "metrics serving at /metrics");

    let tools = app.load_snapshots().await?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let health = Health {
        reporter,
        serving,
        draining: Arc::new(AtomicBool::new(false)),
    };
    health.report(true).await;
    let background = start_background(&app, &config, &health);
    let api = policy_api(&app, &config);
    // The HTTP listener: Slack's clicks, and the console, which calls this same stack.
    let _http_server = match listeners.http {
        Some(listener) => Some(start_http(listener, app.clone(), api.clone(), &config)?),
        None => None,
    };
    let (reflection_v1, reflection_v1alpha) = reflection()?;

    let addr = listeners.grpc.local_addr()?;
    let incoming = incoming(listeners.grpc, &config, metrics.clone(), drain.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Every call of every service passes the grpc_server_* metrics first; PolicyService's
    // then go straight to it, and tonic's router serves health and reflection.
    let server = grpc_builder(&config)?
        .layer(RpcMetricsLayer::new(metrics))
        .layer(DirectLayer::new(api))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);
    tracing::info!(%addr, tools, tls = config.tls.is_some(), "toolgate serving");

    tokio::select! {
        finished = &mut server => return Ok(finished??),
        () = shutdown => {}
    }
    drain_and_stop(&config, &health, background, &drain, stop_tx, server).await
}

/// The tasks beside the server: the expiry sweep, the delivery worker, and the follower
/// (other replicas' changes, the key refresh, health while the database is away).
fn start_background(
    app: &Arc<App>,
    config: &Config,
    health: &Health,
) -> [AbortOnDropHandle<()>; 3] {
    let sweeper = tokio::spawn(sweep_expired(app.clone(), config.expiry_sweep));
    let deliveries = tokio::spawn(crate::delivery::worker::run(
        app.clone(),
        crate::delivery::worker::WorkerSettings::from(config),
    ));
    let follower = tokio::spawn(follow(
        app.clone(),
        FollowSettings {
            catch_up_interval: config.catch_up_interval,
            approval_poll_interval: config.approval_poll_interval,
            key_refresh_interval: config.key_refresh_interval,
            db_unavailable_after: config.db_unavailable_after,
        },
        health.clone(),
    ));
    [follower, deliveries, sweeper].map(AbortOnDropHandle::new)
}

/// Server reflection, v1 and v1alpha, over toolgate's and the health service's
/// descriptors.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    RunError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The shutdown: health NOT_SERVING, serving on for `shutdown_delay` while load balancers
/// notice, then the background tasks stop, streams end UNAVAILABLE, the server stops
/// accepting, and in-flight calls get `shutdown_grace` to finish.
async fn drain_and_stop(
    config: &Config,
    health: &Health,
    background: [AbortOnDropHandle<()>; 3],
    drain: &CancellationToken,
    stop: tokio::sync::oneshot::Sender<()>,
    mut server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) -> Result<(), RunError> {
    health.draining.store(true, Ordering::Relaxed);
    health.report(false).await;
    if !config.shutdown_delay.is_zero() {
        tracing::info!(
            delay = ?config.shutdown_delay,
            "shutdown requested: health NOT_SERVING; serving on while load balancers notice"
        );
        tokio::time::sleep(config.shutdown_delay).await;
    }
    tracing::info!("draining: streams end UNAVAILABLE, in-flight calls finish");
    drop(background);
    // Streams end with UNAVAILABLE so their clients resume on another replica, and health
    // watches end (they have seen NOT_SERVING), so no open stream holds up the shutdown.
    drain.cancel();
    let mut reporter = health.reporter.clone();
    reporter.clear_service_status("").await;
    reporter
        .clear_service_status("toolgate.v1.PolicyService")
        .await;
    reporter.clear_service_status(LIVENESS).await;
    let _ = stop.send(());
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(finished) => finished??,
        Err(_) => {
            tracing::warn!(grace = ?config.shutdown_grace, "grace period over; dropping calls still running");
            server.abort();
        }
    }
    tracing::info!("toolgate stopped");
    Ok(())
}

/// The application over `store`: its metrics, the bootstrap key, and the shared state
/// every way in uses.
async fn build_app(
    store: SqlStore,
    config: &Config,
    drain: CancellationToken,
) -> Result<Arc<App>, RunError> {
    let metrics = Arc::new(Metrics::new(store.backend()));
    let store: Arc<dyn Store> = Arc::new(store.with_metrics(metrics.clone()));
    if let Some(value) = &config.bootstrap_admin_key {
        // Checked when the settings were read.
        if let Ok(bootstrap) = crate::keys::Bootstrap::parse(value) {
            ensure_bootstrap_key(&*store, &bootstrap).await?;
        }
    }
    let snapshots = Snapshots::with_buffer(config.watch_buffer);
    let approvals = ApprovalHub::new(config.watch_buffer);
    let limits = Limits {
        approval_ttl: config.approval_ttl,
        max_arguments_bytes: config.max_arguments_bytes,
        min_revision_wait: config.min_revision_wait,
        heartbeat_interval: config.heartbeat_interval,
        watch_history: config.watch_history,
        watch_stream_buffer: config.watch_stream_buffer,
        max_watch_streams: config.max_watch_streams,
        delivery_public_only: config.delivery_public_only,
        max_pending_approvals: config.max_pending_approvals,
    };
    Ok(Arc::new(App::new(
        store, snapshots, approvals, limits, drain, metrics,
    )))
}

/// PolicyService as every way in calls it: behind the gate (request ids, authentication,
/// limits), with WatchConfig and Decide served in front of the generated service.
fn policy_api(app: &Arc<App>, config: &Config) -> Gate<Routes<PolicyServiceServer<PolicyApi>>> {
    let api = PolicyServiceServer::new(PolicyApi::new(app.clone()))
        .max_decoding_message_size(config.max_message_bytes);
    let limits = GateLimits {
        max_concurrent_requests: config.max_concurrent_requests,
        max_concurrent_requests_per_key: config.max_concurrent_requests_per_key,
        request_body_timeout: config.request_body_timeout,
    };
    let routes = RouteSettings {
        max_message_bytes: config.max_message_bytes,
        request_body_timeout: config.request_body_timeout,
    };
    let api = Routes::new(api, app.clone(), routes);
    Gate::new(api, app.clone(), limits)
}

/// tonic's server with the settings: streams per connection, HTTP/2 keepalive, the
/// optional per-call timeout, connection age, TLS.
fn grpc_builder(config: &Config) -> Result<Server, RunError> {
    let mut builder = Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(config.keepalive_interval)
        .http2_keepalive_timeout(Some(config.keepalive_timeout));
    if let Some(timeout) = config.request_timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(age) = config.max_connection_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(config.max_connection_age_grace);
    }
    if let Some(files) = &config.tls {
        builder = builder
            .tls_config(tls_config(files)?)
            .map_err(|e| RunError::Tls(format!("tls: {e}")))?;
    }
    Ok(builder)
}

/// The gRPC port's connections, as admitted within `max_connections` and the handshake
/// timeout.
fn incoming(
    listener: TcpListener,
    config: &Config,
    metrics: Arc<Metrics>,
    drain: CancellationToken,
) -> impl tokio_stream::Stream<Item = std::io::Result<connections::Admitted>> + use<> {
    // TCP_NODELAY: a unary answer is several small writes (headers, data, trailers);
    // with Nagle's algorithm each one after the first waits for the peer's delayed ACK.
    // TCP keepalive finds peers that vanished without a word (no FIN, no RST): probed after
    // 60 s of silence, then every 10 s, closed after 3 unanswered, so within about 90 s
    // (the kernel's own 75 s x 9 would take 12 minutes). It is what frees a vanished
    // watcher's stream, and its probes keep idle connections open through NATs and load
    // balancers; HTTP/2 pings (`keepalive_interval`) are off by default.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
        .with_keepalive_interval(Some(Duration::from_secs(10)))
        .with_keepalive_retries(Some(3));
    let limits = ConnectionLimits {
        max_connections: config.max_connections,
        handshake_timeout: config.handshake_timeout,
        max_concurrent_requests_per_connection: config.max_concurrent_requests_per_connection,
    };
    connections::admit(incoming, limits, metrics, drain)
}

/// What `/metrics` shows: the counters plus gauges read from the state at scrape time.
fn scrape(app: Arc<App>, serving: Arc<AtomicBool>) -> Arc<dyn Fn() -> String + Send + Sync> {
    Arc::new(move || {
        let totals = app.snapshots.totals();
        app.metrics.render(Gauges {
            tenants: totals.tenants,
            tools: totals.tools,
            revision_sum: totals.revision_sum,
            serving: serving.load(Ordering::Relaxed),
        })
    })
}

/// The server's TLS settings from its PEM files; a file that cannot be read is named.
fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, RunError> {
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| RunError::Tls(format!("{setting}: cannot read {}: {e}", path.display())))
    };
    let cert = read("tls_cert", &files.cert)?;
    let key = read("tls_key", &files.key)?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read("tls_client_ca", ca)?));
    }
    Ok(tls)
}
