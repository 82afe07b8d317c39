//! Sorted streams of objects and the merge-join of two of them: the engine under
//! validate (manifest vs staging), parity-report (any two prefixes) and promote (staging
//! vs root). Both inputs are in S3's listing order (UTF-8 byte order of the key below
//! each prefix), so one pass with one item of look-ahead per side compares them, in
//! memory that does not grow with the number of objects.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::plan::KeyRange;
use crate::s3uri::S3Uri;

/// How many listed objects may wait between the lister and the merge.
const LIST_BUFFER: usize = 4096;

/// One listed object; `key` is relative to the listed prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// As S3 reports it, without quotes. Equal ETags mean equal content; different
    /// ones do not mean different content (multipart uploads, SSE-KMS).
    pub etag: String,
    /// When S3 says the object was last written (failback tells changes by it).
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Something with a key in a sorted stream.
pub trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for ObjectInfo {
    fn key(&self) -> &str {
        &self.key
    }
}

/// A sorted stream: items arrive in key order on a bounded channel.
pub type Sorted<T> = mpsc::Receiver<Result<T>>;

/// Lists `prefix` (as a prefix: `root/a` never yields `root/ab/...`) into a sorted
/// stream, skipping keys whose relative part starts with one of `exclude`. The listing
/// runs in its own task, so two listings proceed concurrently.
pub fn list_sorted(
    s3: aws_sdk_s3::Client,
    prefix: &S3Uri,
    exclude: Vec<String>,
) -> (Sorted<ObjectInfo>, JoinHandle<()>) {
    list_sorted_in(s3, prefix, exclude, KeyRange::all())
}

/// [`list_sorted`] of the relative keys in `range` only: the listing starts after the
/// range's lower bound (S3's `StartAfter`) and stops past its upper bound.
pub fn list_sorted_in(
    s3: aws_sdk_s3::Client,
    prefix: &S3Uri,
    exclude: Vec<String>,
    range: KeyRange,
) -> (Sorted<ObjectInfo>, JoinHandle<()>) {
    let prefix = prefix.as_prefix();
    let (tx, rx) = mpsc::channel(LIST_BUFFER);
    let task = tokio::spawn(async move {
        let start_after = range
            .after
            .as_ref()
            .map(|after| format!("{}{after}", prefix.key));
        let mut pages = s3
            .list_objects_v2()
            .bucket(&prefix.bucket)
            .prefix(&prefix.key)
            .set_start_after(start_after)
            .max_keys(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx
                        .send(Err(Error::from_sdk(&format!("ListObjectsV2 {prefix}"), e)))
                        .await;
                    return;
                }
            };
            for object in page.contents() {
                let Some(relative) = object.key().and_then(|k| prefix.strip(k)) else {
                    continue;
                };
                if range.past(relative) {
                    return; // the rest of the listing is past the range
                }
                if relative.is_empty()
                    || range.before(relative)
                    || exclude.iter().any(|e| relative.starts_with(e.as_str()))
                {
                    continue;
                }
                let info = ObjectInfo {
                    key: relative.to_owned(),
                    size: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                    etag: object
                        .e_tag()
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_owned(),
                    last_modified: object.last_modified().and_then(crate::receipt::utc),
                };
                if tx.send(Ok(info)).await.is_err() {
                    return; // the merge stopped early
                }
            }
        }
    });
    (rx, task)
}

/// The items of a sorted stream whose keys are in `range`, as a sorted stream: those
/// before it are dropped, and the stream ends at the first past it.
pub fn within<T: Keyed + Send + 'static>(
    mut sorted: Sorted<T>,
    range: KeyRange,
) -> (Sorted<T>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(LIST_BUFFER);
    let task = tokio::spawn(async move {
        while let Some(item) = sorted.recv().await {
            let keep = match &item {
                Ok(item) if range.past(item.key()) => return,
                Ok(item) => range.contains(item.key()),
                Err(_) => true,
            };
            if keep && tx.send(item).await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// One step of a merge-join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Joined<L, R> {
    OnlyLeft(L),
    OnlyRight(R),
    Both(L, R),
}

/// Merge-joins two sorted streams by key. Each side must be strictly increasing; an
/// out-of-order or repeated key is an error (it would make the comparison wrong).
pub struct MergeJoin<L, R> {
    left: Sorted<L>,
    right: Sorted<R>,
    next_left: Option<L>,
    next_right: Option<R>,
    last_left: Option<String>,
    last_right: Option<String>,
    primed: bool,
}

impl<L: Keyed, R: Keyed> MergeJoin<L, R> {
    pub fn new(left: Sorted<L>, right: Sorted<R>) -> Self {
        Self {
            left,
            right,
            next_left: None,
            next_right: None,
            last_left: None,
            last_right: None,
            primed: false,
        }
    }

    pub async fn next(&mut self) -> Result<Option<Joined<L, R>>> {
        if !self.primed {
            self.primed = true;
            self.next_left = pull(&mut self.left, &mut self.last_left, "left").await?;
            self.next_right = pull(&mut self.right, &mut self.last_right, "right").await?;
        }
        let joined = match (self.next_left.take(), self.next_right.take()) {
            (None, None) => return Ok(None),
            (Some(l), None) => {
                self.next_left = pull(&mut self.left, &mut self.last_left, "left").await?;
                Joined::OnlyLeft(l)
            }
            (None, Some(r)) => {
                self.next_right = pull(&mut self.right, &mut self.last_right, "right").await?;
                Joined::OnlyRight(r)
            }
            (Some(l), Some(r)) => match l.key().as_bytes().cmp(r.key().as_bytes()) {
                std::cmp::Ordering::Less => {
                    self.next_right = Some(r);
                    self.next_left = pull(&mut self.left, &mut self.last_left, "left").await?;
                    Joined::OnlyLeft(l)
                }
                std::cmp::Ordering::Greater => {
                    self.next_left = Some(l);
                    self.next_right = pull(&mut self.right, &mut self.last_right, "right").await?;
                    Joined::OnlyRight(r)
                }
                std::cmp::Ordering::Equal => {
                    self.next_left = pull(&mut self.left, &mut self.last_left, "left").await?;
                    self.next_right = pull(&mut self.right, &mut self.last_right, "right").await?;
                    Joined::Both(l, r)
                }
            },
        };
        Ok(Some(joined))
    }
}

async fn pull<T: Keyed>(
    rx: &mut Sorted<T>,
    last: &mut Option<String>,
    side: &str,
) -> Result<Option<T>> {
    let Some(item) = rx.recv().await.transpose()? else {
        return Ok(None);
    };
    if let Some(previous) = last.as_deref() {
        if previous.as_bytes() >= item.key().as_bytes() {
            return Err(Error::integrity(format!(
                "{side} stream is not strictly sorted: {:?} after {previous:?}",
                item.key()
            )));
        }
    }
    *last = Some(item.key().to_owned());
    Ok(Some(item))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(keys: &[&str]) -> Sorted<ObjectInfo> {
        let (tx, rx) = mpsc::channel(keys.len().max(1));
        for k in keys {
            tx.try_send(Ok(ObjectInfo {
                key: (*k).to_owned(),
                size: 0,
                etag: String::new(),
                last_modified: None,
            }))
            .expect("capacity");
        }
        rx
    }

    async fn collect(l: &[&str], r: &[&str]) -> Result<Vec<String>> {
        let mut merge = MergeJoin::new(sorted(l), sorted(r));
        let mut out = Vec::new();
        while let Some(j) = merge.next().await? {
            out.push(match j {
                Joined::OnlyLeft(l) => format!("<{}", l.key),
                Joined::OnlyRight(r) => format!(">{}", r.key),
                Joined::Both(l, _) => format!("={}", l.key),
            });
        }
        Ok(out)
    }

    #[tokio::test]
    async fn joins_in_byte_order() {
        let out = collect(&["a", "b/x", "c", "é"], &["b/x", "b/y", "c", "z"])
            .await
            .unwrap();
        assert_eq!(out, ["<a", "=b/x", ">b/y", "=c", ">z", "<é"]);
        assert!(collect(&[], &[]).await.unwrap().is_empty());
        assert_eq!(collect(&["a"], &[]).await.unwrap(), ["<a"]);
    }

    #[tokio::test]
    async fn refuses_unsorted_input() {
        assert!(collect(&["b", "a"], &[]).await.is_err());
        assert!(collect(&[], &["a", "a"]).await.is_err());
    }
}
