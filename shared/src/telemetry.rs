//! Tracing, set up once per process. Lambda's advanced logging controls ask for JSON
//! through `AWS_LAMBDA_LOG_FORMAT=JSON`; the level comes from `AWS_LAMBDA_LOG_LEVEL` or
//! `RUST_LOG` (default `info`).

use std::sync::Once;

use tracing_subscriber::EnvFilter;

static INIT: Once = Once::new();

pub fn init_tracing() {
    INIT.call_once(|| {
        let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
            .ok()
            .map(|l| l.to_lowercase())
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".to_owned());
        let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
        let json =
            std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr);
        // Another subscriber (a test harness) may already be installed: keep it.
        let _ = if json {
            builder.json().without_time().try_init()
        } else {
            builder.try_init()
        };
    });
}
