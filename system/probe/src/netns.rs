use std::fs::File;
use std::path::{Path, PathBuf};
use std::thread;

use rustix::thread::{LinkNameSpaceType, UnshareFlags};

/// Runs `f` on a thread of its own inside a new, empty network namespace, which the
/// kernel removes when the thread ends. Network sysctls under `/proc/sys/net` and
/// sockets made by `f` belong to that namespace. Panics in `f` propagate.
pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    run_on_thread(move || {
        // SAFETY: NEWNET only changes this thread's network namespace; no file
        // descriptor table is unshared.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.expect("unshare(CLONE_NEWNET)");
        f()
    })
}

/// Runs `f` on a thread of its own inside the network namespace of process `pid`.
pub fn in_netns_of<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_netns_at(format!("/proc/{pid}/ns/net"), f)
}

/// Runs `f` on a thread of its own inside the network namespace at `path` (a
/// `/proc/PID/ns/net` link or a bind mount such as `/var/run/netns/NAME`).
pub fn in_netns_at<T: Send + 'static>(path: impl AsRef<Path>, f: impl FnOnce() -> T + Send + 'static) -> T {
    run_on_thread(enter_then(path.as_ref().to_owned(), f))
}

/// `f`, to be run on a fresh thread, after moving that thread into the netns at `path`.
pub fn enter_then<T>(path: PathBuf, f: impl FnOnce() -> T) -> impl FnOnce() -> T {
    move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), Some(LinkNameSpaceType::Network))
            .expect("setns(CLONE_NEWNET)");
        f()
    }
}

fn run_on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match thread::spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
