//! The crate's error type. Each module has a narrow error enum; this one wraps
//! them and says what kind of failure it is, so the binary can map it to an
//! exit code and a caller can tell whether a retry could help.

use std::path::PathBuf;

use crate::crypto::CryptoError;
use crate::format::FormatError;
use crate::object::ObjectError;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Stored bytes are damaged or were tampered with.
    Corrupt,
    /// Wrong passphrase or key.
    Auth,
    /// A named object, snapshot or path does not exist.
    NotFound,
    /// An object exists already, or a lock is held.
    Conflict,
    /// The operation is not allowed (append-only, lock window, bad argument).
    Denied,
    /// The operating system refused an operation.
    Io,
    /// Stopped on request (a signal) before finishing.
    Interrupted,
}

/// Every error the library returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A byte format could not be decoded.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Sealing or opening failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// An object backend (directory or bucket) failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// I/O on a path failed.
    #[error("{path}: {err}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
    /// I/O without a path to name.
    #[error(transparent)]
    RawIo(#[from] std::io::Error),
    /// The local cache database failed.
    #[error("cache database: {0}")]
    Cache(#[from] rusqlite::Error),
    /// Something that should exist does not.
    #[error("{0} not found")]
    NotFound(String),
    /// An object exists already or a lock is held.
    #[error("{0}")]
    Conflict(String),
    /// Refused by a rule of the repository or a bad argument.
    #[error("{0}")]
    Denied(String),
    /// Stored data is damaged.
    #[error("{0}")]
    Corrupt(String),
    /// A key file was refused before trying the passphrase (weakened or malformed).
    #[error("key file refused: {0}")]
    KeyRefused(String),
    /// Stopped on request before finishing; nothing was committed.
    #[error("interrupted; no snapshot committed")]
    Interrupted,
    /// The passphrase does not open any key file.
    #[error("wrong passphrase: no key file of this repository opens with it")]
    WrongPassphrase,
}

impl Error {
    /// Classifies the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Format(_) | Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Crypto(CryptoError::Auth) => ErrorKind::Corrupt,
            Error::Crypto(_) => ErrorKind::Corrupt,
            Error::WrongPassphrase | Error::KeyRefused(_) => ErrorKind::Auth,
            Error::Io { err: source, .. } | Error::RawIo(source) => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::Conflict,
                _ => ErrorKind::Io,
            },
            Error::Cache(_) => ErrorKind::Io,
            Error::Object(e) => e.kind(),
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Denied(_) => ErrorKind::Denied,
            Error::Interrupted => ErrorKind::Interrupted,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
