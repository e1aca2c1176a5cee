//! WatchConfig sent from shared, pre-encoded frames.
//!
//! tonic encodes every message of every stream into that stream's own buffer, and the
//! connection holds the encoded message until the client's flow-control window takes it.
//! A tenant's snapshot is the same bytes for every agent that watches it, and a client that
//! never opens its window would keep its own copy of it for as long as it liked (with ten
//! thousand tools, about a mebibyte per stream). So this one method is served here (through
//! [`super::routes::Routes`]), and everything else about the call is unchanged: the gate
//! has already authenticated it, the metrics layer reads its status from the trailers.
//!
//! - **Encoded once.** A snapshot, and the change that made the current revision, are
//!   encoded once per revision and view and kept in that revision's
//!   [`crate::snapshot::Encodings`]; every stream that needs them sends the same bytes.
//! - **Bounded per stream.** A frame is handed to the connection a piece of at most
//!   [`CHUNK`] bytes at a time, copied out; hyper asks for the next piece only once the
//!   client's window has room for it. A stream therefore holds at most a piece or two of
//!   its own, plus its queue of frames made for it alone (a replay or a gap fill), which is
//!   bounded by `watch_stream_buffer`.
//! - **Over its bound, ended.** Between pieces a stream keeps only a weak reference to a
//!   shared frame. A tenant keeps the encodings of its current revision and of the last
//!   [`crate::snapshot::RETAINED_ENCODINGS`] it replaced, so memory for frames is bounded
//!   per tenant, not per stream. A client that stalls part-way through a message while
//!   more revisions than that are saved is over its bound: its stream can neither finish
//!   the message nor start again in the middle of one, so it ends with RESOURCE_EXHAUSTED
//!   at its next read, and the client reconnects and resumes with `since_revision` (or
//!   takes a fresh snapshot). A queued frame it had not begun is replaced by a fresh
//!   snapshot instead.

use super::routes;
use super::watch::{ConfigFrames, OutFrame, watch_config};
use crate::app::{App, Operation};
use crate::proto::v1 as pb;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use prost::Message;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tonic::body::Body;

/// The method served here.
pub const WATCH_CONFIG_PATH: &str = "/toolgate.v1.PolicyService/WatchConfig";

/// Most bytes of a frame handed to the connection at once.
pub const CHUNK: usize = 16 * 1024;

/// Largest WatchConfig request accepted (it carries an id and a revision).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Serves one WatchConfig call ([`super::routes::Routes`] sends it here): the stream of
/// frames, or the status that refused it.
pub async fn serve(app: Arc<App>, req: Request<Body>, body_timeout: Duration) -> Response<Body> {
    match open(app, req, body_timeout).await {
        Ok(frames) => stream_response(frames),
        Err(status) => status.into_http::<Body>(),
    }
}

/// Authenticates (unless the gate has), reads the request, and opens the stream.
async fn open(
    app: Arc<App>,
    req: Request<Body>,
    body_timeout: Duration,
) -> Result<ConfigFrames, Status> {
    let (parts, body) = req.into_parts();
    routes::uncompressed(&parts.headers)?;
    let caller = routes::Asker::of(&parts)
        .caller(&app, Operation::WatchConfig)
        .await?;
    // Streams do not pass the gate's body deadline; this call's message is bounded here.
    let message = routes::read_message(body, MAX_REQUEST_BYTES, body_timeout).await?;
    let request = pb::WatchConfigRequest::decode(message)
        .map_err(|e| Status::invalid_argument(format!("request: not a WatchConfigRequest: {e}")))?;
    Ok(watch_config(app, caller, request).await?)
}

fn stream_response(frames: ConfigFrames) -> Response<Body> {
    routes::grpc_response(Body::new(FrameBody {
        frames,
        sending: None,
        done: false,
    }))
}

/// A frame part-way sent: the rest of it, and where it stands.
struct Sending {
    frame: Held,
    offset: usize,
}

enum Held {
    /// Made for this stream alone: kept until sent.
    Own(Arc<Vec<u8>>),
    /// A revision's shared frame: not kept alive by this stream.
    Shared(Weak<Vec<u8>>),
}

/// The response body: frames from the stream, a piece at a time, then the status.
struct FrameBody {
    frames: ConfigFrames,
    sending: Option<Sending>,
    done: bool,
}

impl FrameBody {
    /// The next piece of the frame in progress; `Err` when its shared frame is gone.
    fn next_piece(&mut self) -> Option<Result<Bytes, Status>> {
        let sending = self.sending.as_mut()?;
        let bytes = match &sending.frame {
            Held::Own(bytes) => bytes.clone(),
            Held::Shared(weak) => match weak.upgrade() {
                Some(bytes) => bytes,
                None => {
                    self.sending = None;
                    tracing::warn!("WatchConfig client fell behind mid-message; ending its stream");
                    return Some(Err(fell_behind()));
                }
            },
        };
        let end = (sending.offset + CHUNK).min(bytes.len());
        let piece = Bytes::copy_from_slice(&bytes[sending.offset..end]);
        sending.offset = end;
        if end == bytes.len() {
            self.sending = None;
        }
        Some(Ok(piece))
    }

    fn start(&mut self, frame: OutFrame) -> Bytes {
        let len = frame.bytes.len();
        let end = CHUNK.min(len);
        let piece = Bytes::copy_from_slice(&frame.bytes[..end]);
        if end < len {
            let held = if frame.shared {
                Held::Shared(Arc::downgrade(&frame.bytes))
            } else {
                Held::Own(frame.bytes)
            };
            self.sending = Some(Sending {
                frame: held,
                offset: end,
            });
        }
        piece
    }

    fn finish(&mut self, status: &Status) -> Frame<Bytes> {
        self.done = true;
        // A trailers-only response carries exactly the trailers we need.
        let mut trailers: HeaderMap = status.clone().into_http::<Body>().headers().clone();
        trailers.remove(http::header::CONTENT_TYPE);
        Frame::trailers(trailers)
    }
}

fn fell_behind() -> Status {
    Status::resource_exhausted(
        "this stream fell behind: its client did not take a message before the tenant's \
         policies moved on past it; reconnect and resume with since_revision",
    )
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.next_piece() {
            Some(Ok(piece)) => return Poll::Ready(Some(Ok(Frame::data(piece)))),
            Some(Err(status)) => return Poll::Ready(Some(Ok(this.finish(&status)))),
            None => {}
        }
        match this.frames.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(Frame::data(this.start(frame))))),
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Ok(this.finish(&status)))),
            Poll::Ready(None) => Poll::Ready(Some(Ok(this.finish(&Status::ok(""))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
