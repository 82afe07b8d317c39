//! S3 locations: `s3://bucket/key` URIs, prefixes, and relative keys that cannot escape
//! the prefix they are joined to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a URI or key was refused. The caller adds which field or entry it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("expected an s3://bucket/key URI, got {0:?}")]
    NotS3Uri(String),
    #[error("bucket name {0:?} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")]
    BadBucket(String),
    #[error("key {key:?} is not allowed: {why}")]
    BadKey { key: String, why: &'static str },
}

/// An S3 bucket and a key (or key prefix) inside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Result<Self, LocationError> {
        let bucket = bucket.into();
        validate_bucket(&bucket)?;
        Ok(Self {
            bucket,
            key: key.into(),
        })
    }

    /// This location read as a prefix: its key ends with `/` (unless it is the bucket root),
    /// so `root/a` never matches `root/ab/...`.
    pub fn as_prefix(&self) -> S3Uri {
        S3Uri {
            bucket: self.bucket.clone(),
            key: as_prefix(&self.key),
        }
    }

    /// `self` as a prefix, joined with a checked relative key.
    pub fn join(&self, relative: &str) -> Result<S3Uri, LocationError> {
        let rel = RelativeKey::parse(relative)?;
        Ok(S3Uri {
            bucket: self.bucket.clone(),
            key: format!("{}{}", as_prefix(&self.key), rel.as_str()),
        })
    }

    /// The object at `relative` below this prefix, where `relative` came from listing this
    /// very prefix: unlike [`Self::join`] it takes any key S3 holds there (a folder marker
    /// `dir/`, an `a//b`), which S3 treats literally and which cannot leave the prefix.
    /// Keys from archives and manifests go through [`Self::join`].
    pub fn listed(&self, relative: &str) -> S3Uri {
        S3Uri {
            bucket: self.bucket.clone(),
            key: format!("{}{relative}", as_prefix(&self.key)),
        }
    }

    /// The part of `key` below this prefix, if `key` lies under it.
    pub fn strip<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(as_prefix(&self.key).as_str())
    }
}

/// `key` with exactly one trailing `/`, or empty for the bucket root.
pub fn as_prefix(key: &str) -> String {
    let trimmed = key.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

impl FromStr for S3Uri {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| LocationError::NotS3Uri(s.to_owned()))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(LocationError::NotS3Uri(s.to_owned()));
        }
        validate_bucket(bucket)?;
        if key.contains('\0') || key.chars().any(char::is_control) {
            return Err(LocationError::BadKey {
                key: key.to_owned(),
                why: "control characters",
            });
        }
        if key.split('/').any(|c| c == "..") {
            return Err(LocationError::BadKey {
                key: key.to_owned(),
                why: "a `..` component",
            });
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl Serialize for S3Uri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for S3Uri {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

fn validate_bucket(bucket: &str) -> Result<(), LocationError> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if (3..=63).contains(&bucket.len()) && ok_chars && ok_ends && !bucket.contains("..") {
        Ok(())
    } else {
        Err(LocationError::BadBucket(bucket.to_owned()))
    }
}

/// A key relative to some prefix: no leading `/`, no empty, `.` or `..` component, no
/// control characters, at most 1024 bytes. Tar entry names and manifest keys become
/// these before anything is written, so neither can escape the prefix they land under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelativeKey(String);

impl RelativeKey {
    pub fn parse(key: &str) -> Result<Self, LocationError> {
        let bad = |why| {
            Err(LocationError::BadKey {
                key: key.to_owned(),
                why,
            })
        };
        if key.is_empty() {
            return bad("it is empty");
        }
        if key.starts_with('/') {
            return bad("it is absolute");
        }
        if key.len() > 1024 {
            return bad("it is longer than 1024 bytes");
        }
        if key.chars().any(char::is_control) {
            return bad("it has control characters");
        }
        if key.contains('\\') {
            return bad("it has a backslash");
        }
        for component in key.split('/') {
            match component {
                "" => return bad("it has an empty path component"),
                "." => return bad("it has a `.` component"),
                ".." => return bad("it has a `..` component"),
                _ => {}
            }
        }
        Ok(Self(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelativeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Relative keys after `after` (exclusive) up to `through` (inclusive), in S3's byte
/// order; an absent bound is open.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRange {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub through: Option<String>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn is_all(&self) -> bool {
        self.after.is_none() && self.through.is_none()
    }

    pub fn contains(&self, key: &str) -> bool {
        !self.before(key) && !self.past(key)
    }

    /// `key` comes before the range.
    pub fn before(&self, key: &str) -> bool {
        self.after
            .as_deref()
            .is_some_and(|after| key.as_bytes() <= after.as_bytes())
    }

    /// `key` comes after the range: a sorted stream can stop here.
    pub fn past(&self, key: &str) -> bool {
        self.through
            .as_deref()
            .is_some_and(|through| key.as_bytes() > through.as_bytes())
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.after {
            Some(after) => write!(f, "({after:?}, ")?,
            None => f.write_str("(start, ")?,
        }
        match &self.through {
            Some(through) => write!(f, "{through:?}]"),
            None => f.write_str("end)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_key() {
        let uri: S3Uri = "s3://my-bucket/a/b/c.json".parse().unwrap();
        assert_eq!(uri.bucket, "my-bucket");
        assert_eq!(uri.key, "a/b/c.json");
        assert_eq!(uri.to_string(), "s3://my-bucket/a/b/c.json");
        let root: S3Uri = "s3://my-bucket".parse().unwrap();
        assert_eq!(root.key, "");
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "http://b/k",
            "s3://",
            "s3:///k",
            "s3://UPPER/k",
            "s3://ab/k",
            "s3://-bucket/k",
            "s3://a..b/k",
            "s3://bucket/a/../b",
            "s3://bucket/a\nb",
        ] {
            assert!(bad.parse::<S3Uri>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn join_cannot_escape_the_prefix() {
        let base: S3Uri = "s3://bucket/_staging/run-1".parse().unwrap();
        assert_eq!(
            base.join("a/b.json").unwrap().key,
            "_staging/run-1/a/b.json"
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
        ] {
            assert!(base.join(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn prefixes_do_not_bleed_into_siblings() {
        let a: S3Uri = "s3://bucket/root/a".parse().unwrap();
        assert_eq!(a.strip("root/a/x"), Some("x"));
        assert_eq!(a.strip("root/ab/x"), None);
        assert_eq!(as_prefix("root/"), "root/");
        assert_eq!(as_prefix(""), "");
        assert_eq!(as_prefix("/"), "");
    }

    #[test]
    fn unicode_keys_are_fine() {
        assert!(RelativeKey::parse("données/naïve ☃.json").is_ok());
    }
}
