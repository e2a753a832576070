//! Configuration: the YAML model, its validation, and compilation into what the
//! pipeline runs (engine settings and an immutable classifier).
//!
//! Errors name `file:line:col` and quote the offending line. Loading never changes a
//! running configuration: a caller swaps in the result only when it is `Ok`.
//!
//! `model` is the file as written (serde), `values` the scalars in it (durations,
//! prefixes, ports); `compile` checks a parsed file section by section (`conntrack`,
//! `policy`, `zones`, `control`) into the types of `compiled`; `error` renders what is
//! wrong; `token` reads `control.token_file`.

mod compile;
mod compiled;
mod conntrack;
mod control;
mod error;
mod model;
mod policy;
mod token;
pub mod values;
mod zones;

use std::path::Path;

use serde_saphyr::Location;

pub use compiled::{Config, Control, Dataplane, DenyOutput, Log, OnReload, Role, Sync, SyncMode, Thresholds};
pub use error::ConfigError;
pub use token::{MIN_TOKEN, TokenError, TokenProblem, read_token, token_warning};

use compile::Ctx;
use model::File;

/// Largest config file read, and the most YAML nodes it may hold: a blocklist of
/// 300,000 prefixes inline is about 600,000; longer lists belong in `src_file`.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;
pub const MAX_YAML_NODES: usize = 4_000_000;
/// Largest prefix file (`src_file`, `dst_file`).
pub const MAX_PREFIX_FILE_BYTES: u64 = 256 << 20;

/// Reads at most `limit` bytes of `path`; `Ok(None)` when it holds more. Bounded even
/// for what a size check cannot see: a device (`/dev/zero`), a FIFO, a file that grows
/// after its size was read.
pub fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// True for a file with nothing but blank lines, comments and document markers. Read
/// from a file, that is an editor or a tool caught between truncating the file and
/// writing it far more often than a wish for the defaults; a reload of it would drop
/// every rule (and with `on_reload: recheck`, every connection).
fn holds_no_settings(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

/// Reads and compiles a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let fail = |message: String| ConfigError { file: name.clone(), message, ..ConfigError::default() };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if meta.is_dir() {
        return Err(fail("is a directory, not a config file".into()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(fail(format!("{} bytes: a config file may have at most {MAX_CONFIG_BYTES}; put long prefix lists in src_file / dst_file", meta.len())));
    }
    let bytes = read_at_most(path, MAX_CONFIG_BYTES).map_err(|e| fail(format!("cannot read: {e}")))?.ok_or_else(|| {
        fail(format!("more than {MAX_CONFIG_BYTES} bytes: a config file may have at most that; put long prefix lists in src_file / dst_file"))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8 text: byte {} is invalid", e.utf8_error().valid_up_to())))?;
    if holds_no_settings(&text) {
        return Err(fail(format!(
            "holds no settings ({} bytes: empty, or only comments): a file being written, or truncated? Refused, as every default is an appliance that denies everything; write `{{}}` to mean the defaults",
            text.len()
        )));
    }
    // Paths in the file (src_file, the deny log, the token) are relative to the file,
    // not to wherever the daemon was started.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut c = parse_in(&text, &name, dir)?;
    if let DenyOutput::File(p) = &c.log.denials
        && p.is_relative()
    {
        c.log.denials = DenyOutput::File(dir.join(p));
    }
    if let Some(p) = &c.control.token_file
        && p.is_relative()
    {
        c.control.token_file = Some(dir.join(p));
    }
    Ok(c)
}

/// Parses and compiles config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    parse_in(text, file, Path::new("."))
}

/// [`parse`], with relative paths in the file taken from `dir`.
pub fn parse_in(text: &str, file: &str, dir: &Path) -> Result<Config, ConfigError> {
    let cx = Ctx { file, text, dir };
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = 4 * MAX_YAML_NODES;
    budget.max_total_scalar_bytes = MAX_CONFIG_BYTES as usize;
    budget.max_documents = 1;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let f: File = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        let msg = e.without_snippet().to_string();
        // serde-saphyr prefixes "line L column C: "; the position is printed separately.
        let msg = msg.strip_prefix("error: ").unwrap_or(&msg).to_string();
        let msg = match msg.split_once(": ") {
            Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest.to_string(),
            _ => msg,
        };
        let msg = msg.lines().next().unwrap_or("");
        // ... and sometimes suffixes " at line L, column C".
        let msg = match msg.rfind(" at line ") {
            Some(i) if msg[i..].contains(", column ") => &msg[..i],
            _ => msg,
        };
        cx.at(loc, error::operator_words(msg))
    })?;
    compile::compile(&cx, f)
}

#[cfg(test)]
mod tests;
