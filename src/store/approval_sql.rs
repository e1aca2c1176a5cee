//! The approval statements, shared by the store ([`super::sql`]) and the group commit
//! ([`super::group_commit`]).

/// The columns of an `approval_events` row, in the order [`bind_event!`] binds.
pub(super) const EVENT_INSERT: &str = "INSERT INTO approval_events (tenant, approval_id, version, origin, \
     state, required_roles, consumed_by_request, steps, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";

/// What waits for people (`pending_approvals`, migration 0007, which Decide counts for
/// `max_pending_approvals` and searches for a pending approval of the same call): a new
/// approval joins it in the transaction that creates it ...
pub(super) const PENDING_ADD: &str = "INSERT INTO pending_approvals (tenant, approval_id, \
     expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

/// ... and leaves it in the transaction that writes any state but pending (decided,
/// expired, cancelled). PostgreSQL's group commit does both over arrays in its own
/// statements (`group_commit.rs`).
pub(super) const PENDING_REMOVE: &str =
    "DELETE FROM pending_approvals WHERE tenant = $1 AND approval_id = $2";

/// An approval's head: what never changes. Nothing is inserted when the principal's request
/// id already made one.
pub(super) const HEAD_INSERT: &str = "INSERT INTO approvals (tenant, id, integration_id, tool_name, \
     arguments_json, arguments_sha256, requester_id, request_id, required_roles, created_at, \
     expires_at, created_by_key, principal) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (tenant, principal, request_id) DO NOTHING";

/// Binds an approval event in [`EVENT_INSERT`]'s order.
macro_rules! bind_event {
    ($query:expr, $tenant:expr, $version:expr, $origin:expr, $a:expr, $at:expr) => {
        $query
            .bind($tenant)
            .bind(&$a.id)
            .bind($version)
            .bind($origin)
            .bind($a.state.as_str())
            .bind(super::rows::roles_to_text(&$a.required_roles))
            .bind($a.consumed_by_request.as_deref())
            .bind(super::rows::steps_to_json(&$a.steps))
            .bind($at)
    };
}

/// Binds an approval's head columns in [`HEAD_INSERT`]'s order.
macro_rules! bind_head {
    ($query:expr, $tenant:expr, $a:expr) => {
        $query
            .bind($tenant)
            .bind(&$a.id)
            .bind(&$a.integration_id)
            .bind(&$a.tool_name)
            .bind(&$a.arguments_json)
            .bind(&$a.arguments_sha256)
            .bind(&$a.requester_id)
            .bind(&$a.request_id)
            .bind(super::rows::roles_to_text(&$a.required_roles))
            .bind($a.created_at.0)
            .bind($a.expires_at.0)
            .bind(&$a.created_by_key)
            .bind(&$a.principal)
    };
}
