//! Following the database: what other processes wrote reaches this one.
//!
//! With PostgreSQL, several replicas write one database. Each replica follows it:
//!
//! - **Revisions.** The per-tenant change log is the truth. `NOTIFY toolgate_revisions`
//!   only says "tenant T reached revision R" so a replica catches up at once; a poll of
//!   every tenant's revision each `catch_up_interval` covers a lost notification, and a
//!   re-established LISTEN connection triggers a full catch-up. Catching up applies the
//!   missed revisions from the log, in order, to the snapshot (and so to WatchConfig).
//! - **Approvals.** Other replicas' approval changes are read each
//!   `approval_poll_interval` by transaction id (no NOTIFY on that write path) and
//!   published to this replica's WatchApprovals streams.
//! - **Keys.** The key cache is reloaded each `key_refresh_interval`, and at once on
//!   `NOTIFY toolgate_keys`.
//! - **Health.** Every poll is also a probe. Without the database, decisions that need
//!   only the snapshot go on (how stale it is is logged), and after `db_unavailable_after`
//!   health turns NOT_SERVING until the database answers again.
//!
//! With SQLite the same loop runs; it finds nothing to catch up (one process writes the
//! file) except keys minted or revoked by the `keys` command.

use super::App;
use crate::metrics::Metrics;
use crate::policy::UnixMillis;
use crate::store::{ApprovalCursor, StoreError, Wakeup};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the follower runs; from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct FollowSettings {
    pub catch_up_interval: Duration,
    pub approval_poll_interval: Duration,
    pub key_refresh_interval: Duration,
    pub db_unavailable_after: Duration,
}

/// Flips the server's health with the database's reachability.
pub trait HealthSwitch: Send + Sync + 'static {
    fn set(&self, serving: bool) -> impl std::future::Future<Output = ()> + Send;
}

/// Whether the database answered lately, and when it last did.
struct DbHealth<H> {
    switch: H,
    metrics: Arc<Metrics>,
    last_ok: Instant,
    serving: bool,
    down_since: Option<Instant>,
    limit: Duration,
}

impl<H: HealthSwitch> DbHealth<H> {
    async fn ok(&mut self) {
        self.last_ok = Instant::now();
        self.metrics.database_ok();
        if let Some(since) = self.down_since.take() {
            tracing::info!(outage = ?since.elapsed(), "database reachable again; caught up");
        }
        if !self.serving {
            self.serving = true;
            self.switch.set(true).await;
        }
    }

    async fn failed(&mut self, what: &str, e: &StoreError) {
        let stale_for = self.last_ok.elapsed();
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!(
                error = %e,
                what,
                "database unreachable: auto, disabled and unknown tools are decided from the \
                 snapshot; calls that need the database answer UNAVAILABLE"
            );
        } else {
            tracing::debug!(error = %e, what, ?stale_for, "database still unreachable");
        }
        if stale_for >= self.limit && self.serving {
            self.serving = false;
            tracing::error!(
                ?stale_for,
                "no database for longer than db_unavailable_after: health NOT_SERVING"
            );
            self.switch.set(false).await;
        }
    }
}

/// Runs until the task is aborted (at drain).
pub async fn follow<H: HealthSwitch>(app: Arc<App>, settings: FollowSettings, switch: H) {
    let approvals = tokio::spawn(follow_approvals(
        app.clone(),
        settings.approval_poll_interval,
    ));
    // The approval poller ends with this future (it is aborted with it).
    let _abort_approvals = tokio_util::task::AbortOnDropHandle::new(approvals);
    let mut health = DbHealth {
        switch,
        metrics: app.metrics.clone(),
        last_ok: Instant::now(),
        serving: true,
        down_since: None,
        limit: settings.db_unavailable_after,
    };
    let mut wakeups = None;
    let mut poll = tokio::time::interval(settings.catch_up_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut keys = tokio::time::interval(settings.key_refresh_interval);
    keys.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if wakeups.is_none() {
            match app.store.wakeups().await {
                Ok(rx) => wakeups = Some(rx),
                Err(e) => health.failed("listen", &e).await,
            }
        }
        let next = async {
            match wakeups.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            wakeup = next => match wakeup {
                Some(Wakeup::Revision { tenant, revision, saved_at }) => {
                    catch_up_to(&app, &mut health, &tenant, revision, saved_at).await
                }
                Some(Wakeup::Keys) => refresh_keys(&app, &mut health).await,
                Some(Wakeup::Reconnected) => {
                    catch_up_all(&app, &mut health).await;
                    refresh_keys(&app, &mut health).await;
                }
                None => wakeups = None,
            },
            _ = poll.tick() => catch_up_all(&app, &mut health).await,
            _ = keys.tick() => refresh_keys(&app, &mut health).await,
        }
    }
}

/// Another replica saved `tenant` at `revision` (at `saved_at`, when known): catch up
/// unless this replica is there already, and record how long the change took to arrive.
async fn catch_up_to<H: HealthSwitch>(
    app: &App,
    health: &mut DbHealth<H>,
    tenant: &str,
    revision: u64,
    saved_at: Option<i64>,
) {
    if app.snapshots.get(tenant).revision >= revision {
        return;
    }
    match app.catch_up(tenant).await {
        Ok(()) => {
            if let Some(at) = saved_at {
                let lag = UnixMillis::now().0.saturating_sub(at).max(0);
                app.metrics
                    .snapshot
                    .propagation_seconds
                    .observe(lag as f64 / 1000.0);
            }
            health.ok().await
        }
        Err(e) => health.failed("catch up", &e).await,
    }
}

async fn refresh_keys<H: HealthSwitch>(app: &App, health: &mut DbHealth<H>) {
    match app.store.live_keys().await {
        Ok(live) => {
            app.keys.replace_all(live);
            health.ok().await;
        }
        Err(e) => health.failed("reload keys", &e).await,
    }
}

/// Catches up every tenant whose stored revision is ahead of its snapshot.
async fn catch_up_all<H: HealthSwitch>(app: &App, health: &mut DbHealth<H>) {
    let revisions = match app.store.tenant_revisions().await {
        Ok(r) => r,
        Err(e) => return health.failed("poll revisions", &e).await,
    };
    for (tenant, revision) in revisions {
        let have = app.snapshots.get(&tenant).revision;
        if have < revision {
            tracing::debug!(%tenant, have, revision, "catching up from the change log");
            if let Err(e) = app.catch_up(&tenant).await {
                return health.failed("catch up", &e).await;
            }
        }
    }
    health.ok().await;
}

/// Publishes approval changes other replicas made to this replica's watchers.
async fn follow_approvals(app: Arc<App>, every: Duration) {
    let mut cursor = ApprovalCursor::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match app.store.approval_changes(&mut cursor).await {
            Ok(changes) => {
                for (tenant, approval) in &changes {
                    app.approvals.publish(tenant, approval);
                }
            }
            // The database's health is judged (and logged) by the main loop.
            Err(e) => tracing::debug!(error = %e, "reading approval changes failed; retrying"),
        }
    }
}
