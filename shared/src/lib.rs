//! drpilot's shared core: what every phase Lambda and the CLI use.
//!
//! One concept per module: [`phase`] (the phase lifecycle and the Lambda entry point), [`deadline`] (how long an invocation may still work),
//! [`input`] (execution input, trigger normalisation, names, the promotion decision),
//! [`profile`], [`component`] (databases and services restored beside the data), [`receipt`] (receipts and the run summary), [`details`] (what each phase
//! records, as types), [`run`] (what travels between phases), [`restored`] (deleting what components restored), [`resume`] (a run across executions: their names,
//! the run record, what a phase needs done before it), [`lock`] (the run lock),
//! [`plan`] (the key ranges the heavy phases fan out over, and their partial results),
//! [`fence`] (what stops a fanned-out run's children once teardown ends it),
//! [`objects`] (the S3 access layer: JSON, conditional writes, bulk deletes, uploads),
//! [`backup`] (the backup contract), [`archive`] (reading its archives as streams),
//! [`manifest`] (the manifests and the archive's contents as sorted streams), [`maker`]
//! (making a backup from a directory),
//! [`listing`] and [`parity`] (sorted listings and their comparison), [`copy`] (the
//! server-side copy engine), [`budget`] (the write-request pace S3's per-prefix limit allows), [`published`] (the publish pointer and its generation), [`history`] (what the evidence's object versions say about a run's records),
//! [`failback`] (returning to the primary site: its input, receipts and summary), [`s3uri`]
//! (locations and keys that cannot escape their prefix), [`error`] (the error names Step
//! Functions matches), [`metrics`], [`clients`], [`ledger`] (the record of every AWS call,
//! for the permission check) and [`local`] (the repository, for the local stack's users).

pub mod approval;
pub mod archive;
pub mod backup;
pub mod budget;
pub mod clients;
pub mod component;
pub mod copy;
pub mod deadline;
pub mod details;
pub mod error;
pub mod failback;
pub mod fence;
pub mod history;
pub mod identity;
pub mod input;
pub mod ledger;
pub mod listing;
pub mod local;
pub mod lock;
pub mod maker;
pub mod manifest;
pub mod metrics;
pub mod objects;
pub mod parity;
pub mod phase;
pub mod plan;
pub mod profile;
pub mod published;
pub mod readiness;
pub mod receipt;
pub mod record;
pub mod restored;
pub mod resume;
pub mod run;
pub mod s3uri;
pub mod stage;
pub mod store;
pub mod summary;
pub mod time;

pub use clients::AwsClients;
pub use error::{Error, ErrorKind, Result};
pub use input::{Mode, Phase, RunInput};
pub use profile::Profile;
pub use s3uri::S3Uri;
