//! What a run is, as types: its input, profile, receipts and records (the few that read or write themselves do it through [`crate::store`]).

pub mod component;
pub mod details;
pub mod failback;
pub mod input;
pub mod profile;
pub mod readiness;
pub mod receipt;
pub mod record;
pub mod resume;
pub mod run;
pub mod s3uri;
pub mod stage;
pub mod summary;
pub mod time;
