use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`. Like systemd, it
/// reads every message as it comes (on a thread of its own), so a chatty service
/// never blocks on a full socket queue; tests take the messages in order.
pub struct NotifySocket {
    messages: mpsc::Receiver<String>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(len) = socket.recv(&mut buf) {
                if sender.send(String::from_utf8_lossy(&buf[..len]).into_owned()).is_err() {
                    return;
                }
            }
        });
        Ok(NotifySocket { messages, path, _dir: dir })
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next message, or `None` when none came within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// Waits up to `timeout` for a message with a line equal to `line`, returning
    /// every message received up to and including it.
    pub fn wait_for(&self, line: &str, timeout: Duration) -> Result<Vec<String>, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(message) = self.recv(left) else { break };
            let found = message.lines().any(|l| l == line);
            seen.push(message);
            if found {
                return Ok(seen);
            }
        }
        Err(seen)
    }
}
