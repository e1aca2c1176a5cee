//! The in-memory policy snapshot: every tenant's tools, for the Decide hot path.
//!
//! A tenant's snapshot is immutable and shared behind an `Arc`; a Save builds the next one
//! and swaps it in. Changes are applied strictly in revision order: a revision that does
//! not follow the current one is refused, and the caller catches up from the store's
//! change log instead. Readers never wait on a Save and never touch the database.
//!
//! Each tenant also has a bounded broadcast of its revisions for WatchConfig. Events are
//! sent while the write lock is held, so they leave in revision order, and a subscriber
//! gets its receiver and the snapshot under one read lock, so every event it then receives
//! is newer than that snapshot.

use crate::policy::{RevisionChanges, Tool, ToolChange};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{Notify, broadcast};

/// What a tenant's watchers are told.
#[derive(Debug, Clone)]
pub enum TenantEvent {
    /// One revision, applied in order.
    Changes(Arc<RevisionChanges>),
    /// The snapshot was replaced wholesale (a reload): take a fresh one.
    Reset,
}

#[derive(Debug)]
struct Entry {
    snapshot: Arc<TenantSnapshot>,
    events: broadcast::Sender<TenantEvent>,
}

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

/// Sizes of all snapshots together.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub tenants: u64,
    pub tools: u64,
    pub revision_sum: u64,
}

/// Every tenant's snapshot.
#[derive(Debug)]
pub struct Snapshots {
    tenants: RwLock<HashMap<String, Entry>>,
    /// Woken on every new revision, for readers waiting on `min_revision`.
    advanced: Notify,
    /// How many revisions a tenant's broadcast holds for a watcher that is behind.
    buffer: usize,
}

impl Default for Snapshots {
    fn default() -> Self {
        Self::with_buffer(64)
    }
}

impl Snapshots {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_buffer(buffer: usize) -> Self {
        Snapshots {
            tenants: RwLock::new(HashMap::new()),
            advanced: Notify::new(),
            buffer: buffer.max(1),
        }
    }

    fn entry(&self, snapshot: TenantSnapshot) -> Entry {
        Entry {
            snapshot: Arc::new(snapshot),
            events: broadcast::channel(self.buffer).0,
        }
    }

    /// The tenant's current snapshot (empty at revision 0 for a tenant with no tools).
    pub fn get(&self, tenant: &str) -> Arc<TenantSnapshot> {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        tenants
            .get(tenant)
            .map(|e| e.snapshot.clone())
            .unwrap_or_default()
    }

    /// The current snapshot and a receiver of every later event, taken together.
    pub fn subscribe(
        &self,
        tenant: &str,
    ) -> (Arc<TenantSnapshot>, broadcast::Receiver<TenantEvent>) {
        {
            let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = tenants.get(tenant) {
                return (e.snapshot.clone(), e.events.subscribe());
            }
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        let e = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| self.entry(TenantSnapshot::default()));
        (e.snapshot.clone(), e.events.subscribe())
    }

    pub fn replace(&self, tenant: &str, snapshot: TenantSnapshot) {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        match tenants.get_mut(tenant) {
            Some(e) => {
                e.snapshot = Arc::new(snapshot);
                // No receivers is not an error: nobody is watching.
                let _ = e.events.send(TenantEvent::Reset);
            }
            None => {
                let e = self.entry(snapshot);
                tenants.insert(tenant.to_owned(), e);
            }
        }
        drop(tenants);
        self.advanced.notify_waiters();
    }

    /// Applies one revision if it follows the current one; ignores one already applied.
    pub fn apply(&self, tenant: &str, rc: &RevisionChanges) -> Result<(), Gap> {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        let e = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| self.entry(TenantSnapshot::default()));
        let have = e.snapshot.revision;
        if rc.revision <= have {
            return Ok(());
        }
        if rc.revision != have + 1 {
            return Err(Gap {
                have,
                got: rc.revision,
            });
        }
        e.snapshot = Arc::new(e.snapshot.apply(rc));
        let _ = e.events.send(TenantEvent::Changes(Arc::new(rc.clone())));
        drop(tenants);
        self.advanced.notify_waiters();
        Ok(())
    }

    /// Tenants, tools and the sum of revisions, for `/metrics`.
    pub fn totals(&self) -> Totals {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        let mut totals = Totals {
            tenants: tenants.len() as u64,
            ..Totals::default()
        };
        for e in tenants.values() {
            totals.tools += e.snapshot.len() as u64;
            totals.revision_sum += e.snapshot.revision;
        }
        totals
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
