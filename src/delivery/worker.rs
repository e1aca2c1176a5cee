//! The delivery worker: one per replica. It finds channels with deliveries due, claims as
//! many of each channel's as that channel has free places (`delivery_concurrency`), sends
//! each in a task of its own, and writes how it ended.
//!
//! Each claim is a lease in the database (`lease_owner`, `lease_until`): while it holds,
//! no replica claims the delivery again, so an attempt is in flight on one replica at a
//! time. An attempt ends within `delivery_timeout`, well inside the lease; if its replica
//! dies, the lease runs out and any replica takes the delivery up again. Sending never
//! holds a lock or a transaction, and runs on its own tasks: a slow receiver delays only its
//! own channel's places, never Decide, a Save, or another channel.

use super::webhook::{SigningKey, event_body};
use super::{ChannelKind, Claimed, Outcome};
use crate::app::App;
use crate::grpc::convert::approval_to_proto;
use crate::metrics::AttemptOutcome;
use crate::policy::UnixMillis;
use crate::store::Lease;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The worker's settings, from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    pub timeout: Duration,
    /// Attempts in flight to one channel from this replica.
    pub concurrency: usize,
    pub public_only: bool,
    /// How often the outbox is read when nothing woke the worker (retries coming due,
    /// other replicas' approvals, leases that ran out).
    pub poll: Duration,
}

impl From<&crate::config::Config> for WorkerSettings {
    fn from(config: &crate::config::Config) -> Self {
        WorkerSettings {
            retry_initial: config.delivery_retry_initial,
            retry_max: config.delivery_retry_max,
            max_age: config.delivery_max_age,
            timeout: config.delivery_timeout,
            concurrency: config.delivery_concurrency,
            public_only: config.delivery_public_only,
            poll: config.catch_up_interval,
        }
    }
}

impl WorkerSettings {
    /// How long a claim holds: an attempt ends within the timeout; the rest is margin
    /// for writing its outcome.
    fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(5)
    }
}

/// How often the oldest-pending gauge and the tenants with channels are read from the
/// database.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Attempts in flight from this replica, by (tenant, channel).
type InFlight = Arc<Mutex<HashMap<(String, String), usize>>>;

/// Runs until the server drains.
pub async fn run(app: Arc<App>, settings: WorkerSettings) {
    let client = match super::http_client(settings.timeout, settings.public_only) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: approval deliveries are not sent");
            return;
        }
    };
    let settings = Arc::new(settings);
    let in_flight: InFlight = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_failure: Option<Instant> = None;
    let mut refreshed: Option<Instant> = None;
    loop {
        match claim_round(&app, &settings, &in_flight, &mut refreshed).await {
            Ok(claimed) => {
                for c in claimed {
                    let (app, settings, client) = (app.clone(), settings.clone(), client.clone());
                    let in_flight = in_flight.clone();
                    tasks.spawn(async move {
                        attempt(&app, &settings, &client, &c).await;
                        release(&in_flight, &c);
                    });
                }
            }
            // Logged at most once a minute: an outage already has its own signals.
            Err(e) if last_failure.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) => {
                last_failure = Some(Instant::now());
                tracing::warn!(error = %e, "could not read the delivery outbox; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = app.deliveries_due.notified() => {}
            Some(_) = tasks.join_next() => {}
            () = tokio::time::sleep(settings.poll) => {}
            () = app.drain.cancelled() => break,
        }
    }
    // Attempts in flight finish (each bounded by the timeout) or their leases run out.
    tasks.abort_all();
}

/// Claims what each due channel has places for; also refreshes the oldest-pending gauge.
async fn claim_round(
    app: &App,
    settings: &WorkerSettings,
    in_flight: &InFlight,
    refresh_due: &mut Option<Instant>,
) -> Result<Vec<Claimed>, crate::store::StoreError> {
    let now = UnixMillis::now();
    // The gauge reads every pending delivery, and the tenants with channels change
    // rarely: both are refreshed every few seconds, not per round.
    if refresh_due.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
        *refresh_due = Some(Instant::now());
        let tenants = app.store.channel_tenants().await?;
        if let Ok(mut known) = app.channel_tenants.write() {
            *known = tenants.into_iter().collect();
        }
        let oldest = app.store.oldest_pending_delivery().await?;
        let age = oldest.map_or(0.0, |at| (now.0 - at.0).max(0) as f64 / 1000.0);
        app.metrics.deliveries.set_oldest_pending(age);
    }
    let mut claimed = Vec::new();
    for (tenant, channel) in app.store.due_channels(now).await? {
        let key = (tenant, channel);
        let busy = in_flight
            .lock()
            .map_or(0, |m| m.get(&key).copied().unwrap_or(0));
        let free = settings.concurrency.saturating_sub(busy);
        if free == 0 {
            continue;
        }
        let owner = crate::keys::random_id("lease_")
            .unwrap_or_else(|_| format!("lease_{}_{}", std::process::id(), now.0));
        let lease = Lease {
            owner: &owner,
            now,
            until: now.plus(settings.lease()),
        };
        let (tenant, channel) = &key;
        let got = match app
            .store
            .claim_deliveries(&lease, tenant, channel, free as u32)
            .await
        {
            Ok(got) => got,
            // What this round claimed already is sent; the rest waits for the next round.
            Err(e) if !claimed.is_empty() => {
                tracing::warn!(error = %e, "could not claim deliveries; retrying");
                break;
            }
            Err(e) => return Err(e),
        };
        if let Ok(mut m) = in_flight.lock() {
            *m.entry(key.clone()).or_default() += got.len();
        }
        claimed.extend(got);
    }
    Ok(claimed)
}

fn release(in_flight: &InFlight, c: &Claimed) {
    if let Ok(mut m) = in_flight.lock() {
        let key = (c.tenant.clone(), c.delivery.channel_id.clone());
        if let Some(n) = m.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

/// One attempt: build the body, sign, POST, and write the outcome.
async fn attempt(app: &App, settings: &WorkerSettings, client: &reqwest::Client, c: &Claimed) {
    let started = Instant::now();
    let d = &c.delivery;
    let outcome = match send(app, settings, client, c).await {
        Ok(()) => Outcome::Delivered {
            at: UnixMillis::now(),
        },
        Err(Failure::Final(error)) => Outcome::Failed { error },
        Err(Failure::Retry { error, after }) => after_failure(settings, c, error, after),
    };
    let metrics = &app.metrics.deliveries;
    metrics.seconds.observe(started.elapsed().as_secs_f64());
    let counted = match &outcome {
        Outcome::Delivered { .. } => AttemptOutcome::Delivered,
        Outcome::Retry { .. } => AttemptOutcome::Retry,
        Outcome::Failed { .. } => AttemptOutcome::Failed,
    };
    metrics.attempt(counted);
    log_outcome(c, &outcome);
    match app.store.finish_delivery(c, &outcome).await {
        Ok(true) => {}
        Ok(false) => tracing::info!(
            delivery = %d.id,
            "a delivery's claim had ended before its outcome was written (its channel deleted, or its lease ran out)"
        ),
        // The lease runs out and the delivery is tried again: at least once, never lost.
        Err(e) => {
            tracing::warn!(delivery = %d.id, error = %e, "could not record a delivery's outcome")
        }
    }
    if matches!(outcome, Outcome::Delivered { .. }) {
        // The approval's next event on this channel may have waited for this one.
        app.deliveries_due.notify_one();
    }
}

/// One line per failed attempt (the channel, the delivery, the error; never the body or
/// the secret), a debug line per delivered one.
fn log_outcome(c: &Claimed, outcome: &Outcome) {
    let d = &c.delivery;
    match outcome {
        Outcome::Delivered { .. } => tracing::debug!(
            tenant = %c.tenant,
            channel = %d.channel_id,
            delivery = %d.id,
            attempt = d.attempts,
            "delivered"
        ),
        Outcome::Retry {
            error,
            next_attempt_at,
        } => tracing::warn!(
            tenant = %c.tenant,
            channel = %d.channel_id,
            delivery = %d.id,
            event = %d.event_type,
            attempt = d.attempts,
            error = %error,
            retry_in_ms = next_attempt_at.0 - UnixMillis::now().0,
            "delivery attempt failed; it will be retried"
        ),
        Outcome::Failed { error } => tracing::warn!(
            tenant = %c.tenant,
            channel = %d.channel_id,
            delivery = %d.id,
            event = %d.event_type,
            attempt = d.attempts,
            error = %error,
            "delivery failed for good; RetryDelivery sends it again"
        ),
    }
}

/// Why an attempt did not deliver.
pub(super) enum Failure {
    /// Worth another attempt (after at least `after`, when the receiver asked).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// No attempt can succeed (the channel is gone, its secret unusable).
    Final(String),
}

impl Failure {
    pub(super) fn retry(error: impl Into<String>) -> Failure {
        Failure::Retry {
            error: error.into(),
            after: None,
        }
    }
}

async fn send(
    app: &App,
    settings: &WorkerSettings,
    client: &reqwest::Client,
    c: &Claimed,
) -> Result<(), Failure> {
    let d = &c.delivery;
    let context = app
        .store
        .delivery_context(&c.tenant, d)
        .await
        .map_err(|e| Failure::retry(format!("could not read the delivery: {e}")))?;
    let Some((channel, approval, event_at)) = context else {
        return Err(Failure::Final("the channel was deleted".into()));
    };
    if !channel.enabled {
        return Err(Failure::retry("the channel is disabled"));
    }
    match channel.kind {
        ChannelKind::Webhook => {
            send_webhook(settings, client, d, &channel, &approval, event_at).await
        }
        ChannelKind::Slack => {
            super::slack::send(app, settings, client, c, &channel, &approval).await
        }
    }
}

/// A Standard Webhooks POST of the event.
async fn send_webhook(
    settings: &WorkerSettings,
    client: &reqwest::Client,
    d: &super::Delivery,
    channel: &super::Channel,
    approval: &crate::policy::Approval,
    event_at: UnixMillis,
) -> Result<(), Failure> {
    let url = super::target::check_url("url", &channel.url, settings.public_only)
        .map_err(|e| Failure::Final(format!("the channel's {e}")))?;
    let key = SigningKey::parse("secret", channel.secret.expose())
        .map_err(|_| Failure::Final("the channel's secret is not a signing secret".into()))?;
    let body = event_body(d, &approval_to_proto(approval, event_at), event_at);
    let timestamp = UnixMillis::now().0 / 1000;
    let signature = key.sign(&d.id, timestamp, &body);
    let answer = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::retry(describe(&e, settings.timeout)))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let after = answer
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    Err(Failure::Retry {
        error: format!("the receiver answered HTTP {}", status.as_u16()),
        after,
    })
}

/// An HTTP client error, without the URL (a URL may carry a token) or the body.
pub(super) fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let what = if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    // The innermost cause says why (refused, reset, a refused address, TLS).
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{what}: {cause}")
}

/// `Retry-After`: seconds, or an HTTP date.
pub(super) fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The wait before attempt `n + 1` after `n` failed: `retry_initial` doubled per attempt,
/// up to `retry_max`, then between half and all of it (jitter, so deliveries that failed
/// together do not all come back together).
pub fn backoff(settings: &WorkerSettings, attempts: u32, random: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let full = settings
        .retry_initial
        .saturating_mul(1 << doublings)
        .min(settings.retry_max);
    let half = full / 2;
    let spread = half.as_millis() as u64;
    half + Duration::from_millis(if spread == 0 {
        0
    } else {
        random % (spread + 1)
    })
}

/// A failed attempt's outcome: retried after the backoff (or the receiver's `Retry-After`,
/// if longer), or FAILED when that would be past the maximum age.
fn after_failure(
    settings: &WorkerSettings,
    c: &Claimed,
    error: String,
    asked: Option<Duration>,
) -> Outcome {
    let d = &c.delivery;
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    let wait =
        backoff(settings, d.attempts, u64::from_le_bytes(random)).max(asked.unwrap_or_default());
    let now = UnixMillis::now();
    let next_attempt_at = now.plus(wait);
    if next_attempt_at >= d.queued_at.plus(settings.max_age) {
        Outcome::Failed {
            error: format!(
                "{error} (attempt {}; the maximum age of {} is reached)",
                d.attempts,
                humantime::format_duration(settings.max_age)
            ),
        }
    } else {
        Outcome::Retry {
            error,
            next_attempt_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WorkerSettings {
        WorkerSettings {
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 4,
            public_only: false,
            poll: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let s = settings();
        for (attempts, full) in [
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (10, 512),
            (11, 600),
            (40, 600),
        ] {
            let full = Duration::from_secs(full);
            assert_eq!(backoff(&s, attempts, 0), full / 2, "attempt {attempts}");
            assert!(backoff(&s, attempts, u64::MAX - 1) <= full);
            let spread = (full / 2).as_millis() as u64;
            assert_eq!(backoff(&s, attempts, spread), full, "attempt {attempts}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        let wait = retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600));
        assert_eq!(retry_after("soon"), None);
    }
}
