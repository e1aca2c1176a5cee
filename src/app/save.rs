//! Saves: ConnectIntegration and SetPolicy are one flow (plan against the state read in
//! the store's transaction, commit one revision, apply it to the snapshot in order), and
//! UpsertPeople writes the directory.

use super::{App, AppError};
use crate::policy::save::{PolicyEdit, plan_connect, plan_set_policy};
use crate::policy::{Caller, Person, Tool, ToolDefinition};
use crate::store::{IntegrationMeta, ReadScope, SaveError, SaveKind, Store};

/// What an admin saves. Batches arrive validated (no duplicate entries).
#[derive(Debug, Clone)]
pub enum SaveRequest {
    /// Connect (or reconnect) an integration with the tools it offers: new tools are
    /// seeded, tools it no longer offers are removed, admins' settings are kept.
    Connect {
        integration: IntegrationMeta,
        tools: Vec<ToolDefinition>,
    },
    /// Set policies; every edit applies or none does.
    SetPolicy {
        edits: Vec<PolicyEdit>,
        expected_revision: Option<u64>,
    },
}

/// A Save's answer.
#[derive(Debug, Clone)]
pub struct SaveOutcome {
    /// The tenant's revision after the Save (unchanged when nothing changed).
    pub revision: u64,
    /// The tools the Save was about, as they are now: a connect's whole integration, or
    /// the tools a SetPolicy named.
    pub tools: Vec<Tool>,
}

impl<S: Store> App<S> {
    /// Runs one Save: under the tenant's write lock, the store reads what the request
    /// touches, the pure plan decides the changes, and they commit as one revision (or
    /// none), which is then applied to the snapshot before the lock is released.
    pub async fn save(
        &self,
        caller: &Caller,
        request: SaveRequest,
    ) -> Result<SaveOutcome, AppError> {
        let (kind, expected, meta, scope) = match &request {
            SaveRequest::Connect { integration, .. } => (
                SaveKind::Connect,
                None,
                Some(integration.clone()),
                ReadScope::Integration(integration.id.clone()),
            ),
            SaveRequest::SetPolicy {
                edits,
                expected_revision,
            } => (
                SaveKind::SetPolicy,
                *expected_revision,
                None,
                ReadScope::Tools(edit_keys(edits)),
            ),
        };
        let plan = |existing: &[Tool]| match &request {
            SaveRequest::Connect { integration, tools } => {
                Ok(plan_connect(&integration.id, tools, existing))
            }
            SaveRequest::SetPolicy { edits, .. } => {
                plan_set_policy(edits, existing, &caller.key_id).map_err(|u| {
                    AppError::NotFound(format!(
                        "changes[{}]: no tool {:?} in integration {:?}",
                        u.index, u.tool_name, u.integration_id
                    ))
                })
            }
        };
        let tenant = &caller.tenant;
        let _guard = self.tenant_write_lock(tenant).await;
        let saved = self
            .store
            .save_revision(
                tenant,
                &caller.key_id,
                kind,
                expected,
                meta,
                scope.clone(),
                plan,
            )
            .await
            .map_err(|e| match e {
                SaveError::Plan(e) => e,
                SaveError::Stale { current } => AppError::FailedPrecondition(format!(
                    "expected_revision: the tenant is at revision {current}, not {}",
                    expected.unwrap_or_default()
                )),
                SaveError::Store(e) => AppError::from(e),
            })?;
        self.apply_saved(tenant, &saved).await;
        tracing::info!(
            kind = kind.as_str(),
            revision = saved.revision,
            changed = saved.changes.len(),
            "saved"
        );
        let snapshot = self.snapshots.get(tenant);
        let tools = match &scope {
            ReadScope::Integration(id) => snapshot.tools(Some(id)).into_iter().cloned().collect(),
            ReadScope::Tools(keys) => keys
                .iter()
                .filter_map(|(i, n)| snapshot.tool(i, n).cloned())
                .collect(),
        };
        Ok(SaveOutcome {
            revision: saved.revision,
            tools,
        })
    }

    /// Creates or replaces people of the tenant's directory; returns how many.
    pub async fn upsert_people(&self, caller: &Caller, people: &[Person]) -> Result<u32, AppError> {
        Ok(self.store.upsert_people(&caller.tenant, people).await?)
    }
}

fn edit_keys(edits: &[PolicyEdit]) -> Vec<(String, String)> {
    edits
        .iter()
        .map(|e| (e.integration_id.clone(), e.tool_name.clone()))
        .collect()
}
