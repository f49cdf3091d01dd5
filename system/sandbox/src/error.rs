use std::path::PathBuf;

/// What went wrong setting up or using a sandbox resource.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot run {program} (package {package}): {source}")]
    Spawn { program: &'static str, package: &'static str, source: std::io::Error },
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("a thread in a network namespace panicked: {0}")]
    Panicked(String),
}
