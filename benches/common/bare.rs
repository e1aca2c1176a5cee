//! The baseline the benches compare toolgate with: the same generated PolicyService, same
//! tonic, codec and runtime, and TCP_NODELAY like toolgate, doing nothing of its own.
//!
//! - Decide answers toolgate's answer for an `auto` tool at revision 1, looking at nothing.
//! - SetPolicy forwards one pre-built event to every open WatchConfig stream.
//! - Everything else is UNIMPLEMENTED.

use std::io::Write;
use std::pin::Pin;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_server::{PolicyService, PolicyServiceServer};

/// Serves the baseline on a free loopback port, printing the address on the first line of
/// standard output, until standard input closes (the parent bench exits or drops it).
pub async fn serve_bare(change: pb::WatchConfigResponse) {
    // A tracing subscriber at warn: the baseline does no logging work per call (without a
    // subscriber, tonic's and h2's spans go through the `log` fallback, which cost the
    // baseline about 8 000 instructions per call). toolgate runs at its default level.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .try_init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    std::io::stdout().flush().expect("flush");
    let (events, _) = broadcast::channel(64);
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
    };
    Server::builder()
        .add_service(PolicyServiceServer::new(Bare { events, change }))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stdin_closed,
        )
        .await
        .expect("serve");
}

struct Bare {
    events: broadcast::Sender<pb::WatchConfigResponse>,
    /// What a SetPolicy sends to every watcher.
    change: pb::WatchConfigResponse,
}

type Out<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented_rpc<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("bare baseline"))
}

#[tonic::async_trait]
impl PolicyService for Bare {
    async fn connect_integration(
        &self,
        _: Request<pb::ConnectIntegrationRequest>,
    ) -> Result<Response<pb::ConnectIntegrationResponse>, Status> {
        unimplemented_rpc()
    }
    async fn list_tools(
        &self,
        _: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        unimplemented_rpc()
    }
    async fn set_policy(
        &self,
        _: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let _ = self.events.send(self.change.clone());
        Ok(Response::new(pb::SetPolicyResponse::default()))
    }
    async fn upsert_people(
        &self,
        _: Request<pb::UpsertPeopleRequest>,
    ) -> Result<Response<pb::UpsertPeopleResponse>, Status> {
        unimplemented_rpc()
    }
    async fn decide(
        &self,
        _: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        Ok(Response::new(pb::DecideResponse {
            verdict: pb::Verdict::Allow as i32,
            code: pb::DecisionCode::PolicyAuto as i32,
            reason: "policy is auto".into(),
            revision: 1,
            approval: None,
            // As long as toolgate's, so the answers are the same size.
            decision_id: "dec_0123456789ab_0000000001".into(),
        }))
    }
    async fn submit_approval(
        &self,
        _: Request<pb::SubmitApprovalRequest>,
    ) -> Result<Response<pb::SubmitApprovalResponse>, Status> {
        unimplemented_rpc()
    }
    async fn get_approval(
        &self,
        _: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        unimplemented_rpc()
    }
    async fn list_approvals(
        &self,
        _: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        unimplemented_rpc()
    }
    type WatchConfigStream = ReceiverStream<Result<pb::WatchConfigResponse, Status>>;
    async fn watch_config(
        &self,
        _: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let mut rx = self.events.subscribe();
        let (tx, out) = mpsc::channel(16);
        tokio::spawn(async move {
            let first = pb::WatchConfigResponse {
                revision: 1,
                event: Some(pb::watch_config_response::Event::Snapshot(
                    pb::Snapshot::default(),
                )),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while let Ok(event) = rx.recv().await {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
    type WatchApprovalsStream = Out<pb::WatchApprovalsResponse>;
    async fn watch_approvals(
        &self,
        _: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        unimplemented_rpc()
    }
    async fn list_revisions(
        &self,
        _: Request<pb::ListRevisionsRequest>,
    ) -> Result<Response<pb::ListRevisionsResponse>, Status> {
        unimplemented_rpc()
    }
    async fn cancel_approval(
        &self,
        _: Request<pb::CancelApprovalRequest>,
    ) -> Result<Response<pb::CancelApprovalResponse>, Status> {
        unimplemented_rpc()
    }
    async fn set_notification_channel(
        &self,
        _: Request<pb::SetNotificationChannelRequest>,
    ) -> Result<Response<pb::SetNotificationChannelResponse>, Status> {
        unimplemented_rpc()
    }
    async fn list_notification_channels(
        &self,
        _: Request<pb::ListNotificationChannelsRequest>,
    ) -> Result<Response<pb::ListNotificationChannelsResponse>, Status> {
        unimplemented_rpc()
    }
    async fn delete_notification_channel(
        &self,
        _: Request<pb::DeleteNotificationChannelRequest>,
    ) -> Result<Response<pb::DeleteNotificationChannelResponse>, Status> {
        unimplemented_rpc()
    }
    async fn list_deliveries(
        &self,
        _: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        unimplemented_rpc()
    }
    async fn retry_delivery(
        &self,
        _: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::RetryDeliveryResponse>, Status> {
        unimplemented_rpc()
    }
    async fn rollback_policies(
        &self,
        _: Request<pb::RollbackPoliciesRequest>,
    ) -> Result<Response<pb::RollbackPoliciesResponse>, Status> {
        unimplemented_rpc()
    }
}
