//! The use cases: everything toolgate does, written once for every way in (gRPC today;
//! the CLI, the console, webhook workers and Slack callbacks next). No tonic and no sqlx
//! in here: requests come in as domain values, answers and [`AppError`]s go out, and each
//! transport converts them to its own messages.
//!
//! - [`auth`]: an API key → the caller it stands for, and the role table.
//! - [`decide`]: Decide (policy from the snapshot; approvals through the store).
//! - [`save`]: the one Save flow (ConnectIntegration, SetPolicy), and UpsertPeople.
//! - [`approvals`]: SubmitApproval, GetApproval, ListApprovals, and who sees what.
//! - [`watch`]: where a WatchConfig stream starts, and the change log it fills gaps from.
//! - [`follow`]: what other processes wrote reaches this one; [`sweep`] expires approvals.

pub mod approvals;
pub mod auth;
pub mod channels;
pub mod decide;
mod error;
pub mod follow;
pub mod history;
pub mod save;
pub mod slack;
pub mod sweep;
pub mod watch;

pub use auth::Operation;
pub use error::AppError;

use crate::hub::ApprovalHub;
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::policy::{Approval, RevisionChanges};
use crate::snapshot::{Snapshots, TenantSnapshot};
use crate::store::{Saved, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

/// Limits and timings the use cases apply; from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub approval_ttl: Duration,
    pub max_arguments_bytes: usize,
    pub min_revision_wait: Duration,
    pub heartbeat_interval: Duration,
    /// Revisions a WatchConfig resume may replay before it gets a snapshot instead.
    pub watch_history: u64,
    /// Bytes of changes one WatchConfig stream may queue for its client (a replay, a gap
    /// fill); a larger catch-up is a fresh snapshot, which is shared.
    pub watch_stream_buffer: usize,
    /// Open Watch streams (both kinds) beyond which new ones get RESOURCE_EXHAUSTED.
    pub max_watch_streams: usize,
    /// Channels may point only at public addresses.
    pub delivery_public_only: bool,
    /// Approvals of one tenant that may wait for people at once.
    pub max_pending_approvals: u64,
}

/// One server's state and its use cases; shared by every transport through an `Arc`.
#[derive(Debug)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub snapshots: Snapshots,
    pub approvals: ApprovalHub,
    pub limits: Limits,
    /// Cancelled when the server drains: open streams end with UNAVAILABLE.
    pub drain: CancellationToken,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Live API keys, so authentication needs no database round trip.
    pub keys: KeyCache,
    /// Names each Decide's answer (see [`decide`]).
    decision_ids: decide::DecisionIds,
    /// Rate-limits the log of refused credentials.
    refusals: auth::Refusals,
    /// One lock per tenant around "commit a revision, then apply it to the snapshot", so
    /// revisions reach the snapshot in the order they were committed.
    write_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Woken when this replica wrote an approval change (whose deliveries the database
    /// queued in the same transaction) or re-queued a delivery: the delivery worker looks
    /// for due deliveries at once instead of at its next poll.
    pub deliveries_due: tokio::sync::Notify,
    /// Tenants with an enabled channel, as the delivery worker last read them (every
    /// `catch_up_interval`) and this replica's own SetNotificationChannel left them: only
    /// their approval changes wake the worker, so the approvals of tenants without a
    /// channel cost it nothing. A hint: the worker's poll finds every delivery.
    pub channel_tenants: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl App {
    pub fn new(
        store: Arc<dyn Store>,
        snapshots: Snapshots,
        approvals: ApprovalHub,
        limits: Limits,
        drain: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        App {
            store,
            snapshots,
            approvals,
            limits,
            drain,
            metrics,
            keys: KeyCache::default(),
            decision_ids: decide::DecisionIds::new(),
            refusals: auth::Refusals::default(),
            write_locks: std::sync::Mutex::new(HashMap::new()),
            deliveries_due: tokio::sync::Notify::new(),
            channel_tenants: Default::default(),
        }
    }

    /// Loads every tenant's tools into the snapshot (at start); returns how many tools.
    pub async fn load_snapshots(&self) -> Result<usize, StoreError> {
        let mut tools = 0;
        for t in self.store.load_all_tools().await? {
            tools += t.tools.len();
            self.snapshots
                .replace(&t.tenant, TenantSnapshot::new(t.revision, t.tools));
        }
        Ok(tools)
    }

    /// The lock around "commit a revision, then apply it to the snapshot" for one tenant.
    pub async fn tenant_write_lock(&self, tenant: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.write_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(tenant.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Brings a tenant's snapshot to the store's latest revision from the change log
    /// (revisions another replica saved, or a Save whose apply found a gap).
    pub async fn catch_up(&self, tenant: &str) -> Result<(), StoreError> {
        let _guard = self.tenant_write_lock(tenant).await;
        let before = self.snapshots.get(tenant).revision;
        self.catch_up_locked(tenant).await?;
        let after = self.snapshots.get(tenant).revision;
        self.metrics
            .revisions_followed(after.saturating_sub(before));
        Ok(())
    }

    /// [`Self::catch_up`] for a caller that holds the tenant's write lock.
    async fn catch_up_locked(&self, tenant: &str) -> Result<(), StoreError> {
        let have = self.snapshots.get(tenant).revision;
        for rc in self.store.changes_since(tenant, have).await? {
            if self.snapshots.apply(tenant, &rc).is_err() {
                let all = self.store.load_tenant_tools(tenant).await?;
                self.snapshots
                    .replace(tenant, TenantSnapshot::new(all.revision, all.tools));
                return Ok(());
            }
        }
        Ok(())
    }

    /// Applies a committed Save to the snapshot (the caller holds the tenant's lock).
    async fn apply_saved(&self, tenant: &str, saved: &Saved) {
        if saved.changes.is_empty() {
            return;
        }
        let rc = RevisionChanges {
            revision: saved.revision,
            changes: saved.changes.clone(),
        };
        if self.snapshots.apply(tenant, &rc).is_err()
            && let Err(e) = self.catch_up_locked(tenant).await
        {
            // The Save is committed; the snapshot catches up on the next Save or restart.
            tracing::error!(error = ?e, "snapshot could not catch up after a save");
        }
    }

    /// Tells the tenant's WatchApprovals streams of a change this replica made, and
    /// counts it.
    pub fn approval_changed(&self, tenant: &str, approval: &Approval) {
        self.metrics.approval(approval);
        self.approvals.publish(tenant, approval);
        let has_channel = self
            .channel_tenants
            .read()
            .is_ok_and(|tenants| tenants.contains(tenant));
        if has_channel {
            self.deliveries_due.notify_one();
        }
    }

    /// The tenant's snapshot, at `min` revision or later: waits up to
    /// `min_revision_wait`, then answers UNAVAILABLE rather than from an older revision.
    pub async fn snapshot_at_least(
        &self,
        tenant: &str,
        min: Option<u64>,
    ) -> Result<Arc<TenantSnapshot>, AppError> {
        let Some(min) = min else {
            return Ok(self.snapshots.get(tenant));
        };
        // Boxed, like the store calls on the Decide path (see `auth`): the wait's timer
        // held inline would make every Decide's future larger, waiting or not.
        let reached = Box::pin(self.snapshots.wait_for_revision(
            tenant,
            min,
            self.limits.min_revision_wait,
        ))
        .await;
        reached.map_err(|have| {
            AppError::Unavailable(format!(
                "min_revision: this server is at revision {have}, behind {min}; retry"
            ))
        })
    }
}

#[cfg(test)]
mod tests;
