use std::fs::File;
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
    run_on_thread(move || {
        let ns = File::open(format!("/proc/{pid}/ns/net")).expect("open the process's netns");
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), Some(LinkNameSpaceType::Network))
            .expect("setns(CLONE_NEWNET)");
        f()
    })
}

fn run_on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match thread::spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
