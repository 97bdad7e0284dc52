//! Services: the LB maps (service, backends, slots) and the Maglev lookup table.

use super::*;

impl Datapath {
    /// Creates or updates a service and its backends. New backends are written before the
    /// tables that reference them, the service entry (active count) switches last when
    /// growing and first when shrinking, then stale slots/backends are removed.
    pub fn apply_service(&mut self, svc: &Service) -> Result<()> {
        let svc_err = |reason: String| DatapathError::Service {
            svc: svc.id,
            reason,
        };
        let (family, vip) = family_addr(svc.vip);
        let key = c::ServiceKey {
            vip,
            port: svc.port.to_be(),
            proto: svc.proto,
            family,
        };
        let mut ids = HashSet::new();
        for b in &svc.backends {
            if !ids.insert(b.id) {
                return Err(svc_err(format!("duplicate backend id {}", b.id)));
            }
            if b.ip.is_ipv4() != svc.vip.is_ipv4() {
                return Err(svc_err(format!(
                    "backend {} is not of the frontend {}'s address family",
                    b.ip, svc.vip
                )));
            }
        }
        // 1. Backends.
        for b in &svc.backends {
            let v = c::BackendValue {
                addr: family_addr(b.ip).1,
                port: b.port.to_be(),
                proto: svc.proto,
                family,
                state: match b.state {
                    BackendState::Active => c::BACKEND_ACTIVE,
                    BackendState::Terminating => c::BACKEND_TERMINATING,
                },
                _pad: [0; 3],
            };
            self.maps
                .backends
                .insert(b.id, v, 0)
                .map_err(map_err(m::BACKENDS))?;
        }
        let active: Vec<&Backend> = svc
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active && b.weight > 0)
            .collect();
        // 2. Slots for random choice: a backend of weight w takes w slots (capped).
        let mut slots: Vec<u32> = Vec::new();
        for b in &active {
            for _ in 0..b.weight.min(64) {
                slots.push(b.id);
            }
        }
        for (i, id) in slots.iter().enumerate() {
            self.maps
                .backend_slots
                .insert(
                    c::BackendSlotKey {
                        svc_id: svc.id,
                        slot: i as u32,
                    },
                    *id,
                    0,
                )
                .map_err(map_err(m::BACKEND_SLOTS))?;
        }
        // 3. Maglev table (one map write).
        let (flags_lb, m_size) = match svc.algorithm {
            LbAlgorithm::Random => (0, 0),
            LbAlgorithm::Maglev { m: m_size } => {
                let list: Vec<weft_model::maglev::MaglevBackend> = active
                    .iter()
                    .map(|b| {
                        weft_model::maglev::MaglevBackend::new(
                            backend_hash_key(b, svc.proto),
                            b.weight,
                        )
                    })
                    .collect();
                let table = weft_model::maglev::build_table(&list, m_size, self.cfg.maglev_seed)
                    .map_err(|e| svc_err(e.to_string()))?;
                if !table.is_empty() {
                    let ids: Vec<u32> = table.iter().map(|idx| active[*idx as usize].id).collect();
                    self.maps.maglev_write(svc.id, &ids)?;
                }
                (c::SVC_F_MAGLEV, m_size)
            }
        };
        // 4. The service entry: the switch.
        let value = c::ServiceValue {
            svc_id: svc.id,
            count: slots.len() as u32,
            flags: flags_lb
                | if svc.affinity.is_some() {
                    c::SVC_F_AFFINITY
                } else {
                    0
                },
            maglev_m: m_size,
            affinity_timeout_s: svc
                .affinity
                .map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32),
            _pad: 0,
        };
        self.maps
            .services
            .insert(key, value, 0)
            .map_err(map_err(m::SERVICES))?;
        // 5. Clean up what the old version had and the new one does not.
        let new_ids: BTreeSet<u32> = svc.backends.iter().map(|b| b.id).collect();
        if let Some((old_key, old_ids, old_slots)) = self.cache.services.get(&svc.id).cloned() {
            if old_key != key {
                ignore_missing(self.maps.services.remove(&old_key))
                    .map_err(map_err(m::SERVICES))?;
            }
            for slot in slots.len() as u32..old_slots {
                ignore_missing(self.maps.backend_slots.remove(&c::BackendSlotKey {
                    svc_id: svc.id,
                    slot,
                }))
                .map_err(map_err(m::BACKEND_SLOTS))?;
            }
            for id in old_ids.difference(&new_ids) {
                if !self.backend_used_elsewhere(svc.id, *id) {
                    ignore_missing(self.maps.backends.remove(id)).map_err(map_err(m::BACKENDS))?;
                }
            }
        }
        if flags_lb == 0 || active.is_empty() {
            self.maps.maglev_remove(svc.id)?;
        }
        self.cache
            .services
            .insert(svc.id, (key, new_ids, slots.len() as u32));
        Ok(())
    }

    pub fn remove_service(&mut self, svc_id: u32) -> Result<()> {
        let Some((key, ids, n_slots)) = self.cache.services.remove(&svc_id) else {
            return Ok(());
        };
        ignore_missing(self.maps.services.remove(&key)).map_err(map_err(m::SERVICES))?;
        for slot in 0..n_slots {
            ignore_missing(
                self.maps
                    .backend_slots
                    .remove(&c::BackendSlotKey { svc_id, slot }),
            )
            .map_err(map_err(m::BACKEND_SLOTS))?;
        }
        self.maps.maglev_remove(svc_id)?;
        for id in ids {
            if !self.backend_used_elsewhere(svc_id, id) {
                ignore_missing(self.maps.backends.remove(&id)).map_err(map_err(m::BACKENDS))?;
            }
        }
        Ok(())
    }

    /// Whether a service other than `svc_id` references backend `id` (backends may be shared).
    pub(super) fn backend_used_elsewhere(&self, svc_id: u32, id: u32) -> bool {
        self.cache
            .services
            .iter()
            .any(|(other, (_, ids, _))| *other != svc_id && ids.contains(&id))
    }

    // ---- observation ----
}

/// The Maglev permutation key of a backend: the same string on every node.
pub fn backend_hash_key(b: &Backend, proto: u8) -> String {
    format!("{}:{}/{}", b.ip, b.port, proto)
}

/// Flow hash of the socket load balancer (mirror of the eBPF `client_hash`): which Maglev
/// slot a client (network namespace cookie) uses for a service.
pub fn maglev_slot(hash_seed: u32, client_cookie: u64, svc_id: u32, m_size: u32) -> usize {
    fn mix64(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
    (mix64(client_cookie ^ (((hash_seed as u64) << 32) | svc_id as u64)) % m_size as u64) as usize
}
