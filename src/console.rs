//! The web console: a page built into the binary (`console/`), and the one API it calls.
//!
//! The page calls `toolgate.v1.PolicyService` itself, not a second API: `POST
//! /api/<Method>` takes the request message in the protobuf JSON mapping, and the call is
//! made in-process through the same stack as a gRPC call on the gRPC port (the gate's
//! authentication with the same API keys, its roles and limits, then the generated
//! service). The answer is the response message in the JSON mapping; a server-streaming
//! method (WatchConfig, WatchApprovals) answers one JSON object per line as its messages
//! come. An error is `{"code": "FAILED_PRECONDITION", "message": …}` with an HTTP status
//! for its code.
//!
//! The key stays in the browser: the page sends it as `Authorization: Bearer …` on each
//! call, never in a URL, and it is kept in the tab's session storage only.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use prost_reflect::{DynamicMessage, MethodDescriptor};
use std::convert::Infallible;
use tonic::body::Body;

/// The page's files, built into the binary.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    ),
    (
        "/console.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/console.js"),
    ),
    (
        "/console.css",
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    ),
];

/// Where the API answers: `/api/<Method>`.
pub const API_PREFIX: &str = "/api/";

/// What the page may load and connect to: only this origin; no inline script, no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The body of the console's answers.
pub type ConsoleBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The gRPC stack the console calls in-process (the gate, then the service).
pub trait Api:
    tower_service::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Api for S where
    S: tower_service::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

fn full(body: impl Into<Bytes>) -> ConsoleBody {
    Full::new(body.into()).boxed_unsync()
}

/// With the headers every console answer carries: no caching, no framing, no sniffing,
/// no referrer.
fn secured(mut response: Response<ConsoleBody>) -> Response<ConsoleBody> {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: ConsoleBody,
) -> Response<ConsoleBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    secured(response)
}

/// A page asset, if `path` names one.
pub fn asset(path: &str) -> Option<Response<ConsoleBody>> {
    let (_, content_type, text) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    Some(respond(StatusCode::OK, content_type, full(*text)))
}

/// An error as the console's API answers it.
fn error(code: tonic::Code, message: &str) -> Response<ConsoleBody> {
    let status = match code {
        tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound | tonic::Code::Unimplemented => StatusCode::NOT_FOUND,
        tonic::Code::AlreadyExists | tonic::Code::Aborted => StatusCode::CONFLICT,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({"code": code_name(code), "message": message});
    respond(status, "application/json", full(body.to_string()))
}

/// `FAILED_PRECONDITION` and so on: the names the gRPC status codes have in every language.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn method(name: &str) -> Option<MethodDescriptor> {
    crate::proto::descriptors()
        .get_service_by_name("toolgate.v1.PolicyService")?
        .methods()
        .find(|m| m.name() == name)
}

/// Calls `PolicyService/<name>` with the JSON request `json`, through `api`, with the
/// browser's `authorization` header.
pub async fn call(
    api: impl Api,
    name: &str,
    authorization: Option<header::HeaderValue>,
    json: &[u8],
) -> Response<ConsoleBody> {
    let Some(method) = method(name) else {
        return error(
            tonic::Code::NotFound,
            &format!("method: PolicyService has no method {name:?}"),
        );
    };
    let json = if json.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        json
    };
    let mut input = serde_json::Deserializer::from_slice(json);
    let message = match DynamicMessage::deserialize(method.input(), &mut input) {
        Ok(message) => message,
        Err(e) => {
            return error(
                tonic::Code::InvalidArgument,
                &format!("the body is not a {} in JSON: {e}", method.input().name()),
            );
        }
    };
    let encoded = prost::Message::encode_to_vec(&message);
    let mut framed = BytesMut::with_capacity(encoded.len() + 5);
    framed.put_u8(0);
    framed.put_u32(encoded.len() as u32);
    framed.put_slice(&encoded);
    let mut request = Request::builder()
        .method(http::Method::POST)
        .uri(format!("/toolgate.v1.PolicyService/{name}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers");
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let Ok(request) = request.body(Body::new(Full::new(framed.freeze()))) else {
        return error(tonic::Code::Internal, "could not build the call");
    };
    let mut api = api;
    let response = match tower_service::Service::call(&mut api, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // An error before any message comes as headers only.
    if let Some((code, message)) = status_of(response.headers())
        && code != tonic::Code::Ok
    {
        return error(code, &message);
    }
    let output = method.output();
    if method.is_server_streaming() {
        return stream(response.into_body(), output);
    }
    let mut frames = Frames::default();
    let mut body = response.into_body();
    let mut status = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => frames.push(data),
                Err(frame) => status = frame.trailers_ref().and_then(status_of),
            },
            Err(e) => return error(tonic::Code::Unavailable, &format!("the call failed: {e}")),
        }
    }
    match status {
        Some((tonic::Code::Ok, _)) | None => {}
        Some((code, message)) => return error(code, &message),
    }
    match frames.next().map(|m| DynamicMessage::decode(output, m)) {
        Some(Ok(message)) => match serde_json::to_vec(&message) {
            Ok(json) => respond(StatusCode::OK, "application/json", full(json)),
            Err(_) => error(tonic::Code::Internal, "could not write the answer as JSON"),
        },
        _ => error(tonic::Code::Internal, "the service answered no message"),
    }
}

/// A server-streaming answer: one JSON line per message, then `{"error": …}` if the
/// stream ended with an error.
fn stream(mut body: Body, output: prost_reflect::MessageDescriptor) -> Response<ConsoleBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        let mut frames = Frames::default();
        let line = |value: serde_json::Value| {
            let mut line = value.to_string().into_bytes();
            line.push(b'\n');
            Ok(http_body::Frame::data(Bytes::from(line)))
        };
        loop {
            // A browser that went away ends the call at once (not at the stream's next
            // message, which a quiet WatchApprovals may never send).
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = tx.closed() => return,
            };
            let Some(frame) = frame else { break };
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    let end = serde_json::json!({"error": {"code": "UNAVAILABLE", "message": e.to_string()}});
                    let _ = tx.send(line(end)).await;
                    return;
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    frames.push(data);
                    while let Some(message) = frames.next() {
                        let Ok(message) = DynamicMessage::decode(output.clone(), message) else {
                            return;
                        };
                        let Ok(value) = serde_json::to_value(&message) else {
                            return;
                        };
                        if tx
                            .send(line(serde_json::json!({"result": value})))
                            .await
                            .is_err()
                        {
                            return; // the browser went away: dropping `body` ends the call
                        }
                    }
                }
                Err(frame) => {
                    if let Some((code, message)) = frame.trailers_ref().and_then(status_of)
                        && code != tonic::Code::Ok
                    {
                        let end = serde_json::json!({"error": {"code": code_name(code), "message": message}});
                        let _ = tx.send(line(end)).await;
                    }
                }
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    respond(StatusCode::OK, "application/x-ndjson", body.boxed_unsync())
}

/// `grpc-status` and `grpc-message` (percent-decoded), when present.
fn status_of(headers: &http::HeaderMap) -> Option<(tonic::Code, String)> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Some((tonic::Code::from_i32(code), message))
}

/// gRPC's length-prefixed messages, cut out of the data as it arrives.
#[derive(Default)]
struct Frames {
    buffer: BytesMut,
}

impl Frames {
    fn push(&mut self, data: Bytes) {
        self.buffer.extend_from_slice(&data);
    }

    fn next(&mut self) -> Option<Bytes> {
        if self.buffer.len() < 5 {
            return None;
        }
        let length = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if self.buffer.len() < 5 + length {
            return None;
        }
        self.buffer.advance(5);
        Some(self.buffer.split_to(length).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_usual_names() {
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    }

    #[test]
    fn frames_are_cut_where_their_lengths_say() {
        let mut frames = Frames::default();
        frames.push(Bytes::from_static(&[0, 0, 0, 0, 2, 7]));
        assert_eq!(frames.next(), None);
        frames.push(Bytes::from_static(&[8, 0, 0, 0, 0, 0]));
        assert_eq!(frames.next().as_deref(), Some(&[7u8, 8][..]));
        assert_eq!(frames.next().as_deref(), Some(&[][..]));
        assert_eq!(frames.next(), None);
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_the_security_headers() {
        for (path, content_type, _) in ASSETS {
            let response = asset(path).expect("an asset");
            assert_eq!(response.headers()[header::CONTENT_TYPE], *content_type);
            assert!(
                response
                    .headers()
                    .contains_key(header::CONTENT_SECURITY_POLICY)
            );
        }
        assert!(asset("/secret").is_none());
    }
}
