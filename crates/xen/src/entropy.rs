//! Hardware entropy: RDSEED, falling back to RDRAND, behind continuous
//! health tests that fail closed.
//!
//! Each 64-bit sample passes two tests before use:
//! - a repetition count test (NIST SP 800-90B 4.4.1) with cutoff 2: two
//!   equal consecutive samples fail. At the conservative assumption of 32
//!   bits of min-entropy per sample the false-positive rate is 2^-32 per
//!   sample, well below the 2^-20 the standard asks for;
//! - a stuck-value check: all-zero and all-one samples fail (the pattern
//!   of known broken RDRAND implementations).
//!
//! A failure latches: the source stays failed until reboot.

use core::fmt;

/// Why entropy could not be produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropyError {
    /// Neither RDSEED nor RDRAND exists.
    NoSource,
    /// The instruction kept reporting no data.
    Exhausted,
    /// A health test failed (now latched).
    HealthFailure,
}

impl fmt::Display for EntropyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntropyError::NoSource => "no hardware entropy instruction",
            EntropyError::Exhausted => "hardware entropy source returned no data",
            EntropyError::HealthFailure => "hardware entropy failed its health tests",
        })
    }
}

impl core::error::Error for EntropyError {}

/// The continuous health tests over 64-bit samples.
#[derive(Clone, Debug, Default)]
pub struct HealthTests {
    last: Option<u64>,
    failed: bool,
}

impl HealthTests {
    /// Checks one sample; a failure latches.
    pub fn check(&mut self, sample: u64) -> Result<u64, EntropyError> {
        if self.failed {
            return Err(EntropyError::HealthFailure);
        }
        let stuck = sample == 0 || sample == u64::MAX;
        let repeated = self.last == Some(sample);
        self.last = Some(sample);
        if stuck || repeated {
            self.failed = true;
            return Err(EntropyError::HealthFailure);
        }
        Ok(sample)
    }

    /// Whether a test has failed.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

/// Fills `buf` from `sample` (one attempt of the instruction), retrying
/// each sample up to `tries` times, with every sample health-tested.
pub fn fill(
    buf: &mut [u8],
    tests: &mut HealthTests,
    tries: u32,
    mut sample: impl FnMut() -> Option<u64>,
) -> Result<(), EntropyError> {
    for chunk in buf.chunks_mut(8) {
        let value = (0..tries).find_map(|_| sample()).ok_or(EntropyError::Exhausted)?;
        let value = tests.check(value)?;
        let bytes = value.to_le_bytes();
        chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
    }
    Ok(())
}

/// The x86 source: RDSEED if present, RDRAND otherwise.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Debug, Default)]
pub struct HwEntropy {
    tests: HealthTests,
}

#[cfg(target_arch = "x86_64")]
impl HwEntropy {
    /// A source with fresh health-test state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills `buf`, or fails closed.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        use crate::arch;
        if arch::has_rdseed() {
            // RDSEED may legitimately run dry under load: retry generously.
            fill(buf, &mut self.tests, 1000, arch::rdseed)
        } else if arch::has_rdrand() {
            // Intel's guidance: 10 RDRAND retries indicate a failure.
            fill(buf, &mut self.tests, 10, arch::rdrand)
        } else {
            Err(EntropyError::NoSource)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(start: u64) -> impl FnMut() -> Option<u64> {
        let mut x = start;
        move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            Some(x)
        }
    }

    #[test]
    fn healthy_samples_fill_every_byte() {
        let mut t = HealthTests::default();
        let mut buf = [0u8; 13];
        fill(&mut buf, &mut t, 3, counter(1)).unwrap();
        assert!(buf.iter().any(|&b| b != 0));
        assert!(!t.failed());
    }

    #[test]
    fn repeated_sample_fails_and_latches() {
        let mut t = HealthTests::default();
        let mut buf = [0u8; 16];
        assert_eq!(
            fill(&mut buf, &mut t, 3, || Some(0x1234_5678_9abc_def0)),
            Err(EntropyError::HealthFailure)
        );
        assert!(t.failed());
        assert_eq!(fill(&mut buf, &mut t, 3, counter(7)), Err(EntropyError::HealthFailure));
    }

    #[test]
    fn stuck_values_fail() {
        for stuck in [0u64, u64::MAX] {
            let mut t = HealthTests::default();
            assert_eq!(
                fill(&mut [0u8; 8], &mut t, 3, || Some(stuck)),
                Err(EntropyError::HealthFailure)
            );
        }
    }

    #[test]
    fn a_dry_source_is_reported_after_the_retry_budget() {
        let mut t = HealthTests::default();
        let mut calls = 0;
        let r = fill(&mut [0u8; 8], &mut t, 5, || {
            calls += 1;
            None
        });
        assert_eq!(r, Err(EntropyError::Exhausted));
        assert_eq!(calls, 5);
        // Succeeds once data comes within the budget.
        let mut n = 0u64;
        let r = fill(&mut [0u8; 8], &mut t, 5, || {
            n += 1;
            (n == 4).then_some(0xdead_beef)
        });
        assert_eq!(r, Ok(()));
    }
}
