//! What the `drpilot` CLI and the test kit share beyond the core, and what no Lambda
//! links: [`maker`] (making a contract backup from a directory, `drpilot backup make`)
//! and [`local`] (the repository's location and the local stack's provisioning on the
//! emulator). Keeping them out of `drpilot-shared` keeps RDS-instance creation and the
//! emulator's control API out of every function's binary.

pub mod local;
pub mod maker;
