//! drpilot's shared core: what every phase Lambda and the CLI use.
//!
//! Four folders, in the order a run meets them:
//!
//! - [`model`]: what a run is, as types — [`input`] (execution input,
//!   triggers, names, the promotion decision), [`stage`] (a drill's phases, a failback's
//!   steps and the states an operator follows), [`time`], [`s3uri`] (locations, keys and key ranges that cannot escape
//!   their prefix), [`profile`], [`component`] (databases and services restored beside
//!   the data), [`details`] (what each phase records), [`receipt`] (a phase's receipt and
//!   how it ended), [`record`] (the run record and its executions), [`summary`] (the run
//!   on one page), [`run`] (what travels between phases), [`resume`] (what a phase needs
//!   done before it), [`failback`] (returning to the primary site) and [`readiness`].
//! - [`store`]: where those records live in S3 — the receipts store itself
//!   ([`store::ReceiptStore`]), [`objects`] (JSON, conditional writes, bulk deletes,
//!   uploads), [`lock`] (the run lock), [`published`] (the publish pointer), [`history`]
//!   (what the evidence's object versions say) and [`fence`] (what stops a fanned-out
//!   run's children once teardown ends it).
//! - [`data`]: the data path — [`backup`] (the contract), [`archive`] (its archives as
//!   streams), [`manifest`] (manifests as sorted streams), [`listing`] and [`parity`]
//!   (sorted listings and their comparison), [`plan`] (the key ranges the heavy phases fan
//!   out over), [`copy`] (server-side copies), [`budget`] (the request pace S3's
//!   per-prefix limits allow) and [`restored`] (deleting what components restored).
//! - [`runtime`]: a function's run on Lambda — [`phase`] (the lifecycle and the entry
//!   point), [`fan_out`] (the trait the four heavy phases implement: whole, prepare,
//!   range, reduce), [`deadline`], [`error`] (the error names Step Functions matches),
//!   [`clients`], [`ledger`] (the record of every AWS call, for the permission check),
//!   [`metrics`], [`identity`] (the approver's proven principal) and [`approval`] (the
//!   sealed approval).
//!
//! The folders group modules by what they do, not by layer: a type's module may use
//! another folder's. What holds is that no two modules depend on each other, directly or
//! through others (`scripts/check-module-cycles.py`, run by `make lint`). Every module is
//! also re-exported at the crate root, so a path names the concept
//! (`drpilot_shared::receipt`), not its folder.

pub mod data;
pub mod model;
pub mod runtime;
pub mod store;

pub use data::{archive, backup, budget, copy, listing, manifest, parity, plan, restored};
pub use model::{
    component, details, failback, input, profile, readiness, receipt, record, resume, run, s3uri,
    stage, summary, time,
};
pub use runtime::{approval, clients, deadline, error, fan_out, identity, ledger, metrics, phase};
pub use store::{fence, history, lock, objects, published};

pub use clients::AwsClients;
pub use error::{Error, ErrorKind, Result};
pub use input::{Mode, RunInput};
pub use profile::Profile;
pub use s3uri::S3Uri;
pub use stage::Phase;
