//! The gRPC transport: each RPC authenticates, converts its request, calls the use case in
//! [`crate::app`], and converts the answer. Nothing here decides anything.

pub mod connections;
pub mod convert;
pub mod direct;
pub mod error;
pub mod frames;
pub mod gate;
pub mod routes;
pub mod rpc_metrics;
mod watch;

use crate::app::approvals::SubmitInput;
use crate::app::save::SaveRequest;
use crate::app::{App, AppError, Operation};
use crate::policy::names::{ApprovalId, PersonId};
use crate::policy::names::{FieldError, check_id, check_optional_id, check_text};
use crate::policy::save::PolicyEdit;
use crate::policy::{Caller, Policy, Role};
use crate::proto::v1 as pb;
use crate::proto::v1::policy_service_server::PolicyService;
use crate::store::IntegrationMeta;
use convert::*;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Most entries one request may carry (tools, changes, people).
pub const MAX_BATCH: usize = 10_000;

/// The `toolgate.v1.PolicyService` implementation.
#[derive(Debug)]
pub struct PolicyApi {
    app: Arc<App>,
}

impl Clone for PolicyApi {
    fn clone(&self) -> Self {
        PolicyApi {
            app: self.app.clone(),
        }
    }
}

impl PolicyApi {
    pub fn new(app: Arc<App>) -> Self {
        PolicyApi { app }
    }

    /// The caller of `req`: the one the gate authenticated for `op` (see [`gate`]), or,
    /// when the service runs without the gate, from its `authorization` header.
    async fn caller<T>(&self, req: &Request<T>, op: Operation) -> Result<Arc<Caller>, Status> {
        if let Some(caller) = req.extensions().get::<Arc<Caller>>() {
            return Ok(caller.clone());
        }
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        Ok(self.app.authenticate(header, op).await?)
    }
}

fn invalid(e: FieldError) -> Status {
    AppError::from(e).into()
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

fn connect_from_proto(req: pb::ConnectIntegrationRequest) -> Result<SaveRequest, FieldError> {
    check_id("integration_id", &req.integration_id)?;
    check_id("kind", &req.kind)?;
    check_text("display_name", &req.display_name)?;
    check_text("comment", &req.comment)?;
    let tools = unique_batch("tools", "name", req.tools, definition_from_proto, |d| {
        d.name.clone()
    })?;
    let integration = IntegrationMeta {
        id: req.integration_id,
        kind: req.kind,
        display_name: req.display_name,
    };
    Ok(SaveRequest::Connect {
        integration,
        tools,
        comment: req.comment,
    })
}

fn set_policy_from_proto(req: pb::SetPolicyRequest) -> Result<SaveRequest, FieldError> {
    if req.changes.is_empty() {
        return Err(FieldError::new(
            "changes",
            "at least one change is required",
        ));
    }
    check_text("comment", &req.comment)?;
    let edits = unique_batch(
        "changes",
        "tool_name",
        req.changes,
        policy_edit_from_proto,
        |e: &PolicyEdit| (e.integration_id.clone(), e.tool_name.clone()),
    )?;
    Ok(SaveRequest::SetPolicy {
        edits,
        expected_revision: req.expected_revision,
        comment: req.comment,
    })
}

/// One Decide by `caller`: its request checked and converted, the decision, the answer;
/// its time and any error counted.
///
/// A plain function returning the future, so that the future holds the converted request
/// only (an async fn would hold the request as well as what it converts it to).
fn decide<'a>(
    app: &'a App,
    caller: &'a Caller,
    request: pb::DecideRequest,
) -> impl Future<Output = Result<pb::DecideResponse, Status>> + Send + 'a {
    let started = std::time::Instant::now();
    let input = decide_input(request).map_err(invalid);
    async move {
        let outcome = match input {
            Ok(ref input) => app.decide(caller, input).await.map_err(Status::from),
            Err(status) => Err(status),
        };
        let metrics = &app.metrics;
        metrics
            .decide_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(out) => Ok(pb::DecideResponse {
                verdict: verdict_to_proto(out.decision.verdict) as i32,
                code: code_to_proto(out.decision.code) as i32,
                reason: out.decision.reason.into_owned(),
                revision: out.revision,
                approval: out.approval.map(|a| approval_to_proto(&a, out.now)),
                decision_id: out.decision_id,
            }),
            Err(status) => {
                metrics.decide_error(status.code());
                Err(status)
            }
        }
    }
}

/// A Decide refused before it could ask (its caller is not known, or may not decide):
/// counted as answered with `status`, in no time.
fn decide_refused(app: &App, status: Status) -> Status {
    app.metrics.decide_seconds.observe(0.0);
    app.metrics.decide_error(status.code());
    status
}

/// A server stream as tonic takes it: polled directly, one allocation per stream.
type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn connect_integration(
        &self,
        request: Request<pb::ConnectIntegrationRequest>,
    ) -> Result<Response<pb::ConnectIntegrationResponse>, Status> {
        let caller = self.caller(&request, Operation::ConnectIntegration).await?;
        let save = connect_from_proto(request.into_inner()).map_err(invalid)?;
        let saved = self.app.save(&caller, save).await?;
        Ok(Response::new(pb::ConnectIntegrationResponse {
            tools: saved.tools.iter().map(|t| tool_to_proto(t, true)).collect(),
            revision: saved.revision,
        }))
    }

    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        let caller = self.caller(&request, Operation::ListTools).await?;
        let req = request.into_inner();
        check_optional_id("integration_id", &req.integration_id).map_err(invalid)?;
        let admin = caller.role == Role::Admin;
        if req.include_disabled && !admin {
            return Err(AppError::PermissionDenied(
                "include_disabled: only admin keys may list disabled tools".into(),
            )
            .into());
        }
        let snapshot = self
            .app
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
        let caller = self.caller(&request, Operation::SetPolicy).await?;
        let save = set_policy_from_proto(request.into_inner()).map_err(invalid)?;
        let saved = self.app.save(&caller, save).await?;
        Ok(Response::new(pb::SetPolicyResponse {
            revision: saved.revision,
            tools: saved.tools.iter().map(|t| tool_to_proto(t, true)).collect(),
        }))
    }

    async fn upsert_people(
        &self,
        request: Request<pb::UpsertPeopleRequest>,
    ) -> Result<Response<pb::UpsertPeopleResponse>, Status> {
        let caller = self.caller(&request, Operation::UpsertPeople).await?;
        let people = request.into_inner().people;
        let people = unique_batch("people", "id", people, person_from_proto, |p| p.id.clone())
            .map_err(invalid)?;
        let upserted = self.app.upsert_people(&caller, &people).await?;
        Ok(Response::new(pb::UpsertPeopleResponse { upserted }))
    }

    /// Never reached in a server: [`routes::Routes`] answers Decide in front of this
    /// service, through the same [`decide`].
    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let caller = match self.caller(&request, Operation::Decide).await {
            Ok(caller) => caller,
            Err(status) => return Err(decide_refused(&self.app, status)),
        };
        decide(&self.app, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn submit_approval(
        &self,
        request: Request<pb::SubmitApprovalRequest>,
    ) -> Result<Response<pb::SubmitApprovalResponse>, Status> {
        let caller = self.caller(&request, Operation::SubmitApproval).await?;
        let req = request.into_inner();
        let role = role_from_proto("role", req.role).map_err(invalid)?;
        let input = SubmitInput {
            approval_id: ApprovalId::parse("approval_id", req.approval_id).map_err(invalid)?,
            role,
            approver_id: PersonId::parse("approver_id", req.approver_id).map_err(invalid)?,
            approve: req.approve,
            comment: req.comment,
        };
        let approval = self.app.submit_approval(&caller, input).await?;
        Ok(Response::new(pb::SubmitApprovalResponse {
            approval: Some(approval_to_proto(
                &approval,
                crate::policy::UnixMillis::now(),
            )),
        }))
    }

    async fn cancel_approval(
        &self,
        request: Request<pb::CancelApprovalRequest>,
    ) -> Result<Response<pb::CancelApprovalResponse>, Status> {
        let caller = self.caller(&request, Operation::CancelApproval).await?;
        let req = request.into_inner();
        let id = ApprovalId::parse("approval_id", req.approval_id).map_err(invalid)?;
        let approval = self.app.cancel_approval(&caller, &id, &req.reason).await?;
        Ok(Response::new(pb::CancelApprovalResponse {
            approval: Some(approval_to_proto(
                &approval,
                crate::policy::UnixMillis::now(),
            )),
        }))
    }

    async fn set_notification_channel(
        &self,
        request: Request<pb::SetNotificationChannelRequest>,
    ) -> Result<Response<pb::SetNotificationChannelResponse>, Status> {
        let caller = self
            .caller(&request, Operation::SetNotificationChannel)
            .await?;
        let channel = request
            .into_inner()
            .channel
            .ok_or_else(|| invalid(FieldError::new("channel", "is required")))?;
        let channel = channel_from_proto(channel).map_err(invalid)?;
        let stored = self.app.set_channel(&caller, channel).await?;
        Ok(Response::new(pb::SetNotificationChannelResponse {
            channel: Some(channel_to_proto(&stored)),
        }))
    }

    async fn list_notification_channels(
        &self,
        request: Request<pb::ListNotificationChannelsRequest>,
    ) -> Result<Response<pb::ListNotificationChannelsResponse>, Status> {
        let caller = self
            .caller(&request, Operation::ListNotificationChannels)
            .await?;
        let channels = self.app.list_channels(&caller).await?;
        Ok(Response::new(pb::ListNotificationChannelsResponse {
            channels: channels.iter().map(channel_to_proto).collect(),
        }))
    }

    async fn delete_notification_channel(
        &self,
        request: Request<pb::DeleteNotificationChannelRequest>,
    ) -> Result<Response<pb::DeleteNotificationChannelResponse>, Status> {
        let caller = self
            .caller(&request, Operation::DeleteNotificationChannel)
            .await?;
        let id = request.into_inner().channel_id;
        self.app.delete_channel(&caller, &id).await?;
        Ok(Response::new(pb::DeleteNotificationChannelResponse {}))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let caller = self.caller(&request, Operation::ListDeliveries).await?;
        let req = request.into_inner();
        let approval_id =
            ApprovalId::parse_optional("approval_id", req.approval_id).map_err(invalid)?;
        let state = delivery_state_from_proto("state", req.state).map_err(invalid)?;
        let page = self
            .app
            .list_deliveries(&caller, approval_id, state, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: page.deliveries.iter().map(delivery_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::RetryDeliveryResponse>, Status> {
        let caller = self.caller(&request, Operation::RetryDelivery).await?;
        let id = request.into_inner().delivery_id;
        let delivery = self.app.retry_delivery(&caller, &id).await?;
        Ok(Response::new(pb::RetryDeliveryResponse {
            delivery: Some(delivery_to_proto(&delivery)),
        }))
    }

    async fn get_approval(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        let caller = self.caller(&request, Operation::GetApproval).await?;
        let req = request.into_inner();
        let id = ApprovalId::parse("approval_id", req.approval_id).map_err(invalid)?;
        let approval = self.app.get_approval(&caller, &id).await?;
        Ok(Response::new(pb::GetApprovalResponse {
            approval: Some(approval_to_proto(
                &approval,
                crate::policy::UnixMillis::now(),
            )),
        }))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = self.caller(&request, Operation::ListApprovals).await?;
        let req = request.into_inner();
        let state = state_from_proto("state", req.state).map_err(invalid)?;
        let page = self
            .app
            .list_approvals(&caller, state, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: page
                .approvals
                .iter()
                .map(|a| approval_to_proto(a, page.now))
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    type WatchConfigStream = Stream<pb::WatchConfigResponse>;

    /// Never reached in a server: [`routes::Routes`] serves this method in front of the
    /// generated service, from frames shared between streams ([`frames`]).
    async fn watch_config(
        &self,
        _request: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        Err(Status::unimplemented(
            "WatchConfig is served by grpc::routes::Routes in front of this service",
        ))
    }

    async fn list_revisions(
        &self,
        request: Request<pb::ListRevisionsRequest>,
    ) -> Result<Response<pb::ListRevisionsResponse>, Status> {
        let caller = self.caller(&request, Operation::ListRevisions).await?;
        let req = request.into_inner();
        check_optional_id("integration_id", &req.integration_id).map_err(invalid)?;
        let integration = (!req.integration_id.is_empty()).then_some(req.integration_id);
        let page = self
            .app
            .list_revisions(&caller, integration, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListRevisionsResponse {
            revisions: page.revisions.iter().map(revision_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn rollback_policies(
        &self,
        request: Request<pb::RollbackPoliciesRequest>,
    ) -> Result<Response<pb::RollbackPoliciesResponse>, Status> {
        let caller = self.caller(&request, Operation::RollbackPolicies).await?;
        let req = request.into_inner();
        check_text("comment", &req.comment).map_err(invalid)?;
        let saved = self
            .app
            .rollback(&caller, req.to_revision, req.expected_revision, req.comment)
            .await?;
        Ok(Response::new(pb::RollbackPoliciesResponse {
            revision: saved.revision,
            tools: saved.tools.iter().map(|t| tool_to_proto(t, true)).collect(),
        }))
    }

    type WatchApprovalsStream = Stream<pb::WatchApprovalsResponse>;

    async fn watch_approvals(
        &self,
        request: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        let caller = self.caller(&request, Operation::WatchApprovals).await?;
        let stream = watch::watch_approvals(self.app.clone(), caller, request.into_inner()).await?;
        Ok(Response::new(stream))
    }
}
