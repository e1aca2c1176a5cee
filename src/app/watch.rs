//! Where a watch stream starts and how it catches up; the streams themselves belong to the
//! transport (they are protocol state machines), the decisions here to every transport.

use super::{App, AppError};
use crate::metrics::{StreamGuard, Watch};
use crate::policy::{Caller, RevisionChanges};
use crate::snapshot::{TenantEvent, TenantSnapshot};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How a WatchConfig stream begins.
#[derive(Debug)]
pub enum ConfigStart {
    /// Send the snapshot first; `reset` when it replaces a resume that could not replay.
    Snapshot { reset: bool },
    /// Replay these revisions (every one after `since_revision`, in order).
    Replay(Vec<RevisionChanges>),
}

/// A WatchConfig subscription: the snapshot and every later event, taken together, and
/// how to begin.
#[derive(Debug)]
pub struct ConfigSubscription {
    pub snapshot: Arc<TenantSnapshot>,
    pub events: broadcast::Receiver<TenantEvent>,
    pub start: ConfigStart,
    /// The revision the stream stands at once `start` is sent.
    pub position: u64,
    /// Counts the stream as open until dropped.
    pub open: StreamGuard,
}

impl App {
    /// Counts a new stream, or refuses it with RESOURCE_EXHAUSTED at `max_watch_streams`.
    pub fn open_watch(&self, which: Watch) -> Result<StreamGuard, AppError> {
        let limit = self.limits.max_watch_streams;
        self.metrics.try_open_watch(which, limit).ok_or_else(|| {
            tracing::warn!(limit, "watch stream refused: max_watch_streams reached");
            AppError::ResourceExhausted(
                "too many open watch streams on this server (max_watch_streams); retry with \
                 backoff, or on another replica"
                    .into(),
            )
        })
    }

    /// Subscribes to the caller's tenant. A resume (`since`) replays the change log when
    /// it holds every revision after `since` within `watch_history`; otherwise the stream
    /// starts over from a reset snapshot. A resume from a revision this server has not
    /// reached yet waits for it, bounded.
    pub async fn watch_config(
        &self,
        caller: &Caller,
        since: Option<u64>,
    ) -> Result<ConfigSubscription, AppError> {
        if since.is_some() {
            self.snapshot_at_least(&caller.tenant, since).await?;
        }
        let open = self.open_watch(Watch::Config)?;
        let (snapshot, events) = self.snapshots.subscribe(&caller.tenant);
        let current = snapshot.revision;
        let (start, position) = match since {
            None => (ConfigStart::Snapshot { reset: false }, current),
            Some(since) if since <= current && current - since <= self.limits.watch_history => {
                // The log must hold every revision after `since`; otherwise start over.
                let replay = self.revisions_after(&caller.tenant, since).await?;
                let last = replay
                    .as_ref()
                    .map(|r| r.last().map_or(since, |rc| rc.revision));
                match replay {
                    Some(replay) if last >= Some(current) => {
                        (ConfigStart::Replay(replay), last.unwrap_or(current))
                    }
                    _ => (ConfigStart::Snapshot { reset: true }, current),
                }
            }
            Some(_) => (ConfigStart::Snapshot { reset: true }, current),
        };
        Ok(ConfigSubscription {
            snapshot,
            events,
            start,
            position,
            open,
        })
    }

    /// The revisions after `position` from the change log, when a stream received one that
    /// skips ahead. `None` when the log has a gap: the stream must start over.
    pub async fn revisions_after(
        &self,
        tenant: &str,
        position: u64,
    ) -> Result<Option<Vec<RevisionChanges>>, AppError> {
        let replay = self.store.changes_since(tenant, position).await?;
        let contiguous = replay
            .iter()
            .zip(position + 1..)
            .all(|(rc, want)| rc.revision == want);
        Ok(contiguous.then_some(replay))
    }
}
