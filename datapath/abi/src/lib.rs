//! The kernel/userspace contract of nodeplane's eBPF datapath: the compiled
//! programs ([`OBJECT`], from `datapath/bpf/`), and the Rust twin of every
//! struct, constant and map that `bpf/abi.h` and `bpf/maps.h` share with
//! userspace: same fields, same order, explicit padding. `tests/abi.rs`
//! checks each against the object: structs and map capacities from `lb.o`,
//! constants from the enums `abi.o` carries.

/// The compiled programs and maps (`bpf/lb.c`).
pub const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.o"));

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
    /// `SVC_F_*` bits.
    pub flags: u16,
    /// sessionAffinity: ClientIP timeout in seconds; 0 for none.
    pub affinity_timeout_s: u32,
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
pub struct BackendId {
    pub service_id: u32,
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: BackendValue,
    pub last_seen_ns: u64,
}

/// A host socket's unconnected UDP exchange with a backend it reached through a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevnatKey {
    pub cookie: u64,
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub pad: u16,
}

/// The VIP such a socket's replies are reported from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevnatValue {
    pub vip: [u8; 4],
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

/// What a conntrack entry rewrites (`enum ct_rewrite`).
pub const CT_REWRITE_SRC: u8 = 1;
pub const CT_REWRITE_DST: u8 = 2;
/// TCP teardown seen on the flow (`enum ct_seen`).
pub const CT_SEEN_FIN_ORIGINAL: u32 = 1;
pub const CT_SEEN_FIN_REPLY: u32 = 2;
pub const CT_SEEN_RST: u32 = 4;
/// A packet in the reply direction: the flow is established.
pub const CT_SEEN_REPLY: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub rewrite: u8,
    pub reply: u8,
    pub pad: u16,
    /// `CT_SEEN_*` bits.
    pub seen: u32,
    pub service_id: u32,
    /// The pod of this node the flow counts against (its address); zero for none.
    pub owner: [u8; 4],
    pub pad2: u32,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub last_seen_ns: u64,
}

/// A datagram in fragments (`struct frag_key`), in `np_fragments`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub id: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

/// Its ports, from its first fragment (`struct frag_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// A pod's host-side interface (`struct pod_iface`, in `np_pod_ifaces` by
/// ifindex): the address the pod may send from, and its network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodIface {
    pub addr: [u8; 4],
    /// The pod's network namespace as the node's sees it (`IFLA_LINK_NETNSID`),
    /// or [`NO_NETNS_ID`].
    pub netns_id: u32,
}

/// `enum pod_netns`: a pod interface whose network namespace id is not known.
pub const NO_NETNS_ID: u32 = u32::MAX;

impl CtValue {
    /// Both FINs or a RST: the flow is over.
    pub fn closed(&self) -> bool {
        self.seen & CT_SEEN_RST != 0
            || self.seen & (CT_SEEN_FIN_ORIGINAL | CT_SEEN_FIN_REPLY) == (CT_SEEN_FIN_ORIGINAL | CT_SEEN_FIN_REPLY)
    }

    /// A reply came back: the flow got established.
    pub fn established(&self) -> bool {
        self.seen & CT_SEEN_REPLY != 0
    }
}

/// `enum endpoint_flags`: the directions a pod's policies isolate.
pub const ENDPOINT_F_ISOLATED_INGRESS: u32 = 1;
pub const ENDPOINT_F_ISOLATED_EGRESS: u32 = 2;

/// A pod of this node (keyed by its IP in `np_endpoints`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    pub flags: u32,
}

/// `enum policy_direction`.
pub const POLICY_INGRESS: u8 = 0;
pub const POLICY_EGRESS: u8 = 1;

/// The data of an `np_policy` key (`struct policy_peer`); the trie's prefix
/// length is [`POLICY_PEER_BITS`] plus the peer's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyPeer {
    pub pod: [u8; 4],
    pub direction: u8,
    pub pad: [u8; 3],
    pub peer: [u8; 4],
}

/// `enum policy_bits`: the bits of an LPM key matched whole.
pub const POLICY_PEER_BITS: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// 0: no port at all.
    pub port_set: u32,
}

/// The data of an `np_policy_ports` key (`struct port_match`); the trie's
/// prefix length is [`PORT_MATCH_BITS`] plus the port's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMatch {
    pub port_set: u32,
    pub proto: u8,
    pub pad: u8,
    pub port: [u8; 2],
}

/// `enum policy_bits`.
pub const PORT_MATCH_BITS: u32 = 48;

/// `enum policy_reason`, by value (index 0 unused): `egress-…` the sender's
/// policies, `ingress-…` the receiver's.
pub const POLICY_REASONS: &[&str] = &[
    "",
    "egress-denied-peer",
    "egress-denied-port",
    "ingress-denied-peer",
    "ingress-denied-port",
    "egress-ipv6",
    "ingress-ipv6",
    "egress-malformed",
    "ingress-malformed",
    "egress-protocol",
    "ingress-protocol",
    "egress-fragment",
    "ingress-fragment",
    "egress-stray-icmp",
    "ingress-stray-icmp",
];

/// A dropped connection attempt (`struct policy_event`), from `np_policy_events`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEvent {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub vip: [u8; 4],
    pub vip_port: [u8; 2],
    pub proto: u8,
    pub reason: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    pub hairpin_addr: [u8; 4],
    /// Flows a pod of this node may hold in conntrack; 0: no limit.
    pub ct_per_pod: u32,
    /// The node's network namespace cookie (`SO_NETNS_COOKIE`): socket LB
    /// balances only its sockets.
    pub node_netns: u64,
}

/// Per-CPU counters (`enum counter`), in index order.
pub const COUNTERS: &[&str] = &[
    "new_flow",
    "translated",
    "hairpin_flow",
    "no_backend",
    "ct_full",
    "rewrite_failed",
    "ct_clash",
    "redirected",
    "sock_balanced",
    "policy_denied_egress_peer",
    "policy_denied_egress_port",
    "policy_denied_ingress_peer",
    "policy_denied_ingress_port",
    "policy_egress_ipv6",
    "policy_ingress_ipv6",
    "policy_egress_malformed",
    "policy_ingress_malformed",
    "policy_egress_protocol",
    "policy_ingress_protocol",
    "policy_egress_fragment",
    "policy_ingress_fragment",
    "policy_egress_stray_icmp",
    "policy_ingress_stray_icmp",
    "policy_event_lost",
    "flow_tracked",
    "spoofed",
    "ct_pod_limit",
    "ct_clash_unresolved",
    "fragmented",
    "icmp_translated",
    "node_port_snat",
];

/// `enum svc_flags`: the entry is a NodePort on the node's IP.
pub const SVC_F_NODE_PORT: u16 = 1;

// SAFETY: plain old data — integers and byte arrays, no implicit padding.
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcValue {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for BackendValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for LbConfig {}
unsafe impl aya::Pod for BackendId {}
unsafe impl aya::Pod for AffinityKey {}
unsafe impl aya::Pod for AffinityValue {}
unsafe impl aya::Pod for SockRevnatKey {}
unsafe impl aya::Pod for SockRevnatValue {}
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for PolicyPeer {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for PortMatch {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for FragValue {}
unsafe impl aya::Pod for PodIface {}

/// Map names, as in `bpf/maps.h` (and their pin file names).
pub const SERVICES: &str = "np_services";
pub const BACKENDS: &str = "np_backends";
pub const CONNTRACK: &str = "np_conntrack";
pub const CONFIG: &str = "np_config";
pub const BACKEND_ALIVE: &str = "np_backend_alive";
pub const AFFINITY: &str = "np_affinity";
pub const COUNTER_MAP: &str = "np_counters";
pub const SOCK_REVNAT: &str = "np_sock_revnat";
pub const ENDPOINTS: &str = "np_endpoints";
pub const POLICY: &str = "np_policy";
pub const POLICY_PORTS: &str = "np_policy_ports";
pub const POLICY_EVENTS: &str = "np_policy_events";
pub const CT_OPENED: &str = "np_ct_opened";
pub const CT_CLOSED: &str = "np_ct_closed";
pub const FRAGMENTS: &str = "np_fragments";
pub const POD_IFACES: &str = "np_pod_ifaces";

/// Every map: (name, capacity), the capacities as `enum map_capacity` sets
/// them (for the ring buffer, bytes): a node of 64 GiB's, the reference the
/// loader sizes most maps from.
pub const MAPS: &[(&str, u32)] = &[
    (SERVICES, 65_536),
    (BACKENDS, 262_144),
    (BACKEND_ALIVE, 262_144),
    (AFFINITY, 262_144),
    (CONNTRACK, CONNTRACK_CAPACITY),
    (SOCK_REVNAT, 65_536),
    (ENDPOINTS, 65_536),
    (POLICY, 1_048_576),
    (POLICY_PORTS, 1_048_576),
    (POLICY_EVENTS, 262_144),
    (CONFIG, 1),
    (COUNTER_MAP, COUNTERS.len() as u32),
    (CT_OPENED, 65_536),
    (CT_CLOSED, 65_536),
    (FRAGMENTS, 16_384),
    (POD_IFACES, 65_536),
];

/// `NODEPLANE_CT_ENTRIES`: the conntrack map's reference capacity.
pub const CONNTRACK_CAPACITY: u32 = 262_144;
