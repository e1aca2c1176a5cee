//! The store seam: everything toolgate keeps, behind one small trait.
//!
//! The trait is data in, data out (no closures, no generics), so the server holds it as
//! `Arc<dyn Store>` chosen once at start-up from the URL's scheme. Its one implementation,
//! [`SqlStore`] (`sql.rs`), writes each statement once for both backends (sqlx's SQLite
//! driver takes PostgreSQL's `$N` parameters); `sqlite.rs` and `pg.rs` hold only what one
//! backend has and the other has not (connection set-up; PostgreSQL's LISTEN/NOTIFY and its
//! feed of other replicas' approval changes). Every call is timed and bounded in one place
//! ([`SqlStore`]'s `call`). Row structs and SQL never leave `store/`.
//!
//! Writes that must not lose a race are conditional, and the caller (in `app/`) reads,
//! decides with the pure rules, and writes again when the condition failed:
//! [`Store::commit_revision`] goes in only at the revision it was planned on, and
//! [`Store::append_approval`] only as the approval's next version.

#[macro_use]
mod approval_sql;
mod chain;
mod group_commit;
mod pg;
mod rows;
mod sql;
mod sqlite;

pub use pg::PgSettings;
pub use sql::{MAX_ATTEMPTS, SqlStore, open};

use crate::delivery::slack::SlackMessage;
use crate::delivery::{Channel, Claimed, Delivery, DeliveryState, Outcome};
use crate::policy::audit::{ApprovalEvent, ChainHead};
use crate::policy::{
    Approval, ApprovalState, Caller, Person, Policy, RevisionChanges, Role, Tool, ToolChange,
    UnixMillis,
};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("unsupported database URL scheme {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Worth a retry: a conditional write lost its race every time it was tried (the
    /// approval or the tenant kept changing). A retried create finds its request id's
    /// approval; a retried decision reads again.
    #[error("unavailable, retry: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the database could not be reached or did not answer in time: worth a retry,
    /// and a sign of an outage rather than of a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::Unavailable(_) => true,
            StoreError::Database(e) => match e {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // 08: connection exception; 57P01-03: admin/crash shutdown, cannot
                    // connect now; 57014: statement timeout; 40001/40P01: retryable
                    // serialisation failure or deadlock; 53: insufficient resources.
                    code.starts_with("08")
                        || code.starts_with("53")
                        || matches!(&*code, "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01")
                        // SQLite busy/locked after the busy timeout.
                        || matches!(&*code, "5" | "6" | "517" | "262")
                }),
                _ => false,
            },
            _ => false,
        }
    }
}

/// A hint from the database that another process wrote something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// A tenant reached a revision; `saved_at` is when it was committed (Unix
    /// milliseconds, by the saving replica's clock), for the propagation-lag metric.
    Revision {
        tenant: String,
        revision: u64,
        saved_at: Option<i64>,
    },
    /// A key was created or revoked.
    Keys,
    /// The listening connection was lost and re-established: hints may have been missed.
    Reconnected,
}

/// Where a replica's read of other replicas' approval changes has got to: the snapshot of
/// the last read (PostgreSQL's `xmax`, the first transaction id not yet begun then, and
/// `running`, the transactions below it still running then). Every change by a transaction
/// below `xmax` and not in `running` was visible to that read and delivered by it; the next
/// read takes the changes of transactions at or after `xmax` and of those in `running`
/// that have committed since. So no change is read twice or missed, and what the cursor
/// keeps is bounded by the transactions running at once (not by the changes made while
/// one of them stays open).
#[derive(Debug, Clone, Default)]
pub struct ApprovalCursor {
    pub(crate) last: Option<FeedSnapshot>,
}

impl ApprovalCursor {
    /// The transactions the next read looks back for (those running at the last read).
    pub fn transactions_awaited(&self) -> usize {
        self.last.as_ref().map_or(0, |last| last.running.len())
    }
}

/// A feed read's snapshot: see [`ApprovalCursor`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FeedSnapshot {
    pub(crate) xmax: u64,
    pub(crate) running: Vec<u64>,
}

/// An API key as `keys list` shows it; the secret is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub role: Role,
    /// Keys of a tenant with the same name are one principal (`keys create --name`).
    pub name: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Integration metadata written with a connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationMeta {
    pub id: String,
    pub kind: String,
    pub display_name: String,
}

/// Which current tools a Save reads before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Every tool of one integration (a connect).
    Integration(String),
    /// These tools, by (integration, name) (a SetPolicy).
    Tools(Vec<(String, String)>),
    /// Every tool of the tenant (a rollback).
    Tenant,
}

/// What kind of write produced a revision; kept in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum SaveKind {
    Connect,
    SetPolicy,
    Rollback,
}

impl SaveKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A committed Save: the tenant's revision after it and the changes stamped with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub revision: u64,
    /// Empty when the plan changed nothing; then no revision was made.
    pub changes: Vec<ToolChange>,
}

/// Every tool of one tenant, as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTools {
    pub tenant: String,
    pub revision: u64,
    pub tools: Vec<Tool>,
}

/// A filter on the state readers see (an open approval past expiry counts as expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalQuery {
    pub state: Option<ApprovalState>,
    /// Only approvals made before this one of the tenant (from a page token).
    pub before_id: Option<String>,
    pub limit: u32,
    pub now: i64,
    /// Only the approvals this principal asked for (an agent's view).
    pub principal: Option<String>,
}

/// See [`Store::find_pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub same_call: Option<Approval>,
    /// The tenant's approvals waiting for people, up to the `count_to` asked for (the
    /// database keeps them apart; see migration 0007).
    pub tenant_pending: u64,
}

/// Result of creating an approval for a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New(Approval),
    /// The request id already had an approval: it is returned, nothing is created.
    Existing(Approval),
}

/// People of the directory read inside an approval transaction, by id.
pub type People = HashMap<String, Person>;

/// The tools a Save reads, with the tenant's revision they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRead {
    pub revision: u64,
    pub tools: Vec<Tool>,
}

/// One Save to commit, planned on the tenant at `base`.
#[derive(Debug, Clone)]
pub struct RevisionCommit<'a> {
    pub tenant: &'a str,
    pub actor_key_id: &'a str,
    pub kind: SaveKind,
    /// The admin's reason, kept in the history.
    pub comment: &'a str,
    /// The revision the plan was made on; the commit goes in only if it still is current.
    pub base: u64,
    /// Integration metadata written with a connect (written even when no tool changed).
    pub integration: Option<&'a IntegrationMeta>,
    /// The planned changes, not yet stamped with a revision.
    pub changes: Vec<ToolChange>,
}

/// One saved revision as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    pub revision: u64,
    pub saved_at: UnixMillis,
    pub actor_key_id: String,
    /// The key's name; empty for a key made without one.
    pub actor_name: String,
    /// The key's role; empty when the key is not in this database (a test's or a
    /// deleted one).
    pub actor_role: String,
    /// `connect`, `set_policy` or `rollback` ([`SaveKind`]'s names).
    pub kind: String,
    pub comment: String,
    /// Its place in the tenant's hash chain ([`crate::policy::audit`]); empty for a
    /// revision saved before chains were recorded.
    pub hash: String,
    /// The hash of the revision before; empty for the first.
    pub previous_hash: String,
    pub diffs: Vec<PolicyDiff>,
}

/// A revision as the hash chain covers it: its row and every tool change it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedRevision {
    pub revision: u64,
    pub kind: String,
    pub actor_key_id: String,
    pub saved_at_ms: i64,
    pub comment: String,
    /// As stored; empty for a revision saved before chains were recorded.
    pub hash: String,
    pub changes: Vec<ToolChange>,
}

/// A tenant's approval events as their hash chain covers them, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalEventChain {
    /// The chain's stored head (the start of a chain when the tenant has none).
    pub head: ChainHead,
    /// How many events the tenant had when chains began (migration 9).
    pub before_chain: u64,
    /// In chain order, each with its stored hash.
    pub events: Vec<(ApprovalEvent, String)>,
    /// The first approval with a chained event whose stored arguments are not the ones its
    /// `arguments_sha256` (which the chain covers) was computed from.
    pub arguments_changed: Option<String>,
    /// Events with no place in the chain: those written before chains were recorded
    /// (migration 9), and any inserted by hand since.
    pub unchained: u64,
}

/// One tool's change in a revision: its policy and manager switch before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiff {
    pub integration_id: String,
    pub tool_name: String,
    /// `None` when the revision added the tool.
    pub policy_before: Option<Policy>,
    /// `None` when the revision removed it.
    pub policy_after: Option<Policy>,
    pub manager_before: bool,
    pub manager_after: bool,
}

/// Which revisions a history page holds.
#[derive(Debug, Clone)]
pub struct RevisionQuery {
    /// Only revisions that changed a tool of this integration (and only those diffs).
    pub integration: Option<String>,
    /// Only revisions before this one (the previous page's last).
    pub before: Option<u64>,
    pub limit: u32,
}

/// A tool's policy and manager switch at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAt {
    pub integration_id: String,
    pub tool_name: String,
    pub policy: Policy,
    pub manager_approval: bool,
}

/// An approval as read to decide on it: its version and the people its rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForUpdate {
    pub approval: Approval,
    /// The approval's latest version; a change is written as `version + 1`.
    pub version: i64,
    /// The requester and the people asked for, by id (those in the directory).
    pub people: People,
}

/// Which deliveries a ListDeliveries page holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryQuery {
    pub approval_id: Option<String>,
    pub state: Option<DeliveryState>,
    /// Only deliveries queued before this one (from a page token).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// A claim on delivery attempts: who holds it, from when, until when.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    /// Unique per claim; the outcome is written only by the holder.
    pub owner: &'a str,
    pub now: UnixMillis,
    pub until: UnixMillis,
}

/// What RetryDelivery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// It was FAILED and is PENDING again.
    Queued(Delivery),
    /// It is not FAILED (as it is now).
    NotFailed(Delivery),
    NotFound,
}

/// Every store call, for the metrics' `op` label. A name per call, checked by the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum StoreOp {
    CreateKey,
    ListKeys,
    RevokeKey,
    CallerBySecret,
    LiveKeys,
    LoadAllTools,
    LoadTenantTools,
    ChangesSince,
    TenantRevisions,
    ReadForSave,
    CommitRevision,
    ListRevisions,
    PoliciesAt,
    RevisionChain,
    ApprovalChainHeads,
    ApprovalEventChain,
    UpsertPeople,
    GetPerson,
    InsertApproval,
    GetApproval,
    FindPending,
    ApprovalByRequest,
    ListApprovals,
    ApprovalForUpdate,
    AppendApproval,
    ExpireDue,
    Wakeups,
    ApprovalChanges,
    SetChannel,
    ListChannels,
    ChannelTenants,
    DeleteChannel,
    ListDeliveries,
    RetryDelivery,
    DueChannels,
    ClaimDeliveries,
    DeliveryContext,
    FinishDelivery,
    OldestPendingDelivery,
    SlackChannels,
    PeopleBySlackUser,
    SlackMessages,
    RecordSlackMessage,
}

impl StoreOp {
    pub const ALL: &'static [StoreOp] = <StoreOp as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The one store seam. Every method is scoped to one tenant, except key look-up (which is
/// how the tenant is found), start-up loading, the sweep and following other processes.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `sqlite` or `postgres`, for logs and `toolgate_build_info`.
    fn backend(&self) -> &'static str;

    async fn create_key(
        &self,
        id: &str,
        tenant: &str,
        role: Role,
        secret_sha256: &str,
        name: Option<&str>,
    ) -> Result<(), StoreError>;
    async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError>;
    /// False when no such key exists or it was already revoked.
    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError>;
    /// The caller a live (not revoked) key stands for.
    async fn caller_by_secret(&self, secret_sha256: &str) -> Result<Option<Caller>, StoreError>;
    /// Every live key as (SHA-256 of its secret, the caller it stands for): the key cache.
    async fn live_keys(&self) -> Result<Vec<(String, Caller)>, StoreError>;

    async fn load_all_tools(&self) -> Result<Vec<TenantTools>, StoreError>;
    async fn load_tenant_tools(&self, tenant: &str) -> Result<TenantTools, StoreError>;
    /// The change log of a tenant after `after`, in revision order.
    async fn changes_since(
        &self,
        tenant: &str,
        after: u64,
    ) -> Result<Vec<RevisionChanges>, StoreError>;
    /// Every tenant's current revision, for the catch-up poll.
    async fn tenant_revisions(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// What a Save plans on: the tenant's revision and the tools in `scope`.
    async fn read_for_save(&self, tenant: &str, scope: &ReadScope) -> Result<SaveRead, StoreError>;
    /// Commits a planned Save as revision `base + 1` (or, with no changes, only its
    /// integration metadata), atomically. `None` when the tenant is no longer at `base`:
    /// read and plan again.
    async fn commit_revision(
        &self,
        commit: RevisionCommit<'_>,
    ) -> Result<Option<Saved>, StoreError>;

    /// A page of the tenant's history, newest first, with each revision's diffs.
    async fn list_revisions(
        &self,
        tenant: &str,
        query: &RevisionQuery,
    ) -> Result<Vec<RevisionRecord>, StoreError>;

    /// Every revision of the tenant, oldest first, with the tool changes each made: what
    /// its hash chain covers.
    async fn revision_chain(&self, tenant: &str) -> Result<Vec<ChainedRevision>, StoreError>;

    /// Every tenant's chain of approval events: how far it goes, its last hash, and how many
    /// of the tenant's events were written before chains were recorded (migration 9).
    async fn approval_chain_heads(&self) -> Result<Vec<(String, ChainHead, u64)>, StoreError>;

    /// A tenant's chain of approval events, all read in one snapshot (a database taking
    /// writes meanwhile still verifies): its head, its events in chain order, and how many
    /// of its events have no place in the chain.
    async fn approval_event_chain(&self, tenant: &str) -> Result<ApprovalEventChain, StoreError>;

    /// Every tool that existed at `revision` (and was not removed by then), with its
    /// policy and manager switch of then.
    async fn policies_at(&self, tenant: &str, revision: u64) -> Result<Vec<PolicyAt>, StoreError>;

    async fn upsert_people(&self, tenant: &str, people: &[Person]) -> Result<u32, StoreError>;
    async fn get_person(&self, tenant: &str, id: &str) -> Result<Option<Person>, StoreError>;

    /// Creates a pending approval, or returns the one its request id already made.
    async fn insert_approval(
        &self,
        tenant: &str,
        approval: &Approval,
    ) -> Result<Inserted, StoreError>;
    async fn get_approval(&self, tenant: &str, id: &str) -> Result<Option<Approval>, StoreError>;
    /// The approval `principal`'s `request_id` made, if any.
    async fn approval_by_request(
        &self,
        tenant: &str,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<Approval>, StoreError>;
    /// What a new approval request must know first: the newest approval of the same call
    /// as `like` (principal, requester, integration, tool, arguments' hash) that is pending
    /// and not expired at `now`, and how many of the tenant's approvals are pending
    /// (counted up to `count_to`).
    async fn find_pending(
        &self,
        tenant: &str,
        like: &Approval,
        now: i64,
        count_to: u64,
    ) -> Result<Pending, StoreError>;
    /// A page of approvals, newest first, and the id of the last when more follow.
    async fn list_approvals(
        &self,
        tenant: &str,
        query: &ApprovalQuery,
    ) -> Result<(Vec<Approval>, Option<String>), StoreError>;
    /// The approval with its version, and the people in `person_ids` and its requester.
    async fn approval_for_update(
        &self,
        tenant: &str,
        id: &str,
        person_ids: &[String],
    ) -> Result<Option<ForUpdate>, StoreError>;
    /// Appends `next` as version `version` of its approval; false when that version is
    /// taken (someone else changed the approval since it was read).
    async fn append_approval(
        &self,
        tenant: &str,
        version: i64,
        next: &Approval,
    ) -> Result<bool, StoreError>;
    /// Marks open approvals past their expiry as expired (at most `limit` at once) and
    /// returns them with their tenants, so watchers can be told.
    async fn expire_due(&self, now: i64, limit: u32)
    -> Result<Vec<(String, Approval)>, StoreError>;

    /// Creates or replaces a notification channel (an empty secret keeps the stored one);
    /// the channel as stored.
    async fn set_channel(&self, tenant: &str, channel: &Channel) -> Result<Channel, StoreError>;
    async fn list_channels(&self, tenant: &str) -> Result<Vec<Channel>, StoreError>;
    /// Every tenant with an enabled channel.
    async fn channel_tenants(&self) -> Result<Vec<String>, StoreError>;
    /// False when there was no such channel. Its pending deliveries become failed.
    async fn delete_channel(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// A page of deliveries, newest first, and where the next page starts.
    async fn list_deliveries(
        &self,
        tenant: &str,
        query: &DeliveryQuery,
    ) -> Result<(Vec<Delivery>, Option<i64>), StoreError>;
    /// A failed delivery queued again, from `now`.
    async fn retry_delivery(
        &self,
        tenant: &str,
        id: &str,
        now: UnixMillis,
    ) -> Result<Retried, StoreError>;
    /// The (tenant, channel) pairs with deliveries due and not leased.
    async fn due_channels(&self, now: UnixMillis) -> Result<Vec<(String, String)>, StoreError>;
    /// Leases up to `limit` of one channel's due deliveries, oldest first, skipping any
    /// behind an earlier pending event of its approval; counts the attempt.
    async fn claim_deliveries(
        &self,
        lease: &Lease<'_>,
        tenant: &str,
        channel_id: &str,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// The delivery's channel, the approval as its event left it, and the event's time;
    /// `None` when the channel is gone.
    async fn delivery_context(
        &self,
        tenant: &str,
        delivery: &Delivery,
    ) -> Result<Option<(Channel, Approval, UnixMillis)>, StoreError>;
    /// Records how a claimed attempt ended; false when the claim was no longer this one
    /// (its lease ran out and another replica took it, or its channel was deleted).
    async fn finish_delivery(
        &self,
        claimed: &Claimed,
        outcome: &Outcome,
    ) -> Result<bool, StoreError>;
    /// When the oldest pending delivery was queued.
    async fn oldest_pending_delivery(&self) -> Result<Option<UnixMillis>, StoreError>;

    /// Every enabled Slack channel, with its tenant: the signing secrets a request from
    /// Slack may be signed with.
    async fn slack_channels(&self) -> Result<Vec<(String, Channel)>, StoreError>;
    /// The tenant's people whose Slack id is `slack_user_id` (more than one is a directory
    /// mistake, and no click of theirs counts).
    async fn people_by_slack_user(
        &self,
        tenant: &str,
        slack_user_id: &str,
    ) -> Result<Vec<Person>, StoreError>;
    /// The messages a Slack channel posted for an approval.
    async fn slack_messages(
        &self,
        tenant: &str,
        approval_id: &str,
        channel_id: &str,
    ) -> Result<Vec<SlackMessage>, StoreError>;
    /// Records a posted message (a repost of the same role's request replaces it).
    async fn record_slack_message(
        &self,
        tenant: &str,
        approval_id: &str,
        channel_id: &str,
        message: &SlackMessage,
    ) -> Result<(), StoreError>;

    /// Hints that another process wrote (PostgreSQL `LISTEN`). Only hints: the change log
    /// is the truth, and a lost hint only delays until the next poll. SQLite, written by
    /// one server process, sends none.
    async fn wakeups(&self) -> Result<tokio::sync::mpsc::Receiver<Wakeup>, StoreError>;
    /// Approvals changed by other processes since `cursor`, with their tenants, each
    /// change once; moves the cursor. The first call only sets the cursor. SQLite returns
    /// none: every approval write there is made by this process and published as made.
    async fn approval_changes(
        &self,
        cursor: &mut ApprovalCursor,
    ) -> Result<Vec<(String, Approval)>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_op_is_listed_once_at_its_own_index() {
        for (i, op) in StoreOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{}", op.as_str());
        }
        let mut names: Vec<_> = StoreOp::ALL.iter().map(|op| op.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), StoreOp::ALL.len());
    }

    /// `SaveKind` is stored in `revisions.kind`, `StoreOp` is the metrics' `op` label: the
    /// strings must not change.
    #[test]
    fn stored_names_are_unchanged() {
        assert_eq!(SaveKind::Connect.as_str(), "connect");
        assert_eq!(SaveKind::SetPolicy.as_str(), "set_policy");
        assert_eq!(SaveKind::Rollback.as_str(), "rollback");
        assert_eq!(StoreOp::CallerBySecret.as_str(), "caller_by_secret");
        assert_eq!(StoreOp::ApprovalForUpdate.as_str(), "approval_for_update");
        assert_eq!(StoreOp::ListRevisions.as_str(), "list_revisions");
        assert_eq!(StoreOp::ClaimDeliveries.as_str(), "claim_deliveries");
        assert_eq!(StoreOp::ApprovalEventChain.as_str(), "approval_event_chain");
        assert_eq!(StoreOp::ALL.len(), 43);
    }
}
