//! Ed25519 signing with a basepoint table computed at run time.
//!
//! Signing is dominated by `r·B`, a multiple of the base point by a secret
//! scalar. ed25519-dalek computes it from 38 KiB of precomputed multiples
//! linked into the program when its `fast` feature is on, and by a
//! variable-base multiplication (2.6 times slower in the guest build,
//! docs/benchmarks.md) when it is off. cryptod's image cannot carry the
//! tables (issue 14's 256 KiB), so with this crate's `runtime-table`
//! feature [`sign`](crate::ed25519::sign) computes the same kind of table
//! once, in the heap, at its first signature (40 KiB; 384 point additions)
//! and signs with it. Without the feature
//! [`sign`](crate::ed25519::sign) is ed25519-dalek's own.
//!
//! The signature is RFC 8032's, byte for byte the one ed25519-dalek makes
//! (Ed25519 is deterministic; the tests compare the two over many keys and
//! messages). The multiplication reads every entry of a table row for
//! every digit and picks one with constant-time selects, as
//! curve25519-dalek's own table does: no branch and no memory address
//! depends on the secret scalar.

use alloc::boxed::Box;
use alloc::vec::Vec;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha512};
use subtle::{Choice, ConditionallyNegatable, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

/// Rows of the table: one per pair of radix-16 digits of a scalar.
const ROWS: usize = 32;

/// Multiples of the base point B for a radix-16 scalar multiplication:
/// row `k` holds `j·16^(2k)·B` for `j` = 1 to 8. A scalar's odd digits
/// are looked up first and the sum multiplied by 16, then its even digits
/// are added: 64 additions and 4 doublings, where a variable-base
/// multiplication needs 256 doublings.
pub struct BasepointTable {
    rows: Box<[[EdwardsPoint; 8]]>,
}

impl BasepointTable {
    /// Computes the table (384 additions), in the heap.
    #[inline(never)]
    pub fn new() -> Self {
        let mut rows = Vec::with_capacity(ROWS);
        // 16^(2k)·B for the row being filled.
        let mut p = ED25519_BASEPOINT_POINT;
        for _ in 0..ROWS {
            let mut row = [p; 8];
            let mut multiple = p;
            for entry in row.iter_mut().skip(1) {
                multiple = add(&multiple, &p);
                *entry = multiple;
            }
            // 256·p from 8·p: five doublings.
            for _ in 0..5 {
                multiple = add(&multiple, &multiple);
            }
            p = multiple;
            rows.push(row);
        }
        BasepointTable { rows: rows.into_boxed_slice() }
    }

    /// `s·B`, in time independent of `s`. `s` must be reduced (every
    /// `Scalar` made by `from_bytes_mod_order*` is): its top byte then
    /// keeps the last digit within -8..=8.
    pub fn mul_base(&self, s: &Scalar) -> EdwardsPoint {
        let digits = radix16(s);
        let mut acc = EdwardsPoint::identity();
        // The odd digits (second of each pair), then 16 times that plus
        // the even digits.
        for odd in [1, 0] {
            for (pair, row) in digits.chunks_exact(2).zip(self.rows.iter()) {
                let digit = pair.get(odd).copied().unwrap_or(0);
                acc = add(&acc, &select(row, digit));
            }
            if odd == 1 {
                for _ in 0..4 {
                    acc = add(&acc, &acc);
                }
            }
        }
        acc
    }

    /// The Ed25519 signature (RFC 8032, section 5.1.6) of `message` by
    /// `key`, its `r·B` from this table.
    pub fn sign(&self, key: &SigningKey, message: &[u8]) -> [u8; 64] {
        // The secret scalar and the nonce prefix, zeroed when dropped.
        let expanded = ExpandedSecretKey::from(key.as_bytes());
        let r = Zeroizing::new(Scalar::from_hash(
            Sha512::new().chain_update(expanded.hash_prefix).chain_update(message),
        ));
        let big_r = self.mul_base(&r).compress();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(big_r.as_bytes())
                .chain_update(key.verifying_key().as_bytes())
                .chain_update(message),
        );
        let s = k * expanded.scalar + *r;
        let mut signature = [0u8; 64];
        let (r_half, s_half) = signature.split_at_mut(32);
        r_half.copy_from_slice(big_r.as_bytes());
        s_half.copy_from_slice(s.as_bytes());
        signature
    }
}

impl Default for BasepointTable {
    fn default() -> Self {
        Self::new()
    }
}

/// `a + b` (also for `a == b`: the Edwards addition law is complete), in
/// one place: the multiplication and the table's construction share it
/// instead of inlining curve25519-dalek's addition at each use.
#[inline(never)]
fn add(a: &EdwardsPoint, b: &EdwardsPoint) -> EdwardsPoint {
    a + b
}

/// `s` as 64 signed radix-16 digits, each in -8..=8, least significant
/// first (curve25519-dalek's recoding): the nibbles, then a carry pass
/// that moves 8..=15 to -8..=-1 and one into the next digit. Arithmetic
/// only, no branch on the digits.
fn radix16(s: &Scalar) -> Zeroizing<[i8; 64]> {
    let mut digits = Zeroizing::new([0i8; 64]);
    for (pair, byte) in digits.chunks_exact_mut(2).zip(s.as_bytes()) {
        if let [low, high] = pair {
            *low = (byte & 15) as i8;
            *high = (byte >> 4) as i8;
        }
    }
    let mut carry = 0i8;
    for digit in digits.iter_mut() {
        *digit += carry;
        carry = (*digit + 8) >> 4;
        *digit -= carry << 4;
    }
    // A reduced scalar is below 2^253: the last digit is at most 1 before
    // the pass, so it never carries out.
    digits
}

/// `d` times the row's point, for `d` in -8..=8, reading all 8 entries.
fn select(row: &[EdwardsPoint; 8], d: i8) -> EdwardsPoint {
    // |d| without a branch: the sign mask is all ones when d < 0.
    let mask = d >> 7;
    let magnitude = ((d ^ mask) - mask) as u8;
    let mut point = EdwardsPoint::identity();
    for (j, entry) in (1u8..).zip(row) {
        point.conditional_assign(entry, magnitude.ct_eq(&j));
    }
    point.conditional_negate(Choice::from((mask & 1) as u8));
    point
}

/// The table every [`sign`] of this program uses, computed at the first.
#[cfg(feature = "runtime-table")]
static TABLE: spin::Once<BasepointTable> = spin::Once::new();

/// Signs `message` with `key` (Ed25519, RFC 8032): with the run-time
/// basepoint table when this crate is built with `runtime-table`, else
/// with ed25519-dalek's own signing. The same bytes either way.
pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; 64] {
    #[cfg(feature = "runtime-table")]
    {
        TABLE.call_once(BasepointTable::new).sign(key, message)
    }
    #[cfg(not(feature = "runtime-table"))]
    {
        use ed25519_dalek::Signer;
        key.sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use ed25519_dalek::Signer;
    use proptest::prelude::*;

    fn table() -> &'static BasepointTable {
        static T: std::sync::OnceLock<BasepointTable> = std::sync::OnceLock::new();
        T.get_or_init(BasepointTable::new)
    }

    #[test]
    fn multiples_match_curve25519_dalek() {
        let mut edge = alloc::vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, Scalar::from(8u8)];
        // 0x88...: every nibble 8, which the carry pass turns into -8 and
        // a carry; 0xff... and 0x77... reduced; ±16^i: one digit set in
        // each position, and its negation (l - 16^i).
        edge.push(Scalar::from_bytes_mod_order([0x88; 32]));
        edge.push(Scalar::from_bytes_mod_order([0xff; 32]));
        edge.push(Scalar::from_bytes_mod_order([0x77; 32]));
        let mut power = Scalar::ONE;
        for _ in 0..63 {
            edge.push(power);
            edge.push(-power);
            power *= Scalar::from(16u8);
        }
        for s in edge {
            assert_eq!(table().mul_base(&s), EdwardsPoint::mul_base(&s), "{:?}", s.as_bytes());
        }
    }

    #[test]
    fn rfc8032_test_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let want = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                    5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(hex::encode(table().sign(&key, b"")), want);
        assert_eq!(hex::encode(sign(&key, b"")), want);
    }

    proptest! {
        #[test]
        fn signatures_match_ed25519_dalek(seed in any::<[u8; 32]>(), message in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = SigningKey::from_bytes(&seed);
            let want = key.sign(&message).to_bytes();
            prop_assert_eq!(table().sign(&key, &message), want);
            prop_assert_eq!(sign(&key, &message), want);
        }

        #[test]
        fn products_match_curve25519_dalek(bytes in any::<[u8; 64]>()) {
            let s = Scalar::from_bytes_mod_order_wide(&bytes);
            prop_assert_eq!(table().mul_base(&s), EdwardsPoint::mul_base(&s));
        }
    }
}
