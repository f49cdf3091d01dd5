//! A listening socket handed to a program the way systemd's socket activation
//! hands `nodeplaned-metrics.socket` to nodeplaned: as file descriptor 3, named
//! by `LISTEN_FDS` and `LISTEN_FDNAMES`, for the process `LISTEN_PID` names.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::SandboxError;

/// A shell line that sets `LISTEN_PID` to the shell's own pid: run it in the
/// `sh -c` that then `exec`s the program, which keeps the pid.
pub const SET_LISTEN_PID: &str = "LISTEN_PID=$$; export LISTEN_PID";

/// A TCP socket listening on 127.0.0.1 at a free port, in the caller's network
/// namespace, to pass on.
pub struct PassedSocket {
    listener: TcpListener,
}

impl PassedSocket {
    pub fn loopback() -> Result<Self, SandboxError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|source| SandboxError::Os { what: "listening on 127.0.0.1", source })?;
        Ok(PassedSocket { listener })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound socket")
    }

    /// Another handle on the same socket (for the next program it is passed to).
    pub fn try_clone(&self) -> Result<Self, SandboxError> {
        let listener =
            self.listener.try_clone().map_err(|source| SandboxError::Os { what: "duplicating a socket", source })?;
        Ok(PassedSocket { listener })
    }

    /// Makes `command` start with the socket as fd 3, named `name`. The program
    /// it runs must set `LISTEN_PID` ([`SET_LISTEN_PID`]).
    pub fn pass(&self, command: &mut Command, name: &str) {
        let fd = OwnedFd::from(self.listener.try_clone().expect("duplicating a socket"));
        command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", name).env_remove("LISTEN_PID");
        // SAFETY: between fork and exec only async-signal-safe calls: dup2 and
        // fcntl. The duplicate lives in the closure, so it outlives the spawn.
        unsafe {
            command.pre_exec(move || {
                let raw = fd.as_raw_fd();
                // dup2 leaves close-on-exec off on the copy; fd 3 itself needs it cleared.
                let done = if raw == 3 { libc::fcntl(raw, libc::F_SETFD, 0) } else { libc::dup2(raw, 3) };
                if done < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
        }
    }
}
