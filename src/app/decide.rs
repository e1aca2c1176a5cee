//! Decide: may this agent run this tool call now?
//!
//! `auto`, `disabled` and unknown tools are answered from the in-memory snapshot, with no
//! database access (so they keep answering while the database is down). `approval_needed`
//! creates the approval request on a first ask, and evaluates (and consumes once) the
//! approval presented on a later one.

use super::approvals::not_found;
use super::{App, AppError};
use crate::keys;
use crate::policy::canonical::{self, CanonicalArguments};
use crate::policy::decide::{
    CallBinding, Decision, DecisionCode, PolicyOutcome, Verdict, decide_by_policy,
    decide_with_approval, manager_precondition,
};
use crate::policy::names::{ApprovalId, FieldError, IntegrationId, PersonId, RequestId, ToolName};
use crate::policy::{Approval, ApprovalState, Caller, Tool, UnixMillis};
use crate::store::{Inserted, People};
use std::sync::atomic::{AtomicU64, Ordering};

/// One Decide, as the agent backend asked it.
#[derive(Debug, Clone)]
pub struct DecideInput {
    pub integration_id: IntegrationId,
    pub tool_name: ToolName,
    /// A JSON object.
    pub arguments_json: String,
    /// Required for a tool that needs approval.
    pub requester_id: Option<PersonId>,
    /// Required for a tool that needs approval.
    pub request_id: Option<RequestId>,
    /// `None` on a first ask.
    pub approval_id: Option<ApprovalId>,
    /// Answer only from this revision or later.
    pub min_revision: Option<u64>,
}

/// What a Decide of a tool that needs approval asks for (every id checked, present).
struct Asked<'a> {
    integration_id: &'a str,
    tool_name: &'a str,
    requester_id: &'a str,
    request_id: &'a str,
}

/// A Decide's answer.
#[derive(Debug, Clone)]
pub struct DecideOutcome {
    pub decision: Decision,
    /// The snapshot revision the policy was read at.
    pub revision: u64,
    /// The approval involved, if any. Boxed: held inline it would make every Decide's
    /// answer, moved through each async layer on its way out, several times larger.
    pub approval: Option<Box<Approval>>,
    pub now: UnixMillis,
    /// Names this decision in the decision log and in the answer.
    pub decision_id: String,
}

/// Decision ids: a random prefix per process and a counter, so they are unique across
/// replicas and cost no system call.
#[derive(Debug)]
pub struct DecisionIds {
    prefix: String,
    next: AtomicU64,
}

impl DecisionIds {
    pub fn new() -> Self {
        // 48 random bits name the process; the counter names the decision within it.
        let prefix = keys::random_id("dec_").map_or_else(
            |_| format!("dec_{:x}_", std::process::id()),
            |id| format!("{}_", &id[..16]),
        );
        DecisionIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        keys::numbered_id(&self.prefix, self.next.fetch_add(1, Ordering::Relaxed), 10)
    }
}

impl Default for DecisionIds {
    fn default() -> Self {
        DecisionIds::new()
    }
}

impl App {
    /// Decides one call, and records it in the decision log: one line (target
    /// `toolgate::decision`, [`crate::logging::Decision`]) per answer, with what was asked
    /// and answered and the arguments' hash, never the arguments.
    pub async fn decide(
        &self,
        caller: &Caller,
        input: &DecideInput,
    ) -> Result<DecideOutcome, AppError> {
        let (mut outcome, arguments_sha256) = self.decide_call(caller, input).await?;
        outcome.decision_id = self.decision_ids.next();
        let decision = &outcome.decision;
        crate::logging::Decision {
            decision_id: &outcome.decision_id,
            tenant: caller.tenant.as_str(),
            key_id: caller.key_id.as_str(),
            integration: input.integration_id.as_str(),
            tool: input.tool_name.as_str(),
            verdict: decision.verdict.into(),
            code: decision.code.into(),
            revision: outcome.revision,
            approval_id: outcome.approval.as_ref().map(|a| a.id.as_str()),
            requester: input.requester_id.as_ref().map(|p| p.as_str()),
            arguments_sha256: arguments_sha256.as_deref(),
        }
        .log();
        Ok(outcome)
    }

    /// The decision, and the canonical arguments' hash when it was computed (for a tool
    /// that needs approval).
    async fn decide_call(
        &self,
        caller: &Caller,
        input: &DecideInput,
    ) -> Result<(DecideOutcome, Option<String>), AppError> {
        let args =
            canonical::parse_arguments(&input.arguments_json, self.limits.max_arguments_bytes)
                .map_err(|e| FieldError::new("arguments_json", e.0))?;
        let snapshot = self
            .snapshot_at_least(&caller.tenant, input.min_revision)
            .await?;
        let now = UnixMillis::now();
        let tool = match decide_by_policy(
            snapshot.tool(input.integration_id.as_str(), input.tool_name.as_str()),
        ) {
            PolicyOutcome::Final(decision) => {
                return Ok((self.decided(decision, snapshot.revision, None, now), None));
            }
            PolicyOutcome::NeedsApproval(tool) => tool,
        };
        // Boxed: the approval steps' store futures would otherwise sit inline in every
        // Decide's future, fast path included (see `auth`).
        let (decision, approval, arguments_sha256) =
            Box::pin(self.by_approval(caller, input, tool, &args, now)).await?;
        let outcome = self.decided(decision, snapshot.revision, approval, now);
        Ok((outcome, Some(arguments_sha256)))
    }

    /// Steps 2 and 3 of Decide, for a tool that needs approval: ask for one, or use the one
    /// presented. Also the canonical arguments' hash.
    async fn by_approval(
        &self,
        caller: &Caller,
        input: &DecideInput,
        tool: &Tool,
        args: &canonical::Json,
        now: UnixMillis,
    ) -> Result<(Decision, Option<Approval>, String), AppError> {
        let required = |field: &'static str| {
            FieldError::new(field, "is required for a tool that needs approval")
        };
        let asked = Asked {
            integration_id: input.integration_id.as_str(),
            tool_name: input.tool_name.as_str(),
            requester_id: input
                .requester_id
                .as_ref()
                .ok_or_else(|| required("requester_id"))?
                .as_str(),
            request_id: input
                .request_id
                .as_ref()
                .ok_or_else(|| required("request_id"))?
                .as_str(),
        };
        let canon = canonical::canonical_arguments(args);
        let arguments_sha256 = canon.sha256.clone();
        let (decision, approval) = match &input.approval_id {
            None => self.first_ask(caller, tool, &asked, canon, now).await?,
            Some(id) => {
                let (id, sha256) = (id.as_str(), &canon.sha256);
                self.ask_with_approval(caller, tool, id, &asked, sha256, now)
                    .await?
            }
        };
        Ok((decision, approval, arguments_sha256))
    }

    /// A Decide's answer, counted by verdict and code.
    fn decided(
        &self,
        decision: Decision,
        revision: u64,
        approval: Option<Approval>,
        now: UnixMillis,
    ) -> DecideOutcome {
        self.metrics.decision(decision.verdict, decision.code);
        DecideOutcome {
            decision,
            revision,
            approval: approval.map(Box::new),
            now,
            decision_id: String::new(),
        }
    }

    /// Step 2 of Decide: create the approval request, or find the one this request id made.
    async fn first_ask(
        &self,
        caller: &Caller,
        tool: &Tool,
        asked: &Asked<'_>,
        canon: CanonicalArguments,
        now: UnixMillis,
    ) -> Result<(Decision, Option<Approval>), AppError> {
        if tool.manager_approval {
            let requester = self
                .store
                .get_person(&caller.tenant, asked.requester_id)
                .await?;
            if let Some(deny) = manager_precondition(tool, requester.as_ref()) {
                return Ok((deny, None));
            }
        }
        let approval = self.new_approval(caller, tool, asked, canon, now)?;
        if let Some(answer) = self
            .without_asking_again(caller, tool, asked, &approval, now)
            .await?
        {
            return Ok(answer);
        }
        match self
            .store
            .insert_approval(&caller.tenant, &approval)
            .await?
        {
            Inserted::New(created) => {
                self.approval_changed(&caller.tenant, &created);
                let requested = Decision {
                    verdict: Verdict::PendingApproval,
                    code: DecisionCode::ApprovalRequired,
                    reason: "approval requested".into(),
                };
                Ok((requested, Some(created)))
            }
            // Asking again with the same request id is the same as presenting its approval:
            // the same call may use it, a different call gets APPROVAL_MISMATCH.
            Inserted::Existing(existing) => {
                let sha256 = &approval.arguments_sha256;
                self.ask_with_approval(caller, tool, &existing.id, asked, sha256, now)
                    .await
            }
        }
    }

    /// The approval a first ask would create.
    fn new_approval(
        &self,
        caller: &Caller,
        tool: &Tool,
        asked: &Asked<'_>,
        canon: CanonicalArguments,
        now: UnixMillis,
    ) -> Result<Approval, AppError> {
        Ok(Approval {
            id: keys::random_id("apr_").map_err(|e| AppError::internal("random id", e))?,
            state: ApprovalState::Pending,
            integration_id: tool.integration_id.clone(),
            tool_name: tool.name.clone(),
            arguments_json: canon.canonical,
            arguments_sha256: canon.sha256,
            requester_id: asked.requester_id.to_owned(),
            request_id: asked.request_id.to_owned(),
            required_roles: tool.required_roles(),
            steps: Vec::new(),
            created_at: now,
            expires_at: now.plus(self.limits.approval_ttl),
            created_by_key: caller.key_id.clone(),
            principal: caller.principal.clone(),
            consumed_by_request: None,
            consumed_at: None,
        })
    }

    /// The answer when people must not be asked again (`None`: ask them). No approval spam:
    /// while the same call (another request id of the same principal, requester, tool and
    /// arguments) waits for people, asking again returns that approval. And a cap on what
    /// people are asked at once, against an agent asking in a loop; a retried request id
    /// still reaches its own approval at the cap.
    async fn without_asking_again(
        &self,
        caller: &Caller,
        tool: &Tool,
        asked: &Asked<'_>,
        approval: &Approval,
        now: UnixMillis,
    ) -> Result<Option<(Decision, Option<Approval>)>, AppError> {
        let cap = self.limits.max_pending_approvals;
        let pending = self
            .store
            .find_pending(&caller.tenant, approval, now.0, cap)
            .await?;
        if let Some(open) = &pending.same_call
            && open.request_id != approval.request_id
        {
            let waiting = Decision {
                verdict: Verdict::PendingApproval,
                code: DecisionCode::ApprovalPending,
                reason: format!(
                    "this exact call already waits for approval {} (asked by request_id {:?}); \
                     nobody was asked again",
                    open.id, open.request_id
                )
                .into(),
            };
            return Ok(Some((waiting, pending.same_call)));
        }
        if pending.tenant_pending < cap {
            return Ok(None);
        }
        let Some(existing) = self
            .store
            .approval_by_request(&caller.tenant, &approval.principal, &approval.request_id)
            .await?
        else {
            return Err(AppError::ResourceExhausted(format!(
                "this tenant has {cap} approvals waiting for people, the most \
                 max_pending_approvals allows; decide or cancel some first"
            )));
        };
        let sha256 = &approval.arguments_sha256;
        self.ask_with_approval(caller, tool, &existing.id, asked, sha256, now)
            .await
            .map(Some)
    }

    /// Step 3 of Decide: evaluate (and maybe consume) an approval, atomically.
    async fn ask_with_approval(
        &self,
        caller: &Caller,
        tool: &Tool,
        approval_id: &str,
        asked: &Asked<'_>,
        arguments_sha256: &str,
        now: UnixMillis,
    ) -> Result<(Decision, Option<Approval>), AppError> {
        let tool = tool.clone();
        let binding = (
            asked.integration_id.to_owned(),
            asked.tool_name.to_owned(),
            asked.requester_id.to_owned(),
            arguments_sha256.to_owned(),
        );
        let request_id = asked.request_id.to_owned();
        let principal = caller.principal.clone();
        let evaluate = move |approval: &Approval, people: &People| {
            // Another principal's approval does not exist for this caller: not its
            // arguments, not its state, not an ALLOW.
            if approval.principal != principal {
                return Err(not_found(&approval.id));
            }
            let call = CallBinding {
                integration_id: &binding.0,
                tool_name: &binding.1,
                requester_id: &binding.2,
                arguments_sha256: &binding.3,
            };
            let requester = people.get(&approval.requester_id);
            let (decision, next) =
                decide_with_approval(approval, &tool, requester, &call, &request_id, now);
            Ok((next, decision))
        };
        let (approval, _, decision) = self
            .change_approval(&caller.tenant, approval_id, &[], evaluate)
            .await?;
        Ok((decision, Some(approval)))
    }
}
