//! `baton-agent`: the device daemon and its tools. See `--help`; the
//! subcommands are `baton_agent::command`.

use std::process::ExitCode;

use baton_agent::command::{Cli, run};
use clap::Parser;

fn main() -> ExitCode {
    baton_runtime::logging::init("info");
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
