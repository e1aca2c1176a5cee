//! Notification channels and their deliveries, as admins manage them: SetNotificationChannel,
//! ListNotificationChannels, DeleteNotificationChannel, ListDeliveries, RetryDelivery.
//! Sending is the delivery worker's ([`crate::delivery::worker`]).

use super::{App, AppError};
use crate::delivery::webhook::SigningKey;
use crate::delivery::{Channel, ChannelKind, Delivery, DeliveryState, target};
use crate::policy::names::{ApprovalId, FieldError, check_id, check_text};
use crate::policy::{Caller, UnixMillis};
use crate::store::{DeliveryQuery, Retried};

/// A page of ListDeliveries.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    /// Empty on the last page.
    pub next_page_token: String,
}

fn channel_not_found(id: &str) -> AppError {
    AppError::NotFound(format!("channel_id: no channel {id:?} in this tenant"))
}

impl App {
    /// Creates or replaces a channel. Secrets are write-only: an empty one on a replace
    /// keeps the stored secret. Answers the channel as stored (the transport blanks its
    /// secrets).
    pub async fn set_channel(
        &self,
        caller: &Caller,
        channel: Channel,
    ) -> Result<Channel, AppError> {
        check_id("channel.id", &channel.id)?;
        check_text("channel.slack_channel", &channel.slack_channel)?;
        // A Slack channel's `url` is the Web API base; empty is Slack's own.
        if !(channel.kind == ChannelKind::Slack && channel.url.is_empty()) {
            target::check_url(
                "channel.url",
                &channel.url,
                self.limits.delivery_public_only,
            )?;
        }
        let existing = self
            .store
            .list_channels(&caller.tenant)
            .await?
            .into_iter()
            .find(|c| c.id == channel.id && c.kind == channel.kind);
        // The stored secret goes where `url` points: a new URL needs the secret again, or an
        // admin could send a kept token to a host of their own.
        let kept = existing.filter(|e| e.url == channel.url);
        check_kind(&channel, kept.is_some())?;
        let stored = self.store.set_channel(&caller.tenant, &channel).await?;
        if stored.enabled
            && let Ok(mut tenants) = self.channel_tenants.write()
        {
            tenants.insert(caller.tenant.clone());
        }
        tracing::info!(
            tenant = %caller.tenant,
            key_id = %caller.key_id,
            channel = %stored.id,
            kind = stored.kind.as_str(),
            enabled = stored.enabled,
            "notification channel saved"
        );
        Ok(stored)
    }

    pub async fn list_channels(&self, caller: &Caller) -> Result<Vec<Channel>, AppError> {
        Ok(self.store.list_channels(&caller.tenant).await?)
    }

    /// Deletes a channel; what it had still to send becomes FAILED.
    pub async fn delete_channel(&self, caller: &Caller, id: &str) -> Result<(), AppError> {
        check_id("channel_id", id)?;
        if !self.store.delete_channel(&caller.tenant, id).await? {
            return Err(channel_not_found(id));
        }
        tracing::info!(
            tenant = %caller.tenant,
            key_id = %caller.key_id,
            channel = id,
            "notification channel deleted"
        );
        Ok(())
    }

    /// A page of the tenant's deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        caller: &Caller,
        approval_id: Option<ApprovalId>,
        state: Option<DeliveryState>,
        page_size: u32,
        page_token: &str,
    ) -> Result<DeliveryPage, AppError> {
        let query = DeliveryQuery {
            approval_id: approval_id.map(|id| id.as_str().to_owned()),
            state,
            before_seq: decode_page_token(page_token)?,
            limit: match page_size {
                0 => 50,
                n => n.min(500),
            },
        };
        let (deliveries, next) = self.store.list_deliveries(&caller.tenant, &query).await?;
        Ok(DeliveryPage {
            deliveries,
            next_page_token: next.map(|seq| format!("d1.{seq}")).unwrap_or_default(),
        })
    }

    /// Sends a FAILED delivery again: PENDING from now, with a new maximum age.
    pub async fn retry_delivery(&self, caller: &Caller, id: &str) -> Result<Delivery, AppError> {
        check_id("delivery_id", id)?;
        let not_found =
            || AppError::NotFound(format!("delivery_id: no delivery {id:?} in this tenant"));
        match self
            .store
            .retry_delivery(&caller.tenant, id, UnixMillis::now())
            .await?
        {
            Retried::Queued(delivery) => {
                self.deliveries_due.notify_one();
                tracing::info!(
                    tenant = %caller.tenant,
                    key_id = %caller.key_id,
                    delivery = id,
                    channel = %delivery.channel_id,
                    "delivery queued again"
                );
                Ok(delivery)
            }
            Retried::NotFailed(d) => Err(AppError::FailedPrecondition(format!(
                "delivery_id: delivery {id:?} is {}; only a failed delivery can be retried",
                d.state.as_str()
            ))),
            Retried::NotFound => Err(not_found()),
        }
    }
}

/// What a channel of its kind needs; `exists`: the channel is stored already, so an empty
/// secret keeps the stored one.
///
/// - A webhook: its Standard Webhooks signing secret, and no Slack fields.
/// - Slack: a bot token (`xoxb-…`), the conversation technician requests go to, and the
///   app's signing secret (which checks every click); `url` is the Web API base, empty for
///   Slack's own.
fn check_kind(channel: &Channel, exists: bool) -> Result<(), FieldError> {
    let required = |field: &str, what: &str| {
        FieldError::new(
            field,
            format!(
                "is required for a new {} channel, and again when its url changes: {what}",
                channel.kind.as_str()
            ),
        )
    };
    match channel.kind {
        ChannelKind::Webhook => {
            if !channel.secret.is_empty() {
                SigningKey::parse("channel.secret", channel.secret.expose())?;
            } else if !exists {
                return Err(required(
                    "channel.secret",
                    "a Standard Webhooks signing secret, \"whsec_\" and base64",
                ));
            }
            if !channel.slack_channel.is_empty() || !channel.slack_signing_secret.is_empty() {
                return Err(FieldError::new(
                    "channel.slack_channel",
                    "slack_channel and slack_signing_secret are for CHANNEL_KIND_SLACK only",
                ));
            }
            Ok(())
        }
        ChannelKind::Slack => {
            if channel.slack_channel.is_empty()
                || channel.slack_channel.contains(char::is_whitespace)
            {
                return Err(FieldError::new(
                    "channel.slack_channel",
                    "must name the Slack conversation technician requests go to (an id such as C0123ABCD)",
                ));
            }
            if !channel.secret.is_empty() {
                check_token(channel.secret.expose())?;
            } else if !exists {
                return Err(required(
                    "channel.secret",
                    "the Slack app's bot token, \"xoxb-…\"",
                ));
            }
            if !channel.slack_signing_secret.is_empty() {
                check_signing_secret(channel.slack_signing_secret.expose())?;
            } else if !exists {
                return Err(required(
                    "channel.slack_signing_secret",
                    "the Slack app's signing secret (Basic Information, App Credentials)",
                ));
            }
            Ok(())
        }
    }
}

/// A bot token: `xoxb-` and no spaces (the problem never repeats the token).
fn check_token(token: &str) -> Result<(), FieldError> {
    if !token.starts_with("xoxb-")
        || token.len() < 10
        || !token.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(FieldError::new(
            "channel.secret",
            "must be the Slack app's bot token, \"xoxb-\" and more (not a user token or the signing secret)",
        ));
    }
    Ok(())
}

/// A Slack signing secret: printable, 16 to 128 characters (Slack's are 32 hex digits).
fn check_signing_secret(secret: &str) -> Result<(), FieldError> {
    if !(16..=128).contains(&secret.len()) || !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(FieldError::new(
            "channel.slack_signing_secret",
            "must be the Slack app's signing secret: 16 to 128 printable characters",
        ));
    }
    Ok(())
}

/// Page tokens are opaque to clients; inside, the position of the previous page's last
/// delivery. Another tenant's position continues nothing (every read is by tenant).
fn decode_page_token(token: &str) -> Result<Option<i64>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("d1.")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or_else(|| FieldError::new("page_token", "is not a token from ListDeliveries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_ours_or_refused() {
        assert_eq!(decode_page_token(""), Ok(None));
        assert_eq!(decode_page_token("d1.42"), Ok(Some(42)));
        for bad in ["42", "d1.", "d1.-1", "d1.x", "v2.apr_1"] {
            assert!(decode_page_token(bad).is_err(), "{bad}");
        }
    }
}
