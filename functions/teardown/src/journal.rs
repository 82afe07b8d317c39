//! Teardown's journal of the run's cleanup, beside its receipts: how many staged objects
//! its passes deleted and whether it released the run's lock. A teardown cut off after a
//! delete (a crash, a timeout, a lost answer) and run again — as the state machine's Retry
//! does — reads it, so its receipt says what the whole teardown did, not what its last
//! attempt found left to do.
//!
//! Each page's keys are written down before the page's DeleteObjects goes (one small PUT
//! per 1,000 deletes): a later attempt counts the page's keys that are gone, so a crash
//! between a delete and the next write neither loses nor doubles a count.

use drpilot_shared::budget::DeleteLog;
use drpilot_shared::objects::{get_json, key_pages, put_json};
use drpilot_shared::{Error, Result, S3Uri};
use serde::{Deserialize, Serialize};

/// What the journal holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tally {
    /// Staged objects deleted before `page`.
    deleted: u64,
    /// The page being deleted when this was written: its keys that are gone when the
    /// journal is next read were deleted by it.
    page: Option<Page>,
    /// The run's lock was held by the run when teardown went to release it: if it is
    /// gone now, teardown released it.
    lock_releasing: bool,
}

/// One listing page of the staging, by its first and last key (the listing is in key
/// order, so its keys are exactly the staging's keys between the two).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    first: String,
    last: String,
    keys: u64,
}

/// The journal of one run's teardown, read and settled.
pub struct Journal {
    s3: aws_sdk_s3::Client,
    uri: S3Uri,
    tally: Tally,
    /// An earlier attempt went to release the run's lock (read when the journal was).
    lock_releasing_before: bool,
}

impl Journal {
    /// Reads the journal at `uri` (none yet: nothing deleted) and settles the page an
    /// earlier attempt was deleting, by listing what is left of it under `staging`.
    pub async fn open(s3: &aws_sdk_s3::Client, uri: S3Uri, staging: &S3Uri) -> Result<Self> {
        let mut tally: Tally = get_json(s3, &uri).await?.unwrap_or_default();
        if let Some(page) = tally.page.take() {
            let left = keys_between(s3, staging, &page).await?;
            tally.deleted += page.keys.saturating_sub(left);
        }
        Ok(Self {
            s3: s3.clone(),
            uri,
            lock_releasing_before: tally.lock_releasing,
            tally,
        })
    }

    /// Staged objects every attempt of this teardown deleted.
    pub fn deleted(&self) -> u64 {
        self.tally.deleted
    }

    /// An earlier attempt found the run's lock held and went to release it.
    pub fn lock_released_before(&self) -> bool {
        self.lock_releasing_before
    }

    /// Written before teardown deletes the run's lock, which it holds.
    pub async fn releasing_lock(&mut self) -> Result<()> {
        self.tally.lock_releasing = true;
        put_json(&self.s3, &self.uri, &self.tally).await
    }
}

impl DeleteLog for Journal {
    async fn before_page(&mut self, keys: &[String]) -> Result<()> {
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            return Ok(());
        };
        self.tally.page = Some(Page {
            first: first.clone(),
            last: last.clone(),
            keys: keys.len() as u64,
        });
        put_json(&self.s3, &self.uri, &self.tally).await
    }

    fn after_page(&mut self, deleted: u64) {
        self.tally.page = None;
        self.tally.deleted += deleted;
    }
}

/// How many of `page`'s keys are still under `staging`.
async fn keys_between(s3: &aws_sdk_s3::Client, staging: &S3Uri, page: &Page) -> Result<u64> {
    let mut left = 0;
    let mut pages = key_pages(s3, staging);
    while let Some(keys) = pages.next().await {
        let keys = keys.map_err(|e| Error::from_sdk(&format!("ListObjectsV2 {staging}"), e))?;
        for key in &keys {
            if key > &page.last {
                return Ok(left);
            }
            if key >= &page.first {
                left += 1;
            }
        }
    }
    Ok(left)
}
