//! Approval delivery: the channels an approval's events are sent to, the outbox's rows
//! (one [`Delivery`] per event and channel), and the worker that sends them.
//!
//! The outbox is filled by the database itself (a trigger on `approval_events`, see
//! `migrations/*/0007_deliveries.sql`), in the transaction of the approval change; this
//! module only reads it, sends, and records the outcome.
//!
//! - [`target`]: which URLs and addresses a channel may point at.
//! - [`webhook`]: the Standard Webhooks signature and the event body.
//! - [`slack`]: the Slack message, the Web API call, Slack's request signature.
//! - [`worker`]: claims due deliveries (a lease per attempt), sends, retries with backoff.

pub mod slack;
pub mod target;
pub mod webhook;
pub mod worker;

use crate::policy::UnixMillis;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The HTTP client deliveries (and answers to Slack) are sent with: every address it
/// connects to passes the channel address rules ([`target::GuardedResolver`]), each request
/// ends within `timeout`, and redirects are not followed (a redirect could lead anywhere;
/// a receiver answers where it was asked).
pub fn http_client(timeout: Duration, public_only: bool) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(target::GuardedResolver { public_only }))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("toolgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What kind of receiver a channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
    Slack,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A secret a channel keeps (a signing secret, a bot token): shown by `Debug` as
/// `<redacted>`, and never serialized or sent back.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for signing and for the store; never for a log or a response.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<empty>)")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

/// A tenant's notification channel, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    pub kind: ChannelKind,
    pub url: String,
    pub secret: Secret,
    pub enabled: bool,
    pub slack_channel: String,
    pub slack_signing_secret: Secret,
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who an `approval.requested` event is addressed to; empty fields for other events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// `technician` or `manager`.
    pub role: String,
    /// The requester's manager of record, for the manager's request.
    pub person_id: String,
    pub slack_user_id: String,
}

/// One event for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The `webhook-id`: the same on every attempt.
    pub id: String,
    pub channel_id: String,
    pub approval_id: String,
    /// The approval's version this event reports; `data.sequence` is `version + 1`.
    pub version: i64,
    pub event_type: String,
    pub audience: Audience,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: String,
    pub created_at: UnixMillis,
    /// When it was queued (or re-queued by RetryDelivery): the maximum age counts from here.
    pub queued_at: UnixMillis,
    pub next_attempt_at: UnixMillis,
    pub delivered_at: Option<UnixMillis>,
}

/// A delivery a worker claimed: the attempt is its own until the lease runs out.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub tenant: String,
    pub delivery: Delivery,
    /// Names this claim; the outcome is written only while the claim is still this one.
    pub lease: String,
}

/// How an attempt ended, as the worker writes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        at: UnixMillis,
    },
    /// Try again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: UnixMillis,
    },
    Failed {
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let channel = Channel {
            id: "ops".into(),
            kind: ChannelKind::Webhook,
            url: "https://example.com/hook".into(),
            secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            enabled: true,
            slack_channel: String::new(),
            slack_signing_secret: Secret::new("8f742231b10e8888abcd99yyyzzz85a5"),
        };
        let shown = format!("{channel:?}");
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
        assert!(!shown.contains("8f742231"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    /// Stored in `notification_channels.kind` and `deliveries.state`: never renamed.
    #[test]
    fn stored_names_are_unchanged() {
        assert_eq!(ChannelKind::Webhook.as_str(), "webhook");
        assert_eq!(ChannelKind::Slack.as_str(), "slack");
        assert_eq!(DeliveryState::Pending.as_str(), "pending");
        assert_eq!(DeliveryState::Delivered.as_str(), "delivered");
        assert_eq!(DeliveryState::Failed.as_str(), "failed");
    }
}
