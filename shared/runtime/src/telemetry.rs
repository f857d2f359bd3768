//! Logging setup shared by every binary.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber: JSON lines when `SAGA_LOG_FORMAT=json`, readable text
/// otherwise; the level comes from `RUST_LOG` (default `info`). librdkafka's logs arrive through
/// the consumer context.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Like [`init_logging`], with another level when `RUST_LOG` is unset.
pub fn init_logging_with_default(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = std::env::var("SAGA_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
