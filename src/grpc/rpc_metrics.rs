//! The `grpc_server_*` metrics of every RPC the server answers (PolicyService, health and
//! reflection, unary and streaming), recorded in one place: a tower layer around all the
//! server's routes.
//!
//! A call is counted as started when its request arrives, and as handled, with its status
//! and its time, when its status is known:
//!
//! - a trailers-only answer (a refusal, an unknown method) carries `grpc-status` in its
//!   headers, and is recorded before the headers go out;
//! - otherwise the status comes in the trailers at the end of the response body, and is
//!   recorded before that last frame is handed on, so a client holding the answer finds it
//!   counted;
//! - a call that ends without a status is counted `Canceled` when it was dropped before its
//!   end (the client cancelled or reset the stream, the connection closed, or the server's
//!   request timeout cut it off, which tonic answers CANCELLED too), and `Unknown` when its
//!   body ended or failed without one.

use crate::metrics::{Metrics, RpcMethod};
use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tonic::Code;

/// Wraps a service with [`RecordRpcs`].
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RecordRpcs<S>;

    fn layer(&self, inner: S) -> RecordRpcs<S> {
        RecordRpcs {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Records the `grpc_server_*` metrics of every call through it.
#[derive(Debug, Clone)]
pub struct RecordRpcs<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, ResBody> tower_service::Service<Request<B>> for RecordRpcs<S>
where
    S: tower_service::Service<Request<B>, Response = Response<ResBody>>,
    ResBody: http_body::Body + Unpin,
{
    type Response = Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = Recording<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = RpcMethod::of_path(req.uri().path());
        self.metrics.rpc_started(method);
        let call = Call {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            done: false,
        };
        Recording {
            inner: self.inner.call(req),
            call: Some(call),
        }
    }
}

/// One call until its status is recorded; dropped before that, it records `Canceled`.
#[derive(Debug)]
struct Call {
    metrics: Arc<Metrics>,
    method: RpcMethod,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .rpc_handled(self.method, code, self.started.elapsed());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The status a header map carries, if any; an unreadable one is `Unknown`.
fn status_of(headers: &HeaderMap) -> Option<Code> {
    // A `HeaderName`, not a `&str`: looking up by string parses the name on every call.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers
        .get(GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
}

pin_project_lite::pin_project! {
    /// The response future of [`RecordRpcs`].
    pub struct Recording<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, E, ResBody> Future for Recording<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body + Unpin,
{
    type Output = Result<Response<RecordedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                // Only a trailers-only answer (its body empty) has its status in the
                // headers: any other's headers are not searched for one.
                if response.body().is_end_stream()
                    && let (Some(call), Some(code)) = (&mut call, status_of(response.headers()))
                {
                    call.finish(code);
                }
                Ok(response.map(|inner| RecordedBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = &mut call {
                    call.finish(Code::Unknown);
                }
                Err(e)
            }
        })
    }
}

/// A response body that records its call's status from the trailers, before handing them
/// on.
#[derive(Debug)]
pub struct RecordedBody<B: http_body::Body> {
    inner: B,
    call: Option<Call>,
}

impl<B: http_body::Body> RecordedBody<B> {
    fn finish(&mut self, code: Code) {
        if let Some(call) = &mut self.call {
            call.finish(code);
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(status_of(trailers).unwrap_or(Code::Unknown));
                }
            }
            Some(Err(_)) | None => this.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: http_body::Body> Drop for RecordedBody<B> {
    fn drop(&mut self) {
        // A body at its end was not cut off: it ended without a status. Anything else was
        // dropped early, which `Call` counts as cancelled.
        if self.inner.is_end_stream() {
            self.finish(Code::Unknown);
        }
    }
}
