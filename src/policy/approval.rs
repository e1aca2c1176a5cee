//! SubmitApproval's rules: who may approve what, checked against the tenant's directory.

use super::decide::{reconcile, state_from_steps};
use super::{Approval, ApprovalState, ApprovalStep, ApproverRole, Person, Tool, UnixMillis};
use std::fmt;

/// One approver's decision as the approval bridge reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRequest {
    pub role: ApproverRole,
    pub approver_id: String,
    pub approve: bool,
    pub comment: String,
}

/// Why a step is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The approval is no longer waiting for decisions.
    NotOpen(ApprovalState),
    Expired,
    RoleNotRequired(ApproverRole),
    AlreadyDecided(ApproverRole),
    SelfApproval,
    NotTechnician(String),
    NotManager(String),
    BothRoles(String),
}

impl StepError {
    /// Whether the approver lacks the right (as opposed to the approval being in the wrong
    /// state for any approver).
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            StepError::SelfApproval
                | StepError::NotTechnician(_)
                | StepError::NotManager(_)
                | StepError::BothRoles(_)
        )
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::NotOpen(s) => {
                write!(f, "approval is {} and takes no more decisions", s.as_str())
            }
            StepError::Expired => f.write_str("approval expired"),
            StepError::RoleNotRequired(r) => {
                write!(
                    f,
                    "role: this approval does not need a {} decision",
                    r.as_str()
                )
            }
            StepError::AlreadyDecided(r) => {
                write!(f, "role: the {} decision was already made", r.as_str())
            }
            StepError::SelfApproval => {
                f.write_str("approver_id: nobody may approve their own request")
            }
            StepError::NotTechnician(id) => {
                write!(f, "approver_id: {id:?} is not a technician of this tenant")
            }
            StepError::NotManager(id) => {
                write!(
                    f,
                    "approver_id: {id:?} is not the requester's manager of record"
                )
            }
            StepError::BothRoles(id) => {
                write!(
                    f,
                    "approver_id: {id:?} already decided in the other role; one person cannot fill both"
                )
            }
        }
    }
}

impl std::error::Error for StepError {}

/// Applies one approver's decision, or says why it is refused.
///
/// `tool` is the tool as it is now (if it still needs approval its required roles rule);
/// `requester` and `approver` come from the tenant's directory, never from the caller.
/// The approval withdrawn by whoever asked for it (or an admin): only while it is still
/// pending, and not past its expiry.
pub fn cancel(approval: &Approval, now: UnixMillis) -> Result<Approval, StepError> {
    if approval.state != ApprovalState::Pending {
        return Err(StepError::NotOpen(approval.state));
    }
    if now >= approval.expires_at {
        return Err(StepError::Expired);
    }
    let mut next = approval.clone();
    next.state = ApprovalState::Cancelled;
    Ok(next)
}

pub fn submit_step(
    approval: &Approval,
    tool: Option<&Tool>,
    requester: Option<&Person>,
    approver: Option<&Person>,
    step: &StepRequest,
    now: UnixMillis,
) -> Result<Approval, StepError> {
    let mut next = approval.clone();
    if !next.state.is_open() {
        return Err(StepError::NotOpen(next.state));
    }
    if now >= next.expires_at {
        return Err(StepError::Expired);
    }
    if let Some(tool) = tool {
        reconcile(&mut next, tool);
    }
    if next.state == ApprovalState::Denied {
        return Err(StepError::NotOpen(next.state));
    }
    if !next.required_roles.contains(&step.role) {
        return Err(StepError::RoleNotRequired(step.role));
    }
    if next.steps.iter().any(|s| s.role == step.role) {
        return Err(StepError::AlreadyDecided(step.role));
    }
    if step.approver_id == next.requester_id {
        return Err(StepError::SelfApproval);
    }
    if next.steps.iter().any(|s| s.approver_id == step.approver_id) {
        return Err(StepError::BothRoles(step.approver_id.clone()));
    }
    match step.role {
        ApproverRole::Technician => {
            if !approver.is_some_and(|p| p.technician) {
                return Err(StepError::NotTechnician(step.approver_id.clone()));
            }
        }
        ApproverRole::Manager => {
            let manager = requester.map(|p| p.manager_id.as_str()).unwrap_or("");
            if manager.is_empty() || manager != step.approver_id {
                return Err(StepError::NotManager(step.approver_id.clone()));
            }
        }
    }
    next.steps.push(ApprovalStep {
        role: step.role,
        approver_id: step.approver_id.clone(),
        approved: step.approve,
        comment: step.comment.clone(),
        decided_at: now,
    });
    next.state = state_from_steps(&next, &next.required_roles);
    Ok(next)
}

/// The state a reader should see: an open approval past its expiry is expired, even before
/// anything has written that down.
pub fn effective_state(approval: &Approval, now: UnixMillis) -> ApprovalState {
    if approval.state.is_open() && now >= approval.expires_at {
        ApprovalState::Expired
    } else {
        approval.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str, manager: &str, technician: bool) -> Person {
        Person {
            id: id.into(),
            display_name: String::new(),
            email: String::new(),
            manager_id: manager.into(),
            technician,
            slack_user_id: String::new(),
        }
    }

    fn approval(required: Vec<ApproverRole>) -> Approval {
        Approval {
            id: "a1".into(),
            state: ApprovalState::Pending,
            integration_id: "entra".into(),
            tool_name: "reset_password".into(),
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

    fn req(role: ApproverRole, who: &str, yes: bool) -> StepRequest {
        StepRequest {
            role,
            approver_id: who.into(),
            approve: yes,
            comment: String::new(),
        }
    }

    const NOW: UnixMillis = UnixMillis(10);

    #[test]
    fn technician_then_manager_approves() {
        let alice = person("alice", "mgr", false);
        let tech = person("tech", "", true);
        let mgr = person("mgr", "", false);
        let a = approval(vec![ApproverRole::Technician, ApproverRole::Manager]);
        let a = submit_step(
            &a,
            None,
            Some(&alice),
            Some(&tech),
            &req(ApproverRole::Technician, "tech", true),
            NOW,
        )
        .unwrap();
        assert_eq!(a.state, ApprovalState::Pending);
        let a = submit_step(
            &a,
            None,
            Some(&alice),
            Some(&mgr),
            &req(ApproverRole::Manager, "mgr", true),
            NOW,
        )
        .unwrap();
        assert_eq!(a.state, ApprovalState::Approved);
        assert_eq!(a.steps.len(), 2);
    }

    #[test]
    fn one_no_denies() {
        let tech = person("tech", "", true);
        let a = approval(vec![ApproverRole::Technician]);
        let a = submit_step(
            &a,
            None,
            None,
            Some(&tech),
            &req(ApproverRole::Technician, "tech", false),
            NOW,
        )
        .unwrap();
        assert_eq!(a.state, ApprovalState::Denied);
    }

    #[test]
    fn approvers_are_checked_against_the_directory() {
        let alice = person("alice", "mgr", true);
        let nobody = person("nobody", "", false);
        let a = approval(vec![ApproverRole::Technician, ApproverRole::Manager]);
        let tech = |who: &str| req(ApproverRole::Technician, who, true);
        assert_eq!(
            submit_step(&a, None, Some(&alice), Some(&alice), &tech("alice"), NOW),
            Err(StepError::SelfApproval)
        );
        assert_eq!(
            submit_step(&a, None, Some(&alice), Some(&nobody), &tech("nobody"), NOW),
            Err(StepError::NotTechnician("nobody".into()))
        );
        assert_eq!(
            submit_step(&a, None, Some(&alice), None, &tech("ghost"), NOW),
            Err(StepError::NotTechnician("ghost".into()))
        );
        assert_eq!(
            submit_step(
                &a,
                None,
                Some(&alice),
                Some(&nobody),
                &req(ApproverRole::Manager, "nobody", true),
                NOW
            ),
            Err(StepError::NotManager("nobody".into()))
        );
    }

    #[test]
    fn one_person_cannot_fill_both_roles() {
        let alice = person("alice", "boss", false);
        let boss = person("boss", "", true);
        let a = approval(vec![ApproverRole::Technician, ApproverRole::Manager]);
        let a = submit_step(
            &a,
            None,
            Some(&alice),
            Some(&boss),
            &req(ApproverRole::Technician, "boss", true),
            NOW,
        )
        .unwrap();
        assert_eq!(
            submit_step(
                &a,
                None,
                Some(&alice),
                Some(&boss),
                &req(ApproverRole::Manager, "boss", true),
                NOW
            ),
            Err(StepError::BothRoles("boss".into()))
        );
    }

    #[test]
    fn closed_expired_unrequired_and_repeated_steps_are_refused() {
        let tech = person("tech", "", true);
        let tech2 = person("tech2", "", true);
        let mut a = approval(vec![ApproverRole::Technician]);
        assert_eq!(
            submit_step(
                &a,
                None,
                None,
                None,
                &req(ApproverRole::Manager, "m", true),
                NOW
            ),
            Err(StepError::RoleNotRequired(ApproverRole::Manager))
        );
        assert_eq!(
            submit_step(
                &a,
                None,
                None,
                Some(&tech),
                &req(ApproverRole::Technician, "tech", true),
                UnixMillis(1000)
            ),
            Err(StepError::Expired)
        );
        let approved = submit_step(
            &a,
            None,
            None,
            Some(&tech),
            &req(ApproverRole::Technician, "tech", true),
            NOW,
        )
        .unwrap();
        assert_eq!(
            submit_step(
                &approved,
                None,
                None,
                Some(&tech2),
                &req(ApproverRole::Technician, "tech2", true),
                NOW
            ),
            Err(StepError::AlreadyDecided(ApproverRole::Technician))
        );
        a.state = ApprovalState::Consumed;
        assert_eq!(
            submit_step(
                &a,
                None,
                None,
                Some(&tech),
                &req(ApproverRole::Technician, "tech", true),
                NOW
            ),
            Err(StepError::NotOpen(ApprovalState::Consumed))
        );
    }

    #[test]
    fn effective_state_shows_expiry_before_it_is_written() {
        let a = approval(vec![ApproverRole::Technician]);
        assert_eq!(effective_state(&a, UnixMillis(999)), ApprovalState::Pending);
        assert_eq!(
            effective_state(&a, UnixMillis(1000)),
            ApprovalState::Expired
        );
    }
}
