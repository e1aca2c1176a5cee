//! The policy core: domain types and the pure rules of toolgate.
//!
//! Nothing under `policy/` knows about tonic, prost or sqlx. Seeding, decisions, approval
//! rules and canonical hashing are plain functions over these types.

pub mod approval;
pub mod audit;
pub mod canonical;
pub mod decide;
pub mod names;
pub mod save;
pub mod seed;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strum::{Display, EnumString, IntoStaticStr};

/// What happens when an agent wants to run a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "snake_case")]
pub enum Policy {
    Auto,
    ApprovalNeeded,
    Disabled,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// Which rule chose a tool's current policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "snake_case")]
pub enum PolicySource {
    Annotation,
    Verb,
    Fallback,
    Admin,
}

impl PolicySource {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// MCP-style hints; `None` means the integration did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Annotations {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

/// A tool as an integration offers it, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub input_schema_json: String,
    pub annotations: Annotations,
}

/// A tool with its policy: the unit of configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub integration_id: String,
    pub name: String,
    pub description: String,
    pub input_schema_json: String,
    pub annotations: Annotations,
    pub policy: Policy,
    /// Invariant: true only when `policy` is `ApprovalNeeded`.
    pub manager_approval: bool,
    pub source: PolicySource,
    pub source_reason: String,
    /// The revision that last changed this tool.
    pub revision: u64,
}

impl Tool {
    /// The approver roles this tool's policy requires now; empty unless approval is needed.
    pub fn required_roles(&self) -> Vec<ApproverRole> {
        required_roles(self.policy, self.manager_approval)
    }
}

pub fn required_roles(policy: Policy, manager_approval: bool) -> Vec<ApproverRole> {
    match (policy, manager_approval) {
        (Policy::ApprovalNeeded, false) => vec![ApproverRole::Technician],
        (Policy::ApprovalNeeded, true) => vec![ApproverRole::Technician, ApproverRole::Manager],
        _ => Vec::new(),
    }
}

/// One tool's entry in a saved revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChange {
    Upsert(Tool),
    Remove {
        integration_id: String,
        name: String,
    },
}

impl ToolChange {
    pub fn key(&self) -> (&str, &str) {
        match self {
            ToolChange::Upsert(t) => (&t.integration_id, &t.name),
            ToolChange::Remove {
                integration_id,
                name,
            } => (integration_id, name),
        }
    }
}

/// Everything one saved revision changed, in the tenant's change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionChanges {
    pub revision: u64,
    pub changes: Vec<ToolChange>,
}

/// A person of the tenant's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: String,
    pub display_name: String,
    pub email: String,
    /// Empty when the person has no manager of record.
    pub manager_id: String,
    pub technician: bool,
    /// Slack's id of the person (a manager's request goes to it as a direct message); empty
    /// if none.
    pub slack_user_id: String,
}

/// The role of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    Agent,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// Who is calling: what an authenticated API key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub tenant: String,
    pub role: Role,
    /// Who the key speaks for: the keys of a tenant created with the same name are one
    /// principal (a key and the keys that rotate it), a key without a name is its own. An
    /// approval and its request id belong to the principal that asked.
    pub principal: String,
}

impl Caller {
    /// The principal of key `key_id`, named `name` (if it has a name).
    pub fn principal_of(key_id: &str, name: Option<&str>) -> String {
        match name {
            Some(name) => format!("name:{name}"),
            None => format!("key:{key_id}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, IntoStaticStr, EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum ApproverRole {
    Technician,
    Manager,
}

impl ApproverRole {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
    Cancelled,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// Whether the approval can still change by an approver's decision or by time.
    pub fn is_open(self) -> bool {
        matches!(self, ApprovalState::Pending | ApprovalState::Approved)
    }
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalStep {
    pub role: ApproverRole,
    pub approver_id: String,
    pub approved: bool,
    pub comment: String,
    pub decided_at: UnixMillis,
}

/// A request to run one exact tool call, and the decisions on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub state: ApprovalState,
    pub integration_id: String,
    pub tool_name: String,
    pub arguments_json: String,
    pub arguments_sha256: String,
    pub requester_id: String,
    pub request_id: String,
    pub required_roles: Vec<ApproverRole>,
    pub steps: Vec<ApprovalStep>,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    /// The API key that asked for it (an agent sees only its own).
    pub created_by_key: String,
    /// The principal that asked for it ([`Caller::principal`]): only its keys may use it.
    pub principal: String,
    /// The request that consumed it (its one ALLOW).
    pub consumed_by_request: Option<String>,
    /// When it was consumed.
    pub consumed_at: Option<UnixMillis>,
}

/// Milliseconds since the Unix epoch: the one clock type of the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        UnixMillis(ms)
    }

    pub fn plus(self, d: Duration) -> Self {
        UnixMillis(self.0.saturating_add(d.as_millis() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are stored in the database and sent as labels: derived by strum, they must
    /// stay exactly the strings they were, and parse only from those.
    #[test]
    fn enum_names_are_the_stored_strings_and_parse_back_only_from_them() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            pairs: &[(T, &str)],
            as_str: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            for &(value, name) in pairs {
                assert_eq!(as_str(value), name);
                assert_eq!(parse(name), Some(value), "{name}");
                assert_eq!(parse(&name.to_uppercase()), None, "{name}");
            }
        }
        use {ApprovalState as S, Policy as P, PolicySource as Src};
        let policies = [
            (P::Auto, "auto"),
            (P::ApprovalNeeded, "approval_needed"),
            (P::Disabled, "disabled"),
        ];
        check(&policies, Policy::as_str, Policy::parse);
        assert_eq!(Policy::parse("approval-needed"), None);
        assert_eq!(Policy::ApprovalNeeded.to_string(), "approval_needed");
        let sources = [
            (Src::Annotation, "annotation"),
            (Src::Verb, "verb"),
            (Src::Fallback, "fallback"),
            (Src::Admin, "admin"),
        ];
        check(&sources, PolicySource::as_str, PolicySource::parse);
        let roles = [
            (Role::Agent, "agent"),
            (Role::Approver, "approver"),
            (Role::Admin, "admin"),
        ];
        check(&roles, Role::as_str, Role::parse);
        assert_eq!(Role::Approver.to_string(), "approver");
        let approver_roles = [
            (ApproverRole::Technician, "technician"),
            (ApproverRole::Manager, "manager"),
        ];
        check(&approver_roles, ApproverRole::as_str, ApproverRole::parse);
        let states = [
            (S::Pending, "pending"),
            (S::Approved, "approved"),
            (S::Denied, "denied"),
            (S::Expired, "expired"),
            (S::Consumed, "consumed"),
            (S::Cancelled, "cancelled"),
        ];
        check(&states, ApprovalState::as_str, ApprovalState::parse);
        assert_eq!(ApprovalState::parse(""), None);
    }
}
