//! How far a simulated fleet has come: the revision every agent has received and acked
//! (the lowest of all, kept in O(log n) per message so thousands of agents can report
//! every message), and counters of what the agents did.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

/// The lowest of `n` values that only grow: a count of agents per value.
#[derive(Debug)]
pub struct Watermark {
    counts: BTreeMap<u64, usize>,
    each: Vec<u64>,
}

impl Watermark {
    /// `n` agents at revision 0.
    pub fn new(n: usize) -> Watermark {
        Watermark {
            counts: if n == 0 {
                BTreeMap::new()
            } else {
                BTreeMap::from([(0, n)])
            },
            each: vec![0; n],
        }
    }

    /// Agent `i` is at `value` now (a lower value than before is ignored); the lowest value
    /// of all agents.
    pub fn set(&mut self, i: usize, value: u64) -> u64 {
        if let Some(old) = self.each.get_mut(i) {
            if value > *old {
                if let Some(c) = self.counts.get_mut(old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(old);
                    }
                }
                *self.counts.entry(value).or_default() += 1;
                *old = value;
            }
        }
        self.min()
    }

    pub fn min(&self) -> u64 {
        self.counts.keys().next().copied().unwrap_or(0)
    }
}

/// What a fleet has done so far; published whenever the watermarks move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub agents: usize,
    /// Agents registered, with their endpoints reported.
    pub registered: usize,
    /// Every agent has received at least this revision.
    pub received: u64,
    /// Every agent has acked at least this revision (its ack answered).
    pub acked: u64,
    pub snapshots: u64,
    pub deltas: u64,
    /// Datapath calls that removed an endpoint, an ipcache entry or a service.
    pub removals: u64,
    /// Items agents reported as not programmable in their acks.
    pub item_errors: u64,
    /// Sessions that ended (stream closed or failed) and were reopened.
    pub reconnects: u64,
    /// Messages refused as invalid (fail closed).
    pub refused: u64,
    /// The last error an agent met (registration or session), if any.
    pub last_error: Option<String>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub snapshots: AtomicU64,
    pub deltas: AtomicU64,
    pub removals: AtomicU64,
    pub item_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub refused: AtomicU64,
}

/// The shared tracker of one fleet.
pub(super) struct Tracker {
    pub counters: Counters,
    marks: Mutex<(Watermark, Watermark, usize, Option<String>)>,
    tx: watch::Sender<Progress>,
}

impl Tracker {
    pub fn new(agents: usize) -> (Tracker, watch::Receiver<Progress>) {
        let (tx, rx) = watch::channel(Progress {
            agents,
            ..Progress::default()
        });
        let t = Tracker {
            counters: Counters::default(),
            marks: Mutex::new((Watermark::new(agents), Watermark::new(agents), 0, None)),
            tx,
        };
        (t, rx)
    }

    pub fn registered(&self) {
        self.update(|m| m.2 += 1);
    }

    pub fn received(&self, i: usize, revision: u64) {
        self.update(|m| {
            m.0.set(i, revision);
        });
    }

    pub fn acked(&self, i: usize, revision: u64) {
        self.update(|m| {
            m.1.set(i, revision);
        });
    }

    pub fn failed(&self, error: String) {
        self.update(|m| m.3 = Some(error));
    }

    /// Publishes only when a watermark, the registered count or the error moved: the
    /// counters ride along.
    fn update(&self, f: impl FnOnce(&mut (Watermark, Watermark, usize, Option<String>))) {
        let mut m = match self.marks.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut m);
        let (received, acked, registered) = (m.0.min(), m.1.min(), m.2);
        let last_error = m.3.clone();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.tx.send_if_modified(|p| {
            let moved = p.received != received
                || p.acked != acked
                || p.registered != registered
                || p.last_error != last_error;
            if moved {
                *p = Progress {
                    agents: p.agents,
                    registered,
                    received,
                    acked,
                    snapshots: load(&c.snapshots),
                    deltas: load(&c.deltas),
                    removals: load(&c.removals),
                    item_errors: load(&c.item_errors),
                    reconnects: load(&c.reconnects),
                    refused: load(&c.refused),
                    last_error,
                };
            }
            moved
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_lowest_agent() {
        let mut w = Watermark::new(3);
        assert_eq!(w.set(0, 5), 0);
        assert_eq!(w.set(1, 7), 0);
        assert_eq!(w.set(2, 6), 5);
        assert_eq!(w.set(0, 9), 6);
        // Lower values and unknown agents change nothing.
        assert_eq!(w.set(2, 1), 6);
        assert_eq!(w.set(7, 100), 6);
        assert_eq!(w.set(2, 9), 7);
        assert_eq!(w.set(1, 9), 9);
        assert_eq!(Watermark::new(0).min(), 0);
    }

    #[test]
    fn progress_moves_with_the_slowest_agent() {
        let (t, rx) = Tracker::new(2);
        t.registered();
        t.registered();
        t.received(0, 4);
        t.acked(0, 4);
        assert_eq!((rx.borrow().received, rx.borrow().acked), (0, 0));
        t.received(1, 4);
        t.acked(1, 3);
        let p = rx.borrow().clone();
        assert_eq!((p.registered, p.received, p.acked), (2, 4, 3));
    }
}
