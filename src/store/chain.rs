//! Linking approval events into their tenant's hash chain ([`crate::policy::audit`]), in the
//! transaction that writes them, on both stores.
//!
//! A transaction that writes approval events (a group commit's batch, the expiry sweep)
//! inserts them first and then, before it commits, links the ones it wrote:
//! 1. it takes the chain head (`approval_chain`, one row per tenant) of each of their
//!    tenants. On PostgreSQL this locks the row until commit, so replicas linking one
//!    tenant's events take turns and the chain stays linear; heads are taken in tenant order,
//!    so two transactions never wait on each other in a circle. SQLite has one writer, which
//!    is the turn;
//! 2. gives each event the next place after its tenant's head and its hash;
//! 3. writes the events' places and hashes and the new heads.
//!
//! Each store does it in a fixed number of statements per transaction (arrays on
//! PostgreSQL, JSON arrays on SQLite), however many events the transaction wrote.

use super::rows::{roles_to_text, steps_to_json};
use crate::policy::Approval;
use crate::policy::audit::{self, ApprovalEvent, ChainHead};
use sqlx::{PgConnection, Row, SqliteConnection};
use std::collections::BTreeMap;

/// What the chain covers of `a`, written as version `version` of its approval at `at_ms`
/// (each column as the insert binds it).
pub(super) fn event(tenant: &str, version: i64, a: &Approval, at_ms: i64) -> ApprovalEvent {
    ApprovalEvent {
        tenant: tenant.to_owned(),
        seq: 0,
        approval_id: a.id.clone(),
        version,
        state: a.state.as_str().to_owned(),
        required_roles: roles_to_text(&a.required_roles),
        consumed_by_request: a.consumed_by_request.clone(),
        steps_json: steps_to_json(&a.steps),
        at_ms,
        integration_id: a.integration_id.clone(),
        tool_name: a.tool_name.clone(),
        arguments_sha256: a.arguments_sha256.clone(),
        requester_id: a.requester_id.clone(),
        request_id: a.request_id.clone(),
        created_at_ms: a.created_at.0,
        expires_at_ms: a.expires_at.0,
        created_by_key: a.created_by_key.clone(),
        principal: a.principal.clone(),
    }
}

/// What the chain covers of version 0 of `a`, a new approval: as the creating statements
/// store it (pending, no steps, nobody's consumption), whatever `a` holds.
pub(super) fn created_event(tenant: &str, a: &Approval) -> ApprovalEvent {
    ApprovalEvent {
        state: crate::policy::ApprovalState::Pending.as_str().to_owned(),
        consumed_by_request: None,
        steps_json: "[]".to_owned(),
        ..event(tenant, 0, a, a.created_at.0)
    }
}

/// The events by tenant, tenants in order, each tenant's events in the order written.
fn by_tenant(events: Vec<ApprovalEvent>) -> BTreeMap<String, Vec<ApprovalEvent>> {
    let mut tenants: BTreeMap<String, Vec<ApprovalEvent>> = BTreeMap::new();
    for e in events {
        tenants.entry(e.tenant.clone()).or_default().push(e);
    }
    tenants
}

/// A stored head: no row, or a row at 0, is the start of a chain.
pub(super) fn head(seq: i64, hash: String) -> ChainHead {
    if seq <= 0 || hash.is_empty() {
        return ChainHead::genesis();
    }
    ChainHead {
        seq: seq as u64,
        hash,
    }
}

/// A transaction's events with their places and hashes, and each tenant's new head.
struct Plan {
    linked: Vec<(ApprovalEvent, String)>,
    heads: Vec<(String, ChainHead)>,
}

/// Gives each tenant's events the places after the head `start` gives for the tenant.
fn plan(
    tenants: BTreeMap<String, Vec<ApprovalEvent>>,
    mut start: impl FnMut(&str) -> Result<ChainHead, sqlx::Error>,
) -> Result<Plan, sqlx::Error> {
    let mut plan = Plan {
        linked: Vec::new(),
        heads: Vec::new(),
    };
    for (tenant, mut events) in tenants {
        let (hashes, next) = audit::link(&start(&tenant)?, &mut events);
        plan.linked.extend(events.into_iter().zip(hashes));
        plan.heads.push((tenant, next));
    }
    Ok(plan)
}

/// Links the approval events a transaction wrote (see the module's text).
pub(super) trait Link {
    async fn link(&mut self, events: Vec<ApprovalEvent>) -> Result<(), sqlx::Error>;
}

/// Takes (creating if needed) and locks each tenant's head; returns them.
const HEADS_PG: &str = "INSERT INTO approval_chain (tenant, seq, hash) \
     SELECT t, 0, '' FROM unnest($1::text[]) AS t \
     ON CONFLICT (tenant) DO UPDATE SET seq = approval_chain.seq RETURNING tenant, seq, hash";

/// Each event's place and hash, and each tenant's new head, over arrays.
const LINK_PG: &str = "WITH linked AS (UPDATE approval_events e SET chain_seq = u.s, \
     hash = u.h FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[]) \
     AS u(t, a, v, s, h) WHERE e.tenant = u.t AND e.approval_id = u.a AND e.version = u.v) \
     UPDATE approval_chain c SET seq = u.s, hash = u.h \
     FROM unnest($6::text[], $7::bigint[], $8::text[]) AS u(t, s, h) WHERE c.tenant = u.t";

impl Link for PgConnection {
    /// Two round trips for the whole transaction, whatever the number of events.
    async fn link(&mut self, events: Vec<ApprovalEvent>) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        let tenants = by_tenant(events);
        let names: Vec<&String> = tenants.keys().collect();
        let rows = sqlx::query(HEADS_PG)
            .bind(names)
            .fetch_all(&mut *self)
            .await?;
        let mut heads = BTreeMap::new();
        for row in &rows {
            let tenant: String = row.try_get("tenant")?;
            heads.insert(tenant, head(row.try_get("seq")?, row.try_get("hash")?));
        }
        // The upsert returns every head it was given; without one the chain would restart
        // at 1.
        let plan = plan(tenants, |tenant| {
            heads.remove(tenant).ok_or_else(|| {
                sqlx::Error::Protocol(format!("no approval chain head returned for {tenant:?}"))
            })
        })?;
        let (mut t, mut a, mut v, mut s, mut h) = (vec![], vec![], vec![], vec![], vec![]);
        for (e, hash) in plan.linked {
            t.push(e.tenant);
            a.push(e.approval_id);
            v.push(e.version);
            s.push(e.seq as i64);
            h.push(hash);
        }
        let (mut head_t, mut head_s, mut head_h) = (vec![], vec![], vec![]);
        for (tenant, head) in plan.heads {
            head_t.push(tenant);
            head_s.push(head.seq as i64);
            head_h.push(head.hash);
        }
        let query = sqlx::query(LINK_PG).bind(t).bind(a).bind(v).bind(s).bind(h);
        let query = query.bind(head_t).bind(head_s).bind(head_h);
        query.execute(&mut *self).await?;
        Ok(())
    }
}

/// SQLite: the heads of the tenants in a JSON array.
const HEADS_SQLITE: &str = "SELECT tenant, seq, hash FROM approval_chain \
     WHERE tenant IN (SELECT value FROM json_each($1))";

/// SQLite: each event's place and hash, from a JSON array of `{t, a, v, s, h}`.
const LINK_SQLITE: &str = "UPDATE approval_events AS e \
     SET chain_seq = u.value ->> 's', hash = u.value ->> 'h' FROM json_each($1) AS u \
     WHERE e.tenant = u.value ->> 't' AND e.approval_id = u.value ->> 'a' \
     AND e.version = u.value ->> 'v'";

/// SQLite: the new heads, from a JSON array of `{t, s, h}`.
const HEADS_SET_SQLITE: &str = "INSERT INTO approval_chain (tenant, seq, hash) \
     SELECT value ->> 't', value ->> 's', value ->> 'h' FROM json_each($1) WHERE TRUE \
     ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";

impl Link for SqliteConnection {
    /// Three statements for the whole transaction, over JSON arrays: a statement per event
    /// cost a quarter of the in-process approval writes (BENCHMARKS.md).
    async fn link(&mut self, events: Vec<ApprovalEvent>) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        let tenants = by_tenant(events);
        let names = serde_json::Value::from(tenants.keys().cloned().collect::<Vec<_>>());
        let stored: Vec<(String, i64, String)> = sqlx::query_as(HEADS_SQLITE)
            .bind(names.to_string())
            .fetch_all(&mut *self)
            .await?;
        let mut heads: BTreeMap<String, ChainHead> = stored
            .into_iter()
            .map(|(tenant, seq, hash)| (tenant, head(seq, hash)))
            .collect();
        let plan = plan(tenants, |tenant| {
            Ok(heads.remove(tenant).unwrap_or_else(ChainHead::genesis))
        })?;
        let linked: Vec<_> = plan
            .linked
            .iter()
            .map(|(e, hash)| {
                serde_json::json!({
                    "t": e.tenant, "a": e.approval_id, "v": e.version, "s": e.seq, "h": hash,
                })
            })
            .collect();
        let new_heads: Vec<_> = plan
            .heads
            .iter()
            .map(|(t, head)| serde_json::json!({"t": t, "s": head.seq, "h": head.hash}))
            .collect();
        let linked = serde_json::Value::from(linked).to_string();
        sqlx::query(LINK_SQLITE)
            .bind(linked)
            .execute(&mut *self)
            .await?;
        let new_heads = serde_json::Value::from(new_heads).to_string();
        sqlx::query(HEADS_SET_SQLITE)
            .bind(new_heads)
            .execute(&mut *self)
            .await?;
        Ok(())
    }
}

/// The columns [`event_from_row`] reads: an event joined with its approval's head.
pub(super) const EVENT_CHAIN_SELECT: &str = "SELECT e.chain_seq, e.hash, e.approval_id, \
     e.version, e.state, e.required_roles, e.consumed_by_request, e.steps, e.created_at, \
     h.integration_id, h.tool_name, h.arguments_sha256, h.requester_id, h.request_id, \
     h.created_at AS head_created_at, h.expires_at, h.created_by_key, h.principal \
     FROM approval_events e JOIN approvals h ON h.tenant = e.tenant AND h.id = e.approval_id \
     WHERE e.tenant = $1 AND e.chain_seq IS NOT NULL ORDER BY e.chain_seq";

/// `id`, `arguments_json`, `arguments_sha256` of each approval with a chained event.
pub(super) const CHAINED_ARGUMENTS: &str = "SELECT h.id, h.arguments_json, h.arguments_sha256 \
     FROM approvals h WHERE h.tenant = $1 AND EXISTS (SELECT 1 FROM approval_events e \
     WHERE e.tenant = h.tenant AND e.approval_id = h.id AND e.chain_seq IS NOT NULL)";

/// A chained event as stored, and its stored hash.
pub(super) fn event_from_row<R: super::rows::Cols>(
    tenant: &str,
    row: &R,
) -> Result<(ApprovalEvent, String), super::StoreError> {
    let event = ApprovalEvent {
        tenant: tenant.to_owned(),
        seq: row.int("chain_seq")?.max(0) as u64,
        approval_id: row.text("approval_id")?,
        version: row.int("version")?,
        state: row.text("state")?,
        required_roles: row.text("required_roles")?,
        consumed_by_request: row.opt_text("consumed_by_request")?,
        steps_json: row.text("steps")?,
        at_ms: row.int("created_at")?,
        integration_id: row.text("integration_id")?,
        tool_name: row.text("tool_name")?,
        arguments_sha256: row.text("arguments_sha256")?,
        requester_id: row.text("requester_id")?,
        request_id: row.text("request_id")?,
        created_at_ms: row.int("head_created_at")?,
        expires_at_ms: row.int("expires_at")?,
        created_by_key: row.text("created_by_key")?,
        principal: row.text("principal")?,
    };
    Ok((event, row.text("hash")?))
}
