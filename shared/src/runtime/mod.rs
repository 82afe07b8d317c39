//! A function's run on Lambda: the phase lifecycle and the heavy phases' steps (one
//! trait), the invocation's deadline, the typed errors Step Functions matches, the AWS
//! clients and the record of their calls, metrics, and the approver's proven identity and
//! sealed approval.

pub mod approval;
pub mod clients;
pub mod deadline;
pub mod error;
pub mod fan_out;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod phase;
