//! The disk image's two slots (a and b) as the ESP's boot entries describe
//! them, for `nodeplanectl update`, `status` and `boot-check`. Each slot has a
//! root partition, a hash tree partition and one entry
//! (`/efi/loader/entries/nodeplane-SLOT[+LEFT[-DONE]].conf`): systemd-boot's
//! boot counting keeps a new slot's tries in the name (`+3`, then `+2-1`, …),
//! `systemd-bless-boot` drops them once the boot is good, and an entry at
//! `+0` is bad: systemd-boot sorts it last, so the other slot boots again.
//! Among good entries the highest `version` (an update generation) boots.

use std::path::{Path, PathBuf};

/// Where the ESP is mounted (fstab).
pub const ESP: &str = "/efi";
pub const SLOTS: [&str; 2] = ["a", "b"];

/// One slot's boot entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Slot {
    pub name: String,
    /// The image version it holds (the entry's title).
    pub version: String,
    /// The update generation: the highest good one boots.
    pub generation: u64,
    pub health: SlotHealth,
    /// The entry's file name.
    #[serde(skip)]
    pub file: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotHealth {
    /// Booted and found healthy, or never counted (the image's own slot).
    Good,
    /// Not yet found good; boots left.
    Trying { left: u32 },
    /// Its tries ran out without a good boot.
    Bad,
}

impl std::fmt::Display for SlotHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotHealth::Good => f.write_str("good"),
            SlotHealth::Trying { left } => write!(f, "not yet good, {left} boot(s) left to prove it"),
            SlotHealth::Bad => f.write_str("bad: its tries ran out without a good boot"),
        }
    }
}

/// The slot this boot came from (`nodeplane.slot=` on the kernel command line).
pub fn booted(cmdline: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("nodeplane.slot=")).map(str::to_owned)
}

/// Why the booted slot is not the one updated last: that one's tries ran out.
pub fn rolled_back(slots: &[Slot], booted: &str) -> Option<String> {
    let current = slots.iter().find(|s| s.name == booted)?;
    let newer =
        slots.iter().find(|s| s.name != booted && s.generation > current.generation && s.health == SlotHealth::Bad)?;
    Some(format!(
        "rolled back: slot {} (nodeplane {}) did not come up healthy within its tries; slot {} (nodeplane {}) booted again",
        newer.name, newer.version, current.name, current.version
    ))
}

/// The entry file name of a slot: `nodeplane-a.conf`, `nodeplane-b+3.conf`, …
pub fn entry_name(slot: &str, tries: Option<u32>) -> String {
    match tries {
        Some(tries) => format!("nodeplane-{slot}+{tries}.conf"),
        None => format!("nodeplane-{slot}.conf"),
    }
}

/// `nodeplane-SLOT[+LEFT[-DONE]].conf` → (slot, boots left if counted).
fn parse_name(file: &str) -> Option<(String, Option<u32>)> {
    let stem = file.strip_prefix("nodeplane-")?.strip_suffix(".conf")?;
    let (slot, counter) = match stem.split_once('+') {
        Some((slot, counter)) => (slot, Some(counter)),
        None => (stem, None),
    };
    if !SLOTS.contains(&slot) {
        return None;
    }
    let left = match counter {
        Some(counter) => Some(counter.split('-').next()?.parse().ok()?),
        None => None,
    };
    Some((slot.to_owned(), left))
}

/// The entries directory of the ESP at `esp`.
pub fn entries_dir(esp: &Path) -> PathBuf {
    esp.join("loader/entries")
}

/// Every slot with an entry, in slot order.
pub fn read(esp: &Path) -> std::io::Result<Vec<Slot>> {
    let mut slots = Vec::new();
    for dirent in std::fs::read_dir(entries_dir(esp))? {
        let file = dirent?.file_name().to_string_lossy().into_owned();
        let Some((name, left)) = parse_name(&file) else { continue };
        let text = std::fs::read_to_string(entries_dir(esp).join(&file))?;
        let field =
            |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')).map(|v| v.trim().to_owned());
        let health = match left {
            None => SlotHealth::Good,
            Some(0) => SlotHealth::Bad,
            Some(left) => SlotHealth::Trying { left },
        };
        slots.push(Slot {
            name,
            version: field("# nodeplane-version").unwrap_or_else(|| "unknown".into()),
            generation: field("version").and_then(|v| v.parse().ok()).unwrap_or(0),
            health,
            file,
        });
    }
    slots.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(slots)
}

/// Slot `slot`'s boot entry (Boot Loader Specification, type #1): its kernel
/// and initrd on the ESP, its root opened through dm-verity by the initramfs
/// with `root_hash`. `version` is the image's; `generation` orders the
/// entries (the highest good one boots).
pub fn entry(slot: &str, version: &str, generation: u64, root_hash: &str, kernel_args: &str) -> String {
    format!(
        "title nodeplane {version} (slot {slot})\n# nodeplane-version {version}\nsort-key nodeplane\nversion {generation}\n\
         linux /EFI/nodeplane/{slot}/vmlinuz\ninitrd /EFI/nodeplane/{slot}/initrd.img\n\
         options root=/dev/mapper/root nodeplane.slot={slot} nodeplane.verity={root_hash} {kernel_args}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_carry_the_boot_counter() {
        assert_eq!(parse_name("nodeplane-a.conf"), Some(("a".into(), None)));
        assert_eq!(parse_name("nodeplane-b+3.conf"), Some(("b".into(), Some(3))));
        assert_eq!(parse_name("nodeplane-b+1-2.conf"), Some(("b".into(), Some(1))));
        assert_eq!(parse_name("nodeplane-b+0-3.conf"), Some(("b".into(), Some(0))));
        assert_eq!(parse_name("nodeplane-c.conf"), None);
        assert_eq!(parse_name("other.conf"), None);
        assert_eq!(entry_name("b", Some(3)), "nodeplane-b+3.conf");
    }

    #[test]
    fn slots_are_read_from_their_entries() {
        let esp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(entries_dir(esp.path())).unwrap();
        let write = |name: &str, text: String| std::fs::write(entries_dir(esp.path()).join(name), text).unwrap();
        write("nodeplane-a.conf", entry("a", "0.1.0+aaa", 1, "00", "ro"));
        write("nodeplane-b+0-2.conf", entry("b", "0.1.0+bbb", 2, "11", "ro"));
        write("loader.conf", String::new());
        let slots = read(esp.path()).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!(
            (slots[0].name.as_str(), slots[0].version.as_str(), slots[0].health),
            ("a", "0.1.0+aaa", SlotHealth::Good)
        );
        assert_eq!((slots[1].generation, slots[1].health), (2, SlotHealth::Bad));
        assert_eq!(booted("BOOT_IMAGE=x root=/dev/mapper/root nodeplane.slot=b ro"), Some("b".into()));
        assert_eq!(booted("root=/dev/vda ro"), None);
    }
}
