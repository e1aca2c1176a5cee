//! Row decoding shared by both backends: the columns are named alike in both schemas, so
//! one set of decoders turns a row of either into domain types.

use super::StoreError;
use crate::policy::{
    Annotations, Approval, ApprovalState, ApprovalStep, ApproverRole, Caller, Person, Policy,
    PolicySource, RevisionChanges, Role, Tool, ToolChange, UnixMillis,
};
use sqlx::Row;

/// Typed column access by name, for either backend's row.
pub(crate) trait Cols {
    fn text(&self, name: &str) -> Result<String, StoreError>;
    fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, name: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, name: &str) -> Result<bool, StoreError>;
    fn opt_flag(&self, name: &str) -> Result<Option<bool>, StoreError>;
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, name: &str) -> Result<String, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn int(&self, name: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn flag(&self, name: &str) -> Result<bool, StoreError> {
                Ok(self.try_get(name)?)
            }
            fn opt_flag(&self, name: &str) -> Result<Option<bool>, StoreError> {
                Ok(self.try_get(name)?)
            }
        }
    };
}

impl_cols!(sqlx::sqlite::SqliteRow);
impl_cols!(sqlx::postgres::PgRow);

pub(crate) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

/// Revisions are stored as signed 64-bit integers and are never negative.
pub(crate) fn u64_of(v: i64) -> u64 {
    v.max(0) as u64
}

/// The twelve tool columns, in the order [`super::sql`] binds them.
pub(crate) const TOOL_COLUMNS: &str = "integration_id, name, description, input_schema_json, \
     read_only_hint, destructive_hint, idempotent_hint, open_world_hint, policy, \
     manager_approval, source, source_reason";

/// The approval columns both backends read from their `approval_current` view (the
/// immutable head and the latest event: `version`, `state`, `required_roles`,
/// `consumed_by_request` and the `steps` as JSON).
pub(crate) const APPROVAL_COLUMNS: &str = "seq, id, state, integration_id, tool_name, \
     arguments_json, arguments_sha256, requester_id, request_id, required_roles, created_at, \
     expires_at, created_by_key, principal, consumed_by_request, steps, version, updated_at";

pub(crate) fn tool_from_row<R: Cols>(row: &R, revision: u64) -> Result<Tool, StoreError> {
    let policy: String = row.text("policy")?;
    let source: String = row.text("source")?;
    Ok(Tool {
        integration_id: row.text("integration_id")?,
        name: row.text("name")?,
        description: row.text("description")?,
        input_schema_json: row.text("input_schema_json")?,
        annotations: Annotations {
            read_only: row.opt_flag("read_only_hint")?,
            destructive: row.opt_flag("destructive_hint")?,
            idempotent: row.opt_flag("idempotent_hint")?,
            open_world: row.opt_flag("open_world_hint")?,
        },
        policy: Policy::parse(&policy).ok_or_else(|| corrupt("policy", &policy))?,
        manager_approval: row.flag("manager_approval")?,
        source: PolicySource::parse(&source).ok_or_else(|| corrupt("source", &source))?,
        source_reason: row.text("source_reason")?,
        revision,
    })
}

/// A tool row that carries its own `revision` column.
pub(crate) fn current_tool_from_row<R: Cols>(row: &R) -> Result<Tool, StoreError> {
    tool_from_row(row, u64_of(row.int("revision")?))
}

/// Groups `tool_changes` rows (ordered by revision) into one entry per revision.
pub(crate) fn group_changes<R: Cols>(rows: &[R]) -> Result<Vec<RevisionChanges>, StoreError> {
    let mut out: Vec<RevisionChanges> = Vec::new();
    for row in rows {
        let revision = u64_of(row.int("revision")?);
        let removed: bool = row.flag("removed")?;
        let change = if removed {
            ToolChange::Remove {
                integration_id: row.text("integration_id")?,
                name: row.text("name")?,
            }
        } else {
            ToolChange::Upsert(tool_from_row(row, revision)?)
        };
        match out.last_mut() {
            Some(last) if last.revision == revision => last.changes.push(change),
            _ => out.push(RevisionChanges {
                revision,
                changes: vec![change],
            }),
        }
    }
    Ok(out)
}

pub(crate) fn roles_to_text(roles: &[ApproverRole]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn roles_from_text(text: &str) -> Result<Vec<ApproverRole>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| ApproverRole::parse(s).ok_or_else(|| corrupt("approver role", s)))
        .collect()
}

/// An approval, from the [`APPROVAL_COLUMNS`] of a row.
pub(crate) fn approval_from_row<R: Cols>(row: &R) -> Result<Approval, StoreError> {
    let state: String = row.text("state")?;
    let roles: String = row.text("required_roles")?;
    Ok(Approval {
        id: row.text("id")?,
        state: ApprovalState::parse(&state).ok_or_else(|| corrupt("approval state", &state))?,
        integration_id: row.text("integration_id")?,
        tool_name: row.text("tool_name")?,
        arguments_json: row.text("arguments_json")?,
        arguments_sha256: row.text("arguments_sha256")?,
        requester_id: row.text("requester_id")?,
        request_id: row.text("request_id")?,
        required_roles: roles_from_text(&roles)?,
        steps: steps_from_json(&row.text("steps")?)?,
        created_at: UnixMillis(row.int("created_at")?),
        expires_at: UnixMillis(row.int("expires_at")?),
        created_by_key: row.text("created_by_key")?,
        principal: row.text("principal")?,
        consumed_by_request: row.opt_text("consumed_by_request")?,
        // The latest event's time, which for a consumed approval is its consumption.
        consumed_at: (state == "consumed")
            .then(|| row.int("updated_at").map(UnixMillis))
            .transpose()?,
    })
}

/// When a change to an approval happened: its consumption (so that a consumed approval
/// reads back the time its ALLOW was given), or now.
pub(crate) fn change_time(a: &Approval) -> i64 {
    a.consumed_at.unwrap_or_else(UnixMillis::now).0
}

/// A page of approvals from rows fetched with one more than `limit`, and the id of the last
/// one when there is more.
pub(crate) fn approval_page<R: Cols>(
    rows: &[R],
    limit: u32,
) -> Result<(Vec<Approval>, Option<String>), StoreError> {
    let page = rows.len().min(limit as usize);
    let approvals = rows[..page]
        .iter()
        .map(approval_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if rows.len() > page && page > 0 {
        Some(rows[page - 1].text("id")?)
    } else {
        None
    };
    Ok((approvals, next))
}

pub(crate) fn person_from_row<R: Cols>(row: &R) -> Result<Person, StoreError> {
    Ok(Person {
        id: row.text("id")?,
        display_name: row.text("display_name")?,
        email: row.text("email")?,
        manager_id: row.text("manager_id")?,
        technician: row.flag("technician")?,
        slack_user_id: row.text("slack_user_id")?,
    })
}

/// A key row (`id, tenant, role, name`) as the caller it stands for.
pub(crate) fn caller_from_row<R: Cols>(row: &R) -> Result<Caller, StoreError> {
    let role: String = row.text("role")?;
    let key_id = row.text("id")?;
    let name = row.opt_text("name")?;
    Ok(Caller {
        principal: Caller::principal_of(&key_id, name.as_deref()),
        key_id,
        tenant: row.text("tenant")?,
        role: Role::parse(&role).ok_or_else(|| corrupt("role", &role))?,
    })
}

/// Stamps the revision on every upserted tool.
pub(crate) fn stamp(changes: Vec<ToolChange>, revision: u64) -> Vec<ToolChange> {
    changes
        .into_iter()
        .map(|c| match c {
            ToolChange::Upsert(mut t) => {
                t.revision = revision;
                ToolChange::Upsert(t)
            }
            removal => removal,
        })
        .collect()
}

/// One step as `approval_events.steps` holds it (and as the database aggregates it).
#[derive(serde::Serialize, serde::Deserialize)]
struct StepJson<S> {
    role: S,
    approver_id: S,
    approved: bool,
    comment: S,
    decided_at: i64,
}

/// An approval's steps, from a JSON array of step objects.
pub(crate) fn steps_from_json(json: &str) -> Result<Vec<ApprovalStep>, StoreError> {
    let steps: Vec<StepJson<String>> =
        serde_json::from_str(json).map_err(|e| corrupt("approval steps", &e.to_string()))?;
    steps
        .into_iter()
        .map(|s| {
            Ok(ApprovalStep {
                role: ApproverRole::parse(&s.role)
                    .ok_or_else(|| corrupt("approver role", &s.role))?,
                approver_id: s.approver_id,
                approved: s.approved,
                comment: s.comment,
                decided_at: UnixMillis(s.decided_at),
            })
        })
        .collect()
}

/// An approval's steps as the JSON array [`steps_from_json`] reads.
pub(crate) fn steps_to_json(steps: &[ApprovalStep]) -> String {
    let steps: Vec<StepJson<&str>> = steps
        .iter()
        .map(|s| StepJson {
            role: s.role.as_str(),
            approver_id: &s.approver_id,
            approved: s.approved,
            comment: &s.comment,
            decided_at: s.decided_at.0,
        })
        .collect();
    // Strings, booleans and integers only: serialising cannot fail.
    serde_json::to_string(&steps).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn policy_of(text: String) -> Result<Policy, StoreError> {
    Policy::parse(&text).ok_or_else(|| corrupt("policy", &text))
}

/// A `revisions` row joined with its key's name and role; diffs are added by the caller.
pub(crate) fn revision_from_row<R: Cols>(row: &R) -> Result<super::RevisionRecord, StoreError> {
    Ok(super::RevisionRecord {
        revision: u64_of(row.int("revision")?),
        saved_at: UnixMillis(row.int("created_at")?),
        actor_key_id: row.text("actor_key_id")?,
        actor_name: row.text("actor_name")?,
        actor_role: row.text("actor_role")?,
        kind: row.text("kind")?,
        comment: row.text("comment")?,
        hash: row.text("hash")?,
        previous_hash: row.text("previous_hash")?,
        diffs: Vec::new(),
    })
}

/// A `tool_changes` row with its previous row's policy and manager switch.
pub(crate) fn diff_from_row<R: Cols>(row: &R) -> Result<super::PolicyDiff, StoreError> {
    Ok(super::PolicyDiff {
        integration_id: row.text("integration_id")?,
        tool_name: row.text("name")?,
        policy_before: row.opt_text("policy_before")?.map(policy_of).transpose()?,
        policy_after: row.opt_text("policy")?.map(policy_of).transpose()?,
        manager_before: row.opt_flag("manager_before")?.unwrap_or(false),
        manager_after: row.opt_flag("manager_approval")?.unwrap_or(false),
    })
}
