//! The IPAM sweeper of nodeplane: frees CNI host-local IP reservations whose
//! containers are gone from containerd (containerd #5768 leaves them behind, and a
//! node then runs out of pod addresses), and never one that is still in use.
//!
//! Safety rules, in order:
//! 1. containerd is asked once per sweep; if it is unreachable, fails mid-list, lacks
//!    the namespace (it would answer "no containers"), or restarts during the sweep,
//!    nothing is freed.
//! 2. Only regular files named by an IP address are reservations; nothing else
//!    (`lock`, `last_reserved_ip.N`, symlinks, directories) is touched, and no
//!    symlink is followed.
//! 3. A reservation is leaked when its owner (the file's first line) is not a live
//!    container, or the file is empty, and it is older than the grace period.
//! 4. It is removed only under host-local's own `flock` on `<network>/lock`, after
//!    re-reading it: same file, same modification time, same owner.

mod config;
mod containerd;
mod store;
mod sweep;

pub use config::{Invalid, IpamConfig};
pub use containerd::{Containerd, ContainerdError};
pub use store::{NetworkDir, Reservation, Scan, Verdict, classify, parse_owner};
pub use sweep::{Freed, SweepCounts, SweepError, SweepReport, sweep};
