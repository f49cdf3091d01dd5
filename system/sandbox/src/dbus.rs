//! A private `dbus-daemon` configured like the system bus.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::SandboxError;

/// A private `dbus-daemon` with the system bus's default policy (deny owning names
/// and calling methods unless a policy file allows it) plus the given policy files,
/// listening on a socket in a temporary directory any user can reach.
pub struct DbusDaemon {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl DbusDaemon {
    pub fn start(policy_files: &[&Path]) -> Result<Self, SandboxError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| SandboxError::Io { what, path, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("nodeplane-dbus-")
            .tempdir()
            .map_err(io("creating a directory in", &std::env::temp_dir()))?;
        // Other users (the `nobody` caller in tests) must reach the socket.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).map_err(io("opening up", dir.path()))?;
        let includes: String = policy_files
            .iter()
            .map(|p| Ok(format!("  <include>{}</include>\n", fs::canonicalize(p).map_err(io("reading", p))?.display())))
            .collect::<Result<_, SandboxError>>()?;
        let socket = dir.path().join("system_bus_socket");
        let config = dir.path().join("system.conf");
        fs::write(&config, system_bus_config(&socket, &includes)).map_err(io("writing", &config))?;
        let log_path = dir.path().join("dbus-daemon.log");
        let log = fs::File::create(&log_path).map_err(io("creating", &log_path))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|source| SandboxError::Spawn { program: "dbus-daemon", package: "dbus-daemon", source })?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .map_err(|source| SandboxError::Os { what: "reading dbus-daemon's address", source })?;
        let address = line.trim().to_owned();
        if address.is_empty() {
            let status = child.wait().map_err(|source| SandboxError::Os { what: "waiting for dbus-daemon", source })?;
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(SandboxError::Command {
                command: "dbus-daemon".into(),
                message: format!("exited ({status}) without an address: {}", log.trim()),
            });
        }
        Ok(DbusDaemon { child, address, dir })
    }

    /// The bus address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A directory beside the bus that any user can read.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn system_bus_config(socket: &Path, includes: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
{includes}</busconfig>
"#,
        socket = socket.display()
    )
}
