//! The fence teardown raises before it deletes a fanned-out run's staging.
//!
//! When a Distributed Map fails, Step Functions stops its child executions, but a Lambda
//! invocation a child had started goes on until it returns or times out (up to 900 s): a
//! restore child could still be staging objects after teardown emptied the staging, or a
//! promote child copying into `root/` after the run failed. So every range's child looks
//! for the fence (`<receipts>/runs/<run>/ranges/fence.json`) before it starts a write, at
//! most every [`CHECK_EVERY`], and stops with an error naming it once it is up; teardown
//! raises it, waits [`GRACE`] for writes a child had already begun, deletes, and lists
//! the staging again until it stays empty.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::objects::{get_json, put_json};
use crate::s3uri::S3Uri;
use crate::store::ReceiptStore;

/// How long a child may go on writing without looking at the fence again.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long teardown waits after raising the fence before it deletes: a child's next
/// look ([`CHECK_EVERY`]) and the writes it had in flight (a part of at most tens of MiB,
/// seconds on S3's network) end within it.
pub const GRACE: Duration = Duration::from_secs(12);

/// What the fence object says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raised {
    pub raised_at: DateTime<Utc>,
    /// The execution whose children it stops (a later execution of the run, resuming
    /// it, is not fenced); `None` stops every child of the run.
    pub execution_arn: Option<String>,
    /// Why (teardown's words).
    pub reason: String,
}

impl Raised {
    fn stops(&self, execution_arn: Option<&str>) -> bool {
        match (self.execution_arn.as_deref(), execution_arn) {
            (Some(fenced), Some(ours)) => fenced == ours,
            _ => true,
        }
    }
}

/// Where a run's fence is.
pub fn fence_uri(store: &ReceiptStore, run_id: &str) -> Result<S3Uri> {
    Ok(store.run_dir(run_id)?.join("ranges/fence.json")?)
}

/// Raises the fence at `uri` against `execution_arn`'s children.
pub async fn raise(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    execution_arn: Option<&str>,
    reason: &str,
) -> Result<Raised> {
    let raised = Raised {
        raised_at: Utc::now(),
        execution_arn: execution_arn.map(str::to_owned),
        reason: reason.to_owned(),
    };
    put_json(s3, uri, &raised).await?;
    Ok(raised)
}

/// A child's view of its run's fence: [`Fence::check`] looks at S3 at most every
/// [`CHECK_EVERY`]; clones share the last look.
#[derive(Clone, Debug)]
pub struct Fence {
    s3: aws_sdk_s3::Client,
    uri: S3Uri,
    /// The child's execution.
    execution_arn: Option<String>,
    last_look: Arc<Mutex<Option<Instant>>>,
}

impl Fence {
    pub fn new(s3: aws_sdk_s3::Client, uri: S3Uri, execution_arn: Option<String>) -> Self {
        Self {
            s3,
            uri,
            execution_arn,
            last_look: Arc::new(Mutex::new(None)),
        }
    }

    /// `Ok` while the fence is down; the error names the fence and why it went up.
    pub async fn check(&self) -> Result<()> {
        let mut last_look = self.last_look.lock().await;
        if last_look.is_some_and(|at| at.elapsed() < CHECK_EVERY) {
            return Ok(());
        }
        let raised: Option<Raised> = get_json(&self.s3, &self.uri).await?;
        *last_look = Some(Instant::now());
        match raised {
            Some(raised) if raised.stops(self.execution_arn.as_deref()) => Err(Error::new(
                ErrorKind::ServiceError,
                format!(
                    "the run was ended while this range was still running: teardown raised \
                 its fence {} at {} ({}); no further writes",
                    self.uri, raised.raised_at, raised.reason
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_stops_the_execution_it_names_or_every_one() {
        let raised = |arn: Option<&str>| Raised {
            raised_at: Utc::now(),
            execution_arn: arn.map(str::to_owned),
            reason: "test".into(),
        };
        assert!(raised(Some("arn:a")).stops(Some("arn:a")));
        assert!(!raised(Some("arn:a")).stops(Some("arn:b")));
        assert!(raised(None).stops(Some("arn:b")));
        assert!(raised(Some("arn:a")).stops(None));
    }
}
