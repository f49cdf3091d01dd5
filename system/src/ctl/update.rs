//! `nodeplanectl update FILE`: moves a node booted from its disk image to the
//! image in an update bundle, the A/B way. The bundle (a tar, `cargo xtask
//! image` makes it) holds `manifest.json` first (format, version, root hash,
//! kernel arguments, each file's size and SHA-256), then `root.erofs`,
//! `root.verity`, `vmlinuz` and `initrd.img`. This:
//! 1. removes the boot entry of the slot not booted, so a half-written slot
//!    is never started;
//! 2. streams the root and its hash tree onto that slot's partitions and the
//!    kernel and initrd onto the ESP, checking each file's size and hash
//!    against the manifest as it goes;
//! 3. checks the written root against the root hash (`veritysetup verify`,
//!    which reads it all back);
//! 4. writes the slot's entry with a boot counter (`+TRIES`) and the next
//!    generation, so it boots next and must prove itself good within TRIES
//!    boots (`nodeplane-boot-check.service`), else the old slot boots again.
//!
//! The booted slot is never touched, and `/var` is not either.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::slots::{self, SLOTS};

/// What the bundle's manifest says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub version: String,
    pub root_hash: String,
    pub kernel_args: String,
    pub files: Vec<BundleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The files a bundle carries, in order after the manifest.
const FILES: [&str; 4] = ["root.erofs", "root.verity", "vmlinuz", "initrd.img"];

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("update is for root only")]
    NotRoot,
    #[error("this boot is not from a slot of the disk image (no nodeplane.slot= on the kernel command line)")]
    NotFromASlot,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the bundle: {0}")]
    Bundle(String),
    #[error("the bundle's {name}: {bytes} bytes do not fit {} ({capacity} bytes)", device.display())]
    TooLarge { name: String, bytes: u64, device: PathBuf, capacity: u64 },
    #[error("the bundle's {name} does not match its manifest: {what}")]
    Mismatch { name: String, what: String },
    #[error("slot {slot}'s root does not match root hash {root_hash}: {detail}")]
    Verify { slot: String, root_hash: String, detail: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io { path: path.to_owned(), source }
}

/// Where an update writes: the ESP, the partitions by label, the kernel
/// command line of this boot.
pub struct Target {
    pub esp: PathBuf,
    pub partitions: PathBuf,
    pub cmdline: String,
}

impl Target {
    fn system() -> Result<Self, UpdateError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(io(Path::new("/proc/cmdline")))?;
        Ok(Target { esp: slots::ESP.into(), partitions: "/dev/disk/by-partlabel".into(), cmdline })
    }
}

/// What an update did.
#[derive(Debug)]
pub struct Updated {
    pub slot: String,
    pub version: String,
    pub bytes: u64,
    pub took: Duration,
    pub entry: String,
}

pub(super) fn run(file: &Path, tries: u32) -> ExitCode {
    let result = if rustix::process::geteuid().is_root() {
        Target::system().and_then(|target| update(file, tries, &target))
    } else {
        Err(UpdateError::NotRoot)
    };
    match result {
        Ok(done) => {
            println!(
                "slot {}: nodeplane {} written and verified ({} MiB in {:.1} s); it boots next, with {tries} boot(s) \
                 to come up healthy before slot {} boots again (entry {}); reboot to start it",
                done.slot,
                done.version,
                done.bytes >> 20,
                done.took.as_secs_f64(),
                other(&done.slot),
                done.entry
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("update failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn other(slot: &str) -> &'static str {
    if slot == SLOTS[0] { SLOTS[1] } else { SLOTS[0] }
}

/// Writes the bundle at `file` to the slot not booted and makes it the next
/// boot's, with `tries` boots to prove itself.
pub fn update(file: &Path, tries: u32, target: &Target) -> Result<Updated, UpdateError> {
    let started = Instant::now();
    let booted = slots::booted(&target.cmdline).ok_or(UpdateError::NotFromASlot)?;
    let slot = other(&booted).to_owned();
    let entries = slots::entries_dir(&target.esp);
    let existing = slots::read(&target.esp).map_err(io(&entries))?;
    let generation = existing.iter().map(|s| s.generation).max().unwrap_or(0) + 1;
    // Never a half-written slot in the menu.
    for old in existing.iter().filter(|s| s.name == slot) {
        let path = entries.join(&old.file);
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    sync_dir(&entries)?;

    let bundle = std::fs::File::open(file).map_err(io(file))?;
    let mut archive = tar::Archive::new(bundle);
    let mut members = archive.entries().map_err(io(file))?;
    let mut next = |what: &str| -> Result<tar::Entry<'_, std::fs::File>, UpdateError> {
        let member = members.next().ok_or_else(|| UpdateError::Bundle(format!("ends before {what}")))?;
        member.map_err(io(file))
    };
    let mut manifest = next("manifest.json")?;
    let name = member_name(&manifest)?;
    if name != "manifest.json" {
        return Err(UpdateError::Bundle(format!("its first file is {name}, not manifest.json")));
    }
    let mut text = String::new();
    manifest.read_to_string(&mut text).map_err(io(file))?;
    drop(manifest);
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| UpdateError::Bundle(format!("manifest.json: {e}")))?;
    check_manifest(&manifest)?;

    let kernel_dir = target.esp.join("EFI/nodeplane").join(&slot);
    std::fs::create_dir_all(&kernel_dir).map_err(io(&kernel_dir))?;
    let mut written = 0;
    for expected in FILES {
        let mut member = next(expected)?;
        let name = member_name(&member)?;
        if name != expected {
            return Err(UpdateError::Bundle(format!("found {name} where {expected} comes")));
        }
        let listed = manifest.files.iter().find(|f| f.name == name).expect("checked: every file listed");
        let (destination, partition) = match name.as_str() {
            "root.erofs" => (target.partitions.join(nodeplane_label("root", &slot)), true),
            "root.verity" => (target.partitions.join(nodeplane_label("verity", &slot)), true),
            _ => (kernel_dir.join(format!("{name}.new")), false),
        };
        written += copy_checked(&mut member, listed, &destination, partition)?;
    }
    let (data, hash) = (
        target.partitions.join(nodeplane_label("root", &slot)),
        target.partitions.join(nodeplane_label("verity", &slot)),
    );
    verify_root(&slot, &data, &hash, &manifest.root_hash)?;
    for name in ["vmlinuz", "initrd.img"] {
        let (from, to) = (kernel_dir.join(format!("{name}.new")), kernel_dir.join(name));
        std::fs::rename(&from, &to).map_err(io(&to))?;
    }
    sync_dir(&kernel_dir)?;
    let entry = slots::entry_name(&slot, Some(tries));
    let text = slots::entry(&slot, &manifest.version, generation, &manifest.root_hash, &manifest.kernel_args);
    let path = entries.join(&entry);
    let mut out = std::fs::File::create(&path).map_err(io(&path))?;
    out.write_all(text.as_bytes()).and_then(|()| out.sync_all()).map_err(io(&path))?;
    sync_dir(&entries)?;
    Ok(Updated { slot, version: manifest.version, bytes: written, took: started.elapsed(), entry })
}

/// `nodeplane-root-b`, `nodeplane-verity-b`.
fn nodeplane_label(kind: &str, slot: &str) -> String {
    format!("nodeplane-{kind}-{slot}")
}

fn member_name(member: &tar::Entry<'_, std::fs::File>) -> Result<String, UpdateError> {
    let path = member.path().map_err(|e| UpdateError::Bundle(format!("a file name: {e}")))?;
    Ok(path.to_string_lossy().trim_start_matches("./").to_owned())
}

fn check_manifest(manifest: &Manifest) -> Result<(), UpdateError> {
    let bad = |what: String| Err(UpdateError::Bundle(format!("manifest.json: {what}")));
    if manifest.format != 1 {
        return bad(format!("format {} (this nodeplanectl reads format 1)", manifest.format));
    }
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&manifest.root_hash, 64) {
        return bad(format!("root_hash {:?} is not 64 hex digits", manifest.root_hash));
    }
    let printable = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if !printable(&manifest.version) || manifest.version.contains(' ') {
        return bad(format!("version {:?} is not one word", manifest.version));
    }
    if !printable(&manifest.kernel_args) {
        return bad("kernel_args is not one line".into());
    }
    for name in FILES {
        match manifest.files.iter().filter(|f| f.name == name).count() {
            1 => {}
            n => return bad(format!("{name} listed {n} times")),
        }
    }
    if let Some(extra) = manifest.files.iter().find(|f| !FILES.contains(&f.name.as_str())) {
        return bad(format!("an unknown file {}", extra.name));
    }
    if let Some(file) = manifest.files.iter().find(|f| !hex(&f.sha256, 64)) {
        return bad(format!("{}'s sha256 is not 64 hex digits", file.name));
    }
    Ok(())
}

/// Copies `from` to `to` (a `partition`, or a file it creates), checking
/// size and SHA-256 against `listed`; says how far it got every few seconds.
fn copy_checked(from: &mut impl Read, listed: &BundleFile, to: &Path, partition: bool) -> Result<u64, UpdateError> {
    let mismatch = |what: String| UpdateError::Mismatch { name: listed.name.clone(), what };
    let file = !partition;
    let mut out = std::fs::OpenOptions::new().write(true).create(file).truncate(file).open(to).map_err(io(to))?;
    if partition {
        let capacity = std::io::Seek::seek(&mut out, std::io::SeekFrom::End(0)).map_err(io(to))?;
        if listed.bytes > capacity {
            let (name, device) = (listed.name.clone(), to.to_owned());
            return Err(UpdateError::TooLarge { name, bytes: listed.bytes, device, capacity });
        }
        std::io::Seek::rewind(&mut out).map_err(io(to))?;
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let (mut done, mut said) = (0u64, Instant::now());
    loop {
        let n = from.read(&mut buffer).map_err(io(to))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(io(to))?;
        done += n as u64;
        if said.elapsed() > Duration::from_secs(5) {
            eprintln!("update: {} {}/{} MiB", listed.name, done >> 20, listed.bytes >> 20);
            said = Instant::now();
        }
    }
    out.sync_all().map_err(io(to))?;
    if done != listed.bytes {
        return Err(mismatch(format!("{done} bytes, the manifest says {}", listed.bytes)));
    }
    let got = format!("{:x}", hasher.finalize());
    if !got.eq_ignore_ascii_case(&listed.sha256) {
        return Err(mismatch(format!("sha256 {got}, the manifest says {}", listed.sha256)));
    }
    Ok(done)
}

/// Reads the written root back through its hash tree (`veritysetup verify`).
fn verify_root(slot: &str, data: &Path, hash: &Path, root_hash: &str) -> Result<(), UpdateError> {
    let failed = |detail: String| UpdateError::Verify { slot: slot.into(), root_hash: root_hash.into(), detail };
    let out = Command::new("veritysetup")
        .arg("verify")
        .arg(data)
        .arg(hash)
        .arg(root_hash)
        .output()
        .map_err(|e| failed(format!("veritysetup (cryptsetup-bin): {e}")))?;
    if out.status.success() { Ok(()) } else { Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_owned())) }
}

fn sync_dir(dir: &Path) -> Result<(), UpdateError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::SlotHealth;

    /// A node's disk in a directory: an ESP with slot a's entry, and the
    /// partitions as files of their size.
    struct Disk {
        dir: tempfile::TempDir,
    }

    impl Disk {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let esp = dir.path().join("esp");
            std::fs::create_dir_all(slots::entries_dir(&esp)).unwrap();
            let entry = slots::entry("a", "0.1.0+old", 1, &"0".repeat(64), "ro");
            std::fs::write(slots::entries_dir(&esp).join("nodeplane-a.conf"), entry).unwrap();
            std::fs::create_dir_all(dir.path().join("parts")).unwrap();
            for (label, bytes) in [("root-b", 1 << 20), ("verity-b", 64 << 10)] {
                let file = std::fs::File::create(dir.path().join(format!("parts/nodeplane-{label}"))).unwrap();
                file.set_len(bytes).unwrap();
            }
            Disk { dir }
        }

        fn target(&self) -> Target {
            Target {
                esp: self.dir.path().join("esp"),
                partitions: self.dir.path().join("parts"),
                cmdline: "root=/dev/mapper/root nodeplane.slot=a ro".into(),
            }
        }
    }

    /// A bundle's members, by name.
    type Files = Vec<(String, Vec<u8>)>;
    /// A change to a bundle's manifest or members before it is packed.
    type Edit = Box<dyn Fn(&mut serde_json::Value, &mut Files)>;

    /// A bundle of a `root` (with a real hash tree), `edit`ed before it is packed.
    fn bundle(dir: &Path, root: &[u8], edit: impl FnOnce(&mut serde_json::Value, &mut Files)) -> PathBuf {
        let work = dir.join("bundle");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("root.erofs"), root).unwrap();
        let out = Command::new("veritysetup")
            .arg("format")
            .arg(work.join("root.erofs"))
            .arg(work.join("root.verity"))
            .arg(format!("--root-hash-file={}", work.join("hash").display()))
            .output()
            .expect("veritysetup (cryptsetup-bin)");
        assert!(out.status.success(), "{out:?}");
        let root_hash = std::fs::read_to_string(work.join("hash")).unwrap();
        let mut files: Files = vec![
            ("root.erofs".into(), root.to_vec()),
            ("root.verity".into(), std::fs::read(work.join("root.verity")).unwrap()),
            ("vmlinuz".into(), b"kernel".to_vec()),
            ("initrd.img".into(), b"initrd".to_vec()),
        ];
        let listed: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, data)| {
                serde_json::json!({"name": name, "bytes": data.len(), "sha256": format!("{:x}", Sha256::digest(data))})
            })
            .collect();
        let mut manifest = serde_json::json!({
            "format": 1, "version": "0.1.0+new", "root_hash": root_hash.trim(), "kernel_args": "ro rootfstype=erofs",
            "files": listed,
        });
        edit(&mut manifest, &mut files);
        let path = dir.join("update.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let members = std::iter::once(("manifest.json".to_owned(), manifest.to_string().into_bytes())).chain(files);
        for (name, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, &name, data.as_slice()).unwrap();
        }
        tar.finish().unwrap();
        path
    }

    fn root() -> Vec<u8> {
        (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_bundle_goes_to_the_slot_not_booted_with_tries_and_the_next_generation() {
        let disk = Disk::new();
        let file = bundle(disk.dir.path(), &root(), |_, _| {});
        let done = update(&file, 3, &disk.target()).unwrap();
        assert_eq!((done.slot.as_str(), done.entry.as_str()), ("b", "nodeplane-b+3.conf"));
        let written = std::fs::read(disk.dir.path().join("parts/nodeplane-root-b")).unwrap();
        assert_eq!(&written[..root().len()], root().as_slice());
        assert_eq!(std::fs::read(disk.dir.path().join("esp/EFI/nodeplane/b/vmlinuz")).unwrap(), b"kernel");
        let slots = slots::read(&disk.target().esp).unwrap();
        assert_eq!(slots[1].health, SlotHealth::Trying { left: 3 });
        assert_eq!((slots[1].version.as_str(), slots[1].generation), ("0.1.0+new", 2));
        let entry = std::fs::read_to_string(disk.dir.path().join("esp/loader/entries/nodeplane-b+3.conf")).unwrap();
        assert!(entry.contains("nodeplane.slot=b nodeplane.verity="), "{entry}");
        // From b, the next update goes to a, and its entry replaces a's.
        let from_b = Target { cmdline: "nodeplane.slot=b".into(), ..disk.target() };
        for label in ["root-a", "verity-a"] {
            let file = std::fs::File::create(disk.dir.path().join(format!("parts/nodeplane-{label}"))).unwrap();
            file.set_len(1 << 20).unwrap();
        }
        assert_eq!(update(&file, 2, &from_b).unwrap().entry, "nodeplane-a+2.conf");
        let names: Vec<String> = slots::read(&disk.target().esp).unwrap().into_iter().map(|s| s.file).collect();
        assert_eq!(names, ["nodeplane-a+2.conf", "nodeplane-b+3.conf"]);
    }

    #[test]
    fn a_bundle_that_does_not_match_its_manifest_leaves_no_bootable_slot() {
        let cases: Vec<(&str, Edit)> = vec![
            ("does not match its manifest: sha256", Box::new(|_, files| files[0].1[5] ^= 1)),
            ("does not match root hash", Box::new(|m, _| m["root_hash"] = serde_json::json!("ab".repeat(32)))),
            ("root_hash", Box::new(|m, _| m["root_hash"] = serde_json::json!("xyz"))),
            ("format 2", Box::new(|m, _| m["format"] = serde_json::json!(2))),
            ("found root.verity where root.erofs comes", Box::new(|_, files| files.swap(0, 1))),
            ("ends before initrd.img", Box::new(|_, files| drop(files.pop()))),
        ];
        for (expected, edit) in cases {
            let disk = Disk::new();
            // A b entry from an earlier update: gone, whatever happens next.
            std::fs::write(slots::entries_dir(&disk.target().esp).join("nodeplane-b.conf"), "title old\n").unwrap();
            let file = bundle(disk.dir.path(), &root(), edit);
            let err = update(&file, 3, &disk.target()).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            let slots = slots::read(&disk.target().esp).unwrap();
            assert_eq!(slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a"], "{expected}");
        }
        let disk = Disk::new();
        let too_large = bundle(disk.dir.path(), &vec![1u8; 2 << 20], |_, _| {});
        let err = update(&too_large, 3, &disk.target()).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        let direct = Target { cmdline: "root=/dev/vda ro".into(), ..disk.target() };
        assert!(matches!(update(&too_large, 3, &direct), Err(UpdateError::NotFromASlot)));
    }
}
