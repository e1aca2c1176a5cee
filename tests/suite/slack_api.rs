//! A stand-in for Slack on 127.0.0.1:0: a real HTTP/1.1 server that speaks the documented
//! JSON of the Web API's `chat.postMessage` and `chat.update` (bearer token, `{"ok": true,
//! "channel", "ts"}`, `{"ok": false, "error"}`, `429` with `Retry-After`), and takes the
//! answers toolgate sends to an interaction's `response_url`. It also plays Slack's side
//! of a click: the signed `block_actions` request Slack would send.

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BOT_TOKEN: &str = "xoxb-1234-5678-toolgatetest";
pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// One Web API call as the stand-in got it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub authorization: String,
    pub body: Value,
    /// What the stand-in answered: the HTTP status and, for a 200, whether `ok`.
    pub status: u16,
    pub ok: bool,
}

/// A message as Slack holds it: where, its ts, and its latest blocks.
#[derive(Debug, Clone)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
    pub body: Value,
    pub updates: usize,
}

impl Posted {
    pub fn text(&self) -> String {
        self.body["blocks"].to_string()
    }

    /// The `value` of each button, by action id.
    pub fn buttons(&self) -> Vec<(String, String)> {
        self.body["blocks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["action_id"].as_str().unwrap_or_default().to_owned(),
                    e["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// How the stand-in answers the `n`th call (from 0) of a method.
pub type Script = Box<dyn Fn(&str, usize) -> Reply + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// As Slack does.
    Normal,
    /// `429 Too Many Requests` with `Retry-After: <seconds>`.
    RateLimited(u64),
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    messages: Vec<Posted>,
    /// Bodies sent to a `response_url`, by the url's number.
    responses: Vec<(usize, Value)>,
}

pub struct SlackApi {
    /// The Web API base, as a channel's `url`.
    pub base: String,
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    changed: tokio::sync::watch::Sender<u64>,
    _server: tokio::task::JoinHandle<()>,
}

impl SlackApi {
    pub async fn start(script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> SlackApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let changed = tokio::sync::watch::channel(0u64).0;
        let script: Arc<Script> = Arc::new(Box::new(script));
        let (shared, notify) = (state.clone(), changed.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, notify, script) = (shared.clone(), notify.clone(), script.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (state, notify, script) =
                            (state.clone(), notify.clone(), script.clone());
                        async move {
                            let response = answer(&state, &script, req).await;
                            notify.send_modify(|n| *n += 1);
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SlackApi {
            base: format!("http://{addr}/api"),
            addr,
            state,
            changed,
            _server: server,
        }
    }

    pub async fn normal() -> SlackApi {
        SlackApi::start(|_, _| Reply::Normal).await
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn messages(&self) -> Vec<Posted> {
        self.state.lock().unwrap().messages.clone()
    }

    /// A `response_url` for a click; what is sent to it is kept under `n`.
    pub fn response_url(&self, n: usize) -> String {
        format!("http://{}/respond/{n}", self.addr)
    }

    pub fn responses(&self, n: usize) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .responses
            .iter()
            .filter(|(i, _)| *i == n)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Waits (at most 60 s) until `done` holds for the messages, and returns them. Slack
    /// tells a sender nothing more than its answers: watching what arrives here is how
    /// the test sees toolgate's worker act.
    pub async fn messages_when(&self, done: impl Fn(&[Posted]) -> bool) -> Vec<Posted> {
        let mut changed = self.changed.subscribe();
        let reached = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let messages = self.messages();
                if done(&messages) {
                    return messages;
                }
                changed.changed().await.expect("stand-in running");
            }
        })
        .await;
        reached.unwrap_or_else(|_| {
            panic!(
                "Slack never got what was waited for: {:#?}",
                self.messages()
            )
        })
    }

    /// The answer sent to response url `n`, once there is one (at most 60 s).
    pub async fn response(&self, n: usize) -> String {
        let mut changed = self.changed.subscribe();
        let got = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(v) = self.responses(n).first() {
                    return v.clone();
                }
                changed.changed().await.expect("stand-in running");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing was sent to response url {n}"));
        assert_eq!(got["response_type"], "ephemeral", "{got}");
        assert_eq!(got["replace_original"], false, "{got}");
        got["text"].as_str().unwrap_or_default().to_owned()
    }
}

async fn answer(
    state: &Mutex<State>,
    script: &Script,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let respond = |status: u16, headers: &[(&str, String)], json: Value| {
        let mut r = hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json; charset=utf-8");
        for (name, value) in headers {
            r = r.header(*name, value);
        }
        r.body(http_body_util::Full::new(bytes::Bytes::from(
            json.to_string(),
        )))
        .expect("response")
    };
    let mut state = state.lock().unwrap();
    if let Some(n) = path.strip_prefix("/respond/") {
        state
            .responses
            .push((n.parse().unwrap_or(usize::MAX), body));
        return respond(200, &[], json!("ok"));
    }
    let Some(method) = path.strip_prefix("/api/") else {
        return respond(404, &[], json!({"ok": false, "error": "unknown_method"}));
    };
    let n = state.calls.iter().filter(|c| c.method == method).count();
    let mut call = Call {
        method: method.to_owned(),
        authorization: authorization.clone(),
        body: body.clone(),
        status: 200,
        ok: false,
    };
    if let Reply::RateLimited(seconds) = script(method, n) {
        call.status = 429;
        state.calls.push(call);
        return respond(
            429,
            &[("retry-after", seconds.to_string())],
            json!({"ok": false, "error": "ratelimited"}),
        );
    }
    let reply = if authorization != format!("Bearer {BOT_TOKEN}") {
        json!({"ok": false, "error": "invalid_auth"})
    } else {
        match method {
            "chat.postMessage" => {
                let to = body["channel"].as_str().unwrap_or_default();
                // Posting to a user id opens the app's direct message with them.
                let channel = match to.strip_prefix('U') {
                    Some(rest) => format!("D{rest}"),
                    None => to.to_owned(),
                };
                if channel.is_empty() || channel == "C_MISSING" {
                    json!({"ok": false, "error": "channel_not_found"})
                } else if body["blocks"].as_array().is_none_or(|b| b.len() > 50) {
                    json!({"ok": false, "error": "invalid_blocks"})
                } else {
                    let ts = format!("1764900000.{:06}", state.messages.len() + 1);
                    state.messages.push(Posted {
                        channel: channel.clone(),
                        ts: ts.clone(),
                        body: body.clone(),
                        updates: 0,
                    });
                    json!({"ok": true, "channel": channel, "ts": ts, "message": {"text": body["text"]}})
                }
            }
            "chat.update" => {
                let (channel, ts) = (
                    body["channel"].as_str().unwrap_or_default(),
                    body["ts"].as_str().unwrap_or_default(),
                );
                match state
                    .messages
                    .iter_mut()
                    .find(|m| m.channel == channel && m.ts == ts)
                {
                    Some(m) => {
                        m.body = body.clone();
                        m.updates += 1;
                        json!({"ok": true, "channel": channel, "ts": ts, "text": body["text"]})
                    }
                    None => json!({"ok": false, "error": "message_not_found"}),
                }
            }
            _ => json!({"ok": false, "error": "unknown_method"}),
        }
    };
    call.ok = reply["ok"] == true;
    state.calls.push(call);
    respond(200, &[], reply)
}

/// A click as Slack sends it: `payload=<block_actions JSON>`, form-encoded; `message` is
/// the (conversation, ts) of the message the button is on.
pub fn click_body(
    slack_user: &str,
    action_id: &str,
    value: &str,
    message: (&str, &str),
    response_url: &str,
) -> Vec<u8> {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": slack_user, "username": slack_user.to_lowercase(), "team_id": "T0TOOLGATE"},
        "api_app_id": "A0TOOLGATE",
        "team": {"id": "T0TOOLGATE", "domain": "toolgate-test"},
        "container": {"type": "message", "message_ts": message.1, "channel_id": message.0},
        "trigger_id": "1.2.3",
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": action_id, "block_id": "toolgate_decision",
                     "value": value, "action_ts": "1764900001.000000"}],
    });
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
        .into_bytes()
}

/// Slack's headers for `body` signed at `timestamp` with `secret`.
pub fn signed(secret: &str, timestamp: i64, body: &[u8]) -> (String, String) {
    let timestamp = timestamp.to_string();
    let signature = toolgate::delivery::slack::signature(secret, &timestamp, body);
    (timestamp, signature)
}

/// POSTs an interaction to the server's HTTP listener: the status and the body.
pub async fn post_interaction(
    addr: std::net::SocketAddr,
    headers: Option<(String, String)>,
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut request = client
        .post(format!("http://{addr}/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((timestamp, signature)) = headers {
        request = request
            .header("x-slack-request-timestamp", timestamp)
            .header("x-slack-signature", signature);
    }
    let answer = request.send().await.expect("the HTTP listener answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}
