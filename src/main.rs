//! The `idmatch` binary: parses arguments and hands them to [`cli::run`], which calls
//! the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::run(cli::Cli::parse())
}
