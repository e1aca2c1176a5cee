//! Attacks that must never work again, reproduced as the attacker ran them (issue
//! "Hardening"): raw HTTP/2 frames where the attack needs them.

use crate::helpers::*;
use std::time::Duration;
use tokio::net::TcpStream;
use toolgate::proto::v1::{DecisionCode, Verdict};

/// Opens `n` Decide streams on a new HTTP/2 connection: headers only, no END_STREAM and
/// never a body, with `authorization` when `key` is given. The connection is driven (pings
/// answered) until the returned handles are dropped.
async fn open_held_streams(
    addr: std::net::SocketAddr,
    key: Option<&str>,
    n: usize,
) -> Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)> {
    held_streams_on(raw_connection(addr).await, addr, key, n)
        .await
        .1
}

/// [`open_held_streams`] on a connection already open; the connection is handed back.
async fn held_streams_on(
    mut client: h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    key: Option<&str>,
    n: usize,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)>,
) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        client = client.ready().await.expect("stream capacity");
        let mut request =
            http::Request::post(format!("http://{addr}/toolgate.v1.PolicyService/Decide"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(()).expect("request");
        held.push(client.send_request(request, false).expect("send headers"));
    }
    (client, held)
}

/// The gRPC statuses of `answers`, in order.
async fn statuses_of(answers: Vec<h2::client::ResponseFuture>) -> Vec<Option<i32>> {
    let mut statuses = Vec::with_capacity(answers.len());
    for answer in answers {
        statuses.push(grpc_status(answer).await);
    }
    statuses
}

/// The statuses `task` collects, which must all come within 30 s (`request_body_timeout`
/// ends the held streams).
async fn statuses_in_time(task: tokio::task::JoinHandle<Vec<Option<i32>>>) -> Vec<Option<i32>> {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("every held stream ends (request_body_timeout)")
        .expect("statuses")
}

/// Of held streams' `statuses`: `held` took a place and ended when their body did not
/// arrive in time, and `shed` were refused at once.
fn assert_held_and_shed(statuses: &[Option<i32>], held: usize, shed: usize) {
    let count = |code: tonic::Code| statuses.iter().filter(|s| **s == Some(code as i32)).count();
    assert_eq!(count(tonic::Code::DeadlineExceeded), held, "{statuses:?}");
    assert_eq!(count(tonic::Code::ResourceExhausted), shed, "{statuses:?}");
}

/// The gRPC status of a stream's answer (trailers-only responses carry it in the headers).
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<i32> {
    let response = response.await.ok()?;
    let in_headers = response.headers().get("grpc-status").cloned();
    let status = match in_headers {
        Some(status) => Some(status),
        None => {
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let _ = chunk;
            }
            body.trailers().await.ok()??.get("grpc-status").cloned()
        }
    };
    status?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn headers_without_a_key_or_a_body_hold_no_place_and_legitimate_calls_go_on() {
    let app = spawn_app_with(|c| {
        // Fewer places than the attack opens streams: the attack held them all before.
        c.max_concurrent_requests = 64;
    })
    .await;
    app.connect_sample().await;
    let mut attack = open_held_streams(app.addr, None, 520).await;
    attack.extend(open_held_streams(app.addr, None, 520).await);
    // While every attacking stream is still open, legitimate calls are answered normally.
    for i in 0..50 {
        let r = app
            .decide_ok(ask("get_user", "{}", &format!("during-{i}")))
            .await;
        assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
    }
    // Each attacking stream was refused at once, from its headers alone.
    let (first, _stream) = attack.swap_remove(0);
    assert_eq!(
        grpc_status(first).await,
        Some(tonic::Code::Unauthenticated as i32)
    );
    drop(attack);
    let after = app.decide_ok(ask("get_user", "{}", "after")).await;
    assert_eq!(verdict(&after), (Verdict::Allow, DecisionCode::PolicyAuto));
}

#[tokio::test]
async fn a_key_that_never_sends_bodies_holds_only_its_own_places_and_only_until_the_body_timeout() {
    let app = spawn_app_with(|c| {
        c.max_concurrent_requests = 64;
        c.max_concurrent_requests_per_key = 16;
        c.request_body_timeout = Duration::from_secs(1);
    })
    .await;
    app.connect_sample().await;
    // A second agent key of the tenant is the attacker.
    let attacker = app.mint("acme", toolgate::policy::Role::Agent).await;
    let attack = open_held_streams(app.addr, Some(&attacker), 100).await;
    let (answers, streams): (Vec<_>, Vec<_>) = attack.into_iter().unzip();
    let statuses = tokio::spawn(statuses_of(answers));
    // Other keys are not held up while the attacker's streams are open.
    for i in 0..20 {
        let r = app
            .decide_ok(ask("get_user", "{}", &format!("during-{i}")))
            .await;
        assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
    }
    // 16 streams took the key's places and ended when their bodies did not arrive in
    // time; every other one was shed at once.
    assert_held_and_shed(&statuses_in_time(statuses).await, 16, 84);
    drop(streams);
    let r = app
        .client
        .clone()
        .decide(with_key(&attacker, ask("get_user", "{}", "after")))
        .await
        .expect("the attacker's key has places again")
        .into_inner();
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
}

#[tokio::test]
async fn a_connection_holds_at_most_its_own_places_and_gets_them_back() {
    let app = spawn_app_with(|c| {
        c.max_concurrent_requests = 64;
        c.max_concurrent_requests_per_key = 64;
        c.max_concurrent_requests_per_connection = 4;
        c.request_body_timeout = Duration::from_secs(1);
    })
    .await;
    app.connect_sample().await;
    let key = app.mint("acme", toolgate::policy::Role::Agent).await;
    let (connection, held) =
        held_streams_on(raw_connection(app.addr).await, app.addr, Some(&key), 10).await;
    let (answers, streams): (Vec<_>, Vec<_>) = held.into_iter().unzip();
    let statuses = tokio::spawn(statuses_of(answers));
    // The same key on another connection is not held up.
    let r = app
        .client
        .clone()
        .decide(with_key(&key, ask("get_user", "{}", "other-connection")))
        .await
        .expect("another connection has places")
        .into_inner();
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
    // Four streams took the connection's places and ended when their bodies did not
    // arrive in time; the other six were shed at once.
    assert_held_and_shed(&statuses_in_time(statuses).await, 4, 6);
    drop(streams);
    // The connection's places came back: four more streams on it take them.
    let (_connection, again) = held_streams_on(connection, app.addr, Some(&key), 4).await;
    for (answer, _stream) in again {
        assert_eq!(
            grpc_status(answer).await,
            Some(tonic::Code::DeadlineExceeded as i32),
            "a place, held until the body timeout"
        );
    }
}

#[tokio::test]
async fn over_tls_a_connection_holds_at_most_its_own_places() {
    use tokio_rustls::rustls::{self, pki_types};
    let (_dir, files, issued) = self_signed_tls();
    let app = spawn_app_with(|c| {
        c.tls = Some(files);
        c.max_concurrent_requests_per_connection = 2;
        c.request_body_timeout = Duration::from_secs(1);
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(issued.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    let name = pki_types::ServerName::try_from("toolgate.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (client, connection) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let (_client, held) = held_streams_on(client, app.addr, Some(&app.agent), 5).await;
    let (answers, _streams): (Vec<_>, Vec<_>) = held.into_iter().unzip();
    assert_held_and_shed(&statuses_of(answers).await, 2, 3);
}

/// Sends `message` as one gRPC message (uncompressed, length-prefixed) to Decide with `key`.
async fn decide_raw(addr: std::net::SocketAddr, key: &str, message: &[u8]) -> Option<i32> {
    decide_body(addr, key, framed(message)).await
}

/// `message` with gRPC's prefix: not compressed, then its length.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Sends `body` as it is as the request body of a Decide with `key`.
async fn decide_body(addr: std::net::SocketAddr, key: &str, body: Vec<u8>) -> Option<i32> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!("http://{addr}/toolgate.v1.PolicyService/Decide"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .expect("request");
    let (answer, mut sender) = client.send_request(request, false).expect("send");
    sender.send_data(body.into(), true).expect("send body");
    grpc_status(answer).await
}

#[tokio::test]
async fn a_decide_body_is_one_message_within_max_message_bytes() {
    let app = spawn_app_with(|c| {
        c.max_message_bytes = 4096;
        c.max_arguments_bytes = 1024;
    })
    .await;
    app.connect_sample().await;
    let ask = |arguments: String| prost::Message::encode_to_vec(&ask("get_user", &arguments, "r1"));
    let fits = ask(format!(r#"{{"user":"{}"}}"#, "a".repeat(100)));
    assert_eq!(decide_raw(app.addr, &app.agent, &fits).await, Some(0));
    // Over max_message_bytes: refused from its length, as tonic refuses other methods'.
    let over = ask(format!(r#"{{"user":"{}"}}"#, "a".repeat(5000)));
    assert_eq!(
        decide_raw(app.addr, &app.agent, &over).await,
        Some(tonic::Code::OutOfRange as i32)
    );
    // Two messages, a message and a stray byte, a message cut short: not one message.
    let mut two = framed(&fits);
    two.extend_from_slice(&framed(&fits));
    let mut stray = framed(&fits);
    stray.push(0);
    let mut short = framed(&fits);
    short.pop();
    for (what, body) in [
        ("two", two),
        ("stray", stray),
        ("short", short),
        ("empty", vec![]),
    ] {
        assert_eq!(
            decide_body(app.addr, &app.agent, body).await,
            Some(tonic::Code::InvalidArgument as i32),
            "{what}"
        );
    }
    // Each counted once, with its status, as every call is.
    let metrics = app.scrape().await;
    let handled = |code: &str| {
        metrics.get(&format!(
            "grpc_server_handled_total{{grpc_type=\"unary\",grpc_service=\"toolgate.v1.PolicyService\",\
             grpc_method=\"Decide\",grpc_code=\"{code}\"}}"
        ))
    };
    assert_eq!(handled("OK"), 1.0);
    assert_eq!(handled("OutOfRange"), 1.0);
    assert_eq!(handled("InvalidArgument"), 4.0);
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_not_internal() {
    let app = spawn_app().await;
    // Field 1 with wire type 7, which protobuf does not have; then a truncated varint.
    for garbage in [
        &[0x0f, 0x01][..],
        &[0x08, 0xff, 0xff][..],
        &[0x12, 0x40, 0x61][..],
    ] {
        let status = decide_raw(app.addr, &app.agent, garbage).await;
        assert_eq!(
            status,
            Some(tonic::Code::InvalidArgument as i32),
            "{garbage:?}"
        );
    }
}

#[tokio::test]
async fn a_malformed_authorization_header_is_unauthenticated() {
    let app = spawn_app().await;
    for value in ["Bearer\tsecret", "Bearer", "Basic abc", "Bearer  "] {
        let mut request = tonic::Request::new(ask("get_user", "{}", "r1"));
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("a header value"));
        let status = app.client.clone().decide(request).await.expect_err(value);
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{value:?}: {status:?}"
        );
    }
}

#[tokio::test]
async fn page_tokens_say_nothing_of_other_tenants_and_continue_nothing_for_them() {
    let app = spawn_app().await;
    // Another tenant asks for approvals first, so its approvals are older than acme's.
    let globex_admin = app.mint("globex", toolgate::policy::Role::Admin).await;
    let globex_agent = app.mint("globex", toolgate::policy::Role::Agent).await;
    app.connect(&globex_admin, "entra", &[("add_user_to_group", None)])
        .await;
    for i in 0..3 {
        let ask = ask(
            "add_user_to_group",
            &format!(r#"{{"user":"eve{i}"}}"#),
            &format!("g{i}"),
        );
        app.decide(&globex_agent, ask).await.expect("globex asks");
    }
    app.connect_sample().await;
    app.sample_people().await;
    for i in 0..3 {
        let ask = ask(
            "add_user_to_group",
            &format!(r#"{{"user":"bob{i}"}}"#),
            &format!("p{i}"),
        );
        app.decide_ok(ask).await;
    }
    let page = |key: String, token: String| {
        let mut client = app.client.clone();
        async move {
            client
                .list_approvals(with_key(
                    &key,
                    toolgate::proto::v1::ListApprovalsRequest {
                        state: 0,
                        page_size: 1,
                        page_token: token,
                    },
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let first = page(app.approver.clone(), String::new())
        .await
        .expect("page 1");
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());
    // Not the old form, a position in a sequence shared by every tenant, whose gaps told
    // one tenant how many approvals the others made.
    assert!(!token.starts_with("v1."), "{token}");
    let second = page(app.approver.clone(), token.clone())
        .await
        .expect("page 2");
    assert_eq!(second.approvals.len(), 1);
    assert_ne!(second.approvals[0].id, first.approvals[0].id);
    // Another tenant's approver, with that token, continues nothing: a position shared by
    // every tenant would have paged on into its own older approvals.
    let other = app.mint("globex", toolgate::policy::Role::Approver).await;
    let theirs = page(other.clone(), token).await.expect("a page");
    assert!(theirs.approvals.is_empty(), "{theirs:?}");
    let own = page(other, String::new())
        .await
        .expect("globex's first page");
    assert_eq!(own.approvals.len(), 1, "globex has approvals of its own");
}

#[tokio::test]
async fn revoking_a_key_ends_its_open_streams_with_unauthenticated() {
    let app = spawn_app().await;
    app.connect_sample().await;
    let agent = app.mint("acme", toolgate::policy::Role::Agent).await;
    let approver = app.mint("acme", toolgate::policy::Role::Approver).await;
    let mut config = app
        .client
        .clone()
        .watch_config(with_key(
            &agent,
            toolgate::proto::v1::WatchConfigRequest::default(),
        ))
        .await
        .expect("watch config")
        .into_inner();
    config.message().await.expect("snapshot").expect("open");
    let mut approvals = app
        .client
        .clone()
        .watch_approvals(with_key(
            &approver,
            toolgate::proto::v1::WatchApprovalsRequest::default(),
        ))
        .await
        .expect("watch approvals")
        .into_inner();
    let store = toolgate::server::open_store(&app.config)
        .await
        .expect("store");
    for key in [&agent, &approver] {
        let id = key.split('_').nth(1).expect("key id");
        use toolgate::store::Store;
        assert!(store.revoke_key(id).await.expect("revoke"));
    }
    // Both end at the server's next key reload (100 ms in tests), on either store; a
    // stream that went on would never end, and the bound fails the test.
    let bound = Duration::from_secs(20);
    let ended = tokio::time::timeout(bound, config.message()).await;
    let status = ended.expect("config stream ends").expect_err("config");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let ended = tokio::time::timeout(bound, approvals.message()).await;
    let status = ended
        .expect("approvals stream ends")
        .expect_err("approvals");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

/// Issue item 2: a second agent key of the tenant, with the first key's request_id or
/// approval_id, neither sees nor uses the approval; the first key's one ALLOW stays its own.
#[tokio::test]
async fn another_agent_key_neither_sees_nor_uses_an_approval() {
    use toolgate::proto::v1 as pb;
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    let other = app.mint("acme", toolgate::policy::Role::Agent).await;
    let args = r#"{"group":"admins","user":"bob"}"#;
    let asked = app.decide_ok(ask("add_user_to_group", args, "r1")).await;
    let approval = asked.approval.expect("approval");

    // Its id: NOT_FOUND on Decide and on GetApproval, with nothing of the approval.
    let by_id = with_approval(ask("add_user_to_group", "{}", "x1"), &approval.id);
    let status = app
        .decide(&other, by_id)
        .await
        .expect_err("not the other's");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(!status.message().contains("bob"), "{status:?}");
    let get = pb::GetApprovalRequest {
        approval_id: approval.id.clone(),
    };
    let status = app
        .client
        .clone()
        .get_approval(with_key(&other, get))
        .await
        .expect_err("not the other's");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // Its request_id: a request of the other key's own (a new approval), not a view of the
    // first key's (which answered APPROVAL_MISMATCH with the whole approval attached).
    let squat = app
        .decide(&other, ask("add_user_to_group", "{}", "r1"))
        .await
        .expect("decide");
    assert_eq!(
        verdict(&squat),
        (Verdict::PendingApproval, DecisionCode::ApprovalRequired)
    );
    let theirs = squat.approval.expect("its own approval");
    assert_ne!(theirs.id, approval.id);
    assert_eq!(theirs.arguments_json, "{}");

    // Approved, the first key's approval gives its one ALLOW to the first key only.
    app.submit(&approval.id, pb::ApproverRole::Technician, "tech", true)
        .await
        .expect("approve");
    let stolen = with_approval(ask("add_user_to_group", args, "r1"), &approval.id);
    let status = app
        .decide(&other, stolen)
        .await
        .expect_err("not the other's");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let go = app
        .decide_ok(with_approval(
            ask("add_user_to_group", args, "r1"),
            &approval.id,
        ))
        .await;
    assert_eq!(
        verdict(&go),
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
}

/// Keys created with the same name are one principal: the key that rotates another uses
/// the approvals the other asked for. Another name is another principal.
#[tokio::test]
async fn keys_with_the_same_name_are_one_principal() {
    use toolgate::policy::Role;
    use toolgate::proto::v1 as pb;
    let app = spawn_app().await;
    app.connect_sample().await;
    app.sample_people().await;
    let old = app.mint_named("acme", Role::Agent, Some("helpdesk")).await;
    let new = app.mint_named("acme", Role::Agent, Some("helpdesk")).await;
    let stranger = app.mint_named("acme", Role::Agent, Some("billing")).await;
    let args = r#"{"group":"admins","user":"bob"}"#;
    let asked = app
        .decide(&old, ask("add_user_to_group", args, "r1"))
        .await
        .expect("decide");
    let approval = asked.approval.expect("approval");
    app.submit(&approval.id, pb::ApproverRole::Technician, "tech", true)
        .await
        .expect("approve");
    let with_it = || with_approval(ask("add_user_to_group", args, "r1"), &approval.id);
    let status = app
        .decide(&stranger, with_it())
        .await
        .expect_err("another name");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let go = app.decide(&new, with_it()).await.expect("decide");
    assert_eq!(
        verdict(&go),
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
    // The old key, one principal with the new, sees that its ALLOW was given.
    let again = app.decide(&old, with_it()).await.expect("decide");
    assert_eq!(
        verdict(&again),
        (Verdict::Deny, DecisionCode::ApprovalConsumed)
    );
    assert_eq!(
        again.approval.expect("approval").consumed_by_request_id,
        "r1"
    );
}

/// Reads `conn` until the server closes it (whatever it sent first, such as its SETTINGS);
/// fails the test if that does not happen within a bound it must happen in.
async fn closed_by_server(mut conn: TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("the server closes the connection");
}

/// Connects and waits for the server's first bytes (HTTP/2 servers send their SETTINGS as
/// soon as they serve a connection): from then on the connection holds its place.
async fn served_connection(addr: std::net::SocketAddr) -> TcpStream {
    use tokio::io::AsyncReadExt;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut first));
    let n = read.await.expect("the server speaks first").expect("read");
    assert_eq!(
        n, 1,
        "the server closed the connection instead of serving it"
    );
    conn
}

/// Issue item 6: connections that never finish the HTTP/2 handshake (nothing sent, or half
/// the preface) are closed once `handshake_timeout` has passed, and counted.
#[tokio::test]
async fn connections_that_never_finish_the_handshake_are_closed() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    app.connect_sample().await;
    let before = app.scrape().await;
    let mut idle = Vec::new();
    for i in 0..10 {
        let mut conn = TcpStream::connect(app.addr).await.expect("connect");
        if i % 2 == 1 {
            conn.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        }
        idle.push(conn);
    }
    for conn in idle {
        closed_by_server(conn).await;
    }
    let after = app.scrape().await;
    let series = "toolgate_connections_refused_total{reason=\"handshake_timeout\"}";
    assert_eq!(after.delta(&before, series), 10.0);
    // A client that finishes its handshake is served.
    let r = app.decide_ok(ask("get_user", "{}", "after")).await;
    assert_eq!(verdict(&r), (Verdict::Allow, DecisionCode::PolicyAuto));
}

/// Issue item 6: at most `max_connections` are open; one more is closed as it is accepted,
/// and the places come back when connections close.
#[tokio::test]
async fn connections_over_the_limit_are_closed_and_places_come_back() {
    const LIMIT: usize = 4;
    let app = spawn_app_with(|c| {
        c.max_connections = LIMIT;
        c.handshake_timeout = Duration::from_secs(3600);
    })
    .await;
    // The test's own client holds a connection once it has made a call; fill the rest.
    let _ = app.decide(&app.agent, ask("get_user", "{}", "r0")).await;
    let before = app.scrape().await;
    let own = before.get("toolgate_connections_open") as usize;
    let mut held = Vec::new();
    for _ in own..LIMIT {
        held.push(served_connection(app.addr).await);
    }
    // One more finds no place.
    let extra = TcpStream::connect(app.addr).await.expect("connect");
    closed_by_server(extra).await;
    let scraped = app.scrape().await;
    let series = "toolgate_connections_refused_total{reason=\"limit\"}";
    assert_eq!(scraped.delta(&before, series), 1.0);
    assert_eq!(scraped.get("toolgate_connections_open"), LIMIT as f64);
    drop(held);
    // Once the server has seen them close, a client connects and is served.
    let served = async {
        loop {
            let mut client = toolgate::proto::v1::policy_service_client::PolicyServiceClient::new(
                tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
                    .expect("uri")
                    .connect_lazy(),
            );
            let ask = with_key(&app.agent, ask("get_user", "{}", "r"));
            if let Ok(answer) = client.decide(ask).await {
                return answer.into_inner();
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("served once the places are back");
}

/// Issue item 6: a shutdown does not wait on connections still in their handshake.
#[tokio::test]
async fn drain_does_not_wait_on_connections_that_never_finish_the_handshake() {
    let mut app = spawn_app_with(|c| {
        c.handshake_timeout = Duration::from_secs(3600);
        c.shutdown_grace = Duration::from_secs(3600);
    })
    .await;
    // The test's own client holds a connection once it has made a call.
    let _ = app.decide(&app.agent, ask("get_user", "{}", "r0")).await;
    let own = app.scrape().await.get("toolgate_connections_open");
    // Every one is served (and holds its place) before the shutdown begins.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(served_connection(app.addr).await);
    }
    assert_eq!(
        app.scrape().await.get("toolgate_connections_open"),
        own + 20.0
    );
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the server stops without waiting on them");
    drop(idle);
}

/// A WatchConfig request on a raw HTTP/2 connection: headers, then its one message (an
/// empty `WatchConfigRequest`). Nothing of the answer is read, so nothing of the client's
/// flow-control window is given back.
async fn raw_watch_config(
    client: h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    key: &str,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::ResponseFuture,
) {
    let mut client = client.ready().await.expect("stream capacity");
    let request = http::Request::post(format!(
        "http://{addr}/toolgate.v1.PolicyService/WatchConfig"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", format!("Bearer {key}"))
    .body(())
    .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send headers");
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("send message");
    (client, response)
}

async fn raw_connection(addr: std::net::SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    client
}

/// `n` tools with descriptions long enough that a snapshot is many flow-control windows.
fn many_tools(n: usize) -> Vec<toolgate::proto::v1::ToolDefinition> {
    (0..n)
        .map(|i| toolgate::proto::v1::ToolDefinition {
            name: format!("get_record_{i}"),
            description: format!("Reads record {i} of the customer relationship manager."),
            input_schema_json: String::new(),
            annotations: None,
        })
        .collect()
}

async fn connect_tools(
    client: &mut toolgate::proto::v1::policy_service_client::PolicyServiceClient<
        tonic::transport::Channel,
    >,
    admin: &str,
    n: usize,
) {
    client
        .connect_integration(with_key(
            admin,
            toolgate::proto::v1::ConnectIntegrationRequest {
                integration_id: "crm".into(),
                kind: "crm".into(),
                display_name: String::new(),
                tools: many_tools(n),
                comment: String::new(),
            },
        ))
        .await
        .expect("connect");
}

/// Resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Issue item 7, as the attacker ran it against the binary: with ten thousand tools in a
/// tenant, hundreds of WatchConfig streams whose clients never open their flow-control
/// windows. Each used to hold its own copy of the snapshot (about 1.1 MiB); now the
/// snapshot is encoded once and a stream holds at most a piece of it.
#[tokio::test]
async fn watch_streams_that_never_read_share_one_snapshot() {
    let db = fresh_database().await;
    let config = toolgate::config::Config {
        database_url: toolgate::config::DatabaseUrl::new(db.url.clone()),
        ..Default::default()
    };
    let store = toolgate::server::open_store(&config).await.expect("store");
    let admin = mint(&store, "acme", toolgate::policy::Role::Admin).await;
    let agent = mint(&store, "acme", toolgate::policy::Role::Agent).await;
    drop(store);
    // Saving ten thousand tools is one store call that takes seconds in this debug build
    // on a loaded machine, past the default `db_timeout` (5 s); the test is about memory.
    let server = Binary::serve_with(&db.url, &["--db-timeout", "60s"]).await;
    let addr = server.addr;
    let mut client = toolgate::proto::v1::policy_service_client::PolicyServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .expect("connect")
    .max_decoding_message_size(64 * 1024 * 1024);
    connect_tools(&mut client, &admin, 10_000).await;
    // One reader takes the whole snapshot first, so the shared encoding (and the memory
    // that making it took) is already in the baseline.
    let mut reader = client
        .watch_config(with_key(
            &agent,
            toolgate::proto::v1::WatchConfigRequest::default(),
        ))
        .await
        .expect("watch")
        .into_inner();
    let first = reader.message().await.expect("snapshot").expect("open");
    let snapshot_bytes = prost::Message::encoded_len(&first) as u64;
    assert!(
        snapshot_bytes > 500_000,
        "snapshot is {snapshot_bytes} bytes"
    );
    let before = resident_bytes(server.child.id());
    let (connections, per_connection) = (20, 10);
    let mut held = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..connections {
        let mut conn = raw_connection(addr).await;
        for _ in 0..per_connection {
            let (next, response) = raw_watch_config(conn, addr, &agent).await;
            conn = next;
            let response = response.await.expect("answered");
            assert_eq!(response.status(), 200);
            assert!(
                response.headers().get("grpc-status").is_none(),
                "the stream is open: {:?}",
                response.headers()
            );
            held.push(response);
        }
        conns.push(conn);
    }
    let after = resident_bytes(server.child.id());
    let streams = (connections * per_connection) as u64;
    let grown = after.saturating_sub(before);
    eprintln!(
        "{streams} unread streams: resident {} → {} MiB ({} KiB per stream; the snapshot is {} KiB)",
        before >> 20,
        after >> 20,
        grown / streams / 1024,
        snapshot_bytes / 1024
    );
    // A copy per stream would be streams × snapshot (about 200 MiB here).
    assert!(
        grown < streams * snapshot_bytes / 5,
        "{streams} streams grew the server by {grown} bytes"
    );
    drop((held, conns));
}

/// Reads a raw stream's data frames until `enough` bytes arrived, giving no window back.
async fn receive_without_reading(body: &mut h2::RecvStream, enough: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < enough {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.data())
            .await
            .expect("data within the bound")
            .expect("data")
            .expect("data frame");
        got.extend_from_slice(&chunk);
    }
    got
}

/// Reads the rest of a raw stream, giving the window back as it goes: every byte, and
/// the trailers' grpc-status when it ends before `stop_after` bytes.
async fn read_rest(
    body: &mut h2::RecvStream,
    mut got: Vec<u8>,
    stop_after: usize,
) -> (Vec<u8>, Option<String>) {
    while got.len() < stop_after {
        let next = tokio::time::timeout(Duration::from_secs(20), body.data())
            .await
            .expect("data within the bound");
        match next {
            Some(chunk) => {
                let chunk = chunk.expect("data frame");
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            None => {
                let trailers = body.trailers().await.expect("trailers").expect("some");
                let status = trailers["grpc-status"].to_str().unwrap().to_owned();
                return (got, Some(status));
            }
        }
    }
    (got, None)
}

/// Issue item 7: a stream over its bound ends. A client that stalls part-way through a
/// snapshot until the tenant has moved on so far that the snapshot's encoding is freed
/// (more than `RETAINED_ENCODINGS` revisions) has its stream ended with RESOURCE_EXHAUSTED
/// when it reads again; it reconnects and is brought to the current revision. A stall of
/// fewer revisions finishes the message (the replicas tests save dozens of revisions a
/// second under readers that never reset).
#[tokio::test]
async fn a_stream_stalled_mid_message_past_its_revision_ends_resource_exhausted() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    connect_tools(&mut client, &app.admin, 3_000).await;
    // Two clients, each on its own connection, take their connection's whole window
    // (65 535 bytes) of the snapshot and give none back.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let conn = raw_connection(app.addr).await;
        let (conn, response) = raw_watch_config(conn, app.addr, &app.agent).await;
        let response = response.await.expect("answered");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let received = receive_without_reading(&mut body, 65_535).await;
        stalled.push((conn, body, received));
    }
    let save = |i: usize| {
        let mut client = client.clone();
        let admin = app.admin.clone();
        async move {
            let policy = if i.is_multiple_of(2) {
                Policy::Disabled
            } else {
                Policy::Auto
            };
            let saved = client
                .set_policy(with_key(
                    &admin,
                    toolgate::proto::v1::SetPolicyRequest {
                        changes: vec![change("crm", "get_record_7", policy, None)],
                        ..Default::default()
                    },
                ))
                .await
                .expect("save")
                .into_inner();
            assert_eq!(saved.revision, 2 + i as u64);
        }
    };
    // One revision later the first client reads on: its message is still there, whole.
    save(0).await;
    let (_conn, mut body, received) = stalled.remove(0);
    let _ = body.flow_control().release_capacity(received.len());
    let length = u32::from_be_bytes(received[1..5].try_into().unwrap()) as usize;
    let (whole, status) = read_rest(&mut body, received, 5 + length).await;
    assert_eq!(status, None, "a stall of one revision is within the bound");
    let message: toolgate::proto::v1::WatchConfigResponse =
        prost::Message::decode(&whole[5..5 + length]).expect("a WatchConfigResponse");
    assert_eq!(message.revision, 1);
    // The tenant moves on further than replaced revisions' encodings are kept.
    let saves = toolgate::snapshot::RETAINED_ENCODINGS + 1;
    for i in 1..saves {
        save(i).await;
    }
    let (_conn, mut stalled, received) = stalled.remove(0);
    let _ = stalled.flow_control().release_capacity(received.len());
    let length = u32::from_be_bytes(received[1..5].try_into().unwrap()) as usize;
    let (partial, status) = read_rest(&mut stalled, received, 5 + length).await;
    assert!(partial.len() < 5 + length, "the message was cut short");
    assert_eq!(status.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    // Reconnected, the client is brought to the tenant's revision.
    let mut again = client
        .watch_config(with_key(
            &app.agent,
            toolgate::proto::v1::WatchConfigRequest::default(),
        ))
        .await
        .expect("watch")
        .into_inner();
    let message = again.message().await.expect("snapshot").expect("open");
    assert_eq!(message.revision, 1 + saves as u64);
    let Some(toolgate::proto::v1::watch_config_response::Event::Snapshot(snapshot)) = message.event
    else {
        panic!("a snapshot: {:?}", message.event);
    };
    // For an agent a disabled tool is gone.
    assert_eq!(snapshot.tools.len(), 2_999);
}
