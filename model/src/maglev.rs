//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), built in userspace and
//! written per service into the datapath.
//!
//! Each backend gets a permutation of the table slots from two hashes of its key (`offset`,
//! `skip`); backends take turns claiming their next free preferred slot until the table is
//! full. A backend of weight `w` takes `w` turns per round (weight 0 = drained: no slot).
//! The hash is our own fixed function (FNV-1a + a 64-bit finalizer, keyed by `seed`), so the
//! same backends, `M` and seed give the same table on every node and every Rust version.

/// Default table size (prime), as Cilium's default.
pub const DEFAULT_M: u32 = 16381;
/// Largest table size accepted (prime).
pub const MAX_M: u32 = 65521;

/// One backend as Maglev sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable identity of the backend across nodes (e.g. "10.0.1.5:8080/TCP").
    pub key: String,
    /// Number of turns per round; 0 drains the backend.
    pub weight: u32,
}

impl MaglevBackend {
    pub fn new(key: impl Into<String>, weight: u32) -> Self {
        Self {
            key: key.into(),
            weight,
        }
    }
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("table size {0} must be a prime between 3 and {MAX_M}")]
    BadTableSize(u32),
    #[error("duplicate backend key {0:?}")]
    DuplicateBackend(String),
}

/// Is `n` prime (trial division; `n` is at most 65521).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Seeded 64-bit hash of a byte string: FNV-1a then a finalizer. Stable forever.
pub fn hash64(data: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ fmix64(seed);
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// Builds the lookup table: `m` entries, each an index into `backends`.
/// Returns an empty table when no backend has a positive weight (the service has no backend).
pub fn build_table(backends: &[MaglevBackend], m: u32, seed: u64) -> Result<Vec<u32>, MaglevError> {
    if !(3..=MAX_M).contains(&m) || !is_prime(m) {
        return Err(MaglevError::BadTableSize(m));
    }
    let mut seen = std::collections::HashSet::new();
    for b in backends {
        if !seen.insert(b.key.as_str()) {
            return Err(MaglevError::DuplicateBackend(b.key.clone()));
        }
    }
    let active: Vec<(usize, u64, u64, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| {
            let offset = hash64(b.key.as_bytes(), seed) % m as u64;
            let skip = hash64(b.key.as_bytes(), seed ^ 0x9e37_79b9_7f4a_7c15) % (m as u64 - 1) + 1;
            (i, offset, skip, b.weight)
        })
        .collect();
    if active.is_empty() {
        return Ok(Vec::new());
    }
    const EMPTY: u32 = u32::MAX;
    let m_us = m as usize;
    let mut table = vec![EMPTY; m_us];
    // next[j]: how far backend j has walked its permutation.
    let mut next = vec![0u64; active.len()];
    let mut filled = 0usize;
    'fill: loop {
        for (j, &(idx, offset, skip, weight)) in active.iter().enumerate() {
            for _ in 0..weight {
                let mut c = ((offset + next[j] * skip) % m as u64) as usize;
                while table[c] != EMPTY {
                    next[j] += 1;
                    c = ((offset + next[j] * skip) % m as u64) as usize;
                }
                table[c] = idx as u32;
                next[j] += 1;
                filled += 1;
                if filled == m_us {
                    break 'fill;
                }
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| {
                MaglevBackend::new(
                    format!("10.{}.{}.{}:8080/TCP", i / 65536, (i / 256) % 256, i % 256),
                    1,
                )
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for &e in table {
            c[e as usize] += 1;
        }
        c
    }

    /// Entries that moved to a backend other than the removed one's, as a fraction of M.
    fn extra_disruption(n: usize, m: u32, removed: usize) -> f64 {
        let all = backends(n);
        let before = build_table(&all, m, 42).unwrap();
        let mut rest = all.clone();
        rest.remove(removed);
        let after = build_table(&rest, m, 42).unwrap();
        let key_of = |list: &[MaglevBackend], i: u32| list[i as usize].key.clone();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b as usize != removed && key_of(&all, **b) != key_of(&rest, **a))
            .count();
        moved as f64 / m as f64
    }

    #[test]
    fn every_backend_holds_floor_or_ceil_of_m_over_n() {
        for &m in &[DEFAULT_M, MAX_M, 251] {
            for &n in &[1usize, 2, 3, 7, 10, 100, 160] {
                let t = build_table(&backends(n), m, 7).unwrap();
                assert_eq!(t.len(), m as usize);
                let lo = m as usize / n;
                let hi = lo + usize::from(!(m as usize).is_multiple_of(n));
                for (i, c) in counts(&t, n).into_iter().enumerate() {
                    assert!(
                        c == lo || c == hi,
                        "m={m} n={n} backend {i} holds {c}, want {lo}..={hi}"
                    );
                }
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_entries_at_m_16381() {
        for &n in &[10usize, 50, 100, 160] {
            for removed in [0, n / 2, n - 1] {
                let d = extra_disruption(n, DEFAULT_M, removed);
                assert!(
                    d <= 0.02,
                    "n={n} removed={removed}: {:.3}% moved",
                    d * 100.0
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_entries_at_m_65521() {
        for &n in &[10usize, 50, 100] {
            for removed in [0, n - 1] {
                let d = extra_disruption(n, MAX_M, removed);
                assert!(
                    d <= 0.01,
                    "n={n} removed={removed}: {:.3}% moved",
                    d * 100.0
                );
            }
        }
    }

    #[test]
    fn disruption_is_measurable_not_zero() {
        // Guards the disruption test against vacuity: Maglev is not perfectly minimal.
        let d = extra_disruption(100, DEFAULT_M, 3);
        assert!(d > 0.0);
    }

    #[test]
    fn weights_give_proportional_shares() {
        let list = vec![
            MaglevBackend::new("a", 1),
            MaglevBackend::new("b", 2),
            MaglevBackend::new("c", 3),
            MaglevBackend::new("d", 0),
        ];
        let m = DEFAULT_M;
        let t = build_table(&list, m, 1).unwrap();
        let c = counts(&t, list.len());
        let total: u32 = list.iter().map(|b| b.weight).sum();
        for (i, b) in list.iter().enumerate() {
            let ideal = m as f64 * b.weight as f64 / total as f64;
            assert!(
                (c[i] as f64 - ideal).abs() <= b.weight as f64,
                "backend {} weight {} holds {} want ~{ideal:.1}",
                b.key,
                b.weight,
                c[i]
            );
        }
        assert_eq!(c[3], 0, "a drained backend holds no entry");
    }

    #[test]
    fn draining_equals_removing() {
        let mut list = backends(20);
        let mut without = list.clone();
        without.remove(5);
        list[5].weight = 0;
        let drained = build_table(&list, DEFAULT_M, 9).unwrap();
        let removed = build_table(&without, DEFAULT_M, 9).unwrap();
        let names_d: Vec<&str> = drained
            .iter()
            .map(|&i| list[i as usize].key.as_str())
            .collect();
        let names_r: Vec<&str> = removed
            .iter()
            .map(|&i| without[i as usize].key.as_str())
            .collect();
        assert_eq!(names_d, names_r);
    }

    #[test]
    fn same_inputs_and_seed_give_the_same_table() {
        let a = build_table(&backends(33), DEFAULT_M, 1234).unwrap();
        let b = build_table(&backends(33), DEFAULT_M, 1234).unwrap();
        assert_eq!(a, b);
        // Pinned fingerprint: a change of hash or algorithm would split nodes of mixed versions.
        let fp = hash64(
            &a.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            0,
        );
        assert_eq!(fp, 0x9332_70c4_e9f6_7246);
        let c = build_table(&backends(33), DEFAULT_M, 1235).unwrap();
        assert_ne!(a, c, "the seed matters");
    }

    #[test]
    fn rejects_bad_sizes_and_duplicates() {
        assert_eq!(
            build_table(&backends(2), 16380, 0),
            Err(MaglevError::BadTableSize(16380))
        );
        assert_eq!(
            build_table(&backends(2), 65537, 0),
            Err(MaglevError::BadTableSize(65537))
        );
        let dup = vec![MaglevBackend::new("x", 1), MaglevBackend::new("x", 1)];
        assert!(matches!(
            build_table(&dup, 251, 0),
            Err(MaglevError::DuplicateBackend(_))
        ));
        assert_eq!(
            build_table(&[MaglevBackend::new("x", 0)], 251, 0),
            Ok(vec![])
        );
    }
}
