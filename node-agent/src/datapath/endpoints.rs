//! Endpoints (endpoint map) and the ipcache (address -> identity), and re-checking
//! established connections after identities change.

use super::*;

pub(super) fn endpoint_key(family: u8, addr: c::Addr) -> c::EndpointKey {
    c::EndpointKey {
        family,
        _pad: [0; 3],
        addr,
    }
}

pub(super) fn host_prefix(family: u8) -> u8 {
    if family == c::FAMILY_IPV6 {
        128
    } else {
        32
    }
}

pub(super) fn ipcache_key(family: u8, addr: c::Addr, prefix: u8) -> Key<c::IpcacheKey> {
    Key::new(
        c::IPCACHE_PREFIX_HEADER_BITS + prefix as u32,
        c::IpcacheKey {
            family,
            _pad: [0; 3],
            addr: mask_addr(addr, prefix),
        },
    )
}

pub(super) fn ipv4_addr(ip: Ipv4Addr) -> c::Addr {
    c::addr_v4(ip.octets())
}

/// The address the maps hold as (family, 16-byte address) (see [`family_addr`]).
pub fn addr_ip(family: u8, a: &c::Addr) -> std::net::IpAddr {
    if family == c::FAMILY_IPV6 {
        std::net::IpAddr::from(*a)
    } else {
        std::net::IpAddr::from([a[0], a[1], a[2], a[3]])
    }
}

/// An address of either family as the maps hold it: (family, 16-byte address).
pub(super) fn family_addr(ip: std::net::IpAddr) -> (u8, c::Addr) {
    match ip {
        std::net::IpAddr::V4(v4) => (c::FAMILY_IPV4, ipv4_addr(v4)),
        std::net::IpAddr::V6(v6) => (c::FAMILY_IPV6, v6.octets()),
    }
}

impl Datapath {
    /// Creates or updates an endpoint (endpoint map + its /32 in the ipcache). Idempotent;
    /// keeps the endpoint's policy revision.
    pub fn apply_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let mut keys = vec![endpoint_key(c::FAMILY_IPV4, ipv4_addr(ep.ip))];
        if let Some(ip6) = ep.ip6 {
            keys.push(endpoint_key(c::FAMILY_IPV6, ip6.octets()));
        }
        let existing = self.maps.endpoints.get(&keys[0], 0).ok();
        let rev = existing.map_or(0, |v| v.policy_rev);
        // The port-range flag follows the endpoint's policy (which may have been applied
        // before the endpoint itself), not its description.
        let pol = self.cache.policy.get(&ep.id);
        let mut flags = 0;
        if pol.is_some_and(EpPolicy::has_ranges) {
            flags |= c::EP_HAS_PORT_RANGES;
        }
        if pol.is_some_and(|p| p.gen) {
            flags |= c::EP_POLICY_GEN;
        }
        if ep.enforce_ingress {
            flags |= c::EP_ENFORCE_INGRESS;
        }
        if ep.enforce_egress {
            flags |= c::EP_ENFORCE_EGRESS;
        }
        let value = c::EndpointValue {
            ep_id: ep.id,
            identity: ep.identity,
            ifindex: ep.ifindex,
            flags,
            policy_rev: rev,
            _pad: 0,
        };
        for key in &keys {
            // The interface: given, else the one the address was bound to at attach time.
            let ifindex = match ep.ifindex {
                0 => self.cache.interfaces.get(key).copied().unwrap_or(0),
                i => i,
            };
            self.apply_ipcache_family(key.family, key.addr, host_prefix(key.family), ep.identity)?;
            self.maps
                .endpoints
                .insert(key, c::EndpointValue { ifindex, ..value }, 0)
                .map_err(map_err(m::ENDPOINTS))?;
        }
        // The endpoint moved to other addresses: its old entries go.
        if let Some(old) = self.cache.endpoints.insert(ep.id, keys.clone()) {
            for key in old.iter().filter(|k| !keys.contains(k)) {
                ignore_missing(self.maps.endpoints.remove(key)).map_err(map_err(m::ENDPOINTS))?;
                self.remove_ipcache_family(key.family, key.addr, host_prefix(key.family))?;
            }
        }
        Ok(())
    }

    /// Records that the endpoint owning `ip` sits behind interface `ifindex` (where its
    /// packets enter the node): packets from that address arriving on another interface are
    /// dropped as spoofed. Updates the endpoint entry if it exists already.
    pub fn bind_endpoint_interface(&mut self, ip: std::net::IpAddr, ifindex: u32) -> Result<()> {
        let key = match ip {
            std::net::IpAddr::V4(v4) => endpoint_key(c::FAMILY_IPV4, ipv4_addr(v4)),
            std::net::IpAddr::V6(v6) => endpoint_key(c::FAMILY_IPV6, v6.octets()),
        };
        self.cache.interfaces.insert(key, ifindex);
        if let Ok(mut v) = self.maps.endpoints.get(&key, 0) {
            if v.ifindex != ifindex {
                v.ifindex = ifindex;
                self.maps
                    .endpoints
                    .insert(key, v, 0)
                    .map_err(map_err(m::ENDPOINTS))?;
            }
        }
        Ok(())
    }

    /// Removes an endpoint (all its addresses), its ipcache entries and its policy entries.
    pub fn remove_endpoint(&mut self, ep_id: u32, ip: Ipv4Addr) -> Result<()> {
        let mut keys = self.cache.endpoints.remove(&ep_id).unwrap_or_default();
        let given = endpoint_key(c::FAMILY_IPV4, ipv4_addr(ip));
        if !keys.contains(&given) {
            keys.push(given);
        }
        for key in &keys {
            ignore_missing(self.maps.endpoints.remove(key)).map_err(map_err(m::ENDPOINTS))?;
            self.remove_ipcache_family(key.family, key.addr, host_prefix(key.family))?;
        }
        self.apply_policy(ep_id, &[])?;
        // Its entries are gone when this returns (endpoint removals are rare: one grace
        // period each is cheap).
        self.settle_policy()
    }

    /// Maps an IPv4 CIDR to an identity (longest prefix wins; a more specific entry is how a
    /// CIDR "except" is expressed).
    pub fn apply_ipcache(&mut self, addr: c::Addr, prefix: u8, identity: u32) -> Result<()> {
        self.apply_ipcache_family(c::FAMILY_IPV4, addr, prefix, identity)
    }

    pub fn apply_ipcache_v4(&mut self, ip: Ipv4Addr, prefix: u8, identity: u32) -> Result<()> {
        self.apply_ipcache(ipv4_addr(ip), prefix, identity)
    }

    /// Maps an IPv4 or IPv6 CIDR to an identity.
    pub fn apply_ipcache_ip(
        &mut self,
        ip: std::net::IpAddr,
        prefix: u8,
        identity: u32,
    ) -> Result<()> {
        match ip {
            std::net::IpAddr::V4(v4) => {
                self.apply_ipcache_family(c::FAMILY_IPV4, ipv4_addr(v4), prefix, identity)
            }
            std::net::IpAddr::V6(v6) => {
                self.apply_ipcache_family(c::FAMILY_IPV6, v6.octets(), prefix, identity)
            }
        }
    }

    pub(super) fn apply_ipcache_family(
        &mut self,
        family: u8,
        addr: c::Addr,
        prefix: u8,
        identity: u32,
    ) -> Result<()> {
        if !self.mirror_ipcache(family, addr, prefix, Some(identity)) {
            return Ok(());
        }
        self.write_ipcache(family, addr, prefix, identity)
    }

    /// Writes one ipcache entry as it is (no mirror: see `fqdn`).
    pub(super) fn write_ipcache(
        &mut self,
        family: u8,
        addr: c::Addr,
        prefix: u8,
        identity: u32,
    ) -> Result<()> {
        let key = ipcache_key(family, addr, prefix);
        let unchanged = self
            .maps
            .ipcache
            .get(&key, 0)
            .is_ok_and(|v| v.identity == identity);
        if !unchanged {
            // A new prefix or a new identity can change what an established peer is.
            self.cache.identities_changed = true;
        }
        self.maps
            .ipcache
            .insert(&key, c::IpcacheValue { identity, flags: 0 }, 0)
            .map_err(map_err(m::IPCACHE))
    }

    pub fn remove_ipcache(&mut self, addr: c::Addr, prefix: u8) -> Result<()> {
        self.remove_ipcache_family(c::FAMILY_IPV4, addr, prefix)
    }

    /// Removes an IPv4 or IPv6 CIDR.
    pub fn remove_ipcache_ip(&mut self, ip: std::net::IpAddr, prefix: u8) -> Result<()> {
        match ip {
            std::net::IpAddr::V4(v4) => {
                self.remove_ipcache_family(c::FAMILY_IPV4, ipv4_addr(v4), prefix)
            }
            std::net::IpAddr::V6(v6) => {
                self.remove_ipcache_family(c::FAMILY_IPV6, v6.octets(), prefix)
            }
        }
    }

    pub(super) fn remove_ipcache_family(
        &mut self,
        family: u8,
        addr: c::Addr,
        prefix: u8,
    ) -> Result<()> {
        if !self.mirror_ipcache(family, addr, prefix, None) {
            return Ok(());
        }
        self.delete_ipcache(family, addr, prefix)
    }

    /// Deletes one ipcache entry as it is (no mirror: see `fqdn`).
    pub(super) fn delete_ipcache(&mut self, family: u8, addr: c::Addr, prefix: u8) -> Result<()> {
        let key = ipcache_key(family, addr, prefix);
        if self.maps.ipcache.get(&key, 0).is_ok() {
            self.cache.identities_changed = true;
        }
        ignore_missing(self.maps.ipcache.remove(&key)).map_err(map_err(m::IPCACHE))
    }

    /// After ipcache changes (a peer relabelled, added or gone), bumps every local endpoint's
    /// policy revision once, so the kernel re-checks each established connection against the
    /// peer's current identity on its next packet, as it does after a policy change. One map
    /// write per endpoint per batch of changes, not per ipcache entry.
    pub fn recheck_connections(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.cache.identities_changed) {
            return Ok(());
        }
        let ids: Vec<u32> = self.cache.endpoints.keys().copied().collect();
        for id in ids {
            if let Err(e) =
                self.update_endpoint(id, |v| v.policy_rev = v.policy_rev.wrapping_add(1))
            {
                self.cache.identities_changed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    // ---- policy ----
}
