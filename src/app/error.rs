//! What a use case can answer instead of a result. Every transport maps these in one place
//! (gRPC: `grpc::error`); internal causes are kept for the log and never shown to clients.

use crate::policy::names::FieldError;
use crate::store::StoreError;

#[derive(Debug)]
pub enum AppError {
    /// A field of the request is malformed; names the field.
    Invalid(FieldError),
    Unauthenticated(&'static str),
    PermissionDenied(String),
    NotFound(String),
    FailedPrecondition(String),
    /// Worth a retry, here or on another replica.
    Unavailable(String),
    ResourceExhausted(String),
    /// A bug or a broken environment: the context and the cause go to the log only.
    Internal(&'static str, Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn internal(
        context: &'static str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        AppError::Internal(context, Box::new(cause))
    }
}

impl From<FieldError> for AppError {
    fn from(e: FieldError) -> Self {
        AppError::Invalid(e)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        // An unreachable, slow or busy database is worth a retry (on this replica or
        // another); anything else is a bug.
        if e.is_unavailable() {
            tracing::warn!(error = %e, "store unavailable");
            AppError::Unavailable("the database is unavailable; retry".into())
        } else {
            AppError::internal("store", e)
        }
    }
}
