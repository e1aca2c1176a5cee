//! Limits for a mesh: load shedding, the watch-stream cap, message size, and TLS.

use crate::helpers::*;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

/// A bound on how long a test waits for something that must happen; it fails, never passes.
const MUST_HAPPEN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_tiny_concurrency_limit_sheds_with_resource_exhausted_and_recovers() {
    let app = spawn_app_with(|c| {
        c.max_concurrent_requests = 1;
        // The held call below waits for a revision nobody saves; it never times out here.
        c.min_revision_wait = Duration::from_secs(120);
    })
    .await;
    app.connect_sample().await;
    let revision = app.list_tools(&app.agent, false).await.unwrap().revision;
    let mut held = ask("get_user", "{}", "held");
    held.min_revision = Some(revision + 1);
    let (client, agent) = (app.client.clone(), app.agent.clone());
    let held = tokio::spawn(async move { client.clone().decide(with_key(&agent, held)).await });

    // Once the held call has the only slot, the next one is refused at once.
    let deadline = Instant::now() + MUST_HAPPEN;
    let mut shed = 0;
    let refused = loop {
        match app.list_tools(&app.agent, false).await {
            Err(status) => break status,
            Ok(_) => assert!(Instant::now() < deadline, "no call was ever shed"),
        }
    };
    shed += 1;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_concurrent_requests"));
    // Probes are not behind the limit: an overloaded replica is still alive and ready.
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // The held call's client gives up: its slot comes back and calls succeed again.
    held.abort();
    let _ = held.await;
    let deadline = Instant::now() + MUST_HAPPEN;
    loop {
        match app.list_tools(&app.agent, false).await {
            Ok(r) => {
                assert_eq!(r.revision, revision);
                break;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                shed += 1;
                assert!(Instant::now() < deadline, "the slot never came back");
            }
        }
    }
    let metrics = app.scrape().await;
    assert_eq!(
        metrics.get("toolgate_shed_total{kind=\"request\"}"),
        shed as f64
    );
}

async fn open_watch(
    app: &TestApp,
) -> Result<tonic::codec::Streaming<pb::WatchConfigResponse>, tonic::Status> {
    let mut stream = app
        .client
        .clone()
        .watch_config(with_key(
            &app.agent,
            pb::WatchConfigRequest {
                since_revision: None,
                integration_id: String::new(),
            },
        ))
        .await?
        .into_inner();
    stream.message().await?.expect("a snapshot first");
    Ok(stream)
}

#[tokio::test]
async fn watch_streams_beyond_the_cap_are_refused_until_one_closes() {
    let app = spawn_app_with(|c| c.max_watch_streams = 1).await;
    let first = open_watch(&app).await.expect("first stream");
    assert_status(
        open_watch(&app).await.map(|_| ()),
        Code::ResourceExhausted,
        "max_watch_streams",
    );
    // Unary calls are not counted against the stream cap.
    app.list_tools(&app.agent, false).await.expect("list tools");
    drop(first);
    let deadline = Instant::now() + MUST_HAPPEN;
    loop {
        match open_watch(&app).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    Instant::now() < deadline,
                    "the closed stream was never released"
                );
                tokio::task::yield_now().await;
            }
        }
    }
    let metrics = app.scrape().await;
    assert!(metrics.get("toolgate_shed_total{kind=\"watch\"}") >= 1.0);
}

#[tokio::test]
async fn a_message_over_max_message_bytes_is_refused_and_changes_nothing() {
    let app = spawn_app_with(|c| {
        c.max_message_bytes = 64 * 1024;
        c.max_arguments_bytes = 1024;
    })
    .await;
    let big = pb::ToolDefinition {
        name: "huge".into(),
        description: "x".repeat(100 * 1024),
        input_schema_json: "{}".into(),
        annotations: None,
    };
    let refused = app
        .client
        .clone()
        .connect_integration(with_key(
            &app.admin,
            pb::ConnectIntegrationRequest {
                integration_id: "entra".into(),
                kind: "entra_id".into(),
                display_name: "Entra ID".into(),
                tools: vec![big],
                comment: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let tools = app.list_tools(&app.admin, true).await.unwrap();
    assert!(tools.tools.is_empty());
    assert_eq!(tools.revision, 0);
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate_and_refuses_plaintext() {
    let (_dir, files, issued) = self_signed_tls();
    let cert_pem = issued.cert.pem();
    let app = spawn_app_with(|c| c.tls = Some(files)).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("toolgate.test");
    let channel = Channel::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake");
    let tools = PolicyServiceClient::new(channel)
        .list_tools(with_key(
            &app.agent,
            pb::ListToolsRequest {
                integration_id: String::new(),
                include_disabled: false,
                min_revision: None,
            },
        ))
        .await
        .expect("list tools over TLS");
    assert_eq!(tools.into_inner().revision, 0);

    let plain = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    let refused = PolicyServiceClient::new(plain)
        .list_tools(with_key(
            &app.agent,
            pb::ListToolsRequest {
                integration_id: String::new(),
                include_disabled: false,
                min_revision: None,
            },
        ))
        .await;
    assert!(refused.is_err(), "plaintext was served: {refused:?}");
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tonic::transport::Identity;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let issue = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue("toolgate.test");
    let (client_cert, client_key) = issue("agent-backend");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let files = toolgate::config::TlsFiles {
        cert: path("tls.crt", &server_cert),
        key: path("tls.key", &server_key),
        client_ca: Some(path("ca.crt", &ca.pem())),
    };
    let app = spawn_app_with(|c| c.tls = Some(files)).await;
    let agent = app.agent.clone();
    let list = |channel: Channel| {
        let agent = agent.clone();
        async move {
            PolicyServiceClient::new(channel)
                .list_tools(with_key(
                    &agent,
                    pb::ListToolsRequest {
                        integration_id: String::new(),
                        include_disabled: false,
                        min_revision: None,
                    },
                ))
                .await
        }
    };
    let trust = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("toolgate.test")
    };
    let endpoint = format!("https://{}", app.addr);
    let with_cert = Channel::from_shared(endpoint.clone())
        .unwrap()
        .tls_config(trust().identity(Identity::from_pem(&client_cert, &client_key)))
        .unwrap()
        .connect()
        .await
        .expect("mutual TLS handshake");
    list(with_cert).await.expect("a client with a certificate");
    let without = Channel::from_shared(endpoint)
        .unwrap()
        .tls_config(trust())
        .unwrap()
        .connect_lazy();
    let refused = list(without).await;
    assert!(refused.is_err(), "served without a client certificate");
}

/// `GET /` on `stream`: the status line, or `None` when the server closed the connection
/// without answering.
async fn get_console(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = b"GET / HTTP/1.1\r\nHost: toolgate\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return None;
    }
    let mut answer = vec![0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer or a close within 10 s");
    match read {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(
            String::from_utf8_lossy(&answer[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
    }
}

#[tokio::test]
async fn the_http_listener_closes_connections_over_max_connections() {
    use tokio::net::TcpStream;
    let app = spawn_app_with(|c| c.max_connections = 2).await;
    let mut first = TcpStream::connect(app.http_addr).await.expect("connect");
    let mut second = TcpStream::connect(app.http_addr).await.expect("connect");
    // Accepted in order: the first two hold the listener's two places.
    assert_eq!(
        get_console(&mut first).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        get_console(&mut second).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    let mut third = TcpStream::connect(app.http_addr).await.expect("connect");
    assert_eq!(get_console(&mut third).await, None, "closed as accepted");
    // The gRPC port counts its own connections: it still serves.
    app.list_tools(&app.admin, false)
        .await
        .expect("gRPC still serves");
    // Once one closes, its place is free again (the server notices the close first).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut next = TcpStream::connect(app.http_addr).await.expect("connect");
        if let Some(status) = get_console(&mut next).await {
            assert_eq!(status, "HTTP/1.1 200 OK");
            break;
        }
        assert!(Instant::now() < deadline, "no place came free");
        tokio::task::yield_now().await;
    }
    drop(second);
}
