//! Approvals as people and agents see them: SubmitApproval (the approval state machine's
//! rules live in `policy::approval`), GetApproval, ListApprovals, and who sees which.

use super::{App, AppError};
use crate::policy::approval::{StepRequest, submit_step};
use crate::policy::names::{ApprovalId, FieldError, PersonId, check_id, check_text};
use crate::policy::{Approval, ApprovalState, ApproverRole, Caller, Role, UnixMillis};
use crate::store::{ApprovalQuery, MAX_ATTEMPTS, People};

/// One approver's answer to an approval request.
#[derive(Debug, Clone)]
pub struct SubmitInput {
    pub approval_id: ApprovalId,
    pub role: ApproverRole,
    /// The person answering (checked against the directory, never trusted).
    pub approver_id: PersonId,
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

/// Whether `caller` may see `approval`: agents see the approvals their principal (their
/// key, or the keys of its name) asked for.
pub fn may_see(caller: &Caller, approval: &Approval) -> bool {
    caller.role != Role::Agent || approval.principal == caller.principal
}

impl App {
    /// Records one approver's decision, if the directory says they may make it.
    pub async fn submit_approval(
        &self,
        caller: &Caller,
        input: SubmitInput,
    ) -> Result<Approval, AppError> {
        check_text("comment", &input.comment)?;
        let step = StepRequest {
            role: input.role,
            approver_id: input.approver_id.as_str().to_owned(),
            approve: input.approve,
            comment: input.comment,
        };
        let snapshot = self.snapshots.get(&caller.tenant);
        let now = UnixMillis::now();
        let decide_step = |a: &Approval, people: &People| {
            // The policy in force now rules which roles are required.
            let tool = snapshot.tool(&a.integration_id, &a.tool_name);
            let requester = people.get(&a.requester_id);
            let approver = people.get(&step.approver_id);
            match submit_step(a, tool, requester, approver, &step, now) {
                Ok(next) => Ok((Some(next), ())),
                Err(e) if e.is_permission() => Err(AppError::PermissionDenied(e.to_string())),
                Err(e) => Err(AppError::FailedPrecondition(e.to_string())),
            }
        };
        let approver = [input.approver_id.as_str().to_owned()];
        let (approval, _, ()) = self
            .change_approval(
                &caller.tenant,
                input.approval_id.as_str(),
                &approver,
                decide_step,
            )
            .await?;
        tracing::info!(
            tenant = %caller.tenant,
            key_id = %caller.key_id,
            approval = %approval.id,
            state = approval.state.as_str(),
            "approval decision recorded"
        );
        Ok(approval)
    }

    /// Withdraws a pending approval: the agent principal that asked for it, or an admin.
    /// Another agent's approval does not exist for the caller (NOT_FOUND).
    pub async fn cancel_approval(
        &self,
        caller: &Caller,
        id: &ApprovalId,
        reason: &str,
    ) -> Result<Approval, AppError> {
        check_text("reason", reason)?;
        let now = UnixMillis::now();
        let withdraw = |a: &Approval, _: &People| {
            if !may_see(caller, a) {
                return Err(not_found(&a.id));
            }
            match crate::policy::approval::cancel(a, now) {
                Ok(next) => Ok((Some(next), ())),
                Err(e) => Err(AppError::FailedPrecondition(format!(
                    "{e}; only a pending approval can be cancelled"
                ))),
            }
        };
        let (approval, _, ()) = self
            .change_approval(&caller.tenant, id.as_str(), &[], withdraw)
            .await?;
        tracing::info!(
            tenant = %caller.tenant,
            key_id = %caller.key_id,
            approval = %approval.id,
            reason,
            "approval cancelled"
        );
        Ok(approval)
    }

    /// The approval state machine's one write path. Reads the approval and the people
    /// its rules need (`person_ids` and the requester), lets `decide` (pure rules) say
    /// what it becomes, and appends that as its next version, which goes in only if
    /// nobody else changed the approval since the read; otherwise it reads and decides
    /// again. Returns the approval as it is now, whether this call changed it (watchers
    /// are told of changes), and what `decide` answered.
    pub(super) async fn change_approval<T>(
        &self,
        tenant: &str,
        id: &str,
        person_ids: &[String],
        decide: impl Fn(&Approval, &People) -> Result<(Option<Approval>, T), AppError>,
    ) -> Result<(Approval, bool, T), AppError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(read) = self
                .store
                .approval_for_update(tenant, id, person_ids)
                .await?
            else {
                return Err(not_found(id));
            };
            let (next, out) = decide(&read.approval, &read.people)?;
            let Some(next) = next.filter(|next| next != &read.approval) else {
                return Ok((read.approval, false, out));
            };
            if self
                .store
                .append_approval(tenant, read.version + 1, &next)
                .await?
            {
                self.approval_changed(tenant, &next);
                return Ok((next, true, out));
            }
        }
        // It changed between every read and write: answer "retry" rather than wait on.
        Err(AppError::Unavailable(format!(
            "approval {id:?} kept changing under {MAX_ATTEMPTS} attempts to decide on it; retry"
        )))
    }

    /// The approval `id` as `caller` may see it; NOT_FOUND when it is another tenant's,
    /// or another agent's.
    pub async fn get_approval(
        &self,
        caller: &Caller,
        id: &ApprovalId,
    ) -> Result<Approval, AppError> {
        let id = id.as_str();
        self.store
            .get_approval(&caller.tenant, id)
            .await?
            .filter(|a| may_see(caller, a))
            .ok_or_else(|| not_found(id))
    }

    /// A page of the tenant's approvals, newest first, optionally in one state; for an
    /// agent, only those its principal asked for.
    pub async fn list_approvals(
        &self,
        caller: &Caller,
        state: Option<ApprovalState>,
        page_size: u32,
        page_token: &str,
    ) -> Result<ApprovalPage, AppError> {
        let before_id = decode_page_token(page_token)?;
        let limit = match page_size {
            0 => 50,
            n => n.min(500),
        };
        let now = UnixMillis::now();
        let query = ApprovalQuery {
            state,
            before_id,
            limit,
            now: now.0,
            principal: (caller.role == Role::Agent).then(|| caller.principal.clone()),
        };
        let (approvals, next) = self.store.list_approvals(&caller.tenant, &query).await?;
        Ok(ApprovalPage {
            approvals,
            next_page_token: next.map(encode_page_token).unwrap_or_default(),
            now,
        })
    }
}

/// Page tokens are opaque to clients; inside, the last approval of the page before. An
/// approval id is random and belongs to one tenant, so a token says nothing of any other
/// tenant's activity (a position shared by all tenants did), and another tenant's token
/// continues nothing (the next page is empty).
fn encode_page_token(last_id: String) -> String {
    format!("v2.{last_id}")
}

fn decode_page_token(token: &str) -> Result<Option<String>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("v2.")
        .filter(|id| check_id("page_token", id).is_ok())
        .map(|id| Some(id.to_owned()))
        .ok_or_else(|| FieldError::new("page_token", "is not a token from ListApprovals"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = encode_page_token("apr_1".into());
        assert_eq!(decode_page_token(&token), Ok(Some("apr_1".into())));
        assert_eq!(decode_page_token(""), Ok(None));
        assert!(decode_page_token("42").is_err());
        assert!(
            decode_page_token("v1.42").is_err(),
            "the old positions are not accepted"
        );
        assert!(decode_page_token("v2.").is_err());
    }

    use proptest::prelude::*;

    proptest! {
        /// Fuzz target for page tokens (issue "Hardening"): any string either is refused
        /// with INVALID_ARGUMENT naming `page_token`, or is exactly a token this server
        /// makes, for an id that passes the id rules.
        #[test]
        fn any_page_token_is_refused_or_is_one_of_ours(token in ".{0,80}|v2\\..{0,40}") {
            match decode_page_token(&token) {
                Ok(None) => prop_assert!(token.is_empty()),
                Ok(Some(id)) => {
                    prop_assert!(check_id("page_token", &id).is_ok());
                    prop_assert_eq!(encode_page_token(id), token);
                }
                Err(e) => prop_assert!(e.to_string().contains("page_token"), "{e}"),
            }
        }

        #[test]
        fn every_token_we_make_reads_back(id in "apr_[0-9a-f]{1,32}") {
            let token = encode_page_token(id.clone());
            prop_assert_eq!(decode_page_token(&token).expect("ours"), Some(id));
        }
    }
}
