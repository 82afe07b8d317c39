//! An example verifier for `lambda` components (the "decode a sample" step of a restore
//! test): picks a sample of the backup's manifest entries, reads each staged object,
//! checks its size and SHA-256 against the manifest and that a `.json` object decodes as
//! JSON, and answers `{"status": "passed|failed", "details": {...}}` as drpilot's
//! `lambda` kind expects. Memory stays flat: the manifests stream through the same
//! bounded sorter validate uses, the sample is a fixed-size reservoir, and each object is
//! hashed as it streams.

use drpilot_shared::archive::unpack;
use drpilot_shared::backup::{self, MANIFESTS};
use drpilot_shared::manifest::{ExternalSort, ManifestCollector, ManifestEntry, SORT_CHUNK};
use drpilot_shared::objects::{open, pump_body};
use drpilot_shared::{AwsClients, Error, Result, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;

/// What the components phase sends (see the `lambda` kind).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct VerifyRequest {
    pub run_id: String,
    pub component: String,
    pub staging: S3Uri,
    pub backup: backup::BackupRef,
    #[serde(default)]
    pub parameters: Value,
    #[serde(default)]
    pub mode: Option<Value>,
}

/// The verdict drpilot reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub status: String,
    pub details: Value,
}

/// Objects checked when the parameters do not say (`{"sample": N}`).
pub const DEFAULT_SAMPLE: usize = 50;

pub struct SampleVerifier {
    pub clients: AwsClients,
}

impl SampleVerifier {
    pub fn new(clients: AwsClients) -> Self {
        Self {
            clients: clients.for_function("sample-verifier"),
        }
    }

    pub async fn handle(&self, request: VerifyRequest) -> Result<Verdict> {
        let size = match request.parameters.get("sample") {
            None => DEFAULT_SAMPLE,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    Error::input(format!("parameters.sample: expected 1 to 10000, got {v}"))
                })? as usize,
        };
        let sample = self.sample(&request, size).await?;
        let mut problems = Vec::new();
        let mut decoded = 0u64;
        for entry in &sample {
            match self.check(&request.staging, entry).await? {
                Ok(json) => decoded += u64::from(json),
                Err(problem) => problems.push(json!({"key": entry.key, "problem": problem})),
            }
        }
        let status = if problems.is_empty() {
            "passed"
        } else {
            "failed"
        };
        Ok(Verdict {
            status: status.to_owned(),
            details: json!({
                "sampled": sample.len(),
                "verified": sample.len() - problems.len(),
                "json_decoded": decoded,
                "problems": problems.iter().take(20).collect::<Vec<_>>(),
            }),
        })
    }

    /// A reservoir sample of `size` manifest entries, spread over the whole backup and the
    /// same for the same run (the choice is seeded by the run id).
    async fn sample(&self, request: &VerifyRequest, size: usize) -> Result<Vec<ManifestEntry>> {
        let s3 = &self.clients.s3;
        let (backup, meta) = backup::inspect(s3, &request.backup.uri).await?;
        let uri = backup
            .uri
            .join(MANIFESTS)
            .map_err(|e| Error::contract(e.to_string()))?;
        let (body, _) = open(s3, &uri).await?;
        let (reader, pump) = pump_body(body, uri.to_string());
        let expected = meta.artifact(MANIFESTS).clone();
        let seed = u64::from_le_bytes(
            Sha256::digest(request.run_id.as_bytes())[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let picked = tokio::task::spawn_blocking(move || -> Result<Vec<ManifestEntry>> {
            let mut collector = ManifestCollector {
                sorter: ExternalSort::new(SORT_CHUNK)?,
                manifests: 0,
                range: drpilot_shared::s3uri::KeyRange::all(),
            };
            unpack(MANIFESTS, reader, &expected, &mut collector)?;
            let mut reservoir = Vec::with_capacity(size);
            let mut rng = seed | 1;
            for (seen, entry) in collector.sorter.finish()?.enumerate() {
                let entry = entry?;
                if reservoir.len() < size {
                    reservoir.push(entry);
                    continue;
                }
                // xorshift: enough to spread a sample, and reproducible.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let slot = (rng % (seen as u64 + 1)) as usize;
                if slot < size {
                    reservoir[slot] = entry;
                }
            }
            Ok(reservoir)
        })
        .await??;
        pump.await?;
        Ok(picked)
    }

    /// `Ok(Ok(decoded_as_json))`, `Ok(Err(problem))`, or an error reading it.
    async fn check(
        &self,
        staging: &S3Uri,
        entry: &ManifestEntry,
    ) -> Result<std::result::Result<bool, String>> {
        let uri = staging
            .join(&entry.key)
            .map_err(|e| Error::contract(e.to_string()))?;
        let object = self
            .clients
            .s3
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .send()
            .await;
        let object = match object {
            Ok(object) => object,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Ok(Err("not staged".into()))
            }
            Err(err) => return Err(Error::from_sdk(&format!("GetObject {uri}"), err)),
        };
        let (mut reader, pump) = pump_body(object.body, uri.to_string());
        let is_json = entry.key.ends_with(".json");
        let (digest, size, json_ok) =
            tokio::task::spawn_blocking(move || -> Result<(String, u64, bool)> {
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                let mut kept = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = reader
                        .read(&mut buf)
                        .map_err(|e| Error::retryable(format!("reading {e}")))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    size += n as u64;
                    // Decoding needs the whole document; JSON objects here are small.
                    if is_json && kept.len() < (16 << 20) {
                        kept.extend_from_slice(&buf[..n]);
                    }
                }
                let json_ok = !is_json || serde_json::from_slice::<Value>(&kept).is_ok();
                Ok((hex::encode(hasher.finalize()), size, json_ok))
            })
            .await??;
        pump.await?;
        Ok(if size != entry.size {
            Err(format!("size {size}, manifest says {}", entry.size))
        } else if digest != entry.sha256 {
            Err(format!("sha256 {digest}, manifest says {}", entry.sha256))
        } else if !json_ok {
            Err("does not decode as JSON".into())
        } else {
            Ok(is_json)
        })
    }
}
