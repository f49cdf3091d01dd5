use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nodeplane_sandbox::{PassedSocket, SET_LISTEN_PID};

use crate::{DbusDaemon, NotifySocket};

/// How to start a [`Nodeplaned`].
pub struct Launch<'a> {
    /// The `nodeplaned` binary.
    pub binary: &'a Path,
    /// Contents of the `node.toml` it is given.
    pub config: &'a str,
    /// Sysctls to set in its fresh network namespace before it starts
    /// (`net.ipv4.ip_local_port_range` → `20000 40000`).
    pub preset: &'a [(&'a str, &'a str)],
    /// Extra environment (e.g. `WATCHDOG_USEC`).
    pub env: &'a [(&'a str, &'a str)],
    /// Capture stderr (tests) or let it through (interactive runs).
    pub capture_stderr: bool,
    /// Run it as systemd would with its stderr in the journal: this directory is
    /// mounted (in a private mount namespace) at `/run/systemd/journal`, where the
    /// caller listens on `socket`, and `JOURNAL_STREAM` names its stderr.
    pub journal: Option<&'a Path>,
    /// Run in this existing network namespace (`/var/run/netns/NAME`) instead of a
    /// fresh one.
    pub netns: Option<&'a Path>,
    /// The metrics socket systemd would pass (another run's, to keep it across
    /// a restart); `None`: a new one on 127.0.0.1.
    pub metrics: Option<&'a PassedSocket>,
}

/// A real `nodeplaned` process in a throwaway network namespace of its own (gone
/// when it exits), on a private bus, with `NOTIFY_SOCKET` pointing at a socket we
/// read. Killed on drop if still running.
pub struct Nodeplaned {
    child: Child,
    stderr: Arc<Mutex<String>>,
    notify: NotifySocket,
    config_path: PathBuf,
    metrics: PassedSocket,
    _dir: tempfile::TempDir,
}

impl Nodeplaned {
    pub fn spawn(bus: &DbusDaemon, launch: Launch<'_>) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nodeplaned-").tempdir()?;
        let config_path = dir.path().join("node.toml");
        fs::write(&config_path, launch.config)?;
        let notify = NotifySocket::new()?;
        // unshare(1) makes the namespace; the shell presets sysctls in it, then
        // becomes nodeplaned.
        let mut script = String::from("set -e\n");
        let mut namespaces = vec!["--net"];
        if let Some(journal) = launch.journal {
            namespaces.push("--mount");
            script += &format!(
                "mount -t tmpfs nodeplane-run /run\nmkdir -p /run/systemd/journal\nmount --bind '{}' /run/systemd/journal\n\
                 JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2)\nexport JOURNAL_STREAM\n",
                journal.display()
            );
        }
        for (key, value) in launch.preset {
            script += &format!("printf '%s' '{value}' > '/proc/sys/{}'\n", key.replace('.', "/"));
        }
        script += &format!("{SET_LISTEN_PID}\nexec \"$@\"\n");
        let mut command = Command::new(if launch.netns.is_some() { "nsenter" } else { "unshare" });
        match launch.netns {
            Some(netns) => {
                // The journal stand-in needs a private mount namespace: unshare only.
                assert!(launch.journal.is_none(), "Launch::journal needs a fresh network namespace");
                command.arg(format!("--net={}", netns.display()));
            }
            None => {
                command.args(&namespaces);
            }
        }
        command
            .args(["--", "sh", "-c", &script, "sh"])
            .arg(launch.binary)
            .arg("--config")
            .arg(&config_path)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .env("NOTIFY_SOCKET", notify.path())
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stderr(if launch.capture_stderr { Stdio::piped() } else { Stdio::inherit() });
        command.envs(launch.env.iter().copied());
        let metrics = match launch.metrics {
            Some(socket) => socket.try_clone(),
            None => PassedSocket::loopback(),
        }
        .map_err(io::Error::other)?;
        metrics.pass(&mut command, "metrics");
        let mut child =
            command.spawn().map_err(|e| io::Error::new(e.kind(), format!("starting unshare (util-linux): {e}")))?;
        // Drain stderr as it comes, so a chatty daemon never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            thread::spawn(move || {
                for line in io::BufRead::lines(io::BufReader::new(pipe)).map_while(Result::ok) {
                    sink.lock().expect("stderr buffer").push_str(&(line + "\n"));
                }
            });
        }
        Ok(Nodeplaned { child, stderr, notify, config_path, metrics, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn notify(&self) -> &NotifySocket {
        &self.notify
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The metrics socket it was given, in the caller's network namespace.
    pub fn metrics(&self) -> &PassedSocket {
        &self.metrics
    }

    /// What it has written to stderr so far (when captured).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// Waits for `READY=1`, returning every notify message up to it.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Vec<String>, crate::Error> {
        self.notify
            .wait_for("READY=1", timeout)
            .map_err(|seen| format!("no READY=1 within {timeout:?}; got {seen:?}").into())
    }

    /// Sends `signal` (e.g. `rustix::process::Signal::TERM`).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a live child");
        rustix::process::kill_process(pid, signal).expect("signal nodeplaned");
    }

    /// Sends SIGTERM (unless it already exited) and waits for the exit status.
    pub fn stop(mut self, timeout: Duration) -> Result<ExitStatus, crate::Error> {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a child pid");
            // It may exit on its own meanwhile (Ctrl-C reaches the whole foreground group).
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.wait_exit(timeout).map(|(status, _)| status)
    }

    /// Waits up to `timeout` for the process to exit; returns its status and stderr.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<(ExitStatus, String), crate::Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                // Let the reader thread take the last lines.
                thread::sleep(Duration::from_millis(50));
                return Ok((status, self.stderr()));
            }
            if Instant::now() > deadline {
                return Err(format!("nodeplaned (pid {}) still running after {timeout:?}", self.pid()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nodeplaned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `node.toml` for a nodeplaned whose datapath is pinned on `bpffs` and
/// applies `manifests`, with `datapath` as more `[datapath]` lines. Socket
/// load balancing is off (it attaches to a cgroup, which no network namespace
/// confines: the boot tests cover it), and so is the IPAM sweeper.
pub fn datapath_config(bpffs: &crate::Bpffs, manifests: &Path, datapath: &str) -> String {
    format!(
        "[datapath]\n{datapath}\nsocket_lb = false\nbpffs_root = \"{}/nodeplane\"\nstate_dir = \"{}\"\nmanifests_dir = \"{}\"\n\
         [ipam]\nenabled = false\n",
        bpffs.path().display(),
        bpffs.state_dir().display(),
        manifests.display()
    )
}
