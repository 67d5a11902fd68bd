//! Failure counting with lockout and exponential backoff ([`FailureLimiter`]),
//! and a per-peer token bucket for token issue requests ([`IssueLimiter`]).
//!
//! Rules of the failure limiter (see docs/authority.md, "TOTP failures"):
//! - a failure for an operator id that is in the sealed state counts against
//!   that operator, and only against it; the operator table holds exactly the
//!   configured operators, so it is bounded and nothing in it is ever evicted;
//! - a failure for any other id (which can never succeed) counts against the
//!   requesting domain (the domid Xen reports); that table holds at most
//!   `max_keys` domains, evicts only entries whose lockout has ended, and when
//!   it is full refuses further unknown ids (which could not succeed anyway);
//! - while a key is locked, every attempt is refused without being checked;
//! - the `max_failures`-th consecutive failure (default 5) locks the key for
//!   `base_backoff` (default 30 s), and every further failure after a lockout
//!   doubles it, up to `max_backoff` (default 1 h); a success clears it;
//! - the device id is a claim of the peer and is not a key: anyone could
//!   claim the operator's device and lock it.
//!
//! Consequences: no sequence of requests, from any set of domains with any
//! ids, gets more than `max_failures` wrong guesses checked for one operator
//! within `base_backoff` seconds; and nothing but failures for an operator's
//! own id can lock that operator out.

use crate::sorted::SortedMap;
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
    /// Most domains tracked at once for unknown operator ids (default 1024).
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { max_failures: 5, base_backoff: 30, max_backoff: 3600, max_keys: 1024 }
    }
}

/// One key's consecutive failures and lockout end (what is sealed per operator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCount {
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// Refused until this time (0: not locked).
    pub locked_until: u64,
}

impl FailureCount {
    /// Counts one failure at `now`; returns the lockout end if it locks.
    fn fail(&mut self, config: &RateLimitConfig, now: u64) -> Option<u64> {
        self.failures = self.failures.saturating_add(1);
        let over = self.failures.checked_sub(config.max_failures.max(1))?.min(63);
        let backoff = config
            .base_backoff
            .checked_shl(over)
            .filter(|b| b >> over == config.base_backoff)
            .unwrap_or(u64::MAX)
            .min(config.max_backoff)
            .max(1);
        // Never shorten a lockout already running (time may go backwards).
        self.locked_until = self.locked_until.max(now.saturating_add(backoff));
        Some(self.locked_until)
    }

    fn locked(&self, now: u64) -> Option<u64> {
        (now < self.locked_until).then_some(self.locked_until)
    }
}

/// Whether an attempt may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The key is not locked.
    Allowed,
    /// The key is locked until this time.
    Locked(u64),
    /// An unknown operator id from a domain the full table cannot track:
    /// refused (it could not succeed anyway).
    TableFull,
}

/// What a failure was counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// A configured operator (sealed state changed: persist it).
    Operator,
    /// The requesting domain (an unknown operator id).
    Domain,
    /// Nothing: an unknown id from a domain the full table cannot track.
    Nothing,
}

/// Failure counters for TOTP validation: per configured operator, and per
/// requesting domain for unknown operator ids.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    config: RateLimitConfig,
    operators: SortedMap<String, FailureCount>,
    domains: SortedMap<u32, FailureCount>,
}

impl FailureLimiter {
    /// A limiter for exactly the operators `known` (ids in the sealed state).
    pub fn new<I, S>(config: RateLimitConfig, known: I) -> FailureLimiter
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut operators = SortedMap::new();
        operators.extend(known.into_iter().map(|id| (id.into(), FailureCount::default())));
        FailureLimiter { config, operators, domains: SortedMap::new() }
    }

    /// Restores an operator's sealed counter; false (and nothing changed)
    /// if `operator` is not a configured operator.
    pub fn restore(&mut self, operator: &str, count: FailureCount) -> bool {
        match self.operators.get_mut(operator) {
            Some(c) => {
                *c = count;
                true
            }
            None => false,
        }
    }

    /// The operators' counters that are not zero (what is sealed).
    pub fn operator_counts(&self) -> impl Iterator<Item = (&String, FailureCount)> {
        self.operators.iter().filter(|(_, c)| **c != FailureCount::default()).map(|(k, c)| (k, *c))
    }

    /// Whether an attempt for `operator` from domain `domid` may go ahead at `now`.
    pub fn admit(&self, operator: &str, domid: u32, now: u64) -> Admission {
        let count = match self.operators.get(operator) {
            Some(c) => c,
            None => match self.domains.get(&domid) {
                Some(c) => c,
                None if self.domains.len() < self.config.max_keys => return Admission::Allowed,
                None if self.domains.values().any(|c| c.locked(now).is_none()) => {
                    return Admission::Allowed
                }
                None => return Admission::TableFull,
            },
        };
        count.locked(now).map_or(Admission::Allowed, Admission::Locked)
    }

    /// Records a failed attempt for `operator` from `domid` at `now`;
    /// returns what it counted against and the lockout end if it locks.
    pub fn fail(&mut self, operator: &str, domid: u32, now: u64) -> (Counted, Option<u64>) {
        let config = self.config;
        if let Some(c) = self.operators.get_mut(operator) {
            return (Counted::Operator, c.fail(&config, now));
        }
        if !self.domains.contains_key(&domid) && self.domains.len() >= config.max_keys {
            // Only an entry whose lockout has ended may go; a running
            // lockout is never cut short.
            self.domains.retain(|_, c| c.locked(now).is_some());
            if self.domains.len() >= config.max_keys {
                return (Counted::Nothing, None);
            }
        }
        let mut c = self.domains.get(&domid).copied().unwrap_or_default();
        let locks = c.fail(&config, now);
        self.domains.insert(domid, c);
        (Counted::Domain, locks)
    }

    /// Records a success for `operator`: clears its counter. Returns whether
    /// it had one (sealed state changed).
    pub fn succeed(&mut self, operator: &str) -> bool {
        self.operators
            .get_mut(operator)
            .map(|c| core::mem::take(c) != FailureCount::default())
            .unwrap_or(false)
    }

    /// Starts counting for a newly added `operator` (a clean count).
    pub fn add_operator(&mut self, operator: &str) {
        self.operators.insert(operator.into(), FailureCount::default());
    }

    /// Stops counting for a removed `operator` (its counter goes with it).
    pub fn remove_operator(&mut self, operator: &str) {
        self.operators.remove(operator);
    }

    /// Current consecutive failures of a configured `operator`.
    pub fn failures(&self, operator: &str) -> u32 {
        self.operators.get(operator).map_or(0, |c| c.failures)
    }

    /// Domains tracked for unknown ids (bounded by `max_keys`).
    pub fn domains_tracked(&self) -> usize {
        self.domains.len()
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
    buckets: SortedMap<(u32, String), Bucket>,
}

impl IssueLimiter {
    /// An empty limiter.
    pub fn new(config: IssueRateConfig) -> IssueLimiter {
        IssueLimiter { config, buckets: SortedMap::new() }
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

    const ALICE: &str = "alice";

    fn limiter() -> FailureLimiter {
        FailureLimiter::new(RateLimitConfig::default(), ["alice", "bob"])
    }

    #[test]
    fn fifth_failure_locks_and_backoff_doubles() {
        let mut r = limiter();
        for _ in 0..4 {
            assert_eq!(r.admit(ALICE, 5, 100), Admission::Allowed);
            assert_eq!(r.fail(ALICE, 5, 100), (Counted::Operator, None));
        }
        assert_eq!(r.fail(ALICE, 5, 100), (Counted::Operator, Some(130)));
        assert_eq!(r.admit(ALICE, 5, 129), Admission::Locked(130));
        assert_eq!(r.admit(ALICE, 9, 129), Admission::Locked(130), "from any domain");
        assert_eq!(r.admit(ALICE, 5, 130), Admission::Allowed);
        assert_eq!(r.fail(ALICE, 5, 130).1, Some(190), "second lockout is 60 s");
        assert_eq!(r.fail(ALICE, 5, 190).1, Some(310), "third is 120 s");
    }

    #[test]
    fn success_clears_and_operators_are_independent() {
        let mut r = limiter();
        for _ in 0..4 {
            r.fail(ALICE, 5, 0);
        }
        assert!(r.succeed(ALICE));
        assert!(!r.succeed(ALICE), "nothing left to clear");
        assert_eq!(r.failures(ALICE), 0);
        assert_eq!(r.fail(ALICE, 5, 0).1, None);
        for _ in 0..5 {
            r.fail("bob", 5, 0);
        }
        assert_eq!(r.admit(ALICE, 5, 1), Admission::Allowed);
        assert_eq!(r.admit("bob", 5, 1), Admission::Locked(30));
    }

    /// Finding 1: made-up ids between guesses used to evict the operator's
    /// counter, so its guesses never locked.
    #[test]
    fn made_up_ids_do_not_reset_an_operators_count() {
        let mut r = limiter();
        let mut checked = 0;
        for round in 0..3u64 {
            for _ in 0..4 {
                if r.admit(ALICE, 5, round) == Admission::Allowed {
                    r.fail(ALICE, 5, round);
                    checked += 1;
                }
            }
            for i in 0..1000 {
                let id = alloc::format!("op{round}-{i}");
                if r.admit(&id, 5, round) == Admission::Allowed {
                    r.fail(&id, 5, round);
                }
            }
        }
        assert_eq!(checked, 5, "the fifth wrong guess locks; later ones are not checked");
        assert!(r.domains_tracked() <= 1, "made-up ids make no entries of their own");
    }

    /// Finding 2: made-up ids filled the table with locked entries and the
    /// real operator got `retry_after` u64::MAX - now.
    #[test]
    fn made_up_ids_cannot_lock_out_an_operator() {
        let config = RateLimitConfig { max_keys: 4, ..RateLimitConfig::default() };
        let mut r = FailureLimiter::new(config, [ALICE]);
        for dom in 0..10u32 {
            for i in 0..5 {
                let id = alloc::format!("x{dom}-{i}");
                r.fail(&id, dom, 1000);
            }
        }
        assert_eq!(r.domains_tracked(), 4, "bounded");
        for dom in 0..10 {
            assert_eq!(r.admit(ALICE, dom, 1000), Admission::Allowed);
        }
        // The attacker's own domain is locked for unknown ids.
        assert_eq!(r.admit("nobody", 0, 1000), Admission::Locked(1030));
        // A full table of running lockouts refuses new domains' unknown ids only.
        assert_eq!(r.admit("nobody", 9, 1000), Admission::TableFull);
        assert_eq!(r.fail("nobody", 9, 1000), (Counted::Nothing, None));
        // Once a lockout has ended, its entry may make room.
        assert_eq!(r.admit("nobody", 9, 1030), Admission::Allowed);
        assert_eq!(r.fail("nobody", 9, 1030).0, Counted::Domain);
    }

    #[test]
    fn time_near_the_end_and_going_backwards() {
        let mut r = limiter();
        let end = u64::MAX - 3;
        for _ in 0..5 {
            r.fail(ALICE, 5, end);
        }
        assert_eq!(r.admit(ALICE, 5, end), Admission::Locked(u64::MAX));
        assert_eq!(r.admit(ALICE, 5, 0), Admission::Locked(u64::MAX), "time going back");
        assert_eq!(r.fail(ALICE, 5, u64::MAX).1, Some(u64::MAX));
        // A lockout set before time went back is not shortened by a later failure.
        let mut r = limiter();
        for _ in 0..5 {
            r.fail(ALICE, 5, 1000);
        }
        assert_eq!(r.fail(ALICE, 5, 10).1, Some(1030));
        let huge =
            RateLimitConfig { base_backoff: u64::MAX, max_backoff: u64::MAX, ..limiter().config };
        let mut r = FailureLimiter::new(huge, [ALICE]);
        for _ in 0..100 {
            r.fail(ALICE, 5, 7);
        }
        assert_eq!(r.admit(ALICE, 5, u64::MAX - 1), Admission::Locked(u64::MAX));
    }

    #[test]
    fn sealed_counts_are_restored_for_known_operators_only() {
        let mut r = limiter();
        let c = FailureCount { failures: 7, locked_until: 500 };
        assert!(r.restore(ALICE, c));
        assert!(!r.restore("mallory", c));
        assert_eq!(r.admit(ALICE, 1, 499), Admission::Locked(500));
        let counts: alloc::vec::Vec<_> = r.operator_counts().collect();
        assert_eq!(counts, alloc::vec![(&String::from(ALICE), c)]);
    }

    /// One attacker step: a wrong code for one of a few ids, from one of a few
    /// domains, after moving the clock (forwards, backwards or to its ends).
    #[derive(Clone, Debug)]
    struct Step {
        id: usize,
        domid: u32,
        clock: Clock,
    }

    #[derive(Clone, Debug)]
    enum Clock {
        Forward(u64),
        Back(u64),
        To(u64),
    }

    const IDS: [&str; 5] = ["alice", "bob", "ghost", "al1ce", ""];

    fn step() -> impl Strategy<Value = Step> {
        let clock = prop_oneof![
            6 => (0u64..90).prop_map(Clock::Forward),
            1 => (0u64..200).prop_map(Clock::Back),
            1 => prop_oneof![Just(0u64), Just(u64::MAX - 40), Just(u64::MAX)].prop_map(Clock::To),
        ];
        (0..IDS.len(), 0u32..4, clock).prop_map(|(id, domid, clock)| Step { id, domid, clock })
    }

    fn advance(now: u64, c: &Clock) -> u64 {
        match *c {
            Clock::Forward(d) => now.saturating_add(d),
            Clock::Back(d) => now.saturating_sub(d),
            Clock::To(t) => t,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// No attacker sequence gets more than `max_failures` wrong guesses
        /// checked for one operator within any `base_backoff` window.
        #[test]
        fn at_most_k_guesses_per_operator_per_window(
            steps in proptest::collection::vec(step(), 1..400),
            max_keys in 1usize..4,
        ) {
            let config = RateLimitConfig { max_keys, ..RateLimitConfig::default() };
            let mut r = FailureLimiter::new(config, ["alice", "bob"]);
            let mut now = 1_000_000u64;
            let mut checked: alloc::vec::Vec<u64> = alloc::vec::Vec::new();
            for s in &steps {
                now = advance(now, &s.clock);
                let id = IDS[s.id];
                if r.admit(id, s.domid, now) == Admission::Allowed {
                    r.fail(id, s.domid, now);
                    if id == ALICE {
                        checked.push(now);
                    }
                }
            }
            for &start in &checked {
                let end = start.saturating_add(config.base_backoff);
                let n = checked.iter().filter(|&&t| t >= start && t < end).count();
                prop_assert!(n <= config.max_failures as usize, "{n} guesses in [{start}, {end})");
            }
        }

        /// No sequence of failures for other ids, from any domain (the
        /// operator's own included), locks out an operator who never failed.
        #[test]
        fn others_failures_never_lock_out_an_operator(
            steps in proptest::collection::vec(step(), 1..400),
            max_keys in 1usize..4,
        ) {
            let config = RateLimitConfig { max_keys, ..RateLimitConfig::default() };
            let mut r = FailureLimiter::new(config, ["alice", "bob"]);
            let mut now = 1_000_000u64;
            for s in &steps {
                now = advance(now, &s.clock);
                let id = IDS[s.id];
                if id != ALICE && r.admit(id, s.domid, now) == Admission::Allowed {
                    r.fail(id, s.domid, now);
                }
                for domid in 0..5 {
                    prop_assert_eq!(r.admit(ALICE, domid, now), Admission::Allowed);
                }
            }
        }

        #[test]
        fn lockout_never_exceeds_max_and_never_shrinks(n in 5u32..200, base in 1u64..100_000) {
            let config = RateLimitConfig { base_backoff: base, ..RateLimitConfig::default() };
            let mut r = FailureLimiter::new(config, ["k"]);
            let mut last = 0;
            for _ in 0..n {
                if let (_, Some(until)) = r.fail("k", 0, 0) {
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
