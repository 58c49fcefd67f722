//! The `coffer` command. Parses arguments, runs the command, maps an error to
//! an exit code and prints it: the only place that prints errors.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
