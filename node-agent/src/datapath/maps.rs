//! Typed handles on every map (`Maps`), opened from a loaded object or from pins, and the
//! read-side listings the debug CLI and reconcile use.

use super::*;

/// Typed handles on every map; built from a loaded object or from pins alone (debug CLI).
pub struct Maps {
    pub endpoints: HashMap<MapData, c::EndpointKey, c::EndpointValue>,
    pub ipcache: LpmTrie<MapData, c::IpcacheKey, c::IpcacheValue>,
    /// Single-port and wildcard policy entries.
    pub policy: HashMap<MapData, c::PolicyHashKey, c::PolicyValue>,
    /// Port-range policy entries (consulted only for endpoints flagged `EP_HAS_PORT_RANGES`).
    pub policy_allow: LpmTrie<MapData, c::PolicyKey, c::PolicyValue>,
    pub policy_deny: LpmTrie<MapData, c::PolicyKey, c::PolicyValue>,
    pub ct: HashMap<MapData, c::CtKey, c::CtValue>,
    pub config: Array<MapData, c::Config>,
    pub metrics: PerCpuArray<MapData, c::MetricValue>,
    pub services: HashMap<MapData, c::ServiceKey, c::ServiceValue>,
    pub backend_slots: HashMap<MapData, c::BackendSlotKey, u32>,
    pub backends: HashMap<MapData, u32, c::BackendValue>,
    /// Raw: its values (`MaglevTable`, 256 KiB) are moved through heap buffers only.
    pub maglev: MapData,
    pub affinity: HashMap<MapData, c::AffinityKey, c::AffinityValue>,
    pub sock_revnat: HashMap<MapData, c::SockRevNatKey, c::SockRevNatValue>,
    /// North-south LB conntrack (forward and reverse entries).
    pub lb_ct: HashMap<MapData, c::CtKey, c::LbCtValue>,
    /// The event ring buffer, taken by [`Datapath::flow_events`] / [`Maps::flow_events`].
    pub events: Option<MapData>,
}

pub(super) fn typed<T>(name: &'static str, map: Map) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(map_err(name))
}

impl Maps {
    pub(super) fn from_source(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            endpoints: typed(m::ENDPOINTS, get(m::ENDPOINTS)?)?,
            ipcache: typed(m::IPCACHE, get(m::IPCACHE)?)?,
            policy: typed(m::POLICY, get(m::POLICY)?)?,
            policy_allow: typed(m::POLICY_ALLOW, get(m::POLICY_ALLOW)?)?,
            policy_deny: typed(m::POLICY_DENY, get(m::POLICY_DENY)?)?,
            ct: typed(m::CT, get(m::CT)?)?,
            config: typed(m::CONFIG, get(m::CONFIG)?)?,
            metrics: typed(m::METRICS, get(m::METRICS)?)?,
            services: typed(m::SERVICES, get(m::SERVICES)?)?,
            backend_slots: typed(m::BACKEND_SLOTS, get(m::BACKEND_SLOTS)?)?,
            backends: typed(m::BACKENDS, get(m::BACKENDS)?)?,
            maglev: match get(m::MAGLEV)? {
                Map::HashMap(data) => data,
                _ => return Err(DatapathError::MissingMap(m::MAGLEV)),
            },
            affinity: typed(m::AFFINITY, get(m::AFFINITY)?)?,
            sock_revnat: typed(m::SOCK_REVNAT, get(m::SOCK_REVNAT)?)?,
            lb_ct: typed(m::LB_CT, get(m::LB_CT)?)?,
            events: match get(m::EVENTS)? {
                Map::RingBuf(data) => Some(data),
                _ => return Err(DatapathError::MissingMap(m::EVENTS)),
            },
        })
    }

    /// Opens the maps pinned under `pin_path` without loading any program (debug CLI).
    pub fn open_pinned(pin_path: &Path) -> Result<Self> {
        Self::from_source(|name| {
            let data = MapData::from_pin(pin_path.join(name)).map_err(map_err(name))?;
            Ok(match name {
                m::IPCACHE | m::POLICY_ALLOW | m::POLICY_DENY => Map::LpmTrie(data),
                m::AFFINITY | m::SOCK_REVNAT | m::LB_CT => Map::LruHashMap(data),
                m::CONFIG => Map::Array(data),
                m::METRICS => Map::PerCpuArray(data),
                m::EVENTS => Map::RingBuf(data),
                _ => Map::HashMap(data),
            })
        })
    }

    /// Takes the flow-event reader (one consumer per ring buffer).
    pub fn flow_events(&mut self) -> Result<Option<FlowEvents>> {
        match self.events.take() {
            None => Ok(None),
            Some(map) => ring::Ring::new(map)
                .map(|ring| Some(FlowEvents { ring }))
                .map_err(io_err("mapping the event ring buffer")),
        }
    }

    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for idx in 0..c::METRICS_LEN {
            let per_cpu = self.metrics.get(&idx, 0).map_err(map_err(m::METRICS))?;
            let (p, b) = per_cpu
                .iter()
                .fold((0u64, 0u64), |(p, b), v| (p + v.packets, b + v.bytes));
            if idx == c::METRIC_LOST_EVENTS {
                out.lost_events = p;
            } else if p > 0 {
                let verdict = (idx / c::DROP_REASON_COUNT) as u8;
                let reason = (idx % c::DROP_REASON_COUNT) as u8;
                out.rows.insert((verdict, reason), (p, b));
            }
        }
        Ok(out)
    }

    pub fn list_endpoints(&self) -> Result<Vec<(c::EndpointKey, c::EndpointValue)>> {
        let mut v: Vec<_> = self
            .endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::ENDPOINTS))?;
        v.sort_by_key(|(_, e)| e.ep_id);
        Ok(v)
    }

    /// The identity the datapath gives `ip`: its longest ipcache prefix's, else world.
    pub fn identity_of(&self, ip: IpAddr) -> u32 {
        let key = match ip.to_canonical() {
            IpAddr::V4(v4) => ipcache_key(c::FAMILY_IPV4, ipv4_addr(v4), 32),
            IpAddr::V6(v6) => ipcache_key(c::FAMILY_IPV6, v6.octets(), 128),
        };
        self.ipcache
            .get(&key, 0)
            .map_or(c::IDENTITY_WORLD, |v| v.identity)
    }

    /// The peer identity conntrack recorded for the TCP connection `client -> server` that
    /// the policy of direction `dir` (`DIR_*`) admitted: the identity the packets carried
    /// (the tunnel's or a proxy's), which an address alone may not tell.
    pub fn ct_peer_identity(
        &self,
        client: std::net::SocketAddr,
        server: std::net::SocketAddr,
        dir: u8,
    ) -> Option<u32> {
        let (family, saddr, daddr) = match (client.ip().to_canonical(), server.ip().to_canonical())
        {
            (IpAddr::V4(a), IpAddr::V4(b)) => (c::FAMILY_IPV4, ipv4_addr(a), ipv4_addr(b)),
            (IpAddr::V6(a), IpAddr::V6(b)) => (c::FAMILY_IPV6, a.octets(), b.octets()),
            _ => return None,
        };
        let key = c::CtKey {
            saddr,
            daddr,
            sport: client.port().to_be(),
            dport: server.port().to_be(),
            proto: 6,
            family,
            dir,
            _pad: 0,
        };
        self.ct.get(&key, 0).ok().map(|v| v.peer_identity)
    }

    pub fn list_ipcache(&self) -> Result<Vec<(Key<c::IpcacheKey>, c::IpcacheValue)>> {
        self.ipcache
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::IPCACHE))
    }

    /// (map, prefix, key, value) of the endpoint's policy entries; hash entries are shown
    /// with the prefix they are equivalent to (72 any protocol, 80 any port, 96 one port).
    pub fn list_policy(
        &self,
        ep_id: u32,
    ) -> Result<Vec<(&'static str, u32, c::PolicyKey, c::PolicyValue)>> {
        // Only the generation in force (an endpoint not in the map: whichever there is);
        // shown without the generation bit.
        let gen = self
            .list_endpoints()?
            .into_iter()
            .find(|(_, v)| v.ep_id == ep_id)
            .map(|(_, v)| v.flags & c::EP_POLICY_GEN != 0);
        let shown = |dir: u8| gen.is_none_or(|g| (dir & c::POLICY_DIR_GEN != 0) == g);
        let plain = |dir: u8| dir & !c::POLICY_DIR_GEN;
        let mut out = Vec::new();
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err(m::POLICY))?;
            if k.ep_id != ep_id || !shown(k.direction) {
                continue;
            }
            let prefix = if k.flags & c::POLICY_ANY_PROTO != 0 {
                c::POLICY_PREFIX_FIXED_BITS
            } else if k.flags & c::POLICY_ANY_PORT != 0 {
                c::POLICY_PREFIX_PROTO_BITS
            } else {
                c::POLICY_PREFIX_FULL_BITS
            };
            let key = c::PolicyKey {
                ep_id,
                identity: k.identity,
                direction: plain(k.direction),
                proto: k.proto,
                dport: k.dport.to_be_bytes(),
            };
            out.push(("hash", prefix, key, v));
        }
        for (name, map) in [
            ("range-deny", &self.policy_deny),
            ("range-allow", &self.policy_allow),
        ] {
            for kv in map.iter() {
                let (k, v) = kv.map_err(map_err(m::POLICY_ALLOW))?;
                let mut d = k.data();
                if d.ep_id == ep_id && shown(d.direction) {
                    d.direction = plain(d.direction);
                    out.push((name, k.prefix_len(), d, v));
                }
            }
        }
        out.sort_by_key(|(name, prefix, k, _)| (k.direction, k.identity, *prefix, *name));
        Ok(out)
    }

    pub fn list_services(&self) -> Result<Vec<(c::ServiceKey, c::ServiceValue)>> {
        let mut v: Vec<_> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::SERVICES))?;
        v.sort_by_key(|(_, s)| s.svc_id);
        Ok(v)
    }

    /// Active backend ids of a service, in slot order.
    pub fn service_slots(&self, svc: &c::ServiceValue) -> Result<Vec<u32>> {
        (0..svc.count)
            .map(|slot| {
                self.backend_slots
                    .get(
                        &c::BackendSlotKey {
                            svc_id: svc.svc_id,
                            slot,
                        },
                        0,
                    )
                    .map_err(map_err(m::BACKEND_SLOTS))
            })
            .collect()
    }

    pub fn backend(&self, id: u32) -> Result<c::BackendValue> {
        self.backends.get(&id, 0).map_err(map_err(m::BACKENDS))
    }

    /// The first `m` entries of a service's Maglev table (backend ids).
    pub fn maglev_table(&self, svc_id: u32, m_size: u32) -> Result<Vec<u32>> {
        let mut buf = vec![0u8; 4 * c::MAGLEV_MAX_M];
        let found = sys::map_lookup(self.maglev.fd().as_fd(), &svc_id.to_ne_bytes(), &mut buf)
            .map_err(io_err(format!(
                "reading the Maglev table of service {svc_id}"
            )))?;
        if !found {
            return Ok(Vec::new());
        }
        Ok(buf
            .chunks_exact(4)
            .take((m_size as usize).min(c::MAGLEV_MAX_M))
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    pub(super) fn maglev_write(&self, svc_id: u32, table: &[u32]) -> Result<()> {
        let mut buf = vec![0u8; 4 * c::MAGLEV_MAX_M];
        for (slot, id) in table.iter().take(c::MAGLEV_MAX_M).enumerate() {
            buf[4 * slot..4 * slot + 4].copy_from_slice(&id.to_ne_bytes());
        }
        sys::map_update(self.maglev.fd().as_fd(), &svc_id.to_ne_bytes(), &buf).map_err(io_err(
            format!("writing the Maglev table of service {svc_id}"),
        ))
    }

    pub(super) fn maglev_remove(&self, svc_id: u32) -> Result<()> {
        sys::map_delete(self.maglev.fd().as_fd(), &svc_id.to_ne_bytes()).map_err(io_err(format!(
            "removing the Maglev table of service {svc_id}"
        )))
    }

    /// Removes the conntrack entries that have expired (the kernel drops an expired entry only
    /// when a packet of its flow comes by; the table is not an LRU, so the rest is collected
    /// here). Each candidate is read again just before it goes, so an entry that a packet
    /// refreshed meanwhile stays. Returns how many were removed.
    pub fn ct_gc(&mut self) -> Result<usize> {
        let cfg = self.config.get(&0, 0).map_err(map_err(m::CONFIG))?;
        let now = monotonic_ns();
        let expired: Vec<c::CtKey> = self
            .ct
            .iter()
            .filter_map(|kv| kv.ok())
            .filter(|(_, v)| c::ct_expired(&cfg, v, now))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for k in &expired {
            let still = self
                .ct
                .get(k, 0)
                .is_ok_and(|v| c::ct_expired(&cfg, &v, monotonic_ns()));
            if still {
                ignore_missing(self.ct.remove(k)).map_err(map_err(m::CT))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn list_ct(&self) -> Result<Vec<(c::CtKey, c::CtValue)>> {
        self.ct
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(m::CT))
    }
}

/// The fill (entries / max entries, 0..=1) of every keyed map pinned under `pin_path`, by map
/// name (`WEFT_CT`, ...): what the agent's health report carries as `map_fill`. Arrays (config,
/// metrics) and the event ring buffer have no fill.
pub fn map_fill(pin_path: &Path) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for name in m::ALL {
        if matches!(name, m::CONFIG | m::METRICS | m::EVENTS) {
            continue;
        }
        let data = MapData::from_pin(pin_path.join(name)).map_err(map_err(name))?;
        let info = data.info().map_err(map_err(name))?;
        let n = sys::map_count(data.fd().as_fd(), info.key_size() as usize)
            .map_err(io_err(format!("counting the entries of {name}")))?;
        let max = info.max_entries().max(1) as f64;
        out.insert(name.to_string(), n as f64 / max);
    }
    Ok(out)
}
