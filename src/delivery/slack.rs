//! Approve from Slack, the parts that are Slack's protocol: the message toolgate posts for
//! an approval (`chat.postMessage`, later `chat.update`), the Web API call, Slack's request
//! signature (`v0`), and the click Slack sends back (`block_actions`).
//!
//! What a click may do is not decided here: [`crate::app::slack`] maps the clicking Slack
//! user to the person of record and records the step through the same rules as
//! SubmitApproval.

use super::worker::{Failure, WorkerSettings, describe, retry_after};
use super::{Channel, Claimed};
use crate::app::App;
use crate::policy::{Approval, ApprovalState, ApproverRole};
use serde_json::{Value, json};
use std::time::Duration;

/// The Web API base a Slack channel uses when its `url` is empty.
pub const DEFAULT_API: &str = "https://slack.com/api";
/// How far a request's timestamp may be from now, either way: Slack's advice.
pub const MAX_SKEW_SECONDS: i64 = 300;
/// The buttons' `action_id`s.
pub const APPROVE: &str = "toolgate_approve";
pub const DENY: &str = "toolgate_deny";
/// Most characters of pretty-printed arguments shown (a section's text holds 3 000).
const ARGUMENTS_SHOWN: usize = 2_500;

/// A message a Slack channel posted for one role's request of an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackMessage {
    pub role: ApproverRole,
    /// The conversation Slack answered with (for a direct message, the DM's id).
    pub slack_channel: String,
    pub ts: String,
}

// ---------------------------------------------------------------------------------------
// Slack's request signature

/// `v0=` and the hex HMAC-SHA256 of `v0:<timestamp>:<body>`, keyed with the app's signing
/// secret: what Slack sends in `X-Slack-Signature`.
pub fn signature(signing_secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, signing_secret.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(format!("v0:{timestamp}:").as_bytes());
    context.update(body);
    format!("v0={}", hex::encode(context.sign().as_ref()))
}

/// Whether `header` is the signature of `body` at `timestamp` under `signing_secret`,
/// compared in constant time.
pub fn verify(signing_secret: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(given) = header.strip_prefix("v0=").and_then(|h| hex::decode(h).ok()) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, signing_secret.as_bytes());
    let mut message = format!("v0:{timestamp}:").into_bytes();
    message.extend_from_slice(body);
    ring::hmac::verify(&key, &message, &given).is_ok()
}

/// Whether `X-Slack-Request-Timestamp` is within five minutes of `now` (Unix seconds); what
/// is wrong with it otherwise.
pub fn check_timestamp(timestamp: &str, now: i64) -> Result<(), &'static str> {
    let at: i64 = timestamp
        .parse()
        .map_err(|_| "X-Slack-Request-Timestamp is not a Unix time")?;
    if now.abs_diff(at) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err("X-Slack-Request-Timestamp is more than 5 minutes from now (a replay?)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// What Slack sends back

/// A click on one of toolgate's buttons, as Slack reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// Who clicked (Slack's user id).
    pub slack_user_id: String,
    pub approval_id: String,
    pub role: ApproverRole,
    pub approve: bool,
    /// Where Slack takes an answer for the clicking user only.
    pub response_url: String,
    /// The message the button is on: its conversation and ts (`container`).
    pub message_channel: String,
    pub message_ts: String,
}

/// The click in an interaction request's body (`payload=<JSON>`, form-encoded), or what
/// is wrong with it.
pub fn parse_click(body: &[u8]) -> Result<Click, String> {
    let payload = url::form_urlencoded::parse(body)
        .find(|(name, _)| name == "payload")
        .map(|(_, value)| value.into_owned())
        .ok_or("the body has no payload field")?;
    let payload: Value =
        serde_json::from_str(&payload).map_err(|_| "the payload is not JSON".to_owned())?;
    let kind = payload["type"].as_str().unwrap_or_default();
    if kind != "block_actions" {
        return Err(format!(
            "interactions of type {kind:?} are not toolgate's; only its buttons are"
        ));
    }
    let action = &payload["actions"][0];
    let approve = match action["action_id"].as_str().unwrap_or_default() {
        APPROVE => true,
        DENY => false,
        other => return Err(format!("action {other:?} is not one of toolgate's buttons")),
    };
    let value = action["value"].as_str().unwrap_or_default();
    let (approval_id, role) = value
        .split_once('|')
        .ok_or("the button's value names no approval")?;
    let role = role
        .parse::<ApproverRole>()
        .map_err(|_| format!("the button's value names no role: {role:?}"))?;
    let slack_user_id = payload["user"]["id"].as_str().unwrap_or_default();
    if slack_user_id.is_empty() {
        return Err("the payload names no user".into());
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(Click {
        slack_user_id: slack_user_id.to_owned(),
        approval_id: approval_id.to_owned(),
        role,
        approve,
        response_url: text(&payload["response_url"]),
        message_channel: text(&payload["container"]["channel_id"]),
        message_ts: text(&payload["container"]["message_ts"]),
    })
}

// ---------------------------------------------------------------------------------------
// What toolgate posts

/// Slack's mrkdwn reads `&`, `<` and `>` as markup: text from elsewhere (tool names,
/// arguments, comments) is escaped so it cannot mention `@channel` or forge a link.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The arguments, pretty-printed and cut to what a message can hold; and whether they
/// were cut.
fn arguments_shown(arguments_json: &str) -> (String, bool) {
    let pretty = serde_json::from_str::<Value>(arguments_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| arguments_json.to_owned());
    // Escaped first, then cut: escaping grows the text, and Slack refuses a section of more
    // than 3 000 characters. A backtick in the arguments is kept, but set apart by
    // zero-width spaces: three in a row (or one beside the fence) would end the code block
    // and let the rest be read as formatting.
    let pretty = escape(&pretty).replace('`', "\u{200b}`\u{200b}");
    match pretty.char_indices().nth(ARGUMENTS_SHOWN) {
        Some((end, _)) => (pretty[..end].to_owned(), true),
        None => (pretty, false),
    }
}

fn role_name(role: ApproverRole) -> &'static str {
    match role {
        ApproverRole::Technician => "technician",
        ApproverRole::Manager => "manager",
    }
}

/// Who decided what so far, and what the approval is now.
fn outcome_lines(approval: &Approval) -> Vec<String> {
    let mut lines: Vec<String> = approval
        .steps
        .iter()
        .map(|s| {
            let verb = if s.approved { "Approved" } else { "Denied" };
            let comment = if s.comment.is_empty() {
                String::new()
            } else {
                // Cut: a comment may be long, and the section holds 3 000 characters.
                let comment: String = s.comment.chars().take(200).collect();
                format!(": \u{201c}{}\u{201d}", escape(&comment))
            };
            format!(
                "{verb} by `{}` as {}{comment}",
                escape(&s.approver_id),
                role_name(s.role)
            )
        })
        .collect();
    let waiting: Vec<&str> = approval
        .required_roles
        .iter()
        .filter(|r| !approval.steps.iter().any(|s| s.role == **r))
        .map(|r| role_name(*r))
        .collect();
    lines.push(match approval.state {
        ApprovalState::Pending => format!("*Waiting for:* {}", waiting.join(" and ")),
        ApprovalState::Approved => "*Approved.* The agent may now run this call once.".into(),
        ApprovalState::Denied => "*Denied.* The agent may not run this call.".into(),
        ApprovalState::Expired => "*Expired* before it was decided.".into(),
        ApprovalState::Consumed => format!(
            "*Approved and used* by the agent (request `{}`).",
            escape(approval.consumed_by_request.as_deref().unwrap_or_default())
        ),
        ApprovalState::Cancelled => "*Withdrawn* by the agent that asked.".into(),
    });
    lines
}

/// The message for `role`'s request of `approval` as it is now: what is asked, the
/// arguments, what happened so far, and Approve / Deny buttons while this role's decision
/// is still wanted. Returns the `text` (notifications) and the `blocks`.
pub fn message(approval: &Approval, role: ApproverRole) -> Value {
    let role = role_name(role);
    let expires = approval.expires_at.0 / 1000;
    let expires_fallback = super::webhook::rfc3339(approval.expires_at);
    let text = format!(
        "Approval needed ({role}): {} on {} for {}",
        escape(&approval.tool_name),
        escape(&approval.integration_id),
        escape(&approval.requester_id)
    );
    let (arguments, cut) = arguments_shown(&approval.arguments_json);
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!(
            "*Approval needed* \u{b7} {role}\n*Tool:* `{}` (integration `{}`)\n\
             *Requester:* `{}`\n*Expires:* <!date^{expires}^{{date_short_pretty}} {{time}}|{expires_fallback}>",
            escape(&approval.tool_name),
            escape(&approval.integration_id),
            escape(&approval.requester_id),
        )}}),
        json!({"type": "section", "text": {"type": "mrkdwn",
            "text": format!("*Arguments*\n```{arguments}```")}}),
    ];
    if cut {
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "The arguments are cut to {ARGUMENTS_SHOWN} characters here; toolgate holds \
                 them whole (GetApproval `{}`).",
                escape(&approval.id)
            )}]}),
        );
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
        "text": outcome_lines(approval).join("\n")}}));
    let wanted = approval.state == ApprovalState::Pending
        && !approval.steps.iter().any(|s| role_name(s.role) == role);
    if wanted {
        let value = format!("{}|{role}", approval.id);
        blocks.push(
            json!({"type": "actions", "block_id": "toolgate_decision", "elements": [
                {"type": "button", "action_id": APPROVE, "style": "primary", "value": value,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": DENY, "style": "danger", "value": value,
                 "text": {"type": "plain_text", "text": "Deny"}},
            ]}),
        );
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
        "text": format!("toolgate approval `{}`", escape(&approval.id))}]}));
    json!({"text": text, "blocks": blocks})
}

/// The message for an answer to the clicking user only (`response_url`).
pub fn ephemeral(text: &str) -> Value {
    json!({"response_type": "ephemeral", "replace_original": false, "text": text})
}

/// Calls Web API `method` (`chat.postMessage`, `chat.update`) with the bot `token`; Slack's
/// answer when it says `ok`. A `429` is retried after its `Retry-After`; an `ok: false`
/// answer is a failure naming Slack's `error`.
pub(super) async fn call(
    client: &reqwest::Client,
    base: &url::Url,
    token: &str,
    method: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, Failure> {
    let url = format!("{}/{method}", base.as_str().trim_end_matches('/'));
    let answer = client
        .post(url)
        .bearer_auth(token)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| Failure::retry(describe(&e, timeout)))?;
    let status = answer.status();
    if !status.is_success() {
        let after = answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        return Err(Failure::Retry {
            error: format!("Slack answered {method} with HTTP {}", status.as_u16()),
            after,
        });
    }
    let not_json = || Failure::retry(format!("Slack's answer to {method} was not JSON"));
    let answer = answer.bytes().await.map_err(|_| not_json())?;
    let answer: Value = serde_json::from_slice(&answer).map_err(|_| not_json())?;
    if answer["ok"].as_bool() != Some(true) {
        let error = answer["error"].as_str().unwrap_or("no error given");
        return Err(Failure::retry(format!(
            "Slack answered {method} with ok: false, error {error:?}"
        )));
    }
    Ok(answer)
}

// ---------------------------------------------------------------------------------------
// Sending an event to a Slack channel

/// One event to a Slack channel: an `approval.requested` posts the role's request (the
/// technician's to the channel's `slack_channel`, the manager's as a direct message to the
/// manager's `slack_user_id`) and records where it went; any later event updates every
/// message posted for the approval on this channel to show it as the event left it.
pub(super) async fn send(
    app: &App,
    settings: &WorkerSettings,
    client: &reqwest::Client,
    c: &Claimed,
    channel: &Channel,
    approval: &Approval,
) -> Result<(), Failure> {
    let d = &c.delivery;
    let base = if channel.url.is_empty() {
        DEFAULT_API
    } else {
        &channel.url
    };
    let base = super::target::check_url("url", base, settings.public_only)
        .map_err(|e| Failure::Final(format!("the channel's {e}")))?;
    let token = channel.secret.expose();
    let call = |method: &'static str, body: Value| {
        let base = base.clone();
        async move { self::call(client, &base, token, method, &body, settings.timeout).await }
    };
    if d.event_type == "approval.requested" {
        let role = d.audience.role.parse::<ApproverRole>().map_err(|_| {
            Failure::Final(format!("the event names no role: {:?}", d.audience.role))
        })?;
        let to = match role {
            ApproverRole::Technician => channel.slack_channel.clone(),
            ApproverRole::Manager if d.audience.slack_user_id.is_empty() => {
                return Err(Failure::Final(format!(
                    "the manager {:?} has no slack_user_id in the directory; set it with                      UpsertPeople, then RetryDelivery",
                    d.audience.person_id
                )));
            }
            ApproverRole::Manager => d.audience.slack_user_id.clone(),
        };
        let mut body = message(approval, role);
        body["channel"] = to.into();
        let posted = call("chat.postMessage", body).await?;
        let (Some(conversation), Some(ts)) = (posted["channel"].as_str(), posted["ts"].as_str())
        else {
            return Err(Failure::retry(
                "Slack's answer to chat.postMessage named no channel and ts",
            ));
        };
        let posted = SlackMessage {
            role,
            slack_channel: conversation.to_owned(),
            ts: ts.to_owned(),
        };
        // Not recorded, the attempt is retried and posts again: at least once, never lost.
        app.store
            .record_slack_message(&c.tenant, &d.approval_id, &d.channel_id, &posted)
            .await
            .map_err(|e| Failure::retry(format!("could not record the posted message: {e}")))?;
        return Ok(());
    }
    let posted = app
        .store
        .slack_messages(&c.tenant, &d.approval_id, &d.channel_id)
        .await
        .map_err(|e| Failure::retry(format!("could not read the posted messages: {e}")))?;
    // chat.update sets a message to what is given: updating one again is harmless, so a
    // failure retries them all.
    for m in posted {
        let mut body = message(approval, m.role);
        body["channel"] = m.slack_channel.into();
        body["ts"] = m.ts.into();
        call("chat.update", body).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ApprovalStep, UnixMillis};

    /// Slack's worked example ("Verifying requests from Slack", docs.slack.dev): the
    /// signing secret, timestamp, body and signature it publishes.
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXPECTED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn signs_and_verifies_slacks_published_example() {
        assert_eq!(signature(SECRET, TIMESTAMP, BODY), EXPECTED);
        assert!(verify(SECRET, TIMESTAMP, BODY, EXPECTED));
    }

    #[test]
    fn a_tampered_body_a_wrong_secret_or_a_bad_header_does_not_verify() {
        let mut tampered = BODY.to_vec();
        tampered.extend_from_slice(b"&text=approve");
        assert!(!verify(SECRET, TIMESTAMP, &tampered, EXPECTED));
        assert!(!verify(
            "8f742231b10e8888abcd99yyyzzz85a6",
            TIMESTAMP,
            BODY,
            EXPECTED
        ));
        assert!(!verify(SECRET, "1531420619", BODY, EXPECTED));
        for header in [
            "",
            "v0=",
            "v1=a2114d57",
            &EXPECTED[3..],
            "v0=zz",
            &EXPECTED.to_uppercase(),
        ] {
            assert!(!verify(SECRET, TIMESTAMP, BODY, header), "{header}");
        }
    }

    #[test]
    fn timestamps_older_or_newer_than_five_minutes_are_refused() {
        let at = 1_531_420_618;
        assert!(check_timestamp(TIMESTAMP, at).is_ok());
        assert!(check_timestamp(TIMESTAMP, at + 300).is_ok());
        assert!(check_timestamp(TIMESTAMP, at + 301).is_err());
        assert!(check_timestamp(TIMESTAMP, at - 301).is_err());
        assert!(check_timestamp("", at).is_err());
        assert!(check_timestamp("soon", at).is_err());
    }

    fn form(payload: &Value) -> Vec<u8> {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
            .into_bytes()
    }

    #[test]
    fn a_click_on_our_buttons_is_read_and_anything_else_refused() {
        let click = json!({"type": "block_actions", "user": {"id": "U1TECH"},
            "response_url": "https://hooks.slack.com/actions/T1/1/x",
            "container": {"channel_id": "C0OPS", "message_ts": "1764900000.000001"},
            "actions": [{"action_id": APPROVE, "value": "apr_1|technician"}]});
        assert_eq!(
            parse_click(&form(&click)),
            Ok(Click {
                slack_user_id: "U1TECH".into(),
                approval_id: "apr_1".into(),
                role: ApproverRole::Technician,
                approve: true,
                response_url: "https://hooks.slack.com/actions/T1/1/x".into(),
                message_channel: "C0OPS".into(),
                message_ts: "1764900000.000001".into(),
            })
        );
        let mut deny = click.clone();
        deny["actions"][0] = json!({"action_id": DENY, "value": "apr_1|manager"});
        let denied = parse_click(&form(&deny)).expect("a deny click");
        assert!(!denied.approve);
        assert_eq!(denied.role, ApproverRole::Manager);

        let mut bad = Vec::new();
        bad.push(b"payload=%7Bnot json".to_vec());
        bad.push(b"user=U1".to_vec());
        for (field, value) in [
            ("type", json!("view_submission")),
            (
                "actions",
                json!([{"action_id": "other", "value": "apr_1|technician"}]),
            ),
            ("actions", json!([{"action_id": APPROVE, "value": "apr_1"}])),
            (
                "actions",
                json!([{"action_id": APPROVE, "value": "apr_1|admin"}]),
            ),
            ("actions", json!([])),
            ("user", json!({})),
        ] {
            let mut p = click.clone();
            p[field] = value;
            bad.push(form(&p));
        }
        for body in bad {
            assert!(
                parse_click(&body).is_err(),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    fn approval(state: ApprovalState, arguments_json: &str) -> Approval {
        Approval {
            id: "apr_1".into(),
            state,
            integration_id: "azure_ad".into(),
            tool_name: "reset_password".into(),
            arguments_json: arguments_json.into(),
            arguments_sha256: String::new(),
            requester_id: "alice".into(),
            request_id: "r1".into(),
            required_roles: vec![ApproverRole::Technician, ApproverRole::Manager],
            steps: vec![],
            created_at: UnixMillis(1_796_378_400_000),
            expires_at: UnixMillis(1_796_464_800_000),
            created_by_key: "key_1".into(),
            principal: "key:key_1".into(),
            consumed_by_request: None,
            consumed_at: None,
        }
    }

    fn buttons(message: &Value) -> Vec<String> {
        message["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().unwrap().clone())
            .map(|e| {
                format!(
                    "{}={}",
                    e["action_id"].as_str().unwrap(),
                    e["value"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn all_text(message: &Value) -> String {
        message.to_string()
    }

    #[test]
    fn a_request_shows_the_call_and_buttons_for_its_role_until_that_role_decided() {
        let mut a = approval(ApprovalState::Pending, r#"{"user":"bob@example.com"}"#);
        let m = message(&a, ApproverRole::Technician);
        assert_eq!(
            buttons(&m),
            [
                "toolgate_approve=apr_1|technician",
                "toolgate_deny=apr_1|technician"
            ]
        );
        let text = all_text(&m);
        for part in [
            "reset_password",
            "azure_ad",
            "alice",
            "bob@example.com",
            "<!date^1796464800^",
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
        a.steps.push(ApprovalStep {
            role: ApproverRole::Technician,
            approver_id: "tech".into(),
            approved: true,
            comment: String::new(),
            decided_at: UnixMillis(1_796_378_500_000),
        });
        assert!(buttons(&message(&a, ApproverRole::Technician)).is_empty());
        assert_eq!(buttons(&message(&a, ApproverRole::Manager)).len(), 2);
        let text = all_text(&message(&a, ApproverRole::Manager));
        assert!(text.contains("Approved by `tech` as technician"), "{text}");
        assert!(text.contains("Waiting for:* manager"), "{text}");
        a.state = ApprovalState::Approved;
        assert!(buttons(&message(&a, ApproverRole::Manager)).is_empty());
        a.state = ApprovalState::Consumed;
        a.consumed_by_request = Some("r1".into());
        assert!(all_text(&message(&a, ApproverRole::Manager)).contains("used* by the agent"));
    }

    #[test]
    fn backticks_in_the_arguments_cannot_end_the_code_block() {
        let args = r#"{"cmd":"```\n*Approved by `boss`* <!here>\n```","x":"`"}"#;
        let m = message(
            &approval(ApprovalState::Pending, args),
            ApproverRole::Technician,
        );
        let text = m["blocks"][1]["text"]["text"].as_str().unwrap();
        assert_eq!(text.matches('`').count(), 6 + 3 + 3 + 2 + 1, "{text}");
        assert_eq!(text.matches("``").count(), 2, "only the fences: {text}");
        assert!(text.starts_with("*Arguments*\n```{"), "{text}");
        assert!(text.ends_with("```"), "{text}");
        assert!(text.contains("&lt;!here&gt;"), "{text}");
    }

    #[test]
    fn long_arguments_are_cut_with_a_note_and_markup_is_escaped() {
        let long = format!(
            r#"{{"note":"{}","x":"<!channel> & <http://evil|click>"}}"#,
            "<&>".repeat(2000)
        );
        let m = message(
            &approval(ApprovalState::Pending, &long),
            ApproverRole::Technician,
        );
        let text = all_text(&m);
        assert!(text.contains("cut to 2500 characters"), "{text}");
        let args = m["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(args.chars().count() < 3000, "{}", args.chars().count());
        let short = message(
            &approval(
                ApprovalState::Pending,
                r#"{"x":"<!channel> & <http://evil|click>"}"#,
            ),
            ApproverRole::Technician,
        );
        let args = short["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(
            args.contains("&lt;!channel&gt; &amp; &lt;http://evil|click&gt;"),
            "{args}"
        );
        assert!(!all_text(&short).contains("cut to"));
    }
}
