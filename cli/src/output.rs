//! How the CLI talks back: the output policy (lines for people, or one JSON result for
//! scripts) and the exit status.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

/// Where output goes and in which form.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    /// `--json`: only the command's result, as JSON, on stdout.
    pub json: bool,
}

impl Out {
    /// A line for people (suppressed in `--json` mode, where only the result is printed).
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.json {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", line.as_ref());
            let _ = stdout.flush();
        }
    }

    /// The command's result: JSON in `--json` mode, else nothing (the lines said it).
    pub fn result(&self, value: &impl Serialize) {
        if self.json {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        }
    }
}

/// How a command ended, as the process exit code scripts test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the command did what was asked (a run it followed succeeded).
    Success,
    /// 1: the command worked, but the run it followed or looked at failed.
    RunFailed,
    /// 2: the command could not do its job (bad usage, AWS refused, I/O).
    Error,
}

impl ExitStatus {
    pub fn success_if(ok: bool) -> Self {
        if ok {
            Self::Success
        } else {
            Self::RunFailed
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Success => ExitCode::SUCCESS,
            ExitStatus::RunFailed => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
        }
    }
}
