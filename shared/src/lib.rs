//! drpilot's shared core: what every phase Lambda and the CLI use.
//!
//! One concept per module: [`input`] (execution input and trigger normalisation),
//! [`profile`], [`receipt`] (receipts and the run summary), [`lock`] (the run lock),
//! [`backup`] (the backup contract), [`archive`] (reading its archives as streams), [`run`] (what phases pass along), [`s3uri`] (locations and keys that cannot escape their prefix), [`error`] (the error
//! names Step Functions matches), [`clients`], [`ledger`] (the record of every AWS call, for the permission check) and

pub mod archive;
pub mod backup;
pub mod clients;
pub mod details;
pub mod error;
pub mod input;
pub mod ledger;
pub mod listing;
pub mod local;
pub mod lock;
pub mod metrics;
pub mod objects;
pub mod parity;
pub mod phase;
pub mod profile;
pub mod receipt;
pub mod run;
pub mod s3uri;

pub use clients::AwsClients;
pub use error::{Error, ErrorKind, Result};
pub use input::{Mode, Phase, RunInput};
pub use profile::Profile;
pub use s3uri::S3Uri;
