use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A private `dbus-daemon` with the system bus's default policy (deny owning names
/// and calling methods unless a policy file allows it) plus the given policy files,
/// listening on a socket in a temporary directory any user can reach.
pub struct DbusDaemon {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl DbusDaemon {
    pub fn start(policy_files: &[&Path]) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nodeplane-dbus-").tempdir()?;
        // Other users (the `nobody` caller in tests) must reach the socket.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let includes: String = policy_files
            .iter()
            .map(|p| Ok(format!("  <include>{}</include>\n", fs::canonicalize(p)?.display())))
            .collect::<io::Result<_>>()?;
        let socket = dir.path().join("system_bus_socket");
        let config = dir.path().join("system.conf");
        fs::write(&config, system_bus_config(&socket, &includes))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.path().join("dbus-daemon.log"))?)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting dbus-daemon (package dbus): {e}")))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
        let address = line.trim().to_owned();
        if address.is_empty() {
            let status = child.wait()?;
            return Err(io::Error::other(format!("dbus-daemon exited ({status}) without an address")));
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
