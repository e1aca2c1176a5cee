//! The HTTP listener (`http_listen`): `POST /slack/interactions` (the one path to expose
//! to Slack, through an ingress) and the web console (`GET /` and its API, `POST
//! /api/<Method>`, see [`crate::console`]). The gRPC API and `/metrics` stay on their own
//! ports.
//!
//! Slack wants an answer within three seconds and shows nothing from it for a button; so
//! the request is answered as soon as the click is recorded (or refused), and what the
//! clicking person is told goes to the interaction's `response_url` from a task of its own.

use crate::app::App;
use crate::app::slack::{SlackAnswer, SlackRequest};
use crate::console::{self, Api, ConsoleBody};
use crate::delivery::slack::ephemeral;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The path Slack's interactivity Request URL points at.
pub const SLACK_INTERACTIONS: &str = "/slack/interactions";
/// Largest body taken: a click's payload carries the message it was on (a few KiB).
const MAX_BODY: usize = 256 * 1024;
/// Longest a request (headers and body) may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's settings, from [`crate::config::Config`].
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Largest console API request body.
    pub max_body: usize,
    /// Whether the console's API answers (off when the gRPC port requires TLS).
    pub console_api: bool,
    /// Connections open at once (the gRPC port's setting, counted apart).
    pub max_connections: usize,
}

/// Serves the listener until the task is aborted; `api` is the gRPC stack the console calls.
/// At most `max_connections` are open at once: one over it is closed as it is accepted. An
/// idle connection is closed after [`READ_TIMEOUT`] without a request.
pub async fn serve_http(
    listener: TcpListener,
    app: Arc<App>,
    client: reqwest::Client,
    api: impl Api,
    settings: HttpSettings,
) {
    let HttpSettings {
        max_body,
        console_api,
        max_connections,
    } = settings;
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = max_connections,
                "HTTP connection closed: max_connections reached on the HTTP listener"
            );
            continue;
        };
        let (app, client, api) = (app.clone(), client.clone(), api.clone());
        let service = hyper::service::service_fn(move |req| {
            let (app, client, api) = (app.clone(), client.clone(), api.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    route(&app, &client, api, max_body, console_api, req).await,
                )
            }
        });
        tokio::spawn(async move {
            let _permit = permit;
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ConsoleBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.into() + "\n")).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn route(
    app: &App,
    client: &reqwest::Client,
    api: impl Api,
    max_body: usize,
    console_api: bool,
    req: Request<hyper::body::Incoming>,
) -> Response<ConsoleBody> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::POST, SLACK_INTERACTIONS) => slack(app, client, req).await,
        (_, SLACK_INTERACTIONS) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Slack interactions are POSTed here",
        ),
        (&Method::POST, path) if path.starts_with(console::API_PREFIX) && !console_api => text(
            StatusCode::FORBIDDEN,
            "the console's API is off: the gRPC port requires TLS, and this listener is plain HTTP",
        ),
        (&Method::POST, path) if path.starts_with(console::API_PREFIX) => {
            let method = path[console::API_PREFIX.len()..].to_owned();
            let authorization = req.headers().get(hyper::header::AUTHORIZATION).cloned();
            let body = Limited::new(req.into_body(), max_body).collect();
            match tokio::time::timeout(READ_TIMEOUT, body).await {
                Ok(Ok(body)) => console::call(api, &method, authorization, &body.to_bytes()).await,
                Ok(Err(_)) => text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {max_body} bytes or was cut off"),
                ),
                Err(_) => text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time",
                ),
            }
        }
        (&Method::GET, path) => console::asset(path)
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found; the console is at /")),
        _ => text(
            StatusCode::NOT_FOUND,
            format!(
                "not found; the console is at GET /, Slack's clicks at POST {SLACK_INTERACTIONS}"
            ),
        ),
    }
}

async fn slack(
    app: &App,
    client: &reqwest::Client,
    req: Request<hyper::body::Incoming>,
) -> Response<ConsoleBody> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let timestamp = header("x-slack-request-timestamp");
    let signature = header("x-slack-signature");
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_BODY} bytes or was cut off"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            );
        }
    };
    let request = SlackRequest {
        timestamp: timestamp.as_deref(),
        signature: signature.as_deref(),
        body: &body,
    };
    match app.slack_interaction(request).await {
        SlackAnswer::Unauthorized(why) => {
            // Anyone can send one: counted (toolgate_slack_interactions_total), logged at debug.
            tracing::debug!(why, "a request to /slack/interactions was refused");
            text(StatusCode::UNAUTHORIZED, why)
        }
        SlackAnswer::BadRequest(why) => text(StatusCode::BAD_REQUEST, why),
        SlackAnswer::Reply {
            response_url,
            text: said,
            ..
        } => {
            let public_only = app.limits.delivery_public_only;
            tokio::spawn(reply(client.clone(), response_url, said, public_only));
            text(StatusCode::OK, "")
        }
    }
}

/// Tells the clicking person, and only them, what happened to their click.
async fn reply(client: reqwest::Client, response_url: String, said: String, public_only: bool) {
    let url = match crate::delivery::target::check_url("response_url", &response_url, public_only) {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(error = %e, "a Slack click's response_url is refused; the clicker is not told");
            return;
        }
    };
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(ephemeral(&said).to_string())
        .send()
        .await;
    match sent {
        Ok(answer) if answer.status().is_success() => {}
        Ok(answer) => tracing::warn!(
            status = answer.status().as_u16(),
            "Slack refused the answer to a click"
        ),
        // Without the URL: a response_url is a capability.
        Err(e) => tracing::warn!(error = %e.without_url(), "could not answer a Slack click"),
    }
}
