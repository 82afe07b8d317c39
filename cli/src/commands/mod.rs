//! One module per command.

pub mod approve;
pub mod backup;
pub mod evidence;
pub mod failback;
pub mod local;
pub mod readiness;
pub mod receipts;
pub mod report;
pub mod resume;
pub mod runs;
pub mod start;
pub mod status;
