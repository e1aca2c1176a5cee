//! The store chosen by the database URL's scheme at start-up.

use super::pg::{PgSettings, PgStore};
use super::sqlite::SqliteStore;
use super::{
    ApprovalCursor, ApprovalQuery, Inserted, IntegrationMeta, KeyInfo, People, ReadScope,
    SaveError, SaveKind, Saved, Store, StoreError, TenantTools, UpdateError, Updated, Wakeup,
};
use crate::policy::{Approval, Caller, Person, RevisionChanges, Role, Tool, ToolChange};

#[derive(Clone, Debug)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AnyStore {
    /// Opens the store named by the URL's scheme (created and migrated if needed).
    pub async fn open(url: &str, pg: &PgSettings) -> Result<Self, StoreError> {
        let scheme = url.split_once(':').map_or(url, |(s, _)| s);
        match scheme {
            "sqlite" => Ok(AnyStore::Sqlite(SqliteStore::connect(url).await?)),
            "postgres" | "postgresql" => Ok(AnyStore::Postgres(PgStore::connect(url, pg).await?)),
            other => Err(StoreError::UnsupportedUrl(other.to_owned())),
        }
    }

    /// Whether other processes may write the same database (PostgreSQL replicas).
    pub fn shared(&self) -> bool {
        matches!(self, AnyStore::Postgres(_))
    }
}

/// Calls the same method on whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $call,
            AnyStore::Postgres($s) => $call,
        }
    };
}

impl Store for AnyStore {
    fn backend(&self) -> &'static str {
        each!(self, s => s.backend())
    }

    async fn create_key(
        &self,
        id: &str,
        tenant: &str,
        role: Role,
        secret_sha256: &str,
    ) -> Result<(), StoreError> {
        each!(self, s => s.create_key(id, tenant, role, secret_sha256).await)
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        each!(self, s => s.list_keys().await)
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        each!(self, s => s.revoke_key(id).await)
    }

    async fn caller_by_secret(&self, secret_sha256: &str) -> Result<Option<Caller>, StoreError> {
        each!(self, s => s.caller_by_secret(secret_sha256).await)
    }

    async fn load_all_tools(&self) -> Result<Vec<TenantTools>, StoreError> {
        each!(self, s => s.load_all_tools().await)
    }

    async fn load_tenant_tools(&self, tenant: &str) -> Result<TenantTools, StoreError> {
        each!(self, s => s.load_tenant_tools(tenant).await)
    }

    async fn changes_since(
        &self,
        tenant: &str,
        after: u64,
    ) -> Result<Vec<RevisionChanges>, StoreError> {
        each!(self, s => s.changes_since(tenant, after).await)
    }

    async fn save_revision<F, E>(
        &self,
        tenant: &str,
        actor_key_id: &str,
        kind: SaveKind,
        expected_revision: Option<u64>,
        integration: Option<IntegrationMeta>,
        scope: ReadScope,
        plan: F,
    ) -> Result<Saved, SaveError<E>>
    where
        F: FnOnce(&[Tool]) -> Result<Vec<ToolChange>, E> + Send,
        E: Send,
    {
        each!(self, s => s
            .save_revision(tenant, actor_key_id, kind, expected_revision, integration, scope, plan)
            .await)
    }

    async fn upsert_people(&self, tenant: &str, people: &[Person]) -> Result<u32, StoreError> {
        each!(self, s => s.upsert_people(tenant, people).await)
    }

    async fn get_person(&self, tenant: &str, id: &str) -> Result<Option<Person>, StoreError> {
        each!(self, s => s.get_person(tenant, id).await)
    }

    async fn insert_approval(
        &self,
        tenant: &str,
        approval: &Approval,
    ) -> Result<Inserted, StoreError> {
        each!(self, s => s.insert_approval(tenant, approval).await)
    }

    async fn get_approval(&self, tenant: &str, id: &str) -> Result<Option<Approval>, StoreError> {
        each!(self, s => s.get_approval(tenant, id).await)
    }

    async fn list_approvals(
        &self,
        tenant: &str,
        query: &ApprovalQuery,
    ) -> Result<(Vec<Approval>, Option<i64>), StoreError> {
        each!(self, s => s.list_approvals(tenant, query).await)
    }

    async fn update_approval<F, T, E>(
        &self,
        tenant: &str,
        id: &str,
        person_ids: Vec<String>,
        f: F,
    ) -> Result<Option<Updated<T>>, UpdateError<E>>
    where
        F: Fn(&Approval, &People) -> Result<(Option<Approval>, T), E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        each!(self, s => s.update_approval(tenant, id, person_ids, f).await)
    }

    async fn expire_due(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        each!(self, s => s.expire_due(now, limit).await)
    }

    async fn tenant_revisions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        each!(self, s => s.tenant_revisions().await)
    }

    async fn live_keys(&self) -> Result<Vec<(String, Caller)>, StoreError> {
        each!(self, s => s.live_keys().await)
    }

    async fn wakeups(&self) -> Result<tokio::sync::mpsc::Receiver<Wakeup>, StoreError> {
        each!(self, s => s.wakeups().await)
    }

    async fn approval_changes(
        &self,
        cursor: &mut ApprovalCursor,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        each!(self, s => s.approval_changes(cursor).await)
    }
}
