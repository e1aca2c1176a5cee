//! Approve from Slack (issue "Approve from Slack"): the request posted to the channel, the
//! manager's as a direct message, a signed click that records the step through the same
//! rules as SubmitApproval, and the messages updated with the outcome. Slack is a real
//! HTTP stand-in on 127.0.0.1 ([`crate::slack_api`]); toolgate is the real server.

use crate::helpers::*;
use crate::slack_api::*;
use std::time::Duration;
use tonic::Code;
use toolgate::config::Config;
use toolgate::delivery::slack::{APPROVE, DENY};
use toolgate::proto::v1 as pb;

fn slack_channel(api: &SlackApi) -> pb::NotificationChannel {
    pb::NotificationChannel {
        id: "slack".into(),
        kind: pb::ChannelKind::Slack as i32,
        url: api.base.clone(),
        secret: BOT_TOKEN.into(),
        enabled: true,
        slack_channel: "C0OPS".into(),
        slack_signing_secret: SIGNING_SECRET.into(),
    }
}

fn with_slack(mut p: pb::Person, slack_user_id: &str) -> pb::Person {
    p.slack_user_id = slack_user_id.into();
    p
}

/// The sample integration, `reset_password` needing a technician and the manager, people
/// with Slack ids (alice the requester, tech a technician, mgr alice's manager, tech2 a
/// technician who is nobody's manager, bob neither), and a Slack channel to `api`.
async fn with_slack_channel(api: &SlackApi, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let app = spawn_app_with(|c| {
        c.delivery_retry_initial = Duration::from_millis(50);
        adjust(c);
    })
    .await;
    app.connect_sample().await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(true))
        .await;
    app.people(vec![
        with_slack(person("alice", "mgr", false), "U0ALICE"),
        with_slack(person("tech", "", true), "U0TECH"),
        with_slack(person("tech2", "", true), "U0TECH2"),
        with_slack(person("mgr", "", false), "U0MGR"),
        with_slack(person("bob", "", false), "U0BOB"),
    ])
    .await;
    let stored = app
        .set_channel(&app.admin, slack_channel(api))
        .await
        .expect("set the Slack channel");
    assert_eq!(stored.secret, "", "the bot token is never returned");
    assert_eq!(
        stored.slack_signing_secret, "",
        "the signing secret is never returned"
    );
    app
}

impl TestApp {
    /// A click from `slack_user` on `button` (action id, value), signed now; the status,
    /// and what the clicking person is told (through response url `n`).
    async fn click(&self, api: &SlackApi, n: usize, slack_user: &str, button: &Button) -> String {
        // A person clicks once the message is there and toolgate has recorded posting it.
        let approval_id = button.1.split('|').next().unwrap_or_default().to_owned();
        self.deliveries_when(&approval_id, |ds| {
            ds.iter()
                .filter(|d| d.event_type == "approval.requested")
                .all(|d| d.state != pb::DeliveryState::Pending as i32)
        })
        .await;
        let body = click_body(
            slack_user,
            &button.0,
            &button.1,
            (&button.2, &button.3),
            &api.response_url(n),
        );
        let headers = signed(SIGNING_SECRET, now_seconds(), &body);
        let (status, said) = post_interaction(self.http_addr, Some(headers), body).await;
        assert_eq!(status, 200, "{said}");
        api.response(n).await
    }

    async fn approval(&self, id: &str) -> pb::Approval {
        self.client
            .clone()
            .get_approval(with_key(
                &self.approver,
                pb::GetApprovalRequest {
                    approval_id: id.into(),
                },
            ))
            .await
            .expect("get approval")
            .into_inner()
            .approval
            .expect("approval")
    }
}

/// A button: its action id and value, and the message it is on (conversation, ts).
type Button = (String, String, String, String);

fn button(m: &Posted, action: &str) -> Button {
    let (action, value) = m
        .buttons()
        .into_iter()
        .find(|(id, _)| id == action)
        .unwrap_or_else(|| panic!("no {action} button on {m:#?}"));
    (action, value, m.channel.clone(), m.ts.clone())
}

/// The technician's message and the manager's, once both are posted.
async fn both_requests(api: &SlackApi) -> (Posted, Posted) {
    let posted = api.messages_when(|m| m.len() >= 2).await;
    let tech = posted
        .iter()
        .find(|m| m.channel == "C0OPS")
        .expect("the channel's message");
    let mgr = posted
        .iter()
        .find(|m| m.channel == "D0MGR")
        .expect("the manager's DM");
    (tech.clone(), mgr.clone())
}

#[tokio::test]
async fn technician_and_manager_approve_from_slack_and_both_messages_show_the_outcome() {
    let api = SlackApi::normal().await;
    let app = with_slack_channel(&api, |_| {}).await;
    let args = r#"{"user":"bob@example.com","temporary":true}"#;
    let asked = app.decide_ok(ask("reset_password", args, "r1")).await;
    let approval = asked.approval.expect("approval");

    let (tech_msg, mgr_msg) = both_requests(&api).await;
    for (m, role) in [(&tech_msg, "technician"), (&mgr_msg, "manager")] {
        let value = format!("{}|{role}", approval.id);
        assert_eq!(
            m.buttons(),
            [
                (APPROVE.to_owned(), value.clone()),
                (DENY.to_owned(), value)
            ],
            "{m:#?}"
        );
        let text = m.text();
        for part in [
            "reset_password",
            "entra",
            "alice",
            "bob@example.com",
            &approval.id,
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
    }
    let posts: Vec<Call> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "chat.postMessage")
        .collect();
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert!(
        posts
            .iter()
            .all(|c| c.authorization == format!("Bearer {BOT_TOKEN}"))
    );
    assert!(
        posts.iter().any(|c| c.body["channel"] == "U0MGR"),
        "the manager's goes to their Slack id"
    );

    let said = app
        .click(&api, 1, "U0TECH", &button(&tech_msg, APPROVE))
        .await;
    assert!(
        said.starts_with("Recorded: you approved reset_password as technician"),
        "{said}"
    );
    let now = app.approval(&approval.id).await;
    assert_eq!(now.state, pb::ApprovalState::Pending as i32);
    assert_eq!(now.steps.len(), 1);
    assert_eq!(
        (now.steps[0].approver_id.as_str(), now.steps[0].role),
        ("tech", pb::ApproverRole::Technician as i32)
    );
    // The step is shown on both; the technician's buttons go, the manager's stay.
    let posted = api
        .messages_when(|m| m.iter().all(|m| m.updates >= 1))
        .await;
    for m in &posted {
        let wanted = if m.channel == "C0OPS" { 0 } else { 2 };
        assert_eq!(m.buttons().len(), wanted, "{m:#?}");
    }

    let said = app
        .click(&api, 2, "U0MGR", &button(&mgr_msg, APPROVE))
        .await;
    assert!(said.contains("It is approved"), "{said}");
    assert_eq!(
        app.approval(&approval.id).await.state,
        pb::ApprovalState::Approved as i32
    );
    let posted = api
        .messages_when(|m| m.iter().all(|m| m.text().contains("*Approved.*")))
        .await;
    for m in &posted {
        assert!(m.buttons().is_empty(), "{m:#?}");
        let text = m.text();
        assert!(text.contains("Approved by `tech` as technician"), "{text}");
        assert!(text.contains("Approved by `mgr` as manager"), "{text}");
    }

    let used = app
        .decide_ok(with_approval(
            ask("reset_password", args, "r1"),
            &approval.id,
        ))
        .await;
    assert_eq!(verdict(&used).0, Verdict::Allow);
    api.messages_when(|m| m.iter().all(|m| m.text().contains("used* by the agent")))
        .await;
    let deliveries = app
        .deliveries_when(&approval.id, |ds| {
            ds.len() == 5
                && ds
                    .iter()
                    .all(|d| d.state == pb::DeliveryState::Delivered as i32)
        })
        .await;
    assert!(
        deliveries.iter().all(|d| d.attempts == 1),
        "{deliveries:#?}"
    );
    assert_eq!(api.messages().len(), 2, "nothing posted twice");
}

#[tokio::test]
async fn a_deny_from_slack_denies_and_says_so_on_the_messages() {
    let api = SlackApi::normal().await;
    let app = with_slack_channel(&api, |_| {}).await;
    let approval = app
        .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, "r1"))
        .await
        .approval
        .expect("approval");
    let (tech_msg, _) = both_requests(&api).await;
    let said = app.click(&api, 1, "U0TECH", &button(&tech_msg, DENY)).await;
    assert!(said.starts_with("Recorded: you denied"), "{said}");
    let now = app.approval(&approval.id).await;
    assert_eq!(now.state, pb::ApprovalState::Denied as i32);
    let posted = api
        .messages_when(|m| m.iter().all(|m| m.text().contains("*Denied.*")))
        .await;
    assert!(posted.iter().all(|m| m.buttons().is_empty()));
}

#[tokio::test]
async fn refused_clicks_change_nothing_and_say_why() {
    let api = SlackApi::normal().await;
    let app = with_slack_channel(&api, |_| {}).await;
    let approval = app
        .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, "r1"))
        .await
        .approval
        .expect("approval");
    let (tech_msg, mgr_msg) = both_requests(&api).await;
    let (tech_button, mgr_button) = (button(&tech_msg, APPROVE), button(&mgr_msg, APPROVE));
    let before = app.approval(&approval.id).await;
    let counted = app.scrape().await;

    let mut n = 0;
    for (who, on, why) in [
        ("U0BOB", &tech_button, "is not a technician"),
        (
            "U0ALICE",
            &mgr_button,
            "nobody may approve their own request",
        ),
        (
            "U0ALICE",
            &tech_button,
            "nobody may approve their own request",
        ),
        (
            "U0TECH2",
            &mgr_button,
            "is not the requester's manager of record",
        ),
        ("U0NOBODY", &tech_button, "is not linked to anyone"),
        // A click whose button is not on the message toolgate posted for that role (what
        // someone holding the signing secret could forge).
        (
            "U0MGR",
            &(
                mgr_button.0.clone(),
                mgr_button.1.clone(),
                tech_button.2.clone(),
                tech_button.3.clone(),
            ),
            "not on a message toolgate posted",
        ),
    ] {
        n += 1;
        let said = app.click(&api, n, who, on).await;
        assert!(
            said.starts_with("Nothing was recorded:") && said.contains(why),
            "{who}: {said}"
        );
        assert_eq!(
            app.approval(&approval.id).await,
            before,
            "{who} changed the approval"
        );
    }

    // One person, both roles: the technician's step counts, their manager click does not.
    n += 1;
    assert!(
        app.click(&api, n, "U0TECH", &tech_button)
            .await
            .starts_with("Recorded")
    );
    let after_tech = app.approval(&approval.id).await;
    n += 1;
    let said = app.click(&api, n, "U0TECH", &mgr_button).await;
    assert!(said.contains("already decided in the other role"), "{said}");
    n += 1;
    let said = app.click(&api, n, "U0TECH2", &tech_button).await;
    assert!(
        said.contains("technician decision was already made"),
        "{said}"
    );
    assert_eq!(app.approval(&approval.id).await, after_tech);

    // Not from Slack: no headers, a stale or future timestamp (a replay), a wrong secret,
    // a tampered body. 401, nothing read, nothing told.
    let body = click_body(
        "U0MGR",
        APPROVE,
        &mgr_button.1,
        (&mgr_button.2, &mgr_button.3),
        &api.response_url(99),
    );
    // A minute past the window each way: a request that took a few seconds to send on a
    // loaded machine must still be outside it (the boundary itself is a unit test with a
    // fixed clock).
    let outside = toolgate::delivery::slack::MAX_SKEW_SECONDS + 60;
    let stale = signed(SIGNING_SECRET, now_seconds() - outside, &body);
    let future = signed(SIGNING_SECRET, now_seconds() + outside, &body);
    let wrong = signed("0000000000000000000000000000000000", now_seconds(), &body);
    let (ts, signature) = signed(SIGNING_SECRET, now_seconds(), &body);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b"&x=1");
    for (headers, body, why) in [
        (None, body.clone(), "are required"),
        (Some(stale), body.clone(), "5 minutes"),
        (Some(future), body.clone(), "5 minutes"),
        (Some(wrong), body.clone(), "does not verify"),
        (
            Some((ts.clone(), signature.clone())),
            tampered,
            "does not verify",
        ),
        (
            Some((ts.clone(), format!("v1={}", &signature[3..]))),
            body.clone(),
            "does not verify",
        ),
    ] {
        let (status, said) = post_interaction(app.http_addr, headers, body).await;
        assert_eq!(status, 401, "{said}");
        assert!(said.contains(why), "{said}");
    }
    assert_eq!(app.approval(&approval.id).await, after_tech);
    assert!(api.responses(99).is_empty());

    // Signed by Slack, but not one of toolgate's buttons: 400.
    let other = click_body(
        "U0MGR",
        "someone_else",
        &mgr_button.1,
        (&mgr_button.2, &mgr_button.3),
        &api.response_url(99),
    );
    let (status, _) = post_interaction(
        app.http_addr,
        Some(signed(SIGNING_SECRET, now_seconds(), &other)),
        other,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(app.approval(&approval.id).await, after_tech);

    let now = app.scrape().await;
    for (outcome, times) in [
        ("recorded", 1.0),
        ("refused", 8.0),
        ("unauthorized", 6.0),
        ("bad_request", 1.0),
    ] {
        let series = format!("toolgate_slack_interactions_total{{outcome=\"{outcome}\"}}");
        assert_eq!(now.delta(&counted, &series), times, "{series}");
    }
}

#[tokio::test]
async fn a_click_on_a_consumed_approval_is_refused() {
    let api = SlackApi::normal().await;
    let app = with_slack_channel(&api, |_| {}).await;
    // Only a technician: approved after one step, then used.
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(false))
        .await;
    let args = r#"{"user":"bob"}"#;
    let used = app
        .decide_ok(ask("reset_password", args, "r1"))
        .await
        .approval
        .expect("approval");
    let posted = api.messages_when(|m| m.len() == 1).await;
    let technician = button(&posted[0], APPROVE);
    assert!(
        app.click(&api, 1, "U0TECH", &technician)
            .await
            .starts_with("Recorded")
    );
    let allowed = app
        .decide_ok(with_approval(ask("reset_password", args, "r1"), &used.id))
        .await;
    assert_eq!(verdict(&allowed).0, Verdict::Allow);
    let consumed = app.approval(&used.id).await;
    let said = app.click(&api, 2, "U0TECH2", &technician).await;
    assert!(
        said.contains("consumed and takes no more decisions"),
        "{said}"
    );
    assert_eq!(app.approval(&used.id).await, consumed);
}

#[tokio::test]
async fn a_click_on_an_expired_approval_is_refused() {
    let api = SlackApi::normal().await;
    let app = with_slack_channel(&api, |c| {
        c.approval_ttl = Duration::from_millis(1000);
        c.expiry_sweep = Duration::from_millis(50);
    })
    .await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(false))
        .await;
    let late = app
        .decide_ok(ask("reset_password", r#"{"user":"carol"}"#, "r2"))
        .await
        .approval
        .expect("approval");
    let posted = api.messages_when(|m| m.len() == 1).await;
    let technician = button(&posted[0], APPROVE);
    // The expiry sweep marks it; the update tells Slack.
    let posted = api
        .messages_when(|m| m[0].text().contains("*Expired*"))
        .await;
    assert!(posted[0].buttons().is_empty());
    let expired = app.approval(&late.id).await;
    assert_eq!(expired.state, pb::ApprovalState::Expired as i32);
    let said = app.click(&api, 1, "U0TECH", &technician).await;
    assert!(said.contains("expired"), "{said}");
    assert_eq!(app.approval(&late.id).await, expired);
}

#[tokio::test]
async fn slack_answering_429_then_200_gets_the_message_once() {
    // The first chat.postMessage is rate limited; every call after it goes through.
    let api = SlackApi::start(|method, n| match (method, n) {
        ("chat.postMessage", 0) => Reply::RateLimited(1),
        _ => Reply::Normal,
    })
    .await;
    let app = with_slack_channel(&api, |_| {}).await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(false))
        .await;
    let approval = app
        .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, "r1"))
        .await
        .approval
        .expect("approval");
    let delivered = app
        .deliveries_when(&approval.id, |ds| {
            ds.len() == 1 && ds[0].state == pb::DeliveryState::Delivered as i32
        })
        .await;
    assert_eq!(delivered[0].attempts, 2, "{delivered:#?}");
    let posts: Vec<Call> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "chat.postMessage")
        .collect();
    assert_eq!(
        posts.iter().map(|c| c.status).collect::<Vec<_>>(),
        [429, 200]
    );
    assert_eq!(api.messages().len(), 1, "the message arrives once");
}

#[tokio::test]
async fn slack_errors_are_kept_and_a_manager_without_a_slack_id_fails_clearly() {
    let api = SlackApi::normal().await;
    let app = with_slack_channel(&api, |_| {}).await;
    // A conversation Slack does not know, and a manager with no Slack id.
    let mut channel = slack_channel(&api);
    channel.slack_channel = "C_MISSING".into();
    channel.secret.clear();
    channel.slack_signing_secret.clear();
    app.set_channel(&app.admin, channel)
        .await
        .expect("replace, keeping the secrets");
    app.people(vec![person("mgr", "", false)]).await;
    let approval = app
        .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, "r1"))
        .await
        .approval
        .expect("approval");
    let ds = app
        .deliveries_when(&approval.id, |ds| {
            ds.len() == 2
                && ds
                    .iter()
                    .any(|d| d.state == pb::DeliveryState::Failed as i32)
                && ds
                    .iter()
                    .any(|d| d.last_error.contains("channel_not_found"))
        })
        .await;
    let failed = ds
        .iter()
        .find(|d| d.state == pb::DeliveryState::Failed as i32)
        .unwrap();
    assert!(
        failed.last_error.contains("\"mgr\" has no slack_user_id"),
        "{failed:#?}"
    );
    let retried = ds
        .iter()
        .find(|d| d.last_error.contains("channel_not_found"))
        .unwrap();
    assert_eq!(retried.state, pb::DeliveryState::Pending as i32);
    assert!(api.messages().is_empty());
    // Kept, not lost: with the channel fixed, the request goes through.
    let mut fixed = slack_channel(&api);
    fixed.secret.clear();
    fixed.slack_signing_secret.clear();
    app.set_channel(&app.admin, fixed)
        .await
        .expect("fix the channel");
    let posted = api.messages_when(|m| m.len() == 1).await;
    assert_eq!(posted[0].channel, "C0OPS");
}

#[tokio::test]
async fn bad_slack_channel_input_is_refused_and_changes_nothing() {
    let api = SlackApi::normal().await;
    let app = spawn_app().await;
    let good = slack_channel(&api);
    let cases: Vec<(pb::NotificationChannel, &str)> = vec![
        (
            pb::NotificationChannel {
                slack_channel: String::new(),
                ..good.clone()
            },
            "channel.slack_channel",
        ),
        (
            pb::NotificationChannel {
                slack_channel: "C0 OPS".into(),
                ..good.clone()
            },
            "channel.slack_channel",
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
                secret: "xoxp-user-token-1234".into(),
                ..good.clone()
            },
            "channel.secret",
        ),
        (
            pb::NotificationChannel {
                secret: SIGNING_SECRET.into(),
                ..good.clone()
            },
            "channel.secret",
        ),
        (
            pb::NotificationChannel {
                slack_signing_secret: String::new(),
                ..good.clone()
            },
            "channel.slack_signing_secret",
        ),
        (
            pb::NotificationChannel {
                slack_signing_secret: "short".into(),
                ..good.clone()
            },
            "channel.slack_signing_secret",
        ),
        (
            pb::NotificationChannel {
                url: "http://169.254.169.254/api".into(),
                ..good.clone()
            },
            "channel.url",
        ),
    ];
    for (channel, field) in cases {
        let refused = app.set_channel(&app.admin, channel).await;
        match refused {
            Err(s) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
                assert!(s.message().contains(field), "{field}: {s:?}");
                assert!(
                    !s.message().contains("xoxp-user") && !s.message().contains(SIGNING_SECRET),
                    "{s:?}"
                );
            }
            Ok(c) => panic!("{field}: accepted {c:?}"),
        }
    }
    let listed = app
        .client
        .clone()
        .list_notification_channels(with_key(&app.admin, pb::ListNotificationChannelsRequest {}))
        .await
        .expect("list")
        .into_inner()
        .channels;
    assert!(listed.is_empty(), "{listed:?}");
    // The empty url is Slack's own API.
    let default_api = pb::NotificationChannel {
        url: String::new(),
        ..good
    };
    let stored = app
        .set_channel(&app.admin, default_api)
        .await
        .expect("Slack's own API");
    assert_eq!(stored.url, "");
    // The kept token would go wherever the new url points: a new url needs it again.
    let moved = pb::NotificationChannel {
        url: "http://127.0.0.1:9/api".into(),
        secret: String::new(),
        slack_signing_secret: String::new(),
        ..slack_channel(&api)
    };
    let refused = app
        .set_channel(&app.admin, moved)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("channel.secret"), "{refused:?}");
}

#[tokio::test]
async fn the_http_listener_takes_only_slack_interactions() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let get = client
        .get(format!("http://{}/slack/interactions", app.http_addr))
        .send()
        .await
        .expect("answer");
    assert_eq!(get.status().as_u16(), 405);
    let other = client
        .post(format!("http://{}/v1/anything", app.http_addr))
        .send()
        .await
        .expect("answer");
    assert_eq!(other.status().as_u16(), 404);
    // No Slack channel at all: nothing can verify.
    let body = click_body(
        "U0TECH",
        APPROVE,
        "apr_1|technician",
        ("C0OPS", "1764900000.000001"),
        "http://127.0.0.1:9/x",
    );
    let (status, said) = post_interaction(
        app.http_addr,
        Some(signed(SIGNING_SECRET, now_seconds(), &body)),
        body,
    )
    .await;
    assert_eq!(status, 401, "{said}");
    let huge = vec![b'a'; 300 * 1024];
    let (status, _) = post_interaction(
        app.http_addr,
        Some(signed(SIGNING_SECRET, now_seconds(), &huge)),
        huge,
    )
    .await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn a_signing_secret_shared_by_two_tenants_takes_no_click() {
    let api = SlackApi::normal().await;
    let app = with_slack_channel(&api, |_| {}).await;
    app.set_one("reset_password", Policy::ApprovalNeeded, Some(false))
        .await;
    let approval = app
        .decide_ok(ask("reset_password", r#"{"user":"bob"}"#, "r1"))
        .await
        .approval
        .expect("approval");
    let posted = api.messages_when(|m| m.len() == 1).await;
    // Another tenant's admin sets a channel with the same Slack app's secrets.
    let other = app.mint("globex", toolgate::policy::Role::Admin).await;
    app.set_channel(&other, slack_channel(&api))
        .await
        .expect("the other tenant's channel");
    let before = app.approval(&approval.id).await;
    let said = app
        .click(&api, 1, "U0TECH", &button(&posted[0], APPROVE))
        .await;
    assert!(said.contains("several tenants"), "{said}");
    assert_eq!(app.approval(&approval.id).await, before);
}
