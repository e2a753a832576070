//! What a command's failure is, and the exit code it gets: 2 when the file or the
//! command line is wrong or what was asked is refused; 1 when it did not work.

use holdfast_controlplane::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is wrong (shown with file:line:col).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The command line asks for something that cannot be.
    #[error("holdfast {cmd}: {msg}")]
    Usage { cmd: &'static str, msg: String },
    /// What was asked was refused: a reload, a configuration this machine cannot hold.
    #[error("{0}")]
    Refused(String),
    /// It did not work.
    #[error("holdfast {cmd}: {source}")]
    Failed {
        cmd: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage { .. } | Error::Refused(_) => 2,
            Error::Failed { .. } => 1,
        }
    }

    /// A failure of `cmd`, from any error (or message).
    pub fn failed(cmd: &'static str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Failed { cmd, source: e.into() }
    }
}
