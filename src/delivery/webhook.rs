//! A webhook delivery as the contract gives it: the event body, and its signature per
//! Standard Webhooks 1.0 (`webhook-id`, `webhook-timestamp`, and `webhook-signature`:
//! `v1,` and the base64 HMAC-SHA256 over `<id>.<timestamp>.<body>`, keyed with the
//! base64-decoded part of the channel's `whsec_…` secret).

use super::Delivery;
use crate::policy::UnixMillis;
use crate::policy::names::FieldError;
use crate::proto::v1 as pb;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prost::Message;
use std::time::{Duration, SystemTime};

/// The prefix of a Standard Webhooks signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest and longest key Standard Webhooks allows (bytes, after decoding).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing key, decoded from `whsec_<base64>`; `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(ring::hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// The key of a `whsec_<base64>` secret, or what is wrong with it (naming `field`, never
    /// repeating the secret).
    pub fn parse(field: &str, secret: &str) -> Result<Self, FieldError> {
        let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
            return Err(FieldError::new(
                field,
                "must be a Standard Webhooks signing secret: \"whsec_\" and base64",
            ));
        };
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| FieldError::new(field, "after \"whsec_\" must be base64"))?;
        if !KEY_BYTES.contains(&bytes.len()) {
            return Err(FieldError::new(
                field,
                format!(
                    "decodes to {} bytes; a signing key is {} to {} bytes",
                    bytes.len(),
                    KEY_BYTES.start(),
                    KEY_BYTES.end()
                ),
            ));
        }
        Ok(SigningKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    /// `v1,<base64 signature>` of one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut context = ring::hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(format!(".{timestamp}.").as_bytes());
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }

    /// Whether `header` (space-separated `v1,<base64>` entries) holds this key's signature of
    /// the attempt: what a receiver checks.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let mut message = format!("{id}.{timestamp}.").into_bytes();
        message.extend_from_slice(body);
        header.split(' ').any(|entry| {
            entry
                .strip_prefix("v1,")
                .and_then(|sig| STANDARD.decode(sig).ok())
                .is_some_and(|sig| ring::hmac::verify(&self.0, &message, &sig).is_ok())
        })
    }
}

/// RFC 3339 in UTC, to the second: `2026-12-04T10:00:00Z`.
pub fn rfc3339(at: UnixMillis) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(at.0.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The event's body: `{"type", "timestamp", "data": {"sequence", "audience", "approval"}}`,
/// the approval in the protobuf JSON mapping. The same bytes on every attempt.
pub fn event_body(delivery: &Delivery, approval: &pb::Approval, event_at: UnixMillis) -> Vec<u8> {
    let mut data = serde_json::Map::new();
    data.insert("sequence".into(), (delivery.version + 1).into());
    let audience = &delivery.audience;
    if !audience.role.is_empty() {
        let mut who = serde_json::Map::new();
        who.insert("role".into(), audience.role.clone().into());
        if audience.role == "manager" {
            who.insert("person_id".into(), audience.person_id.clone().into());
            who.insert(
                "slack_user_id".into(),
                audience.slack_user_id.clone().into(),
            );
        }
        data.insert("audience".into(), who.into());
    }
    data.insert("approval".into(), approval_json(approval));
    let body = serde_json::json!({
        "type": delivery.event_type,
        "timestamp": rfc3339(event_at),
        "data": data,
    });
    // A map of strings and numbers: serializing cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// An approval in the protobuf JSON mapping (lowerCamelCase, enum names as strings).
fn approval_json(approval: &pb::Approval) -> serde_json::Value {
    let dynamic = crate::proto::descriptors()
        .get_message_by_name("toolgate.v1.Approval")
        .and_then(|d| {
            prost_reflect::DynamicMessage::decode(d, approval.encode_to_vec().as_slice()).ok()
        });
    dynamic
        .and_then(|m| serde_json::to_value(&m).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries' tests
    /// (standard-webhooks/standard-webhooks, `libraries/*`): secret, id, timestamp, body
    /// and the signature they expect.
    #[test]
    fn signs_the_published_example() {
        let key = SigningKey::parse("secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(key.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, &signature));
        assert!(!key.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, &signature));
        assert!(!key.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b"{}",
            &signature
        ));
        let other = SigningKey::parse("secret", "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert!(!other.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, &signature));
    }

    #[test]
    fn malformed_secrets_are_refused_without_repeating_them() {
        for secret in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            let e = SigningKey::parse("channel.secret", secret).unwrap_err();
            assert_eq!(e.field, "channel.secret");
            assert!(secret.is_empty() || !e.problem.contains(secret), "{e}");
        }
        assert!(
            format!(
                "{:?}",
                SigningKey::parse("s", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            )
            .contains("redacted")
        );
    }

    #[test]
    fn times_are_rfc3339_utc_seconds() {
        assert_eq!(
            rfc3339(UnixMillis(1_796_378_400_123)),
            "2026-12-04T10:00:00Z"
        );
    }
}
