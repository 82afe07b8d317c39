//! The error every drpilot phase raises. Its [`ErrorKind`] name becomes the Lambda
//! `errorType`, which is what Step Functions matches in `Retry`/`Catch` (DESIGN.md §5).

use std::fmt;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use lambda_runtime::Diagnostic;

/// The error names Step Functions matches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The execution input or the profile is wrong; nothing was changed.
    InputError,
    /// A backup does not follow the backup contract (missing artifact, bad metadata,
    /// forbidden tar entry, ...).
    ContractError,
    /// Data does not match what it claims to be (hash, size, manifest, parity).
    IntegrityError,
    /// The function runs in another account or region than the profile names.
    AccountMismatch,
    /// Another run holds the run lock.
    LockHeld,
    /// Promotion was asked for without an approval (approver and ticket).
    ApprovalMissing,
    /// A transient fault (throttling, 5xx, timeout): the state machine retries it.
    Retryable,
    /// An AWS call failed in a way retrying will not fix (access denied, missing bucket).
    /// Not in DESIGN.md §5's list: it keeps such faults apart from `Retryable`, and the
    /// state machine's catch-all routes it to teardown like any other failure.
    ServiceError,
}

impl ErrorKind {
    /// The name Step Functions sees as the error.
    pub fn name(self) -> &'static str {
        match self {
            Self::InputError => "InputError",
            Self::ContractError => "ContractError",
            Self::IntegrityError => "IntegrityError",
            Self::AccountMismatch => "AccountMismatch",
            Self::LockHeld => "LockHeld",
            Self::ApprovalMissing => "ApprovalMissing",
            Self::Retryable => "Retryable",
            Self::ServiceError => "ServiceError",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A drpilot failure: what kind it is (for the state machine) and what happened (for a person).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InputError, message)
    }
    pub fn contract(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ContractError, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::IntegrityError, message)
    }
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, message)
    }

    /// Classifies a failed AWS SDK call. `what` says which call on which resource,
    /// e.g. `"GetObject s3://b/k"`, so the message stands on its own.
    pub fn from_sdk<E>(what: &str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let kind = if is_transient(&err) {
            ErrorKind::Retryable
        } else {
            ErrorKind::ServiceError
        };
        let detail = match err.code() {
            Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
            None => aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
        };
        Self::new(kind, format!("{what} failed: {detail}"))
    }
}

/// The codes AWS documents as throttling or transient, plus every fault that never
/// reached a service answer (timeouts, connection failures) and every 5xx.
fn is_transient<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    const TRANSIENT_CODES: &[&str] = &[
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
    ];
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            status >= 500
                || status == 429
                || err
                    .code()
                    .is_some_and(|code| TRANSIENT_CODES.contains(&code))
        }
        _ => false,
    }
}

impl From<Error> for Diagnostic {
    fn from(err: Error) -> Self {
        Diagnostic {
            error_type: err.kind.name().to_owned(),
            error_message: err.message,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::input(err.to_string())
    }
}
