//! restore: verifies the backup while streaming it into the run's staging prefix
//! `_staging/<run_id>/`, and optionally stages the control-plane bundle.
//!
//! Contract breaches fail with `ContractError`, hash or size mismatches with
//! `IntegrityError`, each naming the artifact and entry. A failed restore leaves a
//! failed receipt, never a success one; a re-run empties the staging prefix first, so
//! it ends exactly where an uninterrupted run would.

pub mod staging;

use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use drpilot_shared::backup::{self, artifact_uri, BackupMetadata, STATE};
use drpilot_shared::details::{ControlPlaneStaged, RestoreDetails};
use drpilot_shared::error::decode_slice;
use drpilot_shared::objects::put_json;
use drpilot_shared::objects::{delete_prefix, open};
use drpilot_shared::phase::{self, Outcome, PhaseRun, Rerun};
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::receipt;
use drpilot_shared::run::{PhaseOutput, PhaseRequest, RunContext};
use drpilot_shared::s3uri::RelativeKey;
use drpilot_shared::{AwsClients, Error, Result, S3Uri};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::info;

use crate::staging::{pump_body, ChannelSink, EntryMessage, Tuning, Uploader};
use drpilot_shared::archive::{unpack, ArchiveReport, RESERVED_PREFIX};

pub struct Restore {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
    pub tuning: Tuning,
}

impl Restore {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("restore");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            clients,
            profiles,
            tuning: Tuning::from_env(),
        }
    }

    pub async fn handle(&self, request: PhaseRequest) -> Result<PhaseOutput> {
        phase::run(
            &request,
            &self.clients.s3,
            &self.profiles,
            Rerun::StartOver,
            async |ctx: &PhaseRun<'_>| {
                let details = self.restore(ctx.run, ctx.profile).await?;
                info!(objects = details.objects, bytes = details.bytes, "restored");
                Ok(Outcome::Done(details))
            },
        )
        .await
    }

    async fn restore(&self, run: &RunContext, profile: &Profile) -> Result<RestoreDetails> {
        let s3 = &self.clients.s3;
        let started = Utc::now();
        let (backup, meta) = backup::inspect(s3, &run.backup.uri).await?;
        backup::check_sizes(s3, &backup.uri, &meta).await?;
        let staging = profile.target.staging(&run.run_id)?;
        let dry_run = run.input.dry_run;
        let cleared = if dry_run {
            0
        } else {
            delete_prefix(s3, &staging).await?
        };

        // A dry run also checks what validate would: the archive's files against the
        // manifests.
        let (manifests, state) = if dry_run {
            let (manifests, state, _) =
                backup::verify_archives(s3, &backup.uri, &meta, None).await?;
            (manifests, state)
        } else {
            let manifests = backup::verify_manifests(s3, &backup.uri, &meta).await?;
            (
                manifests,
                self.stage_state(&backup.uri, &meta, &staging).await?,
            )
        };
        let control_plane = match &profile.control_plane {
            Some(cp) => Some(
                self.stage_control_plane(&cp.pointer, &staging, dry_run)
                    .await?,
            ),
            None => None,
        };
        // At least a millisecond: the throughput divides by it.
        let seconds = receipt::seconds(Utc::now() - started).max(0.001);
        Ok(RestoreDetails {
            backup_uri: backup.uri,
            backup_id: meta.backup_id,
            backup_created_at: meta.created_at,
            git_sha: backup.git_sha,
            staging,
            dry_run,
            objects: state.files,
            directories: state.directories,
            bytes: state.bytes,
            archive_bytes: state.archive_bytes,
            archive_sha256: state.archive_sha256,
            manifests_sha256: manifests.archive_sha256,
            manifest_files: manifests.files,
            previously_staged_objects_removed: cleared,
            control_plane,
            seconds,
            megabytes_per_second: state.bytes as f64 / 1_048_576.0 / seconds,
        })
    }

    async fn open(&self, uri: &S3Uri) -> Result<ByteStream> {
        Ok(open(&self.clients.s3, uri).await?.0)
    }

    async fn stage_state(
        &self,
        backup: &S3Uri,
        meta: &BackupMetadata,
        staging: &S3Uri,
    ) -> Result<ArchiveReport> {
        let uri = artifact_uri(backup, STATE)?;
        let (reader, pump) = pump_body(self.open(&uri).await?, uri.to_string());
        let (tx, rx) = mpsc::channel(16);
        let expected = meta.artifact(STATE).clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            unpack(STATE, reader, &expected, &mut ChannelSink { tx })
        });
        let mut uploader = Uploader::new(self.clients.s3.clone(), staging.clone(), self.tuning);
        let uploaded = uploader.run(rx).await;
        let unpacked = unpacker.await.map_err(Error::from)?;
        pump.abort();
        match (unpacked, uploaded) {
            (Ok(report), Ok(())) => Ok(report),
            // The unpacker only stops on its own account when the uploader failed first.
            (Err(e), Err(upload)) if staging::UploaderStopped::is_cause_of(&e) => Err(upload),
            (Err(e), _) => Err(e),
            (Ok(_), Err(upload)) => Err(upload),
        }
    }

    /// The control-plane pointer, checked, and the staging key its bundle goes to.
    async fn control_plane_pointer(
        &self,
        pointer_uri: &S3Uri,
    ) -> Result<(ControlPlanePointer, RelativeKey)> {
        let bytes = backup::read_small(&self.clients.s3, pointer_uri, 64 << 10).await?;
        let pointer: ControlPlanePointer =
            decode_slice(&format!("control-plane pointer {pointer_uri}"), &bytes)
                .map_err(|e| Error::contract(e.to_string()).with_source(e))?;
        if !backup::is_sha256_hex(&pointer.bundle_sha256) {
            return Err(Error::contract(format!(
                "{pointer_uri}: bundle_sha256: expected 64 lowercase hex digits, got {:?}",
                pointer.bundle_sha256
            )));
        }
        let file_name = pointer
            .bundle_uri
            .key
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("bundle");
        let key = RelativeKey::parse(&format!("{RESERVED_PREFIX}{file_name}"))
            .map_err(|e| Error::contract(format!("{pointer_uri}: bundle_uri: {e}")))?;
        Ok((pointer, key))
    }

    /// Fetches the control-plane pointer, streams the bundle it names into
    /// `_staging/<run_id>/_control-plane/`, and commits it only if its SHA-256 matches.
    async fn stage_control_plane(
        &self,
        pointer_uri: &S3Uri,
        staging: &S3Uri,
        dry_run: bool,
    ) -> Result<ControlPlaneStaged> {
        let (pointer, key) = self.control_plane_pointer(pointer_uri).await?;
        let (mut body, declared_size) = open(&self.clients.s3, &pointer.bundle_uri).await?;
        let (tx, rx) = mpsc::channel(16);
        let mut uploader = Uploader::new(self.clients.s3.clone(), staging.clone(), self.tuning);
        let upload = async {
            if dry_run {
                drop(rx);
                Ok(())
            } else {
                uploader.run(rx).await
            }
        };
        let feed = async {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            if !dry_run {
                send(
                    &tx,
                    EntryMessage::Begin {
                        key: key.clone(),
                        size: declared_size,
                    },
                )
                .await?;
            }
            while let Some(chunk) = body
                .try_next()
                .await
                .map_err(|e| Error::retryable(format!("reading {}: {e}", pointer.bundle_uri)))?
            {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                if !dry_run {
                    send(&tx, EntryMessage::Data(chunk)).await?;
                }
            }
            let digest: [u8; 32] = hasher.finalize().into();
            if hex::encode(digest) != pointer.bundle_sha256 {
                // Closing without `End` abandons the upload: nothing is committed.
                drop(tx);
                return Err(Error::integrity(format!(
                    "control-plane bundle {}: sha256 is {}, {pointer_uri} says {}",
                    pointer.bundle_uri,
                    hex::encode(digest),
                    pointer.bundle_sha256
                )));
            }
            if !dry_run {
                send(&tx, EntryMessage::End { sha256: digest }).await?;
            }
            drop(tx);
            Ok(size)
        };
        let (fed, uploaded) = tokio::join!(feed, upload);
        let size = fed?;
        uploaded?;
        if !dry_run {
            let staged_pointer = staging
                .join(&format!("{RESERVED_PREFIX}current.json"))
                .map_err(|e| Error::contract(e.to_string()))?;
            put_json(&self.clients.s3, &staged_pointer, &pointer).await?;
        }
        Ok(ControlPlaneStaged {
            pointer: pointer_uri.clone(),
            bundle_uri: pointer.bundle_uri,
            bundle_sha256: pointer.bundle_sha256,
            bundle_bytes: size,
            git_sha: pointer.git_sha,
            image_ref_digest: pointer.image_ref_digest,
            staged_as: (!dry_run).then(|| format!("{}{}", staging.key, key)),
        })
    }
}

async fn send(tx: &mpsc::Sender<EntryMessage>, message: EntryMessage) -> Result<()> {
    tx.send(message)
        .await
        .map_err(|_| staging::UploaderStopped::error())
}

/// `<prefix>/control-plane/current.json` (docs/contracts.md, profile).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlPlanePointer {
    pub bundle_uri: S3Uri,
    pub bundle_sha256: String,
    pub created_at: DateTime<Utc>,
    pub git_sha: String,
    pub image_ref_digest: String,
}
