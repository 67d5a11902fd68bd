//! Xen's PV clock: system time from the TSC and the per-vCPU scaling
//! parameters in `shared_info`, and the wall clock at system time zero.

/// One consistent snapshot of a `vcpu_time_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeInfo {
    /// TSC value when `system_time` was sampled.
    pub tsc_timestamp: u64,
    /// Nanoseconds since the hypervisor booted, at `tsc_timestamp`.
    pub system_time: u64,
    /// TSC-to-nanoseconds multiplier (a 32.32 fixed-point fraction).
    pub tsc_to_system_mul: u32,
    /// Binary shift applied to TSC deltas before multiplying.
    pub tsc_shift: i8,
}

/// Scales a TSC delta to nanoseconds: `((delta << shift) * mul) >> 32`,
/// with a negative `shift` shifting right. Computed in 128 bits, so large
/// deltas neither overflow nor lose precision.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let shifted = if shift >= 0 {
        u128::from(delta) << shift.unsigned_abs().min(63)
    } else {
        u128::from(delta >> shift.unsigned_abs().min(63))
    };
    let ns = shifted.saturating_mul(u128::from(mul)) >> 32;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

impl TimeInfo {
    /// System time in nanoseconds at TSC value `tsc`. A TSC before the
    /// snapshot counts as the snapshot time (never goes backwards).
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.tsc_timestamp);
        self.system_time.saturating_add(scale_delta(delta, self.tsc_to_system_mul, self.tsc_shift))
    }
}

/// The wall clock at system time zero, as Xen publishes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    /// Seconds since the Unix epoch (`wc_sec` | `wc_sec_hi` << 32).
    pub sec: u64,
    /// Nanoseconds (`wc_nsec`).
    pub nsec: u32,
}

impl WallClock {
    /// Unix time in whole seconds at system time `system_ns`.
    pub fn unix_seconds_at(&self, system_ns: u64) -> u64 {
        let total_ns = u64::from(self.nsec.min(999_999_999)).saturating_add(system_ns);
        self.sec.saturating_add(total_ns / 1_000_000_000)
    }
}

/// Reads a seqlock-protected record: `version` is read before and after
/// `read`; an odd version (update in progress) or a change means retry.
/// Gives up after `tries` attempts with `None`.
pub fn read_consistent<T>(
    mut version: impl FnMut() -> u32,
    mut read: impl FnMut() -> T,
    tries: u32,
) -> Option<T> {
    for _ in 0..tries {
        let before = version();
        if before & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        let value = read();
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        if version() == before {
            return Some(value);
        }
    }
    None
}

/// `now`, or the latest value returned through `last` if that is later:
/// a clock built on this never goes back.
pub fn not_before(last: &core::sync::atomic::AtomicU64, now: u64) -> u64 {
    last.fetch_max(now, core::sync::atomic::Ordering::Relaxed).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    #[test]
    fn scaling_matches_the_header_formula() {
        // A 2 GHz TSC: mul = 2^31 (0.5 ns per tick), shift 0.
        assert_eq!(scale_delta(2_000_000_000, 1 << 31, 0), 1_000_000_000);
        // A 3 GHz TSC as Xen encodes it: shift -1, mul = 2^32 * 2/3.
        let mul = ((1u64 << 32) * 2 / 3) as u32;
        let ns = scale_delta(3_000_000_000, mul, -1);
        assert!(ns.abs_diff(999_999_999) <= 1, "{ns}");
        // A slow 500 MHz TSC: shift +1, mul = 2^32 (1.0) -> 2 ns per tick.
        assert_eq!(scale_delta(500, u32::MAX, 1), 999);
        // Huge deltas saturate instead of wrapping.
        assert_eq!(scale_delta(u64::MAX, u32::MAX, 63), u64::MAX);
    }

    #[test]
    fn a_reading_behind_the_last_gives_the_last() {
        let last = core::sync::atomic::AtomicU64::new(0);
        assert_eq!(not_before(&last, 5_000), 5_000);
        // A vCPU moved to a physical CPU whose TSC lags.
        assert_eq!(not_before(&last, 4_200), 5_000);
        assert_eq!(not_before(&last, 7_000), 7_000);
        assert_eq!(not_before(&last, 6_999), 7_000);
    }

    #[test]
    fn system_time_is_monotonic_in_tsc() {
        let t = TimeInfo {
            tsc_timestamp: 1000,
            system_time: 5_000,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 0,
        };
        assert_eq!(t.system_time_at(1000), 5_000);
        assert_eq!(t.system_time_at(3000), 6_000);
        assert_eq!(t.system_time_at(10), 5_000);
    }

    #[test]
    fn wall_clock_adds_system_time() {
        let wc = WallClock { sec: 1_700_000_000, nsec: 600_000_000 };
        assert_eq!(wc.unix_seconds_at(0), 1_700_000_000);
        assert_eq!(wc.unix_seconds_at(400_000_000), 1_700_000_001);
        assert_eq!(wc.unix_seconds_at(10_500_000_000), 1_700_000_011);
        let hostile = WallClock { sec: u64::MAX, nsec: u32::MAX };
        assert_eq!(hostile.unix_seconds_at(u64::MAX), u64::MAX);
    }

    #[test]
    fn seqlock_retries_odd_and_changed_versions() {
        let versions = [1u32, 2, 4, 4, 4];
        let i = Cell::new(0);
        let next = || {
            let v = versions[i.get().min(versions.len() - 1)];
            i.set(i.get() + 1);
            v
        };
        // 1 (odd, skip), 2 then 4 (changed, retry), 4 then 4 (ok).
        assert_eq!(read_consistent(next, || 7, 10), Some(7));
        let mut odd = || 3u32;
        assert_eq!(read_consistent(&mut odd, || 7, 5), None);
    }
}
