//! Saves: ConnectIntegration and SetPolicy are one flow (plan against the state read in
//! the store's transaction, commit one revision, apply it to the snapshot in order), and
//! UpsertPeople writes the directory.

use super::{App, AppError};
use crate::policy::ToolChange;
use crate::policy::names::FieldError;
use crate::policy::save::{PolicyEdit, plan_connect, plan_set_policy};
use crate::policy::{Caller, Person, Tool, ToolDefinition};
use crate::store::{IntegrationMeta, MAX_ATTEMPTS, ReadScope, RevisionCommit, SaveKind, Saved};
use std::collections::HashMap;

/// What an admin saves. Batches arrive validated (no duplicate entries).
#[derive(Debug, Clone)]
pub enum SaveRequest {
    /// Connect (or reconnect) an integration with the tools it offers: new tools are
    /// seeded, tools it no longer offers are removed, admins' settings are kept.
    Connect {
        integration: IntegrationMeta,
        tools: Vec<ToolDefinition>,
        comment: String,
    },
    /// Set policies; every edit applies or none does.
    SetPolicy {
        edits: Vec<PolicyEdit>,
        expected_revision: Option<u64>,
        comment: String,
    },
    /// Give tools the policies they had at `to_revision` (`edits`, read from the history);
    /// tools that no longer exist are left out, tools that already match are unchanged.
    Rollback {
        to_revision: u64,
        edits: Vec<PolicyEdit>,
        expected_revision: Option<u64>,
        comment: String,
    },
}

impl SaveRequest {
    /// What kind of revision it makes, the revision it expects, the integration it
    /// describes.
    fn shape(&self) -> (SaveKind, Option<u64>, Option<&IntegrationMeta>, &str) {
        match self {
            SaveRequest::Connect {
                integration,
                comment,
                ..
            } => (SaveKind::Connect, None, Some(integration), comment),
            SaveRequest::SetPolicy {
                expected_revision,
                comment,
                ..
            } => (SaveKind::SetPolicy, *expected_revision, None, comment),
            SaveRequest::Rollback {
                expected_revision,
                comment,
                ..
            } => (SaveKind::Rollback, *expected_revision, None, comment),
        }
    }

    /// The tools it reads before planning.
    fn scope(&self) -> ReadScope {
        match self {
            SaveRequest::Connect { integration, .. } => {
                ReadScope::Integration(integration.id.clone())
            }
            SaveRequest::SetPolicy { edits, .. } => ReadScope::Tools(edit_keys(edits)),
            SaveRequest::Rollback { .. } => ReadScope::Tenant,
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
        let (kind, expected, integration, comment) = request.shape();
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
            if let SaveRequest::Rollback { to_revision, .. } = &request
                && *to_revision > read.revision
            {
                return Err(FieldError::new(
                    "to_revision",
                    format!(
                        "the tenant is at revision {}; {to_revision} does not exist yet",
                        read.revision
                    ),
                )
                .into());
            }
            let changes = plan(&request, &read.tools, &caller.key_id)?;
            let commit = RevisionCommit {
                tenant,
                actor_key_id: &caller.key_id,
                kind,
                comment,
                base: read.revision,
                integration,
                changes,
            };
            let Some(saved) = self.store.commit_revision(commit).await? else {
                continue;
            };
            self.apply_saved(tenant, &saved).await;
            tracing::info!(
                tenant = %caller.tenant,
                key_id = %caller.key_id,
                kind = kind.as_str(),
                revision = saved.revision,
                changed = saved.changes.len(),
                "saved"
            );
            let tools = self.answer_tools(tenant, &scope, &saved);
            return Ok(SaveOutcome {
                revision: saved.revision,
                tools,
            });
        }
        Err(AppError::Unavailable(format!(
            "the tenant's policies kept changing under {MAX_ATTEMPTS} attempts to save; retry"
        )))
    }

    /// The tools a Save answers with: those of `scope` as the tenant's snapshot has them
    /// now; for a rollback (the whole tenant), the tools it changed.
    fn answer_tools(&self, tenant: &str, scope: &ReadScope, saved: &Saved) -> Vec<Tool> {
        let snapshot = self.snapshots.get(tenant);
        match scope {
            ReadScope::Integration(id) => snapshot.tools(Some(id)).into_iter().cloned().collect(),
            ReadScope::Tools(keys) => keys
                .iter()
                .filter_map(|(i, n)| snapshot.tool(i, n).cloned())
                .collect(),
            ReadScope::Tenant => saved
                .changes
                .iter()
                .filter_map(|c| match c {
                    ToolChange::Upsert(t) => Some(t.clone()),
                    ToolChange::Remove { .. } => None,
                })
                .collect(),
        }
    }

    /// Restores the policies of `to_revision` as one new revision (kind `rollback`).
    pub async fn rollback(
        &self,
        caller: &Caller,
        to_revision: u64,
        expected_revision: Option<u64>,
        comment: String,
    ) -> Result<SaveOutcome, AppError> {
        if to_revision == 0 {
            return Err(
                FieldError::new("to_revision", "must be a saved revision (1 or more)").into(),
            );
        }
        let then = self.store.policies_at(&caller.tenant, to_revision).await?;
        let edits = then
            .into_iter()
            .map(|p| PolicyEdit {
                integration_id: p.integration_id,
                tool_name: p.tool_name,
                policy: p.policy,
                manager_approval: Some(p.manager_approval),
            })
            .collect();
        let request = SaveRequest::Rollback {
            to_revision,
            edits,
            expected_revision,
            comment,
        };
        self.save(caller, request).await
    }

    /// Creates or replaces people of the tenant's directory; returns how many.
    pub async fn upsert_people(&self, caller: &Caller, people: &[Person]) -> Result<u32, AppError> {
        let upserted = self.store.upsert_people(&caller.tenant, people).await?;
        tracing::info!(
            tenant = %caller.tenant,
            key_id = %caller.key_id,
            upserted,
            "directory updated"
        );
        Ok(upserted)
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
        SaveRequest::Connect {
            integration, tools, ..
        } => Ok(plan_connect(&integration.id, tools, existing)),
        SaveRequest::Rollback { edits, .. } => {
            // Only tools that exist now and differ from then.
            let now: HashMap<(&str, &str), &Tool> = existing
                .iter()
                .map(|t| ((t.integration_id.as_str(), t.name.as_str()), t))
                .collect();
            let differing: Vec<PolicyEdit> = edits
                .iter()
                .filter(|e| {
                    now.get(&(e.integration_id.as_str(), e.tool_name.as_str()))
                        .is_some_and(|t| {
                            t.policy != e.policy || Some(t.manager_approval) != e.manager_approval
                        })
                })
                .cloned()
                .collect();
            Ok(plan_set_policy(&differing, existing, actor)
                .expect("every edit names a tool that exists"))
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
