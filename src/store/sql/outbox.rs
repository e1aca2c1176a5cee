//! Notification channels and the delivery outbox. The outbox's rows are written by the
//! database (a trigger on `approval_events`, `migrations/*/0007_deliveries.sql`); these are
//! the statements that read them, lease an attempt, and record how it ended.

use super::{Db, SqlStore};
use crate::delivery::slack::SlackMessage;
use crate::delivery::{
    Audience, Channel, ChannelKind, Claimed, Delivery, DeliveryState, Outcome, Secret,
};
use crate::policy::{Approval, ApproverRole, UnixMillis};
use crate::store::rows::{Cols, approval_from_row, corrupt};
use crate::store::{DeliveryQuery, Lease, Retried, StoreError};
use sqlx::Connection;

const DELIVERY_COLUMNS: &str = "seq, id, tenant, channel_id, approval_id, version, event_type, \
     audience_role, audience_person_id, audience_slack_user_id, state, attempts, last_error, \
     created_at, queued_at, next_attempt_at, delivered_at";

const CHANNEL_COLUMNS: &str = "id, kind, url, secret, enabled, slack_channel, slack_signing_secret";

fn channel_from_row<R: Cols>(row: &R) -> Result<Channel, StoreError> {
    let kind = row.text("kind")?;
    Ok(Channel {
        id: row.text("id")?,
        kind: kind
            .parse::<ChannelKind>()
            .map_err(|_| corrupt("channel kind", &kind))?,
        url: row.text("url")?,
        secret: Secret::new(row.text("secret")?),
        enabled: row.flag("enabled")?,
        slack_channel: row.text("slack_channel")?,
        slack_signing_secret: Secret::new(row.text("slack_signing_secret")?),
    })
}

fn delivery_from_row<R: Cols>(row: &R) -> Result<Delivery, StoreError> {
    let state = row.text("state")?;
    Ok(Delivery {
        id: row.text("id")?,
        channel_id: row.text("channel_id")?,
        approval_id: row.text("approval_id")?,
        version: row.int("version")?,
        event_type: row.text("event_type")?,
        audience: Audience {
            role: row.text("audience_role")?,
            person_id: row.text("audience_person_id")?,
            slack_user_id: row.text("audience_slack_user_id")?,
        },
        state: state
            .parse::<DeliveryState>()
            .map_err(|_| corrupt("delivery state", &state))?,
        attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
        last_error: row.text("last_error")?,
        created_at: UnixMillis(row.int("created_at")?),
        queued_at: UnixMillis(row.int("queued_at")?),
        next_attempt_at: UnixMillis(row.int("next_attempt_at")?),
        delivered_at: row.opt_int("delivered_at")?.map(UnixMillis),
    })
}

impl SqlStore {
    pub(super) async fn outbox_set_channel(
        &self,
        tenant: &str,
        c: &Channel,
    ) -> Result<Channel, StoreError> {
        // An empty secret on a replace keeps the stored one (secrets are never read back).
        let sql = format!(
            "INSERT INTO notification_channels (tenant, id, kind, url, secret, enabled, \
             slack_channel, slack_signing_secret, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
             ON CONFLICT (tenant, id) DO UPDATE SET kind = excluded.kind, url = excluded.url, \
             secret = CASE WHEN excluded.secret = '' THEN notification_channels.secret \
             ELSE excluded.secret END, enabled = excluded.enabled, \
             slack_channel = excluded.slack_channel, \
             slack_signing_secret = CASE WHEN excluded.slack_signing_secret = '' \
             THEN notification_channels.slack_signing_secret \
             ELSE excluded.slack_signing_secret END, updated_at = excluded.updated_at \
             RETURNING {CHANNEL_COLUMNS}"
        );
        on_pool!(self, write, |pool| async {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(&c.id)
                .bind(c.kind.as_str())
                .bind(&c.url)
                .bind(c.secret.expose())
                .bind(c.enabled)
                .bind(&c.slack_channel)
                .bind(c.slack_signing_secret.expose())
                .bind(UnixMillis::now().0)
                .fetch_one(pool)
                .await?;
            channel_from_row(&row)
        })
    }

    pub(super) async fn outbox_list_channels(
        &self,
        tenant: &str,
    ) -> Result<Vec<Channel>, StoreError> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM notification_channels WHERE tenant = $1 ORDER BY id"
        );
        on_pool!(self, read, |pool| async {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .fetch_all(pool)
                .await?;
            rows.iter().map(channel_from_row).collect()
        })
    }

    pub(super) async fn outbox_delete_channel(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        on_pool!(self, write, |pool| async {
            let mut tx = pool.begin_with(self.begin_sql()).await?;
            let deleted =
                sqlx::query("DELETE FROM notification_channels WHERE tenant = $1 AND id = $2")
                    .bind(tenant)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
            // What it still had to send will not be sent: it says so instead of waiting.
            sqlx::query(
                "UPDATE deliveries SET state = 'failed', last_error = 'the channel was deleted', \
                 lease_owner = '', lease_until = 0 \
                 WHERE tenant = $1 AND channel_id = $2 AND state = 'pending'",
            )
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(deleted)
        })
    }

    pub(super) async fn outbox_list_deliveries(
        &self,
        tenant: &str,
        q: &DeliveryQuery,
    ) -> Result<(Vec<Delivery>, Option<i64>), StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant = $1 \
             AND ($2 IS NULL OR approval_id = $2) AND ($3 IS NULL OR state = $3) \
             AND ($4 IS NULL OR seq < $4) ORDER BY seq DESC LIMIT $5"
        );
        on_pool!(self, read, |pool| async {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(q.approval_id.as_deref())
                .bind(q.state.map(DeliveryState::as_str))
                .bind(q.before_seq)
                .bind(i64::from(q.limit) + 1)
                .fetch_all(pool)
                .await?;
            let page = rows.len().min(q.limit as usize);
            let deliveries = rows[..page]
                .iter()
                .map(delivery_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let next = if rows.len() > page {
                Some(rows[page - 1].int("seq")?)
            } else {
                None
            };
            Ok((deliveries, next))
        })
    }

    pub(super) async fn outbox_retry(
        &self,
        tenant: &str,
        id: &str,
        now: UnixMillis,
    ) -> Result<Retried, StoreError> {
        let retry = format!(
            "UPDATE deliveries SET state = 'pending', last_error = '', queued_at = $3, \
             next_attempt_at = $3, delivered_at = NULL, lease_owner = '', lease_until = 0 \
             WHERE tenant = $1 AND id = $2 AND state = 'failed' RETURNING {DELIVERY_COLUMNS}"
        );
        let read =
            format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant = $1 AND id = $2");
        on_pool!(self, write, |pool| async {
            let mut tx = pool.begin_with(self.begin_sql()).await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(retry))
                .bind(tenant)
                .bind(id)
                .bind(now.0)
                .fetch_optional(&mut *tx)
                .await?;
            let outcome = match row {
                Some(row) => Retried::Queued(delivery_from_row(&row)?),
                None => {
                    let row = sqlx::query(sqlx::AssertSqlSafe(read))
                        .bind(tenant)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match row {
                        Some(row) => Retried::NotFailed(delivery_from_row(&row)?),
                        None => Retried::NotFound,
                    }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    pub(super) async fn outbox_due_channels(
        &self,
        now: UnixMillis,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // One probe per channel, not a pass over every pending row: PostgreSQL could turn
        // an EXISTS into a hash join over all of them; a LATERAL … LIMIT 1 it cannot, and
        // ordered as `deliveries_due` is, it walks that index whatever its statistics say.
        // SQLite has no LATERAL and runs an EXISTS per channel as written.
        let sql = match self.db {
            Db::Postgres(_) => {
                "SELECT c.tenant, c.id AS channel_id FROM notification_channels c, \
                 LATERAL (SELECT 1 FROM deliveries d WHERE d.tenant = c.tenant \
                 AND d.channel_id = c.id AND d.state = 'pending' AND d.next_attempt_at <= $1 \
                 AND d.lease_until <= $1 ORDER BY d.next_attempt_at LIMIT 1) due"
            }
            Db::Sqlite { .. } => {
                "SELECT c.tenant, c.id AS channel_id FROM notification_channels c \
                 WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.tenant = c.tenant \
                 AND d.channel_id = c.id AND d.state = 'pending' AND d.next_attempt_at <= $1 \
                 AND d.lease_until <= $1)"
            }
        };
        on_pool!(self, read, |pool| async {
            let rows = sqlx::query(sql).bind(now.0).fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok((row.text("tenant")?, row.text("channel_id")?)))
                .collect()
        })
    }

    pub(super) async fn outbox_claim(
        &self,
        lease: &Lease<'_>,
        tenant: &str,
        channel_id: &str,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        // Due, not leased, and not behind the approval's previous event to this channel
        // while that one is pending (so a receiver gets an approval's events in order). PostgreSQL skips rows another
        // replica is claiming at this moment; its lease then keeps them.
        let skip_locked = match self.db {
            Db::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Db::Sqlite { .. } => "",
        };
        let sql = format!(
            "UPDATE deliveries SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE seq IN (SELECT d.seq FROM deliveries d \
             WHERE d.tenant = $5 AND d.channel_id = $6 AND d.state = 'pending' \
             AND d.next_attempt_at <= $3 AND d.lease_until <= $3 \
             AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.seq = d.after_seq \
             AND p.state = 'pending') \
             ORDER BY d.next_attempt_at, d.seq LIMIT $4 {skip_locked}) \
             RETURNING {DELIVERY_COLUMNS}"
        );
        on_pool!(self, write, |pool| async {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(lease.owner)
                .bind(lease.until.0)
                .bind(lease.now.0)
                .bind(i64::from(limit))
                .bind(tenant)
                .bind(channel_id)
                .fetch_all(pool)
                .await?;
            let mut claimed = rows
                .iter()
                .map(|row| {
                    Ok((
                        row.int("seq")?,
                        Claimed {
                            tenant: row.text("tenant")?,
                            delivery: delivery_from_row(row)?,
                            lease: lease.owner.to_owned(),
                        },
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            claimed.sort_by_key(|(seq, c)| (c.delivery.next_attempt_at, *seq));
            Ok(claimed.into_iter().map(|(_, c)| c).collect())
        })
    }

    pub(super) async fn outbox_context(
        &self,
        tenant: &str,
        d: &Delivery,
    ) -> Result<Option<(Channel, Approval, UnixMillis)>, StoreError> {
        // The approval as this event left it: its head and the event's version.
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS}, a.* FROM notification_channels c, \
             (SELECT h.seq, h.id AS approval_id, e.state, h.integration_id, h.tool_name, \
              h.arguments_json, h.arguments_sha256, h.requester_id, h.request_id, \
              e.required_roles, h.created_at, h.expires_at, h.created_by_key, h.principal, \
              e.consumed_by_request, e.steps, e.version, e.created_at AS updated_at \
              FROM approvals h JOIN approval_events e ON e.tenant = h.tenant \
              AND e.approval_id = h.id AND e.version = $4 \
              WHERE h.tenant = $1 AND h.id = $3) a \
             WHERE c.tenant = $1 AND c.id = $2"
        );
        on_pool!(self, read, |pool| async {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(tenant)
                .bind(&d.channel_id)
                .bind(&d.approval_id)
                .bind(d.version)
                .fetch_optional(pool)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let channel = channel_from_row(&row)?;
            let approval = approval_from_row(&Renamed(&row))?;
            let at = UnixMillis(row.int("updated_at")?);
            Ok(Some((channel, approval, at)))
        })
    }

    pub(super) async fn outbox_finish(
        &self,
        claimed: &Claimed,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let (sql, at, error) = match outcome {
            Outcome::Delivered { at } => (
                "UPDATE deliveries SET state = 'delivered', delivered_at = $3, last_error = $4, \
                 lease_owner = '', lease_until = 0 WHERE id = $1 AND lease_owner = $2",
                at.0,
                "",
            ),
            Outcome::Retry {
                error,
                next_attempt_at,
            } => (
                "UPDATE deliveries SET next_attempt_at = $3, last_error = $4, lease_owner = '', \
                 lease_until = 0 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
                next_attempt_at.0,
                error.as_str(),
            ),
            Outcome::Failed { error } => (
                "UPDATE deliveries SET state = 'failed', next_attempt_at = $3, last_error = $4, \
                 lease_owner = '', lease_until = 0 \
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
                UnixMillis::now().0,
                error.as_str(),
            ),
        };
        on_pool!(self, write, |pool| async {
            let done = sqlx::query(sql)
                .bind(&claimed.delivery.id)
                .bind(&claimed.lease)
                .bind(at)
                .bind(error)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub(super) async fn outbox_oldest_pending(&self) -> Result<Option<UnixMillis>, StoreError> {
        on_pool!(self, read, |pool| async {
            let oldest: Option<i64> =
                sqlx::query_scalar("SELECT min(queued_at) FROM deliveries WHERE state = 'pending'")
                    .fetch_one(pool)
                    .await?;
            Ok(oldest.map(UnixMillis))
        })
    }
}

impl SqlStore {
    pub(super) async fn outbox_slack_channels(&self) -> Result<Vec<(String, Channel)>, StoreError> {
        let sql = format!(
            "SELECT tenant, {CHANNEL_COLUMNS} FROM notification_channels \
             WHERE kind = 'slack' AND enabled = TRUE ORDER BY tenant, id"
        );
        on_pool!(self, read, |pool| async {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| Ok((row.text("tenant")?, channel_from_row(row)?)))
                .collect()
        })
    }

    pub(super) async fn outbox_slack_messages(
        &self,
        tenant: &str,
        approval_id: &str,
        channel_id: &str,
    ) -> Result<Vec<SlackMessage>, StoreError> {
        on_pool!(self, read, |pool| async {
            let rows = sqlx::query(
                "SELECT role, slack_channel, ts FROM slack_messages \
                 WHERE tenant = $1 AND approval_id = $2 AND channel_id = $3 ORDER BY role DESC",
            )
            .bind(tenant)
            .bind(approval_id)
            .bind(channel_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let role = row.text("role")?;
                    Ok(SlackMessage {
                        role: role
                            .parse::<ApproverRole>()
                            .map_err(|_| corrupt("slack message role", &role))?,
                        slack_channel: row.text("slack_channel")?,
                        ts: row.text("ts")?,
                    })
                })
                .collect()
        })
    }

    pub(super) async fn outbox_record_slack_message(
        &self,
        tenant: &str,
        approval_id: &str,
        channel_id: &str,
        m: &SlackMessage,
    ) -> Result<(), StoreError> {
        on_pool!(self, write, |pool| async {
            sqlx::query(
                "INSERT INTO slack_messages (tenant, approval_id, channel_id, role, \
                 slack_channel, ts, posted_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (tenant, approval_id, channel_id, role) DO UPDATE SET \
                 slack_channel = excluded.slack_channel, ts = excluded.ts, \
                 posted_at = excluded.posted_at",
            )
            .bind(tenant)
            .bind(approval_id)
            .bind(channel_id)
            .bind(m.role.as_str())
            .bind(&m.slack_channel)
            .bind(&m.ts)
            .bind(UnixMillis::now().0)
            .execute(pool)
            .await?;
            Ok(())
        })
    }
}

/// A row whose approval id is in `approval_id` (the channel's is in `id`), read as an
/// approval row.
struct Renamed<'a, R>(&'a R);

impl<R: Cols> Cols for Renamed<'_, R> {
    fn text(&self, name: &str) -> Result<String, StoreError> {
        self.0.text(if name == "id" { "approval_id" } else { name })
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.0.opt_text(name)
    }
    fn int(&self, name: &str) -> Result<i64, StoreError> {
        self.0.int(name)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.0.opt_int(name)
    }
    fn flag(&self, name: &str) -> Result<bool, StoreError> {
        self.0.flag(name)
    }
    fn opt_flag(&self, name: &str) -> Result<Option<bool>, StoreError> {
        self.0.opt_flag(name)
    }
}
