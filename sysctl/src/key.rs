//! Sysctl names and where the kernel keeps them.

use std::fmt;
use std::path::PathBuf;

/// A validated sysctl name in dotted form (`net.ipv4.ip_local_port_range`). As in
/// sysctl(8), a `/` inside a dotted name stands for a literal `.` in one component
/// (`net.ipv4.conf.eth0/100.rp_filter` is the VLAN interface `eth0.100`), and a name
/// written with `/` separators is accepted and converted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysctlKey(String);

/// A name that is not a sysctl's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{name}' is not a sysctl name ({why})")]
pub struct InvalidKey {
    pub name: String,
    why: &'static str,
}

impl SysctlKey {
    pub const IP_LOCAL_PORT_RANGE: &'static str = "net.ipv4.ip_local_port_range";
    pub const IP_LOCAL_RESERVED_PORTS: &'static str = "net.ipv4.ip_local_reserved_ports";

    pub fn parse(name: &str) -> Result<Self, InvalidKey> {
        let slash_form = match (name.find('.'), name.find('/')) {
            (Some(dot), Some(slash)) => slash < dot,
            (None, Some(_)) => true,
            _ => false,
        };
        let components: Vec<String> = if slash_form {
            name.split('/').map(|c| c.replace('.', "/")).collect()
        } else {
            name.split('.').map(str::to_owned).collect()
        };
        for component in &components {
            let literal = component.replace('/', ".");
            if literal.is_empty() || literal == "." || literal == ".." || literal.contains('\0') {
                return Err(InvalidKey { name: name.to_owned(), why: "empty, '.' or '..' component" });
            }
        }
        if components.len() < 2 {
            return Err(InvalidKey { name: name.to_owned(), why: "expected e.g. net.core.somaxconn" });
        }
        Ok(SysctlKey(components.join(".")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file under `/proc/sys`. Network sysctls resolve against the network
    /// namespace of the thread that opens the file.
    pub fn proc_path(&self) -> PathBuf {
        let mut path = PathBuf::from("/proc/sys");
        for component in self.0.split('.') {
            path.push(component.replace('/', "."));
        }
        path
    }

    pub(crate) fn known(name: &'static str) -> Self {
        SysctlKey(name.to_owned())
    }
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_and_slashed_names_map_to_proc_paths() {
        let cases = [
            ("net.core.somaxconn", "net.core.somaxconn", "/proc/sys/net/core/somaxconn"),
            ("net/core/somaxconn", "net.core.somaxconn", "/proc/sys/net/core/somaxconn"),
            (
                "net.ipv4.conf.eth0/100.rp_filter",
                "net.ipv4.conf.eth0/100.rp_filter",
                "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
            ),
            (
                "net/ipv4/conf/eth0.100/rp_filter",
                "net.ipv4.conf.eth0/100.rp_filter",
                "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
            ),
        ];
        for (name, dotted, path) in cases {
            let key = SysctlKey::parse(name).unwrap();
            assert_eq!(key.as_str(), dotted);
            assert_eq!(key.proc_path(), PathBuf::from(path));
        }
    }

    #[test]
    fn rejects_names_that_escape_proc_sys_or_are_empty() {
        for name in ["", "net", "net..core", "net.core.", "net/../../etc/passwd", "net/./x", ".net.core"] {
            assert!(SysctlKey::parse(name).is_err(), "{name}");
        }
    }
}
