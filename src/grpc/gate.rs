//! What every PolicyService call passes first: a request id, authentication, and the
//! concurrency limits, in that order.
//!
//! - **Request id.** Taken from the caller's `x-request-id` (service meshes set one) when
//!   it is a short printable token, otherwise made here; every log line of the call carries
//!   it (through the call's `rpc` span, or [`crate::logging::Call`] when nothing needs a
//!   span), and it is sent back as `x-request-id`.
//! - **Authentication first.** The `authorization` header is checked against the key cache
//!   before the call may hold anything: a call without a live key, or whose key's role may
//!   not make it, is answered at once and never takes a place in the limits below. The
//!   caller found travels to the handler in the request's extensions.
//! - **Load shedding.** At most `max_concurrent_requests` unary calls run at once, at most
//!   `max_concurrent_requests_per_key` of one API key and at most
//!   `max_concurrent_requests_per_connection` on one connection (counted by the connection
//!   itself, [`super::connections::ConnectionInfo`]). One more is answered
//!   RESOURCE_EXHAUSTED at once rather than queued, so an overloaded replica stays
//!   responsive, one key or one connection cannot take every place, and clients (or the
//!   mesh) retry elsewhere. Watch streams are long-lived and are bounded by
//!   `max_watch_streams` instead.
//! - **A bounded body.** A unary call's request body must arrive within
//!   `request_body_timeout`; past it the call ends DEADLINE_EXCEEDED and frees its place,
//!   so a client that sends headers and never a body cannot hold one. The timer is armed
//!   only when the body is not there yet, which for almost every call it is.
//!
//! Health and reflection do not pass through the gate: probes must answer under load.

use crate::app::{App, AppError, Operation};
use crate::logging::{CallId, MadeId};
use crate::metrics::Shed;
use crate::policy::Caller;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use http_body::{Frame, SizeHint};
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tracing::Instrument;

/// The gate's limits; from [`crate::config::Config`].
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub max_concurrent_requests: usize,
    pub max_concurrent_requests_per_key: usize,
    pub request_body_timeout: Duration,
}

/// Wraps a tonic service with request ids, authentication and the limits.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What every call through the gate shares.
struct Shared {
    app: Arc<App>,
    permits: Arc<Limit>,
    per_key: KeyPermits,
    body_timeout: Duration,
    ids: RequestIds,
}

impl<S> Gate<S> {
    pub fn new(inner: S, app: Arc<App>, limits: GateLimits) -> Self {
        let shared = Shared {
            app,
            permits: Limit::new(limits.max_concurrent_requests),
            per_key: KeyPermits::new(limits.max_concurrent_requests_per_key),
            body_timeout: limits.request_body_timeout,
            ids: RequestIds::new(),
        };
        Gate {
            inner,
            shared: Arc::new(shared),
        }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<Request<Body>> for Gate<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let (id, logged) = self.shared.ids.for_request(&req);
        let method = req.uri().path().rsplit_once('/').map_or("", |(_, m)| m);
        let op = operation(method);
        let context = CallContext::new(&req, method, op, &id, logged);
        // Take the service that was driven to ready, leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // One async block that holds the request once: an async fn's arguments stay in its
        // future beside whatever it awaits, so passing the request down through two of them
        // made every call's future (boxed below) three copies of it larger.
        let answer = async move {
            let places = match op {
                Some(op) => match shared.admit(op, &mut req).await {
                    Ok(places) => places,
                    Err(refusal) => return Ok(with_id(*refusal, id)),
                },
                // Not one of ours: tonic answers UNIMPLEMENTED.
                None => None,
            };
            let Ok(response) = inner.call(req).await;
            drop(places);
            Ok(with_id(response, id))
        };
        match context {
            CallContext::Span(span) => Box::pin(answer.instrument(span)),
            CallContext::Call(call) => Box::pin(crate::logging::CALL.scope(call, answer)),
        }
    }
}

/// What gives the call's log lines its method and request id: its span, or, when nothing
/// needs a span, the cheaper [`crate::logging::Call`].
enum CallContext {
    Span(tracing::Span),
    Call(crate::logging::Call),
}

impl CallContext {
    fn new<B>(
        req: &Request<B>,
        method: &str,
        op: Option<Operation>,
        id: &HeaderValue,
        logged: CallId,
    ) -> Self {
        if !crate::logging::call_spans() {
            return CallContext::Call(crate::logging::Call {
                method: match op {
                    Some(op) => Cow::Borrowed(op.name()),
                    None => Cow::Owned(method.to_owned()),
                },
                request_id: logged,
            });
        }
        let span = tracing::info_span!(
            "rpc",
            %method,
            request_id = id.to_str().unwrap_or(""),
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, req.uri().path(), req.headers());
        CallContext::Span(span)
    }
}

impl Shared {
    /// Authenticates `req` and takes its places in the limits (none for a stream), or
    /// answers the refusal. The caller found goes into the request's extensions.
    #[allow(clippy::result_large_err)]
    async fn admit(
        &self,
        op: Operation,
        req: &mut Request<Body>,
    ) -> Result<Option<Places>, Box<Response<Body>>> {
        let header = req.headers().get(http::header::AUTHORIZATION);
        let caller = match self
            .app
            .authenticate(header.map(|v| v.as_bytes()), op)
            .await
        {
            Ok(caller) => caller,
            Err(e) => return Err(Box::new(self.refuse(op, e))),
        };
        let streaming = matches!(op, Operation::WatchConfig | Operation::WatchApprovals);
        let places = if streaming {
            None
        } else {
            Some(self.places(&caller, connection_calls(req))?)
        };
        req.extensions_mut().insert(caller);
        // Decide's route reads its body within the same limit itself, without a boxed
        // wrapper around it ([`super::routes`]).
        if !streaming && op != Operation::Decide {
            let body = std::mem::take(req.body_mut());
            *req.body_mut() = Body::new(Deadline::new(body, self.body_timeout));
        }
        Ok(places)
    }

    /// A place in the global limit, in the caller's key's and in the connection's, or the
    /// refusal.
    #[allow(clippy::result_large_err)]
    fn places(
        &self,
        caller: &Caller,
        connection: Option<&Arc<Limit>>,
    ) -> Result<Places, Box<Response<Body>>> {
        let shed = |what: Shed, message: &'static str| {
            self.app.metrics.shed(what);
            tracing::warn!("call refused: {message}");
            Box::new(Status::resource_exhausted(message).into_http::<Body>())
        };
        let global = self.permits.try_take().ok_or_else(|| {
            shed(
                Shed::Request,
                "server overloaded (max_concurrent_requests); retry with backoff",
            )
        })?;
        let own = self.per_key.try_acquire(caller.key_id.as_str()).ok_or_else(|| {
            shed(
                Shed::Request,
                "too many calls in progress for this API key (max_concurrent_requests_per_key); \
                 retry with backoff",
            )
        })?;
        let connection = match connection {
            Some(calls) => Some(calls.try_take().ok_or_else(|| {
                shed(
                    Shed::Request,
                    "too many calls in progress on this connection \
                     (max_concurrent_requests_per_connection); retry with backoff",
                )
            })?),
            None => None,
        };
        Ok((global, own, connection))
    }

    /// The answer to a call that may not pass: its status, counted like a Decide's when it
    /// is one.
    fn refuse(&self, op: Operation, e: AppError) -> Response<Body> {
        let mut status = Status::from(e);
        if op == Operation::Decide {
            status = super::decide_refused(&self.app, status);
        }
        status.into_http::<Body>()
    }
}

/// `response` with the call's request id.
fn with_id(mut response: Response<Body>, id: HeaderValue) -> Response<Body> {
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// The places a unary call holds while it runs: global, its key's, its connection's.
type Places = (Place, Place, Option<Place>);

/// At most `max` calls in progress. A call that finds them all taken is refused, never
/// queued, so a count is all it takes: cheaper than a semaphore, whose every release
/// takes a lock for waiters these limits never have.
pub(super) struct Limit {
    max: usize,
    taken: AtomicUsize,
}

/// One place in a [`Limit`], given back when dropped.
struct Place(Arc<Limit>);

impl Limit {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Limit {
            max,
            taken: AtomicUsize::new(0),
        })
    }

    /// A place, or `None` when all `max` are taken. Acquire, paired with the Release
    /// that gives a place back: whatever the last holder did before leaving comes before
    /// what the next one does (the same order a lock would give; free on x86).
    fn try_take(self: &Arc<Self>) -> Option<Place> {
        self.taken
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(self.clone()))
    }

    fn in_use(&self) -> bool {
        self.taken.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Release);
    }
}

/// The count of calls in progress on the connection a request came on (none for a request
/// that did not come through [`super::connections::admit`]). tonic puts the connection's
/// info in every request's extensions, with TLS too (beside its `TlsConnectInfo`).
fn connection_calls<B>(req: &Request<B>) -> Option<&Arc<Limit>> {
    let info = req
        .extensions()
        .get::<super::connections::ConnectionInfo>()?;
    Some(&info.calls)
}

/// The operation a PolicyService method name stands for.
fn operation(method: &str) -> Option<Operation> {
    Operation::ALL
        .iter()
        .copied()
        .find(|op| op.name() == method)
}

/// Places per API key, made on the first call; a limit with nothing in progress is dropped
/// once the map grows, so it holds about the busy ones.
struct KeyPermits {
    each: usize,
    keys: Mutex<crate::FastMap<String, Arc<Limit>>>,
}

impl KeyPermits {
    fn new(each: usize) -> Self {
        KeyPermits {
            each,
            keys: Mutex::default(),
        }
    }

    /// A place of `key`'s, taken under the map's lock so a limit in use is never dropped.
    fn try_acquire(&self, key: &str) -> Option<Place> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = keys.get(key) {
            return limit.try_take();
        }
        // Drop the limits of keys with nothing in progress, so the map stays about as
        // small as the set of busy keys.
        if keys.len() >= 1024 {
            keys.retain(|_, limit| limit.in_use());
        }
        let limit = Limit::new(self.each);
        let place = limit.try_take();
        keys.insert(key.to_owned(), limit);
        place
    }
}

/// A request body that must be complete within a time limit, counted from the first moment
/// it was not ready (so a body that is there at once costs no timer).
pub(super) struct Deadline<B = Body> {
    inner: B,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    pub(super) fn new(inner: B, limit: Duration) -> Self {
        Deadline {
            inner,
            limit,
            timer: None,
        }
    }
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let limit = this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Status::deadline_exceeded(
                "the request body did not arrive within request_body_timeout",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Request ids: the caller's when usable, else `<process prefix>-<counter>`.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

/// Longest `x-request-id` taken from a caller.
const MAX_ID_LEN: usize = 128;

impl RequestIds {
    fn new() -> Self {
        let mut seed = [0u8; 4];
        // Without randomness ids are still unique within the process.
        let _ = getrandom::fill(&mut seed);
        RequestIds {
            prefix: format!("{}-", crate::policy::canonical::hex(&seed)),
            next: AtomicU64::new(1),
        }
    }

    /// The id as the response header that carries it back, and as the call's log lines
    /// carry it. The header is marked sensitive, which HPACK sends as never indexed: every
    /// call's id is new, and indexing it would only churn the connection's header table
    /// (the callgrind profile showed the comparing and evicting; `BENCHMARKS.md` has the
    /// figure).
    fn for_request<B>(&self, req: &Request<B>) -> (HeaderValue, CallId) {
        let (mut id, logged) = match req.headers().get(REQUEST_ID) {
            Some(given) if given.to_str().is_ok_and(usable_id) => {
                (given.clone(), CallId::Given(given.clone()))
            }
            _ => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                match MadeId::new(&self.prefix, n) {
                    Some(made) => (
                        HeaderValue::from_bytes(made.as_str().as_bytes())
                            .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                        CallId::Made(made),
                    ),
                    None => {
                        let invalid = HeaderValue::from_static("invalid");
                        (invalid.clone(), CallId::Given(invalid))
                    }
                }
            }
        };
        id.set_sensitive(true);
        (id, logged)
    }
}

/// A caller's id is used only when it is short and printable, so a log line cannot be
/// forged or bloated with it.
fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_kept_only_when_short_and_printable() {
        let ids = RequestIds::new();
        let with = |v: &str| {
            let req = Request::builder()
                .header("x-request-id", v)
                .body(())
                .unwrap();
            let (id, logged) = ids.for_request(&req);
            assert_eq!(
                logged.as_str(),
                id.to_str().unwrap(),
                "the log has the same id"
            );
            id.to_str().unwrap().to_owned()
        };
        assert_eq!(with("4bf92f35-77b3-4da6"), "4bf92f35-77b3-4da6");
        let forged = with("a\" level=error");
        assert!(forged.starts_with(&ids.prefix), "{forged}");
        let long = with(&"x".repeat(MAX_ID_LEN + 1));
        assert!(long.starts_with(&ids.prefix), "{long}");
        let (a, a_logged) = ids.for_request(&Request::new(()));
        let (b, _) = ids.for_request(&Request::new(()));
        assert_eq!(
            a_logged.as_str(),
            a.to_str().unwrap(),
            "the log has the same id"
        );
        assert_ne!(a, b);
        assert!(a.is_sensitive(), "ids are sent never indexed");
    }

    #[test]
    fn every_method_name_is_an_operation() {
        for &op in Operation::ALL {
            assert_eq!(operation(op.name()), Some(op));
        }
        assert_eq!(operation("NoSuchMethod"), None);
    }

    #[test]
    fn a_key_has_its_own_places() {
        let permits = KeyPermits::new(2);
        let a1 = permits.try_acquire("a");
        let a2 = permits.try_acquire("a");
        assert!(a1.is_some() && a2.is_some());
        assert!(permits.try_acquire("a").is_none(), "a third for key a");
        assert!(
            permits.try_acquire("b").is_some(),
            "key b is not held up by a"
        );
        drop(a1);
        assert!(permits.try_acquire("a").is_some());
    }

    #[test]
    fn a_limit_never_lends_more_than_its_places() {
        let limit = Limit::new(3);
        let held = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(place) = limit.try_take() {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            held.fetch_sub(1, Ordering::SeqCst);
                            drop(place);
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 3, "{most:?} held at once");
        assert!(!limit.in_use(), "every place given back");
        let all: Vec<_> = (0..3).filter_map(|_| limit.try_take()).collect();
        assert_eq!(all.len(), 3, "all three free again");
        assert!(limit.try_take().is_none());
    }

    #[test]
    fn idle_keys_leave_the_map_once_it_grows_and_busy_ones_stay() {
        let permits = KeyPermits::new(1);
        let busy = permits.try_acquire("busy").expect("a place");
        for i in 0..1100 {
            drop(permits.try_acquire(format!("idle-{i}").as_str()));
        }
        let len = permits.keys.lock().unwrap().len();
        assert!(len < 1100, "idle keys were dropped ({len} left)");
        assert!(
            permits.try_acquire("busy").is_none(),
            "the busy key kept its limit, still taken"
        );
        drop(busy);
        assert!(permits.try_acquire("busy").is_some());
    }
}
