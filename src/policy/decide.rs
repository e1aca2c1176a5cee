//! Decide, step by step: the pure rules from a tool's current policy and, when one is
//! presented, an approval to a verdict.

use super::{Approval, ApprovalState, ApproverRole, Person, Policy, Tool, UnixMillis};
use std::borrow::Cow;

/// Named as in the proto without its prefix (`ALLOW`), for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Allow,
    PendingApproval,
    Deny,
}

/// Why a verdict was reached. Named as in the proto without its prefix (`POLICY_AUTO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum DecisionCode {
    PolicyAuto,
    ToolDisabled,
    UnknownTool,
    ApprovalRequired,
    ApprovalPending,
    ApprovalGranted,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalConsumed,
    ApprovalMismatch,
    ManagerUnknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub code: DecisionCode,
    pub reason: Cow<'static, str>,
}

impl Decision {
    fn new(verdict: Verdict, code: DecisionCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Decision {
            verdict,
            code,
            reason: reason.into(),
        }
    }

    pub fn deny(code: DecisionCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Decision::new(Verdict::Deny, code, reason)
    }
}

/// Step 1 of Decide: what the policy alone says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutcome<'a> {
    /// Final without any approval: ALLOW for `auto`, DENY for `disabled` and unknown tools.
    Final(Decision),
    /// The tool needs approval from these roles.
    NeedsApproval(&'a Tool),
}

/// The hot path: answered from the in-memory snapshot, no I/O.
pub fn decide_by_policy(tool: Option<&Tool>) -> PolicyOutcome<'_> {
    match tool {
        None => PolicyOutcome::Final(Decision::deny(
            DecisionCode::UnknownTool,
            "no such tool in this tenant",
        )),
        Some(t) => match t.policy {
            Policy::Auto => PolicyOutcome::Final(Decision::new(
                Verdict::Allow,
                DecisionCode::PolicyAuto,
                "policy is auto",
            )),
            Policy::Disabled => PolicyOutcome::Final(Decision::deny(
                DecisionCode::ToolDisabled,
                "tool is disabled",
            )),
            Policy::ApprovalNeeded => PolicyOutcome::NeedsApproval(t),
        },
    }
}

/// Why an approval cannot be asked for this call: a requester without a manager of record.
pub fn manager_precondition(tool: &Tool, requester: Option<&Person>) -> Option<Decision> {
    let has_manager = requester.is_some_and(|p| !p.manager_id.is_empty());
    (tool.manager_approval && !has_manager).then(|| {
        Decision::deny(
            DecisionCode::ManagerUnknown,
            "tool needs manager approval and the requester has no manager of record",
        )
    })
}

/// What a Decide call binds an approval to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBinding<'a> {
    pub integration_id: &'a str,
    pub tool_name: &'a str,
    pub requester_id: &'a str,
    pub arguments_sha256: &'a str,
}

/// The state an approval's steps put it in, for the roles required now.
pub fn state_from_steps(approval: &Approval, required: &[ApproverRole]) -> ApprovalState {
    if approval.steps.iter().any(|s| !s.approved) {
        return ApprovalState::Denied;
    }
    let all_approved = required
        .iter()
        .all(|role| approval.steps.iter().any(|s| s.role == *role && s.approved));
    if all_approved {
        ApprovalState::Approved
    } else {
        ApprovalState::Pending
    }
}

/// Brings an open approval in line with the policy in force now: its required roles become
/// the tool's, and its state follows from its steps. Returns whether anything changed.
pub fn reconcile(approval: &mut Approval, tool: &Tool) -> bool {
    if !approval.state.is_open() || tool.policy != Policy::ApprovalNeeded {
        return false;
    }
    let required = tool.required_roles();
    let state = state_from_steps(approval, &required);
    let changed = approval.required_roles != required || approval.state != state;
    approval.required_roles = required;
    approval.state = state;
    changed
}

/// Step 3 of Decide, for a call presenting an approval of a tool that still needs one.
///
/// Returns the decision and, when the approval must change (expired, roles reconciled,
/// consumed), its new value to save in the same transaction that read it.
pub fn decide_with_approval(
    approval: &Approval,
    tool: &Tool,
    requester: Option<&Person>,
    call: &CallBinding<'_>,
    request_id: &str,
    now: UnixMillis,
) -> (Decision, Option<Approval>) {
    use DecisionCode as C;
    if !binds(approval, call) {
        return (
            Decision::deny(
                C::ApprovalMismatch,
                "the approval (or this request_id) binds a different tool, requester or arguments",
            ),
            None,
        );
    }
    match approval.state {
        // One approval, one ALLOW, ever: a retry of the request that consumed it is
        // refused too. The approval says which request consumed it and when, so a backend
        // whose answer was lost can tell that its own request had the ALLOW.
        ApprovalState::Consumed => {
            let reason = if approval.consumed_by_request.as_deref() == Some(request_id) {
                "approval was already used, by this request_id: its ALLOW was given once"
            } else {
                "approval was already used, by another request"
            };
            return (Decision::deny(C::ApprovalConsumed, reason), None);
        }
        ApprovalState::Denied => {
            return (
                Decision::deny(C::ApprovalDenied, "an approver said no"),
                None,
            );
        }
        ApprovalState::Cancelled => {
            return (
                Decision::deny(C::ApprovalDenied, "approval was cancelled"),
                None,
            );
        }
        ApprovalState::Expired => {
            return (Decision::deny(C::ApprovalExpired, "approval expired"), None);
        }
        ApprovalState::Pending | ApprovalState::Approved => {}
    }
    let mut next = approval.clone();
    if now >= approval.expires_at {
        next.state = ApprovalState::Expired;
        return (
            Decision::deny(C::ApprovalExpired, "approval expired"),
            Some(next),
        );
    }
    let changed = reconcile(&mut next, tool);
    if let Some(deny) = manager_precondition(tool, requester) {
        return (deny, changed.then_some(next));
    }
    match next.state {
        ApprovalState::Approved => {
            next.state = ApprovalState::Consumed;
            next.consumed_by_request = Some(request_id.to_owned());
            next.consumed_at = Some(now);
            (granted(), Some(next))
        }
        ApprovalState::Denied => (
            Decision::deny(C::ApprovalDenied, "an approver said no"),
            changed.then_some(next),
        ),
        _ => (
            Decision::new(
                Verdict::PendingApproval,
                C::ApprovalPending,
                "waiting for approval",
            ),
            changed.then_some(next),
        ),
    }
}

fn granted() -> Decision {
    Decision::new(
        Verdict::Allow,
        DecisionCode::ApprovalGranted,
        "every required approver said yes",
    )
}

fn binds(approval: &Approval, call: &CallBinding<'_>) -> bool {
    approval.integration_id == call.integration_id
        && approval.tool_name == call.tool_name
        && approval.requester_id == call.requester_id
        && approval.arguments_sha256 == call.arguments_sha256
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Annotations, ApprovalStep, PolicySource};

    fn tool(policy: Policy, manager: bool) -> Tool {
        Tool {
            integration_id: "entra".into(),
            name: "add_user_to_group".into(),
            description: String::new(),
            input_schema_json: String::new(),
            annotations: Annotations::default(),
            policy,
            manager_approval: manager,
            source: PolicySource::Admin,
            source_reason: String::new(),
            revision: 1,
        }
    }

    fn approval(required: Vec<ApproverRole>) -> Approval {
        Approval {
            id: "a1".into(),
            state: ApprovalState::Pending,
            integration_id: "entra".into(),
            tool_name: "add_user_to_group".into(),
            arguments_json: "{}".into(),
            arguments_sha256: "h".into(),
            requester_id: "alice".into(),
            request_id: "r1".into(),
            required_roles: required,
            steps: vec![],
            created_at: UnixMillis(0),
            expires_at: UnixMillis(1000),
            created_by_key: "k".into(),
            principal: "key:k".into(),
            consumed_by_request: None,
            consumed_at: None,
        }
    }

    fn step(role: ApproverRole, who: &str, yes: bool) -> ApprovalStep {
        ApprovalStep {
            role,
            approver_id: who.into(),
            approved: yes,
            comment: String::new(),
            decided_at: UnixMillis(1),
        }
    }

    const CALL: CallBinding<'static> = CallBinding {
        integration_id: "entra",
        tool_name: "add_user_to_group",
        requester_id: "alice",
        arguments_sha256: "h",
    };

    fn alice_with_manager() -> Person {
        Person {
            id: "alice".into(),
            display_name: String::new(),
            email: String::new(),
            manager_id: "mgr".into(),
            technician: false,
            slack_user_id: String::new(),
        }
    }

    #[test]
    fn policy_alone_decides_auto_disabled_and_unknown() {
        let auto = tool(Policy::Auto, false);
        let disabled = tool(Policy::Disabled, false);
        let needs = tool(Policy::ApprovalNeeded, false);
        let code = |o: PolicyOutcome<'_>| match o {
            PolicyOutcome::Final(d) => Some((d.verdict, d.code)),
            PolicyOutcome::NeedsApproval(_) => None,
        };
        assert_eq!(
            code(decide_by_policy(Some(&auto))),
            Some((Verdict::Allow, DecisionCode::PolicyAuto))
        );
        assert_eq!(
            code(decide_by_policy(Some(&disabled))),
            Some((Verdict::Deny, DecisionCode::ToolDisabled))
        );
        assert_eq!(
            code(decide_by_policy(None)),
            Some((Verdict::Deny, DecisionCode::UnknownTool))
        );
        assert_eq!(code(decide_by_policy(Some(&needs))), None);
    }

    #[test]
    fn approved_approval_gives_one_allow_ever_even_to_a_retry_of_the_consuming_request() {
        let t = tool(Policy::ApprovalNeeded, false);
        let mut a = approval(vec![ApproverRole::Technician]);
        a.steps.push(step(ApproverRole::Technician, "tech", true));
        a.state = ApprovalState::Approved;
        let (d, next) = decide_with_approval(&a, &t, None, &CALL, "r1", UnixMillis(5));
        assert_eq!(d.code, DecisionCode::ApprovalGranted);
        let consumed = next.expect("consumption is saved");
        assert_eq!(consumed.state, ApprovalState::Consumed);
        assert_eq!(consumed.consumed_by_request.as_deref(), Some("r1"));
        assert_eq!(consumed.consumed_at, Some(UnixMillis(5)));
        for retry in ["r1", "r2"] {
            let (d, next) = decide_with_approval(&consumed, &t, None, &CALL, retry, UnixMillis(6));
            assert_eq!(
                (d.verdict, d.code),
                (Verdict::Deny, DecisionCode::ApprovalConsumed)
            );
            assert!(next.is_none(), "a consumed approval never changes again");
        }
    }

    #[test]
    fn any_changed_bound_field_is_a_mismatch() {
        let t = tool(Policy::ApprovalNeeded, false);
        let a = approval(vec![ApproverRole::Technician]);
        for call in [
            CallBinding {
                integration_id: "other",
                ..CALL
            },
            CallBinding {
                tool_name: "other",
                ..CALL
            },
            CallBinding {
                requester_id: "bob",
                ..CALL
            },
            CallBinding {
                arguments_sha256: "other",
                ..CALL
            },
        ] {
            let (d, next) = decide_with_approval(&a, &t, None, &call, "r1", UnixMillis(5));
            assert_eq!(d.code, DecisionCode::ApprovalMismatch);
            assert!(next.is_none());
        }
    }

    #[test]
    fn expiry_is_saved_and_denied() {
        let t = tool(Policy::ApprovalNeeded, false);
        let a = approval(vec![ApproverRole::Technician]);
        let (d, next) = decide_with_approval(&a, &t, None, &CALL, "r1", UnixMillis(1000));
        assert_eq!(d.code, DecisionCode::ApprovalExpired);
        assert_eq!(next.map(|a| a.state), Some(ApprovalState::Expired));
    }

    #[test]
    fn a_role_the_policy_now_requires_is_added_and_waited_for() {
        let t = tool(Policy::ApprovalNeeded, true);
        let mut a = approval(vec![ApproverRole::Technician]);
        a.steps.push(step(ApproverRole::Technician, "tech", true));
        a.state = ApprovalState::Approved;
        let alice = alice_with_manager();
        let (d, next) = decide_with_approval(&a, &t, Some(&alice), &CALL, "r1", UnixMillis(5));
        assert_eq!(
            (d.verdict, d.code),
            (Verdict::PendingApproval, DecisionCode::ApprovalPending)
        );
        let next = next.expect("roles are reconciled");
        assert_eq!(
            next.required_roles,
            vec![ApproverRole::Technician, ApproverRole::Manager]
        );
        assert_eq!(next.state, ApprovalState::Pending);
        // Without a manager of record it can never be satisfied: fail closed.
        let (d, _) = decide_with_approval(&a, &t, None, &CALL, "r1", UnixMillis(5));
        assert_eq!(d.code, DecisionCode::ManagerUnknown);
    }

    #[test]
    fn a_role_the_policy_no_longer_requires_is_not_waited_for() {
        let t = tool(Policy::ApprovalNeeded, false);
        let mut a = approval(vec![ApproverRole::Technician, ApproverRole::Manager]);
        a.steps.push(step(ApproverRole::Technician, "tech", true));
        let (d, next) = decide_with_approval(&a, &t, None, &CALL, "r1", UnixMillis(5));
        assert_eq!(d.code, DecisionCode::ApprovalGranted);
        assert_eq!(next.map(|a| a.state), Some(ApprovalState::Consumed));
    }

    #[test]
    fn denied_and_cancelled_are_denied() {
        let t = tool(Policy::ApprovalNeeded, false);
        let mut a = approval(vec![ApproverRole::Technician]);
        a.state = ApprovalState::Denied;
        assert_eq!(
            decide_with_approval(&a, &t, None, &CALL, "r1", UnixMillis(5))
                .0
                .code,
            DecisionCode::ApprovalDenied
        );
        a.state = ApprovalState::Cancelled;
        assert_eq!(
            decide_with_approval(&a, &t, None, &CALL, "r1", UnixMillis(5))
                .0
                .code,
            DecisionCode::ApprovalDenied
        );
    }
}
