//! How long the current invocation may still work. Lambda ends an invocation at its
//! deadline (the function's timeout, at most 900 s) without a word to the code: work
//! that can outgrow one invocation (teardown deleting a large staging) stops at
//! [`work_until`] and hands back what is left for the state machine to run again.
//!
//! [`crate::phase::serve`] sets the deadline from the invocation's context for the
//! handler's task. [`BUDGET_ENV`] replaces it: the local test world holds every
//! invocation to a scaled-down budget, so that a small run meets what a large one meets
//! on AWS. A task outside any invocation (a test calling a handler) has no deadline
//! unless it runs inside [`scope`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Environment variable: at most this many seconds an invocation (test world only).
pub const BUDGET_ENV: &str = "DRPILOT_TIME_BUDGET_SECONDS";

/// What an invocation keeps after its work for the writes that end it (receipts, the
/// summary, metrics): a quarter of its whole time, at most a minute.
const MAX_MARGIN: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Invocation {
    work_until: Instant,
}

tokio::task_local! {
    static INVOCATION: Invocation;
}

/// Runs `work` as an invocation that must end within `budget` from now.
pub async fn scope<F: Future>(budget: Duration, work: F) -> F::Output {
    let margin = (budget / 4).min(MAX_MARGIN);
    let invocation = Invocation {
        work_until: Instant::now() + budget.saturating_sub(margin),
    };
    INVOCATION.scope(invocation, work).await
}

/// The budget of an invocation whose context says it ends at `deadline_ms` (ms since
/// the epoch), or [`BUDGET_ENV`] when set: the local stack's runtime gives every
/// invocation Lambda's default 3 s in its context, whatever the function's timeout.
pub fn budget(deadline_ms: u64) -> Duration {
    if let Some(configured) = configured_budget() {
        return configured;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

fn configured_budget() -> Option<Duration> {
    std::env::var(BUDGET_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// When this invocation's resumable work should stop: `None` outside an invocation.
pub fn work_until() -> Option<Instant> {
    INVOCATION.try_with(|i| i.work_until).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outside_an_invocation_there_is_no_deadline() {
        assert!(work_until().is_none());
    }

    /// The window `scope(budget)` leaves for work, bounded by instants taken around it
    /// (no assumption about how long the machine takes between them).
    async fn work_window(budget: Duration) -> (Duration, Duration) {
        let before = Instant::now();
        let until = scope(budget, async { work_until().unwrap() }).await;
        let after = Instant::now();
        (until - after, until - before)
    }

    #[tokio::test]
    async fn work_stops_a_quarter_before_a_short_budget_ends() {
        let (at_least, at_most) = work_window(Duration::from_millis(800)).await;
        assert!(at_least <= Duration::from_millis(600), "{at_least:?}");
        assert!(at_most >= Duration::from_millis(600), "{at_most:?}");
    }

    #[tokio::test]
    async fn a_long_budget_keeps_one_minute_for_the_end() {
        let (at_least, at_most) = work_window(Duration::from_secs(900)).await;
        assert!(at_least <= Duration::from_secs(840), "{at_least:?}");
        assert!(at_most >= Duration::from_secs(840), "{at_most:?}");
    }

    #[test]
    fn the_context_deadline_sets_the_budget() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if configured_budget().is_none() {
            let budget = budget(now_ms + 900_000);
            assert!(budget <= Duration::from_secs(900), "{budget:?}");
            assert!(budget > Duration::from_secs(800), "{budget:?}");
            assert_eq!(super::budget(now_ms - 5), Duration::ZERO);
        }
    }
}
