//! Failure counting with lockout and exponential backoff.
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
}
