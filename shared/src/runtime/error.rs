//! The error every drpilot phase raises. Its [`ErrorKind`] name becomes the Lambda
//! `errorType`, which is what Step Functions matches in `Retry`/`Catch` (docs/contracts.md).

use std::fmt;
use std::sync::Arc;

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
    /// An AWS call failed in a way retrying will not fix (access denied, missing bucket),
    /// or a range's child found its run ended under it (teardown's fence, `fence`).
    /// Kept apart from `Retryable` so the state machine never retries it; its catch-all
    /// routes it to teardown like any other failure.
    ServiceError,
    /// A bug: a panic, a task that died, a request that could not be built. Retrying
    /// cannot fix it, so the state machine never retries it.
    Internal,
    /// A failback found keys changed on both sites differently since the DR run's
    /// baseline, and the input did not accept discarding the primary's versions.
    DivergenceError,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        Self::InputError,
        Self::ContractError,
        Self::IntegrityError,
        Self::AccountMismatch,
        Self::LockHeld,
        Self::ApprovalMissing,
        Self::Retryable,
        Self::ServiceError,
        Self::Internal,
        Self::DivergenceError,
    ];

    /// The kind a Step Functions error name (a Catch's `Error`) stands for, if it is one
    /// of drpilot's.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

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
            Self::Internal => "Internal",
            Self::DivergenceError => "DivergenceError",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A drpilot failure: what kind it is (for the state machine), what happened (for a
/// person), and the underlying error when there is one (kept as the `source`, so a
/// verbose report can walk the chain).
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// The service's error code when an AWS call failed ([`Error::from_sdk`]).
    aws_code: Option<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            aws_code: None,
        }
    }

    /// The service's error code, when an AWS call failed with one (`SlowDown`, say).
    pub fn aws_code(&self) -> Option<&str> {
        self.aws_code.as_deref()
    }

    /// Whether this error's cause is an `E` (a typed marker, never a message compared).
    pub fn is_caused_by<E: std::error::Error + 'static>(&self) -> bool {
        self.source
            .as_deref()
            .is_some_and(|source| source.is::<E>())
    }

    /// Keeps `source` as the cause of this error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
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
    /// A `Retryable` failure at the run's last allowed attempt becomes a `ServiceError`
    /// (which the state machine does not retry), saying so; anything else is unchanged.
    pub fn at_attempt(self, attempt: u32, max_attempts: u32) -> Self {
        if self.kind != ErrorKind::Retryable || attempt < max_attempts {
            return self;
        }
        let message = format!(
            "gave up at attempt {attempt} of {max_attempts} (max_attempts): {}",
            self.message
        );
        Self {
            kind: ErrorKind::ServiceError,
            message,
            ..self
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Classifies a failed AWS SDK call. `what` says which call on which resource,
    /// e.g. `"GetObject s3://b/k"`, so the message stands on its own.
    pub fn from_sdk<E>(what: &str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let kind = if matches!(err, SdkError::ConstructionFailure(_)) {
            // The request could not even be built: our bug, not the service's.
            ErrorKind::Internal
        } else if is_transient(&err) {
            ErrorKind::Retryable
        } else {
            ErrorKind::ServiceError
        };
        let detail = match err.code() {
            Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
            None => aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
        };
        let aws_code = err.code().map(str::to_owned);
        Self {
            aws_code,
            ..Self::new(kind, format!("{what} failed: {detail}")).with_source(err)
        }
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

/// The longest error message a function hands Step Functions. The message becomes the
/// state's `Cause`, which travels in the state machine's payloads (256 KiB at most) and
/// its `$failure` variable; a message that grows with what failed (every failed range, say)
/// must not take an execution past that. Receipts keep the whole message.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// `message` cut to [`MAX_ERROR_MESSAGE_BYTES`] on a character boundary, saying how much
/// was left out.
pub fn bounded_message(message: &str) -> String {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_ERROR_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes: the receipt has the whole message)",
        &message[..end],
        message.len() - end
    )
}

impl From<Error> for Diagnostic {
    fn from(err: Error) -> Self {
        Diagnostic {
            error_type: err.kind.name().to_owned(),
            error_message: bounded_message(&err.message),
        }
    }
}

/// A task that panicked or was cancelled is a bug (`Internal`), never a transient fault.
impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        if err.is_panic() {
            Error::internal(format!(
                "a task panicked: {}",
                panic_message(err.into_panic())
            ))
        } else {
            Error::internal(format!("a task was cancelled: {err}"))
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

/// Runs a handler, turning a panic inside it into an `Internal` error: Step Functions
/// then sees the name it matches on (and never retries it) instead of the runtime's
/// type name for a panic payload.
pub async fn catch_panic<T>(handler: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use futures::FutureExt;
    // Boxed: handler futures hold the SDK's and are large.
    std::panic::AssertUnwindSafe(Box::pin(handler))
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            Err(Error::internal(format!(
                "the handler panicked: {}",
                panic_message(payload)
            )))
        })
}

/// The message of a failure as Step Functions reports it: a Lambda error arrives as
/// `{"errorType": ..., "errorMessage": ...}`, anything else is shown as it is.
pub fn readable_cause(cause: &str) -> String {
    #[derive(serde::Deserialize)]
    struct LambdaError {
        #[serde(rename = "errorMessage")]
        error_message: String,
    }
    serde_json::from_str::<LambdaError>(cause)
        .map(|e| e.error_message)
        .unwrap_or_else(|_| cause.to_owned())
}

/// A location built from the input or the profile that S3 cannot hold. Locations built
/// from a backup's contents map to `ContractError` explicitly where they are made.
impl From<crate::s3uri::LocationError> for Error {
    fn from(err: crate::s3uri::LocationError) -> Self {
        Error::input(err.to_string()).with_source(err)
    }
}

/// A JSON document that did not decode, named by what it is and the field it failed at:
/// `input: mode: unknown variant ...`, `profile prod: not valid JSON: ...`. The one
/// place serde's path errors become words; the caller picks the error kind.
#[derive(Debug, thiserror::Error)]
#[error("{document}: {}", self.describe())]
pub struct DecodeError {
    document: String,
    path: String,
    #[source]
    error: serde_json::Error,
}

impl DecodeError {
    fn new(document: &str, err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        Self {
            document: document.to_owned(),
            path: err.path().to_string(),
            error: err.into_inner(),
        }
    }

    fn describe(&self) -> String {
        if self.error.is_syntax() || self.error.is_eof() {
            format!("not valid JSON: {}", self.error)
        } else if self.path == "." {
            // serde reports unknown and missing fields at the level they belong to.
            self.error.to_string()
        } else {
            format!("{}: {}", self.path, self.error)
        }
    }
}

/// Decodes `value` as `T`; `document` names it in the error.
pub fn decode_value<T: serde::de::DeserializeOwned>(
    document: &str,
    value: &serde_json::Value,
) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| DecodeError::new(document, e))
}

/// Decodes JSON text as `T`; `document` names it in the error.
pub fn decode_slice<T: serde::de::DeserializeOwned>(
    document: &str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| DecodeError::new(document, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_internal_and_named_so() {
        let result: Result<()> = catch_panic(async { panic!("boom") }).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
        assert!(err.message.contains("boom"), "{err}");
        let diagnostic = Diagnostic::from(err);
        assert_eq!(diagnostic.error_type, "Internal");
    }

    #[test]
    fn a_long_message_is_cut_for_step_functions() {
        let long = "range 7 failed; ".repeat(1000);
        let diagnostic = Diagnostic::from(Error::input(long.clone()));
        assert!(diagnostic.error_message.len() < MAX_ERROR_MESSAGE_BYTES + 100);
        assert!(diagnostic
            .error_message
            .ends_with("the receipt has the whole message)"));
        assert_eq!(bounded_message("short"), "short");
        // A cut never splits a character.
        assert!(bounded_message(&"é".repeat(5000)).starts_with('é'));
    }

    #[tokio::test]
    async fn a_panicked_task_is_internal_not_retryable() {
        let joined = tokio::spawn(async { panic!("in a task") }).await;
        let err = Error::from(joined.unwrap_err());
        assert_eq!(err.kind, ErrorKind::Internal);
        assert!(err.message.contains("in a task"), "{err}");
    }

    #[test]
    fn lambda_causes_are_unwrapped() {
        assert_eq!(
            readable_cause(r#"{"errorType":"ContractError","errorMessage":"missing artifact"}"#),
            "missing artifact"
        );
        assert_eq!(readable_cause("plain"), "plain");
    }

    #[test]
    fn a_transient_failure_at_the_last_attempt_is_no_longer_retried() {
        let slow = || Error::retryable("S3 SlowDown");
        assert_eq!(slow().at_attempt(1, 3).kind, ErrorKind::Retryable);
        let last = slow().at_attempt(3, 3);
        assert_eq!(last.kind, ErrorKind::ServiceError);
        assert!(last.message.contains("attempt 3 of 3") && last.message.contains("SlowDown"));
        // --no-retry: the first attempt is the last.
        assert_eq!(slow().at_attempt(1, 1).kind, ErrorKind::ServiceError);
        let input = Error::input("bad").at_attempt(9, 1);
        assert_eq!(
            (input.kind, input.message.as_str()),
            (ErrorKind::InputError, "bad")
        );
    }

    #[test]
    fn a_request_that_cannot_be_built_is_internal() {
        let err: SdkError<aws_sdk_s3::operation::get_object::GetObjectError, HttpResponse> =
            SdkError::construction_failure("missing bucket");
        assert_eq!(Error::from_sdk("GetObject", err).kind, ErrorKind::Internal);
    }
}
