//! Boots the nodeplane node image under QEMU, the way a user runs it in a VM:
//! TCG emulation (KVM hangs silently on these machines), either the UEFI disk
//! image through OVMF or the kernel, initrd and erofs root directly (faster, for
//! tests). A node.toml goes in through `fw_cfg` (`opt/org.nodeplane/node.toml`);
//! tests also share a directory over 9p and run a script in the guest through
//! `systemd.run=`, which leaves the image itself unchanged.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nodeplane_image::Image;

/// The image `cargo xtask image` built: in `NODEPLANE_IMAGE_DIR` when set (as
/// `cargo xtask test` and `bench boot` set it), else `target/image`.
pub fn built_image() -> Result<Image, VmError> {
    let dir = std::env::var_os("NODEPLANE_IMAGE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("image")
    });
    let image = Image::at(&dir);
    if image.complete() { Ok(image) } else { Err(VmError::NoImage(dir)) }
}

/// What went wrong waiting for a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no node image in {}: build it with `cargo xtask image`", .0.display())]
    NoImage(PathBuf),
    #[error("QEMU exited ({status}) before the console showed {waiting_for:?}")]
    Exited { status: ExitStatus, waiting_for: String },
    #[error("the console did not show {needle:?} within {timeout:?}")]
    ConsoleTimeout { needle: String, timeout: Duration },
    #[error("the VM did not power off within {0:?}")]
    PowerOffTimeout(Duration),
    #[error("waiting for QEMU: {0}")]
    Wait(io::Error),
}

/// The guest helper (`examples/np-guest.rs`), as `cargo test` builds it for
/// the test binary calling this.
pub fn np_guest() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/examples/np-guest
    let guest = exe.ancestors().nth(2).expect("a test binary under target/").join("examples/np-guest");
    assert!(guest.is_file(), "{} is missing: `cargo test` builds it (the np-guest example)", guest.display());
    guest
}

/// The 9p mount tag of a test's shared directory.
pub const SHARE_TAG: &str = "nptest";

/// Kernel arguments that run `script` from the shared directory as a service of
/// its own once the system is up, in an otherwise normal boot to
/// multi-user.target (the unit `systemd.run=` makes only starts it, so it does
/// not hold up the boot).
pub fn run_from_share(script: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "systemd.unit=multi-user.target",
        "systemd.wants=kernel-command-line.service",
        "systemd.run_success_action=none",
        "systemd.run_failure_action=none",
    ]
    .map(String::from)
    .into();
    args.push(format!(
        "systemd.run=\"/bin/sh -c 'mount -t 9p -o trans=virtio,version=9p2000.L {SHARE_TAG} /mnt && \
         exec systemd-run --unit=nodeplane-guest-script /bin/sh /mnt/{script}'\""
    ));
    args
}

/// What a guest script left in the share's `results/` (`guest/lib.sh`: `NAME.out`
/// and `NAME.rc` per check, and whatever else it wrote), read into memory so the
/// test's scratch directory (a state disk of a gigabyte, sparse) can go at once.
#[derive(Debug, Default)]
pub struct GuestResults(std::collections::BTreeMap<String, String>);

impl GuestResults {
    /// Reads `dir`'s files (none when it does not exist: the guest never got that far).
    pub fn collect(dir: &Path) -> Self {
        let files = std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|entry| {
            let text = std::fs::read(entry.path()).ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), String::from_utf8_lossy(&text).into_owned()))
        });
        Self(files.collect())
    }

    pub fn file(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Check `name`'s exit code and output; `None` when it did not run.
    pub fn check(&self, name: &str) -> Option<(&str, &str)> {
        Some((self.file(&format!("{name}.rc"))?.trim(), self.file(&format!("{name}.out"))?))
    }
}

/// The last `lines` lines of `text` (a console, for a failure's message).
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The number of a `key=value` line in what a guest script reported (the guest's
/// times are microseconds since its kernel started).
pub fn reported(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).and_then(|v| v.trim().parse().ok())
}

/// How the VM boots.
pub enum Firmware {
    /// `-kernel`/`-initrd` with the erofs root as the first disk and `state` (a
    /// copy of [`Image::state_template`], or a disk kept from an earlier boot) as /var.
    Direct { state: PathBuf },
    /// OVMF, booting the GPT disk image (`disk`, written to: its state partition).
    Uefi { disk: PathBuf },
}

/// Where the serial console goes.
pub enum Console {
    /// Into a file (read it with [`Vm::console`]).
    File(PathBuf),
    /// This terminal, interactive (QEMU's monitor on Ctrl-A c).
    Terminal,
}

pub struct Boot<'a> {
    pub image: &'a Image,
    pub firmware: Firmware,
    pub console: Console,
    /// A node.toml handed over through fw_cfg.
    pub config: Option<&'a Path>,
    /// A directory shared with the guest over 9p (tag [`SHARE_TAG`]).
    pub share: Option<&'a Path>,
    /// Added to the kernel command line (direct boot only).
    pub kernel_args: Vec<String>,
    /// Host TCP port → guest TCP port, over QEMU's user network.
    pub forward: Vec<(u16, u16)>,
    /// More `-netdev user` options, e.g. a `guestfwd=` to a control plane.
    pub netdev: Vec<String>,
    /// A second network card on an L2 shared with other VMs of this host.
    pub lan: Option<Lan>,
}

/// A second network card joined to other VMs' by a QEMU socket netdev on
/// loopback: one VM `listen=127.0.0.1:PORT`s, the others `connect=` to it.
pub struct Lan {
    /// `listen=…` or `connect=…`.
    pub socket: String,
    /// Its MAC address: the guest names the card by it (`ifname=`).
    pub mac: String,
}

/// A running VM. Dropping it ends QEMU.
pub struct Vm {
    child: Child,
    console: Option<PathBuf>,
    started: Instant,
    _scratch: tempfile::TempDir,
}

impl Vm {
    pub fn start(boot: Boot<'_>) -> io::Result<Vm> {
        let scratch = tempfile::Builder::new().prefix("nodeplane-vm-").tempdir()?;
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-machine", "pc", "-accel", "tcg", "-cpu", "qemu64,-svm", "-m", "1536", "-smp", "2"]);
        qemu.args(["-nodefaults", "-display", "none", "-no-reboot"]);
        match &boot.firmware {
            Firmware::Direct { state } => {
                let mut append = format!("root=/dev/vda {}", nodeplane_image::KERNEL_ARGS);
                for arg in &boot.kernel_args {
                    append.push(' ');
                    append.push_str(arg);
                }
                qemu.arg("-kernel").arg(boot.image.kernel()).arg("-initrd").arg(boot.image.initrd());
                qemu.arg("-append").arg(append);
                qemu.arg("-drive").arg(drive(&boot.image.root(), true));
                qemu.arg("-drive").arg(drive(state, false));
            }
            Firmware::Uefi { disk } => {
                let vars = scratch.path().join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars)?;
                qemu.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"));
                qemu.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
                qemu.arg("-drive").arg(drive(disk, false));
            }
        }
        if let Some(config) = boot.config {
            qemu.arg("-fw_cfg").arg(format!("name=opt/org.nodeplane/node.toml,file={}", config.display()));
        }
        if let Some(share) = boot.share {
            qemu.arg("-virtfs").arg(format!(
                "local,path={},mount_tag={SHARE_TAG},security_model=none,id={SHARE_TAG}",
                share.display()
            ));
        }
        // User networking, restricted: the guest reaches nothing outside; only
        // the forwarded ports reach it.
        let mut forwards: String =
            boot.forward.iter().map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
        for option in &boot.netdev {
            forwards.push(',');
            forwards.push_str(option);
        }
        qemu.args(["-netdev", &format!("user,id=net0,restrict=on{forwards}"), "-device", "virtio-net-pci,netdev=net0"]);
        if let Some(lan) = &boot.lan {
            qemu.args(["-netdev", &format!("socket,id=lan,{}", lan.socket)]);
            qemu.args(["-device", &format!("virtio-net-pci,netdev=lan,mac={}", lan.mac)]);
        }
        let console = match boot.console {
            Console::File(path) => {
                qemu.arg("-serial").arg(format!("file:{}", path.display()));
                qemu.stdin(Stdio::null()).stdout(Stdio::null());
                Some(path)
            }
            Console::Terminal => {
                qemu.args(["-serial", "mon:stdio"]);
                None
            }
        };
        let child = qemu.spawn().map_err(|e| io::Error::new(e.kind(), format!("qemu-system-x86_64: {e}")))?;
        Ok(Vm { child, console, started: Instant::now(), _scratch: scratch })
    }

    /// The serial console's output so far (file consoles).
    pub fn console(&self) -> String {
        self.console
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the console shows `needle`; how long after QEMU started.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return Ok(self.started.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(VmError::Exited { status, waiting_for: needle.to_owned() });
            }
            if Instant::now() > deadline {
                return Err(VmError::ConsoleTimeout { needle: needle.to_owned(), timeout });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// QEMU's exit status if it has exited.
    pub fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for QEMU to exit, however long that takes (an interactive session).
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Waits for QEMU to exit (the guest powered off), killing it at `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(VmError::Wait)? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(VmError::PowerOffTimeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Vm {
    /// Ends QEMU at once, as a machine that loses power.
    pub fn power_off(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_off();
    }
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn drive(file: &Path, readonly: bool) -> String {
    let readonly = if readonly { ",readonly=on" } else { "" };
    format!("file={},format=raw,if=virtio,cache=unsafe{readonly}", file.display())
}

/// A sparse copy of `from` (a disk image that is mostly holes).
pub fn copy_disk(from: &Path, to: &Path) -> io::Result<()> {
    let status = Command::new("cp").arg("--sparse=always").arg(from).arg(to).status()?;
    if status.success() { Ok(()) } else { Err(io::Error::other(format!("cp {}: {status}", from.display()))) }
}
