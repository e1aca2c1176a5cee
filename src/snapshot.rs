//! The in-memory policy snapshot: every tenant's tools, for the Decide hot path.
//!
//! A tenant's snapshot is immutable and shared behind an `Arc`; a Save builds the next one
//! and swaps it in. Changes are applied strictly in revision order: a revision that does
//! not follow the current one is refused, and the caller catches up from the store's
//! change log instead. Readers never wait on a Save and never touch the database.
//!
//! Each tenant has a cell of its own: the current snapshot, a bounded broadcast of its
//! revisions for WatchConfig, and its revision for `min_revision` waiters. Building the
//! next snapshot and waking waiters touch only that tenant's cell, so a Save of one tenant
//! never holds up another tenant's Decide. Events are sent while the cell's write lock is
//! held, so they leave in revision order, and a subscriber gets its receiver and the
//! snapshot under the cell's read lock, so every event it then receives is newer than
//! that snapshot.

use crate::FastMap;
use crate::policy::{RevisionChanges, Tool, ToolChange};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// What a tenant's watchers are told.
#[derive(Debug, Clone)]
pub enum TenantEvent {
    /// One revision, applied in order.
    Changes(Arc<RevisionChanges>),
    /// The snapshot was replaced wholesale (a reload): take a fresh one.
    Reset,
}

/// One tenant's state. Writers are serialised by the caller (one Save of a tenant at a
/// time applies), so the slow part of an apply, building the next snapshot, runs outside
/// any lock.
#[derive(Debug)]
struct Cell {
    current: RwLock<Arc<TenantSnapshot>>,
    events: broadcast::Sender<TenantEvent>,
    /// The current snapshot's revision, for `min_revision` waiters of this tenant only.
    revision: watch::Sender<u64>,
    /// The encodings of the last [`RETAINED_ENCODINGS`] snapshots this one replaced, so a
    /// stream part-way through one of them can finish it (see [`Encodings`]).
    retired: std::sync::Mutex<std::collections::VecDeque<EncodingMap>>,
}

/// How many replaced revisions' encodings a tenant keeps: a WatchConfig stream must take a
/// message before this many newer revisions replace the one it belongs to.
pub const RETAINED_ENCODINGS: usize = 8;

impl Cell {
    fn snapshot(&self) -> Arc<TenantSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in `next` and tells the watchers `event`, under the write lock.
    fn swap(&self, next: TenantSnapshot, event: TenantEvent) {
        let revision = next.revision;
        {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            let replaced = std::mem::replace(&mut *current, Arc::new(next));
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            retired.push_back(replaced.encodings.0.clone());
            if retired.len() > RETAINED_ENCODINGS {
                retired.pop_front();
            }
            // No receivers is not an error: nobody is watching.
            let _ = self.events.send(event);
        }
        self.revision.send_replace(revision);
    }
}

/// One tenant's tools at one revision.
#[derive(Debug, Clone, Default)]
pub struct TenantSnapshot {
    pub revision: u64,
    /// integration id → tool name → tool. Nested so a lookup borrows `&str` keys.
    integrations: FastMap<String, FastMap<String, Arc<Tool>>>,
    /// What a transport encoded of this revision, made once and shared by its streams.
    pub encodings: Encodings,
}

/// Bytes a transport made of one revision (a WatchConfig snapshot or change, framed), by a
/// key of its choosing. They live as long as the revision's snapshot, and after it is
/// replaced for [`RETAINED_ENCODINGS`] more revisions of the tenant; then they are freed
/// (streams hold them only weakly between pieces). A clone of the snapshot (the start of
/// the next revision) starts empty.
#[derive(Default)]
pub struct Encodings(EncodingMap);

type EncodingMap = Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>;

impl Encodings {
    /// The encoding under `key`, made by `make` if this revision has none yet. `make` runs
    /// outside the lock; two streams racing may both make it, and the first one is kept.
    pub fn get_or_make(&self, key: &str, make: impl FnOnce() -> Vec<u8>) -> Arc<Vec<u8>> {
        if let Some(found) = self.lock().get(key) {
            return found.clone();
        }
        let made = Arc::new(make());
        self.lock().entry(key.to_owned()).or_insert(made).clone()
    }

    /// Bytes held, for tests and diagnostics.
    pub fn bytes(&self) -> usize {
        self.lock().values().map(|e| e.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<u8>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clone for Encodings {
    fn clone(&self) -> Self {
        Encodings::default()
    }
}

impl std::fmt::Debug for Encodings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encodings({} bytes)", self.bytes())
    }
}

impl TenantSnapshot {
    pub fn new(revision: u64, tools: Vec<Tool>) -> Self {
        let mut snapshot = TenantSnapshot {
            revision,
            ..TenantSnapshot::default()
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
        self.integrations.values().map(FastMap::len).sum()
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
    tenants: RwLock<FastMap<String, Arc<Cell>>>,
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
            tenants: RwLock::default(),
            buffer: buffer.max(1),
        }
    }

    /// The tenant's cell, made (empty, at revision 0) if it has none yet.
    fn cell(&self, tenant: &str) -> Arc<Cell> {
        {
            let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
            if let Some(cell) = tenants.get(tenant) {
                return cell.clone();
            }
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(Cell {
                    current: RwLock::default(),
                    events: broadcast::channel(self.buffer).0,
                    revision: watch::channel(0).0,
                    retired: std::sync::Mutex::default(),
                })
            })
            .clone()
    }

    /// The tenant's current snapshot (empty at revision 0 for a tenant with no tools).
    pub fn get(&self, tenant: &str) -> Arc<TenantSnapshot> {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        tenants
            .get(tenant)
            .map(|cell| cell.snapshot())
            .unwrap_or_default()
    }

    /// The current snapshot and a receiver of every later event, taken together.
    pub fn subscribe(
        &self,
        tenant: &str,
    ) -> (Arc<TenantSnapshot>, broadcast::Receiver<TenantEvent>) {
        let cell = self.cell(tenant);
        let current = cell.current.read().unwrap_or_else(|e| e.into_inner());
        (current.clone(), cell.events.subscribe())
    }

    /// Replaces the tenant's snapshot wholesale (a load or reload); watchers are told to
    /// take a fresh one.
    pub fn replace(&self, tenant: &str, snapshot: TenantSnapshot) {
        self.cell(tenant).swap(snapshot, TenantEvent::Reset);
    }

    /// Applies one revision if it follows the current one; ignores one already applied.
    /// Callers apply one tenant's revisions one at a time.
    pub fn apply(&self, tenant: &str, rc: &RevisionChanges) -> Result<(), Gap> {
        let cell = self.cell(tenant);
        let current = cell.snapshot();
        let have = current.revision;
        if rc.revision <= have {
            return Ok(());
        }
        if rc.revision != have + 1 {
            return Err(Gap {
                have,
                got: rc.revision,
            });
        }
        let next = current.apply(rc);
        cell.swap(next, TenantEvent::Changes(Arc::new(rc.clone())));
        Ok(())
    }

    /// The tenant's snapshot once it reaches `min`, waiting at most `wait`; the revision
    /// it is at when the wait runs out.
    pub async fn wait_for_revision(
        &self,
        tenant: &str,
        min: u64,
        wait: Duration,
    ) -> Result<Arc<TenantSnapshot>, u64> {
        let mut revision = self.cell(tenant).revision.subscribe();
        let reached = tokio::time::timeout(wait, revision.wait_for(|r| *r >= min))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(self.get(tenant))
        } else {
            Err(*revision.borrow())
        }
    }

    /// Tenants, tools and the sum of revisions, for `/metrics`.
    pub fn totals(&self) -> Totals {
        let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
        let mut totals = Totals {
            tenants: tenants.len() as u64,
            ..Totals::default()
        };
        for cell in tenants.values() {
            let snapshot = cell.snapshot();
            totals.tools += snapshot.len() as u64;
            totals.revision_sum += snapshot.revision;
        }
        totals
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

    #[tokio::test]
    async fn a_min_revision_waiter_wakes_when_its_tenant_reaches_it_and_times_out_before() {
        let s = Arc::new(Snapshots::new());
        s.replace("t", TenantSnapshot::new(1, vec![]));
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for_revision("t", 2, Duration::from_secs(60)).await })
        };
        // Another tenant at a higher revision is no answer for this one: the waiter gets
        // its own tenant's snapshot, at revision 2.
        s.replace("other", TenantSnapshot::new(5, vec![]));
        let r2 = RevisionChanges {
            revision: 2,
            changes: vec![ToolChange::Upsert(tool("a", Policy::Auto))],
        };
        s.apply("t", &r2).unwrap();
        let got = waiter.await.unwrap().expect("reached revision 2");
        assert_eq!(got.revision, 2);
        let short = s.wait_for_revision("t", 3, Duration::from_millis(1)).await;
        assert_eq!(short.map(|s| s.revision), Err(2));
    }

    #[test]
    fn unknown_tenant_is_empty_at_revision_zero() {
        let s = Snapshots::new();
        let snap = s.get("nobody");
        assert_eq!(snap.revision, 0);
        assert!(snap.is_empty());
    }
}
