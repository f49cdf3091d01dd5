//! Logging: native journald (structured fields: `NODEPLANE_COMPONENT`, `SYSCTL_KEY`,
//! …) when stderr is connected to the journal, plain stderr otherwise.

use std::os::fd::AsFd;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Logging for the program `identifier`: `level` (`--log-level`) wins over
/// `RUST_LOG`; the default is `info`.
pub fn init(identifier: &str, level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    if connected_to_journal() {
        match tracing_journald::layer() {
            Ok(journald) => {
                // INFO as `info` (6) and DEBUG as `debug` (7), as `journalctl -p` reads them.
                let priorities = PriorityMappings {
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    ..PriorityMappings::new()
                };
                let journald = journald
                    .with_field_prefix(None)
                    .with_syslog_identifier(identifier.into())
                    .with_priority_mappings(priorities);
                tracing_subscriber::registry().with(filter).with(journald).init();
                return;
            }
            Err(err) => eprintln!("{identifier}: journald unavailable ({err}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(rustix::termios::isatty(std::io::stderr()))
        .with_target(false)
        .init();
}

/// A `--log-level` that is no log filter.
#[derive(Debug, thiserror::Error)]
#[error("invalid log level {level:?}: {source}")]
pub struct InvalidLevel {
    level: String,
    source: tracing_subscriber::filter::ParseError,
}

/// Checks a `--log-level` value before anything starts.
pub fn parse_level(level: &str) -> Result<String, InvalidLevel> {
    EnvFilter::try_new(level)
        .map(|_| level.to_owned())
        .map_err(|source| InvalidLevel { level: level.to_owned(), source })
}

/// systemd sets `JOURNAL_STREAM=<dev>:<ino>` for a service whose stderr is the
/// journal; it is only ours if stderr still is that stream.
fn connected_to_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse() == Ok(stat.st_dev) && ino.parse() == Ok(stat.st_ino)
}
