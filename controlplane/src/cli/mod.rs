//! The `holdfast` command line, in the shape rust-analyzer's `xtask` and cargo's own
//! commands take: the arguments in one file ([`args`]), one file per command group,
//! each with `run(self)`, and one error type that `main` turns into an exit code.

pub mod args;
mod check;
mod client;
mod demo;
mod error;
mod lab;
mod load;
mod replay;
mod run;

pub use error::Error;

use args::Cmd;

impl Cmd {
    pub fn run(self) -> Result<(), Error> {
        // Commands that print and exit end quietly when their reader does
        // (`holdfast flows | head`, `holdfast demo | head`); the appliance, the lab and
        // the load tools (and a live replay) keep SIGPIPE ignored: they have namespaces, rings and child
        // processes to clean up.
        let prints_and_exits = match &self {
            Cmd::CheckConfig(_) | Cmd::Gen(_) | Cmd::Report(_) | Cmd::Demo(_) | Cmd::Client(_) => true,
            Cmd::Replay(a) => a.offline,
            Cmd::Run(_) | Cmd::Lab(_) | Cmd::Blast(_) | Cmd::Load(_) => false,
        };
        if prints_and_exits {
            holdfast_dataplane::sys::die_on_broken_pipe();
        }
        match self {
            Cmd::CheckConfig(a) => a.run(),
            Cmd::Replay(a) => a.run(),
            Cmd::Gen(g) => g.run(),
            Cmd::Report(r) => r.run(),
            Cmd::Demo(a) => a.run(),
            Cmd::Run(a) => a.run(),
            Cmd::Lab(a) => a.run(),
            Cmd::Blast(a) => a.run(),
            Cmd::Load(l) => l.run(),
            Cmd::Client(c) => c.run(),
        }
    }
}
