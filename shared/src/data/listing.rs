//! Sorted streams of objects and the merge-join of two of them: the engine under
//! validate (manifest vs staging), parity-report (any two prefixes) and promote (staging
//! vs root). Both inputs are in S3's listing order (UTF-8 byte order of the key below
//! each prefix), so one pass with one item of look-ahead per side compares them, in
//! memory that does not grow with the number of objects.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::s3uri::KeyRange;
use crate::s3uri::S3Uri;

/// How many listed objects may wait between a listing and the merge reading it: one
/// ListObjectsV2 page.
const LIST_BUFFER: usize = 256;

/// How many of a partition's listed objects may wait in its channel, beside the page
/// its lister holds (at most 1,000 entries, handed on as the reader takes them): the
/// partitions in flight are what a listing's memory is, so each holds about one page.
const PARTITION_BUFFER: usize = 256;

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

/// [`list_sorted`] of the relative keys in `range` only, listed in parallel: the prefix
/// is split by its first level of "directories" (ListObjectsV2 with a `/` delimiter,
/// descending while there is just one), each partition is listed by its own task (at most
/// [`PARTITIONS_IN_FLIGHT`] at once, each a bounded channel ahead), and the partitions
/// are handed on in key order, so the stream is exactly the flat listing's and memory
/// stays bounded by the partitions in flight, not the objects. The listing starts after
/// the range's lower bound (S3's `StartAfter`) and stops past its upper bound.
pub fn list_sorted_in(
    s3: aws_sdk_s3::Client,
    prefix: &S3Uri,
    exclude: Vec<String>,
    range: KeyRange,
) -> (Sorted<ObjectInfo>, JoinHandle<()>) {
    let base = prefix.as_prefix();
    let (tx, rx) = mpsc::channel(LIST_BUFFER);
    let task = tokio::spawn(async move {
        let listing = Listing {
            s3,
            base,
            exclude,
            range,
        };
        if let Err(err) = listing.partitioned(&tx).await {
            let _ = tx.send(Err(err)).await;
        }
    });
    (rx, task)
}

/// Partitions listed at once by [`list_sorted_in`].
pub const PARTITIONS_IN_FLIGHT: usize = 4;

/// How deep [`list_sorted_in`] descends through single directories looking for
/// partitions.
const PARTITION_DEPTH: usize = 4;

/// One listing: the prefix keys are relative to, what to leave out, and the key range.
#[derive(Clone)]
struct Listing {
    s3: aws_sdk_s3::Client,
    base: S3Uri,
    exclude: Vec<String>,
    range: KeyRange,
}

/// A piece of the listing, in key order: an object beside the partitions, or a
/// partition's own sorted stream.
enum Piece {
    Object(ObjectInfo),
    Partition(Sorted<ObjectInfo>, JoinHandle<()>),
}

impl Listing {
    /// Finds the partitions and streams them in order into `tx`.
    async fn partitioned(&self, tx: &mpsc::Sender<Result<ObjectInfo>>) -> Result<()> {
        // The level to split: the first below `base` with more than one entry.
        let mut level = self.base.key.clone();
        for _ in 0..PARTITION_DEPTH {
            match self.single_directory(&level).await? {
                Some(only) => level = only,
                None => break,
            }
        }
        let (pieces_tx, mut pieces_rx) = mpsc::channel::<Result<Piece>>(PARTITIONS_IN_FLIGHT);
        let splitter = {
            let listing = self.clone();
            tokio::spawn(async move { listing.split(level, pieces_tx).await })
        };
        while let Some(piece) = pieces_rx.recv().await {
            match piece? {
                Piece::Object(info) => {
                    if tx.send(Ok(info)).await.is_err() {
                        break;
                    }
                }
                Piece::Partition(mut objects, task) => {
                    while let Some(item) = objects.recv().await {
                        if tx.send(item).await.is_err() {
                            task.abort();
                            splitter.abort();
                            return Ok(());
                        }
                    }
                }
            }
        }
        splitter.await.map_err(Error::from)?;
        Ok(())
    }

    /// The one "directory" `level` holds when it holds nothing else (no object, no
    /// second directory); `None` otherwise. (The whole level, not the range: a
    /// delimited listing's `StartAfter` also skips the directory the bound lies in.)
    async fn single_directory(&self, level: &str) -> Result<Option<String>> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(&self.base.bucket)
            .prefix(level)
            .delimiter("/")
            .max_keys(2)
            .send()
            .await
            .map_err(|e| {
                Error::from_sdk(
                    &format!("ListObjectsV2 s3://{}/{level}", self.base.bucket),
                    e,
                )
            })?;
        let dirs = out.common_prefixes();
        if out.contents().is_empty() && dirs.len() == 1 && !out.is_truncated().unwrap_or(false) {
            return Ok(dirs[0].prefix().map(str::to_owned));
        }
        Ok(None)
    }

    /// The directory of `level` the range's lower bound lies in, if it lies deeper.
    fn bound_directory(&self, level: &str) -> Option<String> {
        let after = format!("{}{}", self.base.key, self.range.after.as_deref()?);
        let below = after.strip_prefix(level)?;
        let (first, _) = below.split_once('/')?;
        Some(format!("{level}{first}/"))
    }

    /// `StartAfter` for a listing of `level`: the range's lower bound when it lies
    /// within `level`.
    fn start_after(&self, level: &str) -> Option<String> {
        let after = format!("{}{}", self.base.key, self.range.after.as_deref()?);
        (after.as_str() > level).then_some(after)
    }

    /// Walks `level` with a `/` delimiter and sends its pieces in key order: each object
    /// at the level as it is, each directory as a partition whose listing starts now.
    async fn split(&self, level: String, pieces: mpsc::Sender<Result<Piece>>) {
        // A lower bound inside a directory of this level: a delimited listing starting
        // after it leaves that directory out (its name sorts before the bound), so its
        // rest is the first partition, and the directory is not listed twice.
        let bound_directory = self.bound_directory(&level);
        if let Some(directory) = &bound_directory {
            let (objects, task) = self.list_flat(directory.clone());
            if pieces
                .send(Ok(Piece::Partition(objects, task)))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.base.bucket)
            .prefix(&level)
            .delimiter("/")
            .set_start_after(self.start_after(&level))
            .max_keys(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    let what = format!("ListObjectsV2 s3://{}/{level}", self.base.bucket);
                    let _ = pieces.send(Err(Error::from_sdk(&what, e))).await;
                    return;
                }
            };
            // A page's objects and directories, merged in key order.
            let mut entries: Vec<(String, Option<&aws_sdk_s3::types::Object>)> = page
                .contents()
                .iter()
                .filter_map(|o| Some((o.key()?.to_owned(), Some(o))))
                .chain(
                    page.common_prefixes()
                        .iter()
                        .filter_map(|p| Some((p.prefix()?.to_owned(), None))),
                )
                .collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (key, object) in entries {
                if object.is_none() && bound_directory.as_deref() == Some(key.as_str()) {
                    continue;
                }
                let Some(relative) = self.base.strip(&key) else {
                    continue;
                };
                if self.range.past(relative) {
                    return; // everything after is past the range
                }
                let piece = match object {
                    Some(object) => match self.info(object) {
                        Some(info) => Piece::Object(info),
                        None => continue,
                    },
                    None => {
                        let (objects, task) = self.list_flat(key);
                        Piece::Partition(objects, task)
                    }
                };
                if pieces.send(Ok(piece)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The listed object as the stream carries it, unless the range or `exclude` leave
    /// it out.
    fn info(&self, object: &aws_sdk_s3::types::Object) -> Option<ObjectInfo> {
        let relative = object.key().and_then(|k| self.base.strip(k))?;
        if relative.is_empty()
            || !self.range.contains(relative)
            || self
                .exclude
                .iter()
                .any(|e| relative.starts_with(e.as_str()))
        {
            return None;
        }
        Some(ObjectInfo {
            key: relative.to_owned(),
            size: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
            etag: object
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned(),
            last_modified: object.last_modified().and_then(crate::time::utc),
        })
    }

    /// Every object under `partition` (a key prefix below `base`), flat, in its own task.
    fn list_flat(&self, partition: String) -> (Sorted<ObjectInfo>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(PARTITION_BUFFER);
        let listing = self.clone();
        let task = tokio::spawn(async move {
            let mut pages = listing
                .s3
                .list_objects_v2()
                .bucket(&listing.base.bucket)
                .prefix(&partition)
                .set_start_after(listing.start_after(&partition))
                .max_keys(1000)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let what =
                            format!("ListObjectsV2 s3://{}/{partition}", listing.base.bucket);
                        let _ = tx.send(Err(Error::from_sdk(&what, e))).await;
                        return;
                    }
                };
                // The page becomes its (smaller) entries before any waits on the
                // reader: a lister holds one page's entries, not the SDK's page too.
                let contents = page.contents();
                let past_at = contents.iter().position(|object| {
                    object
                        .key()
                        .and_then(|k| listing.base.strip(k))
                        .is_some_and(|r| listing.range.past(r))
                });
                let infos: Vec<ObjectInfo> = contents[..past_at.unwrap_or(contents.len())]
                    .iter()
                    .filter_map(|object| listing.info(object))
                    .collect();
                drop(page);
                for info in infos {
                    if tx.send(Ok(info)).await.is_err() {
                        return; // the merge stopped early
                    }
                }
                if past_at.is_some() {
                    return;
                }
            }
        });
        (rx, task)
    }
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
