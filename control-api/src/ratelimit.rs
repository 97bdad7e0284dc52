//! Failed credential attempts are limited per source address, so tokens cannot be
//! guessed online. Per replica and in memory: the limit only needs to make guessing
//! hopeless, not be exact across replicas.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures a source may make per window before it is refused.
pub const MAX_FAILURES: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at most; beyond this the oldest windows are dropped first.
const MAX_SOURCES: usize = 100_000;

struct Window {
    started: Instant,
    failures: u32,
}

pub struct FailureLimiter {
    max: u32,
    window: Duration,
    sources: Mutex<HashMap<IpAddr, Window>>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(MAX_FAILURES, WINDOW)
    }
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `source` has used up its failures for the window.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        match sources.get(&source) {
            Some(w) if w.failures >= self.max && now.duration_since(w.started) < self.window => {
                Err(self.window - now.duration_since(w.started))
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, source: IpAddr, now: Instant) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= MAX_SOURCES {
            let window = self.window;
            sources.retain(|_, w| now.duration_since(w.started) < window);
        }
        let w = sources.entry(source).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= self.window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_a_source_after_max_failures_until_the_window_ends() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(a, t0).is_ok());
            l.record_failure(a, t0);
        }
        assert_eq!(
            l.check(a, t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert!(l.check(b, t0).is_ok(), "other sources are unaffected");
        assert!(
            l.check(a, t0 + Duration::from_secs(60)).is_ok(),
            "the window ends"
        );
        l.record_failure(a, t0 + Duration::from_secs(61));
        assert!(
            l.check(a, t0 + Duration::from_secs(62)).is_ok(),
            "a new window starts at zero"
        );
    }
}
