//! `control.token_file`: the bearer token `/flows` and `/reload` require.

use std::path::{Path, PathBuf};

/// Shortest token `control.token_file` may hold: 16 characters (e.g. from
/// `head -c 24 /dev/urandom | base64`).
pub const MIN_TOKEN: usize = 16;

/// Longest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// What is wrong with `control.token_file`; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("control.token_file {}: {problem}", path.display())]
pub struct TokenError {
    pub path: PathBuf,
    #[source]
    pub problem: TokenProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenProblem {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("{0} bytes; a token is one line of at most {MAX_TOKEN_FILE}")]
    TooLarge(u64),
    #[error("holds several lines; put the token alone on one line")]
    SeveralLines,
    #[error("the token is {0} characters; use at least {MIN_TOKEN} (e.g. head -c 24 /dev/urandom | base64)")]
    TooShort(usize),
    #[error("the token must be printable ASCII without spaces (it travels in an HTTP header)")]
    NotPrintable,
}

/// Reads `control.token_file`: one line, at least [`MIN_TOKEN`] characters, of
/// printable ASCII. Whether others may read it is [`token_warning`]'s business.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let fail = |problem| TokenError { path: path.to_path_buf(), problem };
    let meta = std::fs::metadata(path).map_err(|e| fail(TokenProblem::Read(e)))?;
    if !meta.is_file() {
        return Err(fail(TokenProblem::NotAFile));
    }
    if meta.len() > MAX_TOKEN_FILE {
        return Err(fail(TokenProblem::TooLarge(meta.len())));
    }
    let bytes =
        super::read_at_most(path, MAX_TOKEN_FILE).map_err(|e| fail(TokenProblem::Read(e)))?.ok_or_else(|| fail(TokenProblem::TooLarge(MAX_TOKEN_FILE + 1)))?;
    let text = String::from_utf8(bytes).map_err(|e| fail(TokenProblem::Read(std::io::Error::new(std::io::ErrorKind::InvalidData, e))))?;
    let t = text.trim();
    if t.lines().count() > 1 {
        return Err(fail(TokenProblem::SeveralLines));
    }
    if t.len() < MIN_TOKEN {
        return Err(fail(TokenProblem::TooShort(t.len())));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(TokenProblem::NotPrintable));
    }
    Ok(t.to_string())
}

/// What to say about a token file every user of the machine may read; `None` when
/// they may not (or it cannot be looked at: [`read_token`] says why).
pub fn token_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| format!("control.token_file {} is readable by every user (chmod 600 it)", path.display()))
}
