//! Probe results on their way to the control plane: each is reported once.
//!
//! The [`Outbox`] keeps results until `ReportProbes` accepted them and remembers which ids
//! were reported, so that a probe still listed in the desired state (its removal not yet
//! received) is not run again. Both survive an agent restart (`probes.json` in the state
//! dir); a reported id is forgotten once it leaves the desired state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tonic::Code;
use weft_proto::v1 as pb;

use super::probe::ProbeResult;
use crate::control::{Backoff, Control};

/// Results per `ReportProbes` call.
pub const BATCH: usize = 100;
const FILE: &str = "probes.json";

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    /// Results not yet accepted, by id.
    pending: BTreeMap<String, ProbeResult>,
    /// Ids whose result was accepted (or refused for good).
    reported: BTreeSet<String>,
}

impl Outbox {
    /// Whether `id` already has a result (pending or reported): it is not run again.
    pub fn knows(&self, id: &str) -> bool {
        self.pending.contains_key(id) || self.reported.contains(id)
    }

    /// Queues a result; returns false (and keeps the first) when the id already has one.
    pub fn push(&mut self, r: ProbeResult) -> bool {
        if self.knows(&r.id) {
            return false;
        }
        self.pending.insert(r.id.clone(), r);
        true
    }

    /// The next results to send (in id order), at most `max`.
    pub fn batch(&self, max: usize) -> Vec<ProbeResult> {
        self.pending.values().take(max).cloned().collect()
    }

    /// The control plane has these results (or refused them for good).
    pub fn done(&mut self, ids: &[String]) {
        for id in ids {
            if self.pending.remove(id).is_some() {
                self.reported.insert(id.clone());
            }
        }
    }

    /// Forgets reported ids that left the desired state (pending results stay until sent).
    pub fn retain_desired(&mut self, desired: &BTreeSet<String>) -> bool {
        let before = self.reported.len();
        self.reported.retain(|id| desired.contains(id));
        before != self.reported.len()
    }

    pub fn pending(&self) -> Vec<ProbeResult> {
        self.pending.values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The outbox shared by the probe runners and the reporter, persisted on every change.
#[derive(Debug, Clone)]
pub struct SharedOutbox {
    inner: Arc<Mutex<Outbox>>,
    path: Arc<PathBuf>,
    notify: Arc<tokio::sync::Notify>,
}

impl SharedOutbox {
    /// Loads `probes.json` from the state dir; an unreadable file starts empty (logged): it
    /// only costs re-running probes whose results were not reported.
    pub fn load(state_dir: &Path) -> SharedOutbox {
        let path = state_dir.join(FILE);
        let outbox = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable probe results");
                Outbox::default()
            }),
            Err(_) => Outbox::default(),
        };
        SharedOutbox {
            inner: Arc::new(Mutex::new(outbox)),
            path: Arc::new(path),
            notify: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Runs `f` on the outbox; saves it when `f` says it changed.
    pub fn with<T>(&self, f: impl FnOnce(&mut Outbox) -> (T, bool)) -> T {
        let mut o = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (t, changed) = f(&mut o);
        if changed {
            let saved = serde_json::to_vec(&*o)
                .map_err(std::io::Error::from)
                .and_then(|b| crate::files::replace_private(&self.path, &b));
            if let Err(e) = saved {
                tracing::warn!(path = %self.path.display(), error = %e, "could not save probe results");
            }
        }
        t
    }

    pub fn knows(&self, id: &str) -> bool {
        self.with(|o| (o.knows(id), false))
    }

    /// Queues a result and wakes the reporter.
    pub fn push(&self, r: ProbeResult) {
        let id = r.id.clone();
        if self.with(|o| {
            let new = o.push(r);
            (new, new)
        }) {
            self.notify.notify_one();
        } else {
            tracing::warn!(probe = %id, "a second result for the probe was dropped");
        }
    }

    pub fn pending(&self) -> Vec<ProbeResult> {
        self.with(|o| (o.pending(), false))
    }

    /// Waits until there is something to report.
    async fn wait(&self) {
        loop {
            if !self.with(|o| (o.is_empty(), false)) {
                return;
            }
            self.notify.notified().await;
        }
    }
}

/// Whether a failed `ReportProbes` is worth retrying as is.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Unimplemented
            | Code::Unauthenticated
            | Code::Aborted
    )
}

/// Sends pending results in batches while the agent runs: retried with backoff (and a new
/// connection) until accepted. A batch the control plane refuses for good (invalid) is
/// logged with its ids and not sent again.
pub async fn report(control: Control, outbox: SharedOutbox) {
    let mut backoff = Backoff::control_plane();
    let mut client = control.client();
    loop {
        outbox.wait().await;
        let batch = outbox.with(|o| (o.batch(BATCH), false));
        let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
        let req = pb::ProbeReport {
            results: batch.into_iter().map(Into::into).collect(),
        };
        match client.report_probes(req).await {
            Ok(_) => {
                tracing::info!(results = ids.len(), "probe results reported");
                outbox.with(|o| (o.done(&ids), true));
                backoff.reset();
            }
            Err(s) if retryable(s.code()) => {
                tracing::warn!(error = %s.message(), code = ?s.code(), "probe report failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), probes = ?ids, "the control plane refused the probe results; not sending them again");
                outbox.with(|o| (o.done(&ids), true));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::workload::ProbeOutcome;

    fn result(id: &str) -> ProbeResult {
        ProbeResult {
            outcome: ProbeOutcome::Timeout,
            ..ProbeResult::error(id, "")
        }
    }

    #[test]
    fn results_are_sent_once_and_remembered_while_desired() {
        let mut o = Outbox::default();
        assert!(o.push(result("b")));
        assert!(o.push(result("a")));
        assert!(!o.push(result("a")), "a second result for an id is refused");
        assert!(o.knows("a") && o.knows("b") && !o.knows("c"));
        let batch: Vec<String> = o.batch(1).into_iter().map(|r| r.id).collect();
        assert_eq!(batch, vec!["a".to_string()]);
        // Accepted: no longer pending, still known (not run again).
        o.done(&batch);
        assert_eq!(o.batch(10).len(), 1);
        assert!(o.knows("a"));
        assert!(!o.push(result("a")));
        // A failed send leaves it pending: sent again.
        assert_eq!(o.batch(10)[0].id, "b");
        // "a" left the desired state: forgotten; "b" is pending: kept whatever the state.
        let desired: BTreeSet<String> = BTreeSet::new();
        assert!(o.retain_desired(&desired));
        assert!(!o.knows("a"));
        assert!(o.knows("b"));
    }

    #[test]
    fn the_outbox_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("weft-outbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let shared = SharedOutbox::load(&dir);
        shared.push(result("p1"));
        shared.push(result("p2"));
        shared.with(|o| (o.done(&["p1".to_string()]), true));
        let again = SharedOutbox::load(&dir);
        assert!(again.knows("p1"), "reported ids survive");
        assert_eq!(again.pending(), vec![result("p2")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(retryable(Code::Unavailable));
        assert!(retryable(Code::Unimplemented));
        assert!(!retryable(Code::InvalidArgument));
        assert!(!retryable(Code::NotFound));
    }
}
