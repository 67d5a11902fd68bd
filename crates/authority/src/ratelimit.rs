//! Failure counting with lockout and exponential backoff, and a per-peer
//! token bucket for token issue requests ([`IssueLimiter`]).
//!
//! Rules (per key; cryptod keeps one limiter for operators and one for devices):
//! - while a key is locked, every attempt is refused without being checked;
//! - each failure increments the key's counter; the `max_failures`-th
//!   consecutive failure (default 5) locks the key for `base_backoff`
//!   (default 30 s), and every further failure after a lockout doubles it, up
//!   to `max_backoff` (default 1 h);
//! - a success clears the key's counter;
//! - the table holds at most `max_keys` entries (keys come from peers); when
//!   it is full, entries that are neither locked nor failing are evicted first,
//!   and if none can be evicted, new keys are refused (fail closed).

use alloc::collections::BTreeMap;
use alloc::string::String;

/// Limiter parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Consecutive failures that trigger a lockout (default 5).
    pub max_failures: u32,
    /// First lockout, in seconds (default 30).
    pub base_backoff: u64,
    /// Longest lockout, in seconds (default 3600).
    pub max_backoff: u64,
    /// Most keys tracked at once (default 1024).
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { max_failures: 5, base_backoff: 30, max_backoff: 3600, max_keys: 1024 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    failures: u32,
    locked_until: u64,
}

/// Whether an attempt may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The key is not locked.
    Allowed,
    /// The key is locked until this time (or the table is full: `u64::MAX`).
    Locked(u64),
}

/// A table of failure counters keyed by operator or device id.
#[derive(Debug, Default)]
pub struct RateLimiter {
    config: RateLimitConfig,
    entries: BTreeMap<String, Entry>,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter { config, entries: BTreeMap::new() }
    }

    /// Whether `key` may attempt at time `now`.
    pub fn admit(&mut self, key: &str, now: u64) -> Admission {
        match self.entries.get(key) {
            Some(e) if now < e.locked_until => Admission::Locked(e.locked_until),
            Some(_) => Admission::Allowed,
            None if self.entries.len() < self.config.max_keys => Admission::Allowed,
            None => {
                self.evict(now);
                if self.entries.len() < self.config.max_keys {
                    Admission::Allowed
                } else {
                    Admission::Locked(u64::MAX)
                }
            }
        }
    }

    /// Records a failure; returns the lockout end if this failure locks the key.
    pub fn fail(&mut self, key: &str, now: u64) -> Option<u64> {
        if !self.entries.contains_key(key) && self.entries.len() >= self.config.max_keys {
            self.evict(now);
            if self.entries.len() >= self.config.max_keys {
                return None;
            }
        }
        let config = self.config;
        let entry = self.entries.entry(key.into()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        let over = entry.failures.checked_sub(config.max_failures)?;
        let backoff = config
            .base_backoff
            .checked_shl(over.min(63))
            .filter(|b| b >> over.min(63) == config.base_backoff)
            .unwrap_or(u64::MAX)
            .min(config.max_backoff);
        entry.locked_until = now.saturating_add(backoff);
        Some(entry.locked_until)
    }

    /// Records a success: clears the key's counter.
    pub fn succeed(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Current consecutive failures of `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.entries.get(key).map_or(0, |e| e.failures)
    }

    fn evict(&mut self, now: u64) {
        // Entries whose lockout has passed and that are below the threshold
        // carry no protection worth keeping over a fresh key.
        let max = self.config.max_failures;
        self.entries.retain(|_, e| now < e.locked_until || e.failures >= max);
    }
}

/// Token-issue rate per peer: a token bucket of `burst` requests, refilled
/// at `per_minute`. `per_minute == 0` turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IssueRateConfig {
    /// Requests a peer may make at once (default 60).
    pub burst: u32,
    /// Sustained requests per minute (default 600; 0: unlimited).
    pub per_minute: u32,
    /// Most peers tracked at once (default 256).
    pub max_peers: usize,
}

impl Default for IssueRateConfig {
    fn default() -> Self {
        IssueRateConfig { burst: 60, per_minute: 600, max_peers: 256 }
    }
}

/// Units of one request: a bucket counts sixtieths, so that a refill of
/// `per_minute` units per second is exact in integers.
const UNIT: u64 = 60;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    units: u64,
    at: u64,
}

impl Bucket {
    /// The bucket at time `now`: `per_minute` units earned for every second
    /// since it was last seen, up to `cap` (time going back earns nothing).
    fn refilled(self, now: u64, per_minute: u64, cap: u64) -> Bucket {
        let earned = now.saturating_sub(self.at).saturating_mul(per_minute);
        Bucket { units: self.units.saturating_add(earned).min(cap), at: self.at.max(now) }
    }
}

/// Per-peer token buckets for token issue requests.
#[derive(Debug, Default)]
pub struct IssueLimiter {
    config: IssueRateConfig,
    buckets: BTreeMap<(u32, String), Bucket>,
}

impl IssueLimiter {
    /// An empty limiter.
    pub fn new(config: IssueRateConfig) -> IssueLimiter {
        IssueLimiter { config, buckets: BTreeMap::new() }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.config.burst.max(1)) * UNIT
    }

    /// Takes one request from the bucket of peer (`domid`, `vm`) at time
    /// `now`; `Err(seconds)` says when the next one would be allowed. A full
    /// table first forgets peers whose bucket has refilled completely; if
    /// none has, new peers are refused (fail closed).
    pub fn take(&mut self, domid: u32, vm: &str, now: u64) -> Result<(), u64> {
        if self.config.per_minute == 0 {
            return Ok(());
        }
        let (per_minute, cap) = (u64::from(self.config.per_minute), self.capacity());
        let key = (domid, String::from(vm));
        if !self.buckets.contains_key(&key) {
            if self.buckets.len() >= self.config.max_peers {
                self.buckets.retain(|_, b| b.refilled(now, per_minute, cap).units < cap);
                if self.buckets.len() >= self.config.max_peers {
                    return Err(1);
                }
            }
            self.buckets.insert(key.clone(), Bucket { units: cap, at: now });
        }
        let mut b = self.buckets.get(&key).ok_or(1u64)?.refilled(now, per_minute, cap);
        let result = if b.units >= UNIT {
            b.units -= UNIT;
            Ok(())
        } else {
            Err((UNIT - b.units).div_ceil(per_minute).max(1))
        };
        self.buckets.insert(key, b);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fifth_failure_locks_and_backoff_doubles() {
        let mut r = RateLimiter::new(RateLimitConfig::default());
        for _ in 0..4 {
            assert_eq!(r.admit("op", 100), Admission::Allowed);
            assert_eq!(r.fail("op", 100), None);
        }
        assert_eq!(r.fail("op", 100), Some(130));
        assert_eq!(r.admit("op", 129), Admission::Locked(130));
        assert_eq!(r.admit("op", 130), Admission::Allowed);
        assert_eq!(r.fail("op", 130), Some(190), "second lockout is 60 s");
        assert_eq!(r.fail("op", 190), Some(310), "third is 120 s");
    }

    #[test]
    fn success_clears_and_keys_are_independent() {
        let mut r = RateLimiter::new(RateLimitConfig::default());
        for _ in 0..4 {
            r.fail("a", 0);
        }
        r.succeed("a");
        assert_eq!(r.failures("a"), 0);
        assert_eq!(r.fail("a", 0), None);
        for _ in 0..5 {
            r.fail("b", 0);
        }
        assert_eq!(r.admit("a", 1), Admission::Allowed);
        assert_eq!(r.admit("b", 1), Admission::Locked(30));
    }

    #[test]
    fn full_table_fails_closed() {
        let config = RateLimitConfig { max_keys: 2, ..RateLimitConfig::default() };
        let mut r = RateLimiter::new(config);
        for key in ["a", "b"] {
            for _ in 0..5 {
                r.fail(key, 0);
            }
        }
        assert_eq!(r.admit("c", 1), Admission::Locked(u64::MAX));
        // After the lockouts end, locked-out keys still count as failing and stay.
        assert_eq!(r.admit("c", 1000), Admission::Locked(u64::MAX));
        // A key with only a few failures is evictable.
        let mut r = RateLimiter::new(config);
        r.fail("a", 0);
        r.fail("b", 0);
        assert_eq!(r.admit("c", 1), Admission::Allowed);
    }

    proptest! {
        #[test]
        fn lockout_never_exceeds_max_and_never_shrinks(n in 5u32..200, base in 1u64..100_000) {
            let config = RateLimitConfig { base_backoff: base, ..RateLimitConfig::default() };
            let mut r = RateLimiter::new(config);
            let mut last = 0;
            for _ in 0..n {
                if let Some(until) = r.fail("k", 0) {
                    prop_assert!(until <= config.max_backoff);
                    prop_assert!(until >= last);
                    last = until;
                }
            }
        }
    }
    #[test]
    fn issue_bucket_allows_a_burst_then_the_sustained_rate() {
        let mut l = IssueLimiter::new(IssueRateConfig { burst: 3, per_minute: 60, max_peers: 8 });
        for _ in 0..3 {
            assert_eq!(l.take(7, "pd", 100), Ok(()));
        }
        assert_eq!(l.take(7, "pd", 100), Err(1), "60 per minute: one more each second");
        // Another peer, or the same name on another domid, has its own bucket.
        assert_eq!(l.take(8, "pd", 100), Ok(()));
        assert_eq!(l.take(7, "pd", 101), Ok(()));
        assert_eq!(l.take(7, "pd", 101), Err(1));
        // Idle time refills up to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(l.take(7, "pd", 10_000), Ok(()));
        }
        assert!(l.take(7, "pd", 10_000).is_err());
        // A slow rate says how long to wait.
        let mut slow = IssueLimiter::new(IssueRateConfig { burst: 1, per_minute: 2, max_peers: 8 });
        assert_eq!(slow.take(1, "a", 0), Ok(()));
        assert_eq!(slow.take(1, "a", 0), Err(30));
        assert_eq!(slow.take(1, "a", 29), Err(1));
        assert_eq!(slow.take(1, "a", 30), Ok(()));
        // Time going backwards refills nothing.
        assert!(slow.take(1, "a", 5).is_err());
    }

    #[test]
    fn issue_limit_off_and_full_table() {
        let mut off = IssueLimiter::new(IssueRateConfig { burst: 1, per_minute: 0, max_peers: 1 });
        for i in 0..1000 {
            assert_eq!(off.take(i, "x", 0), Ok(()));
        }
        let mut l = IssueLimiter::new(IssueRateConfig { burst: 2, per_minute: 60, max_peers: 1 });
        assert_eq!(l.take(1, "a", 0), Ok(()));
        assert_eq!(l.take(2, "b", 0), Err(1), "table full of a busy peer: fail closed");
        // Once peer a's bucket is full again it may be forgotten.
        assert_eq!(l.take(2, "b", 5), Ok(()));
    }
}
