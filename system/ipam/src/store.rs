//! host-local's reservation directories (`<networks_dir>/<network>/`): one file per
//! address, named by the address, holding `<container id>\r\n<ifname>` (older
//! plugins: `<container id>`). Nothing here follows a symlink, and nothing but a
//! reservation file is ever removed.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType, FlockOperation, Mode, OFlags, Stat};

/// A reservation file as read during a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    /// The first line of the file, trimmed; `None` for an empty file.
    pub owner: Option<String>,
    pub modified: SystemTime,
    /// The file's name when it is not the address's canonical spelling (rare; kept
    /// out of the common case to keep a sweep of 50,000 files small).
    odd_name: Option<Box<str>>,
    inode: u64,
}

impl Reservation {
    fn file_name(&self) -> String {
        self.odd_name.as_deref().map_or_else(|| self.ip.to_string(), str::to_owned)
    }
}

/// One network directory's reservations and what else was found there.
#[derive(Debug, Default)]
pub struct Scan {
    pub reservations: Vec<Reservation>,
    /// Entries that are not reservations (`lock`, `last_reserved_ip.N`, symlinks,
    /// directories, other names): never touched.
    pub skipped: u64,
    /// Reservation files that could not be read; they are left alone.
    pub errors: Vec<String>,
}

/// What to do with a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Held by a live container.
    Live,
    /// Orphaned but younger than the grace period: CNI ADD runs before containerd
    /// records the sandbox, so this may be a pod that is starting.
    YoungOrphan,
    Leaked,
}

pub fn classify(reservation: &Reservation, live: &HashSet<String>, now: SystemTime, grace: Duration) -> Verdict {
    if reservation.owner.as_ref().is_some_and(|owner| live.contains(owner)) {
        return Verdict::Live;
    }
    // A modification time in the future counts as young.
    match now.duration_since(reservation.modified) {
        Ok(age) if age > grace => Verdict::Leaked,
        _ => Verdict::YoungOrphan,
    }
}

/// The owner id: the first line (cut at the first `\r` or `\n`), trimmed.
pub fn parse_owner(content: &[u8]) -> Option<String> {
    let end = content.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(content.len());
    let owner = String::from_utf8_lossy(&content[..end]).trim().to_owned();
    (!owner.is_empty()).then_some(owner)
}

/// An open network directory; names are resolved against it, not re-walked.
pub struct NetworkDir {
    fd: OwnedFd,
}

impl NetworkDir {
    pub fn open(path: &Path) -> io::Result<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(NetworkDir { fd: rustix::fs::open(path, flags, Mode::empty())? })
    }

    pub fn scan(&self) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for entry in Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let Some((text, ip)) = name.to_str().ok().and_then(|n| Some((n, n.parse::<IpAddr>().ok()?))) else {
                scan.skipped += 1;
                continue;
            };
            // d_type spares a stat; filesystems that do not fill it in get one below.
            if !matches!(entry.file_type(), FileType::RegularFile | FileType::Unknown) {
                scan.skipped += 1;
                continue;
            }
            match self.read(name) {
                Ok(Some((stat, owner))) => scan.reservations.push(Reservation {
                    ip,
                    owner,
                    modified: mtime(&stat),
                    odd_name: (ip.to_string() != text).then(|| text.into()),
                    inode: stat.st_ino,
                }),
                Ok(None) => scan.skipped += 1,
                Err(err) => scan.errors.push(format!("{}: {err}", name.to_string_lossy())),
            }
        }
        Ok(scan)
    }

    /// Opens `name` without following a symlink; `None` when it is not a regular file.
    fn read(&self, name: &CStr) -> io::Result<Option<(Stat, Option<String>)>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            // A symlink (NOFOLLOW) or a file gone since readdir.
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOENT) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        // An owner id is 64 characters; the first KiB holds any first line worth reading.
        let mut buf = [0u8; 1024];
        let len = rustix::io::read(&fd, &mut buf)?;
        Ok(Some((stat, parse_owner(&buf[..len]))))
    }

    /// host-local's own lock on this network, if it is free right now.
    pub fn try_lock(&self) -> io::Result<Option<HostLocalLock>> {
        let fd =
            rustix::fs::openat(&self.fd, c"lock", OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("host-local's lock file: {e}")))?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(HostLocalLock { _fd: fd })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Removes `reservation` if it is still the file that was scanned (same inode,
    /// modification time and owner). Call only while holding [`HostLocalLock`]:
    /// then host-local cannot be handing the address out at the same time.
    pub fn free_if_unchanged(&self, reservation: &Reservation, _lock: &HostLocalLock) -> io::Result<bool> {
        let name = std::ffi::CString::new(reservation.file_name()).expect("IP names have no NUL");
        let Some((stat, owner)) = self.read(&name)? else {
            return Ok(false);
        };
        if stat.st_ino != reservation.inode || mtime(&stat) != reservation.modified || owner != reservation.owner {
            return Ok(false);
        }
        rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty())?;
        Ok(true)
    }
}

/// Holds host-local's exclusive `flock` on `<network>/lock` until dropped.
pub struct HostLocalLock {
    _fd: OwnedFd,
}

fn mtime(stat: &Stat) -> SystemTime {
    let since_epoch = Duration::new(stat.st_mtime.unsigned_abs(), stat.st_mtime_nsec as u32);
    if stat.st_mtime >= 0 { UNIX_EPOCH + since_epoch } else { UNIX_EPOCH - since_epoch }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_first_line_in_every_format() {
        let cases: [(&[u8], Option<&str>); 7] = [
            (b"abc123\r\neth0", Some("abc123")), // current format
            (b"abc123", Some("abc123")),         // old bare id
            (b"abc123\n", Some("abc123")),
            (b"  abc123 \r\neth0", Some("abc123")),
            (b"", None),
            (b"\r\neth0", None),
            (b"   ", None),
        ];
        for (content, owner) in cases {
            assert_eq!(parse_owner(content).as_deref(), owner, "{content:?}");
        }
    }

    #[test]
    fn classify_by_owner_and_age() {
        let now = SystemTime::now();
        let grace = Duration::from_secs(600);
        let live: HashSet<String> = ["alive".to_owned()].into();
        let reservation = |owner: Option<&str>, age: i64| Reservation {
            ip: "10.0.0.2".parse().unwrap(),
            owner: owner.map(str::to_owned),
            modified: if age >= 0 {
                now - Duration::from_secs(age as u64)
            } else {
                now + Duration::from_secs(age.unsigned_abs())
            },
            odd_name: None,
            inode: 1,
        };
        let cases = [
            (Some("alive"), 10_000, Verdict::Live),
            (Some("alive"), 0, Verdict::Live),
            (Some("gone"), 601, Verdict::Leaked),
            (Some("gone"), 599, Verdict::YoungOrphan),
            (Some("gone"), -3600, Verdict::YoungOrphan), // clock skew: never leaked
            (None, 601, Verdict::Leaked),
            (None, 10, Verdict::YoungOrphan),
        ];
        for (owner, age, verdict) in cases {
            assert_eq!(classify(&reservation(owner, age), &live, now, grace), verdict, "{owner:?} {age}");
        }
    }
}
