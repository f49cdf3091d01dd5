//! Running code inside a network namespace: `setns(2)` moves only the calling
//! thread, so each call gets a thread of its own, which enters the namespace
//! before running anything else.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::thread;

use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use crate::SandboxError;

/// Runs `f` on a thread of its own inside a new, empty network namespace, which the
/// kernel removes when the thread ends. Network sysctls under `/proc/sys/net` and
/// sockets made by `f` belong to that namespace. Panics in `f` propagate.
pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, SandboxError> {
    run_on_thread(move || {
        // SAFETY: NEWNET only changes this thread's network namespace; no file
        // descriptor table is unshared.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
            .map_err(|e| SandboxError::Os { what: "unshare(CLONE_NEWNET)", source: e.into() })?;
        Ok(f())
    })
}

/// Runs `f` on a thread of its own inside the network namespace of process `pid`.
pub fn in_netns_of<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> Result<T, SandboxError> {
    in_netns_at(format!("/proc/{pid}/ns/net"), f)
}

/// Runs `f` on a thread of its own inside the network namespace at `path` (a
/// `/proc/PID/ns/net` link or a bind mount such as `/var/run/netns/NAME`).
/// Panics in `f` propagate.
pub fn in_netns_at<T: Send + 'static>(
    path: impl AsRef<Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    run_on_thread(enter_then(path.as_ref().to_owned(), f))
}

/// `f`, to be run on a fresh thread, after moving that thread into the netns
/// at `path`; `f` does not run when the thread cannot get there.
pub fn enter_then<T>(path: PathBuf, f: impl FnOnce() -> T) -> impl FnOnce() -> Result<T, SandboxError> {
    move || {
        let ns =
            File::open(&path).map_err(|source| SandboxError::Io { what: "opening", path: path.clone(), source })?;
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), Some(LinkNameSpaceType::Network))
            .map_err(|e| SandboxError::Io { what: "entering (setns) the network namespace", path, source: e.into() })?;
        Ok(f())
    }
}

fn run_on_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    match thread::spawn(f).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
