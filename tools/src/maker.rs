//! Making a contract backup (format v1, or v2 in shards, docs/contracts.md) from a
//! directory: what `scripts/make-backup.sh` does with tar, zstd and sha256sum, in one
//! streaming pass —
//! each file is read once, hashed for its manifest entry while it is written into the
//! archive, and the archive is hashed while it is written to disk. Memory holds one
//! directory's listing and one buffer, whatever the size of the tree; the manifest is
//! written to a temporary file as it grows.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use drpilot_shared::archive::{Artifact, HashingReader};
use drpilot_shared::backup::{ShardEntry, FORMAT_V1, FORMAT_V2, MANIFESTS, METADATA, STATE};
use drpilot_shared::error::{Error, Result};
use drpilot_shared::input::NameRule;
use drpilot_shared::s3uri::RelativeKey;

/// What `make` writes into `metadata.json` beyond the artifacts.
#[derive(Clone, Debug)]
pub struct MakeOptions {
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    /// The source's revision (`source.git_sha`).
    pub git_sha: String,
    /// zstd level (1-19); 3 is zstd's own default.
    pub level: i32,
    /// Make v2: shards of consecutive files in key order, each closed once its files
    /// reach this many bytes. `None` makes v1 (one `state.tar.zst`).
    pub shard_size: Option<u64>,
}

/// What `make` wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Made {
    pub dir: PathBuf,
    pub backup_id: String,
    pub files: u64,
    pub directories: u64,
    /// Bytes of file data backed up.
    pub bytes: u64,
    /// The state archive (v1); for v2 its size is the shards' sum and its SHA-256 that
    /// of the shards' SHA-256s, one hex digest a line (as restore's receipt has it).
    pub state: Artifact,
    pub manifests: Artifact,
    /// v2's shards, in key order (empty for v1).
    pub shards: Vec<ShardEntry>,
}

/// Backs up the tree under `src` into `out` (created; it must not hold a backup already):
/// `state.tar.zst` (directories and regular files, relative to `src`, in byte order of
/// their names), `manifests.tar.zst` (one manifest, `state.json`, listing every file with
/// its size and SHA-256) and `metadata.json`, written last. Anything but directories and
/// regular files (a symlink, a device, a socket), and a name that is not UTF-8 or not a
/// valid key, is an `InputError` naming the path, raised before `out` is created.
pub fn make(src: &Path, out: &Path, options: &MakeOptions) -> Result<Made> {
    check(src, out, options)?;
    std::fs::create_dir_all(out).map_err(|e| io_error(&out.display().to_string(), e))?;

    let mut manifest = ManifestFile::new()?;
    let (state, (tally, shards)) = {
        let mut shards = options
            .shard_size
            .map(|size| Shards::new(out, options.level, size));
        let mut fill = |tar: Option<&mut Builder>| -> Result<Tally> {
            let mut tar = tar;
            let mut tally = Tally::default();
            walk(src, Path::new(""), &mut |relative, kind| {
                let name = key_of(relative)?;
                let path = src.join(relative);
                match kind {
                    Kind::Directory => {
                        // Shards hold files only: a restore stages objects, not folders.
                        if let Some(tar) = tar.as_deref_mut() {
                            append(
                                tar,
                                tar::EntryType::Directory,
                                &format!("{name}/"),
                                0,
                                io::empty(),
                            )
                            .map_err(|e| io_error(&path.display().to_string(), e))?;
                        }
                        tally.directories += 1;
                    }
                    Kind::File => {
                        let target = match (tar.as_deref_mut(), shards.as_mut()) {
                            (Some(tar), _) => tar,
                            (None, Some(shards)) => shards.before(&name)?,
                            (None, None) => return Err(Error::internal("no archive to write")),
                        };
                        let (size, sha256) = append_file(target, &path, &name)?;
                        if let (None, Some(shards)) = (tar.as_deref_mut(), shards.as_mut()) {
                            shards.after(&name, size)?;
                        }
                        manifest.push(&name, size, &sha256)?;
                        tally.files += 1;
                        tally.bytes += size;
                    }
                }
                Ok(())
            })?;
            Ok(tally)
        };
        if options.shard_size.is_some() {
            let tally = fill(None)?;
            let shards = shards
                .take()
                .ok_or_else(|| Error::internal("no shards"))?
                .finish()?;
            if shards.is_empty() {
                return Err(Error::input(format!(
                    "{}: no files to back up (a sharded backup needs at least one)",
                    src.display()
                )));
            }
            let state = combined(&shards);
            (state, (tally, shards))
        } else {
            let (state, tally) =
                write_archive(&out.join(STATE), options.level, |tar| fill(Some(tar)))?;
            (state, (tally, Vec::new()))
        }
    };
    let (manifest_size, mut manifest) = manifest.finish()?;
    let (manifests, ()) = write_archive(&out.join(MANIFESTS), options.level, |tar| {
        append(
            tar,
            tar::EntryType::Regular,
            "state.json",
            manifest_size,
            &mut manifest,
        )
        .map_err(|e| io_error("the manifest", e))
    })?;

    write_metadata(out, options, (&state, &manifests), &shards)?;
    Ok(Made {
        dir: out.to_path_buf(),
        backup_id: options.backup_id.clone(),
        files: tally.files,
        directories: tally.directories,
        bytes: tally.bytes,
        state,
        manifests,
        shards,
    })
}

/// What [`make`] checks before it writes anything: the options, and a tree whose every
/// entry can be backed up (a tree that cannot leaves nothing behind).
fn check(src: &Path, out: &Path, options: &MakeOptions) -> Result<()> {
    NameRule::RUN_ID
        .check(&options.backup_id)
        .map_err(|why| Error::input(format!("backup id: {why}")))?;
    if !(1..=19).contains(&options.level) {
        return Err(Error::input(format!(
            "level: expected a zstd level of 1 to 19, got {}",
            options.level
        )));
    }
    if options.shard_size == Some(0) {
        return Err(Error::input(
            "shard size: expected a positive number of bytes",
        ));
    }
    if !src.is_dir() {
        return Err(Error::input(format!(
            "{}: not a directory to back up",
            src.display()
        )));
    }
    // Checked before anything is written: a tree that cannot be backed up leaves nothing.
    walk(src, Path::new(""), &mut |relative, _| {
        key_of(relative).map(drop)
    })?;
    if out.join(METADATA).exists() {
        return Err(Error::input(format!(
            "{}: already holds a backup ({METADATA}); choose another directory",
            out.display()
        )));
    }
    Ok(())
}

/// `state.json`, the manifest, written to a temporary file as the tree is walked: one
/// `{key, size, sha256}` line per file, so memory does not grow with the tree.
struct ManifestFile {
    out: BufWriter<File>,
    entries: u64,
}

impl ManifestFile {
    fn new() -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| io_error("a temporary manifest", e))?;
        let mut out = BufWriter::new(file);
        out.write_all(b"{\"objects\": [")
            .map_err(|e| io_error("the manifest", e))?;
        Ok(Self { out, entries: 0 })
    }

    fn push(&mut self, key: &str, size: u64, sha256: &[u8]) -> Result<()> {
        let entry = serde_json::json!({"key": key, "size": size, "sha256": hex::encode(sha256)});
        let separator: &[u8] = if self.entries == 0 { b"\n  " } else { b",\n  " };
        self.out
            .write_all(separator)
            .and_then(|()| serde_json::to_writer(&mut self.out, &entry).map_err(io::Error::other))
            .map_err(|e| io_error("the manifest", e))?;
        self.entries += 1;
        Ok(())
    }

    /// Closes the manifest and answers its size and the file, rewound to be read.
    fn finish(mut self) -> Result<(u64, File)> {
        self.out
            .write_all(b"\n]}\n")
            .map_err(|e| io_error("the manifest", e))?;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| io_error("the manifest", e.into_error()))?;
        let size = file
            .metadata()
            .map_err(|e| io_error("the manifest", e))?
            .len();
        io::Seek::rewind(&mut file).map_err(|e| io_error("the manifest", e))?;
        Ok((size, file))
    }
}

/// A file the maker reads or writes failed: an `InputError` naming it.
fn io_error(what: &str, e: io::Error) -> Error {
    Error::input(format!("{what}: {e}"))
}

/// Appends the file at `path` to `tar` as `name`, hashing it as it goes: its size and
/// SHA-256. A file whose size changed while it was read is an `InputError`.
fn append_file(tar: &mut Builder, path: &Path, name: &str) -> Result<(u64, [u8; 32])> {
    let io_error = |e: io::Error| io_error(&path.display().to_string(), e);
    let file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    let mut hashing = HashingReader::new(file);
    append(
        tar,
        tar::EntryType::Regular,
        name,
        size,
        (&mut hashing).take(size),
    )
    .map_err(io_error)?;
    if hashing.bytes != size {
        return Err(Error::input(format!(
            "{}: changed while it was backed up ({size} bytes, then {})",
            path.display(),
            hashing.bytes
        )));
    }
    Ok((size, hashing.finish()))
}

/// `metadata.json`, written last: a directory holding it holds a whole backup.
fn write_metadata(
    out: &Path,
    options: &MakeOptions,
    (state, manifests): (&Artifact, &Artifact),
    shards: &[ShardEntry],
) -> Result<()> {
    let mut metadata = serde_json::json!({
        "format": if shards.is_empty() { FORMAT_V1 } else { FORMAT_V2 },
        "backup_id": options.backup_id,
        "created_at": options.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "source": {
            "git_sha": options.git_sha,
            "tool": concat!("drpilot backup make ", env!("CARGO_PKG_VERSION")),
        },
        "artifacts": {STATE: state, MANIFESTS: manifests},
    });
    if !shards.is_empty() {
        metadata["artifacts"] = serde_json::json!({ MANIFESTS: manifests });
        metadata["shards"] = serde_json::to_value(shards)
            .map_err(|e| Error::internal(format!("encoding the shards: {e}")))?;
    }
    let text = serde_json::to_vec_pretty(&metadata)
        .map_err(|e| Error::internal(format!("encoding {METADATA}: {e}")))?;
    std::fs::write(out.join(METADATA), text).map_err(|e| Error::input(format!("{METADATA}: {e}")))
}

type Builder = tar::Builder<zstd::Encoder<'static, HashingWriter<File>>>;

/// v2's shards as they are written: one archive open at a time, closed once its files
/// reach the shard size.
struct Shards {
    out: PathBuf,
    level: i32,
    size: u64,
    open: Option<OpenShard>,
    done: Vec<ShardEntry>,
}

struct OpenShard {
    name: String,
    tar: Builder,
    first_key: String,
    last_key: String,
    objects: u64,
    bytes: u64,
}

impl Shards {
    fn new(out: &Path, level: i32, size: u64) -> Self {
        Self {
            out: out.to_path_buf(),
            level,
            size,
            open: None,
            done: Vec::new(),
        }
    }

    /// The archive the file `key` goes into (a new shard when none is open).
    fn before(&mut self, key: &str) -> Result<&mut Builder> {
        if self.open.is_none() {
            let name = format!("state-{:04}.tar.zst", self.done.len());
            let tar = open_archive(&self.out.join(&name), self.level)?;
            self.open = Some(OpenShard {
                name,
                tar,
                first_key: key.to_owned(),
                last_key: key.to_owned(),
                objects: 0,
                bytes: 0,
            });
        }
        match self.open.as_mut() {
            Some(open) => Ok(&mut open.tar),
            None => Err(Error::internal("no shard open")),
        }
    }

    /// The file `key` of `size` bytes went in: the shard closes once it is full.
    fn after(&mut self, key: &str, size: u64) -> Result<()> {
        let full = match self.open.as_mut() {
            Some(open) => {
                open.last_key = key.to_owned();
                open.objects += 1;
                open.bytes += size;
                open.bytes >= self.size
            }
            None => return Err(Error::internal("no shard open")),
        };
        if full {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(open) = self.open.take() {
            let artifact = close_archive(&self.out.join(&open.name), open.tar)?;
            self.done.push(ShardEntry {
                name: open.name,
                sha256: artifact.sha256,
                size: artifact.size,
                first_key: open.first_key,
                last_key: open.last_key,
                objects: open.objects,
            });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<ShardEntry>> {
        self.close()?;
        Ok(self.done)
    }
}

/// The shards as one artifact: their sizes summed, and the SHA-256 of their SHA-256s,
/// one hex digest a line (what restore's receipt records for them).
fn combined(shards: &[ShardEntry]) -> Artifact {
    let mut hasher = Sha256::new();
    for shard in shards {
        hasher.update(format!("{}\n", shard.sha256));
    }
    Artifact {
        sha256: hex::encode(hasher.finalize()),
        size: shards.iter().map(|s| s.size).sum(),
    }
}

#[derive(Debug, Default)]
struct Tally {
    files: u64,
    directories: u64,
    bytes: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    Directory,
    File,
}

/// Calls `visit` with every directory and regular file under `dir` (paths relative to the
/// tree's root, `at` being `dir`'s), depth first, in byte order of the keys (a directory
/// sorts as its name and a `/`, so `a-b` and `a.txt` come before `a/x`, as S3 lists them
/// and as shards' key ranges need); anything else is an `InputError` naming it. Hand-written rather than
/// a directory-walking crate: it is this short, and the order and refusals are the
/// contract's.
fn walk(root: &Path, at: &Path, visit: &mut dyn FnMut(&Path, Kind) -> Result<()>) -> Result<()> {
    let dir = root.join(at);
    let read = |e: io::Error| Error::input(format!("{}: {e}", dir.display()));
    let mut names: Vec<(Vec<u8>, std::ffi::OsString)> = std::fs::read_dir(&dir)
        .map_err(read)?
        .map(|entry| {
            let entry = entry?;
            let mut sort_key = entry.file_name().as_encoded_bytes().to_vec();
            if entry.file_type()?.is_dir() {
                sort_key.push(b'/');
            }
            Ok((sort_key, entry.file_name()))
        })
        .collect::<io::Result<_>>()
        .map_err(read)?;
    names.sort();
    for (_, name) in names {
        let relative = at.join(&name);
        let path = root.join(&relative);
        let kind = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())))?
            .file_type();
        if kind.is_dir() {
            visit(&relative, Kind::Directory)?;
            walk(root, &relative, visit)?;
        } else if kind.is_file() {
            visit(&relative, Kind::File)?;
        } else {
            return Err(Error::input(format!(
                "{}: only directories and regular files can be backed up (a restore refuses links, devices and the like)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The archive key of `relative`, checked as restore checks it.
fn key_of(relative: &Path) -> Result<String> {
    let name = relative.to_str().ok_or_else(|| {
        Error::input(format!(
            "{}: the name is not UTF-8, which S3 keys must be",
            relative.display()
        ))
    })?;
    RelativeKey::parse(name)
        .map_err(|e| Error::input(format!("{}: cannot be a key: {e}", relative.display())))?;
    Ok(name.to_owned())
}

/// Appends one POSIX entry: a ustar header, preceded by a pax `path` record when the name
/// does not fit ustar's fields (never GNU extensions: the contract is ustar or pax).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    kind: tar::EntryType,
    name: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_size(size);
    header.set_mtime(0);
    if header.set_path(name).is_err() {
        tar.append_pax_extensions([("path", name.as_bytes())])?;
        // What a reader without pax support would see; pax readers use the record.
        header.set_path(if kind.is_dir() {
            "pax-long-name/"
        } else {
            "pax-long-name"
        })?;
    }
    header.set_cksum();
    tar.append(&header, data)
}

/// Writes a zstd-compressed tar to `path` through `fill`, hashing what lands on disk.
fn write_archive<T>(
    path: &Path,
    level: i32,
    fill: impl FnOnce(&mut Builder) -> Result<T>,
) -> Result<(Artifact, T)> {
    let mut tar = open_archive(path, level)?;
    let filled = fill(&mut tar)?;
    Ok((close_archive(path, tar)?, filled))
}

/// A zstd-compressed tar being written to `path`, hashed as it lands on disk.
fn open_archive(path: &Path, level: i32) -> Result<Builder> {
    let io_error = |e: io::Error| io_error(&path.display().to_string(), e);
    let file = File::create(path).map_err(io_error)?;
    let encoder = zstd::Encoder::new(HashingWriter::new(file), level).map_err(io_error)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    Ok(tar)
}

/// Ends the archive at `path` and returns its size and SHA-256.
fn close_archive(path: &Path, tar: Builder) -> Result<Artifact> {
    let io_error = |e: io::Error| io_error(&path.display().to_string(), e);
    let encoder = tar.into_inner().map_err(io_error)?;
    let mut hashing = encoder.finish().map_err(io_error)?;
    hashing.inner.flush().map_err(io_error)?;
    Ok(Artifact {
        sha256: hex::encode(hashing.hasher.finalize()),
        size: hashing.bytes,
    })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
