//! The `idmatch` binary: parses arguments and hands them to [`idmatch::cli::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    idmatch::cli::run(idmatch::cli::Cli::parse())
}
