//! Approval delivery (issue "Approval requests reach people"): channels, the outbox, and
//! the worker, through the real server and a real HTTP receiver.

use crate::helpers::*;
use crate::receiver::{Answer, OTHER_SECRET, Receiver, SECRET};
use std::time::Duration;
use tonic::Code;
use toolgate::config::Config;
use toolgate::policy::Role;
use toolgate::proto::v1 as pb;

fn webhook(id: &str, url: &str, secret: &str) -> pb::NotificationChannel {
    pb::NotificationChannel {
        id: id.into(),
        kind: pb::ChannelKind::Webhook as i32,
        url: url.into(),
        secret: secret.into(),
        enabled: true,
        ..Default::default()
    }
}

impl TestApp {
    pub async fn set_channel(
        &self,
        key: &str,
        channel: pb::NotificationChannel,
    ) -> Result<pb::NotificationChannel, tonic::Status> {
        self.client
            .clone()
            .set_notification_channel(with_key(
                key,
                pb::SetNotificationChannelRequest {
                    channel: Some(channel),
                },
            ))
            .await
            .map(|r| r.into_inner().channel.expect("channel"))
    }

    pub async fn deliveries(
        &self,
        approval_id: &str,
        state: pb::DeliveryState,
    ) -> Vec<pb::Delivery> {
        self.client
            .clone()
            .list_deliveries(with_key(
                &self.admin,
                pb::ListDeliveriesRequest {
                    approval_id: approval_id.into(),
                    state: state as i32,
                    page_size: 500,
                    page_token: String::new(),
                },
            ))
            .await
            .expect("list deliveries")
            .into_inner()
            .deliveries
    }

    /// The deliveries of `approval_id`, once `done` holds for them, for at most 60 s. The
    /// worker records an outcome in the database after the receiver answers, and the API
    /// pushes no delivery events: reading ListDeliveries again, as a client does, is the
    /// only way to see it happen.
    pub async fn deliveries_when(
        &self,
        approval_id: &str,
        done: impl Fn(&[pb::Delivery]) -> bool,
    ) -> Vec<pb::Delivery> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let found = self
                .deliveries(approval_id, pb::DeliveryState::Unspecified)
                .await;
            if done(&found) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deliveries never reached the state waited for: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn retry_delivery(&self, key: &str, id: &str) -> Result<pb::Delivery, tonic::Status> {
        self.client
            .clone()
            .retry_delivery(with_key(
                key,
                pb::RetryDeliveryRequest {
                    delivery_id: id.into(),
                },
            ))
            .await
            .map(|r| r.into_inner().delivery.expect("delivery"))
    }
}

fn all_in(state: pb::DeliveryState) -> impl Fn(&[pb::Delivery]) -> bool {
    move |ds| !ds.is_empty() && ds.iter().all(|d| d.state == state as i32)
}

/// The directory of the sample, with Slack ids for alice's manager.
async fn people_with_slack_ids(app: &TestApp) {
    let mut mgr = person("mgr", "", true);
    mgr.slack_user_id = "U024MGR".into();
    app.people(vec![
        person("alice", "mgr", false),
        person("tech", "", true),
        mgr,
        person("bob", "", false),
    ])
    .await;
}

/// The sample integration with `reset_password` needing a technician's approval, the sample
/// directory, and a webhook channel `ops` to `receiver`, on a server set up by `adjust`.
async fn with_channel(receiver: &Receiver, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let app = spawn_app_with(adjust).await;
    app.connect_sample().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(false))
        .await;
    app.sample_people().await;
    app.set_channel(&app.admin, webhook("ops", &receiver.url, SECRET))
        .await
        .expect("set channel");
    app
}

#[tokio::test]
async fn every_event_of_an_approval_arrives_signed_and_in_order() {
    let receiver = Receiver::accepting().await;
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(true))
        .await;
    people_with_slack_ids(&app).await;
    let stored = app
        .set_channel(&app.admin, webhook("ops", &receiver.url, SECRET))
        .await
        .expect("set channel");
    assert_eq!(stored.secret, "", "secrets are never returned");

    let args = r#"{"user":"bob@example.com"}"#;
    let asked = app.decide_ok(ask("reset_password", args, "r1")).await;
    let approval = asked.approval.expect("approval");
    app.submit(&approval.id, pb::ApproverRole::Technician, "tech", true)
        .await
        .expect("technician");
    app.submit(&approval.id, pb::ApproverRole::Manager, "mgr", true)
        .await
        .expect("manager");
    let used = app
        .decide_ok(with_approval(
            ask("reset_password", args, "r1"),
            &approval.id,
        ))
        .await;
    assert_eq!(verdict(&used).0, Verdict::Allow);

    let got = receiver.wait_for(5).await;
    let sequence: Vec<(String, u64)> = got
        .iter()
        .map(|r| {
            let v = r.json();
            (
                r.event_type(),
                v["data"]["sequence"].as_u64().expect("sequence"),
            )
        })
        .collect();
    assert_eq!(
        sequence,
        [
            ("approval.requested".to_owned(), 1),
            ("approval.requested".to_owned(), 1),
            ("approval.step".to_owned(), 2),
            ("approval.approved".to_owned(), 3),
            ("approval.consumed".to_owned(), 4),
        ]
    );
    let audiences: Vec<serde_json::Value> = got[..2]
        .iter()
        .map(|r| r.json()["data"]["audience"].clone())
        .collect();
    assert!(
        audiences.contains(&serde_json::json!({"role": "technician"})),
        "{audiences:?}"
    );
    assert!(
        audiences.contains(&serde_json::json!(
            {"role": "manager", "person_id": "mgr", "slack_user_id": "U024MGR"}
        )),
        "{audiences:?}"
    );
    for r in &got {
        assert!(r.verifies_with(SECRET), "{} does not verify", r.id);
        assert!(
            !r.verifies_with(OTHER_SECRET),
            "{} verifies with another secret",
            r.id
        );
        assert_eq!(r.content_type, "application/json");
        let v = r.json();
        assert_eq!(v["data"]["approval"]["id"], approval.id.as_str());
        // The approver sees what they approve: the arguments, in the protobuf JSON mapping.
        assert_eq!(
            v["data"]["approval"]["argumentsJson"],
            r#"{"user":"bob@example.com"}"#
        );
        assert_eq!(v["data"]["approval"]["toolName"], "reset_password");
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
    }
    assert_eq!(
        got[4].json()["data"]["approval"]["state"],
        "APPROVAL_STATE_CONSUMED"
    );
    let delivered = app
        .deliveries_when(&approval.id, all_in(pb::DeliveryState::Delivered))
        .await;
    assert_eq!(delivered.len(), 5);
    assert!(
        delivered
            .iter()
            .all(|d| d.attempts == 1 && d.channel_id == "ops")
    );
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, delivered.iter().map(|d| d.id.clone()).collect());
}

#[tokio::test]
async fn denied_cancelled_and_expired_approvals_are_announced() {
    let receiver = Receiver::accepting().await;
    let app = with_channel(&receiver, |c| {
        c.approval_ttl = Duration::from_millis(1500);
        c.expiry_sweep = Duration::from_millis(50);
    })
    .await;
    let ask_for = |n: &str| ask("reset_password", &format!(r#"{{"user":"{n}"}}"#), n);
    let denied = app
        .decide_ok(ask_for("d"))
        .await
        .approval
        .expect("approval");
    let cancelled = app
        .decide_ok(ask_for("c"))
        .await
        .approval
        .expect("approval");
    let expired = app
        .decide_ok(ask_for("e"))
        .await
        .approval
        .expect("approval");
    app.submit(&denied.id, pb::ApproverRole::Technician, "tech", false)
        .await
        .expect("deny");
    app.client
        .clone()
        .cancel_approval(with_key(
            &app.agent,
            pb::CancelApprovalRequest {
                approval_id: cancelled.id.clone(),
                reason: "the user gave up".into(),
            },
        ))
        .await
        .expect("cancel");
    let got = receiver.wait_for(6).await;
    let of = |id: &str| -> Vec<String> {
        got.iter()
            .filter(|r| r.json()["data"]["approval"]["id"] == id)
            .map(|r| r.event_type())
            .collect()
    };
    assert_eq!(of(&denied.id), ["approval.requested", "approval.denied"]);
    assert_eq!(
        of(&cancelled.id),
        ["approval.requested", "approval.cancelled"]
    );
    assert_eq!(of(&expired.id), ["approval.requested", "approval.expired"]);
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_id_until_it_accepts() {
    // Three failures (a 429 with Retry-After among them), then 200.
    let receiver = Receiver::start(|_, before| match before {
        1 => Answer::RetryAfterZero(429),
        0 | 2 => Answer::Status(500),
        _ => Answer::Status(200),
    })
    .await;
    let app = with_channel(&receiver, |c| {
        c.delivery_retry_initial = Duration::from_millis(50);
        c.delivery_retry_max = Duration::from_millis(200);
    })
    .await;
    let before = app.scrape().await;
    let approval = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .expect("approval");
    let got = receiver.wait_for(4).await;
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one webhook-id on every attempt"
    );
    assert!(got.iter().all(|r| r.verifies_with(SECRET)));
    let bodies: std::collections::HashSet<_> = got.iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies.len(), 1, "the same body on every attempt");
    let done = app
        .deliveries_when(&approval.id, all_in(pb::DeliveryState::Delivered))
        .await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].attempts, 4);
    assert_eq!(done[0].id, got[0].id);
    let after = app.scrape().await;
    let retries = r#"toolgate_delivery_attempts_total{outcome="retry"}"#;
    assert_eq!(after.delta(&before, retries), 3.0);
    let delivered = r#"toolgate_deliveries_total{outcome="delivered"}"#;
    assert_eq!(after.delta(&before, delivered), 1.0);
}

#[tokio::test]
async fn a_receiver_that_never_answers_ends_failed_and_retry_sends_it_again() {
    let receiver = Receiver::start(|_, _| Answer::Hang).await;
    let app = with_channel(&receiver, |c| {
        c.delivery_timeout = Duration::from_millis(200);
        c.delivery_retry_initial = Duration::from_millis(50);
        c.delivery_retry_max = Duration::from_millis(100);
        c.delivery_max_age = Duration::from_secs(1);
    })
    .await;
    let approval = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .expect("approval");
    let failed = app
        .deliveries_when(&approval.id, all_in(pb::DeliveryState::Failed))
        .await;
    let failed = &failed[0];
    assert!(failed.attempts >= 2, "{failed:?}");
    assert!(failed.last_error.contains("no answer within"), "{failed:?}");
    assert!(failed.last_error.contains("maximum age"), "{failed:?}");
    let listed = app.deliveries("", pb::DeliveryState::Failed).await;
    assert_eq!(listed.len(), 1);

    receiver.set_script(|_, _| Answer::Status(200));
    let arrived = receiver.seen().len();
    let queued = app
        .retry_delivery(&app.admin, &failed.id)
        .await
        .expect("retry");
    assert_eq!(queued.state, pb::DeliveryState::Pending as i32);
    let done = app
        .deliveries_when(&approval.id, all_in(pb::DeliveryState::Delivered))
        .await;
    assert_eq!(done[0].id, failed.id);
    let got = receiver.wait_for(arrived + 1).await;
    assert_eq!(got.last().expect("one more").id, failed.id);
    // Only a failed delivery can be retried.
    assert_status(
        app.retry_delivery(&app.admin, &failed.id).await,
        Code::FailedPrecondition,
        "delivered",
    );
}

#[tokio::test]
async fn a_slow_receiver_delays_neither_decide_nor_another_channel() {
    // The slow receiver holds every request until the test lets it go.
    let slow = Receiver::start(|_, _| Answer::Held).await;
    let fast = Receiver::accepting().await;
    let app = spawn_app().await;
    app.connect_sample().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(false))
        .await;
    app.sample_people().await;
    app.set_channel(&app.admin, webhook("slow", &slow.url, SECRET))
        .await
        .expect("slow channel");
    app.set_channel(&app.admin, webhook("fast", &fast.url, SECRET))
        .await
        .expect("fast channel");
    let n = 12;
    for i in 0..n {
        let args = format!(r#"{{"n":{i}}}"#);
        let answer = app
            .decide_ok(ask("reset_password", &args, &format!("r{i}")))
            .await;
        assert_eq!(verdict(&answer).0, Verdict::PendingApproval);
    }
    // Every Decide answered and the fast channel got every event while the slow one
    // holds its first requests.
    fast.wait_for(n).await;
    slow.wait_for(1).await;
    assert!(slow.in_flight() >= 1);
    assert!(
        slow.in_flight() <= app.config.delivery_concurrency,
        "at most delivery_concurrency attempts in flight to one channel"
    );
    slow.open_gate();
    slow.wait_for(n).await;
    assert_eq!(slow.overlaps(), 0);
}

#[tokio::test]
async fn bad_channel_input_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let good = webhook("ops", "https://hooks.example.com/toolgate", SECRET);
    let cases: Vec<(pb::NotificationChannel, &str)> = vec![
        (
            pb::NotificationChannel {
                kind: 99,
                ..good.clone()
            },
            "channel.kind",
        ),
        (
            pb::NotificationChannel {
                kind: pb::ChannelKind::Unspecified as i32,
                ..good.clone()
            },
            "channel.kind",
        ),
        (
            pb::NotificationChannel {
                secret: String::new(),
                ..good.clone()
            },
            "channel.secret",
        ),
        (
            pb::NotificationChannel {
                secret: "whsec_not base64".into(),
                ..good.clone()
            },
            "channel.secret",
        ),
        (
            pb::NotificationChannel {
                secret: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                ..good.clone()
            },
            "channel.secret",
        ),
        (
            pb::NotificationChannel {
                url: "http://169.254.169.254/latest/meta-data/".into(),
                ..good.clone()
            },
            "channel.url",
        ),
        (
            pb::NotificationChannel {
                url: "http://[fe80::1]/".into(),
                ..good.clone()
            },
            "channel.url",
        ),
        (
            pb::NotificationChannel {
                url: "ftp://example.com/".into(),
                ..good.clone()
            },
            "channel.url",
        ),
        (
            pb::NotificationChannel {
                id: String::new(),
                ..good.clone()
            },
            "channel.id",
        ),
    ];
    for (channel, field) in cases {
        let refused = app.set_channel(&app.admin, channel.clone()).await;
        assert_status(refused, Code::InvalidArgument, field);
    }
    assert_status(
        app.client
            .clone()
            .set_notification_channel(with_key(
                &app.admin,
                pb::SetNotificationChannelRequest { channel: None },
            ))
            .await,
        Code::InvalidArgument,
        "channel",
    );
    // Only admins manage channels and deliveries.
    for key in [&app.agent, &app.approver] {
        assert_status(
            app.set_channel(key, good.clone()).await,
            Code::PermissionDenied,
            "",
        );
        let list = app
            .client
            .clone()
            .list_notification_channels(with_key(key, pb::ListNotificationChannelsRequest {}))
            .await;
        assert_status(list, Code::PermissionDenied, "");
        let deliveries = app
            .client
            .clone()
            .list_deliveries(with_key(key, pb::ListDeliveriesRequest::default()))
            .await;
        assert_status(deliveries, Code::PermissionDenied, "");
        assert_status(
            app.retry_delivery(key, "dlv_1").await,
            Code::PermissionDenied,
            "",
        );
    }
    let listed = |key: String| {
        let mut client = app.client.clone();
        async move {
            client
                .list_notification_channels(with_key(&key, pb::ListNotificationChannelsRequest {}))
                .await
                .expect("list")
                .into_inner()
                .channels
        }
    };
    assert!(
        listed(app.admin.clone()).await.is_empty(),
        "nothing was stored"
    );

    // A good one is stored, and a replace without a secret keeps the stored secret.
    app.set_channel(&app.admin, good.clone())
        .await
        .expect("set");
    let replaced = app
        .set_channel(
            &app.admin,
            pb::NotificationChannel {
                secret: String::new(),
                enabled: false,
                ..good.clone()
            },
        )
        .await
        .expect("replace without the secret");
    assert!(!replaced.enabled);
    let channels = listed(app.admin.clone()).await;
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].secret, "");
    assert_eq!(channels[0].url, good.url);

    // Another tenant sees none of it.
    let other = app.mint("globex", Role::Admin).await;
    assert!(listed(other.clone()).await.is_empty());
    let delete = |key: String, id: &str| {
        let mut client = app.client.clone();
        let id = id.to_owned();
        async move {
            client
                .delete_notification_channel(with_key(
                    &key,
                    pb::DeleteNotificationChannelRequest { channel_id: id },
                ))
                .await
        }
    };
    assert_status(
        delete(other.clone(), "ops").await,
        Code::NotFound,
        "channel_id",
    );
    assert_status(
        app.retry_delivery(&other, "dlv_nope").await,
        Code::NotFound,
        "delivery_id",
    );
    assert_eq!(listed(app.admin.clone()).await.len(), 1);
    delete(app.admin.clone(), "ops").await.expect("delete");
    assert!(listed(app.admin.clone()).await.is_empty());
    assert_status(
        delete(app.admin.clone(), "ops").await,
        Code::NotFound,
        "channel_id",
    );
}

#[tokio::test]
async fn another_tenants_deliveries_are_not_seen_or_retried() {
    let receiver = Receiver::start(|_, _| Answer::Status(500)).await;
    let app = with_channel(&receiver, |c| {
        c.delivery_max_age = Duration::from_millis(300)
    })
    .await;
    let approval = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .expect("approval");
    let failed = app
        .deliveries_when(&approval.id, all_in(pb::DeliveryState::Failed))
        .await;
    let other = app.mint("globex", Role::Admin).await;
    assert_status(
        app.retry_delivery(&other, &failed[0].id).await,
        Code::NotFound,
        "delivery_id",
    );
    let theirs = app
        .client
        .clone()
        .list_deliveries(with_key(&other, pb::ListDeliveriesRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(theirs.deliveries.is_empty());
    assert_eq!(
        app.deliveries(&approval.id, pb::DeliveryState::Failed)
            .await[0]
            .state,
        pb::DeliveryState::Failed as i32,
        "unchanged"
    );
}

#[tokio::test]
async fn a_delivery_cut_off_by_sigkill_arrives_after_restart() {
    use toolgate::proto::v1::policy_service_client::PolicyServiceClient;
    // The first attempt is never answered: the server is killed while it is in flight,
    // after the approval (and its delivery) committed, before any delivery succeeded.
    let receiver = Receiver::start(|_, before| {
        if before == 0 {
            Answer::Hang
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let db = fresh_database().await;
    let store = toolgate::store::open(&db.url, &Default::default())
        .await
        .expect("open");
    let admin = mint(&store, "acme", Role::Admin).await;
    let agent = mint(&store, "acme", Role::Agent).await;
    drop(store);
    // A short timeout, so the dead server's lease on the attempt runs out soon.
    let flags = ["--delivery-timeout", "1s"];
    let mut first = Binary::serve_with(&db.url, &flags).await;
    let mut client = PolicyServiceClient::connect(format!("http://{}", first.addr))
        .await
        .expect("connect");
    let tool = pb::ToolDefinition {
        name: "reset_password".into(),
        description: "Reset a password".into(),
        input_schema_json: r#"{"type":"object"}"#.into(),
        annotations: None,
    };
    client
        .connect_integration(with_key(
            &admin,
            pb::ConnectIntegrationRequest {
                integration_id: "entra".into(),
                kind: "entra_id".into(),
                display_name: "Entra ID".into(),
                tools: vec![tool],
                comment: String::new(),
            },
        ))
        .await
        .expect("connect integration");
    client
        .set_notification_channel(with_key(
            &admin,
            pb::SetNotificationChannelRequest {
                channel: Some(webhook("ops", &receiver.url, SECRET)),
            },
        ))
        .await
        .expect("channel");
    let asked = client
        .decide(with_key(&agent, ask("reset_password", "{}", "r1")))
        .await
        .expect("decide")
        .into_inner();
    assert_eq!(verdict(&asked).0, Verdict::PendingApproval);
    let approval = asked.approval.expect("approval");
    let in_flight = receiver.wait_for(1).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");

    let second = Binary::serve_with(&db.url, &flags).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(
        got[1].id, in_flight[0].id,
        "the same delivery, after the restart"
    );
    assert!(got[1].verifies_with(SECRET));
    let mut client = PolicyServiceClient::connect(format!("http://{}", second.addr))
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = client
            .list_deliveries(with_key(
                &admin,
                pb::ListDeliveriesRequest {
                    approval_id: approval.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner()
            .deliveries;
        if listed.len() == 1 && listed[0].state == pb::DeliveryState::Delivered as i32 {
            assert!(listed[0].attempts >= 2, "{listed:?}");
            break;
        }
        // The receiver has the retry (awaited above); the outcome is written just after
        // it answers, and only ListDeliveries shows it.
        assert!(tokio::time::Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn asking_again_for_the_same_call_returns_the_pending_approval_and_sends_nothing_new() {
    let receiver = Receiver::accepting().await;
    let app = with_channel(&receiver, |_| {}).await;
    let args = r#"{"user":"bob@example.com"}"#;
    let first = app.decide_ok(ask("reset_password", args, "r1")).await;
    let first = first.approval.expect("approval");
    // A new request id for the same call: the same approval, no new request to anyone.
    let again = app.decide_ok(ask("reset_password", args, "r2")).await;
    assert_eq!(
        verdict(&again),
        (Verdict::PendingApproval, DecisionCode::ApprovalPending)
    );
    assert_eq!(again.approval.expect("approval").id, first.id);
    assert!(again.reason.contains("r1"), "{}", again.reason);
    // Other arguments are another call.
    let other = app
        .decide_ok(ask("reset_password", r#"{"user":"eve@example.com"}"#, "r3"))
        .await;
    let other = other.approval.expect("approval");
    assert_ne!(other.id, first.id);
    let got = receiver.wait_for(2).await;
    assert_eq!(
        got.iter()
            .filter(|r| r.json()["data"]["approval"]["id"] == first.id.as_str())
            .count(),
        1
    );
    // Once decided, the same call asks again.
    app.submit(&first.id, pb::ApproverRole::Technician, "tech", false)
        .await
        .expect("deny");
    let fresh = app.decide_ok(ask("reset_password", args, "r4")).await;
    assert_eq!(verdict(&fresh).1, DecisionCode::ApprovalRequired);
    assert_ne!(fresh.approval.expect("approval").id, first.id);
}

#[tokio::test]
async fn a_later_event_waits_while_an_earlier_one_is_retried() {
    // The request is refused twice; the approval is approved meanwhile.
    let receiver = Receiver::start(|r, before| {
        if r.event_type() == "approval.requested" && before < 2 {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let app = with_channel(&receiver, |c| {
        c.delivery_retry_initial = Duration::from_millis(100);
        c.delivery_retry_max = Duration::from_millis(200);
    })
    .await;
    let approval = app
        .decide_ok(ask("reset_password", "{}", "r1"))
        .await
        .approval
        .expect("approval");
    receiver.wait_for(1).await;
    app.submit(&approval.id, pb::ApproverRole::Technician, "tech", true)
        .await
        .expect("approve");
    let got = receiver.wait_for(4).await;
    let types: Vec<String> = got.iter().map(|r| r.event_type()).collect();
    assert_eq!(
        types,
        [
            "approval.requested",
            "approval.requested",
            "approval.requested",
            "approval.approved"
        ],
        "the approval's second event is sent only once its first was delivered"
    );
}

#[tokio::test]
async fn beyond_max_pending_approvals_a_new_request_is_refused_and_nothing_is_sent() {
    let receiver = Receiver::accepting().await;
    let app = with_channel(&receiver, |c| c.max_pending_approvals = 2).await;
    let ask_n = |n: u32| {
        ask(
            "reset_password",
            &format!(r#"{{"n":{n}}}"#),
            &format!("r{n}"),
        )
    };
    let first = app.decide_ok(ask_n(1)).await.approval.expect("approval");
    app.decide_ok(ask_n(2)).await;
    assert_status(
        app.decide(&app.agent, ask_n(3)).await,
        Code::ResourceExhausted,
        "max_pending_approvals",
    );
    // A retry of a request that has its approval still gets it.
    let again = app.decide_ok(ask_n(1)).await;
    assert_eq!(again.approval.expect("approval").id, first.id);
    // Once one is decided, there is room again.
    app.submit(&first.id, pb::ApproverRole::Technician, "tech", false)
        .await
        .expect("deny");
    let third = app.decide_ok(ask_n(3)).await;
    assert_eq!(verdict(&third).1, DecisionCode::ApprovalRequired);
    // Two requests and a denial were sent; nothing for the refused ask.
    let got = receiver.wait_for(4).await;
    let requested = got
        .iter()
        .filter(|r| r.event_type() == "approval.requested")
        .count();
    assert_eq!(requested, 3);
}
