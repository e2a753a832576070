//! `holdfast check-config [--host]`.

use holdfast_controlplane::{check, config};

use super::Error;
use super::args::CheckArgs;

impl CheckArgs {
    pub fn run(self) -> Result<(), Error> {
        let file = &self.file;
        let c = config::load(file)?;
        let memory = check::memory_ceiling(&c).map_err(|e| Error::Refused(format!("{}: {e}", file.display())))?;
        let mut findings = Vec::new();
        if self.host {
            if let Err(e) = check::memory_now(&c) {
                findings.push(check::Finding { error: true, text: e.to_string() });
            }
            findings.extend(check::host(&c));
        }
        let errors = findings.iter().filter(|f| f.error).count();
        if errors == 0 {
            println!("{}: ok: {}", file.display(), c.summary());
            println!("  {memory}");
            if self.host {
                println!("  this machine: interfaces, queues, cores, memory available now, paths: ok");
            }
        }
        let shown: Vec<String> = findings.iter().map(|f| format!("{}: {}: {}", file.display(), if f.error { "error" } else { "warning" }, f.text)).collect();
        if errors > 0 {
            return Err(Error::Refused(shown.join("\n")));
        }
        for line in shown {
            eprintln!("{line}");
        }
        Ok(())
    }
}
