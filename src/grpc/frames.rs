//! WatchConfig sent from shared, pre-encoded frames.
//!
//! tonic encodes every message of every stream into that stream's own buffer, and the
//! connection holds the encoded message until the client's flow-control window takes it.
//! A tenant's snapshot is the same bytes for every agent that watches it, and a client that
//! never opens its window would keep its own copy of it for as long as it liked (with ten
//! thousand tools, about a mebibyte per stream). So this one route is served here, beside
//! the generated service, and everything else about the call is unchanged: the gate has
//! already authenticated it, the metrics layer reads its status from the trailers.
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

use super::watch::{ConfigFrames, OutFrame, watch_config};
use crate::app::{App, Operation};
use crate::policy::Caller;
use crate::proto::v1 as pb;
use bytes::{Buf, Bytes};
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

/// The route served here.
pub const WATCH_CONFIG_PATH: &str = "/toolgate.v1.PolicyService/WatchConfig";

/// Most bytes of a frame handed to the connection at once.
pub const CHUNK: usize = 16 * 1024;

/// Largest WatchConfig request accepted (it carries an id and a revision).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Serves [`WATCH_CONFIG_PATH`] from shared frames and passes every other call to `inner`.
#[derive(Clone)]
pub struct WatchConfigRoute<S> {
    inner: S,
    app: Arc<App>,
    body_timeout: Duration,
}

impl<S> WatchConfigRoute<S> {
    /// `body_timeout` bounds the wait for the request message, as for unary calls.
    pub fn new(inner: S, app: Arc<App>, body_timeout: Duration) -> Self {
        WatchConfigRoute {
            inner,
            app,
            body_timeout,
        }
    }
}

impl<S: NamedService> NamedService for WatchConfigRoute<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<Request<Body>> for WatchConfigRoute<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    /// Every other call's future as it is (boxing it again would cost each Decide an
    /// allocation), or WatchConfig's.
    type Future = Either<S::Future, BoxFuture<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.uri().path() != WATCH_CONFIG_PATH {
            return Either::Left(self.inner.call(req));
        }
        let app = self.app.clone();
        let body_timeout = self.body_timeout;
        Either::Right(Box::pin(async move {
            Ok(match serve(app, req, body_timeout).await {
                Ok(frames) => stream_response(frames),
                Err(status) => status.into_http::<Body>(),
            })
        }))
    }
}

/// Authenticates (unless the gate has), reads the request, and opens the stream.
async fn serve(
    app: Arc<App>,
    req: Request<Body>,
    body_timeout: Duration,
) -> Result<ConfigFrames, Status> {
    let caller = match req.extensions().get::<Arc<Caller>>() {
        Some(caller) => caller.clone(),
        None => {
            let header = req.headers().get(http::header::AUTHORIZATION);
            app.authenticate(header.map(|v| v.as_bytes()), Operation::WatchConfig)
                .await?
        }
    };
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(Status::unimplemented(
            "request: compressed messages are not accepted; send it uncompressed",
        ));
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_REQUEST_BYTES + 5);
    let collected = tokio::time::timeout(body_timeout, body.collect())
        .await
        .map_err(|_| Status::deadline_exceeded("request: the message did not arrive in time"))?
        .map_err(|e| Status::invalid_argument(format!("request: {e}")))?;
    let message = one_message(collected.to_bytes())?;
    let request = pb::WatchConfigRequest::decode(message)
        .map_err(|e| Status::invalid_argument(format!("request: not a WatchConfigRequest: {e}")))?;
    Ok(watch_config(app, caller, request).await?)
}

/// The one uncompressed message of a unary request body.
fn one_message(mut body: Bytes) -> Result<Bytes, Status> {
    if body.len() < 5 {
        return Err(Status::invalid_argument(
            "request: expected one length-prefixed message",
        ));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented(
            "request: compressed messages are not accepted; send it uncompressed",
        ));
    }
    if len != body.len() {
        return Err(Status::invalid_argument(format!(
            "request: expected one message of {len} bytes, got {} bytes",
            body.len()
        )));
    }
    Ok(body)
}

fn stream_response(frames: ConfigFrames) -> Response<Body> {
    let mut response = Response::new(Body::new(FrameBody {
        frames,
        sending: None,
        done: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_exactly_one_uncompressed_message() {
        let framed = Bytes::from(vec![0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(one_message(framed).unwrap().as_ref(), &[8, 1]);
        let short = one_message(Bytes::from(vec![0, 0, 0])).unwrap_err();
        assert_eq!(short.code(), tonic::Code::InvalidArgument);
        let extra = one_message(Bytes::from(vec![0, 0, 0, 0, 1, 8, 1])).unwrap_err();
        assert_eq!(extra.code(), tonic::Code::InvalidArgument);
        assert!(extra.message().contains("expected one message of 1 bytes"));
        let compressed = one_message(Bytes::from(vec![1, 0, 0, 0, 0])).unwrap_err();
        assert_eq!(compressed.code(), tonic::Code::Unimplemented);
    }
}
