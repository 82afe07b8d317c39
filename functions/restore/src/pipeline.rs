//! The synchronous half of the restore pipeline: archive bytes → SHA-256 and size of the
//! archive → zstd decoder → tar reader → one checked entry at a time into an
//! [`EntrySink`]. Nothing here holds more than one read buffer; the sink decides where
//! the data goes (S3 uploads, or nowhere for a dry run and the benchmark).

use std::collections::HashSet;
use std::io::{self, Read};

use bytes::Bytes;
use drpilot_shared::backup::Artifact;
use drpilot_shared::s3uri::RelativeKey;
use drpilot_shared::{Error, Result};
use sha2::{Digest, Sha256};

/// Size of the chunks entries are read and handed on in.
pub const CHUNK: usize = 1 << 20;

/// Keys under this prefix are drpilot's own (the staged control-plane bundle).
pub const RESERVED_PREFIX: &str = "_control-plane/";

/// Where unpacked entries go.
pub trait EntrySink {
    /// A regular file starts; `size` bytes of [`EntrySink::data`] follow.
    fn begin(&mut self, key: RelativeKey, size: u64) -> Result<()>;
    fn data(&mut self, chunk: Bytes) -> Result<()>;
    /// The file is complete; `sha256` is the hash of all its data.
    fn end(&mut self, sha256: [u8; 32]) -> Result<()>;
}

/// Counts entries and discards their data: dry runs, archive checks, benchmarks.
#[derive(Debug, Default)]
pub struct NullSink {
    /// Catches duplicate paths in memory; used where there is no S3 conditional write to
    /// catch them (dry runs). Grows with the number of entries: fine for verification of
    /// manifests archives and dry runs, never used on the staging path.
    seen: Option<HashSet<RelativeKey>>,
}

impl NullSink {
    pub fn detecting_duplicates() -> Self {
        Self {
            seen: Some(HashSet::new()),
        }
    }
}

impl EntrySink for NullSink {
    fn begin(&mut self, key: RelativeKey, _size: u64) -> Result<()> {
        if let Some(seen) = &mut self.seen {
            if !seen.insert(key.clone()) {
                return Err(Error::contract(format!("duplicate entry {key}")));
            }
        }
        Ok(())
    }
    fn data(&mut self, _chunk: Bytes) -> Result<()> {
        Ok(())
    }
    fn end(&mut self, _sha256: [u8; 32]) -> Result<()> {
        Ok(())
    }
}

/// What an unpacked archive held.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveReport {
    pub files: u64,
    pub directories: u64,
    /// Uncompressed bytes of file data.
    pub bytes: u64,
    /// Compressed bytes read (the artifact's size).
    pub archive_bytes: u64,
    pub archive_sha256: String,
}

/// Counts and hashes every byte read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks the zstd-compressed tar `archive` named `name` into `sink`, checking every
/// entry against the backup contract and the whole against `expected`.
///
/// Errors: `ContractError` for a forbidden entry (link, device, fifo, absolute path,
/// `..`, reserved prefix, non-UTF-8 name), a truncated or corrupt stream; `IntegrityError`
/// when the archive's size or SHA-256 differs from `expected`; whatever the sink raises.
pub fn unpack<R: Read>(
    name: &str,
    archive: R,
    expected: &Artifact,
    sink: &mut impl EntrySink,
) -> Result<ArchiveReport> {
    let mut hashing = HashingReader {
        inner: archive,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let corrupt = |e: io::Error| {
        // An I/O error carrying our own Error (from the S3 body reader) keeps its kind.
        match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
            Some(err) => err.clone(),
            None => Error::contract(format!("{name}: truncated or corrupt stream: {e}")),
        }
    };
    let mut report = ArchiveReport::default();
    {
        let decoder = zstd::stream::read::Decoder::new(&mut hashing).map_err(corrupt)?;
        let mut tar = tar::Archive::new(decoder);
        let mut buf = vec![0u8; CHUNK];
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
            if is_dir && relative.is_empty() || relative == "." {
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
            sink.begin(key, size)?;
            let mut hasher = Sha256::new();
            let mut read_total = 0u64;
            loop {
                let n = entry.read(&mut buf).map_err(corrupt)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                read_total += n as u64;
                sink.data(Bytes::copy_from_slice(&buf[..n]))?;
            }
            if read_total != size {
                return Err(Error::contract(format!(
                    "{name}: entry {path:?} is truncated ({read_total} of {size} bytes)"
                )));
            }
            sink.end(hasher.finalize().into())?;
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
