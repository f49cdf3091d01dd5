//! Shared fixtures for the supervisor's integration tests: the real binaries, a
//! private bus with the project's policy, throwaway network namespaces.
#![allow(dead_code)] // each test crate uses a different part

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nodeplane_sysctl::{SysctlKey, kernel};
use nodeplane_testkit::{DbusDaemon, Launch, Nodeplaned, in_netns_of};

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/org.nodeplane.Node1.conf")
}

/// A private system-like bus carrying the project's policy (and `extra` policies).
pub fn bus_with(extra: &[&Path]) -> DbusDaemon {
    let policy = policy_file();
    let mut files = vec![policy.as_path()];
    files.extend_from_slice(extra);
    DbusDaemon::start(&files).expect("start a private dbus-daemon")
}

pub fn bus() -> DbusDaemon {
    bus_with(&[])
}

pub fn spawn(bus: &DbusDaemon, config: &str, preset: &[(&str, &str)], env: &[(&str, &str)]) -> Nodeplaned {
    spawn_with_journal(bus, config, preset, env, None)
}

pub fn spawn_with_journal(
    bus: &DbusDaemon,
    config: &str,
    preset: &[(&str, &str)],
    env: &[(&str, &str)],
    journal: Option<&Path>,
) -> Nodeplaned {
    // These tests are not about the datapath: no bpffs needed unless asked for.
    let config = if config.contains("[datapath]") {
        config.to_owned()
    } else {
        format!("{config}\n[datapath]\nenabled = false\n")
    };
    Nodeplaned::spawn(
        bus,
        Launch {
            binary: Path::new(env!("CARGO_BIN_EXE_nodeplaned")),
            config: &config,
            preset,
            env,
            capture_stderr: true,
            journal,
            netns: None,
        },
    )
    .expect("spawn nodeplaned")
}

/// Spawns nodeplaned and waits until it is READY.
pub fn start(bus: &DbusDaemon, config: &str, preset: &[(&str, &str)]) -> Nodeplaned {
    let node = spawn(bus, config, preset, &[]);
    if let Err(err) = node.wait_ready(READY_TIMEOUT) {
        panic!("{err}\nstderr:\n{}", node.stderr());
    }
    node
}

pub fn read_sysctl(node: &Nodeplaned, key: &str) -> String {
    let key = SysctlKey::parse(key).expect("a sysctl name");
    in_netns_of(node.pid(), move || kernel::read(&key).expect("read sysctl"))
}

pub fn write_sysctl(node: &Nodeplaned, key: &str, value: &str) {
    let (key, value) = (SysctlKey::parse(key).expect("a sysctl name"), value.to_owned());
    in_netns_of(node.pid(), move || kernel::write(&key, &value).expect("write sysctl"));
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Runs `nodeplanectl` against `bus` as root.
pub fn ctl(bus: &DbusDaemon, args: &[&str]) -> Output {
    ctl_command(None, bus, args)
}

/// Runs `nodeplanectl` against `bus` as user `nobody`.
pub fn ctl_as_nobody(bus: &DbusDaemon, args: &[&str]) -> Output {
    ctl_command(Some(65534), bus, args)
}

fn ctl_command(uid: Option<u32>, bus: &DbusDaemon, args: &[&str]) -> Output {
    let ctl = env!("CARGO_BIN_EXE_nodeplanectl");
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), ctl.into()]);
            c
        }
        None => Command::new(ctl),
    };
    command.args(args).env("DBUS_SYSTEM_BUS_ADDRESS", bus.address()).output().expect("run nodeplanectl")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub type Entry = HashMap<String, String>;

/// Parses one datagram of the journal's native protocol: `KEY=value\n`, or for
/// values with newlines `KEY\n<u64 LE length><value>\n`.
pub fn parse_entry(mut data: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let line_end = data.iter().position(|&b| b == b'\n').expect("fields end with a newline");
        let line = &data[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            entry.insert(text(&line[..eq]), text(&line[eq + 1..]));
            data = &data[line_end + 1..];
        } else {
            let rest = &data[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            entry.insert(text(line), text(&rest[8..8 + len]));
            data = &rest[8 + len + 1..];
        }
    }
    entry
}

/// Plays journald: listens where `Launch::journal` mounts `/run/systemd/journal`.
pub struct Journal {
    pub dir: tempfile::TempDir,
    socket: UnixDatagram,
    pub entries: Vec<Entry>,
}

impl Journal {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join("socket")).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Journal { dir, socket, entries: Vec::new() }
    }

    /// Collects entries until one satisfies `done` or `timeout` passes.
    pub fn collect_until(&mut self, timeout: Duration, done: impl Fn(&Entry) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline && !self.entries.iter().any(&done) {
            if let Ok(len) = self.socket.recv(&mut buf) {
                self.entries.push(parse_entry(&buf[..len]));
            }
        }
    }

    pub fn find(&self, what: &str, check: impl Fn(&Entry) -> bool) -> &Entry {
        self.entries
            .iter()
            .find(|e| check(e))
            .unwrap_or_else(|| panic!("no journal entry {what} in {:#?}", self.entries))
    }
}

/// Starts nodeplaned inside `node`'s network namespace with its datapath pinned on
/// `bpffs`, applying the manifests in `manifests`; waits for READY.
pub fn start_in(
    node: &nodeplane_testkit::Node,
    bus: &DbusDaemon,
    bpffs: &nodeplane_testkit::Bpffs,
    manifests: &Path,
) -> Nodeplaned {
    start_in_with(node, bus, bpffs, manifests, "")
}

/// [`start_in`] with more `[datapath]` lines.
pub fn start_in_with(
    node: &nodeplane_testkit::Node,
    bus: &DbusDaemon,
    bpffs: &nodeplane_testkit::Bpffs,
    manifests: &Path,
    datapath: &str,
) -> Nodeplaned {
    let config = format!(
        // Socket LB attaches to a cgroup, which no network namespace confines:
        // the node image's boot tests cover it through nodeplaned.
        "[datapath]\n{datapath}\nsocket_lb = false\nbpffs_root = \"{}/nodeplane\"\nstate_dir = \"{}\"\nmanifests_dir = \"{}\"\npod_interface_prefix = \"np\"\n\
         sync_interval = \"200ms\"\n[ipam]\nenabled = false\n",
        bpffs.path().display(),
        bpffs.state_dir().display(),
        manifests.display()
    );
    let launch = Launch {
        binary: Path::new(env!("CARGO_BIN_EXE_nodeplaned")),
        config: &config,
        preset: &[],
        env: &[],
        capture_stderr: true,
        journal: None,
        netns: Some(&node.netns.path()),
    };
    let node = Nodeplaned::spawn(bus, launch).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", node.stderr()));
    node
}
