use std::path::Path;
use std::time::{Duration, SystemTime};

/// A pod sandbox id: 64 characters like the CRI's, with a readable tail.
pub fn sandbox_id(name: &str) -> String {
    format!("{name:0>64}")
}

/// Sets a file's (or a symlink's own) modification time `age` into the past.
pub fn backdate(path: &Path, age: Duration) {
    let since = (SystemTime::now() - age).duration_since(SystemTime::UNIX_EPOCH).expect("after 1970");
    let time = rustix::fs::Timespec { tv_sec: since.as_secs() as i64, tv_nsec: since.subsec_nanos() as _ };
    let times = rustix::fs::Timestamps { last_access: time, last_modification: time };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}
