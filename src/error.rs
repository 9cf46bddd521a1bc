//! The error a host meets when the relay cannot start.

use std::fmt;
use std::io;

use crate::config::ConfigError;
use crate::crypto::key::KeyError;

/// Why the relay (or one of its parts) could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; nothing was opened.
    Config(ConfigError),
    /// A system call failed; `what` says which step.
    Io {
        /// The step that failed, e.g. "bind the control port".
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The RSA key could not be loaded, created or used.
    Key(KeyError),
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Key(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            Error::Key(e) => Some(e),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::Key(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_name_their_cause_and_chain_it() {
        let e = Error::io("bind the control port")(io::Error::from(io::ErrorKind::AddrInUse));
        assert!(e.to_string().starts_with("bind the control port: "));
        assert!(e.source().is_some());
        let c = Error::from(ConfigError::new("port", "must not be 0"));
        assert_eq!(c.to_string(), "port: must not be 0");
        assert!(c.source().is_some());
    }
}
