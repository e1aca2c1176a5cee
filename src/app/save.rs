//! Saves: ConnectIntegration and SetPolicy are one flow (plan against the state read in
//! the store's transaction, commit one revision, apply it to the snapshot in order), and
//! UpsertPeople writes the directory.

use super::{App, AppError};
use crate::policy::ToolChange;
use crate::policy::save::{PolicyEdit, plan_connect, plan_set_policy};
use crate::policy::{Caller, Person, Tool, ToolDefinition};
use crate::store::{IntegrationMeta, MAX_ATTEMPTS, ReadScope, RevisionCommit, SaveKind};

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

impl SaveRequest {
    /// What kind of revision it makes, the revision it expects, the integration it
    /// describes.
    fn shape(&self) -> (SaveKind, Option<u64>, Option<&IntegrationMeta>) {
        match self {
            SaveRequest::Connect { integration, .. } => {
                (SaveKind::Connect, None, Some(integration))
            }
            SaveRequest::SetPolicy {
                expected_revision, ..
            } => (SaveKind::SetPolicy, *expected_revision, None),
        }
    }

    /// The tools it reads before planning.
    fn scope(&self) -> ReadScope {
        match self {
            SaveRequest::Connect { integration, .. } => {
                ReadScope::Integration(integration.id.clone())
            }
            SaveRequest::SetPolicy { edits, .. } => ReadScope::Tools(edit_keys(edits)),
        }
    }
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

impl App {
    /// Runs one Save. Under the tenant's write lock (one Save of a tenant at a time in this
    /// process), it reads what the request touches, lets the pure plan decide the changes,
    /// and commits them as one revision (or none) on the revision it read; if another
    /// replica committed first, it reads and plans again. The committed revision is applied
    /// to the snapshot before the lock is released, so revisions reach it in order.
    pub async fn save(
        &self,
        caller: &Caller,
        request: SaveRequest,
    ) -> Result<SaveOutcome, AppError> {
        let (kind, expected, integration) = request.shape();
        let scope = request.scope();
        let tenant = &caller.tenant;
        let _guard = self.tenant_write_lock(tenant).await;
        for _ in 0..MAX_ATTEMPTS {
            let read = self.store.read_for_save(tenant, &scope).await?;
            if let Some(expected) = expected
                && expected != read.revision
            {
                return Err(stale(read.revision, expected));
            }
            let changes = plan(&request, &read.tools, &caller.key_id)?;
            let commit = RevisionCommit {
                tenant,
                actor_key_id: &caller.key_id,
                kind,
                base: read.revision,
                integration,
                changes,
            };
            let Some(saved) = self.store.commit_revision(commit).await? else {
                continue;
            };
            self.apply_saved(tenant, &saved).await;
            tracing::info!(
                kind = kind.as_str(),
                revision = saved.revision,
                changed = saved.changes.len(),
                "saved"
            );
            let tools = self.tools_in(tenant, &scope);
            return Ok(SaveOutcome {
                revision: saved.revision,
                tools,
            });
        }
        Err(AppError::Unavailable(format!(
            "the tenant's policies kept changing under {MAX_ATTEMPTS} attempts to save; retry"
        )))
    }

    /// The tools of `scope` as the tenant's snapshot has them now.
    fn tools_in(&self, tenant: &str, scope: &ReadScope) -> Vec<Tool> {
        let snapshot = self.snapshots.get(tenant);
        match scope {
            ReadScope::Integration(id) => snapshot.tools(Some(id)).into_iter().cloned().collect(),
            ReadScope::Tools(keys) => keys
                .iter()
                .filter_map(|(i, n)| snapshot.tool(i, n).cloned())
                .collect(),
        }
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

/// The changes a request makes to the tools it read.
fn plan(
    request: &SaveRequest,
    existing: &[Tool],
    actor: &str,
) -> Result<Vec<ToolChange>, AppError> {
    match request {
        SaveRequest::Connect { integration, tools } => {
            Ok(plan_connect(&integration.id, tools, existing))
        }
        SaveRequest::SetPolicy { edits, .. } => {
            plan_set_policy(edits, existing, actor).map_err(|u| {
                AppError::NotFound(format!(
                    "changes[{}]: no tool {:?} in integration {:?}",
                    u.index, u.tool_name, u.integration_id
                ))
            })
        }
    }
}

fn stale(current: u64, expected: u64) -> AppError {
    AppError::FailedPrecondition(format!(
        "expected_revision: the tenant is at revision {current}, not {expected}"
    ))
}
