//! Compiling a parsed file: the context every section reports errors through, and the
//! order the sections are checked in.

use std::path::Path;
use std::sync::Arc;

use holdfast_pipeline::Duration;
use holdfast_pipeline::policy::{Action, Cidr, Classifier};
use holdfast_pipeline::time::MAX_TIMEOUT;
use serde_saphyr::{Location, Spanned};

use super::compiled::{Config, OnReload};
use super::model::{ActionCfg, File, OnReloadCfg};
use super::{ConfigError, MAX_PREFIX_FILE_BYTES, conntrack, control, policy, values, zones};

/// The file being compiled: errors quote its text.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    /// Where relative paths in the file (`src_file`, …) start.
    pub(super) dir: &'a Path,
}

impl Ctx<'_> {
    /// An empty list where one is not allowed: always an error — a list that came out
    /// empty from a template would otherwise match everything (or nothing) silently.
    pub(super) fn empty_list(&self, loc: Location, key: &str) -> ConfigError {
        let hint = if key.starts_with("rule ") {
            "in a rule it would match everything, as if the key were absent; remove the key if you mean any, or list at least one value"
        } else if key == "policy.rules" {
            "remove the key if you mean no rules (policy.default then decides every new flow)"
        } else {
            "remove the key if you mean none, or list at least one value"
        };
        self.at(loc, format!("{key} is an empty list, which is almost always a templating mistake: {hint}"))
    }

    /// The prefixes of a `src_file` / `dst_file`: one per line, `#` starts a comment,
    /// blank lines are skipped. Errors name the prefix file, its line and column.
    pub(super) fn prefix_file(&self, key: &Spanned<String>, what: &str) -> Result<Vec<Cidr>, ConfigError> {
        let path = self.dir.join(key.value.trim());
        let shown = path.display().to_string();
        let meta = std::fs::metadata(&path).map_err(|e| self.at(key.referenced, format!("{what} {shown}: cannot read: {e}")))?;
        if meta.len() > MAX_PREFIX_FILE_BYTES {
            return Err(self.at(key.referenced, format!("{what} {shown}: {} bytes, more than the {MAX_PREFIX_FILE_BYTES} a prefix file may have", meta.len())));
        }
        let bytes = super::read_at_most(&path, MAX_PREFIX_FILE_BYTES)
            .map_err(|e| self.at(key.referenced, format!("{what} {shown}: cannot read: {e}")))?
            .ok_or_else(|| self.at(key.referenced, format!("{what} {shown}: more than the {MAX_PREFIX_FILE_BYTES} bytes a prefix file may have")))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| self.at(key.referenced, format!("{what} {shown}: not UTF-8 text: byte {} is invalid", e.utf8_error().valid_up_to())))?;
        let mut out = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let col = line.find(t).unwrap_or(0) as u64 + 1;
            let c = values::parse_cidr(t).map_err(|e| {
                ConfigError {
                    file: shown.clone(),
                    line: n as u64 + 1,
                    col,
                    message: format!("{what}: {e}"),
                    source_line: Some(raw.to_string()),
                    shown_col: None,
                }
                .clipped()
            })?;
            out.push(c);
        }
        if out.is_empty() {
            return Err(self.at(
                key.referenced,
                format!("{what} {shown} holds no prefixes: an empty list is almost always a mistake (the rule would match every address); list at least one"),
            ));
        }
        Ok(out)
    }

    pub(super) fn at(&self, loc: Location, message: impl Into<String>) -> ConfigError {
        let (line, col) = (loc.line(), loc.column());
        ConfigError {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
            source_line: (line > 0).then(|| self.text.lines().nth(line as usize - 1).unwrap_or("").to_string()),
            shown_col: None,
        }
        .clipped()
    }
}

/// Checks the sections in the order a reader meets them; the first error wins.
pub(super) fn compile(cx: &Ctx, f: File) -> Result<Config, ConfigError> {
    let engine = conntrack::engine(cx, &f)?;
    let rules = policy::rules(cx, &f.policy)?;
    let inside = zones::inside(cx, &f.zones)?;
    let dataplane = zones::dataplane(cx, &f)?;
    let control = control::control(cx, &f.control)?;
    let log = control::log(cx, &f.log)?;
    let snapshot_dir = control::snapshot_dir(cx, &f.state)?;
    let sync = match &f.sync {
        Some(s) => Some(super::compiled::Sync { cache_limit: engine.capacity.saturating_mul(dataplane.cores.len().max(1)), ..control::sync(cx, s)? }),
        None => None,
    };
    Ok(Config {
        engine,
        classifier: Arc::new(Classifier::new(rules, action(f.policy.default))),
        inside,
        outside_interface: f.zones.outside.interface.as_ref().map(|i| i.value.clone()),
        inside_interface: f.zones.inside.interface.as_ref().map(|i| i.value.clone()),
        dataplane,
        control,
        log,
        on_reload: match f.policy.on_reload {
            OnReloadCfg::Keep => OnReload::Keep,
            OnReloadCfg::Recheck => OnReload::Recheck,
        },
        snapshot_dir,
        sync,
    })
}

pub(super) fn action(a: ActionCfg) -> Action {
    match a {
        ActionCfg::Allow => Action::Allow,
        ActionCfg::Deny => Action::Deny,
    }
}

/// A timeout: 1 s to 365 days.
pub(super) fn timeout(cx: &Ctx, d: &Spanned<values::Dur>, name: &str) -> Result<Duration, ConfigError> {
    let v = d.value.0;
    if v < Duration::from_secs(1) || v > MAX_TIMEOUT {
        return Err(cx.at(d.referenced, format!("timeout {name} must be between 1s and 365d")));
    }
    Ok(v)
}
