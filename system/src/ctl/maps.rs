//! What `nodeplanectl services`, `endpoints` and `conntrack` share: which
//! pinned maps to read. They read them directly (like `cilium bpf lb list`), so
//! they work while nodeplaned is down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nodeplane_datapath::inspect;

use crate::config::{self, ConfigError, NodeConfig};

/// Which pinned maps to read: `--bpffs-root`, else node.toml's `datapath.bpffs_root`.
pub struct Source {
    pub config: Option<PathBuf>,
    pub bpffs_root: Option<PathBuf>,
}

impl Source {
    pub(super) fn load(&self) -> Result<(PathBuf, NodeConfig), ConfigError> {
        let path = self.config.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
        let config = match NodeConfig::load(&path) {
            Ok(config) => config,
            Err(ConfigError::Read { source, .. })
                if self.config.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
            {
                NodeConfig::default()
            }
            Err(err) => return Err(err),
        };
        let root = self.bpffs_root.clone().unwrap_or_else(|| config.datapath.bpffs_root.clone());
        Ok((root, config))
    }
}

pub(super) fn failed(root: &Path, err: impl std::fmt::Display) -> ExitCode {
    eprintln!("nodeplanectl: cannot read the datapath's maps in {}: {err}", root.display());
    ExitCode::FAILURE
}

/// The programmed Service ports, or the exit code of the failure (already reported).
pub(super) fn read_services(source: &Source) -> Result<Vec<inspect::ServiceView>, ExitCode> {
    let (root, _) = source.load().map_err(|err| failed(Path::new("?"), err))?;
    inspect::services(&root).map_err(|err| failed(&root, err))
}
