//! Loading the object, pinning maps and links, attaching programs, and rebuilding the
//! agent's cache from the pinned maps after a restart (reconcile).

use super::*;

/// Where the programs are attached, for link pin names.
pub(super) fn link_pin(pin_path: &Path, name: &str) -> PathBuf {
    pin_path.join("links").join(name)
}

/// Which link hook a tc program goes on.
#[derive(Debug, Clone, Copy)]
pub(super) enum TcHook {
    Ingress,
    Egress,
}

/// The socket load balancer's programs: program, cgroup attach type, pin name suffix.
const SOCK_HOOKS: [(&str, u32, &str); 8] = [
    (
        c::progs::CONNECT4,
        sys::BPF_CGROUP_INET4_CONNECT,
        "connect4",
    ),
    (c::progs::SENDMSG4, sys::BPF_CGROUP_UDP4_SENDMSG, "sendmsg4"),
    (c::progs::RECVMSG4, sys::BPF_CGROUP_UDP4_RECVMSG, "recvmsg4"),
    (
        c::progs::GETPEERNAME4,
        sys::BPF_CGROUP_INET4_GETPEERNAME,
        "getpeername4",
    ),
    (
        c::progs::CONNECT6,
        sys::BPF_CGROUP_INET6_CONNECT,
        "connect6",
    ),
    (c::progs::SENDMSG6, sys::BPF_CGROUP_UDP6_SENDMSG, "sendmsg6"),
    (c::progs::RECVMSG6, sys::BPF_CGROUP_UDP6_RECVMSG, "recvmsg6"),
    (
        c::progs::GETPEERNAME6,
        sys::BPF_CGROUP_INET6_GETPEERNAME,
        "getpeername6",
    ),
];

impl Datapath {
    /// Loads the programs, creating or reusing the pinned maps under `cfg.pin_path`.
    pub fn load(cfg: DatapathConfig) -> Result<Self> {
        let bytes;
        let object: &[u8] = match &cfg.object {
            Some(path) => {
                bytes =
                    std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
                &bytes
            }
            None => EMBEDDED_OBJECT,
        };
        if object.is_empty() {
            return Err(DatapathError::NoObject);
        }
        std::fs::create_dir_all(cfg.pin_path.join("links"))
            .map_err(io_err(format!("creating {}", cfg.pin_path.display())))?;
        let s = &cfg.sizes;
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(&cfg.pin_path)
            .set_max_entries(m::ENDPOINTS, s.endpoints)
            .set_max_entries(m::IPCACHE, s.ipcache)
            .set_max_entries(m::POLICY, s.policy)
            .set_max_entries(m::POLICY_ALLOW, s.policy_ranges)
            .set_max_entries(m::POLICY_DENY, s.policy_ranges)
            .set_max_entries(m::CT, s.conntrack)
            .set_max_entries(m::SERVICES, s.services)
            .set_max_entries(m::BACKEND_SLOTS, s.backends)
            .set_max_entries(m::BACKENDS, s.backends)
            .set_max_entries(m::MAGLEV, s.maglev_services)
            .set_max_entries(m::SOCK_REVNAT, s.conntrack)
            .set_max_entries(m::LB_CT, s.conntrack)
            .set_max_entries(m::EVENTS, s.events_bytes)
            .load(object)?;
        let tc = [
            c::progs::FROM_ENDPOINT,
            c::progs::TO_ENDPOINT,
            c::progs::PASS,
            c::progs::LB_INGRESS,
            c::progs::LB_EGRESS,
            c::progs::FROM_TUNNEL,
            c::progs::TO_TUNNEL,
            c::progs::TO_PROXY,
        ];
        load_programs(&mut ebpf, &tc, |p| {
            <&mut SchedClassifier>::try_from(p)?.load()
        })?;
        let sock: Vec<&'static str> = SOCK_HOOKS.iter().map(|(prog, _, _)| *prog).collect();
        load_programs(&mut ebpf, &sock, |p| {
            <&mut CgroupSockAddr>::try_from(p)?.load()
        })?;
        let maps =
            Maps::from_source(|name| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name)))?;
        let mut dp = Datapath {
            ebpf,
            maps,
            cfg,
            cache: Cache::default(),
            barrier: sys::RcuBarrier::new().map_err(io_err("creating the RCU barrier map"))?,
            l7: None,
            fqdn: Default::default(),
        };
        let runtime = dp.cfg.runtime;
        dp.maps
            .config
            .set(0, runtime, 0)
            .map_err(map_err(m::CONFIG))?;
        dp.reconcile()?;
        tracing::info!(pin_path = %dp.cfg.pin_path.display(), "datapath loaded");
        Ok(dp)
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.cfg
    }

    /// Rebuilds the caches from pinned map contents (after an agent restart).
    pub(super) fn reconcile(&mut self) -> Result<()> {
        let mut cache = Cache::default();
        // Entries per endpoint and generation; an agent stopped mid-change may leave two.
        let mut found: StdHashMap<(u32, bool), BTreeMap<policy::PolicySlot, c::PolicyValue>> =
            StdHashMap::new();
        for kv in self.maps.policy.iter() {
            let (k, v) = kv.map_err(map_err(m::POLICY))?;
            let slot = policy::PolicySlot::Hash(k);
            found
                .entry((k.ep_id, slot.gen()))
                .or_default()
                .insert(slot.in_gen(false), v);
        }
        for (deny, map) in [
            (false, &self.maps.policy_allow),
            (true, &self.maps.policy_deny),
        ] {
            for kv in map.iter() {
                let (k, v) = kv.map_err(map_err(m::POLICY_ALLOW))?;
                let slot = policy::range_slot(deny, k.prefix_len(), &k.data());
                found
                    .entry((slot.ep_id(), slot.gen()))
                    .or_default()
                    .insert(slot.in_gen(false), v);
            }
        }
        let endpoints = self.maps.list_endpoints()?;
        let in_force = |ep_id: u32, found: &StdHashMap<(u32, bool), _>| match endpoints
            .iter()
            .find(|(_, v)| v.ep_id == ep_id)
        {
            Some((_, v)) => v.flags & c::EP_POLICY_GEN != 0,
            None => !found.contains_key(&(ep_id, false)),
        };
        let gens: Vec<(u32, bool)> = found.keys().copied().collect();
        for (ep_id, gen) in gens {
            let Some(entries) = found.get(&(ep_id, gen)) else {
                continue;
            };
            if gen == in_force(ep_id, &found) {
                cache.policy.insert(
                    ep_id,
                    EpPolicy {
                        gen,
                        entries: entries.clone(),
                    },
                );
            } else {
                cache.retire(ep_id, gen, entries);
            }
        }
        for (k, v) in endpoints {
            if v.ifindex != 0 {
                cache.interfaces.insert(k, v.ifindex);
            }
            let keys = cache.endpoints.entry(v.ep_id).or_default();
            keys.push(k);
            keys.sort_by_key(|k| k.family);
        }
        for (key, svc) in self.maps.list_services()? {
            let slots = self.maps.service_slots(&svc).unwrap_or_default();
            let mut ids: BTreeSet<u32> = slots.iter().copied().collect();
            // Terminating backends are not in slots; find them in the Maglev table too.
            if svc.flags & c::SVC_F_MAGLEV != 0 {
                if let Ok(t) = self.maps.maglev_table(svc.svc_id, svc.maglev_m) {
                    ids.extend(t.into_iter().collect::<HashSet<_>>());
                }
            }
            let n_slots = slots.len() as u32;
            cache.services.insert(svc.svc_id, (key, ids, n_slots));
        }
        self.cache = cache;
        self.rebuild_mirror()?;
        self.settle_policy()
    }

    pub(super) fn program_fd(&self, name: &'static str) -> Result<std::os::fd::OwnedFd> {
        let prog = self
            .ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(io_err(format!("dup fd of {name}")))
    }

    /// Attaches `prog` through a pinned link: reuses (atomically updates) an existing pinned
    /// link, else creates and pins one. Pinned links outlive the agent process.
    pub(super) fn attach_pinned(
        &self,
        prog: &'static str,
        pin_name: &str,
        target: u32,
        attach_type: u32,
    ) -> Result<()> {
        let prog_fd = self.program_fd(prog)?;
        let pin = link_pin(&self.cfg.pin_path, pin_name);
        if pin.exists() {
            let reused =
                sys::obj_get(&pin).and_then(|link| sys::link_update(link.as_fd(), prog_fd.as_fd()));
            match reused {
                Ok(()) => {
                    tracing::info!(link = %pin.display(), "reused pinned link");
                    return Ok(());
                }
                Err(e) => {
                    // The link's target is gone (interface or cgroup deleted): start afresh.
                    tracing::warn!(link = %pin.display(), error = %e, "stale pinned link, re-attaching");
                    std::fs::remove_file(&pin)
                        .map_err(io_err(format!("removing {}", pin.display())))?;
                }
            }
        }
        let link = sys::link_create(prog_fd.as_fd(), target, attach_type)
            .map_err(io_err(format!("attaching {prog} ({pin_name})")))?;
        sys::obj_pin(link.as_fd(), &pin).map_err(io_err(format!("pinning {}", pin.display())))?;
        tracing::info!(link = %pin.display(), "attached");
        Ok(())
    }

    /// Attaches the policy programs to an endpoint's host-side interface (tcx, both
    /// directions). The interface name is resolved in the calling thread's network namespace.
    pub fn attach_endpoint_interface(&self, ifname: &str) -> Result<u32> {
        let ifindex = ifindex(ifname)?;
        for (prog, hook) in [
            (c::progs::FROM_ENDPOINT, TcHook::Ingress),
            (c::progs::TO_ENDPOINT, TcHook::Egress),
        ] {
            let (attach, tag) = match hook {
                TcHook::Ingress => (sys::BPF_TCX_INGRESS, "ingress"),
                TcHook::Egress => (sys::BPF_TCX_EGRESS, "egress"),
            };
            self.attach_pinned(
                prog,
                &format!("tc-{ifindex}-{ifname}-{tag}"),
                ifindex,
                attach,
            )?;
        }
        Ok(ifindex)
    }

    /// Attaches the identity-on-the-wire programs to the node's VXLAN device (tcx ingress:
    /// the VNI's identity to the packet, egress: the source endpoint's identity into the
    /// VNI). Resolved in the calling thread's network namespace.
    pub fn attach_tunnel(&self, ifname: &str) -> Result<u32> {
        let ifindex = ifindex(ifname)?;
        self.attach_pinned(
            c::progs::FROM_TUNNEL,
            &format!("tunnel-{ifindex}-{ifname}-ingress"),
            ifindex,
            sys::BPF_TCX_INGRESS,
        )?;
        self.attach_pinned(
            c::progs::TO_TUNNEL,
            &format!("tunnel-{ifindex}-{ifname}-egress"),
            ifindex,
            sys::BPF_TCX_EGRESS,
        )?;
        Ok(ifindex)
    }

    /// Attaches the L7 proxy hand-off to the node's proxy device (tcx ingress) and points
    /// the endpoint programs' ingress redirects at it. Resolved in the calling thread's
    /// network namespace.
    pub fn attach_proxy_device(&mut self, ifname: &str) -> Result<u32> {
        let ifindex = ifindex(ifname)?;
        self.attach_pinned(
            c::progs::TO_PROXY,
            &format!("proxy-{ifindex}-{ifname}-ingress"),
            ifindex,
            sys::BPF_TCX_INGRESS,
        )?;
        let runtime = c::Config {
            proxy_ifindex: ifindex,
            ..self.cfg.runtime
        };
        self.set_runtime_config(runtime)?;
        Ok(ifindex)
    }

    /// Installs the L7 proxy that redirect entries point at.
    pub fn set_l7_proxy(&mut self, proxy: Box<dyn L7Proxy>) {
        self.l7 = Some(proxy);
    }

    /// Stops the L7 proxy listeners of rule sets not in `in_use` (see [`L7Proxy::retain`]).
    pub fn retain_l7_proxies(&mut self, in_use: &BTreeSet<L7Rules<'_>>) {
        if let Some(p) = &mut self.l7 {
            p.retain(in_use);
        }
    }

    /// The proxy port enforcing `rules` (see [`L7Proxy`]).
    pub fn l7_proxy_port(&mut self, rules: L7Rules<'_>) -> Result<u16> {
        match &mut self.l7 {
            Some(p) => p.port_for(rules).map_err(DatapathError::L7Proxy),
            None => Err(DatapathError::L7Proxy(
                "no L7 proxy on this node: L7 rules are not programmed (fail closed)".into(),
            )),
        }
    }

    /// Attaches the north-south load balancer to the node's uplink (tcx ingress: VIP DNAT,
    /// egress: reverse translation). Resolved in the calling thread's network namespace.
    pub fn attach_uplink(&self, ifname: &str) -> Result<u32> {
        let ifindex = ifindex(ifname)?;
        self.attach_pinned(
            c::progs::LB_INGRESS,
            &format!("uplink-{ifindex}-{ifname}-ingress"),
            ifindex,
            sys::BPF_TCX_INGRESS,
        )?;
        self.attach_pinned(
            c::progs::LB_EGRESS,
            &format!("uplink-{ifindex}-{ifname}-egress"),
            ifindex,
            sys::BPF_TCX_EGRESS,
        )?;
        Ok(ifindex)
    }

    /// Detaches the policy programs from an interface: removes its pinned links, whatever
    /// ifindex they were made for, also when the interface is already gone.
    pub fn detach_endpoint_interface(&self, ifname: &str) -> Result<()> {
        let dir = self.cfg.pin_path.join("links");
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        };
        for e in entries.flatten() {
            if is_tc_pin_of(&e.file_name().to_string_lossy(), ifname) {
                let pin = e.path();
                match std::fs::remove_file(&pin) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err(format!("removing {}", pin.display()))(err))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Attaches the socket load balancer to a cgroup v2 directory the caller owns.
    pub fn attach_cgroup(&self, cgroup: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup)
            .map_err(io_err(format!("opening cgroup {}", cgroup.display())))?;
        let tag: String = cgroup
            .to_string_lossy()
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect();
        for (prog, attach, hook) in SOCK_HOOKS {
            self.attach_pinned(
                prog,
                &format!("cg-{tag}-{hook}"),
                dir.as_raw_fd() as u32,
                attach,
            )?;
        }
        Ok(())
    }

    /// Program fd for `BPF_PROG_TEST_RUN` (tests, benchmark).
    pub fn test_run(&self, prog: &'static str, packet: &[u8], repeat: u32) -> Result<sys::TestRun> {
        let fd = self.program_fd(prog)?;
        sys::prog_test_run_skb(fd.as_fd(), packet, repeat)
            .map_err(io_err(format!("test run of {prog}")))
    }

    /// Writes the runtime config (timeouts, event aggregation).
    pub fn set_runtime_config(&mut self, runtime: c::Config) -> Result<()> {
        self.maps
            .config
            .set(0, runtime, 0)
            .map_err(map_err(m::CONFIG))?;
        self.cfg.runtime = runtime;
        Ok(())
    }

    // ---- endpoints and ipcache ----
}

impl Datapath {
    /// Removes every pin (maps and links) under the pin path: detaches everything once the
    /// last fd is closed. For tests and `node-agent` uninstall; a restart must NOT call it.
    pub fn unpin_all(pin_path: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(pin_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Loads the named programs of the object into the kernel, each as its type (`load`).
fn load_programs(
    ebpf: &mut Ebpf,
    names: &[&'static str],
    load: impl Fn(&mut aya::programs::Program) -> Result<(), ProgramError>,
) -> Result<(), DatapathError> {
    for &name in names {
        let p = ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        load(p).map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
}
