//! WatchConfig and WatchApprovals: server streams fed from the per-tenant broadcasts.
//!
//! Each stream is a state machine that tonic polls directly: no task and no channel per
//! stream, which keeps an open stream to a few hundred bytes of server memory and saves a
//! wake-up per event. A stream never holds up a Save: when its client reads too slowly, the
//! tenant's broadcast moves on, the stream is told it lagged, and it sends a fresh snapshot
//! (policies are state, so nothing is lost). On drain every stream ends with UNAVAILABLE so
//! clients reconnect elsewhere and resume.

use super::convert::{approval_to_proto, tool_to_proto};
use super::error::ApiError;
use super::{AppState, Stream, may_see, visible_approval};
use crate::metrics::{StreamGuard, Watch};
use crate::policy::names::check_optional_id;
use crate::policy::{Approval, Caller, Policy, RevisionChanges, Role, ToolChange, UnixMillis};
use crate::proto::v1 as pb;
use crate::snapshot::{TenantEvent, TenantSnapshot};
use crate::store::Store;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use tokio::time::Interval;
use tonic::Status;

/// What one watcher may see.
#[derive(Debug, Clone)]
struct View {
    agent: bool,
    integration: Option<String>,
}

impl View {
    fn wants(&self, integration_id: &str) -> bool {
        self.integration
            .as_deref()
            .is_none_or(|i| i == integration_id)
    }

    fn snapshot(&self, snapshot: &TenantSnapshot, reset: bool) -> pb::WatchConfigResponse {
        let tools = snapshot
            .tools(self.integration.as_deref())
            .into_iter()
            .filter(|t| !(self.agent && t.policy == Policy::Disabled))
            .map(|t| tool_to_proto(t, !self.agent))
            .collect();
        pb::WatchConfigResponse {
            revision: snapshot.revision,
            event: Some(pb::watch_config_response::Event::Snapshot(pb::Snapshot {
                tools,
                reset,
            })),
        }
    }

    /// The revision as this watcher sees it; `None` when none of it is visible.
    fn change(&self, rc: &RevisionChanges) -> Option<pb::WatchConfigResponse> {
        let mut change = pb::Change::default();
        for c in &rc.changes {
            let (integration_id, name) = c.key();
            if !self.wants(integration_id) {
                continue;
            }
            match c {
                // For an agent a disabled tool is gone.
                ToolChange::Upsert(t) if !(self.agent && t.policy == Policy::Disabled) => {
                    change.upserted.push(tool_to_proto(t, !self.agent));
                }
                _ => change.removed.push(pb::ToolRef {
                    integration_id: integration_id.to_owned(),
                    tool_name: name.to_owned(),
                }),
            }
        }
        (!change.upserted.is_empty() || !change.removed.is_empty()).then_some(
            pb::WatchConfigResponse {
                revision: rc.revision,
                event: Some(pb::watch_config_response::Event::Change(change)),
            },
        )
    }
}

fn heartbeat(revision: u64) -> pb::WatchConfigResponse {
    pb::WatchConfigResponse {
        revision,
        event: Some(pb::watch_config_response::Event::Heartbeat(
            pb::Heartbeat {},
        )),
    }
}

fn draining() -> Status {
    Status::unavailable("server is shutting down; reconnect and resume with since_revision")
}

/// Completes when the server starts to drain.
async fn drained(drain: &mut watch::Receiver<bool>) {
    // An error means the server is gone altogether: drain as well.
    let _ = drain.wait_for(|d| *d).await;
}

/// Counts a new stream, or refuses it with RESOURCE_EXHAUSTED at `max_watch_streams`.
fn open_stream<S>(state: &AppState<S>, which: Watch) -> Result<StreamGuard, ApiError> {
    state
        .metrics
        .try_open_watch(which, state.limits.max_watch_streams)
        .ok_or_else(|| {
            tracing::warn!(
                limit = state.limits.max_watch_streams,
                "watch stream refused: max_watch_streams reached"
            );
            ApiError::ResourceExhausted(
                "too many open watch streams on this server (max_watch_streams); retry with \
                 backoff, or on another replica"
                    .into(),
            )
        })
}

pub(super) async fn watch_config<S: Store>(
    state: Arc<AppState<S>>,
    caller: Arc<Caller>,
    req: pb::WatchConfigRequest,
) -> Result<Stream<pb::WatchConfigResponse>, ApiError> {
    check_optional_id("integration_id", &req.integration_id)?;
    let guard = open_stream(&state, Watch::Config)?;
    let view = View {
        agent: caller.role == Role::Agent,
        integration: (!req.integration_id.is_empty()).then_some(req.integration_id.clone()),
    };
    let (snapshot, events) = state.snapshots.subscribe(&caller.tenant);
    let mut initial = Vec::new();
    let position = match req.since_revision {
        Some(since)
            if since <= snapshot.revision
                && snapshot.revision - since <= state.limits.watch_history =>
        {
            let replay = state.store.changes_since(&caller.tenant, since).await?;
            // The log must hold every revision after `since`; otherwise start over.
            let contiguous = replay
                .iter()
                .zip(since + 1..)
                .all(|(rc, want)| rc.revision == want);
            if contiguous && replay.last().map_or(since, |rc| rc.revision) >= snapshot.revision {
                initial.extend(replay.iter().filter_map(|rc| view.change(rc)));
                replay.last().map_or(since, |rc| rc.revision)
            } else {
                initial.push(view.snapshot(&snapshot, true));
                snapshot.revision
            }
        }
        Some(_) => {
            initial.push(view.snapshot(&snapshot, true));
            snapshot.revision
        }
        None => {
            initial.push(view.snapshot(&snapshot, false));
            snapshot.revision
        }
    };
    let every = state.limits.heartbeat_interval;
    let watcher = ConfigWatcher {
        _open: guard,
        drain: state.drain.clone(),
        state,
        tenant: caller.tenant.clone(),
        view,
        position,
        events,
        beat: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        queue: initial.into(),
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        watcher,
        ConfigWatcher::next,
    )))
}

/// What woke a waiting stream.
enum Wake<E> {
    Drain,
    Beat,
    Event(E),
}

struct ConfigWatcher<S> {
    _open: StreamGuard,
    state: Arc<AppState<S>>,
    tenant: String,
    view: View,
    /// The newest revision this watcher has been brought to.
    position: u64,
    events: broadcast::Receiver<TenantEvent>,
    drain: watch::Receiver<bool>,
    beat: Interval,
    /// Events decided but not yet taken by the client.
    queue: VecDeque<pb::WatchConfigResponse>,
    done: bool,
}

impl<S: Store> ConfigWatcher<S> {
    /// The next item of the stream; `None` ends it. Drain is checked before anything
    /// queued, so a draining server stops promptly.
    async fn next(mut self) -> Option<(Result<pb::WatchConfigResponse, Status>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if *self.drain.borrow() {
                self.done = true;
                return Some((Err(draining()), self));
            }
            if let Some(item) = self.queue.pop_front() {
                return Some((Ok(item), self));
            }
            let wake = tokio::select! {
                () = drained(&mut self.drain) => Wake::Drain,
                _ = self.beat.tick() => Wake::Beat,
                event = self.events.recv() => Wake::Event(event),
            };
            match wake {
                // Draining, or the server is gone altogether: end either way.
                Wake::Drain => {
                    self.done = true;
                    return Some((Err(draining()), self));
                }
                Wake::Beat => self.queue.push_back(heartbeat(self.position)),
                Wake::Event(event) => match Box::pin(self.on_event(event)).await {
                    Ok(items) => self.queue.extend(items),
                    Err(status) => {
                        self.done = true;
                        return Some((Err(status), self));
                    }
                },
            }
        }
    }

    async fn on_event(
        &mut self,
        event: Result<TenantEvent, broadcast::error::RecvError>,
    ) -> Result<Vec<pb::WatchConfigResponse>, Status> {
        match event {
            Ok(TenantEvent::Changes(rc)) if rc.revision <= self.position => Ok(Vec::new()),
            Ok(TenantEvent::Changes(rc)) if rc.revision == self.position + 1 => {
                self.position = rc.revision;
                Ok(self.view.change(&rc).into_iter().collect())
            }
            // Rare: boxed so the store query's future does not sit inside every idle stream.
            Ok(TenantEvent::Changes(_)) => Box::pin(self.fill_gap()).await,
            Ok(TenantEvent::Reset) => Ok(vec![self.resync()]),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.state.metrics.watch_reset(Watch::Config);
                tracing::warn!(
                    missed,
                    position = self.position,
                    "watcher fell behind; sending a fresh snapshot"
                );
                Ok(vec![self.resync()])
            }
            Err(broadcast::error::RecvError::Closed) => Err(draining()),
        }
    }

    /// Revisions this watcher has not seen came before the one received: read them from
    /// the change log (the one received is among them).
    async fn fill_gap(&mut self) -> Result<Vec<pb::WatchConfigResponse>, Status> {
        let replay = self
            .state
            .store
            .changes_since(&self.tenant, self.position)
            .await
            .map_err(|e| Status::from(ApiError::from(e)))?;
        let mut out = Vec::new();
        for rc in replay {
            if rc.revision != self.position + 1 {
                return Ok(vec![self.resync()]);
            }
            self.position = rc.revision;
            out.extend(self.view.change(&rc));
        }
        Ok(out)
    }

    fn resync(&mut self) -> pb::WatchConfigResponse {
        let snapshot = self.state.snapshots.get(&self.tenant);
        self.position = snapshot.revision;
        self.view.snapshot(&snapshot, true)
    }
}

pub(super) async fn watch_approvals<S: Store>(
    state: Arc<AppState<S>>,
    caller: Arc<Caller>,
    req: pb::WatchApprovalsRequest,
) -> Result<Stream<pb::WatchApprovalsResponse>, ApiError> {
    check_optional_id("approval_id", &req.approval_id)?;
    let guard = open_stream(&state, Watch::Approvals)?;
    let events = state.approvals.subscribe(&caller.tenant);
    let only = (!req.approval_id.is_empty()).then_some(req.approval_id.clone());
    let initial = match &only {
        Some(id) => Some(visible_approval(&state, &caller, id).await?),
        None => None,
    };
    let watcher = ApprovalWatcher {
        _open: guard,
        drain: state.drain.clone(),
        state,
        caller,
        only,
        events,
        queue: initial.into_iter().collect(),
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(
        watcher,
        ApprovalWatcher::next,
    )))
}

struct ApprovalWatcher<S> {
    _open: StreamGuard,
    state: Arc<AppState<S>>,
    caller: Arc<Caller>,
    only: Option<String>,
    events: broadcast::Receiver<Arc<Approval>>,
    drain: watch::Receiver<bool>,
    queue: VecDeque<Approval>,
    done: bool,
}

impl<S: Store> ApprovalWatcher<S> {
    async fn next(mut self) -> Option<(Result<pb::WatchApprovalsResponse, Status>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if *self.drain.borrow() {
                self.done = true;
                return Some((Err(draining()), self));
            }
            if let Some(a) = self.queue.pop_front() {
                let message = pb::WatchApprovalsResponse {
                    approval: Some(approval_to_proto(&a, UnixMillis::now())),
                };
                return Some((Ok(message), self));
            }
            let wake = tokio::select! {
                () = drained(&mut self.drain) => Wake::Drain,
                event = self.events.recv() => Wake::<_>::Event(event),
            };
            match wake {
                Wake::Drain | Wake::Beat => {
                    self.done = true;
                    return Some((Err(draining()), self));
                }
                Wake::Event(Ok(a)) => {
                    let wanted = self.only.as_deref().is_none_or(|id| id == a.id)
                        && may_see(&self.caller, &a);
                    if wanted {
                        self.queue.push_back((*a).clone());
                    }
                }
                Wake::Event(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    self.state.metrics.watch_reset(Watch::Approvals);
                    tracing::warn!(missed, "approval watcher fell behind; ending its stream");
                    self.done = true;
                    let status = Status::resource_exhausted(
                        "watcher fell behind; re-read with GetApproval or ListApprovals and watch again",
                    );
                    return Some((Err(status), self));
                }
                Wake::Event(Err(broadcast::error::RecvError::Closed)) => {
                    self.done = true;
                    return Some((Err(draining()), self));
                }
            }
        }
    }
}
