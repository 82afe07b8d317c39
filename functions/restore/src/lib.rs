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
use drpilot_shared::backup::{self, artifact_uri, InRange, Shard};
use drpilot_shared::budget::{delete_prefix, RequestBudget};
use drpilot_shared::deadline;
use drpilot_shared::details::{ControlPlaneStaged, RestoreDetails, ShardStaged};
use drpilot_shared::error::decode_slice;
use drpilot_shared::fan_out::{self, FanOutPhase};
use drpilot_shared::objects::{get_json, open, put_json};
use drpilot_shared::phase::{Failed, Outcome, PhaseResult, PhaseRun, Rerun};
use drpilot_shared::plan::{self, PlanItem, RangePass, RangeResult, Reduce};
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::run::{PhaseOutput, PhaseRequest, RunContext, StepOutput};
use drpilot_shared::s3uri::RelativeKey;
use drpilot_shared::stage::Phase;
use drpilot_shared::time;
use drpilot_shared::{AwsClients, Error, Result, S3Uri};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::info;

use crate::staging::{
    pump_body, ChannelSink, DeadlineReached, EntryMessage, Resumable, Resume, Tuning, Uploader,
};
use drpilot_shared::archive::{is_sha256_hex, unpack, ArchiveReport, RESERVED_PREFIX};

/// What restore's preparation found, for the reducer (`ranges/restore/prepared.json`):
/// the receipt's details before any archive was staged.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Prepared {
    details: RestoreDetails,
}

impl Prepared {
    /// The receipt's details once the state is staged.
    fn finish(
        self,
        state: ArchiveReport,
        shards: Vec<ShardStaged>,
        started: DateTime<Utc>,
    ) -> RestoreDetails {
        // At least a millisecond: the throughput divides by it.
        let seconds = time::seconds(Utc::now() - started).max(0.001);
        RestoreDetails {
            objects: state.files,
            directories: state.directories,
            bytes: state.bytes,
            archive_bytes: state.archive_bytes,
            archive_sha256: state.archive_sha256,
            seconds,
            megabytes_per_second: state.bytes as f64 / 1_048_576.0 / seconds,
            shards,
            ..self.details
        }
    }
}

/// Where a range's child stopped (its continuation's cursor): the shards it staged, and
/// the files of the next one staged and the seconds spent on it so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagingCursor {
    staged: Vec<ShardStaged>,
    files: u64,
    seconds: f64,
}

/// How one pass over a state archive ended.
enum Staged {
    Done(ArchiveReport),
    /// At the deadline, with this many of the archive's files staged.
    Stopped {
        files: u64,
    },
}

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

    /// The Lambda's entry: the whole phase, its preparation, one shard's child or the
    /// reducer, as the request says ([`PhaseRequest::step`]).
    pub async fn serve_step(&self, request: PhaseRequest) -> Result<StepOutput> {
        fan_out::serve(self, request).await
    }

    /// The whole phase, its preparation for the fan-out, or its reducer.
    pub async fn handle(&self, request: PhaseRequest) -> Result<PhaseOutput> {
        fan_out::serve_phase(self, request).await
    }

    async fn restore(&self, run: &RunContext, profile: &Profile) -> Result<RestoreDetails> {
        let s3 = &self.clients.s3;
        let started = Utc::now();
        let dry_run = run.input.dry_run;
        let prepared = self.prepare_staging(run, profile).await?;
        // A dry run also checks what validate would: the archive's files against the
        // manifests.
        let state = if dry_run {
            let (backup, meta) = backup::inspect(s3, &run.backup.uri).await?;
            backup::verify_archives(s3, &backup.uri, &meta, None)
                .await?
                .1
        } else {
            let (_, meta) = backup::inspect(s3, &run.backup.uri).await?;
            let mut reports = Vec::new();
            for shard in meta.shards() {
                let budget = RequestBudget::writes_for_run(run.plan.as_ref(), false);
                let staged = self
                    .stage_state(
                        &prepared.details.backup_uri,
                        &shard,
                        &prepared.details.staging,
                        budget,
                        Resume::default(),
                    )
                    .await?;
                match staged {
                    Staged::Done(report) => reports.push(report),
                    Staged::Stopped { .. } => {
                        return Err(Error::internal("a restore without a deadline stopped"))
                    }
                }
            }
            backup::combine(reports)
        };
        Ok(prepared.finish(state, Vec::new(), started))
    }

    /// Everything restore does once, before any state archive: the contract and every
    /// archive's size checked, the run's staging emptied, the manifests verified, the
    /// control-plane bundle staged.
    async fn prepare_staging(&self, run: &RunContext, profile: &Profile) -> Result<Prepared> {
        let s3 = &self.clients.s3;
        let (backup, meta) = backup::inspect(s3, &run.backup.uri).await?;
        backup::check_sizes(s3, &backup.uri, &meta).await?;
        let staging = profile.target.staging(&run.run_id)?;
        let dry_run = run.input.dry_run;
        let cleared = if dry_run {
            0
        } else {
            // A restore of one invocation: no deadline (a staging this large is one
            // that teardown, not a restore, meets).
            delete_prefix(
                s3,
                &staging,
                &RequestBudget::writes_for_run(None, false),
                None,
                &mut (),
            )
            .await?
            .deleted
        };
        let manifests = backup::verify_manifests(s3, &backup.uri, &meta).await?;
        let control_plane = match &profile.control_plane {
            Some(cp) => Some(
                self.stage_control_plane(&cp.pointer, &staging, dry_run)
                    .await?,
            ),
            None => None,
        };
        Ok(Prepared {
            details: RestoreDetails {
                backup_uri: backup.uri,
                backup_id: meta.backup_id,
                backup_created_at: meta.created_at,
                git_sha: backup.git_sha,
                staging,
                dry_run,
                objects: 0,
                directories: 0,
                bytes: 0,
                archive_bytes: 0,
                archive_sha256: String::new(),
                manifests_sha256: manifests.archive_sha256,
                manifest_files: manifests.files,
                previously_staged_objects_removed: cleared,
                control_plane,
                seconds: 0.0,
                megabytes_per_second: 0.0,
                shards: Vec::new(),
            },
        })
    }

    /// One range's child: stages its shards one after the other, refusing a file outside
    /// a shard's range, from where `cursor` says an earlier pass stopped; stops at the
    /// invocation's deadline with where it got to.
    async fn stage_shards(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
        cursor: Option<StagingCursor>,
    ) -> Result<RangePass<Vec<ShardStaged>, StagingCursor>> {
        let staging = ctx.profile.target.staging(&ctx.run.run_id)?;
        let budget = RequestBudget::writes_for_child(&self.clients.s3, ctx.store, ctx.run)?;
        let stop_at = deadline::work_until().map(tokio::time::Instant::into_std);
        let mut cursor = cursor.unwrap_or_default();
        if cursor.staged.len() > item.shards.len() {
            return Err(Error::input(format!(
                "continuation.cursor.staged: {} shards, range {} has {}",
                cursor.staged.len(),
                item.index,
                item.shards.len()
            )));
        }
        let mut progress = 0;
        for shard in &item.shards[cursor.staged.len()..] {
            let started = Utc::now();
            let resume = Resume {
                skip: cursor.files,
                stop_at,
            };
            let staged = self
                .stage_state(
                    &ctx.run.backup.uri.as_prefix(),
                    shard,
                    &staging,
                    budget.clone(),
                    resume,
                )
                .await?;
            let seconds = cursor.seconds + time::seconds(Utc::now() - started);
            match staged {
                Staged::Done(report) => {
                    progress += 1 + report.files.saturating_sub(cursor.files);
                    cursor.staged.push(ShardStaged {
                        name: shard.name.clone(),
                        index: item.index,
                        objects: report.files,
                        directories: report.directories,
                        bytes: report.bytes,
                        archive_bytes: report.archive_bytes,
                        archive_sha256: report.archive_sha256,
                        seconds,
                    });
                    (cursor.files, cursor.seconds) = (0, 0.0);
                }
                Staged::Stopped { files } => {
                    progress += files.saturating_sub(cursor.files);
                    info!(shard = %shard.name, files, "stopped at the deadline");
                    (cursor.files, cursor.seconds) = (files, seconds);
                    return Ok(RangePass::Stopped { cursor, progress });
                }
            }
        }
        Ok(RangePass::Done(cursor.staged))
    }

    /// The receipt's details from the preparation and every shard's result.
    async fn combine_shards(
        &self,
        ctx: &PhaseRun<'_>,
        reduce: &Reduce,
        results: Vec<RangeResult>,
    ) -> Result<RestoreDetails> {
        let uri = plan::prepared_uri(ctx.store, &ctx.run.run_id, Phase::Restore)?;
        let prepared: Prepared = get_json(&self.clients.s3, &uri).await?.ok_or_else(|| {
            Error::internal(format!("restore's preparation left nothing at {uri}"))
        })?;
        let mut shards = Vec::new();
        for result in &results {
            shards.extend(result.details::<Vec<ShardStaged>>()?);
        }
        let reports = shards
            .iter()
            .map(|s| ArchiveReport {
                files: s.objects,
                directories: s.directories,
                bytes: s.bytes,
                archive_bytes: s.archive_bytes,
                archive_sha256: s.archive_sha256.clone(),
            })
            .collect();
        Ok(prepared.finish(backup::combine(reports), shards, reduce.started_at))
    }

    async fn open(&self, uri: &S3Uri) -> Result<ByteStream> {
        Ok(open(&self.clients.s3, uri).await?.0)
    }

    /// Streams one state archive into the staging, every file checked against the
    /// shard's declared range and count, from where `resume` says and until its
    /// deadline.
    async fn stage_state(
        &self,
        backup: &S3Uri,
        shard: &Shard,
        staging: &S3Uri,
        budget: RequestBudget,
        resume: Resume,
    ) -> Result<Staged> {
        let uri = artifact_uri(backup, &shard.name)?;
        let (reader, pump) = pump_body(self.open(&uri).await?, uri.to_string());
        let (tx, rx) = mpsc::channel(16);
        let shard = shard.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            let mut sink = InRange::new(&shard, Resumable::new(ChannelSink { tx }, resume));
            let unpacked = unpack(&shard.name, reader, &shard.artifact(), &mut sink);
            match unpacked {
                Ok(report) => sink.finish(&report).map(|_| Staged::Done(report)),
                Err(e) if DeadlineReached::is_cause_of(&e) => Ok(Staged::Stopped {
                    files: sink.inner().files,
                }),
                Err(e) => Err(e),
            }
        });
        let mut uploader = Uploader::new(self.clients.s3.clone(), staging.clone(), self.tuning)
            .with_budget(budget);
        let uploaded = uploader.run(rx).await;
        let unpacked = unpacker.await.map_err(Error::from)?;
        pump.abort();
        match (unpacked, uploaded) {
            (Ok(staged), Ok(())) => Ok(staged),
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
        if !is_sha256_hex(&pointer.bundle_sha256) {
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

/// Restore's steps: a sharded backup's shards go to the plan's ranges.
impl FanOutPhase for Restore {
    type Details = RestoreDetails;
    type RangeDetails = Vec<ShardStaged>;
    type Cursor = StagingCursor;
    const RERUN: Rerun = Rerun::StartOver;

    fn clients(&self) -> &AwsClients {
        &self.clients
    }

    fn profiles(&self) -> &ProfileSource {
        &self.profiles
    }

    async fn whole(&self, ctx: &PhaseRun<'_>) -> PhaseResult<RestoreDetails> {
        let details = self.restore(ctx.run, ctx.profile).await?;
        info!(objects = details.objects, bytes = details.bytes, "restored");
        Ok(Outcome::Done(details))
    }

    /// The staging emptied and the manifests verified once; the reducer reads what this
    /// found from `ranges/restore/prepared.json`.
    async fn prepare(&self, ctx: &PhaseRun<'_>) -> std::result::Result<(), Failed<RestoreDetails>> {
        let prepared = self.prepare_staging(ctx.run, ctx.profile).await?;
        let uri = plan::prepared_uri(ctx.store, &ctx.run.run_id, Phase::Restore)?;
        put_json(&self.clients.s3, &uri, &prepared).await?;
        Ok(())
    }

    async fn range(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
        cursor: Option<StagingCursor>,
    ) -> Result<RangePass<Vec<ShardStaged>, StagingCursor>> {
        self.stage_shards(ctx, item, cursor).await
    }

    async fn reduce(
        &self,
        ctx: &PhaseRun<'_>,
        reduce: &Reduce,
        results: Vec<RangeResult>,
    ) -> PhaseResult<RestoreDetails> {
        let details = self.combine_shards(ctx, reduce, results).await?;
        info!(
            objects = details.objects,
            bytes = details.bytes,
            shards = details.shards.len(),
            "restored"
        );
        Ok(Outcome::Done(details))
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
