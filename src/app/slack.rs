//! A click on Approve or Deny in Slack, as the application takes it: checked to come from
//! Slack, mapped to the person of record, and recorded through [`App::submit_approval`],
//! with the same rules as the gRPC call. Any doubt refuses.
//!
//! The order matters: nothing in the body is read before its signature verifies with the
//! signing secret of an enabled Slack channel, and its timestamp is within five minutes.

use super::approvals::SubmitInput;
use super::{App, AppError};
use crate::delivery::slack::{Click, check_timestamp, parse_click, verify};
use crate::metrics::SlackOutcome;
use crate::policy::names::{ApprovalId, PersonId};
use crate::policy::{Approval, ApprovalState, Caller, Role, UnixMillis};

/// An interaction request as it arrived: the two Slack headers and the raw body.
#[derive(Debug, Clone, Copy)]
pub struct SlackRequest<'a> {
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// What the HTTP listener answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackAnswer {
    /// 401: not shown to come from Slack; the reason is for the sender, nothing was read.
    Unauthorized(&'static str),
    /// 400: from Slack, but not a click on toolgate's buttons.
    BadRequest(String),
    /// 200, and `text` goes to the clicking user alone (ephemeral, through
    /// `response_url`): what was recorded, or why nothing was.
    Reply {
        response_url: String,
        text: String,
        recorded: bool,
    },
}

impl App {
    /// Takes one interaction request from Slack.
    pub async fn slack_interaction(&self, request: SlackRequest<'_>) -> SlackAnswer {
        let answer = self.take_interaction(request).await;
        self.metrics.deliveries.slack_interaction(match &answer {
            SlackAnswer::Unauthorized(_) => SlackOutcome::Unauthorized,
            SlackAnswer::BadRequest(_) => SlackOutcome::BadRequest,
            SlackAnswer::Reply { recorded: true, .. } => SlackOutcome::Recorded,
            SlackAnswer::Reply { .. } => SlackOutcome::Refused,
        });
        answer
    }

    async fn take_interaction(&self, request: SlackRequest<'_>) -> SlackAnswer {
        let (Some(timestamp), Some(signature)) = (request.timestamp, request.signature) else {
            return SlackAnswer::Unauthorized(
                "X-Slack-Request-Timestamp and X-Slack-Signature are required",
            );
        };
        if let Err(why) = check_timestamp(timestamp, UnixMillis::now().0 / 1000) {
            return SlackAnswer::Unauthorized(why);
        }
        let channels = match self.store.slack_channels().await {
            Ok(channels) => channels,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the Slack channels to check a click");
                return SlackAnswer::Unauthorized(
                    "the signature could not be checked now; nothing was recorded",
                );
            }
        };
        // The channels whose app signed it: one Slack app may serve several tenants.
        let signed_for: Vec<(String, String)> = channels
            .into_iter()
            // An empty secret (a row not written through the API) verifies nothing.
            .filter(|(_, c)| c.slack_signing_secret.expose().len() >= 16)
            .filter(|(_, c)| {
                verify(
                    c.slack_signing_secret.expose(),
                    timestamp,
                    request.body,
                    signature,
                )
            })
            .map(|(tenant, c)| (tenant, c.id))
            .collect();
        if signed_for.is_empty() {
            return SlackAnswer::Unauthorized(
                "X-Slack-Signature does not verify with the signing secret of any Slack channel",
            );
        }
        let click = match parse_click(request.body) {
            Ok(click) => click,
            Err(why) => return SlackAnswer::BadRequest(why),
        };
        let (text, recorded) = match self.record_click(&signed_for, &click).await {
            Ok(approval) => (recorded(&click, &approval), true),
            Err(why) => (format!("Nothing was recorded: {why}"), false),
        };
        SlackAnswer::Reply {
            response_url: click.response_url,
            text,
            recorded,
        }
    }

    /// Finds the approval in the tenant whose channel signed the click, the person the
    /// clicking Slack user is there, and records their step; or says why not.
    async fn record_click(
        &self,
        signed_for: &[(String, String)],
        click: &Click,
    ) -> Result<Approval, String> {
        let id = ApprovalId::parse("approval_id", &click.approval_id).map_err(|e| e.to_string())?;
        let no_approval = || format!("there is no approval {:?}.", id.as_str());
        let tenant = one_tenant(signed_for)?.ok_or_else(no_approval)?;
        let approval = self.store.get_approval(tenant, id.as_str()).await;
        if approval.map_err(unavailable)?.is_none() {
            return Err(no_approval());
        }
        let channel = self
            .posting_channel(tenant, id.as_str(), signed_for, click)
            .await?;
        let person = self.clicker(tenant, &click.slack_user_id).await?;
        let caller = Caller {
            key_id: format!("slack:{channel}"),
            tenant: tenant.to_owned(),
            role: Role::Approver,
            principal: format!("slack:{channel}"),
        };
        let input = SubmitInput {
            approval_id: id,
            role: click.role,
            approver_id: PersonId::parse("approver_id", &person).map_err(|e| e.to_string())?,
            approve: click.approve,
            comment: format!("from Slack ({})", click.slack_user_id),
        };
        self.submit_approval(&caller, input).await.map_err(|e| {
            let why = refusal(&e);
            tracing::info!(
                tenant = %tenant,
                channel = %channel,
                approval = %click.approval_id,
                slack_user = %click.slack_user_id,
                person = %person,
                refused = %why,
                "a Slack click was refused"
            );
            why
        })
    }

    /// The channel of `tenant` on which toolgate posted the clicked message, for this
    /// approval and the clicked role. A signing secret shared by several tenants' channels
    /// (one Slack app) must not let one tenant forge a click on another's approval.
    async fn posting_channel(
        &self,
        tenant: &str,
        approval_id: &str,
        signed_for: &[(String, String)],
        click: &Click,
    ) -> Result<String, String> {
        for (_, channel) in signed_for.iter().filter(|(t, _)| t == tenant) {
            let posted = self
                .store
                .slack_messages(tenant, approval_id, channel)
                .await
                .map_err(unavailable)?;
            if posted.iter().any(|m| {
                m.role == click.role
                    && m.slack_channel == click.message_channel
                    && m.ts == click.message_ts
            }) {
                return Ok(channel.clone());
            }
        }
        Err(format!(
            "this button is not on a message toolgate posted for this approval's {} request.",
            click.role.as_str()
        ))
    }

    /// The one person of `tenant` whose `slack_user_id` is the clicker's.
    async fn clicker(&self, tenant: &str, slack_user_id: &str) -> Result<String, String> {
        let people = self
            .store
            .people_by_slack_user(tenant, slack_user_id)
            .await
            .map_err(unavailable)?;
        match people.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(format!(
                "your Slack account ({slack_user_id}) is not linked to anyone in toolgate's \
                 directory (Person.slack_user_id)."
            )),
            _ => Err(format!(
                "your Slack account ({slack_user_id}) is linked to more than one person in \
                 toolgate's directory; ask an admin to fix it."
            )),
        }
    }
}

/// The tenant whose channels verified the click (`None` when none did). A signing secret
/// that several tenants' channels share is known to each of their admins, who could sign a
/// click for another tenant: none is taken.
fn one_tenant(signed_for: &[(String, String)]) -> Result<Option<&str>, String> {
    let mut tenants: Vec<&str> = signed_for.iter().map(|(t, _)| t.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    match tenants.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(
            "this Slack app's signing secret is set on channels of several tenants, so \
                  toolgate takes no click signed with it; give each tenant a Slack app of its \
                  own."
                .into(),
        ),
    }
}

fn unavailable(e: crate::store::StoreError) -> String {
    tracing::warn!(error = %e, "could not take a Slack click");
    "toolgate could not reach its database; try again in a moment.".into()
}

/// The refusal in words for the person who clicked (never an internal cause).
fn refusal(e: &AppError) -> String {
    let message = match e {
        AppError::PermissionDenied(m) | AppError::FailedPrecondition(m) | AppError::NotFound(m) => {
            m.clone()
        }
        AppError::Invalid(e) => e.to_string(),
        _ => return "toolgate could not record it now; try again in a moment.".into(),
    };
    // The rules name the request's fields (`approver_id: …`); the person clicked a button.
    let message = message
        .strip_prefix("approver_id: ")
        .or_else(|| message.strip_prefix("role: "))
        .unwrap_or(&message);
    format!("{message}.")
}

/// What the person who clicked is told once their step is recorded.
fn recorded(click: &Click, approval: &Approval) -> String {
    let verb = if click.approve { "approved" } else { "denied" };
    let now = match approval.state {
        ApprovalState::Pending => "It now waits for the other approver.",
        ApprovalState::Approved => "It is approved: the agent may run the call once.",
        ApprovalState::Denied => "It is denied.",
        _ => "",
    };
    format!(
        "Recorded: you {verb} {} as {}. {now}",
        approval.tool_name,
        click.role.as_str()
    )
}
