//! A journal stand-in: where a `Launch::journal` nodeplaned writes, read back
//! entry by entry in journald's native protocol.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub type Entry = HashMap<String, String>;

/// Parses one datagram of the journal's native protocol: `KEY=value\n`, or for
/// values with newlines `KEY\n<u64 LE length><value>\n`.
pub fn parse_entry(mut data: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let line_end = data.iter().position(|&b| b == b'\n').expect("fields end with a newline");
        let line = &data[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            entry.insert(text(&line[..eq]), text(&line[eq + 1..]));
            data = &data[line_end + 1..];
        } else {
            let rest = &data[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            entry.insert(text(line), text(&rest[8..8 + len]));
            data = &rest[8 + len + 1..];
        }
    }
    entry
}

/// Plays journald: listens where `Launch::journal` mounts `/run/systemd/journal`.
pub struct Journal {
    pub dir: tempfile::TempDir,
    socket: UnixDatagram,
    pub entries: Vec<Entry>,
}

impl Journal {
    pub fn new() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = UnixDatagram::bind(dir.path().join("socket"))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Journal { dir, socket, entries: Vec::new() })
    }

    /// Collects entries until one satisfies `done` or `timeout` passes.
    pub fn collect_until(&mut self, timeout: Duration, done: impl Fn(&Entry) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline && !self.entries.iter().any(&done) {
            if let Ok(len) = self.socket.recv(&mut buf) {
                self.entries.push(parse_entry(&buf[..len]));
            }
        }
    }

    pub fn find(&self, what: &str, check: impl Fn(&Entry) -> bool) -> &Entry {
        self.entries
            .iter()
            .find(|e| check(e))
            .unwrap_or_else(|| panic!("no journal entry {what} in {:#?}", self.entries))
    }
}
