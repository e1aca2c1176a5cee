//! Approvals as people and agents see them: SubmitApproval (the approval state machine's
//! rules live in `policy::approval`), GetApproval, ListApprovals, and who sees which.

use super::{App, AppError};
use crate::policy::approval::{StepRequest, submit_step};
use crate::policy::names::{FieldError, check_id, check_text};
use crate::policy::{Approval, ApprovalState, ApproverRole, Caller, Role, UnixMillis};
use crate::store::{ApprovalQuery, Store, UpdateError, Updated};

/// One approver's answer to an approval request.
#[derive(Debug, Clone)]
pub struct SubmitInput {
    pub approval_id: String,
    pub role: ApproverRole,
    /// The person answering (checked against the directory, never trusted).
    pub approver_id: String,
    pub approve: bool,
    pub comment: String,
}

/// A page of ListApprovals.
#[derive(Debug, Clone)]
pub struct ApprovalPage {
    pub approvals: Vec<Approval>,
    /// Empty on the last page.
    pub next_page_token: String,
    pub now: UnixMillis,
}

pub(super) fn not_found(id: &str) -> AppError {
    AppError::NotFound(format!("approval_id: no approval {id:?} in this tenant"))
}

/// Whether `caller` may see `approval`: agents see the approvals their key asked for.
pub fn may_see(caller: &Caller, approval: &Approval) -> bool {
    caller.role != Role::Agent || approval.created_by_key == caller.key_id
}

impl<S: Store> App<S> {
    /// Records one approver's decision, if the directory says they may make it.
    pub async fn submit_approval(
        &self,
        caller: &Caller,
        input: SubmitInput,
    ) -> Result<Approval, AppError> {
        check_id("approval_id", &input.approval_id)?;
        check_id("approver_id", &input.approver_id)?;
        check_text("comment", &input.comment)?;
        let step = StepRequest {
            role: input.role,
            approver_id: input.approver_id.clone(),
            approve: input.approve,
            comment: input.comment,
        };
        let snapshot = self.snapshots.get(&caller.tenant);
        let now = UnixMillis::now();
        let decide_step = move |a: &Approval, people: &crate::store::People| {
            // The policy in force now rules which roles are required.
            let tool = snapshot.tool(&a.integration_id, &a.tool_name);
            let requester = people.get(&a.requester_id);
            let approver = people.get(&step.approver_id);
            submit_step(a, tool, requester, approver, &step, now).map(|next| (Some(next), ()))
        };
        let outcome = self
            .store
            .update_approval(
                &caller.tenant,
                &input.approval_id,
                vec![input.approver_id],
                decide_step,
            )
            .await;
        let approval = match outcome {
            Ok(Some(Updated { approval, .. })) => approval,
            Ok(None) => return Err(not_found(&input.approval_id)),
            Err(UpdateError::Rule(e)) if e.is_permission() => {
                return Err(AppError::PermissionDenied(e.to_string()));
            }
            Err(UpdateError::Rule(e)) => return Err(AppError::FailedPrecondition(e.to_string())),
            Err(UpdateError::Store(e)) => return Err(e.into()),
        };
        self.approval_changed(&caller.tenant, &approval);
        tracing::info!(approval = %approval.id, state = approval.state.as_str(), "approval decision recorded");
        Ok(approval)
    }

    /// The approval `id` as `caller` may see it; NOT_FOUND when it is another tenant's,
    /// or another agent's.
    pub async fn get_approval(&self, caller: &Caller, id: &str) -> Result<Approval, AppError> {
        check_id("approval_id", id)?;
        self.store
            .get_approval(&caller.tenant, id)
            .await?
            .filter(|a| may_see(caller, a))
            .ok_or_else(|| not_found(id))
    }

    /// A page of the tenant's approvals, newest first, optionally in one state.
    pub async fn list_approvals(
        &self,
        caller: &Caller,
        state: Option<ApprovalState>,
        page_size: u32,
        page_token: &str,
    ) -> Result<ApprovalPage, AppError> {
        let before_seq = decode_page_token(page_token)?;
        let limit = match page_size {
            0 => 50,
            n => n.min(500),
        };
        let now = UnixMillis::now();
        let query = ApprovalQuery {
            state,
            created_by_key: None,
            before_seq,
            limit,
            now: now.0,
        };
        let (approvals, next) = self.store.list_approvals(&caller.tenant, &query).await?;
        Ok(ApprovalPage {
            approvals,
            next_page_token: next.map(encode_page_token).unwrap_or_default(),
            now,
        })
    }
}

/// Page tokens are opaque to clients; inside, the position to continue before.
fn encode_page_token(seq: i64) -> String {
    format!("v1.{seq}")
}

fn decode_page_token(token: &str) -> Result<Option<i64>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("v1.")
        .and_then(|s| s.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| FieldError::new("page_token", "is not a token from ListApprovals"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_page_token(&encode_page_token(42)), Ok(Some(42)));
        assert_eq!(decode_page_token(""), Ok(None));
        assert!(decode_page_token("42").is_err());
        assert!(decode_page_token("v1.x").is_err());
    }
}
