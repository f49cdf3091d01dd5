//! The Debian packages nodeplane's build, tests and developer run need, installed
//! when missing (`apt-get`, as root).

use std::process::Command;

/// Package → why it is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("dbus-daemon", "a private system-like bus for tests and `cargo xtask run`"),
    ("systemd", "busctl in tests; systemd-analyze for the unit's hardening check"),
    ("util-linux", "unshare/setpriv: throwaway network namespaces, a non-root caller"),
    ("containernetworking-plugins", "the real CNI host-local IPAM plugin (/usr/lib/cni/host-local)"),
    ("g++", "libFuzzer, which cargo-fuzz builds for the fuzz targets"),
    ("protobuf-compiler", "protoc, for containerd-client's build script"),
    ("clang-19", "compiles the eBPF datapath (Debian's plain clang is 14, too old)"),
    ("llvm-19", "llvm-strip/llvm-objdump for the eBPF object"),
    ("libbpf-dev", "bpf_helpers.h and friends for the eBPF C programs"),
    ("bpftool", "inspecting pinned maps and programs; BTF dumps in tests"),
    ("iproute2", "network namespaces and veth pairs for the datapath tests"),
    ("nftables", "nft: the egress masquerade rules nodeplaned installs, and their tests"),
    ("iptables", "netfilter rules dropping ctstate INVALID on every test node, as kube-proxy hosts have"),
    ("debootstrap", "the node image's Debian base"),
    ("erofs-utils", "mkfs.erofs: the image's read-only compressed root"),
    ("cryptsetup-bin", "veritysetup: the root's dm-verity hash tree"),
    ("dosfstools", "mkfs.vfat: the disk image's EFI system partition"),
    ("mtools", "mcopy: files onto the ESP without mounting it"),
    ("fdisk", "sfdisk: the disk image's GPT"),
    ("ovmf", "UEFI firmware to boot the disk image under QEMU"),
    ("qemu-system-x86", "boots the node image (TCG)"),
    ("openssl", "the test control plane's CA and certificates"),
    (
        "python3-prometheus-client",
        "the Prometheus project's parsers (text format and OpenMetrics), which the metrics tests read scrapes with",
    ),
    ("socat", "relays a QEMU guest's connections to the test control plane's API server"),
];

/// Installs what is missing: the toolchain's rustfmt and clippy (rustup), then
/// the Debian packages (apt-get, as root). Quiet when nothing is missing.
pub fn ensure() -> Result<(), String> {
    let components: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(tool, _)| !crate::cargo().args([tool, "--version"]).output().is_ok_and(|out| out.status.success()))
        .map(|(_, component)| component)
        .collect();
    if !components.is_empty() {
        crate::step(
            &format!("rustup component add {}", components.join(" ")),
            Command::new("rustup").args(["component", "add"]).args(&components),
        )
        .map_err(|e| format!("{e} (cargo fmt and cargo clippy are needed by `cargo xtask test`)"))?;
    }
    let missing: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).filter(|name| !installed(name)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (name, why) in PACKAGES.iter().filter(|(name, _)| missing.contains(name)) {
        eprintln!("    missing package {name}: {why}");
    }
    if !crate::is_root() {
        return Err(format!("missing packages; as root run: apt-get install -y {}", missing.join(" ")));
    }
    let apt = |args: &[&str]| {
        crate::step(
            &format!("apt-get {}", args.join(" ")),
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600", "-q"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    if missing.contains(&"qemu-system-x86") {
        // Some machines carry qemu-utils from backports, which blocks bookworm's
        // qemu-system-x86: take both from bookworm.
        install.extend(["--allow-downgrades", "qemu-utils/bookworm"]);
    }
    apt(&install)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}
