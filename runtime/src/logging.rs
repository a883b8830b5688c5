//! The daemons' log output: `tracing` to stderr, filtered by `RUST_LOG`
//! (or the given default), with colour only when stderr is a terminal, so
//! a log file or the journal never holds escape codes.

/// Installs the subscriber; call once, first thing in `main`.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
