//! `holdfast`: the stateful firewall appliance's command line. The commands live in
//! `cli/`; this maps their one error type to an exit code (2: the file or the command
//! line is wrong, or what was asked is refused; 1: it did not work).

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match cli::args::Cli::parse().cmd.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: with standard error gone it would panic, and the exit
            // code would be 101 instead of the error's.
            let _ = writeln!(std::io::stderr(), "{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
