//! The contract between `bpf/` and this crate, checked against the compiled
//! objects: every struct shared with userspace against its `#[repr(C)]` twin
//! (size and each field's offset, from `lb.o`'s BTF), every map's name and
//! capacity (from `lb.o`'s map definitions), and every shared constant (the
//! enums of `abi.h`, from `abi.o`'s BTF).

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use nodeplane_datapath_abi::*;

/// `bpftool btf dump` of an object's BTF, in raw format.
fn btf_dump(object: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), object).unwrap();
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(file.path())
        .args(["format", "raw"])
        .output()
        .expect("bpftool (package bpftool)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// struct name → (size in bytes, field → offset in bytes).
fn btf_structs() -> BTreeMap<String, (usize, BTreeMap<String, usize>)> {
    let mut structs = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in btf_dump(OBJECT).lines() {
        if let Some(rest) = line.split_once("] STRUCT '").map(|(_, r)| r) {
            let (name, rest) = rest.split_once('\'').unwrap();
            let size = rest.split("size=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
            structs.insert(name.to_owned(), (size, BTreeMap::new()));
            current = Some(name.to_owned());
        } else if let (Some(name), Some(field)) = (&current, line.strip_prefix("\t'")) {
            let (field, rest) = field.split_once('\'').unwrap();
            let bits: usize = rest.split("bits_offset=").nth(1).unwrap().parse().unwrap();
            structs.get_mut(name).unwrap().1.insert(field.to_owned(), bits / 8);
        } else if !line.starts_with('\t') {
            current = None;
        }
    }
    structs
}

macro_rules! layout {
    ($c:literal => $rust:ty { $($field:ident),* $(,)? }) => {
        ($c, size_of::<$rust>(), vec![$((stringify!($field), offset_of!($rust, $field))),*])
    };
}

#[test]
fn every_map_struct_matches_its_rust_twin() {
    let btf = btf_structs();
    let twins = [
        layout!("svc_key" => SvcKey { vip, port, proto, pad }),
        layout!("svc_value" => SvcValue { service_id, backend_count, flags, affinity_timeout_s }),
        layout!("backend_key" => BackendKey { service_id, slot }),
        layout!("backend_value" => BackendValue { addr, port, pad }),
        layout!("backend_id" => BackendId { service_id, addr, port, pad }),
        layout!("affinity_key" => AffinityKey { service_id, client }),
        layout!("affinity_value" => AffinityValue { backend, last_seen_ns }),
        layout!("sock_revnat_key" => SockRevnatKey { cookie, addr, port, pad }),
        layout!("sock_revnat_value" => SockRevnatValue { vip, port, pad }),
        layout!("ct_key" => CtKey { saddr, daddr, sport, dport, proto, pad }),
        layout!("ct_value" => CtValue { src_addr, dst_addr, src_port, dst_port, rewrite, reply, pad, seen, service_id, owner, pad2, last_seen_ns }),
        layout!("lb_config" => LbConfig { hairpin_addr, ct_per_pod, node_netns }),
        layout!("frag_key" => FragKey { saddr, daddr, id, proto, pad }),
        layout!("frag_value" => FragValue { sport, dport }),
        layout!("pod_iface" => PodIface { addr, netns_id }),
        layout!("endpoint_value" => EndpointValue { flags }),
        layout!("policy_peer" => PolicyPeer { pod, direction, pad, peer }),
        layout!("policy_value" => PolicyValue { port_set }),
        layout!("port_match" => PortMatch { port_set, proto, pad, port }),
        layout!("policy_event" => PolicyEvent { saddr, daddr, sport, dport, vip, vip_port, proto, reason }),
    ];
    for (name, size, fields) in twins {
        let (btf_size, btf_fields) =
            btf.get(name).unwrap_or_else(|| panic!("struct {name} is not in the object's BTF"));
        assert_eq!(size, *btf_size, "size of {name}");
        let rust: BTreeMap<String, usize> = fields.into_iter().map(|(f, o)| (f.to_owned(), o)).collect();
        assert_eq!(&rust, btf_fields, "fields and offsets of {name}");
    }
    // The LPM keys: a prefix length, then the data above (aya's `Key`).
    use aya::maps::lpm_trie::Key;
    assert_eq!(size_of::<Key<PolicyPeer>>(), btf["policy_key"].0, "size of policy_key");
    assert_eq!(size_of::<Key<PortMatch>>(), btf["port_key"].0, "size of port_key");
}

/// enum name → its members and values, from `abi.o`.
fn btf_enums() -> BTreeMap<String, Vec<(String, u64)>> {
    let object = std::fs::read(concat!(env!("OUT_DIR"), "/abi.o")).expect("abi.o, built by build.rs");
    let mut enums: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in btf_dump(&object).lines() {
        if let Some(rest) = line.split_once("] ENUM '").map(|(_, r)| r) {
            let name = rest.split_once('\'').unwrap().0.to_owned();
            enums.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let (Some(name), Some(member)) = (&current, line.strip_prefix("\t'")) {
            let (member, rest) = member.split_once('\'').unwrap();
            let value = rest.split("val=").nth(1).unwrap().parse().unwrap();
            enums.get_mut(name).unwrap().push((member.to_owned(), value));
        } else if !line.starts_with('\t') {
            current = None;
        }
    }
    enums
}

#[test]
fn every_shared_constant_matches_its_rust_twin() {
    let enums = btf_enums();
    let members = |name: &str| -> BTreeMap<String, u64> {
        enums.get(name).unwrap_or_else(|| panic!("enum {name} is not in abi.o's BTF")).iter().cloned().collect()
    };
    let twins: [(&str, Vec<(&str, u64)>); 7] = [
        ("svc_flags", vec![("SVC_F_NODE_PORT", SVC_F_NODE_PORT.into())]),
        ("ct_rewrite", vec![("CT_REWRITE_SRC", CT_REWRITE_SRC.into()), ("CT_REWRITE_DST", CT_REWRITE_DST.into())]),
        (
            "ct_seen",
            vec![
                ("CT_SEEN_FIN_ORIGINAL", CT_SEEN_FIN_ORIGINAL.into()),
                ("CT_SEEN_FIN_REPLY", CT_SEEN_FIN_REPLY.into()),
                ("CT_SEEN_RST", CT_SEEN_RST.into()),
                ("CT_SEEN_REPLY", CT_SEEN_REPLY.into()),
            ],
        ),
        (
            "endpoint_flags",
            vec![
                ("ENDPOINT_F_ISOLATED_INGRESS", ENDPOINT_F_ISOLATED_INGRESS.into()),
                ("ENDPOINT_F_ISOLATED_EGRESS", ENDPOINT_F_ISOLATED_EGRESS.into()),
            ],
        ),
        ("policy_direction", vec![("POLICY_INGRESS", POLICY_INGRESS.into()), ("POLICY_EGRESS", POLICY_EGRESS.into())]),
        (
            "policy_bits",
            vec![("POLICY_PEER_BITS", POLICY_PEER_BITS.into()), ("PORT_MATCH_BITS", PORT_MATCH_BITS.into())],
        ),
        ("pod_netns", vec![("NO_NETNS_ID", NO_NETNS_ID.into())]),
    ];
    for (name, rust) in twins {
        let rust: BTreeMap<String, u64> = rust.into_iter().map(|(m, v)| (m.to_owned(), v)).collect();
        assert_eq!(rust, members(name), "enum {name}");
    }
    // Counters: the Rust names are the C names without COUNTER_, lower-cased, in index order.
    let counters = members("counter");
    assert_eq!(counters["COUNTER_MAX"], COUNTERS.len() as u64, "COUNTER_MAX against COUNTERS");
    for (index, name) in COUNTERS.iter().enumerate() {
        let c = format!("COUNTER_{}", name.to_uppercase());
        assert_eq!(counters.get(&c), Some(&(index as u64)), "counter {name} is {c} = {index} in bpf/abi.h");
    }
    // Reasons, by value: POLICY_DENIED_EGRESS_PEER is "egress-denied-peer",
    // POLICY_EGRESS_STRAY_ICMP "egress-stray-icmp".
    let reasons = members("policy_reason");
    assert_eq!(reasons.len() + 1, POLICY_REASONS.len(), "POLICY_REASONS has an unused 0 and one name per reason");
    for (c, value) in &reasons {
        let name = c.trim_start_matches("POLICY_").to_lowercase().replace('_', "-");
        let name = match name.strip_prefix("denied-") {
            Some(rest) => rest.replacen('-', "-denied-", 1),
            None => name,
        };
        assert_eq!(POLICY_REASONS[*value as usize], name, "reason {c}");
    }
    // Capacities: the enum agrees with the map definitions, checked below.
    let capacities = members("map_capacity");
    assert_eq!(capacities["NODEPLANE_CT_ENTRIES"], u64::from(CONNTRACK_CAPACITY));
}

#[test]
fn every_map_has_its_name_and_capacity() {
    let object = aya_obj::Object::parse(OBJECT).expect("the object parses");
    let in_object: BTreeMap<String, u32> =
        object.maps.iter().map(|(name, map)| (name.clone(), map.max_entries())).collect();
    let in_rust: BTreeMap<String, u32> = MAPS.iter().map(|(name, capacity)| ((*name).to_owned(), *capacity)).collect();
    assert_eq!(in_rust, in_object, "maps: (name, max_entries) in MAPS against bpf/maps.h");
}
