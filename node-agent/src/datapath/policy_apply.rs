//! Writing an endpoint's policy into the maps: the two-generation scheme (write the other
//! generation whole, flip the endpoint, retire the old one after an RCU grace period in
//! `settle_policy`). The pure expansion of entries into slots is in `policy`.

use super::*;

/// An endpoint's entries as map slots (without the generation bit) and their values. Two
/// entries on one hash key: deny beats redirect beats allow beats unsupported (which allows
/// nothing).
pub(super) fn policy_entries(
    ep_id: u32,
    entries: &[PolicyEntry],
) -> Result<BTreeMap<policy::PolicySlot, c::PolicyValue>> {
    let rank = |a: u8| match a {
        c::ACTION_DENY => 3,
        c::ACTION_REDIRECT => 2,
        c::ACTION_ALLOW => 1,
        _ => 0,
    };
    let mut desired: BTreeMap<policy::PolicySlot, c::PolicyValue> = BTreeMap::new();
    for e in entries {
        let (slots, value) = policy::expand(ep_id, e)
            .map_err(|source| DatapathError::Policy { ep: ep_id, source })?;
        for slot in slots {
            let keep = desired
                .get(&slot)
                .is_some_and(|old| rank(old.action) >= rank(value.action));
            if !keep {
                desired.insert(slot, value);
            }
        }
    }
    Ok(desired)
}

impl Datapath {
    /// Sets the complete policy of an endpoint, atomically for the packets it judges: the
    /// new entries are written complete into the endpoint's unused generation (keys with
    /// the other `POLICY_DIR_GEN` bit), then one write per endpoint address flips
    /// `EP_POLICY_GEN` and bumps the policy revision (established connections are
    /// re-checked once). A packet is judged by the old policy or the new one, never by a
    /// mix. Writing in place could not promise that: a program reads several keys per
    /// packet, and a vCPU stalled between two of them sees keys from two policies; and the
    /// kernel reuses a deleted hash element for the next insert while a program may still
    /// be reading it. The old generation's entries are retired, and deleted by
    /// [`Datapath::settle_policy`] after an RCU grace period (the agent calls it once per
    /// batch of changes; the endpoint's next change calls it first). A write that fails
    /// (a full map) removes what it wrote and leaves the old policy in force. Idempotent:
    /// the same set writes nothing. A change needs room for both generations of the
    /// endpoint in the maps for a moment.
    pub(super) fn write_policy(&mut self, ep_id: u32, entries: &[PolicyEntry]) -> Result<()> {
        let desired = policy_entries(ep_id, entries)?;
        let current = self.cache.policy.get(&ep_id).cloned().unwrap_or_default();
        if desired == current.entries {
            return Ok(());
        }
        // The unused generation must be empty: this endpoint's last retired entries go first.
        if self.cache.policy_garbage.contains_key(&ep_id) {
            self.settle_policy()?;
        }
        let next = EpPolicy {
            gen: !current.gen,
            entries: desired,
        };
        let mut written = Vec::with_capacity(next.entries.len());
        for (slot, value) in &next.entries {
            let slot = slot.in_gen(next.gen);
            if let Err(e) = self.write_policy_slot(&slot, value) {
                // No program reads this generation yet: undo at once.
                for s in &written {
                    let _ = self.remove_policy_slot(s);
                }
                return Err(e);
            }
            written.push(slot);
        }
        let (gen, ranges) = (next.gen, next.has_ranges());
        let flipped = self.update_endpoint(ep_id, |v| {
            v.flags &= !(c::EP_POLICY_GEN | c::EP_HAS_PORT_RANGES);
            if gen {
                v.flags |= c::EP_POLICY_GEN;
            }
            if ranges {
                v.flags |= c::EP_HAS_PORT_RANGES;
            }
            v.policy_rev = v.policy_rev.wrapping_add(1);
        });
        // Even if an address failed to flip, the new generation is the one to keep: the
        // next change retries, and a stale address meanwhile judges by the old entries until
        // they are settled, then by none (fail closed).
        self.cache.retire(ep_id, current.gen, &current.entries);
        if next.entries.is_empty() {
            self.cache.policy.remove(&ep_id);
        } else {
            self.cache.policy.insert(ep_id, next);
        }
        flipped.map(|_| ())
    }

    /// Deletes the entries of retired policy generations, once no program can still be
    /// reading them (one RCU grace period for the whole batch).
    pub fn settle_policy(&mut self) -> Result<()> {
        if self.cache.policy_garbage.is_empty() {
            return Ok(());
        }
        self.barrier
            .wait()
            .map_err(io_err("waiting for running BPF programs"))?;
        let garbage = std::mem::take(&mut self.cache.policy_garbage);
        let mut first_err = None;
        for (ep_id, slots) in garbage {
            for slot in slots {
                if let Err(e) = self.remove_policy_slot(&slot) {
                    self.cache
                        .policy_garbage
                        .entry(ep_id)
                        .or_default()
                        .push(slot);
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub(super) fn write_policy_slot(
        &mut self,
        slot: &policy::PolicySlot,
        value: &c::PolicyValue,
    ) -> Result<()> {
        use policy::PolicySlot;
        match slot {
            PolicySlot::Hash(k) => self
                .maps
                .policy
                .insert(k, value, 0)
                .map_err(map_err(m::POLICY)),
            PolicySlot::RangeAllow(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                self.maps
                    .policy_allow
                    .insert(&key, value, 0)
                    .map_err(map_err(m::POLICY_ALLOW))
            }
            PolicySlot::RangeDeny(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                self.maps
                    .policy_deny
                    .insert(&key, value, 0)
                    .map_err(map_err(m::POLICY_DENY))
            }
        }
    }

    pub(super) fn remove_policy_slot(&mut self, slot: &policy::PolicySlot) -> Result<()> {
        use policy::PolicySlot;
        match slot {
            PolicySlot::Hash(k) => {
                ignore_missing(self.maps.policy.remove(k)).map_err(map_err(m::POLICY))
            }
            PolicySlot::RangeAllow(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                ignore_missing(self.maps.policy_allow.remove(&key))
                    .map_err(map_err(m::POLICY_ALLOW))
            }
            PolicySlot::RangeDeny(prefix, b) => {
                let key = Key::new(*prefix, policy::lpm_key_from_bytes(b));
                ignore_missing(self.maps.policy_deny.remove(&key)).map_err(map_err(m::POLICY_DENY))
            }
        }
    }

    /// Rewrites the endpoint's map values (one per address) with `change`, where it changes
    /// something. Returns whether it wrote.
    pub(super) fn update_endpoint(
        &mut self,
        ep_id: u32,
        change: impl Fn(&mut c::EndpointValue),
    ) -> Result<bool> {
        let Some(keys) = self.cache.endpoints.get(&ep_id).cloned() else {
            return Ok(false);
        };
        let mut wrote = false;
        for key in keys {
            let Ok(mut v) = self.maps.endpoints.get(&key, 0) else {
                continue;
            };
            let old = v;
            change(&mut v);
            if v != old {
                self.maps
                    .endpoints
                    .insert(key, v, 0)
                    .map_err(map_err(m::ENDPOINTS))?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    // ---- services ----
}
