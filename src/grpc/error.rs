//! The one place where errors become gRPC statuses. Internal causes are logged here and
//! never sent to the client.

use crate::app::AppError;
use tonic::Status;

impl From<AppError> for Status {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(f) => Status::invalid_argument(f.to_string()),
            AppError::Unauthenticated(m) => Status::unauthenticated(m),
            AppError::PermissionDenied(m) => Status::permission_denied(m),
            AppError::NotFound(m) => Status::not_found(m),
            AppError::FailedPrecondition(m) => Status::failed_precondition(m),
            AppError::Unavailable(m) => Status::unavailable(m),
            AppError::ResourceExhausted(m) => Status::resource_exhausted(m),
            AppError::Internal(context, cause) => {
                tracing::error!(context, error = %cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
