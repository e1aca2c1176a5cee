//! Builds and runs the gRPC server: store, snapshot, health, reflection and graceful drain.

use crate::config::Config;
use crate::follow::{FollowSettings, HealthSwitch, follow};
use crate::grpc::{AppState, Limits, PolicyApi};
use crate::hub::ApprovalHub;
use crate::policy::UnixMillis;
use crate::proto::v1::policy_service_server::PolicyServiceServer;
use crate::snapshot::{Snapshots, TenantSnapshot};
use crate::store::{AnyStore, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
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
}

/// Opens the store named by the URL's scheme (created and migrated if needed).
pub async fn open_store(config: &Config) -> Result<AnyStore, StoreError> {
    AnyStore::open(config.database_url.expose(), &config.pg_settings()).await
}

/// Health of the policy service and of the server as a whole (the empty name), together.
#[derive(Clone)]
struct Health(tonic_health::server::HealthReporter);

impl HealthSwitch for Health {
    async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.0
            .set_service_status("toolgate.v1.PolicyService", status)
            .await;
        self.0.set_service_status("", status).await;
    }
}

/// Runs toolgate on `listener` until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = open_store(&config).await?;
    serve(store, config, listener, shutdown).await
}

/// Runs toolgate over an opened store. Health turns SERVING only once the snapshot of
/// every tenant is loaded; on shutdown it turns NOT_SERVING first, then the server stops
/// accepting, lets in-flight calls finish within the grace period, and returns.
pub async fn serve<S: Store>(
    store: S,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let snapshots = Snapshots::with_buffer(config.watch_buffer);
    let mut tools = 0;
    let tenants = store.load_all_tools().await?;
    for t in &tenants {
        tools += t.tools.len();
    }
    for t in tenants {
        snapshots.replace(&t.tenant, TenantSnapshot::new(t.revision, t.tools));
    }
    let limits = Limits {
        approval_ttl: config.approval_ttl,
        max_arguments_bytes: config.max_arguments_bytes,
        min_revision_wait: config.min_revision_wait,
        heartbeat_interval: config.heartbeat_interval,
        watch_history: config.watch_history,
    };
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let approvals = ApprovalHub::new(config.watch_buffer);
    let state = Arc::new(AppState::new(store, snapshots, approvals, limits, drain_rx));
    let sweeper = tokio::spawn(sweep_expired(state.clone(), config.expiry_sweep));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PolicyServiceServer<PolicyApi<S>>>()
        .await;
    let follower = tokio::spawn(follow(
        state.clone(),
        FollowSettings {
            catch_up_interval: config.catch_up_interval,
            approval_poll_interval: config.approval_poll_interval,
            key_refresh_interval: config.key_refresh_interval,
            db_unavailable_after: config.db_unavailable_after,
        },
        Health(health.clone()),
    ));
    let api = PolicyApi::new(state);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PolicyServiceServer::new(api))
        // TCP_NODELAY: a unary answer is several small writes (headers, data, trailers);
        // with Nagle's algorithm each one after the first waits for the peer's delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        );
    let mut server = tokio::spawn(server);
    tracing::info!(%addr, tools, "toolgate serving");

    tokio::select! {
        finished = &mut server => return Ok(finished??),
        () = shutdown => {}
    }
    tracing::info!("shutdown requested: health NOT_SERVING, draining in-flight calls");
    // Stopped first, so it cannot turn health back to SERVING.
    follower.abort();
    health
        .set_not_serving::<PolicyServiceServer<PolicyApi<S>>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Streams end with UNAVAILABLE so their clients resume on another replica.
    let _ = drain_tx.send(true);
    sweeper.abort();
    let _ = stop_tx.send(());
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

/// Marks approvals past their expiry as expired, so their watchers hear of it even when
/// nobody asks about them again.
async fn sweep_expired<S: Store>(state: Arc<AppState<S>>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match state.store.expire_due(UnixMillis::now().0, 500).await {
                Ok(expired) => {
                    for (tenant, approval) in &expired {
                        state.approvals.publish(tenant, approval);
                    }
                    if expired.len() < 500 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiry sweep failed; retrying next tick");
                    break;
                }
            }
        }
    }
}
