//! Diagnostics: every problem found in a scene says what, where and how to fix it.
//!
//! Parsing and validation collect all problems they can find rather than stopping at the
//! first, so a user fixes a file in one pass. Warnings travel with a successful result;
//! errors become a [`SceneError`].

use serde::Serialize;
use std::fmt;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The scene cannot be used as it is.
    Error,
    /// The scene was used, but something was changed or looks unintended.
    Warning,
}

/// One problem in a scene, located by JSON path and instance id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// JSON path in the source file, e.g. `annos[1].occludes`; empty for the whole document.
    pub path: String,
    /// The instance concerned, by id, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// What is wrong, with the offending value.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            instance: None,
            message: message.into(),
            hint: None,
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(path, message)
        }
    }

    /// Names the instance concerned.
    pub fn on(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Adds how to fix it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{kind}")?;
        match (&self.path[..], &self.instance) {
            ("", None) => {}
            ("", Some(id)) => write!(f, " (instance {id:?})")?,
            (p, None) => write!(f, " at {p}")?,
            (p, Some(id)) => write!(f, " at {p} (instance {id:?})")?,
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// A scene that cannot be used: one or more error diagnostics (and any warnings seen so far).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct SceneError {
    /// All diagnostics, errors first.
    pub diagnostics: Vec<Diagnostic>,
}

impl SceneError {
    /// Wraps diagnostics, putting errors before warnings; at least one must be an error.
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> Self {
        debug_assert!(diagnostics.iter().any(Diagnostic::is_error));
        diagnostics.sort_by_key(|d| !d.is_error());
        Self { diagnostics }
    }

    /// Just the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl From<Diagnostic> for SceneError {
    fn from(d: Diagnostic) -> Self {
        Self::new(vec![d])
    }
}

impl fmt::Display for SceneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        let mut first = true;
        for d in &self.diagnostics {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{d}")?;
        }
        if n > 1 {
            write!(f, "\n({n} errors)")?;
        }
        Ok(())
    }
}

/// Splits diagnostics into a result: `Ok(warnings)` if none is an error.
pub(crate) fn finish(diags: Vec<Diagnostic>) -> Result<Vec<Diagnostic>, SceneError> {
    if diags.iter().any(Diagnostic::is_error) {
        Err(SceneError::new(diags))
    } else {
        Ok(diags)
    }
}
