//! A webhook receiver for the delivery tests: a real HTTP/1.1 server on 127.0.0.1:0 that
//! records every request, answers as the test scripts it, and notices when the same
//! delivery is in flight twice at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use toolgate::delivery::webhook::SigningKey;

/// A signing secret for the tests (32 bytes of key).
pub const SECRET: &str = "whsec_dG9vbGdhdGUtdGVzdC1zaWduaW5nLWtleS0zMmJ5dGVz";
/// Another valid secret, which must not verify what SECRET signed.
pub const OTHER_SECRET: &str = "whsec_b3RoZXItdGVzdC1zaWduaW5nLWtleS0wMDAwMDAwMDA=";

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    /// Whether the Standard Webhooks signature verifies with `secret`.
    pub fn verifies_with(&self, secret: &str) -> bool {
        let key = SigningKey::parse("secret", secret).expect("a signing secret");
        let ts: i64 = self.timestamp.parse().expect("webhook-timestamp");
        key.verify(&self.id, ts, &self.body, &self.signature)
    }
}

/// How the receiver answers a request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// 429 or 503 with `Retry-After: 0`.
    RetryAfterZero(u16),
    /// Waits until the gate opens, then answers 200.
    Held,
    /// Answers 200 after this long (so that attempts have a time in flight).
    #[allow(dead_code)] // the replica tests use it
    After(Duration),
    /// Never answers.
    Hang,
}

type Script = Box<dyn Fn(&Received, usize) -> Answer + Send + Sync>;

struct State {
    seen: Mutex<Vec<Received>>,
    count: tokio::sync::watch::Sender<usize>,
    script: Mutex<Arc<Script>>,
    gate: tokio::sync::watch::Sender<bool>,
    active: Mutex<HashSet<String>>,
    overlaps: AtomicUsize,
    in_flight: AtomicUsize,
}

pub struct Receiver {
    pub url: String,
    state: Arc<State>,
    _server: tokio::task::JoinHandle<()>,
}

struct Active(Arc<State>, String);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.lock().unwrap().remove(&self.1);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Receiver {
    /// Answers `script(request, how many times this webhook-id arrived before)`.
    pub async fn start(
        script: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            count: tokio::sync::watch::channel(0).0,
            script: Mutex::new(Arc::new(Box::new(script))),
            gate: tokio::sync::watch::channel(false).0,
            active: Mutex::new(HashSet::new()),
            overlaps: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}/hooks/toolgate"),
            state,
            _server: server,
        }
    }

    /// Always 200.
    pub async fn accepting() -> Receiver {
        Receiver::start(|_, _| Answer::Status(200)).await
    }

    pub fn set_script(&self, script: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Arc::new(Box::new(script));
    }

    pub fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }

    pub fn seen(&self) -> Vec<Received> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Times a webhook-id arrived while an earlier request with it was still unanswered.
    pub fn overlaps(&self) -> usize {
        self.state.overlaps.load(Ordering::SeqCst)
    }

    /// The requests so far, once there are at least `n` (at most 60 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut count = self.state.count.subscribe();
        let reached =
            tokio::time::timeout(Duration::from_secs(60), count.wait_for(|c| *c >= n)).await;
        let seen = self.seen();
        assert!(
            reached.is_ok(),
            "the receiver got {} requests, not {n}: {:?}",
            seen.len(),
            seen.iter().map(Received::event_type).collect::<Vec<_>>()
        );
        seen
    }
}

async fn answer(
    state: &Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signature, content_type) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        header("content-type"),
    );
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    if !state.active.lock().unwrap().insert(id.clone()) {
        state.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    let _active = Active(state.clone(), id.clone());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let received = Received {
        id,
        timestamp,
        signature,
        content_type,
        body,
    };
    let (before, script) = {
        let mut seen = state.seen.lock().unwrap();
        let before = seen.iter().filter(|r| r.id == received.id).count();
        seen.push(received.clone());
        (before, state.script.lock().unwrap().clone())
    };
    state.count.send_modify(|c| *c += 1);
    let respond = |status: u16| {
        hyper::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("response")
    };
    match script(&received, before) {
        Answer::Status(status) => respond(status),
        Answer::RetryAfterZero(status) => {
            let mut r = respond(status);
            r.headers_mut().insert("retry-after", "0".parse().unwrap());
            r
        }
        Answer::Held => {
            let mut gate = state.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            respond(200)
        }
        Answer::After(wait) => {
            tokio::time::sleep(wait).await;
            respond(200)
        }
        Answer::Hang => std::future::pending().await,
    }
}
