//! The in-memory policy snapshot: every tenant's tools, for the Decide hot path.
//!
//! A tenant's snapshot is immutable and shared behind an `Arc`; a Save builds the next one
//! and swaps it in. Changes are applied strictly in revision order: a revision that does
//! not follow the current one is refused, and the caller catches up from the store's
//! change log instead. Readers never wait on a Save and never touch the database.

use crate::policy::{RevisionChanges, Tool, ToolChange};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

/// One tenant's tools at one revision.
#[derive(Debug, Clone, Default)]
pub struct TenantSnapshot {
    pub revision: u64,
    /// integration id → tool name → tool. Nested so a lookup borrows `&str` keys.
    integrations: HashMap<String, HashMap<String, Arc<Tool>>>,
}

impl TenantSnapshot {
    pub fn new(revision: u64, tools: Vec<Tool>) -> Self {
        let mut snapshot = TenantSnapshot {
            revision,
            integrations: HashMap::new(),
        };
        for tool in tools {
            snapshot.insert(tool);
        }
        snapshot
    }

    pub fn tool(&self, integration_id: &str, name: &str) -> Option<&Tool> {
        self.integrations
            .get(integration_id)
            .and_then(|tools| tools.get(name))
            .map(Arc::as_ref)
    }

    /// Every tool, or those of one integration, sorted by integration then name.
    pub fn tools(&self, integration_id: Option<&str>) -> Vec<&Tool> {
        let mut out: Vec<&Tool> = self
            .integrations
            .iter()
            .filter(|(id, _)| integration_id.is_none_or(|want| want == id.as_str()))
            .flat_map(|(_, tools)| tools.values().map(Arc::as_ref))
            .collect();
        out.sort_by(|a, b| (&a.integration_id, &a.name).cmp(&(&b.integration_id, &b.name)));
        out
    }

    pub fn len(&self) -> usize {
        self.integrations.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, tool: Tool) {
        self.integrations
            .entry(tool.integration_id.clone())
            .or_default()
            .insert(tool.name.clone(), Arc::new(tool));
    }

    fn apply(&self, rc: &RevisionChanges) -> TenantSnapshot {
        let mut next = self.clone();
        next.revision = rc.revision;
        for change in &rc.changes {
            match change {
                ToolChange::Upsert(tool) => next.insert(tool.clone()),
                ToolChange::Remove {
                    integration_id,
                    name,
                } => {
                    if let Some(tools) = next.integrations.get_mut(integration_id) {
                        tools.remove(name);
                        if tools.is_empty() {
                            next.integrations.remove(integration_id);
                        }
                    }
                }
            }
        }
        next
    }
}

/// A revision that does not follow the snapshot's: the caller must catch up from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub have: u64,
    pub got: u64,
}

/// Every tenant's snapshot.
#[derive(Debug, Default)]
pub struct Snapshots {
    tenants: RwLock<HashMap<String, Arc<TenantSnapshot>>>,
    /// Woken on every new revision, for readers waiting on `min_revision`.
    advanced: Notify,
}

impl Snapshots {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tenant's current snapshot (empty at revision 0 for a tenant with no tools).
    pub fn get(&self, tenant: &str) -> Arc<TenantSnapshot> {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        tenants.get(tenant).cloned().unwrap_or_default()
    }

    pub fn replace(&self, tenant: &str, snapshot: TenantSnapshot) {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        tenants.insert(tenant.to_owned(), Arc::new(snapshot));
        drop(tenants);
        self.advanced.notify_waiters();
    }

    /// Applies one revision if it follows the current one; ignores one already applied.
    pub fn apply(&self, tenant: &str, rc: &RevisionChanges) -> Result<(), Gap> {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        let current = tenants.get(tenant).cloned().unwrap_or_default();
        if rc.revision <= current.revision {
            return Ok(());
        }
        if rc.revision != current.revision + 1 {
            return Err(Gap {
                have: current.revision,
                got: rc.revision,
            });
        }
        tenants.insert(tenant.to_owned(), Arc::new(current.apply(rc)));
        drop(tenants);
        self.advanced.notify_waiters();
        Ok(())
    }

    /// A future that completes at the next applied revision of any tenant. Create it
    /// before checking the revision, so a change in between is not missed.
    pub fn advanced(&self) -> tokio::sync::futures::Notified<'_> {
        self.advanced.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Annotations, Policy, PolicySource};

    fn tool(name: &str, policy: Policy) -> Tool {
        Tool {
            integration_id: "i".into(),
            name: name.into(),
            description: String::new(),
            input_schema_json: String::new(),
            annotations: Annotations::default(),
            policy,
            manager_approval: false,
            source: PolicySource::Admin,
            source_reason: String::new(),
            revision: 1,
        }
    }

    #[test]
    fn applies_in_order_and_refuses_gaps() {
        let s = Snapshots::new();
        s.replace("t", TenantSnapshot::new(1, vec![tool("a", Policy::Auto)]));
        let r3 = RevisionChanges {
            revision: 3,
            changes: vec![ToolChange::Upsert(tool("b", Policy::Auto))],
        };
        assert_eq!(s.apply("t", &r3), Err(Gap { have: 1, got: 3 }));
        let r2 = RevisionChanges {
            revision: 2,
            changes: vec![ToolChange::Remove {
                integration_id: "i".into(),
                name: "a".into(),
            }],
        };
        assert_eq!(s.apply("t", &r2), Ok(()));
        assert_eq!(s.apply("t", &r3), Ok(()));
        let snap = s.get("t");
        assert_eq!(snap.revision, 3);
        assert!(snap.tool("i", "a").is_none());
        assert!(snap.tool("i", "b").is_some());
        // Replaying an old revision is a no-op.
        assert_eq!(s.apply("t", &r2), Ok(()));
        assert!(s.get("t").tool("i", "b").is_some());
    }

    #[test]
    fn unknown_tenant_is_empty_at_revision_zero() {
        let s = Snapshots::new();
        let snap = s.get("nobody");
        assert_eq!(snap.revision, 0);
        assert!(snap.is_empty());
    }
}
