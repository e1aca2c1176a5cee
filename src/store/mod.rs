//! The store seam: everything toolgate keeps, behind one trait.
//!
//! Row structs and SQL never leave `store/`. The trait speaks in domain types; each backend
//! runs the same conformance tests (`tests/`). Writes that must see and change state
//! together (a Save, an approval decision) take a closure that computes the change from the
//! state read inside the transaction, so the rules stay in `policy/` and the atomicity here.

mod any;
mod approvals;
mod metered;
pub mod pg;
mod pg_batch;
mod rows;
pub mod sqlite;

pub use any::AnyStore;
pub use metered::Metered;

use crate::policy::{
    Approval, ApprovalState, Caller, Person, RevisionChanges, Role, Tool, ToolChange,
};
use std::collections::HashMap;
use std::future::Future;

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
    /// A write ran but its transaction did not commit (SQLite's batched commit failed, or
    /// the writer is gone): nothing was written, and a retry is safe.
    #[error("the write did not commit: {0}")]
    NotCommitted(String),
    /// Worth a retry: the database could not be reached for a batch this call was part of
    /// (each caller gets the batch's failure, as text), or an approval kept changing under
    /// every attempt to decide on it. Approval writes are safe to retry: a retried create
    /// finds its request id's approval, a retried decision reads again.
    #[error("unavailable, retry: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the database could not be reached or did not answer in time: worth a retry,
    /// and a sign of an outage rather than of a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::NotCommitted(_) | StoreError::Unavailable(_) => {
                true
            }
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

/// Where a replica's read of other replicas' approval changes has got to.
///
/// `frontier` is the oldest transaction still running when the last read was taken
/// (PostgreSQL's snapshot `xmin`): every change made by an older transaction has been seen.
/// Changes at or after it are read again next time, and `seen` keeps those already
/// delivered, as (tenant, approval id, version), so none is delivered twice.
#[derive(Debug, Clone, Default)]
pub struct ApprovalCursor {
    pub(crate) frontier: Option<u64>,
    pub(crate) seen: std::collections::HashSet<(String, String, i64)>,
}

/// Why a Save did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SaveError<E> {
    /// The plan refused the change (bad input found against the current state).
    #[error("{0}")]
    Plan(E),
    /// `expected_revision` was not the tenant's revision.
    #[error("tenant is at revision {current}")]
    Stale { current: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an approval update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error("{0}")]
    Rule(E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An API key as `keys list` shows it; the secret is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub role: Role,
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
}

/// What kind of write produced a revision; kept in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveKind {
    Connect,
    SetPolicy,
}

impl SaveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SaveKind::Connect => "connect",
            SaveKind::SetPolicy => "set_policy",
        }
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
    /// Only approvals asked for by this key (an agent's view).
    pub created_by_key: Option<String>,
    /// Only approvals older than this position (from a page token).
    pub before_seq: Option<i64>,
    pub limit: u32,
    pub now: i64,
}

/// Result of creating an approval for a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New(Approval),
    /// The request id already had an approval: it is returned, nothing is created.
    Existing(Approval),
}

/// The result of an approval update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated<T> {
    /// The approval as it is now.
    pub approval: Approval,
    /// Whether this update saved a change (watchers are told only of those).
    pub changed: bool,
    pub out: T,
}

/// People of the directory read inside an approval transaction, by id.
pub type People = HashMap<String, Person>;

/// The one store seam. Every method is scoped to one tenant, except key lookup (which is
/// how the tenant is found) and start-up loading.
pub trait Store: Clone + Send + Sync + 'static {
    /// `sqlite` or `postgres`, for logs and `toolgate_build_info`.
    fn backend(&self) -> &'static str;

    fn create_key(
        &self,
        id: &str,
        tenant: &str,
        role: Role,
        secret_sha256: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn list_keys(&self) -> impl Future<Output = Result<Vec<KeyInfo>, StoreError>> + Send;
    /// Returns false when no such key exists or it was already revoked.
    fn revoke_key(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The caller a live (not revoked) key stands for.
    fn caller_by_secret(
        &self,
        secret_sha256: &str,
    ) -> impl Future<Output = Result<Option<Caller>, StoreError>> + Send;

    fn load_all_tools(&self) -> impl Future<Output = Result<Vec<TenantTools>, StoreError>> + Send;
    fn load_tenant_tools(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<TenantTools, StoreError>> + Send;
    /// The change log of a tenant after `after`, in revision order.
    fn changes_since(
        &self,
        tenant: &str,
        after: u64,
    ) -> impl Future<Output = Result<Vec<RevisionChanges>, StoreError>> + Send;

    /// Saves one revision atomically: reads `scope` under the tenant's write lock, asks
    /// `plan` for the changes, and commits them as revision N+1 (or nothing if empty).
    #[allow(clippy::too_many_arguments)]
    fn save_revision<F, E>(
        &self,
        tenant: &str,
        actor_key_id: &str,
        kind: SaveKind,
        expected_revision: Option<u64>,
        integration: Option<IntegrationMeta>,
        scope: ReadScope,
        plan: F,
    ) -> impl Future<Output = Result<Saved, SaveError<E>>> + Send
    where
        F: FnOnce(&[Tool]) -> Result<Vec<ToolChange>, E> + Send,
        E: Send;

    fn upsert_people(
        &self,
        tenant: &str,
        people: &[Person],
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
    fn get_person(
        &self,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Person>, StoreError>> + Send;

    fn insert_approval(
        &self,
        tenant: &str,
        approval: &Approval,
    ) -> impl Future<Output = Result<Inserted, StoreError>> + Send;
    fn get_approval(
        &self,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send;
    /// A page of approvals, newest first, with the position to continue from.
    fn list_approvals(
        &self,
        tenant: &str,
        query: &ApprovalQuery,
    ) -> impl Future<Output = Result<(Vec<Approval>, Option<i64>), StoreError>> + Send;
    /// Reads an approval and the people named in `person_ids`, lets `f` decide, and saves
    /// the approval `f` returns (its new steps appended), atomically: no other change of
    /// the approval comes between that read and the write. `f` may run more than once (a
    /// backend may read again when the approval changed under it). `Ok(None)` when there
    /// is no such approval in the tenant.
    fn update_approval<F, T, E>(
        &self,
        tenant: &str,
        id: &str,
        person_ids: Vec<String>,
        f: F,
    ) -> impl Future<Output = Result<Option<Updated<T>>, UpdateError<E>>> + Send
    where
        F: Fn(&Approval, &People) -> Result<(Option<Approval>, T), E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static;
    /// Marks open approvals past their expiry as expired (at most `limit` at once) and
    /// returns them with their tenants, so watchers can be told.
    fn expire_due(
        &self,
        now: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(String, Approval)>, StoreError>> + Send;

    /// Every tenant's current revision, for the catch-up poll.
    fn tenant_revisions(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;
    /// Every live key as (SHA-256 of its secret, the caller it stands for): the key cache.
    fn live_keys(&self) -> impl Future<Output = Result<Vec<(String, Caller)>, StoreError>> + Send;
    /// Hints that another process wrote (PostgreSQL `LISTEN`). Only hints: the change log
    /// is the truth, and a lost hint only delays until the next poll. SQLite, written by
    /// one server process, sends none.
    fn wakeups(
        &self,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<Wakeup>, StoreError>> + Send;
    /// Approvals changed by other processes since `cursor`, with their tenants, each
    /// change once; moves the cursor. The first call only sets the cursor. SQLite returns
    /// none: every approval write there is made by this process and published as made.
    fn approval_changes(
        &self,
        cursor: &mut ApprovalCursor,
    ) -> impl Future<Output = Result<Vec<(String, Approval)>, StoreError>> + Send;
}
