//! Reading a backup archive (a zstd-compressed POSIX tar, docs/contracts.md) as a stream:
//! archive bytes → SHA-256 and size of the whole → zstd decoder → tar reader → one
//! checked entry at a time, handed to an [`EntryVisitor`] as a `Read`. Nothing here holds
//! more than the decoder's window and one entry header; the visitor decides what the data
//! becomes (S3 uploads for restore, parsed manifests for validate, nothing for a check).

use std::collections::HashSet;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::s3uri::RelativeKey;

/// An archive as the backup metadata names it: its SHA-256 and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub sha256: String,
    pub size: u64,
}

/// Size of the buffer entries are read in.
pub const CHUNK: usize = 1 << 20;

/// Keys under this prefix are drpilot's own (the staged control-plane bundle).
pub const RESERVED_PREFIX: &str = "_control-plane/";

/// What receives an archive's regular files, one at a time, in archive order.
pub trait EntryVisitor {
    /// `data` yields the file's `size` bytes; read errors are the archive's, so map them
    /// with [`stream_error`]. Whatever the visitor leaves unread is skipped.
    fn file(&mut self, key: RelativeKey, size: u64, data: &mut dyn Read) -> Result<()>;
}

/// Reads and discards every file: checks an archive without keeping anything.
#[derive(Debug, Default)]
pub struct Discard {
    /// Catches duplicate paths in memory where no S3 conditional write can (dry runs).
    /// Grows with the number of entries, so never used on the staging path.
    seen: Option<HashSet<RelativeKey>>,
}

impl Discard {
    pub fn detecting_duplicates() -> Self {
        Self {
            seen: Some(HashSet::new()),
        }
    }
}

impl EntryVisitor for Discard {
    fn file(&mut self, key: RelativeKey, _size: u64, data: &mut dyn Read) -> Result<()> {
        if let Some(seen) = &mut self.seen {
            if !seen.insert(key.clone()) {
                return Err(Error::contract(format!("duplicate entry {key}")));
            }
        }
        io::copy(data, &mut io::sink()).map_err(|e| stream_error("archive", e))?;
        Ok(())
    }
}

/// The error for a failed read of archive `name`: an error the reader carried (an S3
/// read failure) keeps its own kind; anything else means a truncated or corrupt stream.
pub fn stream_error(name: &str, e: io::Error) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(err) => err.clone(),
        None => Error::contract(format!("{name}: truncated or corrupt stream: {e}")),
    }
}

/// What an unpacked archive held.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveReport {
    pub files: u64,
    pub directories: u64,
    /// Uncompressed bytes of file data.
    pub bytes: u64,
    /// Compressed bytes read (the artifact's size).
    pub archive_bytes: u64,
    pub archive_sha256: String,
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Counts and hashes every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub bytes: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The SHA-256 of what was read.
    pub fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads the zstd-compressed tar `archive` named `name`, handing each regular file to
/// `visitor`, checking every entry against the backup contract and the whole against
/// `expected`.
///
/// Errors: `ContractError` for a forbidden entry (link, device, fifo, absolute path,
/// `..`, reserved prefix, non-UTF-8 name), a truncated or corrupt stream; `IntegrityError`
/// when the archive's size or SHA-256 differs from `expected`; whatever the visitor raises.
pub fn unpack<R: Read>(
    name: &str,
    archive: R,
    expected: &Artifact,
    visitor: &mut impl EntryVisitor,
) -> Result<ArchiveReport> {
    let mut hashing = HashingReader {
        inner: archive,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let corrupt = |e: io::Error| stream_error(name, e);
    let mut report = ArchiveReport::default();
    {
        let decoder = zstd::stream::read::Decoder::new(&mut hashing).map_err(corrupt)?;
        let mut tar = tar::Archive::new(decoder);
        for entry in tar.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let raw_path = entry.path_bytes().into_owned();
            let path = String::from_utf8(raw_path).map_err(|e| {
                Error::contract(format!(
                    "{name}: entry name is not UTF-8: {:?}",
                    String::from_utf8_lossy(e.as_bytes())
                ))
            })?;
            let entry_type = entry.header().entry_type();
            if entry_type.is_pax_global_extensions() {
                continue; // archive-wide metadata (e.g. from `git archive`), no file
            }
            let is_dir = entry_type.is_dir();
            if !(is_dir || entry_type.is_file()) {
                return Err(Error::contract(format!(
                    "{name}: entry {path:?} is a {}; only regular files and directories are allowed",
                    describe(entry_type)
                )));
            }
            let relative = path.strip_prefix("./").unwrap_or(&path);
            let relative = if is_dir {
                relative.trim_end_matches('/')
            } else {
                relative
            };
            if (is_dir && relative.is_empty()) || relative == "." {
                continue; // the archive's own root (`tar -C dir .`)
            }
            if path.starts_with('/') {
                return Err(Error::contract(format!(
                    "{name}: entry {path:?} has an absolute path"
                )));
            }
            let key = RelativeKey::parse(relative)
                .map_err(|e| Error::contract(format!("{name}: entry {path:?}: {e}")))?;
            if key.as_str().starts_with(RESERVED_PREFIX) || key.as_str() == "_control-plane" {
                return Err(Error::contract(format!(
                    "{name}: entry {path:?} uses the reserved prefix {RESERVED_PREFIX}"
                )));
            }
            if is_dir {
                report.directories += 1;
                continue;
            }
            let size = entry.size();
            let mut counted = CountingReader {
                inner: &mut entry,
                bytes: 0,
            };
            visitor.file(key, size, &mut counted)?;
            io::copy(&mut counted, &mut io::sink()).map_err(corrupt)?;
            if counted.bytes != size {
                return Err(Error::contract(format!(
                    "{name}: entry {path:?} is truncated ({} of {size} bytes)",
                    counted.bytes
                )));
            }
            report.files += 1;
            report.bytes += size;
        }
        // Past the end-of-archive marker: the rest of the decompressed stream (tar's
        // record padding) must still decode, or the zstd frame is truncated.
        let mut decoder = tar.into_inner();
        io::copy(&mut decoder, &mut io::sink()).map_err(corrupt)?;
    }
    // Hash whatever follows the zstd frame too: the artifact is every byte of the object.
    io::copy(&mut hashing, &mut io::sink()).map_err(corrupt)?;
    report.archive_bytes = hashing.bytes;
    report.archive_sha256 = hex::encode(hashing.hasher.finalize());
    if report.archive_bytes != expected.size {
        return Err(Error::integrity(format!(
            "{name}: size is {} bytes, metadata.json says {}",
            report.archive_bytes, expected.size
        )));
    }
    if report.archive_sha256 != expected.sha256 {
        return Err(Error::integrity(format!(
            "{name}: sha256 is {}, metadata.json says {}",
            report.archive_sha256, expected.sha256
        )));
    }
    Ok(report)
}

fn describe(entry_type: tar::EntryType) -> &'static str {
    use tar::EntryType as T;
    match entry_type {
        T::Symlink => "symlink",
        T::Link => "hard link",
        T::Char => "character device",
        T::Block => "block device",
        T::Fifo => "fifo",
        T::GNUSparse => "sparse file",
        _ => "non-regular entry",
    }
}
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
