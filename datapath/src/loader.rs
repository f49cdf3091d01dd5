//! Loads the load balancer, pins its maps under a bpffs directory (a second load
//! reuses them), attaches it to pods' host-side interfaces, and programs Services.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::HashSet;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::CgroupSockAddr;
use aya::programs::links::{CgroupAttachMode, FdLink, LinkError, PinnedLink};
use aya::programs::tc::{self, SchedClassifier, SchedClassifierLink, TcAttachType, TcHandle};
use aya::{Ebpf, EbpfLoader};

use crate::maps::{self, BackendId, BackendKey, BackendValue, CtKey, CtValue, LbConfig, SvcKey, SvcValue};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("eBPF link: {0}")]
    Link(#[from] LinkError),
    #[error("parsing the embedded eBPF object: {0}")]
    Object(String),
    #[error("{0} is not a cgroup v2 directory (socket load balancing attaches there)")]
    NotCgroup2(PathBuf),
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Clsact { interface: String, source: tc::TcError },
    #[error("pinning at {path}: {source}")]
    Pin { path: PathBuf, source: std::io::Error },
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+): {0}")]
    NetnsCookie(std::io::Error),
    #[error("the object has no {0}")]
    Missing(&'static str),
    #[error("a Service may have at most {max} backends, not {count}")]
    TooManyBackends { count: usize, max: usize },
}

/// A Service port as the datapath balances it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Unique per Service port; names its backend slots.
    pub id: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// sessionAffinity: ClientIP, with its timeout.
    pub affinity: Option<Duration>,
    /// A NodePort (`vip` is the node's IP): only packets that can start a
    /// connection open a flow, and never one a local socket owns.
    pub node_port: bool,
}

/// The transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// A tc program and where it is attached on each interface.
#[derive(Clone, Copy)]
struct Hook {
    program: &'static str,
    direction: TcAttachType,
    /// The sub-directory of the pin directory holding its attachments.
    links: &'static str,
}

/// What leaves pods (and enters the node's interface): balancing and policy.
const FROM_POD: Hook = Hook { program: "from_pod", direction: TcAttachType::Ingress, links: "links" };
/// What the node delivers to a pod: the node's own connections, and policy for
/// what arrives where from_pod does not run.
const TO_POD: Hook = Hook { program: "to_pod", direction: TcAttachType::Egress, links: "links-egress" };
const HOOKS: [Hook; 2] = [FROM_POD, TO_POD];
/// The sub-directory of the pin directory holding attachments (of from_pod:
/// the record of which interfaces are attached).
const LINKS: &str = FROM_POD.links;
/// Prefix of the directory marking a netlink attachment (bpffs holds no files).
const NETLINK_MARK: &str = "netlink_";
/// The sub-directory of the pin directory holding the cgroup attachments.
pub(crate) const CGROUP_LINKS: &str = "cgroup";
/// The socket load balancer's programs (`bpf/lb.c`), one per hook.
const SOCKET_PROGRAMS: [&str; 3] = ["sock_connect", "sock_sendmsg", "sock_recvmsg"];
/// Where a netlink filter sits: fixed, so a later instance finds it to replace its program.
const NETLINK_PRIORITY: u16 = 1;
const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The loaded datapath. Dropping it detaches the program from the interfaces it
/// was attached to; the maps stay pinned.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attach: AttachMode,
    /// Interfaces that run this instance's program (attached or moved to it).
    current: HashSet<String>,
    /// Pinned maps whose layout differed from the program's, recreated empty.
    recreated: Vec<String>,
    /// What this instance last wrote to the policy maps (`None`: read them back).
    pub(crate) policy: Option<crate::policy_maps::ProgrammedPolicy>,
}

/// How the program is attached to interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX where the kernel has it (6.6+), else netlink clsact.
    #[default]
    Auto,
    /// Netlink clsact filters even where TCX exists (as on the node image's 6.1).
    Netlink,
}

impl Datapath {
    /// Loads the load balancer; its maps are pinned in (or reused from) `pin_dir`,
    /// which must be on a bpffs.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with(pin_dir, AttachMode::Auto)
    }

    /// [`load`](Self::load), attaching by `attach`.
    pub fn load_with(pin_dir: &Path, attach: AttachMode) -> Result<Self, DatapathError> {
        let recreated = unpin_changed_maps(pin_dir)?;
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(pin_dir).load(crate::LB_OBJECT)?;
        for hook in HOOKS {
            program(&mut ebpf, hook)?.load()?;
            let links = pin_dir.join(hook.links);
            std::fs::create_dir_all(&links).map_err(|source| DatapathError::Pin { path: links, source })?;
        }
        for name in SOCKET_PROGRAMS {
            socket_program(&mut ebpf, name)?.load()?;
        }
        Ok(Datapath { ebpf, pin_dir: pin_dir.to_owned(), attach, current: HashSet::new(), recreated, policy: None })
    }

    /// The kernel's id of this instance's from_pod program (what its ingress
    /// attachments run).
    pub fn program_id(&mut self) -> Result<u32, DatapathError> {
        Ok(program(&mut self.ebpf, FROM_POD)?.info()?.id())
    }

    /// A map of the loaded object.
    pub(crate) fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf.map_mut(name).ok_or(DatapathError::Missing(name))
    }

    /// The pinned maps that an upgrade changed the layout of: they were
    /// recreated empty (what changed, one line each).
    pub fn recreated_maps(&self) -> &[String] {
        &self.recreated
    }

    /// Attaches the datapath to tc ingress (from_pod) and egress (to_pod) of
    /// `interface` (a pod's host-side veth): TCX on kernels that have it, else
    /// netlink clsact. The attachments outlive this process — a TCX link is pinned
    /// under `links/`, a netlink filter stays on its qdisc — so traffic keeps
    /// flowing while nodeplaned restarts. An interface a previous instance attached
    /// is moved to this instance's programs in one atomic step each (an upgrade
    /// takes effect without a gap).
    pub fn attach_pod_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attach_hooks(interface, &HOOKS)
    }

    /// Attaches from_pod alone to the node's own interface (where NodePorts and
    /// outside traffic to pods arrive): to_pod there would only look at every
    /// packet the node sends.
    pub fn attach_node_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attach_hooks(interface, &[FROM_POD])
    }

    fn attach_hooks(&mut self, interface: &str, hooks: &[Hook]) -> Result<(), DatapathError> {
        if self.current.contains(interface) {
            return Ok(());
        }
        for hook in hooks {
            self.attach_hook(interface, *hook)?;
        }
        self.current.insert(interface.to_owned());
        Ok(())
    }

    fn attach_hook(&mut self, interface: &str, hook: Hook) -> Result<(), DatapathError> {
        let (tcx_pin, netlink_mark) = self.link_paths(interface, hook);
        if tcx_pin.exists() || netlink_mark.exists() {
            match self.replace_program(interface, hook, &tcx_pin, netlink_mark.exists()) {
                Ok(()) => return Ok(()),
                // The recorded attachment is gone (the interface was re-created,
                // someone deleted the filter): attach afresh.
                Err(_) => self.forget_hook(interface, hook)?,
            }
        }
        // Netlink attachment (kernels before 6.6) needs the qdisc; TCX ignores it.
        match tc::qdisc_add_clsact(interface) {
            Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
            // Someone (another tool, an earlier attachment) added it already.
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {}
            Err(source) => return Err(DatapathError::Clsact { interface: interface.to_owned(), source }),
        }
        let program = program(&mut self.ebpf, hook)?;
        let id = match self.attach {
            AttachMode::Auto => program.attach(interface, hook.direction)?,
            AttachMode::Netlink => {
                let options = tc::TcAttachOptions::Netlink(tc::NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: NETLINK_HANDLE,
                    classid: None,
                });
                program.attach_with_options(interface, hook.direction, options)?
            }
        };
        let link = program.take_link(id)?;
        if <&FdLink>::try_from(&link).is_ok() {
            let link = FdLink::try_from(link)
                .map_err(|e| DatapathError::Pin { path: tcx_pin.clone(), source: std::io::Error::other(e) })?;
            link.pin(&tcx_pin).map_err(|e| DatapathError::Pin { path: tcx_pin, source: std::io::Error::other(e) })?;
        } else {
            // A netlink filter lives until it is deleted; dropping the link would.
            std::mem::forget(link);
            std::fs::create_dir(&netlink_mark).map_err(|source| DatapathError::Pin { path: netlink_mark, source })?;
        }
        Ok(())
    }

    /// Swaps the program of an existing attachment for this instance's: a TCX
    /// link update, or a netlink filter replaced in place.
    fn replace_program(
        &mut self,
        interface: &str,
        hook: Hook,
        tcx_pin: &Path,
        netlink: bool,
    ) -> Result<(), DatapathError> {
        let link = if netlink {
            SchedClassifierLink::attached(interface, hook.direction, NETLINK_PRIORITY, NETLINK_HANDLE, None)
                .map_err(|source| DatapathError::Pin { path: tcx_pin.to_owned(), source })?
        } else {
            SchedClassifierLink::try_from(FdLink::from(PinnedLink::from_pin(tcx_pin)?))?
        };
        let program = program(&mut self.ebpf, hook)?;
        let id = program.attach_to_link(link)?;
        let link = program.take_link(id)?;
        if netlink {
            // Dropping a netlink link deletes its filter; a TCX link stays pinned.
            std::mem::forget(link);
        }
        Ok(())
    }

    /// Balances the sockets of the processes in the cgroup v2 at `cgroup` and
    /// below (the whole node at the root): a connect or sendmsg to a VIP goes
    /// straight to a backend. The links are pinned under `cgroup/`, so they
    /// outlive this process; attaching again (a restart, an upgrade) puts this
    /// instance's programs in place, make before break — for a moment both run,
    /// and the second finds a backend's address rather than a VIP and leaves it.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let dir = self.pin_dir.join(CGROUP_LINKS);
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Pin { path: dir.clone(), source })?;
        let target =
            std::fs::File::open(cgroup).map_err(|source| DatapathError::Pin { path: cgroup.into(), source })?;
        // A cgroup v1 hierarchy (or any other directory) would fail with a bare EBADF.
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let fs =
            rustix::fs::fstatfs(&target).map_err(|e| DatapathError::Pin { path: cgroup.into(), source: e.into() })?;
        if fs.f_type as i64 != CGROUP2_SUPER_MAGIC {
            return Err(DatapathError::NotCgroup2(cgroup.into()));
        }
        // Only this network namespace's sockets are the node's.
        let cookie = netns_cookie().map_err(DatapathError::NetnsCookie)?;
        self.update_config(|config| config.node_netns = cookie)?;
        for name in SOCKET_PROGRAMS {
            let pin = dir.join(name);
            let program = socket_program(&mut self.ebpf, name)?;
            // A link (kernel 5.7+) takes no flags; links to one cgroup always stack.
            let id = program.attach(&target, CgroupAttachMode::Single)?;
            let link = FdLink::try_from(program.take_link(id)?)
                .map_err(|e| DatapathError::Pin { path: pin.clone(), source: std::io::Error::other(e) })?;
            let old = if pin.exists() {
                Some(
                    PinnedLink::from_pin(&pin)?
                        .unpin()
                        .map_err(|source| DatapathError::Pin { path: pin.clone(), source })?,
                )
            } else {
                None
            };
            link.pin(&pin).map_err(|e| DatapathError::Pin { path: pin.clone(), source: std::io::Error::other(e) })?;
            drop(old); // its last reference: the old program leaves the cgroup
        }
        Ok(())
    }

    /// Stops balancing host sockets: the pinned cgroup links go, and with them
    /// the attachments.
    pub fn detach_cgroup(&mut self) -> Result<(), DatapathError> {
        for name in SOCKET_PROGRAMS {
            let pin = self.pin_dir.join(CGROUP_LINKS).join(name);
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(DatapathError::Pin { path: pin, source }),
            }
        }
        Ok(())
    }

    /// Forgets the attachment record of an interface that is gone (the kernel
    /// dropped the attachment with it), so a new interface of that name is attached.
    pub fn forget_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.current.remove(interface);
        HOOKS.into_iter().try_for_each(|hook| self.forget_hook(interface, hook))
    }

    fn forget_hook(&mut self, interface: &str, hook: Hook) -> Result<(), DatapathError> {
        let (tcx_pin, netlink_mark) = self.link_paths(interface, hook);
        for (path, result) in
            [(&tcx_pin, std::fs::remove_file(&tcx_pin)), (&netlink_mark, std::fs::remove_dir(&netlink_mark))]
        {
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(DatapathError::Pin { path: path.clone(), source }),
            }
        }
        Ok(())
    }

    /// The interfaces with a recorded attachment.
    pub fn attached_interfaces(&self) -> Result<Vec<String>, DatapathError> {
        let links = self.pin_dir.join(LINKS);
        let entries = std::fs::read_dir(&links).map_err(|source| DatapathError::Pin { path: links.clone(), source })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(NETLINK_MARK).map_or(name.clone(), str::to_owned)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Where an interface's attachment is recorded: a pinned TCX link, or (bpffs
    /// holds no plain files) a directory marking a netlink filter.
    fn link_paths(&self, interface: &str, hook: Hook) -> (PathBuf, PathBuf) {
        let links = self.pin_dir.join(hook.links);
        // bpffs refuses names with dots (VLAN interfaces have them).
        let name = interface.replace('.', "_");
        (links.join(&name), links.join(format!("{NETLINK_MARK}{name}")))
    }

    /// Programs a Service port with its backends (and, for sessionAffinity
    /// ClientIP, how long a client keeps its backend). Backend slots are written
    /// before the count that makes them reachable, and dropped after it shrinks, so
    /// a packet never picks an empty slot. Backends no longer listed stop being
    /// alive: no new flow goes to them, and their UDP flows move.
    pub fn set_service(&mut self, service: &Service) -> Result<(), DatapathError> {
        let count = u16::try_from(service.backends.len())
            .map_err(|_| DatapathError::TooManyBackends { count: service.backends.len(), max: u16::MAX as usize })?;
        let id = service.id;
        let key = SvcKey {
            vip: service.vip.octets(),
            port: service.port.to_be_bytes(),
            proto: service.protocol.number(),
            pad: 0,
        };
        let previous = services(&mut self.ebpf)?.get(&key, 0).map(|v| v.backend_count).unwrap_or(0);
        let mut slots = typed::<BackendKey, BackendValue>(&mut self.ebpf, maps::BACKENDS)?;
        let old: Vec<BackendValue> = (0..u32::from(previous))
            .filter_map(|slot| slots.get(&BackendKey { service_id: id, slot }, 0).ok())
            .collect();
        let new: Vec<BackendValue> = service
            .backends
            .iter()
            .map(|(addr, port)| BackendValue { addr: addr.octets(), port: port.to_be_bytes(), pad: 0 })
            .collect();
        for (slot, value) in new.iter().enumerate() {
            slots.insert(BackendKey { service_id: id, slot: slot as u32 }, *value, 0)?;
        }
        let alive_id = |b: &BackendValue| BackendId { service_id: id, addr: b.addr, port: b.port, pad: 0 };
        let mut alive = typed::<BackendId, u8>(&mut self.ebpf, maps::BACKEND_ALIVE)?;
        for backend in &new {
            alive.insert(alive_id(backend), 1, 0)?;
        }
        let affinity_timeout_s = service.affinity.map_or(0, |d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32);
        services(&mut self.ebpf)?.insert(
            key,
            SvcValue {
                service_id: id,
                backend_count: count,
                flags: if service.node_port { maps::SVC_F_NODE_PORT } else { 0 },
                affinity_timeout_s,
            },
            0,
        )?;
        let mut alive = typed::<BackendId, u8>(&mut self.ebpf, maps::BACKEND_ALIVE)?;
        for gone in old.iter().filter(|b| !new.contains(b)) {
            remove_if_present(&mut alive, &alive_id(gone))?;
        }
        let mut slots = typed::<BackendKey, BackendValue>(&mut self.ebpf, maps::BACKENDS)?;
        for slot in count..previous {
            remove_if_present(&mut slots, &BackendKey { service_id: id, slot: u32::from(slot) })?;
        }
        Ok(())
    }
}

impl Datapath {
    /// The Service ports in the map: (VIP, port, protocol) → the map's value.
    pub fn programmed(&mut self) -> Result<Vec<(SvcKey, SvcValue)>, DatapathError> {
        Ok(services(&mut self.ebpf)?.iter().collect::<Result<_, _>>()?)
    }

    /// Removes a Service port: the service entry first (no new flow finds it),
    /// then its backend slots and their alive marks.
    pub fn remove_service(&mut self, key: &SvcKey) -> Result<(), DatapathError> {
        let Ok(value) = services(&mut self.ebpf)?.get(key, 0) else { return Ok(()) };
        remove_if_present(&mut services(&mut self.ebpf)?, key)?;
        let id = value.service_id;
        let mut slots = typed::<BackendKey, BackendValue>(&mut self.ebpf, maps::BACKENDS)?;
        let mut gone = Vec::new();
        for slot in 0..u32::from(value.backend_count) {
            let key = BackendKey { service_id: id, slot };
            if let Ok(backend) = slots.get(&key, 0) {
                gone.push(backend);
            }
            remove_if_present(&mut slots, &key)?;
        }
        let mut alive = typed::<BackendId, u8>(&mut self.ebpf, maps::BACKEND_ALIVE)?;
        for backend in gone {
            remove_if_present(
                &mut alive,
                &BackendId { service_id: id, addr: backend.addr, port: backend.port, pad: 0 },
            )?;
        }
        Ok(())
    }
}

/// How long conntrack entries live after their last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// A TCP flow no reply has come back for yet (a SYN that went unanswered).
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    /// After both FINs or a RST.
    pub tcp_closed: Duration,
    pub udp: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// What one garbage-collection pass over the conntrack map did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub entries: u64,
    pub expired: u64,
}

impl Datapath {
    /// The source address a pod's hairpin flows (to itself through a Service) get.
    pub fn set_hairpin_address(&mut self, addr: Ipv4Addr) -> Result<(), DatapathError> {
        self.update_config(|config| config.hairpin_addr = addr.octets())
    }

    fn update_config(&mut self, change: impl FnOnce(&mut LbConfig)) -> Result<(), DatapathError> {
        let map = self.ebpf.map_mut(maps::CONFIG).ok_or(DatapathError::Missing("map np_config"))?;
        let mut config: Array<&mut MapData, LbConfig> = Array::try_from(map)?;
        let mut value = config.get(&0, 0)?;
        change(&mut value);
        config.set(0, value, 0)?;
        Ok(())
    }

    /// The per-reason counters, summed over CPUs, in [`maps::COUNTERS`] order.
    pub fn counters(&mut self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let map = self.ebpf.map_mut(maps::COUNTER_MAP).ok_or(DatapathError::Missing("map np_counters"))?;
        let counters: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map)?;
        if counters.len() as usize != maps::COUNTERS.len() {
            return Err(DatapathError::Missing("the counters named in maps::COUNTERS (np_counters has another size)"));
        }
        maps::COUNTERS
            .iter()
            .enumerate()
            .map(|(i, name)| Ok((*name, counters.get(&(i as u32), 0)?.iter().sum())))
            .collect()
    }

    /// Every conntrack entry.
    pub fn conntrack(&mut self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        Ok(conntrack(&mut self.ebpf)?.iter().collect::<Result<_, _>>()?)
    }

    /// Deletes the conntrack entries whose timeout ran out.
    pub fn gc(&mut self, timeouts: CtTimeouts) -> Result<GcStats, DatapathError> {
        let now = monotonic_ns();
        let entries = self.conntrack()?;
        let mut stats = GcStats { entries: entries.len() as u64, expired: 0 };
        let mut map = conntrack(&mut self.ebpf)?;
        for (key, value) in entries {
            if now.saturating_sub(value.last_seen_ns) > lifetime(&key, &value, timeouts).as_nanos() as u64 {
                // Seen again (or reopened) since the snapshot: keep it.
                if map.get(&key, 0).is_ok_and(|current| current.last_seen_ns != value.last_seen_ns) {
                    continue;
                }
                // Gone already (the LRU evicted it) is as good as deleted.
                match map.remove(&key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => stats.expired += 1,
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(stats)
    }
}

/// The cookie of this thread's network namespace, as `bpf_get_netns_cookie()`
/// returns it (`SO_NETNS_COOKIE`, Linux 5.14+; rustix does not wrap it). Asked
/// of a Unix socket: nodeplaned's unit allows no inet sockets.
fn netns_cookie() -> std::io::Result<u64> {
    let socket = rustix::net::socket(rustix::net::AddressFamily::UNIX, rustix::net::SocketType::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket; `cookie` and `length` are live and sized for the option.
    let status = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut length,
        )
    };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Now on the clock `bpf_ktime_get_ns()` reads: CLOCK_MONOTONIC, in ns.
pub(crate) fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// How long an entry lives after its last packet.
pub(crate) fn lifetime(key: &CtKey, value: &CtValue, timeouts: CtTimeouts) -> Duration {
    match (key.proto, value.closed(), value.established()) {
        (6, true, _) => timeouts.tcp_closed,
        (6, false, true) => timeouts.tcp_established,
        (6, false, false) => timeouts.tcp_syn,
        _ => timeouts.udp,
    }
}

/// Unpins the maps whose pinned type, key or value size or capacity differ from
/// the embedded object's (an upgrade changed them), so the load creates them anew
/// rather than run the program on a map it would misread. Returns what changed.
fn unpin_changed_maps(pin_dir: &Path) -> Result<Vec<String>, DatapathError> {
    let object = aya_obj::Object::parse(crate::LB_OBJECT).map_err(|e| DatapathError::Object(e.to_string()))?;
    let mut changed = Vec::new();
    for (name, wanted) in &object.maps {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)?.info()?;
        let pinned =
            (info.map_type().map_or(u32::MAX, |t| t as u32), info.key_size(), info.value_size(), info.max_entries());
        let wanted = (wanted.map_type(), wanted.key_size(), wanted.value_size(), wanted.max_entries());
        if pinned != wanted {
            std::fs::remove_file(&path).map_err(|source| DatapathError::Pin { path: path.clone(), source })?;
            changed.push(format!(
                "{name}: pinned as (type, key, value, entries) {pinned:?}, the program needs {wanted:?}; recreated empty"
            ));
        }
    }
    changed.sort();
    Ok(changed)
}

fn conntrack(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, CtKey, CtValue>, DatapathError> {
    Ok(HashMap::try_from(ebpf.map_mut(maps::CONNTRACK).ok_or(DatapathError::Missing("map np_conntrack"))?)?)
}

fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
    Ok(ebpf.program_mut(hook.program).ok_or(DatapathError::Missing(hook.program))?.try_into()?)
}

fn socket_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    Ok(ebpf.program_mut(name).ok_or(DatapathError::Missing(name))?.try_into()?)
}

fn services(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, SvcKey, SvcValue>, DatapathError> {
    typed(ebpf, maps::SERVICES)
}

fn typed<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, DatapathError> {
    Ok(HashMap::try_from(ebpf.map_mut(name).ok_or(DatapathError::Missing(name))?)?)
}

fn remove_if_present<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    key: &K,
) -> Result<(), DatapathError> {
    removed(map.remove(key))
}

/// A removal's result, where the entry being gone already is as good as removed.
pub(crate) fn removed(result: Result<(), aya::maps::MapError>) -> Result<(), DatapathError> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(err) => Err(err.into()),
    }
}
