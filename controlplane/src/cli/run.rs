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
        if self.json {
            println!("{v}");
        } else {
            println!("{}", control::report::human(&v));
        }
        Ok(())
    }
}
