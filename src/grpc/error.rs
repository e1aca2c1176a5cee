//! The one place where errors become gRPC statuses. Internal causes are logged here and
//! never sent to the client.

use crate::policy::names::FieldError;
use crate::store::StoreError;
use tonic::Status;

#[derive(Debug)]
pub enum ApiError {
    Invalid(FieldError),
    Unauthenticated(&'static str),
    PermissionDenied(String),
    NotFound(String),
    FailedPrecondition(String),
    Unavailable(String),
    ResourceExhausted(String),
    Internal(&'static str, Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(
        context: &'static str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ApiError::Internal(context, Box::new(cause))
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // An unreachable, slow or busy database is worth a retry (on this replica or
        // another); anything else is a bug.
        if e.is_unavailable() {
            tracing::warn!(error = %e, "store unavailable");
            ApiError::Unavailable("the database is unavailable; retry".into())
        } else {
            ApiError::internal("store", e)
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(f) => Status::invalid_argument(f.to_string()),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Internal(context, cause) => {
                tracing::error!(context, error = %cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
