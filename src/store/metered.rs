//! A store that counts its failures and times its calls, for `/metrics`.

use super::{
    ApprovalCursor, ApprovalQuery, Inserted, IntegrationMeta, KeyInfo, People, ReadScope,
    SaveError, SaveKind, Saved, Store, StoreError, TenantTools, UpdateError, Updated, Wakeup,
};
use crate::metrics::Metrics;
use crate::policy::{Approval, Caller, Person, RevisionChanges, Role, Tool, ToolChange};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Metered { inner, metrics }
    }
}

/// The store failure inside an error, if that is what it is.
trait StoreFailure {
    fn store_error(&self) -> Option<&StoreError>;
}

impl StoreFailure for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

impl<E> StoreFailure for SaveError<E> {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            SaveError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> StoreFailure for UpdateError<E> {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            UpdateError::Store(e) => Some(e),
            UpdateError::Rule(_) => None,
        }
    }
}

impl<S> Metered<S> {
    async fn measure<T, E: StoreFailure>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.store_seconds.observe(started.elapsed());
        if let Err(e) = &result
            && let Some(e) = e.store_error()
        {
            self.metrics.store_error(op, e.is_unavailable());
        }
        result
    }
}

impl<S: Store> Store for Metered<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn create_key(
        &self,
        id: &str,
        tenant: &str,
        role: Role,
        secret_sha256: &str,
    ) -> Result<(), StoreError> {
        self.measure(
            "create_key",
            self.inner.create_key(id, tenant, role, secret_sha256),
        )
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        self.measure("list_keys", self.inner.list_keys()).await
    }

    async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        self.measure("revoke_key", self.inner.revoke_key(id)).await
    }

    async fn caller_by_secret(&self, secret_sha256: &str) -> Result<Option<Caller>, StoreError> {
        self.measure(
            "caller_by_secret",
            self.inner.caller_by_secret(secret_sha256),
        )
        .await
    }

    async fn load_all_tools(&self) -> Result<Vec<TenantTools>, StoreError> {
        self.measure("load_all_tools", self.inner.load_all_tools())
            .await
    }

    async fn load_tenant_tools(&self, tenant: &str) -> Result<TenantTools, StoreError> {
        self.measure("load_tenant_tools", self.inner.load_tenant_tools(tenant))
            .await
    }

    async fn changes_since(
        &self,
        tenant: &str,
        after: u64,
    ) -> Result<Vec<RevisionChanges>, StoreError> {
        self.measure("changes_since", self.inner.changes_since(tenant, after))
            .await
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
        self.measure(
            "save_revision",
            self.inner.save_revision(
                tenant,
                actor_key_id,
                kind,
                expected_revision,
                integration,
                scope,
                plan,
            ),
        )
        .await
    }

    async fn upsert_people(&self, tenant: &str, people: &[Person]) -> Result<u32, StoreError> {
        self.measure("upsert_people", self.inner.upsert_people(tenant, people))
            .await
    }

    async fn get_person(&self, tenant: &str, id: &str) -> Result<Option<Person>, StoreError> {
        self.measure("get_person", self.inner.get_person(tenant, id))
            .await
    }

    async fn insert_approval(
        &self,
        tenant: &str,
        approval: &Approval,
    ) -> Result<Inserted, StoreError> {
        self.measure(
            "insert_approval",
            self.inner.insert_approval(tenant, approval),
        )
        .await
    }

    async fn get_approval(&self, tenant: &str, id: &str) -> Result<Option<Approval>, StoreError> {
        self.measure("get_approval", self.inner.get_approval(tenant, id))
            .await
    }

    async fn list_approvals(
        &self,
        tenant: &str,
        query: &ApprovalQuery,
    ) -> Result<(Vec<Approval>, Option<i64>), StoreError> {
        self.measure("list_approvals", self.inner.list_approvals(tenant, query))
            .await
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
        self.measure(
            "update_approval",
            self.inner.update_approval(tenant, id, person_ids, f),
        )
        .await
    }

    async fn expire_due(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        self.measure("expire_due", self.inner.expire_due(now, limit))
            .await
    }

    async fn tenant_revisions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.measure("tenant_revisions", self.inner.tenant_revisions())
            .await
    }

    async fn live_keys(&self) -> Result<Vec<(String, Caller)>, StoreError> {
        self.measure("live_keys", self.inner.live_keys()).await
    }

    async fn wakeups(&self) -> Result<tokio::sync::mpsc::Receiver<Wakeup>, StoreError> {
        self.measure("wakeups", self.inner.wakeups()).await
    }

    async fn approval_changes(
        &self,
        cursor: &mut ApprovalCursor,
    ) -> Result<Vec<(String, Approval)>, StoreError> {
        self.measure("approval_changes", self.inner.approval_changes(cursor))
            .await
    }
}
