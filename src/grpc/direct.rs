//! PolicyService calls go straight to their service; tonic's router serves the rest
//! (health, reflection).
//!
//! tonic's router is an axum router: for every call it matches the path, collects the URL
//! parameters, and wraps the request's and the answer's bodies to and from axum's. None of
//! that does anything for a service found by its path prefix, and on a Decide it cost a
//! twentieth of the call's instructions (BENCHMARKS.md, "Past tonic's router"). The
//! service reached is the same one, behind the same gate, and the `grpc_server_*` metrics
//! layer stays outside this one, so every call is still counted.

use futures_util::future::Either;
use http::{Request, Response};
use std::convert::Infallible;
use std::task::{Context, Poll, ready};
use tonic::body::Body;
use tonic::server::NamedService;

/// Puts [`Direct`] in front of tonic's router.
#[derive(Clone)]
pub struct DirectLayer<P> {
    policy: P,
}

impl<P: NamedService> DirectLayer<P> {
    /// `policy`: PolicyService as the router would reach it (behind the gate).
    pub fn new(policy: P) -> Self {
        DirectLayer { policy }
    }
}

impl<P: Clone, R> tower_layer::Layer<R> for DirectLayer<P> {
    type Service = Direct<P, R>;

    fn layer(&self, router: R) -> Direct<P, R> {
        Direct {
            policy: self.policy.clone(),
            router,
        }
    }
}

/// Sends a call whose path names `P`'s service to `policy`, every other to `router`.
#[derive(Clone)]
pub struct Direct<P, R> {
    policy: P,
    router: R,
}

impl<P, R> tower_service::Service<Request<Body>> for Direct<P, R>
where
    P: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + NamedService,
    R: tower_service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<P::Future, R::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready; each is asked, as a service must be before it is called.
        let Ok(()) = ready!(self.policy.poll_ready(cx));
        self.router.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ours = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.strip_prefix(P::NAME))
            .is_some_and(|rest| rest.starts_with('/'));
        if ours {
            Either::Left(self.policy.call(req))
        } else {
            Either::Right(self.router.call(req))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    /// Answers with its own name in a header.
    #[derive(Clone)]
    struct Named(&'static str);

    impl NamedService for Named {
        const NAME: &'static str = "toolgate.v1.PolicyService";
    }

    impl Service<Request<Body>> for Named {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request<Body>) -> Self::Future {
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("served-by", http::HeaderValue::from_static(self.0));
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn only_the_services_own_paths_skip_the_router() {
        let mut direct =
            tower_layer::Layer::layer(&DirectLayer::new(Named("policy")), Named("router"));
        for (path, expected) in [
            ("/toolgate.v1.PolicyService/Decide", "policy"),
            ("/toolgate.v1.PolicyService/NoSuchMethod", "policy"),
            ("/toolgate.v1.PolicyServiceX/Decide", "router"),
            ("/toolgate.v1.PolicyService", "router"),
            ("/grpc.health.v1.Health/Check", "router"),
            ("/", "router"),
        ] {
            std::future::poll_fn(|cx| direct.poll_ready(cx))
                .await
                .unwrap();
            let req = Request::builder().uri(path).body(Body::empty()).unwrap();
            let Ok(response) = direct.call(req).await;
            assert_eq!(response.headers()["served-by"], expected, "{path}");
        }
    }
}
