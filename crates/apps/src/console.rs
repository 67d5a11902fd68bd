//! Rate-limited console lines (sans-IO).
//!
//! A misbehaving peer can make a guest log the same line once per message
//! (one "send queue full" per dropped reply gave 510,000 lines). The
//! [`LineLimiter`] lets at most [`LineLimiter::per_window`] lines of one
//! kind about one peer through per window; the rest are counted, and the
//! count is reported with the next line of that kind and peer, or by
//! [`LineLimiter::expired`] when the window closes quietly. The first line
//! of a kind and peer is never suppressed. The table is bounded; when it is
//! full a line is printed untracked (kinds are a fixed set and peers the
//! configured ones, so this needs a misconfiguration to happen).

use alloc::vec::Vec;

/// Default window, nanoseconds.
pub const DEFAULT_WINDOW_NS: u64 = 10_000_000_000;
/// Default lines let through per kind and peer per window.
pub const DEFAULT_PER_WINDOW: u32 = 3;
/// Most (kind, peer) pairs tracked at once.
pub const MAX_TRACKED: usize = 64;

/// What to do with one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Print it; `suppressed` lines of the same kind and peer were held back
    /// since the last one printed (say so with it).
    Print {
        /// Lines suppressed before this one.
        suppressed: u64,
    },
    /// Do not print it (counted).
    Suppress,
}

/// A window that closed with suppressed lines nobody has reported yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quiet {
    /// The line kind.
    pub kind: &'static str,
    /// The peer (domain id).
    pub peer: u32,
    /// Lines suppressed in the window.
    pub suppressed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    kind: &'static str,
    peer: u32,
    start: u64,
    printed: u32,
    suppressed: u64,
}

/// Per (kind, peer) line budget per time window.
#[derive(Clone, Debug)]
pub struct LineLimiter {
    window_ns: u64,
    per_window: u32,
    slots: Vec<Slot>,
}

impl Default for LineLimiter {
    fn default() -> Self {
        LineLimiter::new(DEFAULT_WINDOW_NS, DEFAULT_PER_WINDOW)
    }
}

impl LineLimiter {
    /// At most `per_window` (at least 1) lines per kind and peer per
    /// `window_ns` nanoseconds.
    pub fn new(window_ns: u64, per_window: u32) -> LineLimiter {
        LineLimiter { window_ns, per_window: per_window.max(1), slots: Vec::new() }
    }

    /// Lines let through per kind and peer per window.
    pub fn per_window(&self) -> u32 {
        self.per_window
    }

    /// Decides about one line of `kind` about `peer` at monotonic time `now_ns`.
    pub fn check(&mut self, kind: &'static str, peer: u32, now_ns: u64) -> Verdict {
        let window = self.window_ns;
        let per_window = self.per_window;
        let Some(slot) = self.slots.iter_mut().find(|s| s.kind == kind && s.peer == peer) else {
            if self.slots.len() < MAX_TRACKED {
                self.slots.push(Slot { kind, peer, start: now_ns, printed: 1, suppressed: 0 });
            }
            return Verdict::Print { suppressed: 0 };
        };
        if now_ns.saturating_sub(slot.start) >= window {
            let suppressed = core::mem::take(&mut slot.suppressed);
            slot.start = now_ns;
            slot.printed = 1;
            return Verdict::Print { suppressed };
        }
        if slot.printed < per_window {
            slot.printed += 1;
            return Verdict::Print { suppressed: 0 };
        }
        slot.suppressed = slot.suppressed.saturating_add(1);
        Verdict::Suppress
    }

    /// The windows closed by `now_ns` that suppressed lines (each reported
    /// once); windows closed without any are forgotten.
    pub fn expired(&mut self, now_ns: u64) -> Vec<Quiet> {
        let window = self.window_ns;
        let mut quiet = Vec::new();
        self.slots.retain(|s| {
            if now_ns.saturating_sub(s.start) < window {
                return true;
            }
            if s.suppressed > 0 {
                quiet.push(Quiet { kind: s.kind, peer: s.peer, suppressed: s.suppressed });
            }
            false
        });
        quiet
    }

    /// How many (kind, peer) pairs are tracked.
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_first_lines_pass_then_the_rest_are_counted() {
        let mut l = LineLimiter::new(10 * S, 2);
        assert_eq!(l.check("queue_full", 5, 0), Verdict::Print { suppressed: 0 });
        assert_eq!(l.check("queue_full", 5, 1), Verdict::Print { suppressed: 0 });
        for t in 2..1000 {
            assert_eq!(l.check("queue_full", 5, t), Verdict::Suppress);
        }
        // The next window's first line carries the count.
        assert_eq!(l.check("queue_full", 5, 10 * S), Verdict::Print { suppressed: 998 });
        assert_eq!(l.check("queue_full", 5, 10 * S + 1), Verdict::Print { suppressed: 0 });
    }

    #[test]
    fn kinds_and_peers_have_their_own_budgets() {
        let mut l = LineLimiter::new(10 * S, 1);
        assert_eq!(l.check("queue_full", 5, 0), Verdict::Print { suppressed: 0 });
        assert_eq!(l.check("queue_full", 5, 1), Verdict::Suppress);
        // A first occurrence of another kind or peer is never lost.
        assert_eq!(l.check("queue_full", 7, 2), Verdict::Print { suppressed: 0 });
        assert_eq!(l.check("malformed", 5, 3), Verdict::Print { suppressed: 0 });
    }

    #[test]
    fn a_window_that_closes_quietly_reports_its_count_once() {
        let mut l = LineLimiter::new(10 * S, 1);
        l.check("queue_full", 5, 0);
        l.check("queue_full", 5, 1);
        l.check("queue_full", 5, 2);
        l.check("malformed", 6, 0);
        assert!(l.expired(9 * S).is_empty());
        assert_eq!(l.expired(10 * S), [Quiet { kind: "queue_full", peer: 5, suppressed: 2 }]);
        assert!(l.expired(20 * S).is_empty());
        assert_eq!(l.tracked(), 0, "closed windows are forgotten");
        assert_eq!(l.check("queue_full", 5, 21 * S), Verdict::Print { suppressed: 0 });
    }

    #[test]
    fn the_table_is_bounded_and_first_lines_still_print() {
        let mut l = LineLimiter::new(10 * S, 1);
        for peer in 0..(MAX_TRACKED as u32 + 10) {
            assert_eq!(l.check("queue_full", peer, 0), Verdict::Print { suppressed: 0 });
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
    }

    #[test]
    fn time_going_backwards_does_not_open_a_window() {
        let mut l = LineLimiter::new(10 * S, 1);
        l.check("queue_full", 5, 100 * S);
        assert_eq!(l.check("queue_full", 5, 0), Verdict::Suppress);
    }
}
