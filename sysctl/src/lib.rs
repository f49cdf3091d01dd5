//! The sysctl guard of nodeplane: keeps the kernel's ephemeral port range
//! (`net.ipv4.ip_local_port_range`) clear of the Kubernetes NodePort range, reserves
//! the NodePort range in `net.ipv4.ip_local_reserved_ports` without dropping what is
//! already reserved there, applies further configured sysctls, and restores any of
//! them that something else changes.
//!
//! Both port sysctls are per network namespace; everything here acts on the network
//! namespace of the calling thread.

mod config;
mod guard;
pub mod kernel;
mod key;
mod range;

pub use config::{Extra, Invalid, SysctlConfig, Value};
pub use guard::{Change, Guard, Plan, Report, is_port_key, plan};
pub use kernel::SysctlError;
pub use key::{InvalidKey, SysctlKey};
pub use range::{PortRange, PortSet, RangeError};

/// The sysctl.d drop-in the node image installs, so the range is safe from early
/// boot, before `nodeplaned` runs. It sets only the range: a drop-in that set
/// `ip_local_reserved_ports` would replace, not extend, the list.
pub const SYSCTL_D_DROP_IN: &str = include_str!("../80-nodeplane.conf");
