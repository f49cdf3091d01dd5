//! Builds the nodeplane node image from Debian bookworm (debootstrap), the way an
//! appliance OS is built: one read-only compressed root file system with
//! nodeplane's binaries, units and configuration in it, and two ways to boot it.
//!
//! Outputs, in the output directory:
//! - `nodeplane.img`: a UEFI-bootable GPT disk: the ESP (systemd-boot, each
//!   slot's kernel, initrd and boot entry), two slots of a root and its
//!   dm-verity hash tree (slot a holds this image and its entry the root hash;
//!   slot b is blank, for updates), and a blank state partition that becomes
//!   `/var` on first boot;
//! - `vmlinuz`, `initrd.img`, `root.erofs` and `state.img` (a blank state disk) for
//!   direct kernel boot, as the boot tests do (no hash tree: unverified);
//! - `root.verity` and `root.roothash`: the root's hash tree and root hash.
//!
//! The debootstrapped base is cached under the cache directory, keyed by the
//! package list, so a rebuild without package changes only re-lays nodeplane's
//! files over it; downloaded packages are cached there too.

pub mod oci;
pub mod upstream;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The Debian release and mirror the image is built from.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Bumped when the way the base is made changes, so old caches are not reused.
const BASE_RECIPE: u32 = 2;
/// A slot's partition names, which the boot entries and the initramfs use.
pub fn root_label(slot: &str) -> String {
    format!("nodeplane-root-{slot}")
}
pub fn verity_label(slot: &str) -> String {
    format!("nodeplane-verity-{slot}")
}
pub const STATE_LABEL: &str = "nodeplane-state";
/// Size of the state partition (and of the blank state disk): `/var` grows into it.
const STATE_BYTES: u64 = 1 << 30;
/// Each slot's root partition: room for roots well past today's 300 MiB.
const ROOT_SLOT_BYTES: u64 = 1 << 30;
/// Each slot's hash tree partition (a 1 GiB root's tree takes 8 MiB).
const VERITY_SLOT_BYTES: u64 = 16 << 20;
/// The ESP: systemd-boot and both slots' kernels and initrds.
const ESP_BYTES: u64 = 128 << 20;
const MIB: u64 = 1 << 20;
/// Kernel command line shared by both ways to boot (root= comes on top).
pub const KERNEL_ARGS: &str = "console=ttyS0 ro rootfstype=erofs panic=-1";

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("copying {} to {}: {source}", from.display(), to.display())]
    Copy { from: PathBuf, to: PathBuf, source: std::io::Error },
    #[error("{what}: cannot start {program}: {source}")]
    Spawn { what: String, program: String, source: std::io::Error },
    #[error("{what}: failed ({status})")]
    Failed { what: String, status: std::process::ExitStatus },
    #[error("{}: {entry:?} is not one package name", path.display())]
    PackageList { path: PathBuf, entry: String },
    #[error("no kernel in {}", .0.display())]
    NoKernel(PathBuf),
    #[error("{} ({bytes} bytes) does not fit its partition ({partition} bytes)", file.display())]
    TooLarge { file: PathBuf, bytes: u64, partition: u64 },
}

/// An I/O failure at `path`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_owned(), source }
}

/// Where a build's inputs are.
pub struct Inputs {
    /// The repository (for `image/` and `units/`).
    pub repo: PathBuf,
    /// The directory holding release builds of `nodeplaned`, `nodeplanectl`, `nodeplane-cni`, `nodeplane-health`.
    pub binaries: PathBuf,
    /// Cache for the debootstrapped base and downloaded packages.
    pub cache: PathBuf,
    /// Cache for the upstream components built from source ([`upstream`]).
    pub upstream_cache: PathBuf,
    /// `nodeplane-echo`, built static: the test container image's program.
    pub echo: PathBuf,
    /// The image's version (`0.1.0+COMMIT`): its boot entry's and its bundle's.
    pub version: String,
}

/// The built image's files.
#[derive(Clone, Debug)]
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    pub fn at(dir: &Path) -> Self {
        Image { dir: dir.to_owned() }
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.erofs")
    }
    /// The root's dm-verity hash tree.
    pub fn verity(&self) -> PathBuf {
        self.dir.join("root.verity")
    }
    /// The root hash of [`Image::verity`], in hex.
    pub fn root_hash(&self) -> Result<String, ImageError> {
        let path = self.dir.join("root.roothash");
        Ok(std::fs::read_to_string(&path).map_err(io(&path))?.trim().to_owned())
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("nodeplane.img")
    }
    /// The update bundle (`nodeplanectl update`).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("nodeplane-update.tar")
    }
    /// A blank state disk (GPT, one `nodeplane-state` partition) to copy for a
    /// direct boot.
    pub fn state_template(&self) -> PathBuf {
        self.dir.join("state.img")
    }
    /// Whether every file is there.
    pub fn complete(&self) -> bool {
        [self.kernel(), self.initrd(), self.root(), self.verity(), self.disk(), self.bundle(), self.state_template()]
            .iter()
            .all(|p| p.is_file())
    }
}

/// Builds the image into `out`, printing each step and how long it took.
pub fn build(inputs: &Inputs, out: &Path) -> Result<Image, ImageError> {
    let packages = packages(&inputs.repo.join("image/packages.list"))?;
    let base = base(&inputs.cache, &packages)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let rootfs = out.join("rootfs");
    if rootfs.exists() {
        run("remove the previous root tree", Command::new("rm").arg("-rf").arg(&rootfs))?;
    }
    run("copy the cached base", Command::new("cp").arg("-a").arg(&base).arg(&rootfs))?;
    install_nodeplane(inputs, &rootfs)?;
    install_kubernetes(inputs, &rootfs)?;
    let kernel_version = kernel_version(&rootfs)?;
    chroot(&rootfs, "make the initramfs", &["update-initramfs", "-c", "-k", &kernel_version])?;
    let image = Image::at(out);
    copy(&rootfs.join(format!("boot/vmlinuz-{kernel_version}")), &image.kernel())?;
    copy(&rootfs.join(format!("boot/initrd.img-{kernel_version}")), &image.initrd())?;
    make_root(&rootfs, &image.root(), &kernel_version)?;
    make_verity(&image)?;
    make_bundle(&image, &inputs.version)?;
    let esp = out.join("esp.img");
    make_esp(&rootfs, &image, &esp, &inputs.version)?;
    let (root, verity) = (image.root(), image.verity());
    let state = || Part { label: STATE_LABEL.into(), kind: VAR_TYPE, bytes: STATE_BYTES, file: None };
    make_disk(
        &image.disk(),
        &[
            Part { label: "ESP".into(), kind: ESP_TYPE, bytes: ESP_BYTES, file: Some(&esp) },
            Part { label: root_label("a"), kind: ROOT_TYPE, bytes: ROOT_SLOT_BYTES, file: Some(&root) },
            Part { label: verity_label("a"), kind: VERITY_TYPE, bytes: VERITY_SLOT_BYTES, file: Some(&verity) },
            Part { label: root_label("b"), kind: ROOT_TYPE, bytes: ROOT_SLOT_BYTES, file: None },
            Part { label: verity_label("b"), kind: VERITY_TYPE, bytes: VERITY_SLOT_BYTES, file: None },
            state(),
        ],
    )?;
    std::fs::remove_file(&esp).map_err(io(&esp))?;
    make_disk(&image.state_template(), &[state()])?;
    Ok(image)
}

/// The package names in `packages.list` (comments and blank lines skipped).
fn packages(list: &Path) -> Result<Vec<String>, ImageError> {
    let text = std::fs::read_to_string(list).map_err(io(list))?;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = names.iter().find(|n| n.contains(char::is_whitespace) || n.contains(',')) {
        return Err(ImageError::PackageList { path: list.to_owned(), entry: bad.clone() });
    }
    Ok(names)
}

/// The debootstrapped base for `packages`, from the cache or made now (minutes).
fn base(cache: &Path, packages: &[String]) -> Result<PathBuf, ImageError> {
    let mut hasher = DefaultHasher::new();
    (BASE_RECIPE, SUITE, MIRROR, packages).hash(&mut hasher);
    let base = cache.join(format!("base-{:016x}", hasher.finish()));
    if base.join(".complete").exists() {
        eprintln!("==> base root tree: cached at {}", base.display());
        return Ok(base);
    }
    let partial = base.with_extension("partial");
    if partial.exists() {
        run("remove a partial base", Command::new("rm").arg("-rf").arg(&partial))?;
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).map_err(io(&debs))?;
    run(
        "debootstrap the base (a few minutes when the package cache is cold)",
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", packages.join(",")))
            .arg(format!("--cache-dir={}", debs.display()))
            .args([SUITE])
            .arg(&partial)
            .arg(MIRROR),
    )?;
    // Nothing at run time reads these; they only make the image bigger.
    for dir in ["usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt", "var/lib/apt/lists"] {
        run(&format!("trim /{dir}"), Command::new("rm").arg("-rf").arg(partial.join(dir)))?;
    }
    trim_modules(&partial)?;
    std::fs::write(partial.join(".complete"), "").map_err(io(&partial))?;
    std::fs::rename(&partial, &base).map_err(io(&base))?;
    // Bases of other package lists are not coming back: free their space.
    for old in std::fs::read_dir(cache).map_err(io(cache))?.filter_map(|e| e.ok()) {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.starts_with("base-") && old.path() != base {
            run(&format!("remove the old base {name}"), Command::new("rm").arg("-rf").arg(old.path()))?;
        }
    }
    Ok(base)
}

/// Kernel modules for hardware a server node does not have (sound, GPUs, cameras,
/// radios, InfiniBand, sensors); `depmod` then forgets them.
fn trim_modules(rootfs: &Path) -> Result<(), ImageError> {
    const UNNEEDED: &[&str] = &[
        "sound",
        "drivers/gpu",
        "drivers/media",
        "drivers/infiniband",
        "drivers/iio",
        "drivers/staging",
        "drivers/isdn",
        "drivers/bluetooth",
        "drivers/net/wireless",
        "net/wireless",
        "net/mac80211",
        "net/bluetooth",
    ];
    let version = kernel_version(rootfs)?;
    let kernel = rootfs.join("usr/lib/modules").join(&version).join("kernel");
    for dir in UNNEEDED {
        run(&format!("trim kernel/{dir}"), Command::new("rm").arg("-rf").arg(kernel.join(dir)))?;
    }
    chroot(rootfs, "depmod", &["depmod", "-a", &version])
}

/// Lays nodeplane's binaries, units and the image's configuration over the base.
fn install_nodeplane(inputs: &Inputs, rootfs: &Path) -> Result<(), ImageError> {
    eprintln!("==> install nodeplane");
    let repo = &inputs.repo;
    let examples = repo.join("system/probe/examples/xyz");
    let files: [(PathBuf, &str, u32); 15] = [
        (inputs.binaries.join("nodeplaned"), "usr/bin/nodeplaned", 0o755),
        (inputs.binaries.join("nodeplane-health"), "usr/bin/nodeplane-health", 0o755),
        (inputs.binaries.join("nodeplanectl"), "usr/bin/nodeplanectl", 0o755),
        (inputs.binaries.join("nodeplane-cni"), "usr/lib/cni/nodeplane-cni", 0o755),
        (repo.join("units/nodeplaned.service"), "usr/lib/systemd/system/nodeplaned.service", 0o644),
        (repo.join("units/nodeplane-health.service"), "usr/lib/systemd/system/nodeplane-health.service", 0o644),
        (repo.join("units/nodeplaned-metrics.socket"), "usr/lib/systemd/system/nodeplaned-metrics.socket", 0o644),
        (repo.join("units/nodeplane-boot-check.service"), "usr/lib/systemd/system/nodeplane-boot-check.service", 0o644),
        (repo.join("units/org.nodeplane.Node1.conf"), "usr/share/dbus-1/system.d/org.nodeplane.Node1.conf", 0o644),
        (repo.join("units/nodeplane-tmpfiles.conf"), "usr/lib/tmpfiles.d/nodeplane.conf", 0o644),
        (repo.join("sysctl/80-nodeplane.conf"), "usr/lib/sysctl.d/80-nodeplane.conf", 0o644),
        (repo.join("README.md"), "usr/share/doc/nodeplane/README.md", 0o644),
        // For `nodeplanectl probe /usr/share/doc/nodeplane/examples/xyz`.
        (examples.join("pods.yaml"), "usr/share/doc/nodeplane/examples/xyz/pods.yaml", 0o644),
        (examples.join("policy.yaml"), "usr/share/doc/nodeplane/examples/xyz/policy.yaml", 0o644),
        (examples.join("service.yaml"), "usr/share/doc/nodeplane/examples/xyz/service.yaml", 0o644),
    ];
    for (from, to, mode) in files {
        let to = rootfs.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).map_err(io(&to))?;
        copy(&from, &to)?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io(&to))?;
    }
    run(
        "overlay image/rootfs",
        Command::new("cp").arg("-a").arg("--no-preserve=ownership").arg(repo.join("image/rootfs/.")).arg(rootfs),
    )?;
    std::fs::create_dir_all(rootfs.join("etc/nodeplane/manifests")).map_err(io(rootfs))?;
    // Where fstab mounts the ESP: updates write there, systemd-bless-boot renames there.
    std::fs::create_dir_all(rootfs.join("efi")).map_err(io(rootfs))?;
    // Empty: systemd makes a machine id at each boot (the overlay /etc is volatile).
    std::fs::write(rootfs.join("etc/machine-id"), "").map_err(io(rootfs))?;
    run(
        "enable the units",
        Command::new("systemctl").arg(format!("--root={}", rootfs.display())).args([
            "enable",
            "nodeplaned.service",
            "nodeplaned-metrics.socket",
            "nodeplane-boot-check.service",
            "nodeplane-health.service",
            "nodeplane-config.service",
            "nodeplane-console-status.service",
            "containerd.service",
            "nodeplane-images.service",
            "kubelet.service",
            "systemd-networkd.service",
        ]),
    )?;
    Ok(())
}

/// The kubelet and containerd 2 (built from source, cached), and the container
/// images pods use, as OCI archives: the pause image and the echo test image.
fn install_kubernetes(inputs: &Inputs, rootfs: &Path) -> Result<(), ImageError> {
    let kubernetes = upstream::KUBERNETES.ensure(&inputs.repo, &inputs.upstream_cache)?;
    let containerd = upstream::CONTAINERD.ensure(&inputs.repo, &inputs.upstream_cache)?;
    eprintln!("==> install the kubelet, containerd {} and the container images", upstream::CONTAINERD.version);
    let binaries = [
        (kubernetes.join("kubelet"), "usr/bin/kubelet"),
        (containerd.join("containerd"), "usr/bin/containerd"),
        (containerd.join("containerd-shim-runc-v2"), "usr/bin/containerd-shim-runc-v2"),
        (containerd.join("ctr"), "usr/bin/ctr"),
    ];
    for (from, to) in binaries {
        let to = rootfs.join(to);
        copy(&from, &to)?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(io(&to))?;
    }
    let images = rootfs.join("usr/share/nodeplane/images");
    std::fs::create_dir_all(&images).map_err(io(&images))?;
    let pause = upstream::pause(&inputs.repo, &inputs.upstream_cache)?;
    let archives = [
        (
            "pause",
            oci::OciImage { name: upstream::PAUSE_IMAGE, files: &[(pause, "/pause", 0o755)], entrypoint: &["/pause"] },
        ),
        (
            "echo",
            oci::OciImage {
                name: ECHO_IMAGE,
                files: &[(inputs.echo.clone(), "/nodeplane-echo", 0o755)],
                entrypoint: &["/nodeplane-echo"],
            },
        ),
    ];
    let mut names = String::new();
    for (file, image) in &archives {
        image.write(&images.join(format!("{file}.tar")))?;
        names += image.name;
        names.push('\n');
    }
    std::fs::write(images.join("names"), names).map_err(io(&images))
}

/// The test container image pods of the boot tests run.
pub const ECHO_IMAGE: &str = "nodeplane.invalid/echo:v1";

fn kernel_version(rootfs: &Path) -> Result<String, ImageError> {
    let modules = rootfs.join("usr/lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&modules)
        .map_err(io(&modules))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.pop().ok_or(ImageError::NoKernel(modules))
}

/// The read-only root: erofs, lz4hc-compressed, without the kernel and initrd
/// (they are on the ESP, or passed by the VM); `/boot/config-*` stays for bpftool.
fn make_root(rootfs: &Path, root: &Path, kernel_version: &str) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(root);
    run(
        "make the erofs root",
        Command::new("mkfs.erofs")
            .args(["-zlz4hc", "--all-root", "-T0", "--quiet"])
            .arg(format!("--exclude-path=boot/vmlinuz-{kernel_version}"))
            .arg(format!("--exclude-path=boot/initrd.img-{kernel_version}"))
            .arg(root)
            .arg(rootfs),
    )
}

/// The root's dm-verity hash tree and root hash (`veritysetup format`).
fn make_verity(image: &Image) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(image.verity());
    let root_hash = image.dir.join("root.roothash");
    run(
        "make the root's hash tree",
        Command::new("veritysetup")
            .arg("format")
            .arg(image.root())
            .arg(image.verity())
            .arg(format!("--root-hash-file={}", root_hash.display())),
    )
}

/// Slot `slot`'s boot entry (Boot Loader Specification, type #1): its kernel
/// and initrd on the ESP, its root opened through dm-verity by the initramfs
/// with `root_hash`; `generation` orders entries (the highest good one boots).
/// The twin of `nodeplanectl update`'s (`nodeplane::slots::entry`), which a
/// test compares.
pub fn boot_entry(slot: &str, version: &str, generation: u64, root_hash: &str) -> String {
    format!(
        "title nodeplane {version} (slot {slot})\n# nodeplane-version {version}\nsort-key nodeplane\nversion {generation}\n\
         linux /EFI/nodeplane/{slot}/vmlinuz\ninitrd /EFI/nodeplane/{slot}/initrd.img\n\
         options root=/dev/mapper/root nodeplane.slot={slot} nodeplane.verity={root_hash} {KERNEL_ARGS}\n"
    )
}

/// The update bundle: `manifest.json` (format 1: version, root hash, kernel
/// arguments, each file's size and SHA-256), then the root, its hash tree,
/// the kernel and the initrd, as a tar in that order (`nodeplanectl update`
/// streams it).
fn make_bundle(image: &Image, version: &str) -> Result<(), ImageError> {
    const FILES: [&str; 4] = ["root.erofs", "root.verity", "vmlinuz", "initrd.img"];
    let mut files = Vec::new();
    for name in FILES {
        let path = image.dir.join(name);
        let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
        files.push(format!("{{\"name\":\"{name}\",\"bytes\":{bytes},\"sha256\":\"{}\"}}", sha256(&path)?));
    }
    let manifest = format!(
        "{{\"format\":1,\"version\":\"{version}\",\"root_hash\":\"{}\",\"kernel_args\":\"{KERNEL_ARGS}\",\"files\":[{}]}}\n",
        image.root_hash()?,
        files.join(",")
    );
    let path = image.dir.join("manifest.json");
    std::fs::write(&path, manifest).map_err(io(&path))?;
    let _ = std::fs::remove_file(image.bundle());
    run(
        "make the update bundle",
        Command::new("tar")
            .args(["--create", "--format=gnu", "--owner=0", "--group=0", "--numeric-owner", "--file"])
            .arg(image.bundle())
            .arg("-C")
            .arg(&image.dir)
            .arg("manifest.json")
            .args(FILES),
    )
}

/// The SHA-256 of the file at `path`, in hex (`sha256sum`).
fn sha256(path: &Path) -> Result<String, ImageError> {
    let out = Command::new("sha256sum").arg(path).output().map_err(|source| ImageError::Spawn {
        what: "sha256sum".into(),
        program: "sha256sum".into(),
        source,
    })?;
    let hex = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    if !out.status.success() || hex.len() != 64 {
        return Err(ImageError::Failed { what: format!("sha256sum {}", path.display()), status: out.status });
    }
    Ok(hex)
}

/// The EFI system partition: systemd-boot as the removable-media loader, and
/// slot a's kernel, initrd and entry.
fn make_esp(rootfs: &Path, image: &Image, esp: &Path, version: &str) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(esp);
    run(
        "make the ESP",
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "NODEPLANE", "-C"])
            .arg(esp)
            .arg((ESP_BYTES / 1024).to_string()),
    )?;
    let text = tempfile_dir(esp)?;
    std::fs::write(text.join("loader.conf"), "timeout 0\n").map_err(io(&text))?;
    let entry = boot_entry("a", version, 1, &image.root_hash()?);
    std::fs::write(text.join("nodeplane-a.conf"), entry).map_err(io(&text))?;
    let mtools = |args: &[&std::ffi::OsStr]| {
        let mut command = Command::new(args[0]);
        command.arg("-i").arg(esp).args(&args[1..]);
        run(&format!("{} on the ESP", args[0].to_string_lossy()), &mut command)
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    for dir in ["::/EFI", "::/EFI/BOOT", "::/EFI/nodeplane", "::/EFI/nodeplane/a", "::/loader", "::/loader/entries"] {
        mtools(&[&os("mmd"), &os(dir)])?;
    }
    let boot_efi = rootfs.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    let copies: [(PathBuf, &str); 5] = [
        (boot_efi, "::/EFI/BOOT/BOOTX64.EFI"),
        (image.kernel(), "::/EFI/nodeplane/a/vmlinuz"),
        (image.initrd(), "::/EFI/nodeplane/a/initrd.img"),
        (text.join("loader.conf"), "::/loader/loader.conf"),
        (text.join("nodeplane-a.conf"), "::/loader/entries/nodeplane-a.conf"),
    ];
    for (from, to) in copies {
        mtools(&[&os("mcopy"), from.as_os_str(), &os(to)])?;
    }
    std::fs::remove_dir_all(&text).map_err(io(&text))
}

/// A scratch directory beside `near`.
fn tempfile_dir(near: &Path) -> Result<PathBuf, ImageError> {
    let dir = near.with_extension("files");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

/// GPT partition types (the Discoverable Partitions Specification's).
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"; // Linux root (x86-64)
const VERITY_TYPE: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"; // Linux root verity (x86-64)
const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D"; // Linux /var

/// A partition of a disk being made: blank, or `file` copied in.
struct Part<'a> {
    label: String,
    kind: &'static str,
    bytes: u64,
    file: Option<&'a Path>,
}

/// A GPT disk of `parts`, in order. Sparse: blank space takes none.
fn make_disk(disk: &Path, parts: &[Part<'_>]) -> Result<(), ImageError> {
    let mut script = String::from("label: gpt\n");
    let mut layout = Vec::new();
    let mut offset = MIB;
    for part in parts {
        if let Some(file) = part.file {
            let len = std::fs::metadata(file).map_err(io(file))?.len();
            if len > part.bytes {
                return Err(ImageError::TooLarge { file: file.to_owned(), bytes: len, partition: part.bytes });
            }
            layout.push((file, offset));
        }
        script += &format!(
            "start={}, size={}, type={}, name=\"{}\"\n",
            offset / 512,
            part.bytes / 512,
            part.kind,
            part.label
        );
        offset += part.bytes;
    }
    let total = offset + MIB; // room for the backup GPT
    let _ = std::fs::remove_file(disk);
    let file = std::fs::File::create(disk).map_err(io(disk))?;
    file.set_len(total).map_err(io(disk))?;
    drop(file);
    let mut sfdisk = Command::new("sfdisk");
    sfdisk.args(["--quiet", "--no-reread", "--no-tell-kernel"]).arg(disk).stdin(std::process::Stdio::piped());
    let spawn = |source| ImageError::Spawn { what: "partition the disk".into(), program: "sfdisk".into(), source };
    let mut child = sfdisk.spawn().map_err(spawn)?;
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).map_err(spawn)?;
    let status = child.wait().map_err(spawn)?;
    if !status.success() {
        return Err(ImageError::Failed { what: format!("sfdisk {}, with\n{script}", disk.display()), status });
    }
    for (file, offset) in layout {
        let mut from = std::fs::File::open(file).map_err(io(file))?;
        let mut to = std::fs::File::options().write(true).open(disk).map_err(io(disk))?;
        to.seek(SeekFrom::Start(offset)).map_err(io(disk))?;
        std::io::copy(&mut from, &mut to).map_err(io(disk))?;
    }
    eprintln!("==> {}: {} MiB", disk.display(), total / MIB);
    Ok(())
}

/// Runs `args` inside the root tree, with /proc, /sys and /dev as the tools
/// expect, in a private mount namespace (nothing stays mounted).
fn chroot(rootfs: &Path, what: &str, args: &[&str]) -> Result<(), ImageError> {
    let script = format!(
        "mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && mount --rbind /dev {r}/dev && exec chroot {r} \"$@\"",
        r = rootfs.display()
    );
    run(
        what,
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script, "sh"])
            .args(args),
    )
}

fn copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::copy(from, to).map(|_| ()).map_err(|source| ImageError::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    })
}

/// Runs a build step, printing it and its duration.
fn run(what: &str, command: &mut Command) -> Result<(), ImageError> {
    let started = Instant::now();
    eprintln!("==> {what}");
    let status = command.status().map_err(|source| ImageError::Spawn {
        what: what.to_owned(),
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !status.success() {
        return Err(ImageError::Failed { what: what.to_owned(), status });
    }
    let took = started.elapsed();
    if took.as_secs() >= 2 {
        eprintln!("    ({:.1} s)", took.as_secs_f64());
    }
    Ok(())
}
