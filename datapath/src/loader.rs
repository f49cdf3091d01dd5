//! Loads the datapath's programs, pins their maps under a bpffs directory (a
//! second load reuses them), and attaches them: tc to pods' host-side
//! interfaces and the node's, cgroup programs for socket load balancing. The
//! maps are programmed through the views it hands out ([`Datapath::services`],
//! [`Datapath::policy`], [`Datapath::conntrack`]).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::CgroupSockAddr;
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::tc::{self, SchedClassifier, SchedClassifierLink, TcAttachType, TcHandle};
use aya::{Ebpf, EbpfLoader};
use nodeplane_datapath_abi::{self as abi, LbConfig};

use crate::DatapathError;
use crate::capacity::Capacities;
use crate::conntrack::Conntrack;
use crate::maps::map;
use crate::pins::{self, CGROUP_LINKS, NETLINK_MARK};
use crate::pods::PodInterfaces;
use crate::policy_maps::{PolicyMaps, ProgrammedPolicy};
use crate::services::ServiceMaps;

/// A tc program and where it is attached on each interface.
#[derive(Clone, Copy)]
struct Hook {
    program: &'static str,
    direction: TcAttachType,
    /// The sub-directory of the pin directory holding its attachments.
    links: &'static str,
}

/// What leaves pods (and enters the node's interface): balancing and policy.
const FROM_POD: Hook = Hook { program: "from_pod", direction: TcAttachType::Ingress, links: pins::LINKS };
/// What the node delivers to a pod: the node's own connections, and policy for
/// what arrives where from_pod does not run.
const TO_POD: Hook = Hook { program: "to_pod", direction: TcAttachType::Egress, links: pins::EGRESS_LINKS };
const HOOKS: [Hook; 2] = [FROM_POD, TO_POD];
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
    /// Pinned maps kept at a capacity other than the one asked for.
    kept_sizes: Vec<String>,
    /// What this instance last wrote to the policy maps (`None`: read them back).
    policy: Option<ProgrammedPolicy>,
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
    /// which must be on a bpffs. The maps have the object's capacities.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with(pin_dir, AttachMode::Auto, &Capacities::reference())
    }

    /// [`load`](Self::load), attaching by `attach`, new maps with `capacities`.
    /// A pinned map keeps its capacity (it holds live flows and Services): a
    /// new one takes effect once it is unpinned ([`kept_sizes`](Self::kept_sizes)).
    pub fn load_with(pin_dir: &Path, attach: AttachMode, capacities: &Capacities) -> Result<Self, DatapathError> {
        let (recreated, kept_sizes) = unpin_changed_maps(pin_dir, capacities)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for (map, entries) in capacities.iter() {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader.load(abi::OBJECT)?;
        for hook in HOOKS {
            program(&mut ebpf, hook)?.load()?;
            let links = pin_dir.join(hook.links);
            std::fs::create_dir_all(&links).map_err(|source| DatapathError::Pin {
                what: "creating",
                path: links,
                source,
            })?;
        }
        for name in SOCKET_PROGRAMS {
            socket_program(&mut ebpf, name)?.load()?;
        }
        Ok(Datapath {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            attach,
            current: HashSet::new(),
            recreated,
            kept_sizes,
            policy: None,
        })
    }

    /// The kernel's id of this instance's from_pod program (what its ingress
    /// attachments run).
    pub fn program_id(&mut self) -> Result<u32, DatapathError> {
        Ok(program(&mut self.ebpf, FROM_POD)?.info()?.id())
    }

    /// The Service maps, to program Service ports.
    pub fn services(&mut self) -> ServiceMaps<'_> {
        ServiceMaps { ebpf: &mut self.ebpf }
    }

    /// The policy maps, to program NetworkPolicy.
    pub fn policy(&mut self) -> PolicyMaps<'_> {
        PolicyMaps { ebpf: &mut self.ebpf, programmed: &mut self.policy }
    }

    /// The conntrack map, to read it and collect expired entries.
    pub fn conntrack(&mut self) -> Conntrack<'_> {
        Conntrack { ebpf: &mut self.ebpf }
    }

    /// The pods' host-side interfaces: the address each pod may send from.
    pub fn pod_interfaces(&mut self) -> PodInterfaces<'_> {
        PodInterfaces { ebpf: &mut self.ebpf }
    }

    /// The pinned maps that an upgrade changed the layout of: they were
    /// recreated empty (what changed, one line each).
    pub fn recreated_maps(&self) -> &[String] {
        &self.recreated
    }

    /// The pinned maps kept at a capacity other than the one asked for, and
    /// how to apply it (one line each).
    pub fn kept_sizes(&self) -> &[String] {
        &self.kept_sizes
    }

    /// `map`'s capacity as loaded (a kept pinned map's own).
    pub fn capacity(&self, map: &'static str) -> Result<u32, DatapathError> {
        Ok(MapData::from_pin(self.pin_dir.join(map))?.info()?.max_entries())
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
            let link = FdLink::try_from(link)?;
            link.pin(&tcx_pin).map_err(|source| DatapathError::PinLink { path: tcx_pin, source })?;
        } else {
            // A netlink filter lives until it is deleted; dropping the link would.
            std::mem::forget(link);
            std::fs::create_dir(&netlink_mark).map_err(|source| DatapathError::Pin {
                what: "creating",
                path: netlink_mark,
                source,
            })?;
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
                .map_err(|source| DatapathError::NetlinkFilter { interface: interface.to_owned(), source })?
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
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Pin {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let target =
            std::fs::File::open(cgroup).map_err(|source| DatapathError::Cgroup { path: cgroup.into(), source })?;
        // A cgroup v1 hierarchy (or any other directory) would fail with a bare EBADF.
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let fs = rustix::fs::fstatfs(&target)
            .map_err(|e| DatapathError::Cgroup { path: cgroup.into(), source: e.into() })?;
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
            let link = FdLink::try_from(program.take_link(id)?)?;
            let old = if pin.exists() {
                Some(PinnedLink::from_pin(&pin)?.unpin().map_err(|source| DatapathError::Pin {
                    what: "unpinning",
                    path: pin.clone(),
                    source,
                })?)
            } else {
                None
            };
            link.pin(&pin).map_err(|source| DatapathError::PinLink { path: pin.clone(), source })?;
            drop(old); // its last reference: the old program leaves the cgroup
        }
        Ok(())
    }

    /// Stops balancing host sockets: the pinned cgroup links go, and with them
    /// the attachments.
    pub fn detach_cgroup(&mut self) -> Result<(), DatapathError> {
        for name in SOCKET_PROGRAMS {
            let pin = self.pin_dir.join(CGROUP_LINKS).join(name);
            pins::remove(&pin, std::fs::remove_file(&pin))?;
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
        pins::remove(&tcx_pin, std::fs::remove_file(&tcx_pin))?;
        pins::remove(&netlink_mark, std::fs::remove_dir(&netlink_mark))
    }

    /// The interfaces with a recorded attachment.
    pub fn attached_interfaces(&self) -> Result<Vec<String>, DatapathError> {
        pins::attached_interfaces(&self.pin_dir)
    }

    /// Where an interface's attachment is recorded: a pinned TCX link, or (bpffs
    /// holds no plain files) a directory marking a netlink filter.
    fn link_paths(&self, interface: &str, hook: Hook) -> (PathBuf, PathBuf) {
        let links = self.pin_dir.join(hook.links);
        // bpffs refuses names with dots (VLAN interfaces have them).
        let name = interface.replace('.', "_");
        (links.join(&name), links.join(format!("{NETLINK_MARK}{name}")))
    }

    /// How many flows a pod of this node may hold in conntrack (0: no limit):
    /// its new flows beyond that are not recorded (a Service's are refused).
    pub fn set_flows_per_pod(&mut self, flows: u32) -> Result<(), DatapathError> {
        self.update_config(|config| config.ct_per_pod = flows)
    }

    /// The source address a pod's hairpin flows (to itself through a Service) get.
    pub fn set_hairpin_address(&mut self, addr: Ipv4Addr) -> Result<(), DatapathError> {
        self.update_config(|config| config.hairpin_addr = addr.octets())
    }

    fn update_config(&mut self, change: impl FnOnce(&mut LbConfig)) -> Result<(), DatapathError> {
        let mut config: Array<&mut MapData, LbConfig> = Array::try_from(map(&mut self.ebpf, abi::CONFIG)?)?;
        let mut value = config.get(&0, 0)?;
        change(&mut value);
        config.set(0, value, 0)?;
        Ok(())
    }

    /// The per-reason counters, summed over CPUs, in [`abi::COUNTERS`] order.
    pub fn counters(&mut self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let counters: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map(&mut self.ebpf, abi::COUNTER_MAP)?)?;
        if counters.len() as usize != abi::COUNTERS.len() {
            return Err(DatapathError::Missing("the counters named in abi::COUNTERS (np_counters has another size)"));
        }
        abi::COUNTERS
            .iter()
            .enumerate()
            .map(|(i, name)| Ok((*name, counters.get(&(i as u32), 0)?.iter().sum())))
            .collect()
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

/// Unpins the maps whose pinned type, key or value size or flags differ from
/// the embedded object's (an upgrade changed them), so the load creates them anew
/// rather than run the program on a map it would misread. A map whose capacity
/// alone differs from `capacities` is kept: it holds live state, and the
/// programs read any capacity alike. Returns what was recreated and what kept.
fn unpin_changed_maps(pin_dir: &Path, capacities: &Capacities) -> Result<(Vec<String>, Vec<String>), DatapathError> {
    let object = aya_obj::Object::parse(abi::OBJECT)?;
    let (mut changed, mut kept) = (Vec::new(), Vec::new());
    for (name, wanted) in &object.maps {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)?.info()?;
        let pinned =
            (info.map_type().map_or(u32::MAX, |t| t as u32), info.key_size(), info.value_size(), info.map_flags());
        let wanted_layout = (wanted.map_type(), wanted.key_size(), wanted.value_size(), wanted.map_flags());
        if pinned != wanted_layout {
            std::fs::remove_file(&path).map_err(|source| DatapathError::Pin {
                what: "unpinning",
                path: path.clone(),
                source,
            })?;
            changed.push(format!(
                "{name}: pinned as (type, key, value, flags) {pinned:?}, the program needs {wanted_layout:?}; recreated empty"
            ));
            continue;
        }
        let asked = capacities.get(name).unwrap_or(wanted.max_entries());
        if info.max_entries() != asked {
            kept.push(format!(
                "{name}: pinned with {} entries, {asked} asked for; kept, as it holds live state (the new size applies \
                 after a reboot, or once {} is removed and nodeplaned restarted)",
                info.max_entries(),
                path.display()
            ));
        }
    }
    changed.sort();
    kept.sort();
    Ok((changed, kept))
}

fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
    Ok(ebpf.program_mut(hook.program).ok_or(DatapathError::Missing(hook.program))?.try_into()?)
}

fn socket_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    Ok(ebpf.program_mut(name).ok_or(DatapathError::Missing(name))?.try_into()?)
}
