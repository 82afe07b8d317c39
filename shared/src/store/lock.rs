//! The run lock (`<target>/locks/drill.lock`): one run at a time per target.
//!
//! Acquired with an S3 conditional write (`If-None-Match: *`), so two runs racing for it
//! cannot both win. An expired lock is taken over with `If-Match: <its ETag>`, so two runs
//! racing for a stale lock cannot both win either. Released only by its owner, again
//! conditional on the ETag it read.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::objects::{delete_if_match, get_bytes, put_json_if, Conditional, Precondition};
use crate::s3uri::S3Uri;

/// What the lock object holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub run_id: String,
    pub execution_arn: Option<String>,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The expired lock this run took over, when it did: a retried bringup of the same
    /// execution answers what its first attempt did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over: Option<Box<LockRecord>>,
}

impl LockRecord {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }
}

/// How an acquire succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free.
    Fresh,
    /// This run already held it from an earlier execution; its expiry was renewed. (A
    /// retried attempt of the execution that took it answers as that first attempt
    /// did: `Fresh` or `TakenOver`.)
    AlreadyOwned,
    /// Another run's lock had expired and was taken over.
    TakenOver { previous: LockRecord },
}

/// How a release ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    Released,
    /// No lock object: nothing to do (a re-run of teardown).
    NotHeld,
    /// The run holds the lock from an earlier execution; this one did not take it.
    KeptForRun,
    /// Another run owns the lock now (ours expired and was taken over); left alone.
    OwnedByOther {
        owner: String,
    },
}

/// Conditional writes can race with other writers; each race restarts the loop, bounded.
const MAX_ROUNDS: usize = 5;

#[derive(Clone, Debug)]
pub struct RunLock {
    s3: aws_sdk_s3::Client,
    uri: S3Uri,
}

impl RunLock {
    pub fn new(s3: aws_sdk_s3::Client, uri: S3Uri) -> Self {
        Self { s3, uri }
    }

    pub fn uri(&self) -> &S3Uri {
        &self.uri
    }

    /// Takes the lock for `run_id` for `ttl`, or fails with `LockHeld` naming the owner.
    pub async fn acquire(
        &self,
        run_id: &str,
        execution_arn: Option<&str>,
        ttl: Duration,
    ) -> Result<Acquired> {
        for _ in 0..MAX_ROUNDS {
            let now = Utc::now();
            let record = LockRecord {
                run_id: run_id.to_owned(),
                execution_arn: execution_arn.map(str::to_owned),
                acquired_at: now,
                expires_at: now + ttl,
                took_over: None,
            };
            match self.put(&record, Precondition::Absent).await? {
                Conditional::Written => {
                    info!(run_id, lock = %self.uri, expires_at = %record.expires_at, "run lock acquired");
                    return Ok(Acquired::Fresh);
                }
                Conditional::ConditionFailed => {}
            }
            let Some((current, etag)) = self.read().await? else {
                continue; // released between our write and our read: try again
            };
            if current.run_id == run_id {
                // A retried bringup, or a later execution continuing the run: the lock
                // is the run's; its expiry starts again from now, for this execution.
                let same_execution =
                    execution_arn.is_some() && current.execution_arn.as_deref() == execution_arn;
                let renewed = LockRecord {
                    acquired_at: current.acquired_at,
                    took_over: current.took_over.clone(),
                    ..record
                };
                match self.put(&renewed, Precondition::Matches(&etag)).await? {
                    Conditional::Written if same_execution => {
                        info!(run_id, lock = %self.uri, expires_at = %renewed.expires_at, "run lock taken by an earlier attempt of this execution: renewed");
                        return Ok(match current.took_over {
                            Some(previous) => Acquired::TakenOver {
                                previous: *previous,
                            },
                            None => Acquired::Fresh,
                        });
                    }
                    Conditional::Written => {
                        info!(run_id, lock = %self.uri, expires_at = %renewed.expires_at, "run lock already held by this run: renewed");
                        return Ok(Acquired::AlreadyOwned);
                    }
                    Conditional::ConditionFailed => continue,
                }
            }
            if !current.is_expired(now) {
                return Err(Error::new(
                    ErrorKind::LockHeld,
                    format!(
                        "{} is held by run {} (execution {}) until {}",
                        self.uri,
                        current.run_id,
                        current.execution_arn.as_deref().unwrap_or("unknown"),
                        current.expires_at.to_rfc3339()
                    ),
                ));
            }
            let previous = LockRecord {
                took_over: None,
                ..current
            };
            let record = LockRecord {
                took_over: Some(Box::new(previous.clone())),
                ..record
            };
            match self.put(&record, Precondition::Matches(&etag)).await? {
                Conditional::Written => {
                    warn!(
                        run_id,
                        lock = %self.uri,
                        stale_owner = %previous.run_id,
                        stale_since = %previous.expires_at,
                        "took over an expired run lock"
                    );
                    return Ok(Acquired::TakenOver { previous });
                }
                Conditional::ConditionFailed => continue, // someone else took it over first
            }
        }
        Err(Error::retryable(format!(
            "{}: the lock kept changing under us for {MAX_ROUNDS} rounds",
            self.uri
        )))
    }

    /// Releases the lock if `run_id` owns it.
    pub async fn release(&self, run_id: &str) -> Result<Released> {
        self.release_if(run_id, None).await
    }

    /// Releases the lock only if `run_id` took or renewed it in the execution
    /// `execution_arn`: what is left to undo after a bringup that failed, which must not
    /// release a lock an earlier execution of the run holds.
    pub async fn release_taken_by(&self, run_id: &str, execution_arn: &str) -> Result<Released> {
        self.release_if(run_id, Some(execution_arn)).await
    }

    async fn release_if(&self, run_id: &str, execution_arn: Option<&str>) -> Result<Released> {
        for _ in 0..MAX_ROUNDS {
            let Some((current, etag)) = self.read().await? else {
                return Ok(Released::NotHeld);
            };
            if current.run_id == run_id
                && execution_arn.is_some_and(|arn| current.execution_arn.as_deref() != Some(arn))
            {
                info!(run_id, lock = %self.uri, holder = ?current.execution_arn, "the run's lock is an earlier execution's: kept");
                return Ok(Released::KeptForRun);
            }
            if current.run_id != run_id {
                warn!(run_id, owner = %current.run_id, lock = %self.uri, "not releasing a lock another run owns");
                return Ok(Released::OwnedByOther {
                    owner: current.run_id,
                });
            }
            match delete_if_match(&self.s3, &self.uri, &etag).await? {
                Conditional::Written => {
                    info!(run_id, lock = %self.uri, "run lock released");
                    return Ok(Released::Released);
                }
                Conditional::ConditionFailed => continue,
            }
        }
        Err(Error::retryable(format!(
            "{}: the lock kept changing under us for {MAX_ROUNDS} rounds",
            self.uri
        )))
    }

    /// The current lock and its ETag, if any.
    pub async fn read(&self) -> Result<Option<(LockRecord, String)>> {
        let Some((bytes, etag)) = get_bytes(&self.s3, &self.uri).await? else {
            return Ok(None);
        };
        let record: LockRecord = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(format!(
                "{} is not a drpilot lock ({e}); remove it by hand if no run is active",
                self.uri
            ))
        })?;
        Ok(Some((record, etag)))
    }

    /// Checks, right before a run writes production, that it still holds the lock and
    /// that the lock has not expired: a run that outlived its lock (its TTL passed and
    /// another run took it over, or it is about to) must not write over another run's
    /// work. `LockHeld` otherwise.
    pub async fn ensure_held(&self, run_id: &str, now: DateTime<Utc>) -> Result<()> {
        let held = self.read().await?;
        match held {
            Some((lock, _)) if lock.run_id == run_id && lock.expires_at > now => Ok(()),
            Some((lock, _)) if lock.run_id == run_id => Err(Error::new(
                ErrorKind::LockHeld,
                format!(
                    "run {run_id}: its lock {} expired at {}; resume the run (drpilot resume) to renew it before it writes production",
                    self.uri,
                    lock.expires_at.to_rfc3339()
                ),
            )),
            Some((lock, _)) => Err(Error::new(
                ErrorKind::LockHeld,
                format!(
                    "run {run_id} no longer holds the lock {}: run {} took it (its lock expired); it writes nothing",
                    self.uri, lock.run_id
                ),
            )),
            None => Err(Error::new(
                ErrorKind::LockHeld,
                format!(
                    "run {run_id} no longer holds the lock {}: it was released; it writes nothing",
                    self.uri
                ),
            )),
        }
    }

    async fn put(
        &self,
        record: &LockRecord,
        precondition: Precondition<'_>,
    ) -> Result<Conditional> {
        put_json_if(&self.s3, &self.uri, record, Some(precondition)).await
    }
}
