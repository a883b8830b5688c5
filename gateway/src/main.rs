//! `baton-gateway`: the cluster lead. See `--help`; the subcommands are
//! `baton_gateway::command`.

use std::process::ExitCode;

use baton_gateway::command::{Cli, run};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    baton_runtime::logging::init(cli.default_log_filter());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton-gateway: {e:#}");
            if e.downcast_ref::<baton_gateway::server::StoreDamaged>()
                .is_some()
            {
                ExitCode::from(baton_gateway::server::StoreDamaged::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
