//! Errors by layer: what the user can fix (bad input, exit code 2) and everything else
//! (a model or I/O failure inside zlayer, exit code 1). A candle error is never the user's.

use std::fmt;

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit code 2.
    User(String),
    /// Anything else: exit code 1.
    Internal(String),
}

impl Failure {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Failure::User(_) => 2,
            Failure::Internal(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::User(m) | Failure::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// The same failure, its message prefixed with the file it concerns.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Failure::User(m) => Failure::User(format!("{}: {m}", path.display())),
            Failure::Internal(m) => Failure::Internal(format!("{}: {m}", path.display())),
        }
    }
}

/// A user error from anything printable.
pub fn user(e: impl fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// An internal error from anything printable.
pub fn internal(e: impl fmt::Display) -> Failure {
    Failure::Internal(e.to_string())
}
