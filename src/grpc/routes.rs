//! The two PolicyService methods served in front of the generated service, and why.
//!
//! - **WatchConfig**, from frames shared between streams ([`super::frames`]): tonic would
//!   give every stream its own encoded copy of a tenant's snapshot.
//! - **Decide**, read and answered here: it is the call agents make before every tool, and
//!   tonic's generic unary path (a decoding stream with its buffer, an encoding body, a
//!   second header map for the trailers) costs it more than its own rules do. The
//!   measurement that keeps this route is in BENCHMARKS.md ("A Decide route of its own").
//!
//! Both are plain gRPC as tonic serves it, and what is ours stays where it is: the gate
//! has authenticated the call and holds its places, [`super::decide`] converts and decides
//! exactly as the generated service's `decide` does, and the metrics layer reads the status
//! from the trailers. Every other method goes to the generated service unchanged.

use super::frames;
use super::gate::Deadline;
use crate::app::{App, Operation};
use crate::policy::Caller;
use crate::proto::v1 as pb;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use prost::Message;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

/// The Decide route.
pub const DECIDE_PATH: &str = "/toolgate.v1.PolicyService/Decide";

// Header names as constants: looking one up by `&str` parses the name on every call.
const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Serves WatchConfig and Decide, and passes every other call to `inner`.
#[derive(Clone)]
pub struct Routes<S> {
    inner: S,
    app: Arc<App>,
    settings: RouteSettings,
}

/// What the routes need from [`crate::config::Config`].
#[derive(Debug, Clone, Copy)]
pub struct RouteSettings {
    /// Largest Decide message accepted (`max_message_bytes`, as for every other method).
    pub max_message_bytes: usize,
    /// How long a request's message may take to arrive (the gate bounds the other unary
    /// methods' bodies).
    pub request_body_timeout: Duration,
}

impl<S> Routes<S> {
    pub fn new(inner: S, app: Arc<App>, settings: RouteSettings) -> Self {
        Routes {
            inner,
            app,
            settings,
        }
    }
}

impl<S: NamedService> NamedService for Routes<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<Request<Body>> for Routes<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    /// Every other call's future as it is (boxing it again would cost each an allocation),
    /// or one of ours.
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let app = self.app.clone();
        let settings = self.settings;
        match req.uri().path() {
            DECIDE_PATH => {
                // Taken apart here, so that the call's future holds only what it uses.
                let (parts, body) = req.into_parts();
                if let Err(status) = uncompressed(&parts.headers) {
                    return Either::Right(Box::pin(std::future::ready(Ok(status.into_http()))));
                }
                let asker = Asker::of(&parts);
                Either::Right(Box::pin(decide(app, asker, body, settings)))
            }
            frames::WATCH_CONFIG_PATH => Either::Right(Box::pin(async move {
                Ok(frames::serve(app, req, settings.request_body_timeout).await)
            })),
            _ => Either::Left(self.inner.call(req)),
        }
    }
}

/// One Decide: its message read and decoded, its caller's, the decision, the answer.
async fn decide(
    app: Arc<App>,
    asker: Asker,
    body: Body,
    settings: RouteSettings,
) -> Result<Response<Body>, Infallible> {
    let request = match read_message(
        body,
        settings.max_message_bytes,
        settings.request_body_timeout,
    )
    .await
    {
        Ok(message) => match pb::DecideRequest::decode(message) {
            Ok(request) => request,
            Err(e) => return Ok(not_protobuf(e).into_http()),
        },
        Err(status) => return Ok(status.into_http()),
    };
    let caller = match asker.caller(&app, Operation::Decide).await {
        Ok(caller) => caller,
        Err(status) => return Ok(super::decide_refused(&app, status).into_http()),
    };
    Ok(match super::decide(&app, &caller, request).await {
        Ok(answer) => unary_response(&answer),
        Err(status) => status.into_http(),
    })
}

/// Who makes a call: the caller the gate authenticated, or, in a service without the gate,
/// the `authorization` header to authenticate.
pub(super) enum Asker {
    Known(Arc<Caller>),
    Unchecked(Option<HeaderValue>),
}

impl Asker {
    pub(super) fn of(parts: &http::request::Parts) -> Self {
        match parts.extensions.get::<Arc<Caller>>() {
            Some(caller) => Asker::Known(caller.clone()),
            None => Asker::Unchecked(parts.headers.get(http::header::AUTHORIZATION).cloned()),
        }
    }

    /// The caller, authenticated for `op` unless the gate has done it.
    pub(super) async fn caller(self, app: &App, op: Operation) -> Result<Arc<Caller>, Status> {
        match self {
            Asker::Known(caller) => Ok(caller),
            // Boxed: behind the gate this never runs, and inline it would make every
            // call's future larger.
            Asker::Unchecked(header) => {
                let header = header.as_ref().map(|v| v.as_bytes());
                Ok(Box::pin(app.authenticate(header, op)).await?)
            }
        }
    }
}

/// The same status tonic's decoder gives through [`crate::proto::Decoder`]: the sender's
/// fault, INVALID_ARGUMENT.
fn not_protobuf(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!(
        "the message is not valid protobuf for this method: {e}"
    ))
}

/// Refuses a request whose messages are compressed (`grpc-encoding` other than identity).
pub(super) fn uncompressed(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get(GRPC_ENCODING) {
        Some(encoding) if encoding.as_bytes() != b"identity" => Err(compressed()),
        _ => Ok(()),
    }
}

/// The one message of a unary request body: at most `max` bytes, not compressed, and
/// nothing after it, all there within `time` (DEADLINE_EXCEEDED past it, so a client that
/// sends headers and never a body holds nothing for long; the timer is armed only when
/// the body is not there yet). A message that came in one piece (almost every one) is
/// not copied.
pub(super) async fn read_message(body: Body, max: usize, time: Duration) -> Result<Bytes, Status> {
    let mut body = Deadline::new(body, time);
    let mut whole = Bytes::new();
    let mut pieces: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        // Trailers from a client carry nothing a unary call reads.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match pieces.as_mut() {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut joined = BytesMut::with_capacity(whole.len() + data.len());
                joined.extend_from_slice(&whole);
                joined.extend_from_slice(&data);
                pieces = Some(joined);
            }
        }
        // Refused as soon as its length is known, before the rest of it is read.
        let received = pieces.as_deref().unwrap_or(&whole);
        if received.len() >= 5 {
            let len = u32::from_be_bytes([received[1], received[2], received[3], received[4]]);
            if len as usize > max {
                return Err(Status::out_of_range(format!(
                    "request: the message is {len} bytes; at most {max} are accepted"
                )));
            }
            if received.len() - 5 > len as usize {
                return Err(wrong_length(len as usize, received.len() - 5));
            }
        }
        // A body that says it is at its end is not polled again for the `None` that says
        // so: one poll down through tonic's and hyper's body layers fewer for nearly every
        // call.
        if body.is_end_stream() {
            break;
        }
    }
    one_message(pieces.map_or(whole, BytesMut::freeze))
}

fn compressed() -> Status {
    Status::unimplemented("request: compressed messages are not accepted; send it uncompressed")
}

/// The one uncompressed message of a unary request body.
fn one_message(mut body: Bytes) -> Result<Bytes, Status> {
    if body.len() < 5 {
        return Err(Status::invalid_argument(
            "request: expected one length-prefixed message",
        ));
    }
    let compressed_flag = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed_flag != 0 {
        return Err(compressed());
    }
    if len != body.len() {
        return Err(wrong_length(len, body.len()));
    }
    Ok(body)
}

fn wrong_length(len: usize, got: usize) -> Status {
    Status::invalid_argument(format!(
        "request: expected one message of {len} bytes, got {got} bytes"
    ))
}

/// A unary answer: `message`, length-prefixed, then the OK status in the trailers.
fn unary_response<M: Message>(message: &M) -> Response<Body> {
    let len = message.encoded_len();
    let mut framed = BytesMut::with_capacity(5 + len);
    framed.put_u8(0);
    // A Decide answer is a few hundred bytes; u32 is the wire format's limit.
    framed.put_u32(len as u32);
    message.encode_raw(&mut framed);
    grpc_response(Body::new(UnaryBody {
        message: Some(framed.freeze()),
        done: false,
    }))
}

/// A gRPC answer with `body`: its messages, then its status in the trailers.
pub(super) fn grpc_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The body of a unary answer: the message, then the trailers. Its size is left unknown,
/// as tonic's is: told it, hyper adds a `content-length` header every call would encode.
struct UnaryBody {
    message: Option<Bytes>,
    done: bool,
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(message) = this.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        this.done = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn body_of(pieces: &[&[u8]]) -> Body {
        let pieces: Vec<Result<Frame<Bytes>, Status>> = pieces
            .iter()
            .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
            .collect();
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            pieces,
        )))
    }

    fn read(pieces: &[&[u8]], max: usize) -> Result<Bytes, Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(read_message(body_of(pieces), max, Duration::from_secs(60)))
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_ends_the_call() {
        // The first piece comes at once, the rest never.
        let first: Result<Frame<Bytes>, Status> = Ok(Frame::data(Bytes::from_static(&[0, 0])));
        let first = futures_util::stream::iter([first]);
        let stalled = first.chain(futures_util::stream::pending());
        let body = Body::new(http_body_util::StreamBody::new(stalled));
        // Bounded here too, so that a read the deadline does not end fails the test
        // instead of hanging it.
        let read = read_message(body, 64, Duration::from_millis(50));
        let late = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the deadline ends the read")
            .unwrap_err();
        assert_eq!(late.code(), tonic::Code::DeadlineExceeded, "{late:?}");
        assert!(late.message().contains("request_body_timeout"), "{late:?}");
    }

    #[test]
    fn a_request_is_exactly_one_uncompressed_message() {
        assert_eq!(
            read(&[&[0, 0, 0, 0, 2, 8, 1]], 64).unwrap().as_ref(),
            &[8, 1]
        );
        let short = read(&[&[0, 0, 0]], 64).unwrap_err();
        assert_eq!(short.code(), tonic::Code::InvalidArgument);
        let empty = read(&[], 64).unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
        let extra = read(&[&[0, 0, 0, 0, 1, 8, 1]], 64).unwrap_err();
        assert_eq!(extra.code(), tonic::Code::InvalidArgument);
        assert!(extra.message().contains("expected one message of 1 bytes"));
        let missing = read(&[&[0, 0, 0, 0, 3, 8, 1]], 64).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
        let compressed = read(&[&[1, 0, 0, 0, 0]], 64).unwrap_err();
        assert_eq!(compressed.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn a_message_in_pieces_is_joined_whatever_the_split() {
        let framed: Vec<u8> = [0, 0, 0, 0, 6].into_iter().chain(1..=6).collect();
        for first in 0..=framed.len() {
            for second in first..=framed.len() {
                let pieces = [&framed[..first], &framed[first..second], &framed[second..]];
                let message = read(&pieces, 64).unwrap_or_else(|s| panic!("{first}/{second}: {s}"));
                assert_eq!(message.as_ref(), &[1, 2, 3, 4, 5, 6], "{first}/{second}");
            }
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_from_its_length_prefix() {
        // The prefix says 100 bytes; only the prefix arrives, and that is enough.
        let refused = read(&[&[0, 0, 0], &[0, 100]], 99).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::OutOfRange);
        assert!(refused.message().contains("at most 99"), "{refused:?}");
        let framed: Vec<u8> = [0, 0, 0, 0, 100].into_iter().chain([7; 100]).collect();
        assert_eq!(read(&[&framed], 100).unwrap().len(), 100);
    }

    #[test]
    fn a_compressed_request_is_refused_by_its_header() {
        let mut headers = HeaderMap::new();
        assert!(uncompressed(&headers).is_ok());
        headers.insert(GRPC_ENCODING, HeaderValue::from_static("identity"));
        assert!(uncompressed(&headers).is_ok());
        headers.insert(GRPC_ENCODING, HeaderValue::from_static("gzip"));
        let refused = uncompressed(&headers).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn an_answer_is_its_message_then_an_ok_status() {
        let answer = pb::DecideResponse {
            reason: "ok".into(),
            revision: 7,
            ..Default::default()
        };
        let response = unary_response(&answer);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let collected = runtime
            .block_on(response.into_body().collect())
            .expect("the body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        let framed = collected.to_bytes();
        let message = one_message(framed).expect("one message");
        assert_eq!(pb::DecideResponse::decode(message).unwrap(), answer);
    }
}
