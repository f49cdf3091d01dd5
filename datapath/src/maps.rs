//! The Rust twins of the map keys and values in `bpf/maps.h`: same fields, same
//! order, explicit padding, checked against the object's BTF by a test.

/// A Service port: virtual IP, port, protocol (network byte order, as in packets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SvcKey {
    pub vip: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcValue {
    pub service_id: u32,
    pub backend_count: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service_id: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub nat_addr: [u8; 4],
    pub nat_port: [u8; 2],
    pub dir: u8,
    pub pad: u8,
    pub last_seen_ns: u64,
}

// SAFETY: plain old data — integers and byte arrays, no implicit padding.
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcValue {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for BackendValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}

/// Map names, as in `bpf/maps.h` (and their pin file names).
pub const SERVICES: &str = "np_services";
pub const BACKENDS: &str = "np_backends";
pub const CONNTRACK: &str = "np_conntrack";
