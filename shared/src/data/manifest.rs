//! The backup's manifests, and what its state archive holds, as sorted streams of
//! `{key, size, sha256}` entries, whatever their number: each manifest JSON is parsed
//! entry by entry as it streams out of `manifests.tar.zst` ([`ManifestCollector`]), each
//! file of `state.tar.zst` is hashed as it streams by ([`ContentCollector`]), and entries
//! are sorted in bounded chunks spilled to temporary files, then merged. Memory is
//! bounded by the chunk size (`SORT_CHUNK` entries); disk by the entries' size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::archive::{is_sha256_hex, stream_error, EntryVisitor};
use crate::error::{Error, Result};
use crate::listing::Keyed;
use crate::s3uri::{KeyRange, RelativeKey};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Entries held in memory before a sorted run is spilled to disk (~100 bytes each).
pub const SORT_CHUNK: usize = 200_000;

/// One object the backup says must exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

impl Keyed for ManifestEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

/// Reads every `*.json` manifest in the archive into a sorter: every entry is checked,
/// and those in `range` are kept (a range's child sorts only its own).
pub struct ManifestCollector {
    pub sorter: ExternalSort,
    pub manifests: u64,
    pub range: KeyRange,
}

impl EntryVisitor for ManifestCollector {
    fn file(&mut self, key: RelativeKey, _size: u64, data: &mut dyn Read) -> Result<()> {
        let name = key.to_string();
        if !name.ends_with(".json") {
            return Err(Error::contract(format!(
                "manifests.tar.zst: entry {name:?} is not a .json manifest"
            )));
        }
        let mut failure: Option<Error> = None;
        let mut bounded = StringBound::new(data);
        let mut reader = BufReader::with_capacity(1 << 16, &mut bounded);
        let mut de = serde_json::Deserializer::from_reader(&mut reader);
        let (sorter, range) = (&mut self.sorter, &self.range);
        let seed = ManifestSeed {
            on_entry: &mut |entry: RawEntry| -> Result<()> {
                let checked = entry.check(&name)?;
                if !range.contains(&checked.key) {
                    return Ok(());
                }
                sorter.push(checked)
            },
            failure: &mut failure,
        };
        let parsed = seed.deserialize(&mut de).and_then(|()| de.end());
        if let Some(err) = failure {
            return Err(err);
        }
        drop(de);
        drop(reader);
        if bounded.exceeded {
            return Err(Error::contract(format!(
                "manifest {name}: a string longer than {MAX_JSON_STRING} bytes (a key is at most 1024 bytes)"
            )));
        }
        parsed.map_err(|e| {
            if e.is_io() {
                stream_error("manifests.tar.zst", std::io::Error::other(e))
            } else {
                Error::contract(format!("manifest {name}: {e}"))
            }
        })?;
        self.manifests += 1;
        Ok(())
    }
}

/// The longest JSON string a manifest may hold, escapes included: a key of S3's 1024
/// bytes written with `\uXXXX` escapes throughout (6 bytes each), plus its quotes.
const MAX_JSON_STRING: usize = 1024 * 6 + 2;

/// A reader that fails once a JSON string in what it reads runs past
/// [`MAX_JSON_STRING`]: serde_json buffers a whole string before handing it over, so
/// without it a manifest's key of gigabytes would be read into memory before its
/// 1024-byte limit is checked. It follows only what a string's length needs (inside a
/// string or not, and `\` escapes).
struct StringBound<R> {
    inner: R,
    in_string: bool,
    escaped: bool,
    run: usize,
    exceeded: bool,
}

impl<R: Read> StringBound<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            in_string: false,
            escaped: false,
            run: 0,
            exceeded: false,
        }
    }
}

impl<R: Read> Read for StringBound<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            if !self.in_string {
                if byte == b'"' {
                    (self.in_string, self.run) = (true, 1);
                }
                continue;
            }
            self.run += 1;
            if self.run > MAX_JSON_STRING {
                self.exceeded = true;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a JSON string longer than {MAX_JSON_STRING} bytes"),
                ));
            }
            match (self.escaped, byte) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
        }
        Ok(n)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    key: String,
    size: u64,
    sha256: String,
}

impl RawEntry {
    fn check(self, manifest: &str) -> Result<ManifestEntry> {
        RelativeKey::parse(&self.key)
            .map_err(|e| Error::contract(format!("manifest {manifest}: bad key: {e}")))?;
        if !is_sha256_hex(&self.sha256) {
            return Err(Error::contract(format!(
                "manifest {manifest}: entry {:?}: sha256 must be 64 lowercase hex digits, got {:?}",
                self.key, self.sha256
            )));
        }
        Ok(ManifestEntry {
            key: self.key,
            size: self.size,
            sha256: self.sha256,
        })
    }
}

/// Deserializes `{"objects": [...]}` calling `on_entry` per element, never holding the array.
struct ManifestSeed<'a, F> {
    on_entry: &'a mut F,
    failure: &'a mut Option<Error>,
}

impl<'de, F: FnMut(RawEntry) -> Result<()>> DeserializeSeed<'de> for ManifestSeed<'_, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(RawEntry) -> Result<()>> Visitor<'de> for ManifestSeed<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a manifest {"objects": [...]}"#)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut seen = false;
        while let Some(field) = map.next_key::<String>()? {
            if field != "objects" {
                return Err(de::Error::unknown_field(&field, &["objects"]));
            }
            if seen {
                return Err(de::Error::duplicate_field("objects"));
            }
            seen = true;
            map.next_value_seed(ObjectsSeed {
                on_entry: &mut *self.on_entry,
                failure: &mut *self.failure,
            })?;
        }
        if !seen {
            return Err(de::Error::missing_field("objects"));
        }
        Ok(())
    }
}

struct ObjectsSeed<'a, F> {
    on_entry: &'a mut F,
    failure: &'a mut Option<Error>,
}

impl<'de, F: FnMut(RawEntry) -> Result<()>> DeserializeSeed<'de> for ObjectsSeed<'_, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(RawEntry) -> Result<()>> Visitor<'de> for ObjectsSeed<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of {key, size, sha256}")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<RawEntry>()? {
            if let Err(err) = (self.on_entry)(entry) {
                let message = err.message.clone();
                *self.failure = Some(err);
                return Err(de::Error::custom(message));
            }
        }
        Ok(())
    }
}

/// Hashes every file of an archive into a sorter: what the archive holds, as entries
/// comparable with the manifests'.
pub struct ContentCollector {
    pub sorter: ExternalSort,
}

impl EntryVisitor for ContentCollector {
    fn file(&mut self, key: RelativeKey, _size: u64, data: &mut dyn Read) -> Result<()> {
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = data
                .read(&mut buffer)
                .map_err(|e| stream_error("state.tar.zst", e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
        self.sorter.push(ManifestEntry {
            key: key.to_string(),
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

/// The background work behind [`crate::backup::sorted_entries`]: the body pump and the sorter.
pub struct ManifestTasks {
    sorter: tokio::task::JoinHandle<Result<()>>,
    pump: tokio::task::JoinHandle<()>,
}

impl ManifestTasks {
    /// Stops reading (once the entries' receiver is dropped) and returns the sorter's
    /// error, if it had one the stream did not already carry.
    pub async fn finish(self) -> Result<()> {
        self.pump.abort();
        self.sorter.await.map_err(Error::from)?
    }
}

/// The entries of a manifests archive streamed from `reader` (checked against
/// `expected` while it streams, `name` naming it in errors), the keys in `range` only,
/// sorted on a blocking thread in bounded memory; an error ends the stream. `pump` is
/// the task feeding `reader`, stopped with the sorter by [`ManifestTasks::finish`].
pub fn sort_archive(
    name: &'static str,
    reader: crate::objects::BodyReader,
    expected: crate::archive::Artifact,
    range: KeyRange,
    pump: tokio::task::JoinHandle<()>,
) -> (
    tokio::sync::mpsc::Receiver<Result<ManifestEntry>>,
    ManifestTasks,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<ManifestEntry>>(4096);
    let sorter = tokio::task::spawn_blocking(move || {
        let sent = ExternalSort::new(SORT_CHUNK).and_then(|sorter| {
            let mut collector = ManifestCollector {
                sorter,
                manifests: 0,
                range,
            };
            crate::archive::unpack(name, reader, &expected, &mut collector)?;
            for entry in collector.sorter.finish()? {
                let failed = entry.is_err();
                if tx.blocking_send(entry).is_err() || failed {
                    break;
                }
            }
            Ok(())
        });
        if let Err(err) = sent {
            let _ = tx.blocking_send(Err(err));
        }
        Ok(())
    });
    (rx, ManifestTasks { sorter, pump })
}

/// Sorts entries by key (byte order, as S3 lists), in chunks of at most `limit` in memory.
pub struct ExternalSort {
    limit: usize,
    /// A key twice is an error (an archive's entries), not one entry listed twice (the
    /// manifests').
    refuse_duplicates: bool,
    buffer: Vec<ManifestEntry>,
    runs: Vec<PathBuf>,
    /// Where the sorted runs spill; removed when the sorted entries are dropped.
    dir: tempfile::TempDir,
}

impl ExternalSort {
    pub fn new(limit: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("drpilot-sort-")
            .tempdir()
            .map_err(|e| Error::retryable(format!("creating a directory to sort in: {e}")))?;
        Ok(Self {
            limit: limit.max(1),
            refuse_duplicates: false,
            buffer: Vec::new(),
            runs: Vec::new(),
            dir,
        })
    }

    /// A sorter for which a key seen twice is a `ContractError` (a duplicate archive
    /// entry), with bounded memory where a set of seen keys would grow with the archive.
    pub fn refusing_duplicates(mut self) -> Self {
        self.refuse_duplicates = true;
        self
    }

    pub fn push(&mut self, entry: ManifestEntry) -> Result<()> {
        self.buffer.push(entry);
        if self.buffer.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.buffer
            .sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        let path = self
            .dir
            .path()
            .join(format!("run-{}.jsonl", self.runs.len()));
        let io = |e: std::io::Error| Error::retryable(format!("spilling manifest entries: {e}"));
        let mut out = BufWriter::new(File::create(&path).map_err(io)?);
        for entry in self.buffer.drain(..) {
            serde_json::to_writer(&mut out, &entry)
                .map_err(|e| Error::retryable(format!("spilling manifest entries: {e}")))?;
            out.write_all(b"\n").map_err(io)?;
        }
        out.flush().map_err(io)?;
        self.runs.push(path);
        Ok(())
    }

    /// The entries in key order, duplicates checked: the same key twice with the same
    /// size and hash is one entry; with different ones it is a contract error.
    pub fn finish(mut self) -> Result<Sorted> {
        let source = if self.runs.is_empty() {
            self.buffer
                .sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
            Source::Memory(std::mem::take(&mut self.buffer).into_iter())
        } else {
            if !self.buffer.is_empty() {
                self.spill()?;
            }
            let mut readers = Vec::new();
            let mut heap = BinaryHeap::new();
            for (i, path) in self.runs.iter().enumerate() {
                let file = File::open(path)
                    .map_err(|e| Error::retryable(format!("reading a sorted run: {e}")))?;
                let mut reader = BufReader::new(file).lines();
                if let Some(entry) = next_line(&mut reader)? {
                    heap.push(Reverse(HeapItem { entry, run: i }));
                }
                readers.push(reader);
            }
            Source::Merge { readers, heap }
        };
        Ok(Sorted {
            source,
            pending: None,
            refuse_duplicates: self.refuse_duplicates,
            _dir: self.dir,
        })
    }
}

fn next_line(lines: &mut std::io::Lines<BufReader<File>>) -> Result<Option<ManifestEntry>> {
    match lines.next() {
        None => Ok(None),
        Some(line) => {
            let line = line.map_err(|e| Error::retryable(format!("reading a sorted run: {e}")))?;
            serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| Error::retryable(format!("reading a sorted run: {e}")))
        }
    }
}

#[derive(PartialEq, Eq)]
struct HeapItem {
    entry: ManifestEntry,
    run: usize,
}

impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.entry
            .key
            .as_bytes()
            .cmp(other.entry.key.as_bytes())
            .then(self.run.cmp(&other.run))
    }
}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

enum Source {
    Memory(std::vec::IntoIter<ManifestEntry>),
    Merge {
        readers: Vec<std::io::Lines<BufReader<File>>>,
        heap: BinaryHeap<Reverse<HeapItem>>,
    },
}

impl Source {
    fn next_raw(&mut self) -> Result<Option<ManifestEntry>> {
        match self {
            Source::Memory(it) => Ok(it.next()),
            Source::Merge { readers, heap } => {
                let Some(Reverse(item)) = heap.pop() else {
                    return Ok(None);
                };
                if let Some(next) = next_line(&mut readers[item.run])? {
                    heap.push(Reverse(HeapItem {
                        entry: next,
                        run: item.run,
                    }));
                }
                Ok(Some(item.entry))
            }
        }
    }
}

/// Sorted, de-duplicated manifest entries.
pub struct Sorted {
    source: Source,
    pending: Option<ManifestEntry>,
    refuse_duplicates: bool,
    _dir: tempfile::TempDir,
}

impl Iterator for Sorted {
    type Item = Result<ManifestEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        let current = match self.pending.take() {
            Some(entry) => entry,
            None => match self.source.next_raw() {
                Ok(Some(entry)) => entry,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            },
        };
        loop {
            match self.source.next_raw() {
                Ok(Some(next)) if next.key == current.key => {
                    if self.refuse_duplicates {
                        return Some(Err(Error::contract(format!(
                            "state.tar.zst: duplicate entry {}",
                            current.key
                        ))));
                    }
                    if next != current {
                        return Some(Err(Error::contract(format!(
                            "manifests list {:?} twice with different size or sha256",
                            current.key
                        ))));
                    }
                }
                Ok(Some(next)) => {
                    self.pending = Some(next);
                    return Some(Ok(current));
                }
                Ok(None) => return Some(Ok(current)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size,
            sha256: "0".repeat(64),
        }
    }

    fn sorted_keys(limit: usize, keys: &[&str]) -> Result<Vec<String>> {
        let mut sorter = ExternalSort::new(limit)?;
        for k in keys {
            sorter.push(entry(k, 1))?;
        }
        sorter.finish()?.map(|e| e.map(|e| e.key)).collect()
    }

    #[test]
    fn sorts_in_memory_and_through_spilled_runs_alike() {
        let keys: Vec<String> = (0..1000)
            .map(|i| format!("k{}", (i * 7919) % 1000))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(sorted_keys(10_000, &refs).unwrap(), expected);
        assert_eq!(sorted_keys(7, &refs).unwrap(), expected);
    }

    #[test]
    fn identical_duplicates_merge_and_conflicting_ones_fail() {
        assert_eq!(
            sorted_keys(2, &["b", "a", "b", "a", "c"]).unwrap(),
            ["a", "b", "c"]
        );
        let mut sorter = ExternalSort::new(2).unwrap();
        sorter.push(entry("a", 1)).unwrap();
        sorter.push(entry("x", 1)).unwrap();
        sorter.push(entry("a", 2)).unwrap();
        let result: Result<Vec<_>> = sorter.finish().unwrap().collect();
        assert!(result.unwrap_err().message.contains("twice"));
    }

    #[test]
    fn an_archive_collector_hashes_files_and_refuses_a_key_twice() {
        let mut content = ContentCollector {
            sorter: ExternalSort::new(1).unwrap().refusing_duplicates(),
        };
        for (key, data) in [("b", &b"test"[..]), ("a", &b""[..])] {
            content
                .file(
                    RelativeKey::parse(key).unwrap(),
                    data.len() as u64,
                    &mut &data[..],
                )
                .unwrap();
        }
        let entries: Vec<_> = content
            .sorter
            .finish()
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(entries[0].key, "a");
        assert_eq!(
            entries[1],
            ManifestEntry {
                key: "b".into(),
                size: 4,
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            }
        );
        let mut twice = ExternalSort::new(1).unwrap().refusing_duplicates();
        twice.push(entry("a", 1)).unwrap();
        twice.push(entry("a", 1)).unwrap();
        let err = twice
            .finish()
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::ContractError);
        assert!(err.message.contains("duplicate entry a"), "{err}");
    }

    #[test]
    fn parses_a_manifest_entry_by_entry() {
        let json = br#"{"objects": [{"key": "a/b.json", "size": 3, "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]}"#;
        let mut collector = ManifestCollector {
            sorter: ExternalSort::new(10).unwrap(),
            manifests: 0,
            range: KeyRange::all(),
        };
        collector
            .file(
                RelativeKey::parse("m.json").unwrap(),
                json.len() as u64,
                &mut &json[..],
            )
            .unwrap();
        let entries: Vec<_> = collector
            .sorter
            .finish()
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].key, "a/b.json");

        for (bad, says) in [
            (
                &br#"{"objects": [{"key": "../x", "size": 1, "sha256": "00"}]}"#[..],
                "bad key",
            ),
            (
                &br#"{"objects": [{"key": "x", "size": 1, "sha256": "zz"}]}"#[..],
                "sha256",
            ),
            (&br#"{"things": []}"#[..], "unknown field"),
            (&br#"{"objects": [{"key": "x"}]}"#[..], "missing field"),
            (&br#"{"objects": [ "#[..], "EOF"),
        ] {
            let mut collector = ManifestCollector {
                sorter: ExternalSort::new(10).unwrap(),
                manifests: 0,
                range: KeyRange::all(),
            };
            let err = collector
                .file(
                    RelativeKey::parse("m.json").unwrap(),
                    bad.len() as u64,
                    &mut &bad[..],
                )
                .unwrap_err();
            assert!(err.message.contains(says), "{says}: {err}");
        }
    }

    /// A manifest whose key is 64 MiB long is refused after reading about a key's worth
    /// of it, not after holding it all.
    #[test]
    fn a_huge_key_is_refused_before_it_is_read_whole() {
        struct Counted<R>(R, std::rc::Rc<std::cell::Cell<u64>>);
        impl<R: Read> Read for Counted<R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1.set(self.1.get() + n as u64);
                Ok(n)
            }
        }
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let huge = (&br#"{"objects": [{"key": ""#[..])
            .chain(std::io::repeat(b'a').take(64 << 20))
            .chain(&br#"", "size": 1, "sha256": "00"}]}"#[..]);
        let mut data = Counted(huge, read.clone());
        let mut collector = ManifestCollector {
            sorter: ExternalSort::new(10).unwrap(),
            manifests: 0,
            range: KeyRange::all(),
        };
        let err = collector
            .file(RelativeKey::parse("m.json").unwrap(), 0, &mut data)
            .unwrap_err();
        assert!(err.message.contains("a key is at most 1024 bytes"), "{err}");
        assert!(read.get() < 1 << 20, "read {} bytes", read.get());
    }
}
