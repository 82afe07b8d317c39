//! A streaming ZIP writer (PKWARE APPNOTE 6.3: deflate, data descriptors, no ZIP64) for
//! `drpilot evidence`.
//!
//! Why not the `zip` crate: even with `default-features = false` and only its
//! `deflate-flate2` feature, `zip` (checked at 9.9.0) depends on `zeroize` with its
//! `derive` feature unconditionally, and every phase function builds `zeroize` without
//! it, so the functions and the workspace would compile `zeroize` (and `syn` for its
//! derive) twice (scripts/check-one-build.sh). Deflate (flate2) and CRC-32 (crc32fast)
//! are already in every build through the AWS SDK; what is left is the container, whose
//! records are fixed by the format. Python's `zipfile` reads and tests the result in
//! `cli/tests/report.rs`.

use std::io::{self, Write};

use flate2::write::DeflateEncoder;
use flate2::Compression;

/// Past these, an archive needs ZIP64, which this writer does not write.
const MAX_ENTRIES: usize = u16::MAX as usize;
const MAX_SIZE: u64 = u32::MAX as u64;

struct Entry {
    name: String,
    crc: u32,
    compressed: u32,
    size: u32,
    offset: u32,
    time: u16,
    date: u16,
}

/// Writes entries one after another; [`ZipWriter::finish`] writes the central directory.
pub struct ZipWriter<W: Write> {
    out: Counting<W>,
    entries: Vec<Entry>,
    open: Option<Open>,
    time: u16,
    date: u16,
}

struct Open {
    name: String,
    offset: u64,
    crc: crc32fast::Hasher,
    size: u64,
    deflate: DeflateEncoder<Vec<u8>>,
}

impl<W: Write> ZipWriter<W> {
    pub fn new(out: W, at: chrono::DateTime<chrono::Utc>) -> Self {
        use chrono::{Datelike, Timelike};
        // MS-DOS time and date, as every ZIP entry stores them.
        let time = ((at.hour() << 11) | (at.minute() << 5) | (at.second() / 2)) as u16;
        let date = (((at.year().clamp(1980, 2107) - 1980) as u32) << 9 | at.month() << 5 | at.day())
            as u16;
        Self {
            out: Counting {
                inner: out,
                written: 0,
            },
            entries: Vec::new(),
            open: None,
            time,
            date,
        }
    }

    /// Starts entry `name` (closing the one before). A name an unzip tool could resolve
    /// outside the folder it extracts into (absolute, a `..` or empty segment, a
    /// backslash, a control character) is refused: see [`entry_name`].
    pub fn start_file(&mut self, name: &str) -> io::Result<()> {
        if entry_name(name) != name {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a safe archive entry name"),
            ));
        }
        self.close_entry()?;
        if self.entries.len() >= MAX_ENTRIES {
            return Err(io::Error::other(format!(
                "more than {MAX_ENTRIES} files: the archive would need ZIP64"
            )));
        }
        let offset = self.out.written;
        // Local file header; CRC and sizes follow in the data descriptor (flag bit 3).
        let mut header = Vec::with_capacity(30 + name.len());
        header.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        header.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0 (deflate)
        header.extend_from_slice(&(0x0008u16 | 0x0800).to_le_bytes()); // descriptor, UTF-8 names
        header.extend_from_slice(&8u16.to_le_bytes()); // deflate
        header.extend_from_slice(&self.time.to_le_bytes());
        header.extend_from_slice(&self.date.to_le_bytes());
        header.extend_from_slice(&[0; 12]); // crc, compressed and uncompressed sizes
        header.extend_from_slice(&(name.len() as u16).to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        self.out.write_all(&header)?;
        self.open = Some(Open {
            name: name.to_owned(),
            offset,
            crc: crc32fast::Hasher::new(),
            size: 0,
            deflate: DeflateEncoder::new(Vec::new(), Compression::default()),
        });
        Ok(())
    }

    /// Appends to the open entry; compressed bytes go out as they are produced.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| io::Error::other("no entry started"))?;
        open.crc.update(bytes);
        open.size += bytes.len() as u64;
        open.deflate.write_all(bytes)?;
        let ready = std::mem::take(open.deflate.get_mut());
        self.out.write_all(&ready)
    }

    fn close_entry(&mut self) -> io::Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let tail = open.deflate.finish()?;
        self.out.write_all(&tail)?;
        let compressed = self.out.written - open.offset - 30 - open.name.len() as u64;
        if open.size > MAX_SIZE || compressed > MAX_SIZE || open.offset > MAX_SIZE {
            return Err(io::Error::other(format!(
                "{}: past 4 GiB, the archive would need ZIP64",
                open.name
            )));
        }
        let crc = open.crc.finalize();
        let mut descriptor = Vec::with_capacity(16);
        descriptor.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        descriptor.extend_from_slice(&crc.to_le_bytes());
        descriptor.extend_from_slice(&(compressed as u32).to_le_bytes());
        descriptor.extend_from_slice(&(open.size as u32).to_le_bytes());
        self.out.write_all(&descriptor)?;
        self.entries.push(Entry {
            name: open.name,
            crc,
            compressed: compressed as u32,
            size: open.size as u32,
            offset: open.offset as u32,
            time: self.time,
            date: self.date,
        });
        Ok(())
    }

    /// Closes the last entry, writes the central directory and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.close_entry()?;
        let start = self.out.written;
        for e in &self.entries {
            let mut record = Vec::with_capacity(46 + e.name.len());
            record.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            record.extend_from_slice(&(0x0300u16 | 20).to_le_bytes()); // made by: Unix, 2.0
            record.extend_from_slice(&20u16.to_le_bytes());
            record.extend_from_slice(&(0x0008u16 | 0x0800).to_le_bytes());
            record.extend_from_slice(&8u16.to_le_bytes());
            record.extend_from_slice(&e.time.to_le_bytes());
            record.extend_from_slice(&e.date.to_le_bytes());
            record.extend_from_slice(&e.crc.to_le_bytes());
            record.extend_from_slice(&e.compressed.to_le_bytes());
            record.extend_from_slice(&e.size.to_le_bytes());
            record.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            record.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attributes
            record.extend_from_slice(&(0o100_644u32 << 16).to_le_bytes()); // -rw-r--r--
            record.extend_from_slice(&e.offset.to_le_bytes());
            record.extend_from_slice(e.name.as_bytes());
            self.out.write_all(&record)?;
        }
        let size = self.out.written - start;
        if start > MAX_SIZE || size > MAX_SIZE {
            return Err(io::Error::other("past 4 GiB: the archive would need ZIP64"));
        }
        let count = self.entries.len() as u16;
        let mut end = Vec::with_capacity(22);
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&[0; 4]); // this disk, the directory's disk
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&(size as u32).to_le_bytes());
        end.extend_from_slice(&(start as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.out.write_all(&end)?;
        self.out.inner.flush()?;
        Ok(self.out.inner)
    }
}

/// Counts what goes through (entry offsets and sizes).
struct Counting<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Counting<W> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// `name` as a safe archive entry name: each `/`-separated segment that is empty, `.` or
/// `..`, and every backslash or control character, is percent-encoded, so extracting the
/// archive can only ever write below its own folder (S3 keys, which the entries are named
/// from, may hold any of them). Safe names come back unchanged.
pub fn entry_name(name: &str) -> String {
    name.split('/')
        .map(|segment| match segment {
            "" => "%2F".to_owned(),
            "." => "%2E".to_owned(),
            ".." => "%2E%2E".to_owned(),
            s => s
                .chars()
                .map(|c| match c {
                    '\\' => "%5C".to_owned(),
                    c if c.is_control() => format!("%{:02X}", u32::from(c)),
                    c => c.to_string(),
                })
                .collect(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One CSV record (RFC 4180): fields with a comma, quote or line break are quoted, quotes
/// doubled; lines end in CRLF. A field a spreadsheet would run as a formula (starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return, and not a plain number) is prefixed
/// with `'` (OWASP's CSV injection advice): the index holds names and reasons anyone who
/// can start a run may write.
pub fn csv_line(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| {
            let f = &if f.starts_with(['=', '+', '-', '@', '\t', '\r']) && f.parse::<f64>().is_err()
            {
                format!("'{f}")
            } else {
                f.clone()
            };
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        let line = csv_line(&["a".into(), "b,c".into(), "say \"hi\"".into(), String::new()]);
        assert_eq!(line, "a,\"b,c\",\"say \"\"hi\"\"\",\r\n");
    }

    #[test]
    fn formula_cells_are_neutralised_and_numbers_kept() {
        let line = csv_line(&[
            "=HYPERLINK(\"http://x\")".into(),
            "@SUM(A1)".into(),
            "+1+1".into(),
            "-5".into(),
            "-2.5".into(),
            "ok".into(),
        ]);
        assert_eq!(
            line,
            "\"'=HYPERLINK(\"\"http://x\"\")\",'@SUM(A1),'+1+1,-5,-2.5,ok\r\n"
        );
    }

    #[test]
    fn entry_names_cannot_leave_the_archive_folder() {
        assert_eq!(entry_name("runs/r1/phases/a.json"), "runs/r1/phases/a.json");
        assert_eq!(
            entry_name("runs/r1/../../etc/x"),
            "runs/r1/%2E%2E/%2E%2E/etc/x"
        );
        assert_eq!(entry_name("/abs"), "%2F/abs");
        assert_eq!(entry_name("a//b"), "a/%2F/b");
        assert_eq!(entry_name("a\\..\\b"), "a%5C..%5Cb");
        let mut zip = ZipWriter::new(Vec::new(), chrono::Utc::now());
        assert!(zip.start_file("runs/../x").is_err());
        assert!(zip.start_file("runs/ok.json").is_ok());
    }

    #[test]
    fn an_archive_ends_with_its_directory() {
        let mut zip = ZipWriter::new(Vec::new(), chrono::Utc::now());
        zip.start_file("a.txt").unwrap();
        zip.write_all(b"hello hello hello").unwrap();
        zip.start_file("dir/b.json").unwrap();
        zip.write_all(b"{}").unwrap();
        let bytes = zip.finish().unwrap();
        assert_eq!(&bytes[..4], b"PK\x03\x04");
        let end = &bytes[bytes.len() - 22..];
        assert_eq!(&end[..4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
    }
}
