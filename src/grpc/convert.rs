//! Proto ↔ domain conversions. Inbound conversions validate and name the offending field.

use crate::app::decide::DecideInput;
use crate::delivery::{Channel, ChannelKind, Delivery, DeliveryState, Secret};
use crate::policy::names::{
    ApprovalId, FieldError, IntegrationId, PersonId, RequestId, ToolName, check_id,
    check_optional_id, check_text,
};
use crate::policy::save::PolicyEdit;
use crate::policy::{
    Annotations, Approval, ApprovalState, ApproverRole, Person, Policy, PolicySource, Tool,
    ToolDefinition, UnixMillis,
    approval::effective_state,
    decide::{DecisionCode, Verdict},
};
use crate::proto::v1 as pb;

/// Largest JSON schema we keep for one tool.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

pub fn timestamp(t: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1000),
        nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn policy_to_proto(p: Policy) -> pb::Policy {
    match p {
        Policy::Auto => pb::Policy::Auto,
        Policy::ApprovalNeeded => pb::Policy::ApprovalNeeded,
        Policy::Disabled => pb::Policy::Disabled,
    }
}

pub fn policy_from_proto(field: &str, value: i32) -> Result<Policy, FieldError> {
    match pb::Policy::try_from(value) {
        Ok(pb::Policy::Auto) => Ok(Policy::Auto),
        Ok(pb::Policy::ApprovalNeeded) => Ok(Policy::ApprovalNeeded),
        Ok(pb::Policy::Disabled) => Ok(Policy::Disabled),
        Ok(pb::Policy::Unspecified) => Err(FieldError::new(field, "must be set")),
        Err(_) => Err(FieldError::new(
            field,
            format!("{value} is not a Policy value"),
        )),
    }
}

fn source_to_proto(s: PolicySource) -> pb::PolicySource {
    match s {
        PolicySource::Annotation => pb::PolicySource::Annotation,
        PolicySource::Verb => pb::PolicySource::Verb,
        PolicySource::Fallback => pb::PolicySource::Fallback,
        PolicySource::Admin => pb::PolicySource::Admin,
    }
}

pub fn role_to_proto(r: ApproverRole) -> pb::ApproverRole {
    match r {
        ApproverRole::Technician => pb::ApproverRole::Technician,
        ApproverRole::Manager => pb::ApproverRole::Manager,
    }
}

pub fn role_from_proto(field: &str, value: i32) -> Result<ApproverRole, FieldError> {
    match pb::ApproverRole::try_from(value) {
        Ok(pb::ApproverRole::Technician) => Ok(ApproverRole::Technician),
        Ok(pb::ApproverRole::Manager) => Ok(ApproverRole::Manager),
        Ok(pb::ApproverRole::Unspecified) => Err(FieldError::new(field, "must be set")),
        Err(_) => Err(FieldError::new(
            field,
            format!("{value} is not an ApproverRole value"),
        )),
    }
}

pub fn state_to_proto(s: ApprovalState) -> pb::ApprovalState {
    match s {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Expired => pb::ApprovalState::Expired,
        ApprovalState::Consumed => pb::ApprovalState::Consumed,
        ApprovalState::Cancelled => pb::ApprovalState::Cancelled,
    }
}

pub fn state_from_proto(field: &str, value: i32) -> Result<Option<ApprovalState>, FieldError> {
    Ok(match pb::ApprovalState::try_from(value) {
        Ok(pb::ApprovalState::Unspecified) => None,
        Ok(pb::ApprovalState::Pending) => Some(ApprovalState::Pending),
        Ok(pb::ApprovalState::Approved) => Some(ApprovalState::Approved),
        Ok(pb::ApprovalState::Denied) => Some(ApprovalState::Denied),
        Ok(pb::ApprovalState::Expired) => Some(ApprovalState::Expired),
        Ok(pb::ApprovalState::Consumed) => Some(ApprovalState::Consumed),
        Ok(pb::ApprovalState::Cancelled) => Some(ApprovalState::Cancelled),
        Err(_) => {
            return Err(FieldError::new(
                field,
                format!("{value} is not an ApprovalState value"),
            ));
        }
    })
}

pub fn verdict_to_proto(v: Verdict) -> pb::Verdict {
    match v {
        Verdict::Allow => pb::Verdict::Allow,
        Verdict::PendingApproval => pb::Verdict::PendingApproval,
        Verdict::Deny => pb::Verdict::Deny,
    }
}

pub fn code_to_proto(c: DecisionCode) -> pb::DecisionCode {
    use DecisionCode as C;
    match c {
        C::PolicyAuto => pb::DecisionCode::PolicyAuto,
        C::ToolDisabled => pb::DecisionCode::ToolDisabled,
        C::UnknownTool => pb::DecisionCode::UnknownTool,
        C::ApprovalRequired => pb::DecisionCode::ApprovalRequired,
        C::ApprovalPending => pb::DecisionCode::ApprovalPending,
        C::ApprovalGranted => pb::DecisionCode::ApprovalGranted,
        C::ApprovalDenied => pb::DecisionCode::ApprovalDenied,
        C::ApprovalExpired => pb::DecisionCode::ApprovalExpired,
        C::ApprovalConsumed => pb::DecisionCode::ApprovalConsumed,
        C::ApprovalMismatch => pb::DecisionCode::ApprovalMismatch,
        C::ManagerUnknown => pb::DecisionCode::ManagerUnknown,
    }
}

fn annotations_to_proto(a: &Annotations) -> pb::ToolAnnotations {
    pb::ToolAnnotations {
        read_only_hint: a.read_only,
        destructive_hint: a.destructive,
        idempotent_hint: a.idempotent,
        open_world_hint: a.open_world,
    }
}

fn annotations_from_proto(a: Option<pb::ToolAnnotations>) -> Annotations {
    let a = a.unwrap_or_default();
    Annotations {
        read_only: a.read_only_hint,
        destructive: a.destructive_hint,
        idempotent: a.idempotent_hint,
        open_world: a.open_world_hint,
    }
}

/// A tool as a caller sees it; agents do not see why a policy was chosen.
pub fn tool_to_proto(t: &Tool, admin_view: bool) -> pb::Tool {
    pb::Tool {
        integration_id: t.integration_id.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        input_schema_json: t.input_schema_json.clone(),
        annotations: Some(annotations_to_proto(&t.annotations)),
        policy: policy_to_proto(t.policy) as i32,
        manager_approval: t.manager_approval,
        source: if admin_view {
            source_to_proto(t.source) as i32
        } else {
            pb::PolicySource::Unspecified as i32
        },
        source_reason: if admin_view {
            t.source_reason.clone()
        } else {
            String::new()
        },
        revision: t.revision,
    }
}

pub fn definition_from_proto(
    index: usize,
    d: pb::ToolDefinition,
) -> Result<ToolDefinition, FieldError> {
    let field = |name: &str| format!("tools[{index}].{name}");
    check_id(&field("name"), &d.name)?;
    check_text(&field("description"), &d.description)?;
    if d.input_schema_json.len() > MAX_SCHEMA_BYTES {
        return Err(FieldError::new(
            field("input_schema_json"),
            format!(
                "is {} bytes; at most {MAX_SCHEMA_BYTES}",
                d.input_schema_json.len()
            ),
        ));
    }
    if !d.input_schema_json.is_empty() {
        crate::policy::canonical::parse_arguments(&d.input_schema_json, MAX_SCHEMA_BYTES)
            .map_err(|e| FieldError::new(field("input_schema_json"), e.to_string()))?;
    }
    Ok(ToolDefinition {
        name: d.name,
        description: d.description,
        input_schema_json: d.input_schema_json,
        annotations: annotations_from_proto(d.annotations),
    })
}

pub fn policy_edit_from_proto(index: usize, c: pb::PolicyChange) -> Result<PolicyEdit, FieldError> {
    let field = |name: &str| format!("changes[{index}].{name}");
    check_id(&field("integration_id"), &c.integration_id)?;
    check_id(&field("tool_name"), &c.tool_name)?;
    let policy = policy_from_proto(&field("policy"), c.policy)?;
    if c.manager_approval == Some(true) && policy != Policy::ApprovalNeeded {
        return Err(FieldError::new(
            field("manager_approval"),
            "applies only to POLICY_APPROVAL_NEEDED",
        ));
    }
    Ok(PolicyEdit {
        integration_id: c.integration_id,
        tool_name: c.tool_name,
        policy,
        manager_approval: c.manager_approval,
    })
}

pub fn person_from_proto(index: usize, p: pb::Person) -> Result<Person, FieldError> {
    let field = |name: &str| format!("people[{index}].{name}");
    check_id(&field("id"), &p.id)?;
    check_optional_id(&field("manager_id"), &p.manager_id)?;
    check_text(&field("display_name"), &p.display_name)?;
    check_text(&field("email"), &p.email)?;
    check_optional_id(&field("slack_user_id"), &p.slack_user_id)?;
    if p.manager_id == p.id {
        return Err(FieldError::new(
            field("manager_id"),
            "a person cannot be their own manager",
        ));
    }
    Ok(Person {
        id: p.id,
        display_name: p.display_name,
        email: p.email,
        manager_id: p.manager_id,
        technician: p.technician,
        slack_user_id: p.slack_user_id,
    })
}

pub fn approval_to_proto(a: &Approval, now: UnixMillis) -> pb::Approval {
    pb::Approval {
        id: a.id.clone(),
        state: state_to_proto(effective_state(a, now)) as i32,
        integration_id: a.integration_id.clone(),
        tool_name: a.tool_name.clone(),
        arguments_json: a.arguments_json.clone(),
        arguments_sha256: a.arguments_sha256.clone(),
        requester_id: a.requester_id.clone(),
        request_id: a.request_id.clone(),
        required_roles: a
            .required_roles
            .iter()
            .map(|r| role_to_proto(*r) as i32)
            .collect(),
        steps: a
            .steps
            .iter()
            .map(|s| pb::ApprovalStep {
                role: role_to_proto(s.role) as i32,
                approver_id: s.approver_id.clone(),
                approved: s.approved,
                comment: s.comment.clone(),
                decided_at: Some(timestamp(s.decided_at)),
            })
            .collect(),
        created_at: Some(timestamp(a.created_at)),
        expires_at: Some(timestamp(a.expires_at)),
        consumed_by_request_id: a.consumed_by_request.clone().unwrap_or_default(),
        consumed_at: a.consumed_at.map(timestamp),
    }
}

/// A Decide request as the application takes it, every id checked.
pub fn decide_input(req: pb::DecideRequest) -> Result<DecideInput, FieldError> {
    Ok(DecideInput {
        integration_id: IntegrationId::parse("integration_id", req.integration_id)?,
        tool_name: ToolName::parse("tool_name", req.tool_name)?,
        arguments_json: req.arguments_json,
        requester_id: PersonId::parse_optional("requester_id", req.requester_id)?,
        request_id: RequestId::parse_optional("request_id", req.request_id)?,
        approval_id: ApprovalId::parse_optional("approval_id", req.approval_id)?,
        min_revision: req.min_revision,
    })
}

pub fn revision_to_proto(r: &crate::store::RevisionRecord) -> pb::Revision {
    let kind = match r.kind.as_str() {
        "connect" => pb::RevisionKind::Connect,
        "set_policy" => pb::RevisionKind::SetPolicy,
        "rollback" => pb::RevisionKind::Rollback,
        _ => pb::RevisionKind::Unspecified,
    };
    let policy = |p: Option<Policy>| p.map_or(pb::Policy::Unspecified, policy_to_proto) as i32;
    pb::Revision {
        revision: r.revision,
        saved_at: Some(timestamp(r.saved_at)),
        actor_key_id: r.actor_key_id.clone(),
        actor_name: r.actor_name.clone(),
        actor_role: r.actor_role.clone(),
        kind: kind as i32,
        comment: r.comment.clone(),
        diffs: r
            .diffs
            .iter()
            .map(|d| pb::PolicyDiff {
                integration_id: d.integration_id.clone(),
                tool_name: d.tool_name.clone(),
                policy_before: policy(d.policy_before),
                policy_after: policy(d.policy_after),
                manager_approval_before: d.manager_before,
                manager_approval_after: d.manager_after,
            })
            .collect(),
        hash: r.hash.clone(),
        // The first revision of a chain follows the genesis hash.
        previous_hash: if r.previous_hash.is_empty() && !r.hash.is_empty() {
            crate::policy::audit::GENESIS.to_owned()
        } else {
            r.previous_hash.clone()
        },
    }
}

/// A channel from a request: its kind named, every other check in the use case.
pub fn channel_from_proto(c: pb::NotificationChannel) -> Result<Channel, FieldError> {
    let kind = match pb::ChannelKind::try_from(c.kind) {
        Ok(pb::ChannelKind::Webhook) => ChannelKind::Webhook,
        Ok(pb::ChannelKind::Slack) => ChannelKind::Slack,
        Ok(pb::ChannelKind::Unspecified) => {
            return Err(FieldError::new(
                "channel.kind",
                "is required: CHANNEL_KIND_WEBHOOK or CHANNEL_KIND_SLACK",
            ));
        }
        Err(_) => {
            return Err(FieldError::new(
                "channel.kind",
                format!("{} is not a channel kind", c.kind),
            ));
        }
    };
    Ok(Channel {
        id: c.id,
        kind,
        url: c.url,
        secret: Secret::new(c.secret),
        enabled: c.enabled,
        slack_channel: c.slack_channel,
        slack_signing_secret: Secret::new(c.slack_signing_secret),
    })
}

/// A channel as clients see it: secrets blank, always.
pub fn channel_to_proto(c: &Channel) -> pb::NotificationChannel {
    let kind = match c.kind {
        ChannelKind::Webhook => pb::ChannelKind::Webhook,
        ChannelKind::Slack => pb::ChannelKind::Slack,
    };
    pb::NotificationChannel {
        id: c.id.clone(),
        kind: kind as i32,
        url: c.url.clone(),
        secret: String::new(),
        enabled: c.enabled,
        slack_channel: c.slack_channel.clone(),
        slack_signing_secret: String::new(),
    }
}

pub fn delivery_state_to_proto(s: DeliveryState) -> pb::DeliveryState {
    match s {
        DeliveryState::Pending => pb::DeliveryState::Pending,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Failed => pb::DeliveryState::Failed,
    }
}

/// A filter on a delivery state; unspecified is none.
pub fn delivery_state_from_proto(
    field: &str,
    value: i32,
) -> Result<Option<DeliveryState>, FieldError> {
    match pb::DeliveryState::try_from(value) {
        Ok(pb::DeliveryState::Unspecified) => Ok(None),
        Ok(pb::DeliveryState::Pending) => Ok(Some(DeliveryState::Pending)),
        Ok(pb::DeliveryState::Delivered) => Ok(Some(DeliveryState::Delivered)),
        Ok(pb::DeliveryState::Failed) => Ok(Some(DeliveryState::Failed)),
        Err(_) => Err(FieldError::new(
            field,
            format!("{value} is not a delivery state"),
        )),
    }
}

pub fn delivery_to_proto(d: &Delivery) -> pb::Delivery {
    pb::Delivery {
        id: d.id.clone(),
        channel_id: d.channel_id.clone(),
        approval_id: d.approval_id.clone(),
        event_type: d.event_type.clone(),
        state: delivery_state_to_proto(d.state) as i32,
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        created_at: Some(timestamp(d.created_at)),
        next_attempt_at: (d.state == DeliveryState::Pending).then(|| timestamp(d.next_attempt_at)),
        delivered_at: d.delivered_at.map(timestamp),
    }
}
