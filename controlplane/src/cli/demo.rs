//! `holdfast demo`: the origin story.

use holdfast_controlplane::demo;

use super::Error;
use super::args::DemoArgs;

impl DemoArgs {
    pub fn run(self) -> Result<(), Error> {
        let mut d = demo::Demo { capacity: self.capacity as usize, seed: self.seed, ..Default::default() };
        d.farm.syn_flood = self.syn_flood;
        d.farm.connections = self.connections;
        d.farm.seed = self.seed;
        let o = demo::run(&d).map_err(|e| Error::failed("demo", e))?;
        if self.json {
            println!("{}", o.to_json());
        } else {
            println!("{}", o.human(&d));
        }
        Ok(())
    }
}
