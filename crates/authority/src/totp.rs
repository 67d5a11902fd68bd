//! TOTP (RFC 6238) codes and their validation with replay protection.
//!
//! Rules:
//! - HMAC-SHA1, HMAC-SHA256 or HMAC-SHA512; 6 or 8 digits; 30 s steps from
//!   the Unix epoch; a code is accepted for the current step ± `window` steps
//!   (default 1).
//! - A code must be exactly `digits` ASCII digits. Every step in the window is
//!   computed and compared in constant time (`subtle`); the loop never exits
//!   early, so timing does not tell which step matched.
//! - Replay: per operator, the last accepted step is kept; a code is accepted
//!   only for a step strictly greater than it. A valid code for a step at or
//!   below it is a replay.

use crate::sorted::SortedMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha512};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The RFC 6238 time step in seconds.
pub const STEP_SECONDS: u64 = 30;
/// Default number of steps accepted on either side of the current one.
pub const DEFAULT_WINDOW: u64 = 1;
/// Largest window that may be configured.
pub const MAX_WINDOW: u64 = 10;
/// Shortest and longest accepted TOTP secret, in bytes.
pub const SECRET_LEN: core::ops::RangeInclusive<usize> = 16..=64;
/// Longest operator id, in bytes.
pub const MAX_OPERATOR_ID: usize = 64;

/// The HMAC hash of a TOTP secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA1 (the RFC 4226 default).
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

impl Algorithm {
    /// The one-byte code used in the sealed state (1, 2, 3).
    pub fn code(self) -> u8 {
        match self {
            Algorithm::Sha1 => 1,
            Algorithm::Sha256 => 2,
            Algorithm::Sha512 => 3,
        }
    }

    /// Inverse of [`Algorithm::code`].
    pub fn from_code(code: u8) -> Option<Algorithm> {
        match code {
            1 => Some(Algorithm::Sha1),
            2 => Some(Algorithm::Sha256),
            3 => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// Why a TOTP secret could not be configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TotpError {
    /// The digit count is neither 6 nor 8.
    BadDigits,
    /// The secret is shorter or longer than [`SECRET_LEN`].
    BadSecretLength,
    /// The operator id is empty or longer than [`MAX_OPERATOR_ID`].
    BadOperatorId,
}

impl fmt::Display for TotpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TotpError::BadDigits => "TOTP digits must be 6 or 8",
            TotpError::BadSecretLength => "TOTP secret must be 16 to 64 bytes",
            TotpError::BadOperatorId => "operator id must be 1 to 64 bytes",
        })
    }
}

impl core::error::Error for TotpError {}

/// One operator's TOTP secret and parameters.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct OperatorSecret {
    /// The operator id (as sent in `totp_validate_req.operator_id`).
    pub id: String,
    /// The shared HMAC key.
    pub secret: Vec<u8>,
    /// The HMAC hash.
    #[zeroize(skip)]
    pub algorithm: Algorithm,
    /// 6 or 8.
    pub digits: u8,
}

impl OperatorSecret {
    /// Checks the parameters and builds the record.
    pub fn new(
        id: &str,
        secret: &[u8],
        algorithm: Algorithm,
        digits: u8,
    ) -> Result<Self, TotpError> {
        if id.is_empty() || id.len() > MAX_OPERATOR_ID {
            return Err(TotpError::BadOperatorId);
        }
        if !SECRET_LEN.contains(&secret.len()) {
            return Err(TotpError::BadSecretLength);
        }
        if digits != 6 && digits != 8 {
            return Err(TotpError::BadDigits);
        }
        Ok(OperatorSecret { id: id.into(), secret: secret.into(), algorithm, digits })
    }
}

impl fmt::Debug for OperatorSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorSecret")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .field("digits", &self.digits)
            .finish_non_exhaustive()
    }
}

/// RFC 4226 HOTP value for `counter`, reduced to `digits` decimal digits.
// Out of line: a smaller image (issue 14, docs/benchmarks.md).
#[inline(never)]
pub fn hotp(secret: &[u8], algorithm: Algorithm, counter: u64, digits: u8) -> u32 {
    let msg = counter.to_be_bytes();
    let mac: Zeroizing<Vec<u8>> = Zeroizing::new(match algorithm {
        Algorithm::Sha1 => crate::sha1::hmac_sha1(secret, &msg).to_vec(),
        Algorithm::Sha256 => hmac_bytes::<Hmac<Sha256>>(secret, &msg),
        Algorithm::Sha512 => hmac_bytes::<Hmac<Sha512>>(secret, &msg),
    });
    // Dynamic truncation (RFC 4226 §5.3). Every HMAC here is at least 20 bytes,
    // so `offset + 3 <= 15 + 3 < len`; `get` keeps it panic-free regardless.
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = match mac.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a & 0x7f, b, c, d]),
        _ => 0,
    };
    // checked: no panic path for the divisor the compiler cannot see is not 0.
    word.checked_rem(10u32.pow(u32::from(digits.min(9)))).unwrap_or(0)
}

// Out of line: a smaller image (issue 14, docs/benchmarks.md).
#[inline(never)]
fn hmac_bytes<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = match <M as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// The TOTP value at Unix time `time` (30 s steps from the epoch).
pub fn totp(secret: &[u8], algorithm: Algorithm, digits: u8, time: u64) -> u32 {
    hotp(secret, algorithm, time / STEP_SECONDS, digits)
}

/// Parses a code of exactly `digits` ASCII digits.
pub fn parse_code(code: &str, digits: u8) -> Option<u32> {
    if code.len() != usize::from(digits) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.bytes().try_fold(0u32, |acc, b| acc.checked_mul(10)?.checked_add(u32::from(b - b'0')))
}

/// Finds the step in `now`'s window whose code equals `code`, in constant time
/// over the window. Returns the greatest matching step, or `None`.
pub fn matching_step(op: &OperatorSecret, code: &str, now: u64, window: u64) -> Option<u64> {
    let window = window.min(MAX_WINDOW);
    // A malformed code is compared as an impossible value, so the window is
    // still walked in full.
    let parsed = parse_code(code, op.digits);
    let wanted = parsed.unwrap_or(u32::MAX);
    let current = now / STEP_SECONDS;
    let mut found = subtle::Choice::from(0);
    let mut step_found = 0u64;
    for step in current.saturating_sub(window)..=current.saturating_add(window) {
        let value = hotp(&op.secret, op.algorithm, step, op.digits);
        let hit = value.ct_eq(&wanted);
        step_found.conditional_assign(&step, hit);
        found |= hit;
    }
    (bool::from(found) && parsed.is_some()).then_some(step_found)
}

/// Result of checking a code against an operator's secret and replay state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeCheck {
    /// Accepted for this step (now recorded as the last accepted step).
    Accepted(u64),
    /// Wrong code, malformed code or unknown operator.
    Fail,
    /// A valid code for a step not after the last accepted one.
    Replay,
}

/// The operators' secrets and their replay state.
#[derive(Default)]
pub struct Totp {
    operators: SortedMap<String, OperatorSecret>,
    last_steps: SortedMap<String, u64>,
    window: u64,
}

impl Totp {
    /// A validator with the given secrets, last accepted steps and window.
    pub fn new(
        operators: impl IntoIterator<Item = OperatorSecret>,
        last_steps: impl IntoIterator<Item = (String, u64)>,
        window: u64,
    ) -> Totp {
        let mut totp = Totp {
            operators: SortedMap::new(),
            last_steps: SortedMap::new(),
            window: window.min(MAX_WINDOW),
        };
        totp.operators.extend(operators.into_iter().map(|o| (o.id.clone(), o)));
        totp.last_steps.extend(last_steps);
        totp
    }

    /// Checks `code` for `operator` at time `now` and records an accepted step.
    pub fn check(&mut self, operator: &str, code: &str, now: u64) -> CodeCheck {
        let Some(op) = self.operators.get(operator) else {
            return CodeCheck::Fail;
        };
        let Some(step) = matching_step(op, code, now, self.window) else {
            return CodeCheck::Fail;
        };
        if self.last_steps.get(operator).is_some_and(|&last| step <= last) {
            return CodeCheck::Replay;
        }
        self.last_steps.insert(op.id.clone(), step);
        CodeCheck::Accepted(step)
    }

    /// Sets `op`'s secret (a new operator, or a reset: the old secret stops
    /// at once) with `last_step` as its last accepted step, so the code that
    /// confirmed the enrolment cannot be used again.
    pub fn set(&mut self, op: OperatorSecret, last_step: u64) {
        self.last_steps.insert(op.id.clone(), last_step);
        self.operators.insert(op.id.clone(), op);
    }

    /// Removes `operator` and its replay state; whether it was there.
    pub fn remove(&mut self, operator: &str) -> bool {
        if !self.operators.contains_key(operator) {
            return false;
        }
        self.operators.remove(operator);
        self.last_steps.remove(operator);
        true
    }

    /// How many operators have a secret.
    pub fn len(&self) -> usize {
        self.operators.len()
    }

    /// Whether no operator has a secret.
    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }

    /// The configured window.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// `operator`'s secret, if configured.
    pub fn get(&self, operator: &str) -> Option<&OperatorSecret> {
        self.operators.get(operator)
    }

    /// Whether `operator` has a configured secret.
    pub fn knows(&self, operator: &str) -> bool {
        self.operators.contains_key(operator)
    }

    /// The configured secrets (for sealing).
    pub fn operators(&self) -> impl Iterator<Item = &OperatorSecret> {
        self.operators.values()
    }

    /// The per-operator last accepted steps (for sealing).
    pub fn last_steps(&self) -> impl Iterator<Item = (&String, &u64)> {
        self.last_steps.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 6238 Appendix B seeds: the ASCII string "1234567890" repeated to the
    // hash's block-appropriate length (20, 32 and 64 bytes).
    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    /// RFC 6238 Appendix B, every row: (time, SHA1, SHA256, SHA512), 8 digits.
    const RFC6238_VECTORS: [(u64, u32, u32, u32); 6] = [
        (59, 94287082, 46119246, 90693936),
        (1111111109, 7081804, 68084774, 25091201),
        (1111111111, 14050471, 67062674, 99943326),
        (1234567890, 89005924, 91819424, 93441116),
        (2000000000, 69279037, 90698825, 38618901),
        (20000000000, 65353130, 77737706, 47863826),
    ];

    #[test]
    fn rfc6238_appendix_b_all_vectors() {
        for (t, sha1, sha256, sha512) in RFC6238_VECTORS {
            assert_eq!(totp(SEED_SHA1, Algorithm::Sha1, 8, t), sha1, "sha1 t={t}");
            assert_eq!(totp(SEED_SHA256, Algorithm::Sha256, 8, t), sha256, "sha256 t={t}");
            assert_eq!(totp(SEED_SHA512, Algorithm::Sha512, 8, t), sha512, "sha512 t={t}");
        }
    }

    #[test]
    fn six_digits_is_the_low_six_of_eight() {
        for (t, sha1, _, _) in RFC6238_VECTORS {
            assert_eq!(totp(SEED_SHA1, Algorithm::Sha1, 6, t), sha1 % 1_000_000);
        }
    }

    #[test]
    fn rfc6238_codes_validate_through_the_window() {
        let op = OperatorSecret::new("alice", SEED_SHA256, Algorithm::Sha256, 8).unwrap();
        // 68084774 is step 37037036 (t = 1111111109).
        assert_eq!(matching_step(&op, "68084774", 1111111109, 1), Some(37037036));
        assert_eq!(matching_step(&op, "68084774", 1111111109 + 30, 1), Some(37037036));
        assert_eq!(matching_step(&op, "68084774", 1111111109 - 30, 1), Some(37037036));
        assert_eq!(matching_step(&op, "68084774", 1111111109 + 60, 1), None, "outside ±1");
        assert_eq!(matching_step(&op, "68084774", 1111111109 + 60, 2), Some(37037036));
        assert_eq!(matching_step(&op, "68084774", 1111111109 + 30, 0), None, "window 0");
    }

    #[test]
    fn malformed_codes_fail() {
        let op = OperatorSecret::new("alice", SEED_SHA1, Algorithm::Sha1, 8).unwrap();
        for code in ["", "9428708", "942870822", "9428708a", "+4287082", " 94287082", "９4287082"]
        {
            assert_eq!(matching_step(&op, code, 59, 1), None, "{code:?}");
        }
    }

    #[test]
    fn code_accepted_once_is_replay_the_second_time() {
        let op = OperatorSecret::new("alice", SEED_SHA1, Algorithm::Sha1, 8).unwrap();
        let mut v = Totp::new([op], [], DEFAULT_WINDOW);
        assert_eq!(v.check("alice", "94287082", 59), CodeCheck::Accepted(1));
        assert_eq!(v.check("alice", "94287082", 59), CodeCheck::Replay);
        // The code of an earlier step, still inside the window, is a replay too.
        let earlier = format_code(totp(SEED_SHA1, Algorithm::Sha1, 8, 10), 8);
        assert_eq!(v.check("alice", &earlier, 59), CodeCheck::Replay);
        // The next step's code is accepted.
        let next = format_code(totp(SEED_SHA1, Algorithm::Sha1, 8, 60), 8);
        assert_eq!(v.check("alice", &next, 61), CodeCheck::Accepted(2));
    }

    #[test]
    fn replay_state_survives_a_restart() {
        let op = OperatorSecret::new("alice", SEED_SHA1, Algorithm::Sha1, 8).unwrap();
        let mut v = Totp::new([op.clone()], [], DEFAULT_WINDOW);
        assert_eq!(v.check("alice", "94287082", 59), CodeCheck::Accepted(1));
        let saved: Vec<(String, u64)> = v.last_steps().map(|(k, s)| (k.clone(), *s)).collect();
        let mut restarted = Totp::new([op], saved, DEFAULT_WINDOW);
        assert_eq!(restarted.check("alice", "94287082", 59), CodeCheck::Replay);
    }

    #[test]
    fn unknown_operator_and_wrong_code_fail() {
        let op = OperatorSecret::new("alice", SEED_SHA1, Algorithm::Sha1, 8).unwrap();
        let mut v = Totp::new([op], [], DEFAULT_WINDOW);
        assert_eq!(v.check("bob", "94287082", 59), CodeCheck::Fail);
        assert_eq!(v.check("alice", "94287083", 59), CodeCheck::Fail);
    }

    #[test]
    fn secret_parameters_are_checked() {
        assert_eq!(
            OperatorSecret::new("a", &[0; 16], Algorithm::Sha1, 7),
            Err(TotpError::BadDigits)
        );
        assert_eq!(
            OperatorSecret::new("a", &[0; 15], Algorithm::Sha1, 6),
            Err(TotpError::BadSecretLength)
        );
        assert_eq!(
            OperatorSecret::new("", &[0; 16], Algorithm::Sha1, 6),
            Err(TotpError::BadOperatorId)
        );
    }

    fn format_code(value: u32, digits: u8) -> String {
        alloc::format!("{value:0width$}", width = usize::from(digits))
    }

    proptest! {
        #[test]
        fn any_current_code_matches_its_own_step(secret in proptest::collection::vec(any::<u8>(), 16..64),
                                                 t in 0u64..4_000_000_000, alg in 1u8..=3, eight in any::<bool>()) {
            let digits = if eight { 8 } else { 6 };
            let op = OperatorSecret::new("o", &secret, Algorithm::from_code(alg).unwrap(), digits).unwrap();
            let code = format_code(totp(&secret, op.algorithm, digits, t), digits);
            let step = matching_step(&op, &code, t, 1);
            prop_assert!(step.is_some());
            // Another step in the window may carry the same code by chance; the
            // greatest match is reported, never one outside the window.
            prop_assert!(step.unwrap() >= t / 30 && step.unwrap() <= t / 30 + 1);
        }
    }
}
