//! The gRPC layer: authenticates each call, validates and converts its request, runs it
//! against the snapshot, the store and the policy core, and converts the answer back.

pub mod convert;
pub mod error;
pub mod gate;
mod watch;

use crate::hub::ApprovalHub;
use crate::keys::{self, MAX_TOKEN_BYTES};
use crate::metrics::Metrics;
use crate::policy::approval::{StepRequest, submit_step};
use crate::policy::canonical::{self, CanonicalArguments};
use crate::policy::decide::{
    CallBinding, Decision, DecisionCode, PolicyOutcome, Verdict, decide_by_policy,
    decide_with_approval, manager_precondition,
};
use crate::policy::names::{FieldError, check_id, check_optional_id, check_text};
use crate::policy::save::{PolicyEdit, plan_connect, plan_set_policy};
use crate::policy::{
    Approval, ApprovalState, Caller, Policy, RevisionChanges, Role, Tool, UnixMillis,
};
use crate::proto::v1 as pb;
use crate::proto::v1::policy_service_server::PolicyService;
use crate::snapshot::{Snapshots, TenantSnapshot};
use crate::store::{
    ApprovalQuery, Inserted, IntegrationMeta, ReadScope, SaveError, SaveKind, Saved, Store,
    StoreError, UpdateError, Updated,
};
use convert::*;
use error::ApiError;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedMutexGuard, watch as drain_watch};
use tonic::{Request, Response, Status};

/// Most entries one request may carry (tools, changes, people).
pub const MAX_BATCH: usize = 10_000;

/// Limits and timings the service applies; from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub approval_ttl: Duration,
    pub max_arguments_bytes: usize,
    pub min_revision_wait: Duration,
    pub heartbeat_interval: Duration,
    /// Revisions a WatchConfig resume may replay before it gets a snapshot instead.
    pub watch_history: u64,
    /// Open Watch streams (both kinds) beyond which new ones get RESOURCE_EXHAUSTED.
    pub max_watch_streams: usize,
}

/// Shared state of one server: cheap to clone through its `Arc`.
#[derive(Debug)]
pub struct AppState<S> {
    pub store: S,
    pub snapshots: Snapshots,
    pub approvals: ApprovalHub,
    pub limits: Limits,
    /// Turns true when the server drains: open streams end with UNAVAILABLE.
    pub drain: drain_watch::Receiver<bool>,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Live API keys, so authentication needs no database round trip.
    pub keys: keys::KeyCache,
    /// One lock per tenant around "commit a revision, then apply it to the snapshot", so
    /// revisions reach the snapshot in the order they were committed.
    write_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<S: Store> AppState<S> {
    pub fn new(
        store: S,
        snapshots: Snapshots,
        approvals: ApprovalHub,
        limits: Limits,
        drain: drain_watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AppState {
            store,
            snapshots,
            approvals,
            limits,
            drain,
            metrics,
            keys: keys::KeyCache::default(),
            write_locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The lock around "commit a revision, then apply it to the snapshot" for one tenant.
    pub async fn tenant_write_lock(&self, tenant: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.write_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(tenant.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Brings a tenant's snapshot to the store's latest revision from the change log
    /// (revisions another replica saved, or a Save whose apply found a gap).
    pub async fn catch_up(&self, tenant: &str) -> Result<(), StoreError> {
        let _guard = self.tenant_write_lock(tenant).await;
        let before = self.snapshots.get(tenant).revision;
        self.catch_up_locked(tenant).await?;
        let after = self.snapshots.get(tenant).revision;
        self.metrics
            .revisions_followed(after.saturating_sub(before));
        Ok(())
    }

    /// Tells the tenant's WatchApprovals streams of a change this replica made, and
    /// counts it.
    pub fn approval_changed(&self, tenant: &str, approval: &Approval) {
        self.metrics.approval(approval);
        self.approvals.publish(tenant, approval);
    }

    /// [`Self::catch_up`] for a caller that holds the tenant's write lock.
    async fn catch_up_locked(&self, tenant: &str) -> Result<(), StoreError> {
        let have = self.snapshots.get(tenant).revision;
        for rc in self.store.changes_since(tenant, have).await? {
            if self.snapshots.apply(tenant, &rc).is_err() {
                let all = self.store.load_tenant_tools(tenant).await?;
                self.snapshots
                    .replace(tenant, TenantSnapshot::new(all.revision, all.tools));
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The `toolgate.v1.PolicyService` implementation.
#[derive(Debug)]
pub struct PolicyApi<S> {
    state: Arc<AppState<S>>,
}

impl<S> Clone for PolicyApi<S> {
    fn clone(&self) -> Self {
        PolicyApi {
            state: self.state.clone(),
        }
    }
}

impl<S: Store> PolicyApi<S> {
    pub fn new(state: Arc<AppState<S>>) -> Self {
        PolicyApi { state }
    }

    /// Finds the caller from `authorization: Bearer <key>` and checks its role may call.
    async fn authenticate<T>(
        &self,
        req: &Request<T>,
        rpc: &str,
        allowed: &[Role],
    ) -> Result<Arc<Caller>, ApiError> {
        const MISSING: &str = "missing credentials: send `authorization: Bearer <api key>`";
        let header = req
            .metadata()
            .get("authorization")
            .ok_or(ApiError::Unauthenticated(MISSING))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::Unauthenticated(MISSING))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated(MISSING))?;
        const UNKNOWN: &str = "unknown or revoked API key";
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ApiError::Unauthenticated(UNKNOWN));
        }
        let secret_sha256 = keys::TokenHash::of(token);
        let caller = match self.state.keys.get(secret_sha256.as_str()) {
            Some(caller) => caller,
            None => {
                // Boxed, like every store call on the Decide path: a store future is large,
                // and held inline it would make every call's future (moved into a box by
                // tonic on each call) that large too; the profile showed the copy.
                let caller = Box::pin(self.state.store.caller_by_secret(secret_sha256.as_str()))
                    .await?
                    .ok_or(ApiError::Unauthenticated(UNKNOWN))?;
                let caller = Arc::new(caller);
                self.state
                    .keys
                    .insert(secret_sha256.as_str().to_owned(), caller.clone());
                caller
            }
        };
        if !allowed.contains(&caller.role) {
            return Err(ApiError::PermissionDenied(format!(
                "a key with role {} may not call {rpc}",
                caller.role
            )));
        }
        Ok(caller)
    }

    /// Applies a committed Save to the snapshot (under the tenant's write lock).
    async fn publish(&self, tenant: &str, saved: &Saved) {
        if saved.changes.is_empty() {
            return;
        }
        let rc = RevisionChanges {
            revision: saved.revision,
            changes: saved.changes.clone(),
        };
        if self.state.snapshots.apply(tenant, &rc).is_err()
            && let Err(e) = self.state.catch_up_locked(tenant).await
        {
            // The Save is committed; the snapshot catches up on the next Save or restart.
            tracing::error!(error = ?e, "snapshot could not catch up after a save");
        }
    }

    /// The tenant's snapshot, at `min_revision` or later: waits a bounded time, then
    /// answers UNAVAILABLE rather than from an older revision.
    async fn snapshot_at_least(
        &self,
        tenant: &str,
        min: Option<u64>,
    ) -> Result<Arc<TenantSnapshot>, ApiError> {
        let Some(min) = min else {
            return Ok(self.state.snapshots.get(tenant));
        };
        let deadline = tokio::time::Instant::now() + self.state.limits.min_revision_wait;
        loop {
            let notified = self.state.snapshots.advanced();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snapshot = self.state.snapshots.get(tenant);
            if snapshot.revision >= min {
                return Ok(snapshot);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::Unavailable(format!(
                    "min_revision: this server is at revision {}, behind {min}; retry",
                    snapshot.revision
                )));
            }
        }
    }

    async fn do_decide(
        &self,
        caller: &Caller,
        req: pb::DecideRequest,
    ) -> Result<pb::DecideResponse, ApiError> {
        check_id("integration_id", &req.integration_id)?;
        check_id("tool_name", &req.tool_name)?;
        check_optional_id("requester_id", &req.requester_id)?;
        check_optional_id("request_id", &req.request_id)?;
        check_optional_id("approval_id", &req.approval_id)?;
        let args =
            canonical::parse_arguments(&req.arguments_json, self.state.limits.max_arguments_bytes)
                .map_err(|e| FieldError::new("arguments_json", e.0))?;
        let snapshot = self
            .snapshot_at_least(&caller.tenant, req.min_revision)
            .await?;
        let tool = match decide_by_policy(snapshot.tool(&req.integration_id, &req.tool_name)) {
            PolicyOutcome::Final(decision) => {
                return Ok(self.decide_response(decision, snapshot.revision, None));
            }
            PolicyOutcome::NeedsApproval(tool) => tool.clone(),
        };
        check_id("requester_id", &req.requester_id).map_err(|_| {
            FieldError::new("requester_id", "is required for a tool that needs approval")
        })?;
        check_id("request_id", &req.request_id).map_err(|_| {
            FieldError::new("request_id", "is required for a tool that needs approval")
        })?;
        let canon = canonical::canonical_arguments(&args);
        let now = UnixMillis::now();
        // Boxed: the approval path's store futures would otherwise sit inline in every
        // Decide's future, fast path included (see `authenticate`).
        let (decision, approval) = if req.approval_id.is_empty() {
            Box::pin(self.first_ask(caller, &tool, &req, canon, now)).await?
        } else {
            Box::pin(self.ask_with_approval(
                caller,
                &tool,
                &req.approval_id,
                &req,
                &canon.sha256,
                now,
            ))
            .await?
        };
        Ok(self.decide_response(
            decision,
            snapshot.revision,
            approval.map(|a| approval_to_proto(&a, now)),
        ))
    }

    /// A Decide's answer, counted by verdict and code.
    fn decide_response(
        &self,
        decision: Decision,
        revision: u64,
        approval: Option<pb::Approval>,
    ) -> pb::DecideResponse {
        self.state.metrics.decision(decision.verdict, decision.code);
        pb::DecideResponse {
            verdict: verdict_to_proto(decision.verdict) as i32,
            code: code_to_proto(decision.code) as i32,
            reason: decision.reason.into_owned(),
            revision,
            approval,
        }
    }

    /// Step 2 of Decide: create the approval request, or find the one this request id made.
    async fn first_ask(
        &self,
        caller: &Caller,
        tool: &Tool,
        req: &pb::DecideRequest,
        canon: CanonicalArguments,
        now: UnixMillis,
    ) -> Result<(Decision, Option<Approval>), ApiError> {
        let store = &self.state.store;
        if tool.manager_approval {
            let requester = store.get_person(&caller.tenant, &req.requester_id).await?;
            if let Some(deny) = manager_precondition(tool, requester.as_ref()) {
                return Ok((deny, None));
            }
        }
        let approval = Approval {
            id: keys::random_id("apr_").map_err(|e| ApiError::internal("random id", e))?,
            state: ApprovalState::Pending,
            integration_id: tool.integration_id.clone(),
            tool_name: tool.name.clone(),
            arguments_json: canon.canonical,
            arguments_sha256: canon.sha256,
            requester_id: req.requester_id.clone(),
            request_id: req.request_id.clone(),
            required_roles: tool.required_roles(),
            steps: Vec::new(),
            created_at: now,
            expires_at: now.plus(self.state.limits.approval_ttl),
            created_by_key: caller.key_id.clone(),
            consumed_by_request: None,
        };
        match store.insert_approval(&caller.tenant, &approval).await? {
            Inserted::New(created) => {
                self.state.approval_changed(&caller.tenant, &created);
                Ok((
                    Decision {
                        verdict: Verdict::PendingApproval,
                        code: DecisionCode::ApprovalRequired,
                        reason: "approval requested".into(),
                    },
                    Some(created),
                ))
            }
            // Asking again with the same request id is the same as presenting its approval:
            // the same call may use it, a different call gets APPROVAL_MISMATCH.
            Inserted::Existing(existing) => {
                self.ask_with_approval(
                    caller,
                    tool,
                    &existing.id,
                    req,
                    &approval.arguments_sha256,
                    now,
                )
                .await
            }
        }
    }

    /// Step 3 of Decide: evaluate (and maybe consume) an approval in one transaction.
    async fn ask_with_approval(
        &self,
        caller: &Caller,
        tool: &Tool,
        approval_id: &str,
        req: &pb::DecideRequest,
        arguments_sha256: &str,
        now: UnixMillis,
    ) -> Result<(Decision, Option<Approval>), ApiError> {
        let tool = tool.clone();
        let binding = (
            req.integration_id.clone(),
            req.tool_name.clone(),
            req.requester_id.clone(),
            arguments_sha256.to_owned(),
        );
        let request_id = req.request_id.clone();
        let outcome = self
            .state
            .store
            .update_approval(
                &caller.tenant,
                approval_id,
                Vec::new(),
                move |approval, people| {
                    let call = CallBinding {
                        integration_id: &binding.0,
                        tool_name: &binding.1,
                        requester_id: &binding.2,
                        arguments_sha256: &binding.3,
                    };
                    let requester = people.get(&approval.requester_id);
                    let (decision, next) =
                        decide_with_approval(approval, &tool, requester, &call, &request_id, now);
                    Ok::<_, Infallible>((next, decision))
                },
            )
            .await;
        match outcome {
            Ok(Some(Updated {
                approval,
                changed,
                out: decision,
            })) => {
                if changed {
                    self.state.approval_changed(&caller.tenant, &approval);
                }
                Ok((decision, Some(approval)))
            }
            Ok(None) => Err(approval_not_found(approval_id)),
            Err(UpdateError::Rule(never)) => match never {},
            Err(UpdateError::Store(e)) => Err(e.into()),
        }
    }
}

fn approval_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("approval_id: no approval {id:?} in this tenant"))
}

/// Whether `caller` may see `approval`: agents see the approvals their key asked for.
fn may_see(caller: &Caller, approval: &Approval) -> bool {
    caller.role != Role::Agent || approval.created_by_key == caller.key_id
}

/// The approval `id` as `caller` may see it; NOT_FOUND when it is another tenant's, or
/// another agent's.
async fn visible_approval<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    id: &str,
) -> Result<Approval, ApiError> {
    state
        .store
        .get_approval(&caller.tenant, id)
        .await?
        .filter(|a| may_see(caller, a))
        .ok_or_else(|| approval_not_found(id))
}

fn check_batch(field: &str, len: usize) -> Result<(), FieldError> {
    if len > MAX_BATCH {
        return Err(FieldError::new(
            field,
            format!("has {len} entries; at most {MAX_BATCH}"),
        ));
    }
    Ok(())
}

/// Converts a batch entry by entry and refuses a second entry with the same key; every
/// error names its entry (`tools[3].name: duplicates tools[1]`).
fn unique_batch<P, T, K: Eq + std::hash::Hash>(
    field: &str,
    key_field: &str,
    entries: Vec<P>,
    convert: impl Fn(usize, P) -> Result<T, FieldError>,
    key: impl Fn(&T) -> K,
) -> Result<Vec<T>, FieldError> {
    check_batch(field, entries.len())?;
    let mut out = Vec::with_capacity(entries.len());
    let mut seen: HashMap<K, usize> = HashMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let item = convert(i, entry)?;
        if let Some(first) = seen.insert(key(&item), i) {
            return Err(FieldError::new(
                format!("{field}[{i}].{key_field}"),
                format!("duplicates {field}[{first}]"),
            ));
        }
        out.push(item);
    }
    Ok(out)
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

/// A server stream as tonic takes it: polled directly, one allocation per stream.
type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> PolicyService for PolicyApi<S> {
    async fn connect_integration(
        &self,
        request: Request<pb::ConnectIntegrationRequest>,
    ) -> Result<Response<pb::ConnectIntegrationResponse>, Status> {
        let caller = self
            .authenticate(&request, "ConnectIntegration", &[Role::Admin])
            .await?;
        let req = request.into_inner();
        check_id("integration_id", &req.integration_id).map_err(ApiError::from)?;
        check_id("kind", &req.kind).map_err(ApiError::from)?;
        check_text("display_name", &req.display_name).map_err(ApiError::from)?;
        let offered = unique_batch("tools", "name", req.tools, definition_from_proto, |d| {
            d.name.clone()
        })
        .map_err(ApiError::from)?;
        let integration_id = req.integration_id.clone();
        let meta = IntegrationMeta {
            id: req.integration_id,
            kind: req.kind,
            display_name: req.display_name,
        };
        let _guard = self.state.tenant_write_lock(&caller.tenant).await;
        let saved = self
            .state
            .store
            .save_revision(
                &caller.tenant,
                &caller.key_id,
                SaveKind::Connect,
                None,
                Some(meta),
                ReadScope::Integration(integration_id.clone()),
                |existing: &[Tool]| {
                    Ok::<_, Infallible>(plan_connect(&integration_id, &offered, existing))
                },
            )
            .await
            .map_err(|e| match e {
                SaveError::Plan(never) => match never {},
                SaveError::Stale { .. } => ApiError::internal("connect", std::fmt::Error),
                SaveError::Store(e) => ApiError::from(e),
            })?;
        self.publish(&caller.tenant, &saved).await;
        let snapshot = self.state.snapshots.get(&caller.tenant);
        tracing::info!(
            integration = %integration_id,
            revision = saved.revision,
            changed = saved.changes.len(),
            "integration connected"
        );
        Ok(Response::new(pb::ConnectIntegrationResponse {
            tools: snapshot
                .tools(Some(&integration_id))
                .into_iter()
                .map(|t| tool_to_proto(t, true))
                .collect(),
            revision: saved.revision,
        }))
    }

    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        let caller = self
            .authenticate(&request, "ListTools", &[Role::Agent, Role::Admin])
            .await?;
        let req = request.into_inner();
        check_optional_id("integration_id", &req.integration_id).map_err(ApiError::from)?;
        let admin = caller.role == Role::Admin;
        if req.include_disabled && !admin {
            return Err(ApiError::PermissionDenied(
                "include_disabled: only admin keys may list disabled tools".into(),
            )
            .into());
        }
        let snapshot = self
            .snapshot_at_least(&caller.tenant, req.min_revision)
            .await?;
        let filter = (!req.integration_id.is_empty()).then_some(req.integration_id.as_str());
        let tools = snapshot
            .tools(filter)
            .into_iter()
            .filter(|t| req.include_disabled || t.policy != Policy::Disabled)
            .map(|t| tool_to_proto(t, admin))
            .collect();
        Ok(Response::new(pb::ListToolsResponse {
            tools,
            revision: snapshot.revision,
        }))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let caller = self
            .authenticate(&request, "SetPolicy", &[Role::Admin])
            .await?;
        let req = request.into_inner();
        if req.changes.is_empty() {
            return Err(ApiError::from(FieldError::new(
                "changes",
                "at least one change is required",
            ))
            .into());
        }
        let edits = unique_batch(
            "changes",
            "tool_name",
            req.changes,
            policy_edit_from_proto,
            |e: &PolicyEdit| (e.integration_id.clone(), e.tool_name.clone()),
        )
        .map_err(ApiError::from)?;
        let keys: Vec<(String, String)> = edits
            .iter()
            .map(|e| (e.integration_id.clone(), e.tool_name.clone()))
            .collect();
        let _guard = self.state.tenant_write_lock(&caller.tenant).await;
        let actor = caller.key_id.clone();
        let saved = self
            .state
            .store
            .save_revision(
                &caller.tenant,
                &caller.key_id,
                SaveKind::SetPolicy,
                req.expected_revision,
                None,
                ReadScope::Tools(keys.clone()),
                |existing: &[Tool]| plan_set_policy(&edits, existing, &actor),
            )
            .await
            .map_err(|e| match e {
                SaveError::Plan(u) => ApiError::NotFound(format!(
                    "changes[{}]: no tool {:?} in integration {:?}",
                    u.index, u.tool_name, u.integration_id
                )),
                SaveError::Stale { current } => ApiError::FailedPrecondition(format!(
                    "expected_revision: the tenant is at revision {current}, not {}",
                    req.expected_revision.unwrap_or_default()
                )),
                SaveError::Store(e) => ApiError::from(e),
            })?;
        self.publish(&caller.tenant, &saved).await;
        let snapshot = self.state.snapshots.get(&caller.tenant);
        tracing::info!(
            revision = saved.revision,
            changed = saved.changes.len(),
            "policies saved"
        );
        Ok(Response::new(pb::SetPolicyResponse {
            revision: saved.revision,
            tools: keys
                .iter()
                .filter_map(|(i, n)| snapshot.tool(i, n))
                .map(|t| tool_to_proto(t, true))
                .collect(),
        }))
    }

    async fn upsert_people(
        &self,
        request: Request<pb::UpsertPeopleRequest>,
    ) -> Result<Response<pb::UpsertPeopleResponse>, Status> {
        let caller = self
            .authenticate(&request, "UpsertPeople", &[Role::Admin])
            .await?;
        let req = request.into_inner();
        let people = unique_batch("people", "id", req.people, person_from_proto, |p| {
            p.id.clone()
        })
        .map_err(ApiError::from)?;
        let upserted = self
            .state
            .store
            .upsert_people(&caller.tenant, &people)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::UpsertPeopleResponse { upserted }))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let started = std::time::Instant::now();
        let outcome = match self
            .authenticate(&request, "Decide", &[Role::Agent, Role::Admin])
            .await
        {
            Ok(caller) => self.do_decide(&caller, request.into_inner()).await,
            Err(e) => Err(e),
        };
        let metrics = &self.state.metrics;
        metrics.decide_seconds.observe(started.elapsed());
        match outcome {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => {
                let status = Status::from(e);
                metrics.decide_error(status.code());
                Err(status)
            }
        }
    }

    async fn submit_approval(
        &self,
        request: Request<pb::SubmitApprovalRequest>,
    ) -> Result<Response<pb::SubmitApprovalResponse>, Status> {
        let caller = self
            .authenticate(&request, "SubmitApproval", &[Role::Approver, Role::Admin])
            .await?;
        let req = request.into_inner();
        check_id("approval_id", &req.approval_id).map_err(ApiError::from)?;
        let role = role_from_proto("role", req.role).map_err(ApiError::from)?;
        check_id("approver_id", &req.approver_id).map_err(ApiError::from)?;
        check_text("comment", &req.comment).map_err(ApiError::from)?;
        let step = StepRequest {
            role,
            approver_id: req.approver_id.clone(),
            approve: req.approve,
            comment: req.comment,
        };
        let snapshot = self.state.snapshots.get(&caller.tenant);
        let now = UnixMillis::now();
        let outcome = self
            .state
            .store
            .update_approval(
                &caller.tenant,
                &req.approval_id,
                vec![req.approver_id],
                move |a, people| {
                    let tool = snapshot.tool(&a.integration_id, &a.tool_name);
                    let requester = people.get(&a.requester_id);
                    let approver = people.get(&step.approver_id);
                    submit_step(a, tool, requester, approver, &step, now)
                        .map(|next| (Some(next), ()))
                },
            )
            .await;
        let approval = match outcome {
            Ok(Some(Updated { approval, .. })) => {
                self.state.approval_changed(&caller.tenant, &approval);
                approval
            }
            Ok(None) => {
                return Err(approval_not_found(&req.approval_id).into());
            }
            Err(UpdateError::Rule(e)) if e.is_permission() => {
                return Err(ApiError::PermissionDenied(e.to_string()).into());
            }
            Err(UpdateError::Rule(e)) => {
                return Err(ApiError::FailedPrecondition(e.to_string()).into());
            }
            Err(UpdateError::Store(e)) => return Err(ApiError::from(e).into()),
        };
        tracing::info!(approval = %approval.id, state = approval.state.as_str(), "approval decision recorded");
        Ok(Response::new(pb::SubmitApprovalResponse {
            approval: Some(approval_to_proto(&approval, now)),
        }))
    }

    async fn get_approval(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        let caller = self
            .authenticate(
                &request,
                "GetApproval",
                &[Role::Agent, Role::Approver, Role::Admin],
            )
            .await?;
        let req = request.into_inner();
        check_id("approval_id", &req.approval_id).map_err(ApiError::from)?;
        let approval = visible_approval(&self.state, &caller, &req.approval_id).await?;
        Ok(Response::new(pb::GetApprovalResponse {
            approval: Some(approval_to_proto(&approval, UnixMillis::now())),
        }))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = self
            .authenticate(&request, "ListApprovals", &[Role::Approver, Role::Admin])
            .await?;
        let req = request.into_inner();
        let state = state_from_proto("state", req.state).map_err(ApiError::from)?;
        let before_seq = decode_page_token(&req.page_token).map_err(ApiError::from)?;
        let limit = match req.page_size {
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
        let (approvals, next) = self
            .state
            .store
            .list_approvals(&caller.tenant, &query)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: approvals
                .iter()
                .map(|a| approval_to_proto(a, now))
                .collect(),
            next_page_token: next.map(encode_page_token).unwrap_or_default(),
        }))
    }

    type WatchConfigStream = Stream<pb::WatchConfigResponse>;

    async fn watch_config(
        &self,
        request: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let caller = self
            .authenticate(&request, "WatchConfig", &[Role::Agent, Role::Admin])
            .await?;
        let req = request.into_inner();
        // A resume from a revision this server has not reached yet waits for it, bounded.
        if let Some(since) = req.since_revision {
            self.snapshot_at_least(&caller.tenant, Some(since)).await?;
        }
        let stream = watch::watch_config(self.state.clone(), caller, req).await?;
        Ok(Response::new(stream))
    }

    type WatchApprovalsStream = Stream<pb::WatchApprovalsResponse>;

    async fn watch_approvals(
        &self,
        request: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        let caller = self
            .authenticate(
                &request,
                "WatchApprovals",
                &[Role::Agent, Role::Approver, Role::Admin],
            )
            .await?;
        let stream =
            watch::watch_approvals(self.state.clone(), caller, request.into_inner()).await?;
        Ok(Response::new(stream))
    }
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
