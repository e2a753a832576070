//! `holdfast run`: the appliance, inline between two interfaces.

use holdfast_controlplane::{config, control};

use super::Error;
use super::args::RunArgs;

impl RunArgs {
    pub fn run(self) -> Result<(), Error> {
        let cfg = config::load(&self.config)?;
        let opts =
            control::Options { json: self.json, duration: self.duration.map(Into::into), quiet: self.quiet, seed: holdfast_dataplane::sys::random_seed() };
        let v = control::serve(&self.config, cfg, &opts).map_err(|e| Error::failed("run", e))?;
        // The tables are saved by now; a standard output nobody reads any more (the
        // pipe's reader gone) loses the summary, not the exit status.
        use std::io::Write;
        let summary = if self.json { v.to_string() } else { control::report::human(&v) };
        let _ = writeln!(std::io::stdout(), "{summary}");
        Ok(())
    }
}
