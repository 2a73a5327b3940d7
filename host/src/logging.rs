//! Logging of both binaries: `tracing` to stderr, filtered by `CEMA_LOG`.

/// Logs to stderr, filtered by `CEMA_LOG` (default `info`, ONNX Runtime's own logs at `warn`),
/// with colours only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CEMA_LOG").unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
