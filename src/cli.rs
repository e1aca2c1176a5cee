//! The operator's client commands: each one gRPC call (or stream) to a running server with
//! an API key, printed as a table or, with `--output json`, as the response in the protobuf
//! JSON mapping. Nothing here decides anything: the server's rules answer, as for any
//! other client.
//!
//! Exit codes: 0 on success; 1 with `error: <CODE>: <message>` on standard error when the
//! server answers with an error; 2 for bad usage (clap's own, a bad file or value).

use crate::proto::v1 as pb;
use crate::proto::v1::policy_service_client::PolicyServiceClient;
use clap::{Args, Subcommand, ValueEnum};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// How a client command reaches the server.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The server, http://HOST:PORT or https://HOST:PORT (TLS).
    #[arg(
        long,
        env = "TOOLGATE_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// The API key (never printed).
    #[arg(long, env = "TOOLGATE_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// table (for people) or json (the protobuf JSON mapping, one document per line).
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --client-key.
    #[arg(long, global = true, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS, with --client-cert.
    #[arg(long, global = true, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The client commands (`toolgate <noun> <verb>`).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// The tenant's tools and their policies.
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a tool's policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approval requests: list, show, approve, deny.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Connect an integration from a ConnectIntegrationRequest in JSON.
    Integrations {
        #[command(subcommand)]
        command: IntegrationsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sync the directory from an UpsertPeopleRequest in JSON.
    People {
        #[command(subcommand)]
        command: PeopleCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The tenant's history of saved revisions, newest first.
    Revisions {
        #[command(subcommand)]
        command: RevisionsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restore every tool's policy of an earlier revision, as one new revision.
    Rollback {
        revision: u64,
        /// Apply only if the tenant is still at this revision.
        #[arg(long)]
        expected_revision: Option<u64>,
        /// Why; shown in the history.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Where approval requests are sent: webhook channels.
    Channels {
        #[command(subcommand)]
        command: ChannelsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What was sent to the channels: list, retry a failed one.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow changes: one JSON line per event, resuming after a broken stream.
    Watch {
        #[command(subcommand)]
        command: WatchCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    List {
        #[arg(long)]
        integration: Option<String>,
        /// Admins: include disabled tools.
        #[arg(long)]
        include_disabled: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum PolicyArg {
    Auto,
    ApprovalNeeded,
    Disabled,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    Set {
        integration: String,
        tool: String,
        #[arg(value_enum)]
        policy: PolicyArg,
        #[arg(long)]
        manager_approval: Option<bool>,
        /// Apply only if the tenant is still at this revision.
        #[arg(long)]
        expected_revision: Option<u64>,
        /// Why; shown in the history.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Print every tool's policy as a policy file (JSON), to keep in git.
    Export {
        #[arg(long)]
        integration: Option<String>,
    },
    /// Show how a policy file differs from the server, and apply it as one Save.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show the differences only.
        #[arg(long)]
        dry_run: bool,
        /// Why; shown in the history.
        #[arg(long, default_value = "")]
        comment: String,
    },
}

/// A policy file: what `policy export` prints and `policy apply` reads.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// The revision it was exported at (informational).
    #[serde(default)]
    revision: u64,
    policies: Vec<PolicyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    integration_id: String,
    tool_name: String,
    /// `auto`, `approval_needed` or `disabled`.
    policy: String,
    #[serde(default)]
    manager_approval: bool,
}

#[derive(Debug, Subcommand)]
pub enum RevisionsCommand {
    List {
        /// Only revisions that changed a tool of this integration.
        #[arg(long)]
        integration: Option<String>,
        /// Revisions per request (every page is printed).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// The tenant's channels (secrets are never shown).
    List,
    /// Create a channel, or replace the one with this id: a webhook, or with
    /// --slack-channel a Slack app. Secrets are read from the environment only, so they are
    /// in no shell history or process list; unset on a replace, the stored ones are kept.
    /// TOOLGATE_CHANNEL_SECRET is a webhook's signing secret (whsec_<base64>) or a Slack
    /// app's bot token (xoxb-…); TOOLGATE_SLACK_SIGNING_SECRET is the Slack app's signing
    /// secret.
    Set {
        id: String,
        /// Where events are POSTed (http or https); for Slack, the Web API base (default
        /// Slack's own).
        #[arg(long, default_value = "")]
        url: String,
        /// A Slack channel: the conversation technician requests are posted to (an id such
        /// as C0123ABCD); managers get theirs as a direct message.
        #[arg(long)]
        slack_channel: Option<String>,
        /// Store the channel but send nothing to it.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete a channel; what it still had to send becomes failed.
    Delete { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeliveryStateArg {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Deliveries, newest first.
    List {
        #[arg(long)]
        state: Option<DeliveryStateArg>,
        /// Only this approval's.
        #[arg(long)]
        approval: Option<String>,
    },
    /// Send a failed delivery again.
    Retry { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Technician,
    Manager,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    List {
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    Show {
        id: String,
    },
    Approve(StepArgs),
    Deny(StepArgs),
}

#[derive(Debug, Args)]
pub struct StepArgs {
    id: String,
    /// The person deciding (checked against the directory).
    #[arg(long = "as")]
    person: String,
    #[arg(long, value_enum, default_value = "technician")]
    role: RoleArg,
    #[arg(long, default_value = "")]
    comment: String,
}

#[derive(Debug, Subcommand)]
pub enum IntegrationsCommand {
    Connect { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum PeopleCommand {
    Upsert { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum WatchCommand {
    Config {
        #[arg(long)]
        integration: Option<String>,
    },
    Approvals {
        #[arg(long)]
        approval_id: Option<String>,
    },
}

/// Why a command failed: the server's answer (exit 1) or bad usage (exit 2).
enum Failure {
    Server(Status),
    Usage(String),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Server(status)
    }
}

/// Runs a client command to completion.
pub async fn run(command: ClientCommand) -> ExitCode {
    match dispatch(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Server(status)) => {
            eprintln!("error: {}: {}", code_name(status.code()), status.message());
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: ClientCommand) -> Result<(), Failure> {
    match command {
        ClientCommand::Tools { command, client } => tools(command, &client).await?,
        ClientCommand::Policy { command, client } => policy(command, &client).await?,
        ClientCommand::Approvals { command, client } => approvals(command, &client).await?,
        ClientCommand::Integrations { command, client } => {
            let IntegrationsCommand::Connect { file } = command;
            let req: pb::ConnectIntegrationRequest = read_json(&file)?;
            let mut api = Api::connect(&client).await?;
            let answer = api.client.connect_integration(api.request(req)).await?;
            let answer = answer.into_inner();
            match client.output {
                Output::Json => print_json(&answer),
                Output::Table => {
                    println!("revision {}", answer.revision);
                    print_tools(&answer.tools);
                }
            }
        }
        ClientCommand::People { command, client } => {
            let PeopleCommand::Upsert { file } = command;
            let req: pb::UpsertPeopleRequest = read_json(&file)?;
            let mut api = Api::connect(&client).await?;
            let answer = api.client.upsert_people(api.request(req)).await?;
            match client.output {
                Output::Json => print_json(&answer.into_inner()),
                Output::Table => println!("upserted {}", answer.into_inner().upserted),
            }
        }
        ClientCommand::Watch { command, client } => watch(command, &client).await?,
        ClientCommand::Channels { command, client } => channels(command, &client).await?,
        ClientCommand::Deliveries { command, client } => deliveries(command, &client).await?,
        ClientCommand::Revisions { command, client } => revisions(command, &client).await?,
        ClientCommand::Rollback {
            revision,
            expected_revision,
            comment,
            client,
        } => {
            let req = pb::RollbackPoliciesRequest {
                to_revision: revision,
                expected_revision,
                comment,
            };
            let mut api = Api::connect(&client).await?;
            let answer = api.client.rollback_policies(api.request(req)).await?;
            let answer = answer.into_inner();
            match client.output {
                Output::Json => print_json(&answer),
                Output::Table => {
                    println!("revision {}", answer.revision);
                    print_tools(&answer.tools);
                }
            }
        }
    }
    Ok(())
}

async fn channels(command: ChannelsCommand, client: &ClientArgs) -> Result<(), Failure> {
    let mut api = Api::connect(client).await?;
    let print = |channels: &[pb::NotificationChannel]| match client.output {
        Output::Json => channels.iter().for_each(print_json),
        Output::Table => {
            println!("{:<20} {:<8} {:<8} url", "channel", "kind", "enabled");
            for c in channels {
                let kind = pb::ChannelKind::try_from(c.kind)
                    .map(|k| {
                        k.as_str_name()
                            .trim_start_matches("CHANNEL_KIND_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                println!("{:<20} {:<8} {:<8} {}", c.id, kind, c.enabled, c.url);
            }
        }
    };
    match command {
        ChannelsCommand::List => {
            let req = pb::ListNotificationChannelsRequest {};
            let answer = api
                .client
                .list_notification_channels(api.request(req))
                .await?;
            print(&answer.into_inner().channels);
        }
        ChannelsCommand::Set {
            id,
            url,
            slack_channel,
            disabled,
        } => {
            let env = |name| std::env::var(name).unwrap_or_default();
            let kind = match slack_channel {
                Some(_) => pb::ChannelKind::Slack,
                None => pb::ChannelKind::Webhook,
            };
            let channel = pb::NotificationChannel {
                id,
                kind: kind as i32,
                url,
                secret: env("TOOLGATE_CHANNEL_SECRET"),
                enabled: !disabled,
                slack_channel: slack_channel.unwrap_or_default(),
                slack_signing_secret: match kind {
                    pb::ChannelKind::Slack => env("TOOLGATE_SLACK_SIGNING_SECRET"),
                    _ => String::new(),
                },
            };
            let req = pb::SetNotificationChannelRequest {
                channel: Some(channel),
            };
            let answer = api
                .client
                .set_notification_channel(api.request(req))
                .await?;
            let stored = answer.into_inner().channel.unwrap_or_default();
            print(std::slice::from_ref(&stored));
        }
        ChannelsCommand::Delete { id } => {
            let req = pb::DeleteNotificationChannelRequest {
                channel_id: id.clone(),
            };
            api.client
                .delete_notification_channel(api.request(req))
                .await?;
            if client.output == Output::Table {
                println!("deleted {id}");
            }
        }
    }
    Ok(())
}

async fn deliveries(command: DeliveriesCommand, client: &ClientArgs) -> Result<(), Failure> {
    let mut api = Api::connect(client).await?;
    let all = match command {
        DeliveriesCommand::List { state, approval } => {
            let state = state.map_or(pb::DeliveryState::Unspecified, |s| match s {
                DeliveryStateArg::Pending => pb::DeliveryState::Pending,
                DeliveryStateArg::Delivered => pb::DeliveryState::Delivered,
                DeliveryStateArg::Failed => pb::DeliveryState::Failed,
            });
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let req = pb::ListDeliveriesRequest {
                    approval_id: approval.clone().unwrap_or_default(),
                    state: state as i32,
                    page_size: 500,
                    page_token,
                };
                let page = api.client.list_deliveries(api.request(req)).await?;
                let page = page.into_inner();
                all.extend(page.deliveries);
                if page.next_page_token.is_empty() {
                    break all;
                }
                page_token = page.next_page_token;
            }
        }
        DeliveriesCommand::Retry { id } => {
            let req = pb::RetryDeliveryRequest { delivery_id: id };
            let answer = api.client.retry_delivery(api.request(req)).await?;
            vec![answer.into_inner().delivery.unwrap_or_default()]
        }
    };
    print_deliveries(&all, client.output);
    Ok(())
}

fn print_deliveries(all: &[pb::Delivery], output: Output) {
    match output {
        Output::Json => all.iter().for_each(print_json),
        Output::Table => {
            println!(
                "{:<37} {:<12} {:<38} {:<20} {:<10} {:>8}  last error",
                "delivery", "channel", "approval", "event", "state", "attempts"
            );
            for d in all {
                let state = pb::DeliveryState::try_from(d.state)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("DELIVERY_STATE_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<37} {:<12} {:<38} {:<20} {:<10} {:>8}  {}",
                    d.id,
                    d.channel_id,
                    d.approval_id,
                    d.event_type,
                    state,
                    d.attempts,
                    d.last_error
                );
            }
        }
    }
}

/// Every page of the history: one JSON line per page with `--output json`, else a table
/// with a line per revision and one per tool it changed.
async fn revisions(command: RevisionsCommand, client: &ClientArgs) -> Result<(), Failure> {
    let RevisionsCommand::List {
        integration,
        page_size,
    } = command;
    let mut api = Api::connect(client).await?;
    let mut page_token = String::new();
    if client.output == Output::Table {
        println!(
            "{:<9} {:<24} {:<10} {:<20} {:<8} comment",
            "revision", "saved", "kind", "actor", "role"
        );
    }
    loop {
        let req = pb::ListRevisionsRequest {
            integration_id: integration.clone().unwrap_or_default(),
            page_size,
            page_token,
        };
        let answer = api.client.list_revisions(api.request(req)).await?;
        let answer = answer.into_inner();
        match client.output {
            Output::Json => print_json(&answer),
            Output::Table => answer.revisions.iter().for_each(print_revision),
        }
        if answer.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = answer.next_page_token;
    }
}

fn print_revision(r: &pb::Revision) {
    let kind = pb::RevisionKind::try_from(r.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("REVISION_KIND_")
                .to_lowercase()
        })
        .unwrap_or_default();
    let actor = if r.actor_name.is_empty() {
        &r.actor_key_id
    } else {
        &r.actor_name
    };
    println!(
        "{:<9} {:<24} {:<10} {:<20} {:<8} {}",
        r.revision,
        timestamp(r.saved_at.as_ref()),
        kind,
        actor,
        r.actor_role,
        r.comment
    );
    // A tool the revision added has no policy before it, one it removed none after.
    let policy = |p: i32| match policy_name(p).as_str() {
        "" | "unspecified" => "-".to_owned(),
        name => name.to_owned(),
    };
    let manager = |m: bool| if m { " +manager" } else { "" };
    for d in &r.diffs {
        println!(
            "          {}/{}: {}{} -> {}{}",
            d.integration_id,
            d.tool_name,
            policy(d.policy_before),
            manager(d.manager_approval_before),
            policy(d.policy_after),
            manager(d.manager_approval_after)
        );
    }
}

async fn tools(command: ToolsCommand, client: &ClientArgs) -> Result<(), Failure> {
    let ToolsCommand::List {
        integration,
        include_disabled,
    } = command;
    let mut api = Api::connect(client).await?;
    let req = pb::ListToolsRequest {
        integration_id: integration.unwrap_or_default(),
        include_disabled,
        min_revision: None,
    };
    let answer = api.client.list_tools(api.request(req)).await?.into_inner();
    match client.output {
        Output::Json => print_json(&answer),
        Output::Table => print_tools(&answer.tools),
    }
    Ok(())
}

async fn policy(command: PolicyCommand, client: &ClientArgs) -> Result<(), Failure> {
    let (integration, tool, policy, manager_approval, expected_revision, comment) = match command {
        PolicyCommand::Set {
            integration,
            tool,
            policy,
            manager_approval,
            expected_revision,
            comment,
        } => (
            integration,
            tool,
            policy,
            manager_approval,
            expected_revision,
            comment,
        ),
        PolicyCommand::Export { integration } => return export_policies(integration, client).await,
        PolicyCommand::Apply {
            file,
            dry_run,
            comment,
        } => return apply_policies(&file, dry_run, comment, client).await,
    };
    let mut api = Api::connect(client).await?;
    let policy = match policy {
        PolicyArg::Auto => pb::Policy::Auto,
        PolicyArg::ApprovalNeeded => pb::Policy::ApprovalNeeded,
        PolicyArg::Disabled => pb::Policy::Disabled,
    };
    let req = pb::SetPolicyRequest {
        changes: vec![pb::PolicyChange {
            integration_id: integration,
            tool_name: tool,
            policy: policy as i32,
            manager_approval,
        }],
        expected_revision,
        comment,
    };
    let answer = api.client.set_policy(api.request(req)).await?.into_inner();
    match client.output {
        Output::Json => print_json(&answer),
        Output::Table => {
            println!("revision {}", answer.revision);
            print_tools(&answer.tools);
        }
    }
    Ok(())
}

/// Every tool's policy (disabled ones included), sorted, as a policy file.
async fn current_policies(
    api: &mut Api,
    integration: Option<String>,
) -> Result<PolicyFile, Failure> {
    let req = pb::ListToolsRequest {
        integration_id: integration.unwrap_or_default(),
        include_disabled: true,
        min_revision: None,
    };
    let answer = api.client.list_tools(api.request(req)).await?.into_inner();
    let mut policies: Vec<PolicyEntry> = answer
        .tools
        .iter()
        .map(|t| PolicyEntry {
            integration_id: t.integration_id.clone(),
            tool_name: t.name.clone(),
            policy: policy_name(t.policy),
            manager_approval: t.manager_approval,
        })
        .collect();
    policies
        .sort_by(|a, b| (&a.integration_id, &a.tool_name).cmp(&(&b.integration_id, &b.tool_name)));
    Ok(PolicyFile {
        revision: answer.revision,
        policies,
    })
}

fn policy_name(p: i32) -> String {
    pb::Policy::try_from(p)
        .map(|p| p.as_str_name().trim_start_matches("POLICY_").to_lowercase())
        .unwrap_or_default()
}

async fn export_policies(integration: Option<String>, client: &ClientArgs) -> Result<(), Failure> {
    let mut api = Api::connect(client).await?;
    let file = current_policies(&mut api, integration).await?;
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| Failure::Usage(format!("cannot print the policy file: {e}")))?;
    println!("{text}");
    Ok(())
}

/// The entries of `wanted` that differ from `now`, each printed, as SetPolicy changes.
fn differences(
    path: &Path,
    wanted: &PolicyFile,
    now: &PolicyFile,
) -> Result<Vec<pb::PolicyChange>, Failure> {
    let mut changes = Vec::new();
    for (i, want) in wanted.policies.iter().enumerate() {
        let policy = match want.policy.as_str() {
            "auto" => pb::Policy::Auto,
            "approval_needed" => pb::Policy::ApprovalNeeded,
            "disabled" => pb::Policy::Disabled,
            other => {
                return Err(Failure::Usage(format!(
                    "{}: policies[{i}].policy: {other:?} is not auto, approval_needed or disabled",
                    path.display()
                )));
            }
        };
        let have = now
            .policies
            .iter()
            .find(|p| p.integration_id == want.integration_id && p.tool_name == want.tool_name);
        let Some(have) = have else {
            return Err(Failure::Usage(format!(
                "{}: policies[{i}]: no tool {:?} in integration {:?} on the server",
                path.display(),
                want.tool_name,
                want.integration_id
            )));
        };
        if have == want {
            continue;
        }
        let manager = |m: bool| if m { " +manager" } else { "" };
        println!(
            "{}/{}: {}{} -> {}{}",
            want.integration_id,
            want.tool_name,
            have.policy,
            manager(have.manager_approval),
            want.policy,
            manager(want.manager_approval)
        );
        changes.push(pb::PolicyChange {
            integration_id: want.integration_id.clone(),
            tool_name: want.tool_name.clone(),
            policy: policy as i32,
            manager_approval: Some(want.manager_approval),
        });
    }
    Ok(changes)
}

/// Applies a policy file: the entries that differ from the server, as one SetPolicy at the
/// revision the differences were computed on (a Save in between is a conflict, exit 1).
async fn apply_policies(
    path: &Path,
    dry_run: bool,
    comment: String,
    client: &ClientArgs,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let wanted: PolicyFile = serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{}: not a policy file: {e}", path.display())))?;
    let mut api = Api::connect(client).await?;
    let now = current_policies(&mut api, None).await?;
    let changes = differences(path, &wanted, &now)?;
    if changes.is_empty() {
        println!("no changes (revision {})", now.revision);
        return Ok(());
    }
    if dry_run {
        println!("{} changes; not applied (--dry-run)", changes.len());
        return Ok(());
    }
    let req = pb::SetPolicyRequest {
        changes,
        expected_revision: Some(now.revision),
        comment,
    };
    let answer = api.client.set_policy(api.request(req)).await?.into_inner();
    println!("applied as revision {}", answer.revision);
    Ok(())
}

async fn approvals(command: ApprovalsCommand, client: &ClientArgs) -> Result<(), Failure> {
    let mut api = Api::connect(client).await?;
    match command {
        ApprovalsCommand::List { state } => {
            let state = state.map_or(pb::ApprovalState::Unspecified, |s| match s {
                StateArg::Pending => pb::ApprovalState::Pending,
                StateArg::Approved => pb::ApprovalState::Approved,
                StateArg::Denied => pb::ApprovalState::Denied,
                StateArg::Expired => pb::ApprovalState::Expired,
                StateArg::Consumed => pb::ApprovalState::Consumed,
                StateArg::Cancelled => pb::ApprovalState::Cancelled,
            });
            // Every page, to the end.
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let req = pb::ListApprovalsRequest {
                    state: state as i32,
                    page_size: 500,
                    page_token: token,
                };
                let page = api.client.list_approvals(api.request(req)).await?;
                let page = page.into_inner();
                all.extend(page.approvals);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            match client.output {
                Output::Json => all.iter().for_each(print_json),
                Output::Table => print_approvals(&all),
            }
        }
        ApprovalsCommand::Show { id } => {
            let req = pb::GetApprovalRequest { approval_id: id };
            let answer = api
                .client
                .get_approval(api.request(req))
                .await?
                .into_inner();
            let approval = answer.approval.unwrap_or_default();
            match client.output {
                Output::Json => print_json(&approval),
                Output::Table => {
                    print_approvals(std::slice::from_ref(&approval));
                    println!("arguments: {}", approval.arguments_json);
                    for step in &approval.steps {
                        let verdict = if step.approved { "approved" } else { "denied" };
                        let role = role_name(step.role);
                        println!("  {role} {} {verdict} {}", step.approver_id, step.comment);
                    }
                }
            }
        }
        ApprovalsCommand::Approve(step) => submit(&mut api, client, step, true).await?,
        ApprovalsCommand::Deny(step) => submit(&mut api, client, step, false).await?,
    }
    Ok(())
}

async fn submit(
    api: &mut Api,
    client: &ClientArgs,
    step: StepArgs,
    approve: bool,
) -> Result<(), Failure> {
    let role = match step.role {
        RoleArg::Technician => pb::ApproverRole::Technician,
        RoleArg::Manager => pb::ApproverRole::Manager,
    };
    let req = pb::SubmitApprovalRequest {
        approval_id: step.id,
        role: role as i32,
        approver_id: step.person,
        approve,
        comment: step.comment,
    };
    let answer = api.client.submit_approval(api.request(req)).await?;
    let approval = answer.into_inner().approval.unwrap_or_default();
    match client.output {
        Output::Json => print_json(&approval),
        Output::Table => print_approvals(std::slice::from_ref(&approval)),
    }
    Ok(())
}

/// Follows a watch stream, printing one JSON line per message; after a stream breaks
/// (the server drained, the connection dropped) it reconnects with backoff and resumes:
/// WatchConfig from the last revision seen, WatchApprovals afresh (it sends each change as
/// it happens; what changed meanwhile is in `approvals list`).
async fn watch(command: WatchCommand, client: &ClientArgs) -> Result<(), Failure> {
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    let mut last_revision: Option<u64> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut got_any = false;
        let broken = match Api::connect(client).await {
            Err(Failure::Server(status)) => status,
            Err(usage) => return Err(usage),
            Ok(mut api) => match &command {
                WatchCommand::Config { integration } => {
                    let req = pb::WatchConfigRequest {
                        since_revision: last_revision,
                        integration_id: integration.clone().unwrap_or_default(),
                    };
                    let answer = api.client.watch_config(api.request(req)).await;
                    print_stream(answer, |event: &pb::WatchConfigResponse| {
                        got_any = true;
                        last_revision = Some(event.revision);
                    })
                    .await
                }
                WatchCommand::Approvals { approval_id } => {
                    let req = pb::WatchApprovalsRequest {
                        approval_id: approval_id.clone().unwrap_or_default(),
                    };
                    let answer = api.client.watch_approvals(api.request(req)).await;
                    print_stream(answer, |_| got_any = true).await
                }
            },
        };
        if got_any {
            backoff = FIRST_BACKOFF;
        }
        // Only a server that is gone, going or overloaded is worth trying again.
        if !matches!(
            broken.code(),
            Code::Unavailable | Code::ResourceExhausted | Code::Unknown | Code::Internal
        ) {
            return Err(Failure::Server(broken));
        }
        eprintln!(
            "watch: {}: {}; reconnecting in {backoff:?}",
            code_name(broken.code()),
            broken.message()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Prints each message of a stream as a JSON line, telling `seen` of it first; how the
/// stream ended.
async fn print_stream<T: Named>(
    answer: Result<tonic::Response<tonic::Streaming<T>>, Status>,
    mut seen: impl FnMut(&T),
) -> Status {
    let mut stream = match answer {
        Ok(answer) => answer.into_inner(),
        Err(status) => return status,
    };
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                seen(&event);
                print_json(&event);
            }
            Ok(None) => return Status::unavailable("the stream ended"),
            Err(status) => return status,
        }
    }
}

/// A connected client and the key it sends.
struct Api {
    client: PolicyServiceClient<Channel>,
    key: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Api {
    async fn connect(args: &ClientArgs) -> Result<Api, Failure> {
        let https = args.server.starts_with("https://");
        if !https && !args.server.starts_with("http://") {
            let message = format!(
                "--server {:?}: not http://HOST:PORT or https://HOST:PORT",
                args.server
            );
            return Err(Failure::Usage(message));
        }
        // tonic uses TLS for an https:// URI only; certificates with http:// would send the
        // key in the clear.
        if !https && (args.ca_cert.is_some() || args.client_cert.is_some()) {
            let message = "--ca-cert and --client-cert need an https:// --server";
            return Err(Failure::Usage(message.into()));
        }
        let mut endpoint = Endpoint::from_shared(args.server.clone())
            .map_err(|e| Failure::Usage(format!("--server {:?}: {e}", args.server)))?
            .connect_timeout(Duration::from_secs(10));
        if https {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &args.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read_file(ca)?));
            }
            if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
                tls = tls.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Failure::Usage(format!("tls: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            Failure::Server(Status::unavailable(format!(
                "cannot reach {}: {}",
                args.server,
                error_chain(&e)
            )))
        })?;
        let key = match &args.api_key {
            Some(key) => Some(
                format!("Bearer {key}")
                    .parse()
                    .map_err(|_| Failure::Usage("--api-key: not a valid header value".into()))?,
            ),
            None => None,
        };
        Ok(Api {
            client: PolicyServiceClient::new(channel),
            key,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(key) = &self.key {
            req.metadata_mut().insert("authorization", key.clone());
        }
        req
    }
}

/// `e: its source: its source's source`, as transport errors say little on their own
/// (a cause that repeats the one before, as hyper's layers do, is said once).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if parts.last() != Some(&cause_text) {
            parts.push(cause_text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

/// A message of the service, by its full protobuf name.
trait Named: Message + Default {
    const NAME: &'static str;
}

macro_rules! named {
    ($($message:ident),*) => {$(
        impl Named for pb::$message {
            const NAME: &'static str = concat!("toolgate.v1.", stringify!($message));
        }
    )*};
}

named!(
    Approval,
    Delivery,
    NotificationChannel,
    ConnectIntegrationRequest,
    ConnectIntegrationResponse,
    ListRevisionsResponse,
    ListToolsResponse,
    RollbackPoliciesResponse,
    SetPolicyResponse,
    UpsertPeopleRequest,
    UpsertPeopleResponse,
    WatchApprovalsResponse,
    WatchConfigResponse
);

/// The service's descriptors, for the protobuf JSON mapping.
fn pool() -> &'static DescriptorPool {
    crate::proto::descriptors()
}

/// A request message from a file in the protobuf JSON mapping.
fn read_json<M: Named>(path: &PathBuf) -> Result<M, Failure> {
    let text = read_file(path)?;
    let descriptor = pool()
        .get_message_by_name(M::NAME)
        .ok_or_else(|| Failure::Usage(format!("no descriptor for {}", M::NAME)))?;
    let mut de = serde_json::Deserializer::from_slice(&text);
    let dynamic = DynamicMessage::deserialize(descriptor, &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

/// Prints `message` on one line in the protobuf JSON mapping.
fn print_json<M: Named>(message: &M) {
    let line = pool()
        .get_message_by_name(M::NAME)
        .ok_or_else(|| "no descriptor".to_owned())
        .and_then(|descriptor| {
            DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
                .map_err(|e| e.to_string())
        })
        .and_then(|dynamic| serde_json::to_string(&dynamic).map_err(|e| e.to_string()));
    match line {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("error: cannot print {}: {e}", M::NAME),
    }
}

fn print_tools(tools: &[pb::Tool]) {
    println!(
        "{:<20} {:<32} {:<16} {:<8} {:<11} revision",
        "integration", "tool", "policy", "manager", "source"
    );
    for t in tools {
        let policy = policy_name(t.policy);
        let source = pb::PolicySource::try_from(t.source)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("POLICY_SOURCE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "{:<20} {:<32} {:<16} {:<8} {:<11} {}",
            t.integration_id,
            t.name,
            policy,
            if t.manager_approval { "yes" } else { "no" },
            source,
            t.revision
        );
    }
}

fn print_approvals(approvals: &[pb::Approval]) {
    println!(
        "{:<24} {:<10} {:<32} {:<16} {:<24} expires",
        "id", "state", "tool", "requester", "created"
    );
    for a in approvals {
        let state = pb::ApprovalState::try_from(a.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("APPROVAL_STATE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "{:<24} {:<10} {:<32} {:<16} {:<24} {}",
            a.id,
            state,
            format!("{}/{}", a.integration_id, a.tool_name),
            a.requester_id,
            timestamp(a.created_at.as_ref()),
            timestamp(a.expires_at.as_ref())
        );
    }
}

fn role_name(role: i32) -> String {
    pb::ApproverRole::try_from(role)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("APPROVER_ROLE_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.map(ToString::to_string).unwrap_or_default()
}

/// `NotFound` → `NOT_FOUND`: the gRPC code's name as the protocol spells it.
fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_protocol_names() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn messages_print_in_the_protobuf_json_mapping() {
        let tool = pb::Tool {
            integration_id: "entra".into(),
            name: "get_user".into(),
            policy: pb::Policy::Auto as i32,
            ..Default::default()
        };
        let descriptor = pool().get_message_by_name("toolgate.v1.Tool").unwrap();
        let dynamic = DynamicMessage::decode(descriptor, tool.encode_to_vec().as_slice()).unwrap();
        let json = serde_json::to_value(&dynamic).unwrap();
        assert_eq!(json["integrationId"], "entra");
        assert_eq!(json["policy"], "POLICY_AUTO");
    }
}
