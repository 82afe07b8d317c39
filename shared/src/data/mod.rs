//! The data path: the backup contract and its archives, listings and their comparison, the plan the heavy phases fan out over, the copy engine, the write pace, and deleting what components restored.

pub mod archive;
pub mod backup;
pub mod budget;
pub mod copy;
pub mod listing;
pub mod manifest;
pub mod parity;
pub mod plan;
pub mod restored;
