//! `nodeplaned --prepare`'s part for the metrics endpoint: node.toml's
//! `[metrics]` applied to `nodeplaned-metrics.socket` at boot. The unit as
//! installed listens on the default, 127.0.0.1:9970; another address or port
//! is a runtime drop-in, and `listen = "off"` masks the unit for this boot.
//! The caller reloads systemd when either exists.

use std::path::Path;

use crate::config::MetricsConfig;
use crate::kubelet::{PrepareError, remove, write};

/// The socket unit, as installed.
pub const UNIT: &str = "nodeplaned-metrics.socket";
/// The runtime mask (a link to /dev/null), relative to the root.
pub const MASK: &str = "run/systemd/system/nodeplaned-metrics.socket";
/// The runtime drop-in, relative to the root.
pub const DROP_IN: &str = "run/systemd/system/nodeplaned-metrics.socket.d/50-listen.conf";

/// Writes (or removes) the mask and the drop-in under `root`; says where the
/// endpoint listens.
pub fn prepare(config: &MetricsConfig, root: &Path) -> Result<String, PrepareError> {
    let mask = root.join(MASK);
    let drop_in = root.join(DROP_IN);
    remove(&mask)?;
    let Some(listen) = config.listen_stream() else {
        remove(&drop_in)?;
        let failed = |source| PrepareError::new(&mask, source);
        std::fs::create_dir_all(mask.parent().expect("in a directory")).map_err(failed)?;
        std::os::unix::fs::symlink("/dev/null", &mask).map_err(failed)?;
        return Ok("metrics: off ([metrics] listen = \"off\")".into());
    };
    if *config == MetricsConfig::default() {
        remove(&drop_in)?;
    } else {
        let unit = format!(
            "# Written at boot by `nodeplaned --prepare` from node.toml's [metrics].\n\
             [Socket]\nListenStream=\nListenStream={listen}\n"
        );
        write(&drop_in, &unit, 0o644)?;
    }
    Ok(format!("metrics: http://{}/metrics", if listen.contains(':') { listen } else { format!("*:{listen}") }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Listen;

    #[test]
    fn the_default_needs_nothing_another_address_a_drop_in_and_off_a_mask() {
        let root = tempfile::tempdir().unwrap();
        let (mask, drop_in) = (root.path().join(MASK), root.path().join(DROP_IN));

        let all = MetricsConfig { listen: Listen::All, port: 9999 };
        assert_eq!(prepare(&all, root.path()).unwrap(), "metrics: http://*:9999/metrics");
        assert_eq!(
            std::fs::read_to_string(&drop_in)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("ListenStream"))
                .collect::<Vec<_>>(),
            ["ListenStream=", "ListenStream=9999"]
        );
        assert!(!mask.exists());

        let off = MetricsConfig { listen: Listen::Off, ..all };
        assert_eq!(prepare(&off, root.path()).unwrap(), "metrics: off ([metrics] listen = \"off\")");
        assert_eq!(std::fs::read_link(&mask).unwrap(), Path::new("/dev/null"));
        assert!(!drop_in.exists());
        // Again: the mask is replaced, not an error.
        prepare(&off, root.path()).unwrap();

        let said = prepare(&MetricsConfig::default(), root.path()).unwrap();
        assert_eq!(said, "metrics: http://127.0.0.1:9970/metrics");
        assert!(!drop_in.exists() && mask.symlink_metadata().is_err());
    }
}
