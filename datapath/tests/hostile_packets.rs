//! A property of the loaded programs, checked with `BPF_PROG_TEST_RUN` on
//! random frames: nothing IP gets from or to a pod that a deny-all policy
//! isolates both ways, whatever the frame holds (any IHL, flags, fragment
//! offset, protocol, ICMP error, truncation, spoofed source), and no such
//! frame leaves state (conntrack entries, fragments) behind.
//!
//! Cases: `PROPTEST_CASES` (2,000 by default; `cargo xtask fuzz` runs many
//! more). A failure is shrunk to a smallest frame that gets through.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{HashMap, Map, MapData};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use nodeplane_datapath::{Datapath, PodAt};
use nodeplane_datapath_abi::{self as abi, CtKey, CtValue, FragKey, FragValue};
use nodeplane_model::compile::CompiledPolicy;
use nodeplane_model::policy::{Cluster, PodView, Policy};
use nodeplane_testkit::{Bpffs, Node, privileged};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Isolated both ways by a deny-all policy.
const ISOLATED: Ipv4Addr = Ipv4Addr::new(10, 200, 40, 2);
/// Under no policy: its packets to ISOLATED are what ingress isolation stops.
const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(10, 200, 40, 3);
const TC_ACT_SHOT: u32 = 2;

fn cluster() -> Cluster {
    let yaml = "metadata: {name: deny-all, namespace: default}\n\
                spec: {podSelector: {matchLabels: {app: locked}}, policyTypes: [Ingress, Egress]}\n";
    let policy = serde_yaml_ng::from_str(yaml).unwrap();
    let pod = |name: &str, ip, app: &str| PodView {
        namespace: "default".into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        ip,
        ports: Vec::new(),
    };
    Cluster {
        namespaces: Default::default(),
        pods: vec![pod("locked", ISOLATED, "locked"), pod("open", NEIGHBOUR, "open")],
        remote_pods: Vec::new(),
        policies: vec![Policy::from_k8s(&policy).unwrap()],
    }
}

/// One of the pods' addresses, or any other.
fn address() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![Just(ISOLATED.octets()), Just(NEIGHBOUR.octets()), any::<[u8; 4]>()]
}

/// An IPv4 packet as a hostile pod might write it.
fn ipv4() -> impl Strategy<Value = Vec<u8>> {
    let version_ihl = prop_oneof![8 => (5u8..=15).prop_map(|ihl| 0x40 | ihl), 1 => any::<u8>()];
    // Fragment field: whole, first, middle or last fragment, or anything.
    let fragment = prop_oneof![
        Just(0u16),
        Just(0x4000),
        Just(0x2000),
        (1u16..0x1fff).prop_map(|offset| 0x2000 | offset),
        1u16..0x1fff,
        any::<u16>()
    ];
    let protocol = prop_oneof![Just(6u8), Just(17), Just(1), Just(132), Just(47), any::<u8>()];
    let icmp_type = prop_oneof![Just(0u8), Just(8), Just(3), Just(11), Just(12), any::<u8>()];
    (
        version_ihl,
        any::<u16>(),
        fragment,
        protocol,
        address(),
        address(),
        proptest::collection::vec(any::<u8>(), 60),
        (icmp_type, address(), address(), proptest::collection::vec(any::<u8>(), 0..80)),
        any::<bool>(),
    )
        .prop_map(
            |(version_ihl, id, fragment, protocol, saddr, daddr, options, (icmp, inner_src, inner_dst, rest), long)| {
                let ihl = usize::from(version_ihl & 0x0f).max(5) * 4;
                let mut l4 = Vec::new();
                if protocol == 1 {
                    // An ICMP message, with an IP header of a flow inside for errors.
                    l4.extend([icmp, 0, 0, 0, 0, 0, 0, 0, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
                    l4.extend(inner_src);
                    l4.extend(inner_dst);
                }
                l4.extend(rest);
                let total = if long { 65_000 } else { (ihl + l4.len()) as u16 };
                let mut packet = vec![version_ihl, 0];
                packet.extend(total.to_be_bytes());
                packet.extend(id.to_be_bytes());
                packet.extend(fragment.to_be_bytes());
                packet.extend([64, protocol, 0, 0]);
                packet.extend(saddr);
                packet.extend(daddr);
                packet.extend(&options[..ihl - 20]);
                packet.extend(l4);
                packet
            },
        )
}

/// A frame: mostly IPv4, some IPv6 and other ethertypes, cut short at times
/// (never within the IP header's fixed part: a test run refuses those, as
/// the kernel's receive path drops them before tc).
fn frame() -> impl Strategy<Value = (u16, Vec<u8>)> {
    let payload = prop_oneof![
        8 => ipv4().prop_map(|p| (0x0800u16, p)),
        1 => proptest::collection::vec(any::<u8>(), 40..120).prop_map(|p| (0x86dd, p)),
        1 => (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..120)),
    ];
    (payload, any::<bool>(), any::<usize>()).prop_map(|((ethertype, payload), cut, at)| {
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        frame.extend(ethertype.to_be_bytes());
        frame.extend(payload);
        let shortest = 14
            + match ethertype {
                0x0800 => 20,
                0x86dd => 40,
                _ => 0,
            };
        if cut && frame.len() > shortest {
            frame.truncate(shortest + at % (frame.len() - shortest + 1));
        }
        (ethertype, frame)
    })
}

/// A program of the datapath's object, loaded over the maps `Datapath::load` pinned.
fn program(ebpf: &mut Ebpf, name: &str) -> OwnedFd {
    let program: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
    program.load().unwrap();
    program.fd().unwrap().as_fd().try_clone_to_owned().unwrap()
}

/// `BPF_PROG_TEST_RUN`: the verdict of `program` on `frame`, as if it came in
/// on `ingress_ifindex` and were at `ifindex` (both of this namespace).
fn verdict(program: &OwnedFd, frame: &[u8], ingress_ifindex: u32, ifindex: u32) -> u32 {
    /// `struct __sk_buff` up to `ifindex`: what a test run may set of it.
    #[repr(C)]
    struct SkBuff {
        zero: [u32; 2],
        mark: u32,
        zero2: [u32; 5],
        priority: u32,
        ingress_ifindex: u32,
        ifindex: u32,
    }
    /// `union bpf_attr` as BPF_PROG_TEST_RUN reads it.
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        pad: u32,
    }
    let context = SkBuff { zero: [0; 2], mark: 0, zero2: [0; 5], priority: 0, ingress_ifindex, ifindex };
    let mut attr = Attr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        ctx_size_in: size_of::<SkBuff>() as u32,
        ctx_in: &context as *const SkBuff as u64,
        ..Attr::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: the attribute names buffers that outlive the call, with their sizes.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut Attr, size_of::<Attr>()) };
    assert_eq!(ret, 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    attr.retval
}

fn pinned<K: aya::Pod, V: aya::Pod>(root: &std::path::Path, name: &str) -> HashMap<MapData, K, V> {
    HashMap::try_from(Map::HashMap(MapData::from_pin(root.join(name)).unwrap())).unwrap()
}

#[test]
fn no_ip_frame_gets_from_or_to_an_isolated_pod_nor_leaves_state() {
    if !privileged("no_ip_frame_gets_from_or_to_an_isolated_pod_nor_leaves_state") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let (isolated, neighbour) = (node.add_pod(ISOLATED).unwrap(), node.add_pod(NEIGHBOUR).unwrap());
    let root = bpffs.path().to_owned();
    let interfaces = [isolated.host_if.clone(), neighbour.host_if.clone()];
    node.run(move || {
        let mut datapath = Datapath::load(&root).unwrap();
        let index = |name: &str| {
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: a NUL-terminated name.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        };
        let (at_isolated, at_neighbour) = (index(&interfaces[0]), index(&interfaces[1]));
        for interface in &interfaces {
            datapath.attach_pod_interface(interface).unwrap();
        }
        let pod = |addr| PodAt { addr, netns_id: None };
        datapath
            .pod_interfaces()
            .set(&BTreeMap::from([(at_isolated, pod(ISOLATED)), (at_neighbour, pod(NEIGHBOUR))]))
            .unwrap();
        datapath.policy().apply(&CompiledPolicy::compile(&cluster())).unwrap();
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(&root).load(abi::OBJECT).unwrap();
        let (from_pod, to_pod) = (program(&mut ebpf, "from_pod"), program(&mut ebpf, "to_pod"));
        let conntrack = std::cell::RefCell::new(pinned::<CtKey, CtValue>(&root, abi::CONNTRACK));
        let fragments = std::cell::RefCell::new(pinned::<FragKey, FragValue>(&root, abi::FRAGMENTS));

        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2_000);
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&frame(), |(ethertype, frame)| {
            // Each case from a clean slate, so that a failure shrinks to the frame at fault.
            let (mut conntrack, mut fragments) = (conntrack.borrow_mut(), fragments.borrow_mut());
            for key in conntrack.keys().collect::<Result<Vec<_>, _>>().unwrap() {
                conntrack.remove(&key).unwrap();
            }
            for key in fragments.keys().collect::<Result<Vec<_>, _>>().unwrap() {
                fragments.remove(&key).unwrap();
            }
            let ip = ethertype == 0x0800 || ethertype == 0x86dd;
            let from_isolated = verdict(&from_pod, &frame, at_isolated, at_isolated);
            let to_isolated = verdict(&to_pod, &frame, at_neighbour, at_isolated);
            prop_assert!(!ip || from_isolated == TC_ACT_SHOT, "sent by the isolated pod: verdict {from_isolated}");
            prop_assert!(!ip || to_isolated == TC_ACT_SHOT, "delivered to the isolated pod: verdict {to_isolated}");
            // The neighbour's frames to the isolated pod (as far as they say so).
            if ethertype == 0x0800 && frame.len() >= 34 && frame[30..34] == ISOLATED.octets() {
                let from_neighbour = verdict(&from_pod, &frame, at_neighbour, at_neighbour);
                prop_assert_eq!(from_neighbour, TC_ACT_SHOT, "the neighbour's frame to the isolated pod");
            }
            prop_assert_eq!(conntrack.keys().count(), 0, "a conntrack entry left behind");
            prop_assert_eq!(fragments.keys().count(), 0, "a fragment left behind");
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
        drop(datapath);
    });
}
