//! Authentication and the role table: an `authorization` header → the caller its API key
//! stands for, allowed or refused for one operation.
//!
//! Keys are looked up in memory ([`KeyCache`](crate::keys::KeyCache)). A token that is not
//! there reaches the database only if it has the shape of one of our keys, only if it was
//! not refused a moment ago (a bounded negative cache), and only a few at a time: traffic
//! with made-up credentials cannot load the database.

use super::{App, AppError};
use crate::keys::{self, TokenHash};
use crate::policy::{Caller, Role};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const MISSING: &str = "missing credentials: send `authorization: Bearer <api key>`";
const UNKNOWN: &str = "unknown or revoked API key";

/// Everything a caller can ask for, with the roles that may (the role table). A variant's
/// name is the RPC's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
pub enum Operation {
    ConnectIntegration,
    ListTools,
    SetPolicy,
    UpsertPeople,
    Decide,
    SubmitApproval,
    GetApproval,
    ListApprovals,
    WatchConfig,
    WatchApprovals,
    ListRevisions,
    RollbackPolicies,
    CancelApproval,
    SetNotificationChannel,
    ListNotificationChannels,
    DeleteNotificationChannel,
    ListDeliveries,
    RetryDelivery,
}

impl Operation {
    pub const ALL: &'static [Operation] = <Operation as strum::VariantArray>::VARIANTS;

    /// The RPC's name, as in the proto and the request path.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The roles that may run it. Agents see their own approvals only (see
    /// [`super::approvals::may_see`]).
    pub fn roles(self) -> &'static [Role] {
        use Role::{Admin, Agent, Approver};
        match self {
            Operation::ConnectIntegration
            | Operation::SetPolicy
            | Operation::UpsertPeople
            | Operation::ListRevisions
            | Operation::RollbackPolicies
            | Operation::SetNotificationChannel
            | Operation::ListNotificationChannels
            | Operation::DeleteNotificationChannel
            | Operation::ListDeliveries
            | Operation::RetryDelivery => &[Admin],
            Operation::ListTools
            | Operation::Decide
            | Operation::WatchConfig
            | Operation::CancelApproval => &[Agent, Admin],
            Operation::SubmitApproval => &[Approver, Admin],
            Operation::GetApproval | Operation::ListApprovals | Operation::WatchApprovals => {
                &[Agent, Approver, Admin]
            }
        }
    }
}

/// The token of an `authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, AppError> {
    let value = header
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or(AppError::Unauthenticated(MISSING))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AppError::Unauthenticated(MISSING))
}

impl App {
    /// The caller behind an `authorization` header value, if it may run `op`.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        op: Operation,
    ) -> Result<Arc<Caller>, AppError> {
        let result = self.check_credentials(authorization, op).await;
        if let Err(e @ (AppError::Unauthenticated(_) | AppError::PermissionDenied(_))) = &result {
            self.refusals.log(op, e);
        }
        result
    }

    async fn check_credentials(
        &self,
        authorization: Option<&[u8]>,
        op: Operation,
    ) -> Result<Arc<Caller>, AppError> {
        let token = bearer_token(authorization)?;
        let caller = self.caller_for(token).await?;
        if !op.roles().contains(&caller.role) {
            return Err(AppError::PermissionDenied(format!(
                "a key with role {} may not call {}",
                caller.role,
                op.name()
            )));
        }
        Ok(caller)
    }

    async fn caller_for(&self, token: &str) -> Result<Arc<Caller>, AppError> {
        if !keys::well_formed(token) {
            return Err(AppError::Unauthenticated(UNKNOWN));
        }
        let hash = TokenHash::of(token);
        if let Some(caller) = self.keys.get(hash.as_str()) {
            return Ok(caller);
        }
        // Boxed, like every store call on the Decide path: a store future is large, and
        // held inline it would make every call's future (moved into a box by tonic on each
        // call) that large too; the profile showed the copy.
        Box::pin(self.look_up_missing(hash)).await
    }

    /// A key not in the cache: minted a moment ago, or not a key at all.
    async fn look_up_missing(&self, hash: TokenHash) -> Result<Arc<Caller>, AppError> {
        let hash = hash.as_str();
        let Some(_turn) = self.keys.miss_lookup(hash).await else {
            return Err(AppError::Unauthenticated(UNKNOWN));
        };
        let generation = self.keys.generation();
        match self.store.caller_by_secret(hash).await? {
            Some(caller) => {
                let caller = Arc::new(caller);
                self.keys
                    .insert_if_current(generation, hash, caller.clone());
                Ok(caller)
            }
            None => {
                self.keys.record_miss(hash);
                Err(AppError::Unauthenticated(UNKNOWN))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token(Some(b"Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some(b"bearer  abc ")).unwrap(), "abc");
        for bad in [&b"Basic abc"[..], b"Bearer ", b"Bearer\tabc", b"\xff"] {
            assert!(
                matches!(bearer_token(Some(bad)), Err(AppError::Unauthenticated(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            bearer_token(None),
            Err(AppError::Unauthenticated(_))
        ));
    }

    #[test]
    fn every_operation_allows_admins_and_only_listed_roles() {
        use Operation::*;
        for op in Operation::ALL {
            assert!(op.roles().contains(&Role::Admin), "{}", op.name());
        }
        assert!(!SetPolicy.roles().contains(&Role::Agent));
        assert!(!Decide.roles().contains(&Role::Approver));
        assert!(!SubmitApproval.roles().contains(&Role::Agent));
    }
}

/// Logs refused credentials, at most one line a second (with how many were refused
/// without a line since), so traffic with bad keys cannot flood the log. Never the token.
#[derive(Debug, Default)]
pub struct Refusals {
    /// The Unix second of the last line.
    logged_at: AtomicU64,
    /// Refusals since that line.
    unlogged: AtomicU64,
}

impl Refusals {
    fn log(&self, op: Operation, e: &AppError) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.logged_at.load(Ordering::Relaxed);
        let mine = last != now
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if !mine {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let also = self.unlogged.swap(0, Ordering::Relaxed);
        let reason = match e {
            AppError::Unauthenticated(why) => (*why).to_owned(),
            AppError::PermissionDenied(why) => why.clone(),
            _ => String::new(),
        };
        tracing::warn!(
            method = op.name(),
            %reason,
            refused_since_last_line = also,
            "credentials refused"
        );
    }
}
