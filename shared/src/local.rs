//! What the local stack's users (the CLI's `local` commands and the test kit) share: where
//! the repository and its scripts are.

use std::path::{Path, PathBuf};

/// The repository root: `DRPILOT_ROOT`, else the nearest ancestor of the current
/// directory holding `scripts/local-stack.sh`, else the checkout this crate was built in.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("DRPILOT_ROOT") {
        return root.into();
    }
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            if dir.join("scripts/local-stack.sh").exists() {
                return dir;
            }
            if !dir.pop() {
                break;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
