//! The three-way comparison under divergence and copy-back: the baseline (the manifests
//! of the backup the DR run promoted: what both sites held when the DR site took over),
//! the primary's `root/` and the DR site's `root/`, merge-joined by key in one pass over
//! three sorted streams, so memory stays flat however many objects there are.
//!
//! A site changed a key when its object differs from the baseline: written (another
//! size, or content whose SHA-256 is not the baseline's), added, or deleted. The listing
//! decides most keys without a request: an object last written before the baseline was
//! taken on the primary (the backup's `created_at`), or before the promotion finished on
//! the DR site, is the baseline's (the promotion's parity re-check proved the DR copy).
//! Only a key written since, with the baseline's size, has its content looked at: the
//! SHA-256 stored with it, else the object read through.

use chrono::{DateTime, Utc};
use drpilot_shared::backup;
use drpilot_shared::failback::DivergenceCounts;
use drpilot_shared::listing::{list_sorted, Joined, Keyed, MergeJoin, ObjectInfo, Sorted};
use drpilot_shared::manifest::{self, ManifestEntry};
use drpilot_shared::objects::{sha256_by_reading, stored_sha256};
use drpilot_shared::parity::ParityCounts;
use drpilot_shared::{Error, Result, S3Uri};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

/// Content lookups in flight at once.
const LOOKUP_CONCURRENCY: usize = 32;
/// Joined steps that may wait between one merge and the next.
const JOIN_BUFFER: usize = 4096;

/// Where the three sides are.
pub struct Sides<'a> {
    /// Lists and reads the DR site.
    pub dr_s3: &'a aws_sdk_s3::Client,
    /// Lists and reads the primary (a client in its region).
    pub primary_s3: &'a aws_sdk_s3::Client,
    pub backup: &'a S3Uri,
    pub dr_root: &'a S3Uri,
    pub primary_root: &'a S3Uri,
    /// Objects on the primary last written before this are the baseline's.
    pub baseline_taken_at: DateTime<Utc>,
    /// Objects on the DR site last written before this are the promotion's.
    pub promoted_at: DateTime<Utc>,
}

/// What a key is, comparing both sites with the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Unchanged,
    DrChanged,
    PrimaryChanged,
    /// The primary lost an object the DR site still holds as the baseline's (a site
    /// that burned): restored, never kept missing.
    PrimaryMissing,
    BothSame,
    Divergent,
    DrDrift,
}

/// What copy-back does about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    /// Copy the DR site's object over the primary's.
    Copy,
    /// Delete the primary's object (the DR site deleted it).
    Delete,
    /// Divergent and not to be discarded: left alone, and the run refused.
    Refuse,
}

/// One side's object, as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<DateTime<Utc>>,
}

impl From<&ObjectInfo> for Seen {
    fn from(o: &ObjectInfo) -> Self {
        Self {
            size: o.size,
            etag: o.etag.clone(),
            last_modified: o.last_modified,
        }
    }
}

/// One key's verdict: a line of the divergence report (the plan).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub key: String,
    pub class: Class,
    pub action: Action,
    /// The DR object's size, for the copy.
    #[serde(skip)]
    pub dr_size: Option<u64>,
    pub baseline: Option<ManifestEntry>,
    pub primary: Option<Seen>,
    pub dr: Option<Seen>,
}

/// The baseline entry and the primary's object of one key.
struct BaselineAndPrimary {
    key: String,
    baseline: Option<ManifestEntry>,
    primary: Option<ObjectInfo>,
}

impl Keyed for BaselineAndPrimary {
    fn key(&self) -> &str {
        &self.key
    }
}

/// The three streams' merge: every key of any side, in order.
struct Triple {
    key: String,
    baseline: Option<ManifestEntry>,
    primary: Option<ObjectInfo>,
    dr: Option<ObjectInfo>,
}

/// The background tasks of a comparison; aborted when it is dropped.
pub struct Comparison {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    manifests: Option<manifest::ManifestTasks>,
}

impl Comparison {
    /// Ends the comparison, returning an error of the manifest sorter the stream did not
    /// already carry.
    pub async fn finish(mut self) -> Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        match self.manifests.take() {
            Some(m) => m.finish().await,
            None => Ok(()),
        }
    }
}

impl Drop for Comparison {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every key of the three sides with its verdict, in key order (content lookups run
/// `LOOKUP_CONCURRENCY` at once, verdicts still come in order). `discard` turns a
/// divergent key's action from `Refuse` into the DR site's version.
pub async fn compare<'s>(
    sides: &'s Sides<'s>,
    discard: bool,
) -> Result<(impl Stream<Item = Result<Verdict>> + 's, Comparison)> {
    let (baseline, manifests) = backup::sorted_entries(sides.dr_s3, sides.backup).await?;
    let (primary, primary_lister) =
        list_sorted(sides.primary_s3.clone(), sides.primary_root, vec![]);
    let (dr, dr_lister) = list_sorted(sides.dr_s3.clone(), sides.dr_root, vec![]);
    let (baseline_and_primary, joiner) = spawn_join(baseline, primary, |joined| match joined {
        Joined::OnlyLeft(b) => BaselineAndPrimary {
            key: b.key.clone(),
            baseline: Some(b),
            primary: None,
        },
        Joined::OnlyRight(p) => BaselineAndPrimary {
            key: p.key.clone(),
            baseline: None,
            primary: Some(p),
        },
        Joined::Both(b, p) => BaselineAndPrimary {
            key: b.key.clone(),
            baseline: Some(b),
            primary: Some(p),
        },
    });
    let (mut triple_rx, merger) = spawn_join(baseline_and_primary, dr, |joined| match joined {
        Joined::OnlyLeft(bp) => Triple {
            key: bp.key,
            baseline: bp.baseline,
            primary: bp.primary,
            dr: None,
        },
        Joined::OnlyRight(d) => Triple {
            key: d.key.clone(),
            baseline: None,
            primary: None,
            dr: Some(d),
        },
        Joined::Both(bp, d) => Triple {
            key: bp.key,
            baseline: bp.baseline,
            primary: bp.primary,
            dr: Some(d),
        },
    });
    let triples = futures::stream::poll_fn(move |cx| triple_rx.poll_recv(cx));
    let verdicts = triples
        .map(move |triple| async move { judge(sides, triple?, discard).await })
        .buffered(LOOKUP_CONCURRENCY);
    let comparison = Comparison {
        tasks: vec![primary_lister, dr_lister, joiner, merger],
        manifests: Some(manifests),
    };
    Ok((verdicts, comparison))
}

/// Merge-joins two sorted streams in a task of its own into a sorted stream of `joined`
/// steps (an error ends it), so a third stream can be joined with the result.
fn spawn_join<L, R, T>(
    left: Sorted<L>,
    right: Sorted<R>,
    joined: impl Fn(Joined<L, R>) -> T + Send + 'static,
) -> (Sorted<T>, tokio::task::JoinHandle<()>)
where
    L: Keyed + Send + 'static,
    R: Keyed + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel(JOIN_BUFFER);
    let task = tokio::spawn(async move {
        let mut merge = MergeJoin::new(left, right);
        loop {
            let next = match merge.next().await {
                Ok(Some(step)) => Ok(joined(step)),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let failed = next.is_err();
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, task)
}

/// How one site's object stands against the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Unchanged,
    Changed,
    /// DR only: in `root/` from before the promotion, in no manifest.
    Drift,
    /// Primary only: the baseline's object is gone.
    Missing,
}

async fn judge(sides: &Sides<'_>, t: Triple, discard: bool) -> Result<Verdict> {
    let Triple {
        key,
        baseline,
        primary,
        dr,
    } = t;
    let class = classify(
        sides,
        &key,
        baseline.as_ref(),
        primary.as_ref(),
        dr.as_ref(),
    )
    .await?;
    let action = match class {
        Class::DrChanged | Class::PrimaryMissing => dr_version(dr.is_some()),
        Class::Divergent if discard => dr_version(dr.is_some()),
        Class::Divergent => Action::Refuse,
        _ => Action::None,
    };
    Ok(Verdict {
        key,
        class,
        action,
        dr_size: dr.as_ref().map(|d| d.size),
        baseline,
        primary: primary.as_ref().map(Seen::from),
        dr: dr.as_ref().map(Seen::from),
    })
}

/// Making the primary hold the DR site's version: a copy, or a delete when the DR site
/// has none.
pub(crate) fn dr_version(dr_has_it: bool) -> Action {
    if dr_has_it {
        Action::Copy
    } else {
        Action::Delete
    }
}

async fn classify(
    sides: &Sides<'_>,
    key: &str,
    baseline: Option<&ManifestEntry>,
    primary: Option<&ObjectInfo>,
    dr: Option<&ObjectInfo>,
) -> Result<Class> {
    // The same object on both sites (a key copied back already, or never touched):
    // nothing to do whatever it is; which of the two it is, the DR side's age says.
    if let (Some(p), Some(d)) = (primary, dr) {
        if p.size == d.size && p.etag == d.etag && !p.etag.is_empty() {
            let dr_side = side(
                sides.dr_s3,
                sides.dr_root,
                d,
                baseline,
                sides.promoted_at,
                true,
            )
            .await?;
            return Ok(match dr_side {
                Side::Unchanged => Class::Unchanged,
                Side::Drift | Side::Changed | Side::Missing => Class::BothSame,
            });
        }
    }
    let primary_side = match primary {
        // Gone from the primary: a loss to repair, not a write to keep.
        None if baseline.is_some() => Side::Missing,
        None => Side::Unchanged, // only the DR site has the key
        Some(p) => {
            side(
                sides.primary_s3,
                sides.primary_root,
                p,
                baseline,
                sides.baseline_taken_at,
                false,
            )
            .await?
        }
    };
    let dr_side = match dr {
        None if baseline.is_some() => Side::Changed,
        None => Side::Unchanged,
        Some(d) => {
            side(
                sides.dr_s3,
                sides.dr_root,
                d,
                baseline,
                sides.promoted_at,
                true,
            )
            .await?
        }
    };
    Ok(match (primary_side, dr_side) {
        (Side::Missing, Side::Unchanged) => Class::PrimaryMissing,
        // Deleted on both sites, or gone from the primary and rewritten on the DR site.
        (Side::Missing, _) if dr.is_none() => Class::BothSame,
        (Side::Missing, _) => Class::DrChanged,
        (Side::Unchanged, Side::Unchanged) => Class::Unchanged,
        (Side::Unchanged, Side::Drift) => Class::DrDrift,
        (Side::Unchanged, Side::Changed) => Class::DrChanged,
        (Side::Changed, Side::Unchanged | Side::Drift) => Class::PrimaryChanged,
        (_, Side::Missing) => unreachable_side(key, "the DR side was judged missing")?,
        (Side::Changed, Side::Changed) => {
            if same_content(sides, key, primary, dr).await? {
                Class::BothSame
            } else {
                Class::Divergent
            }
        }
        (Side::Drift, _) => unreachable_side(key, "the primary side was judged drift")?,
    })
}

fn unreachable_side(key: &str, what: &str) -> Result<Class> {
    Err(Error::internal(format!(
        "{key}: {what}, which cannot happen"
    )))
}

/// One site's object against the baseline. `before` is when the site last held the
/// baseline for certain; `dr` marks the DR site, whose objects outside the baseline and
/// older than the promotion are drift rather than changes.
async fn side(
    s3: &aws_sdk_s3::Client,
    root: &S3Uri,
    object: &ObjectInfo,
    baseline: Option<&ManifestEntry>,
    before: DateTime<Utc>,
    dr: bool,
) -> Result<Side> {
    let older = written_before(object, before);
    let Some(b) = baseline else {
        return Ok(if dr && older {
            Side::Drift
        } else {
            Side::Changed
        });
    };
    if object.size != b.size {
        return Ok(Side::Changed);
    }
    if older {
        return Ok(Side::Unchanged);
    }
    let sha = content_sha256(s3, root, &object.key).await?;
    Ok(if sha.as_deref() == Some(b.sha256.as_str()) {
        Side::Unchanged
    } else {
        Side::Changed
    })
}

/// Whether S3's last-modified time (whole seconds in listings) is in a second wholly
/// before `at`: a write in the same second as `at` might be after it.
fn written_before(object: &ObjectInfo, at: DateTime<Utc>) -> bool {
    object
        .last_modified
        .is_some_and(|m| m.timestamp() < at.timestamp())
}

/// The SHA-256 stored with the object, else computed by reading it.
async fn content_sha256(
    s3: &aws_sdk_s3::Client,
    root: &S3Uri,
    key: &str,
) -> Result<Option<String>> {
    let uri = root.listed(key);
    match stored_sha256(s3, &uri).await? {
        Some(sha) => Ok(Some(sha)),
        None => sha256_by_reading(s3, &uri).await,
    }
}

/// Whether both sites hold the same content for `key` (both deleted counts).
async fn same_content(
    sides: &Sides<'_>,
    key: &str,
    primary: Option<&ObjectInfo>,
    dr: Option<&ObjectInfo>,
) -> Result<bool> {
    match (primary, dr) {
        (None, None) => Ok(true),
        (Some(p), Some(d)) if p.size != d.size => Ok(false),
        (Some(p), Some(d)) if p.etag == d.etag && !p.etag.is_empty() => Ok(true),
        (Some(_), Some(_)) => {
            let (p, d) = tokio::try_join!(
                content_sha256(sides.primary_s3, sides.primary_root, key),
                content_sha256(sides.dr_s3, sides.dr_root, key)
            )?;
            Ok(p.is_some() && p == d)
        }
        _ => Ok(false),
    }
}

/// One pass over the three sides: every verdict handed to `on_verdict`, and the counts.
pub async fn survey(
    sides: &Sides<'_>,
    discard: bool,
    mut on_verdict: impl AsyncFnMut(&Verdict) -> Result<()>,
) -> Result<DivergenceCounts> {
    let (verdicts, comparison) = compare(sides, discard).await?;
    let mut verdicts = Box::pin(verdicts);
    let mut counts = DivergenceCounts::default();
    let result: Result<()> = async {
        while let Some(verdict) = verdicts.next().await {
            let verdict = verdict?;
            tally(&mut counts, &verdict);
            on_verdict(&verdict).await?;
        }
        Ok(())
    }
    .await;
    drop(verdicts);
    let finished = comparison.finish().await;
    result?;
    finished?;
    Ok(counts)
}

fn tally(counts: &mut DivergenceCounts, verdict: &Verdict) {
    if verdict.baseline.is_some() {
        counts.baseline_objects += 1;
    }
    let class = match verdict.class {
        Class::Unchanged => &mut counts.unchanged,
        Class::DrChanged => &mut counts.dr_changed,
        Class::PrimaryChanged => &mut counts.primary_changed,
        Class::PrimaryMissing => &mut counts.primary_missing,
        Class::BothSame => &mut counts.both_same,
        Class::Divergent => &mut counts.divergent,
        Class::DrDrift => &mut counts.dr_drift,
    };
    *class += 1;
}

/// Parity of the DR site's `root/` (left) with the primary's (right), from verdicts:
/// the classes say which keys hold the same content on both sites.
pub fn parity_step(counts: &mut ParityCounts, verdict: &Verdict) {
    let (dr, primary) = (verdict.dr.as_ref(), verdict.primary.as_ref());
    if let Some(d) = dr {
        counts.left_objects += 1;
        counts.left_bytes += d.size;
    }
    if let Some(p) = primary {
        counts.right_objects += 1;
        counts.right_bytes += p.size;
    }
    match (dr, primary) {
        (Some(_), None) => counts.only_left += 1,
        (None, Some(_)) => counts.only_right += 1,
        (Some(d), Some(p)) => {
            if matches!(verdict.class, Class::Unchanged | Class::BothSame) {
                counts.identical += 1;
            } else if d.size != p.size {
                counts.size_differs += 1;
            } else {
                counts.checksum_differs += 1;
            }
        }
        (None, None) => {}
    }
    counts.delta =
        counts.only_left + counts.only_right + counts.size_differs + counts.checksum_differs;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn object(key: &str, size: u64, etag: &str, at: Option<DateTime<Utc>>) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            etag: etag.into(),
            last_modified: at,
        }
    }

    fn verdict(class: Class, dr: Option<&ObjectInfo>, primary: Option<&ObjectInfo>) -> Verdict {
        Verdict {
            key: "k".into(),
            class,
            action: Action::None,
            dr_size: dr.map(|d| d.size),
            baseline: None,
            primary: primary.map(Seen::from),
            dr: dr.map(Seen::from),
        }
    }

    #[test]
    fn a_write_in_the_same_second_is_not_before() {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap()
            + chrono::Duration::milliseconds(700);
        let earlier = Utc.with_ymd_and_hms(2026, 12, 1, 9, 59, 59).unwrap();
        let same_second = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        assert!(written_before(&object("a", 1, "e", Some(earlier)), at));
        assert!(!written_before(&object("a", 1, "e", Some(same_second)), at));
        assert!(
            !written_before(&object("a", 1, "e", None), at),
            "no time: not known to be older"
        );
    }

    #[test]
    fn parity_after_counts_what_the_classes_say_is_the_same() {
        let a = object("k", 5, "x", None);
        let b = object("k", 5, "y", None);
        let c = object("k", 6, "z", None);
        let mut p = ParityCounts::default();
        parity_step(&mut p, &verdict(Class::Unchanged, Some(&a), Some(&b)));
        parity_step(&mut p, &verdict(Class::BothSame, Some(&a), Some(&a)));
        parity_step(&mut p, &verdict(Class::PrimaryChanged, Some(&a), Some(&b)));
        parity_step(&mut p, &verdict(Class::PrimaryChanged, Some(&a), Some(&c)));
        parity_step(&mut p, &verdict(Class::DrDrift, Some(&a), None));
        parity_step(&mut p, &verdict(Class::PrimaryChanged, None, Some(&a)));
        parity_step(&mut p, &verdict(Class::BothSame, None, None));
        assert_eq!(
            (
                p.identical,
                p.checksum_differs,
                p.size_differs,
                p.only_left,
                p.only_right,
                p.delta
            ),
            (2, 1, 1, 1, 1, 4)
        );
        assert_eq!((p.left_objects, p.right_objects), (5, 5));
    }

    #[test]
    fn counts_tally_each_class_once() {
        let mut counts = DivergenceCounts::default();
        for class in [
            Class::Unchanged,
            Class::DrChanged,
            Class::DrChanged,
            Class::Divergent,
            Class::DrDrift,
        ] {
            tally(&mut counts, &verdict(class, None, None));
        }
        assert_eq!(
            (
                counts.unchanged,
                counts.dr_changed,
                counts.divergent,
                counts.dr_drift,
                counts.primary_changed
            ),
            (1, 2, 1, 1, 0)
        );
    }
}
