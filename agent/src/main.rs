//! `baton-agent`: the device daemon and its tools. See `--help`; the
//! subcommands are `baton_agent::command`.

use std::process::ExitCode;

use baton_agent::command::{Cli, run};
use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
