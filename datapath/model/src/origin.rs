//! Where a Kubernetes object came from (a manifest file's document, or the API
//! server), and a problem with one, named that way.

use std::fmt;
use std::path::PathBuf;

/// A manifest the node could not use, and where the problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file; for an object from the API server, its kind and name.
    pub file: PathBuf,
    /// 1-based document number within the file; 0 for the whole file or object.
    pub document: usize,
    /// Field path, e.g. `spec.ports[0].protocol`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where an object came from: a file's document, or the API server.
#[derive(Clone, Debug)]
pub struct Origin {
    pub(crate) file: PathBuf,
    pub(crate) document: usize,
}

impl Origin {
    /// An object of the API server's, e.g. `Service default/web`.
    pub fn api(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        let name = match namespace {
            Some(namespace) => format!("{kind} {namespace}/{name}"),
            None => format!("{kind} {name}"),
        };
        Origin { file: PathBuf::from(name), document: 0 }
    }

    /// Document `document` (1-based) of `file`.
    pub(crate) fn document(file: PathBuf, document: usize) -> Self {
        Origin { file, document }
    }

    pub(crate) fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError { file: self.file.clone(), document: self.document, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        Ok(())
    }
}
