//! The expiry sweep: approvals past their expiry are marked expired, so their watchers
//! hear of it even when nobody asks about them again. (Readers already count an open
//! approval past its expiry as expired; the sweep makes it a recorded change.)

use super::App;
use crate::policy::UnixMillis;
use std::sync::Arc;
use std::time::Duration;

/// Most approvals one sweep statement expires; a full batch is followed by another at once.
const BATCH: u32 = 500;

/// Runs until the task is aborted (at drain).
pub async fn sweep_expired(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while let Some(full) = app.sweep_once().await {
            if !full {
                break;
            }
        }
    }
}

impl App {
    /// Expires one batch of due approvals and tells their watchers; `Some(true)` when the
    /// batch was full (more may be due), `None` when the store failed (logged).
    pub async fn sweep_once(&self) -> Option<bool> {
        match self.store.expire_due(UnixMillis::now().0, BATCH).await {
            Ok(expired) => {
                for (tenant, approval) in &expired {
                    self.approval_changed(tenant, approval);
                }
                Some(expired.len() == BATCH as usize)
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiry sweep failed; retrying next tick");
                None
            }
        }
    }
}
