//! Failed credential attempts are limited per source address and per credential, so
//! tokens cannot be guessed online and a stale credential retried in a loop stops
//! costing lookups. A credential that is valid is never refused because of failures:
//! the limiter is consulted only after authentication has failed, so a CI job with a
//! stale token behind a shared NAT cannot lock out its neighbours, and nobody can lock
//! a victim out by failing from the victim's address.
//!
//! Per replica and in memory: the limit only needs to make guessing hopeless, not be
//! exact across replicas.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures a source (or a credential) may make per window before further
/// failures from it are answered 429 instead of 401.
pub const MAX_FAILURES: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at most; beyond this the ended windows are dropped first.
const MAX_KEYS: usize = 100_000;

/// What failures are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// An IPv4 address, or the /64 of an IPv6 one (one host usually holds a whole /64).
    Source(IpAddr),
    /// The first 16 bytes of the SHA-256 of the presented credential: the same wrong
    /// credential from any number of addresses.
    Credential([u8; 16]),
}

struct Window {
    started: Instant,
    failures: u32,
}

pub struct FailureLimiter {
    max: u32,
    window: Duration,
    keys: Mutex<HashMap<Key, Window>>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(MAX_FAILURES, WINDOW)
    }
}

/// The source as it is counted: IPv6 by its /64.
fn source_key(source: IpAddr) -> Key {
    match source {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            Key::Source(IpAddr::V6(std::net::Ipv6Addr::new(
                s[0], s[1], s[2], s[3], 0, 0, 0, 0,
            )))
        }
        IpAddr::V6(v6) => Key::Source(IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        )),
        v4 => Key::Source(v4),
    }
}

fn credential_key(credential_hash: &[u8]) -> Key {
    let mut k = [0u8; 16];
    let n = credential_hash.len().min(16);
    k[..n].copy_from_slice(&credential_hash[..n]);
    Key::Credential(k)
}

impl FailureLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// A presented credential failed to authenticate (`credential_hash` is its SHA-256).
    /// `Ok` when the failure is counted and may be answered 401; `Err(retry_after)` when
    /// its source or the credential itself has used up its failures for the window:
    /// answer 429 (such a failure is not counted again, so the window ends).
    ///
    /// Never call this for a credential that authenticated: valid credentials are not
    /// limited.
    pub fn failed(
        &self,
        source: IpAddr,
        credential_hash: &[u8],
        now: Instant,
    ) -> Result<(), Duration> {
        self.count(&[source_key(source), credential_key(credential_hash)], now)
    }

    /// A source failed where it presented no credential (a TLS handshake it made fail):
    /// counted against the source alone, as [`FailureLimiter::failed`].
    pub fn source_failed(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        self.count(&[source_key(source)], now)
    }

    /// Whether `source` has used up its failures for the window (nothing is counted).
    pub fn exhausted(&self, source: IpAddr, now: Instant) -> bool {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(&source_key(source))
            .is_some_and(|w| w.failures >= self.max && now.duration_since(w.started) < self.window)
    }

    fn count(&self, keys_of: &[Key], now: Instant) -> Result<(), Duration> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let wait = keys_of
            .iter()
            .filter_map(|k| keys.get(k))
            .filter(|w| w.failures >= self.max && now.duration_since(w.started) < self.window)
            .map(|w| self.window - now.duration_since(w.started))
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        if keys.len() >= MAX_KEYS {
            let window = self.window;
            keys.retain(|_, w| now.duration_since(w.started) < window);
        }
        for k in keys_of {
            let w = keys.entry(*k).or_insert(Window {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_a_source_after_max_failures_until_the_window_ends() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..3u8 {
            assert!(l.failed(a, &[i], t0).is_ok());
        }
        assert_eq!(
            l.failed(a, &[9], t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        assert!(
            l.failed(b, &[10], t0).is_ok(),
            "other sources are unaffected"
        );
        assert!(
            l.failed(a, &[11], t0 + Duration::from_secs(60)).is_ok(),
            "the window ends, and a new one starts at zero"
        );
        assert!(l.failed(a, &[12], t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn limits_one_credential_from_many_sources() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3u8 {
            let src = IpAddr::from([192, 0, 2, i]);
            assert!(l.failed(src, b"stale", t0).is_ok());
        }
        assert!(l
            .failed(IpAddr::from([192, 0, 2, 99]), b"stale", t0)
            .is_err());
        assert!(
            l.failed(IpAddr::from([192, 0, 2, 99]), b"other", t0)
                .is_ok(),
            "another credential from a fresh source is counted, not refused"
        );
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.failed(a, &[1], t0).is_ok());
        assert!(l.failed(b, &[2], t0).is_ok());
        assert!(l.failed(a, &[3], t0).is_err(), "same /64");
        assert!(l.failed(c, &[4], t0).is_ok(), "another /64");
    }
}
