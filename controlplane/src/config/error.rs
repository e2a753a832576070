//! A configuration error: where it is (`file:line:col`, the line quoted with a caret)
//! and what is wrong, in the file's terms rather than the YAML library's.

use std::fmt;

use super::{MAX_YAML_NODES, values};

/// A configuration error with its position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when unknown (e.g. the file could not be read).
    pub line: u64,
    pub col: u64,
    pub message: String,
    /// The text of the offending line (cut around the column when long).
    pub source_line: Option<String>,
    /// Where the caret goes in `source_line` when it was cut (else `col`).
    pub shown_col: Option<u64>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        writeln!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)?;
        if let Some(src) = &self.source_line {
            let n = self.line.to_string();
            writeln!(f, "{n} | {src}")?;
            let col = self.shown_col.unwrap_or(self.col);
            write!(f, "{} | {}^", " ".repeat(n.len()), " ".repeat(col.saturating_sub(1) as usize))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Keeps the quoted source line short: at most 160 characters around the column
    /// (a 200 KB line is not echoed whole), the caret still under the spot.
    pub(super) fn clipped(mut self) -> ConfigError {
        const WIDTH: usize = 160;
        let Some(src) = &self.source_line else { return self };
        let chars: Vec<char> = src.chars().collect();
        if chars.len() <= WIDTH {
            return self;
        }
        let col = (self.col.max(1) as usize - 1).min(chars.len());
        let start = col.saturating_sub(WIDTH / 2).min(chars.len().saturating_sub(WIDTH));
        let end = (start + WIDTH).min(chars.len());
        let mut shown = String::new();
        if start > 0 {
            shown.push('…');
        }
        shown.extend(&chars[start..end]);
        if end < chars.len() {
            shown.push('…');
        }
        self.source_line = Some(shown);
        self.shown_col = Some((col - start + usize::from(start > 0) + 1) as u64);
        self
    }
}

/// The YAML library's messages are written for programmers using it ("set
/// DuplicateKeyPolicy in Options"); these say what is wrong in the file's terms.
pub(super) fn operator_words(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!("duplicate key `{key}`: each key may appear once in a mapping (remove one of them)");
    }
    if msg.contains("from_str_multiple") || msg.contains("multiple documents") || msg.contains("Documents") {
        return "the file holds several YAML documents (separated by ---): a config is one document".into();
    }
    if msg.contains("budget") || msg.contains("Budget") {
        return format!(
            "the file is too large to read as a config ({}); at most {MAX_YAML_NODES} YAML nodes — put long prefix lists in src_file / dst_file",
            msg.split(": ").last().unwrap_or(msg)
        );
    }
    if msg == "invalid floating point" || msg.starts_with("invalid floating point") {
        return "not a number (write e.g. 0.8)".into();
    }
    if msg.starts_with("expected sequence start") {
        return "expected a list here, e.g. [10.0.2.0/24] or one item per line starting with -".into();
    }
    if msg.starts_with("expected mapping start") {
        return "expected a mapping here (key: value pairs, or { key: value })".into();
    }
    if msg.starts_with("non-finite float") {
        return "a number too large to read: counts are whole numbers up to 18446744073709551615".into();
    }
    if msg == "invalid u64" || msg.starts_with("invalid u64") {
        return "not a whole number (0 or more)".into();
    }
    values::shorten(msg, 300)
}
