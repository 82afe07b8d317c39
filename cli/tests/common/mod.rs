//! What the end-to-end test files share.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use drpilot_cli::{start, Ctx, StartFlags};
use drpilot_testkit::{TempDir, PROFILE};
use serde_json::Value;

/// Starts a run of the test profile with `input` (a full drill may promote) without
/// following it; returns its run id.
pub async fn start_run(ctx: &Ctx, input: Value) -> String {
    let tmp = TempDir::new("input");
    let path = tmp.path().join("input.json");
    std::fs::write(&path, input.to_string()).unwrap();
    let p = start(
        ctx,
        PROFILE,
        Some(&path),
        None,
        false,
        None,
        &StartFlags::full_drill(),
    )
    .await
    .unwrap();
    p.run_id()
}
