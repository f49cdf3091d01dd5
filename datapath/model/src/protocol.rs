//! Transport protocols, as Kubernetes names them and as IP numbers them.

use std::fmt;
use std::str::FromStr;

/// A protocol of a Service port, a container port or a NetworkPolicy port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// ICMP's IP protocol number: NetworkPolicy lets echo through with a rule
/// that lists no ports (as it lets every protocol), never with one that does.
pub const ICMP: u8 = 1;

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The Kubernetes name: `TCP`, `UDP`, `SCTP`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// A Kubernetes `protocol` field; absent is TCP.
    pub fn parse(name: Option<&str>) -> Result<Self, UnknownProtocol> {
        name.unwrap_or("TCP").parse()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A protocol name that is not TCP, UDP or SCTP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not TCP, UDP or SCTP")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// `TCP`, `UDP` or `SCTP`, as Kubernetes writes them.
    fn from_str(name: &str) -> Result<Self, UnknownProtocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| UnknownProtocol(name.to_owned()))
    }
}

/// An IP protocol number as the datapath's tools print it: `tcp`, `udp`,
/// `sctp`, `icmp`, else `other`.
pub fn ip_protocol_name(number: u8) -> &'static str {
    const TCP: u8 = Protocol::Tcp.number();
    const UDP: u8 = Protocol::Udp.number();
    const SCTP: u8 = Protocol::Sctp.number();
    match number {
        ICMP => "icmp",
        TCP => "tcp",
        UDP => "udp",
        SCTP => "sctp",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for protocol in Protocol::ALL {
            assert_eq!(Protocol::parse(Some(protocol.name())), Ok(protocol));
            assert_eq!(ip_protocol_name(protocol.number()).to_uppercase(), protocol.name());
        }
        assert_eq!(Protocol::parse(None), Ok(Protocol::Tcp));
        assert_eq!(Protocol::parse(Some("tcp")).unwrap_err().to_string(), "\"tcp\" is not TCP, UDP or SCTP");
    }
}
