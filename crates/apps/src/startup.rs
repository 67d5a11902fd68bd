//! A guest's start-up, timed: from its first instruction to "ready", split
//! into the waits that make it up (dom0's configuration, the peer it needs,
//! its seed), printed once as one console line after the ready line
//! (`docs/xen-boot.md`, "Boot-to-ready"). Pure bookkeeping on the
//! platform's monotonic clock: no I/O, tested on the host.

use alloc::string::String;
use core::fmt::Write;

use portcullis_platform::BootMarks;

/// Most phases one report names (a guest names four at most).
pub const MAX_PHASES: usize = 6;

/// The phases of a start-up so far: each is the time from the previous
/// mark (the first: from the configuration) to its own.
#[derive(Clone, Debug)]
pub struct Startup {
    started_ns: u64,
    last_ns: u64,
    config_ns: u64,
    phases: [(&'static str, u64); MAX_PHASES],
    len: usize,
}

impl Startup {
    /// Starts from the platform's marks: the first phase, `config`, is the
    /// wait from the first instruction until the guest was configured.
    pub fn new(marks: BootMarks) -> Startup {
        let configured = marks.configured_ns.max(marks.started_ns);
        Startup {
            started_ns: marks.started_ns,
            last_ns: configured,
            config_ns: configured - marks.started_ns,
            phases: [("", 0); MAX_PHASES],
            len: 0,
        }
    }

    /// Ends the phase `name` at `now_ns` (time since the previous mark; a
    /// clock that went back counts as zero). Phases past [`MAX_PHASES`] are
    /// added to the last one, so the total still adds up.
    pub fn mark(&mut self, name: &'static str, now_ns: u64) {
        let took = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        match self.phases.get_mut(self.len) {
            Some(slot) => {
                *slot = (name, took);
                self.len += 1;
            }
            None => {
                if let Some(last) = self.phases.last_mut() {
                    last.1 = last.1.saturating_add(took);
                }
            }
        }
    }

    /// From the first instruction to the last mark, nanoseconds.
    pub fn total_ns(&self) -> u64 {
        self.last_ns.saturating_sub(self.started_ns)
    }

    /// The phases so far, the configuration wait first.
    pub fn phases(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        core::iter::once(("config", self.config_ns))
            .chain(self.phases.iter().take(self.len).copied())
    }

    /// The report line: `<me>: boot-to-ready 812 ms (config 120 ms, seed
    /// 300 ms, ...)`, in whole milliseconds.
    pub fn report(&self, me: &str) -> String {
        let ms = |ns: u64| ns / 1_000_000;
        let mut s = String::new();
        let _ = write!(s, "{me}: boot-to-ready {} ms (", ms(self.total_ns()));
        for (i, (name, ns)) in self.phases().enumerate() {
            let _ = write!(s, "{}{name} {} ms", if i == 0 { "" } else { ", " }, ms(ns));
        }
        s.push(')');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn phases_add_up_to_the_total_from_the_first_instruction() {
        let mut t = Startup::new(BootMarks { started_ns: 1_000 * MS, configured_ns: 1_120 * MS });
        t.mark("unseal", 1_200 * MS);
        t.mark("seed", 1_500 * MS);
        assert_eq!(t.total_ns(), 500 * MS);
        assert_eq!(t.phases().map(|(_, ns)| ns).sum::<u64>(), t.total_ns());
        assert_eq!(
            t.report("cryptod"),
            "cryptod: boot-to-ready 500 ms (config 120 ms, unseal 80 ms, seed 300 ms)"
        );
    }

    #[test]
    fn a_clock_that_goes_back_or_odd_marks_never_underflow() {
        // configured before started (a platform bug): no configuration wait.
        let mut t = Startup::new(BootMarks { started_ns: 50 * MS, configured_ns: 10 * MS });
        t.mark("peer", 40 * MS);
        t.mark("seed", 70 * MS);
        assert_eq!(t.report("x"), "x: boot-to-ready 20 ms (config 0 ms, peer 0 ms, seed 20 ms)");
        let mut t = Startup::new(BootMarks { started_ns: u64::MAX, configured_ns: 0 });
        t.mark("a", 0);
        assert_eq!(t.total_ns(), 0);
    }

    #[test]
    fn phases_beyond_the_table_go_to_the_last_one() {
        let mut t = Startup::new(BootMarks::default());
        for i in 1..=(MAX_PHASES as u64 + 3) {
            t.mark("p", i * MS);
        }
        assert_eq!(t.phases().count(), MAX_PHASES + 1);
        assert_eq!(t.phases().map(|(_, ns)| ns).sum::<u64>(), t.total_ns());
        assert_eq!(t.total_ns(), (MAX_PHASES as u64 + 3) * MS);
    }
}
