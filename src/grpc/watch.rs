//! WatchConfig and WatchApprovals: server streams fed from the per-tenant broadcasts.
//!
//! Each stream is a state machine that tonic polls directly: no task and no channel per
//! stream, which keeps an open stream to a few hundred bytes of server memory and saves a
//! wake-up per event. A stream never holds up a Save: when its client reads too slowly, the
//! tenant's broadcast moves on, the stream is told it lagged, and it sends a fresh snapshot
//! (policies are state, so nothing is lost). On drain every stream ends with UNAVAILABLE so
//! clients reconnect elsewhere and resume.

use super::Stream;
use super::convert::{approval_to_proto, tool_to_proto};
use crate::app::watch::ConfigStart;
use crate::app::{App, AppError, approvals::may_see};
use crate::metrics::{StreamGuard, Watch};
use crate::policy::names::{ApprovalId, check_optional_id};
use crate::policy::{Approval, Caller, Policy, RevisionChanges, Role, ToolChange, UnixMillis};
use crate::proto::v1 as pb;
use crate::snapshot::{TenantEvent, TenantSnapshot};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// One gRPC message of a WatchConfig stream, framed (the 5-byte prefix and the encoded
/// message) and ready to send. `shared` frames belong to their revision's
/// [`crate::snapshot::Encodings`] and are sent by every stream that needs them; the others
/// were made for this stream alone.
#[derive(Debug, Clone)]
pub(super) struct OutFrame {
    pub bytes: Arc<Vec<u8>>,
    pub shared: bool,
}

/// A frame in a stream's queue. A shared one is held weakly, so a stream whose client
/// never reads does not keep an old revision's encodings alive; if they are gone by the
/// time it is taken, the stream is sent a fresh snapshot instead.
#[derive(Debug)]
enum Queued {
    Own(Arc<Vec<u8>>),
    Shared(std::sync::Weak<Vec<u8>>),
}

impl From<OutFrame> for Queued {
    fn from(frame: OutFrame) -> Self {
        if frame.shared {
            Queued::Shared(Arc::downgrade(&frame.bytes))
        } else {
            Queued::Own(frame.bytes)
        }
    }
}

impl OutFrame {
    fn own(message: &pb::WatchConfigResponse) -> Self {
        OutFrame {
            bytes: Arc::new(grpc_frame(message)),
            shared: false,
        }
    }
}

/// `message` as one uncompressed gRPC length-prefixed message.
pub(super) fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message
        .encode(&mut out)
        .expect("a Vec grows to fit the message");
    out
}

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

    /// The key of this view's encoding of one kind of message in a revision's encodings.
    fn key(&self, kind: &str) -> String {
        let who = if self.agent { "agent" } else { "admin" };
        match &self.integration {
            Some(i) => format!("{kind}/{who}/{i}"),
            None => format!("{kind}/{who}/*"),
        }
    }

    /// The snapshot as this watcher sees it: encoded once per revision and view, shared.
    fn snapshot(&self, snapshot: &TenantSnapshot, reset: bool) -> OutFrame {
        let kind = if reset { "reset" } else { "snapshot" };
        let bytes = snapshot.encodings.get_or_make(&self.key(kind), || {
            grpc_frame(&self.snapshot_message(snapshot, reset))
        });
        OutFrame {
            bytes,
            shared: true,
        }
    }

    fn snapshot_message(&self, snapshot: &TenantSnapshot, reset: bool) -> pb::WatchConfigResponse {
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

    /// The revision `rc` as this watcher sees it; `None` when none of it is visible. When
    /// `rc` is the tenant's current revision (`current`), the frame is shared.
    fn change(&self, rc: &RevisionChanges, current: Option<&TenantSnapshot>) -> Option<OutFrame> {
        match current.filter(|s| s.revision == rc.revision) {
            Some(snapshot) => {
                // An empty encoding stands for "nothing visible", so it is made once too.
                let bytes = snapshot.encodings.get_or_make(&self.key("change"), || {
                    self.change_message(rc)
                        .map(|m| grpc_frame(&m))
                        .unwrap_or_default()
                });
                (!bytes.is_empty()).then_some(OutFrame {
                    bytes,
                    shared: true,
                })
            }
            None => self.change_message(rc).map(|m| OutFrame::own(&m)),
        }
    }

    fn change_message(&self, rc: &RevisionChanges) -> Option<pb::WatchConfigResponse> {
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

    /// A replay's frames, made for this stream alone; `None` when they would take more
    /// than `budget` bytes (the stream is sent a snapshot instead).
    fn replay(&self, replay: &[RevisionChanges], budget: usize) -> Option<Vec<OutFrame>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for rc in replay {
            if let Some(frame) = self.change(rc, None) {
                bytes += frame.bytes.len();
                if bytes > budget {
                    return None;
                }
                out.push(frame);
            }
        }
        Some(out)
    }
}

fn heartbeat(revision: u64) -> OutFrame {
    OutFrame::own(&pb::WatchConfigResponse {
        revision,
        event: Some(pb::watch_config_response::Event::Heartbeat(
            pb::Heartbeat {},
        )),
    })
}

fn draining() -> Status {
    Status::unavailable("server is shutting down; reconnect and resume with since_revision")
}

/// A WatchConfig stream's frames; see [`super::frames`] for how they are sent.
pub(super) type ConfigFrames =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<OutFrame, Status>> + Send>>;

pub(super) async fn watch_config(
    app: Arc<App>,
    caller: Arc<Caller>,
    req: pb::WatchConfigRequest,
) -> Result<ConfigFrames, AppError> {
    check_optional_id("integration_id", &req.integration_id)?;
    let view = View {
        agent: caller.role == Role::Agent,
        integration: (!req.integration_id.is_empty()).then_some(req.integration_id.clone()),
    };
    let sub = app.watch_config(&caller, req.since_revision).await?;
    let budget = app.limits.watch_stream_buffer;
    let mut position = sub.position;
    let initial: Vec<OutFrame> = match &sub.start {
        ConfigStart::Snapshot { reset } => vec![view.snapshot(&sub.snapshot, *reset)],
        ConfigStart::Replay(replay) => match view.replay(replay, budget) {
            Some(frames) => frames,
            None => {
                // Too much to replay for one stream's buffer: start over from the
                // snapshot taken with the subscription.
                position = sub.snapshot.revision;
                vec![view.snapshot(&sub.snapshot, true)]
            }
        },
    };
    let every = app.limits.heartbeat_interval;
    let reloads = app.keys.reloads();
    let watcher = ConfigWatcher {
        reloads,
        _open: sub.open,
        drain: app.drain.clone(),
        app,
        tenant: caller.tenant.clone(),
        view,
        position,
        events: sub.events,
        beat: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        queue: initial.into_iter().map(Queued::from).collect(),
        done: false,
        key_id: caller.key_id.clone(),
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
    /// The keys were reloaded: the stream's own may have been revoked.
    Keys,
}

fn revoked() -> Status {
    Status::unauthenticated("the API key was revoked")
}

/// Completes at the next reload of the keys (never, if they can no longer reload).
async fn keys_reloaded(reloads: &mut watch::Receiver<u64>) {
    if reloads.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct ConfigWatcher {
    _open: StreamGuard,
    app: Arc<App>,
    tenant: String,
    view: View,
    /// The newest revision this watcher has been brought to.
    position: u64,
    events: broadcast::Receiver<TenantEvent>,
    drain: CancellationToken,
    beat: Interval,
    /// Frames decided but not yet taken by the transport. It holds more than one only
    /// after a replay or a gap fill, and those are bounded by `watch_stream_buffer`.
    queue: VecDeque<Queued>,
    done: bool,
    reloads: watch::Receiver<u64>,
    key_id: String,
}

impl ConfigWatcher {
    /// The next frame of the stream; `None` ends it. Drain is checked before anything
    /// queued, so a draining server stops promptly.
    async fn next(mut self) -> Option<(Result<OutFrame, Status>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if self.drain.is_cancelled() {
                self.done = true;
                return Some((Err(draining()), self));
            }
            if let Some(item) = self.queue.pop_front() {
                let frame = match item {
                    Queued::Own(bytes) => OutFrame {
                        bytes,
                        shared: false,
                    },
                    Queued::Shared(weak) => match weak.upgrade() {
                        Some(bytes) => OutFrame {
                            bytes,
                            shared: true,
                        },
                        // Its revision is gone and nothing of it was sent: start over.
                        None => self.resync(),
                    },
                };
                return Some((Ok(frame), self));
            }
            let wake = tokio::select! {
                () = self.drain.cancelled() => Wake::Drain,
                _ = self.beat.tick() => Wake::Beat,
                event = self.events.recv() => Wake::Event(event),
                () = keys_reloaded(&mut self.reloads) => Wake::Keys,
            };
            match wake {
                // Draining, or the server is gone altogether: end either way.
                Wake::Drain => {
                    self.done = true;
                    return Some((Err(draining()), self));
                }
                Wake::Beat => self.queue.push_back(heartbeat(self.position).into()),
                Wake::Keys if !self.app.keys.is_live(&self.key_id) => {
                    self.done = true;
                    return Some((Err(revoked()), self));
                }
                Wake::Keys => {}
                Wake::Event(event) => match Box::pin(self.on_event(event)).await {
                    Ok(items) => self.queue.extend(items.into_iter().map(Queued::from)),
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
    ) -> Result<Vec<OutFrame>, Status> {
        match event {
            Ok(TenantEvent::Changes(rc)) if rc.revision <= self.position => Ok(Vec::new()),
            Ok(TenantEvent::Changes(rc)) if rc.revision == self.position + 1 => {
                self.position = rc.revision;
                let current = self.app.snapshots.get(&self.tenant);
                Ok(self.view.change(&rc, Some(&current)).into_iter().collect())
            }
            // Rare: boxed so the store query's future does not sit inside every idle stream.
            Ok(TenantEvent::Changes(_)) => Box::pin(self.fill_gap()).await,
            Ok(TenantEvent::Reset) => Ok(vec![self.resync()]),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.app.metrics.watch_reset(Watch::Config);
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
    /// the change log (the one received is among them). A gap too large for the stream's
    /// buffer is a fresh snapshot instead.
    async fn fill_gap(&mut self) -> Result<Vec<OutFrame>, Status> {
        let Some(replay) = self
            .app
            .revisions_after(&self.tenant, self.position)
            .await?
        else {
            return Ok(vec![self.resync()]);
        };
        let Some(frames) = self
            .view
            .replay(&replay, self.app.limits.watch_stream_buffer)
        else {
            return Ok(vec![self.resync()]);
        };
        if let Some(last) = replay.last() {
            self.position = self.position.max(last.revision);
        }
        Ok(frames)
    }

    fn resync(&mut self) -> OutFrame {
        let snapshot = self.app.snapshots.get(&self.tenant);
        self.position = snapshot.revision;
        self.view.snapshot(&snapshot, true)
    }
}

pub(super) async fn watch_approvals(
    app: Arc<App>,
    caller: Arc<Caller>,
    req: pb::WatchApprovalsRequest,
) -> Result<Stream<pb::WatchApprovalsResponse>, AppError> {
    let only = ApprovalId::parse_optional("approval_id", req.approval_id)?;
    let guard = app.open_watch(Watch::Approvals)?;
    let events = app.approvals.subscribe(&caller.tenant);
    let initial = match &only {
        Some(id) => Some(app.get_approval(&caller, id).await?),
        None => None,
    };
    let reloads = app.keys.reloads();
    let watcher = ApprovalWatcher {
        reloads,
        _open: guard,
        drain: app.drain.clone(),
        app,
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

struct ApprovalWatcher {
    _open: StreamGuard,
    app: Arc<App>,
    caller: Arc<Caller>,
    only: Option<ApprovalId>,
    events: broadcast::Receiver<Arc<Approval>>,
    drain: CancellationToken,
    queue: VecDeque<Approval>,
    done: bool,
    reloads: watch::Receiver<u64>,
}

impl ApprovalWatcher {
    async fn next(mut self) -> Option<(Result<pb::WatchApprovalsResponse, Status>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if self.drain.is_cancelled() {
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
                () = self.drain.cancelled() => Wake::Drain,
                event = self.events.recv() => Wake::<_>::Event(event),
                () = keys_reloaded(&mut self.reloads) => Wake::Keys,
            };
            match wake {
                Wake::Drain | Wake::Beat => {
                    self.done = true;
                    return Some((Err(draining()), self));
                }
                Wake::Keys if !self.app.keys.is_live(&self.caller.key_id) => {
                    self.done = true;
                    return Some((Err(revoked()), self));
                }
                Wake::Keys => {}
                Wake::Event(Ok(a)) => {
                    let wanted = self.only.as_ref().is_none_or(|id| id.as_str() == a.id)
                        && may_see(&self.caller, &a);
                    if wanted {
                        self.queue.push_back((*a).clone());
                    }
                }
                Wake::Event(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    self.app.metrics.watch_reset(Watch::Approvals);
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
