//! The CLI's errors, shown as one readable line — what failed, why, and what to do — with
//! the full detail (the AWS SDK's error chain) behind `--verbose`.

use std::error::Error as _;
use std::fmt;

use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Aws(AwsFailure),
    #[error("{0}")]
    Drpilot(#[from] drpilot_shared::Error),
    /// The local file system or a program the CLI ran (a script, `make-backup.sh`).
    #[error("{0}")]
    Io(String),
    /// A drpilot function failed or answered what it never answers (the readiness and
    /// approve functions, invoked directly).
    #[error("{0}")]
    Function(String),
    /// The HTTPS request to the approve function's URL: no answer in time, no
    /// connection, no TLS roots.
    #[error("{0}")]
    Http(String),
    /// Signing a request or a proof of identity with the resolved credentials.
    #[error("{0}")]
    Signing(String),
    /// Encoding JSON or rendering a report.
    #[error("{0}")]
    Encoding(String),
    /// Setting up the local stack on the emulator.
    #[error("{0}")]
    LocalStack(String),
}

impl CliError {
    /// A failed AWS call: `what` names the call and its target (`StartExecution`).
    pub fn aws<E, R>(what: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        Self::Aws(AwsFailure::new(what, err))
    }

    /// The error for a person: one line, and with `verbose` the chain of causes under it.
    pub fn report(&self, verbose: bool) -> String {
        let mut text = self.to_string();
        if verbose {
            let mut source = match self {
                Self::Aws(failure) => Some(failure.detail.as_ref() as &dyn std::error::Error),
                Self::Drpilot(err) => err.source(),
                _ => None,
            };
            while let Some(err) = source {
                text.push_str(&format!("\n  caused by: {err}"));
                source = err.source();
            }
        }
        text
    }
}

/// An AWS call that failed: the call, the service's error code and message (or why no
/// answer came), and a hint at what to do about it.
#[derive(Debug)]
pub struct AwsFailure {
    what: String,
    why: String,
    hint: Option<&'static str>,
    detail: Box<dyn std::error::Error + Send + Sync>,
}

impl AwsFailure {
    fn new<E, R>(what: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        let (why, hint) = match &err {
            SdkError::ServiceError(_) => {
                let code = err.code().unwrap_or("an error without a code");
                let why = match err.message() {
                    Some(message) => format!("{code}: {message}"),
                    None => code.to_owned(),
                };
                (why, hint_for_code(code))
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
                let chain = chain_text(&err);
                if chain.contains("credential") {
                    (
                        "no credentials were found".to_owned(),
                        Some("log in (aws sso login) or set AWS_PROFILE; for the local stack pass --local"),
                    )
                } else {
                    (
                        "no answer from AWS (connection failed or timed out)".to_owned(),
                        Some("check the network and AWS_REGION / AWS_ENDPOINT_URL; for the local stack, start it with `drpilot local up`"),
                    )
                }
            }
            SdkError::ConstructionFailure(_) => (
                "the request could not be built".to_owned(),
                Some("this is a drpilot bug: run again with --verbose and report it"),
            ),
            _ => ("the answer could not be read".to_owned(), None),
        };
        Self {
            what: what.to_owned(),
            why,
            hint,
            detail: Box::new(err),
        }
    }
}

impl fmt::Display for AwsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.what, self.why)?;
        if let Some(hint) = self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// What a person can do about the AWS error codes the CLI meets.
fn hint_for_code(code: &str) -> Option<&'static str> {
    Some(match code {
        "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
            "the credentials in use may not do this: check AWS_PROFILE and the role's policy"
        }
        "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" => {
            "the session has expired: log in again"
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch" => {
            "the credentials are not valid here: check AWS_PROFILE and AWS_REGION"
        }
        "ExecutionDoesNotExist" => "no such run: check the run id and --state-machine",
        "StateMachineDoesNotExist" => {
            "deploy drpilot first, or name the state machine with --state-machine"
        }
        "ExecutionAlreadyExists" => "a run with this id exists already: choose another run_id",
        "TaskTimedOut" | "InvalidToken" | "TaskDoesNotExist" => {
            "the run is no longer waiting for this answer (timed out or answered already)"
        }
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" => {
            "AWS is throttling requests: try again in a moment"
        }
        "ParameterNotFound" => "no such profile: check the profile name (SSM parameter)",
        "NoSuchBucket" => "the bucket does not exist: check the profile's locations",
        _ => return None,
    })
}

fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sfn::operation::start_execution::StartExecutionError;

    #[test]
    fn a_service_error_is_one_line_with_what_to_do() {
        let meta = aws_sdk_sfn::error::ErrorMetadata::builder()
            .code("AccessDeniedException")
            .message("User is not authorized to perform states:StartExecution")
            .build();
        let err: SdkError<StartExecutionError, ()> =
            SdkError::service_error(StartExecutionError::generic(meta), ());
        let shown = CliError::aws("StartExecution", err).report(false);
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(
            shown.starts_with(
                "StartExecution failed: AccessDeniedException: User is not authorized"
            ),
            "{shown}"
        );
        assert!(shown.contains("check AWS_PROFILE"), "{shown}");
    }

    #[test]
    fn verbose_adds_the_chain() {
        let err: SdkError<StartExecutionError, ()> = SdkError::timeout_error("read timed out");
        let cli = CliError::aws("DescribeExecution", err);
        assert!(cli.report(false).contains("no answer from AWS"));
        let verbose = cli.report(true);
        assert!(verbose.contains("caused by:"), "{verbose}");
    }
}
