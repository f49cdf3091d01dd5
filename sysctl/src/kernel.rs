//! Reading and writing sysctls through `/proc/sys`.

use std::fs;
use std::io::{self, Write};

use crate::SysctlKey;

/// Why a sysctl could not be read or set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SysctlError {
    #[error("{key}: not present in this kernel")]
    Missing { key: SysctlKey },
    #[error("{key}: permission denied (nodeplaned must run as uid 0)")]
    PermissionDenied { key: SysctlKey },
    #[error(
        "{key}: read-only here (the shipped unit makes only /proc/sys/net writable; add ReadWritePaths= in a drop-in)"
    )]
    ReadOnly { key: SysctlKey },
    #[error("{key}: the kernel rejected {value:?}: {reason}")]
    Rejected { key: SysctlKey, value: String, reason: String },
    #[error("{key}: wrote {wrote:?} but the kernel reads back {found:?}")]
    NotKept { key: SysctlKey, wrote: String, found: String },
    #[error("{key}: {reason}")]
    Io { key: SysctlKey, reason: String },
}

impl SysctlError {
    pub fn key(&self) -> &SysctlKey {
        match self {
            SysctlError::Missing { key }
            | SysctlError::PermissionDenied { key }
            | SysctlError::ReadOnly { key }
            | SysctlError::Rejected { key, .. }
            | SysctlError::NotKept { key, .. }
            | SysctlError::Io { key, .. } => key,
        }
    }

    fn from_io(key: &SysctlKey, value: Option<&str>, err: io::Error) -> Self {
        let key = key.clone();
        match (err.kind(), value) {
            (io::ErrorKind::NotFound, _) => SysctlError::Missing { key },
            (io::ErrorKind::PermissionDenied, _) => SysctlError::PermissionDenied { key },
            (io::ErrorKind::ReadOnlyFilesystem, _) => SysctlError::ReadOnly { key },
            (io::ErrorKind::InvalidInput, Some(value)) => {
                SysctlError::Rejected { key, value: value.to_owned(), reason: err.to_string() }
            }
            _ => SysctlError::Io { key, reason: err.to_string() },
        }
    }
}

/// Reads a sysctl, with white space runs folded to one space (the kernel prints
/// some values tab-separated but accepts them space-separated).
pub fn read(key: &SysctlKey) -> Result<String, SysctlError> {
    fs::read_to_string(key.proc_path()).map(|text| normalize(&text)).map_err(|e| SysctlError::from_io(key, None, e))
}

/// Writes a sysctl in one `write(2)`, as the kernel requires.
pub fn write(key: &SysctlKey, value: &str) -> Result<(), SysctlError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(key.proc_path())
        .map_err(|e| SysctlError::from_io(key, Some(value), e))?;
    file.write_all(value.as_bytes()).map_err(|e| SysctlError::from_io(key, Some(value), e))
}

pub(crate) fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}
