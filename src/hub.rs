//! Per-tenant broadcast of approval changes, for WatchApprovals.
//!
//! Publishing never waits: each tenant's channel is bounded, and a watcher that falls
//! behind is told so (it re-reads state) instead of holding up the writer.

use crate::policy::Approval;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

#[derive(Debug)]
pub struct ApprovalHub {
    tenants: Mutex<HashMap<String, broadcast::Sender<Arc<Approval>>>>,
    buffer: usize,
}

impl ApprovalHub {
    pub fn new(buffer: usize) -> Self {
        ApprovalHub {
            tenants: Mutex::new(HashMap::new()),
            buffer: buffer.max(1),
        }
    }

    pub fn subscribe(&self, tenant: &str) -> broadcast::Receiver<Arc<Approval>> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .subscribe()
    }

    /// Tells the tenant's watchers; a tenant nobody watches costs a map lookup.
    pub fn publish(&self, tenant: &str, approval: &Approval) {
        let tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tenants.get(tenant) {
            let _ = tx.send(Arc::new(approval.clone()));
        }
    }
}
