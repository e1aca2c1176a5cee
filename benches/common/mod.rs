//! Small pieces the bench binaries share.
// Each bench uses some of them.
#![allow(dead_code)]

pub mod bare;

use std::net::SocketAddr;
use std::time::Duration;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

/// The number after `flag` on the command line, or `default`.
pub fn arg(flag: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A loopback address nothing listens on right now, for a child server to bind.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A channel to a child server, once it has bound its port.
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    for _ in 0..400 {
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        // Waiting for the child process to bind; there is no event to wait on from here.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {addr} did not come up");
}

/// `message` with `authorization: Bearer <key>` (none for an empty key).
pub fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if !key.is_empty() {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("header"),
        );
    }
    r
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
