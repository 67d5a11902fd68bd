//! cryptod's deterministic random bit generator.
//!
//! The generator's whole state is one 32-byte key. Seed material (an
//! `entropy_pub` chunk plus a local hardware sample supplied by the platform)
//! is mixed into the key with HKDF-SHA256; output comes from a ChaCha20 stream
//! keyed with it, and every call replaces the key with the first 32 bytes of
//! its own stream before handing out the rest ("fast key erasure"), so a later
//! compromise of the state does not reveal earlier output.
//!
//! Rules:
//! - nothing is generated until [`MIN_SEED_BITS`] bits of `entropy_pub` chunk
//!   data have been absorbed ([`DrbgError::Unseeded`]); the hardware sample is
//!   mixed in but not credited, since its quality is unknown;
//! - each absorbed chunk is a reseed and resets the generate-call counter;
//! - after `reseed_interval` generate calls without a new chunk the generator
//!   refuses ([`DrbgError::ReseedRequired`]) until the next chunk;
//! - the key is zeroized on drop.

use core::fmt;

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use hkdf::HkdfExtract;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Seed material (in bits of `entropy_pub` chunk data) required before output.
pub const MIN_SEED_BITS: u64 = 256;
/// Default number of generate calls allowed between two reseeds.
pub const DEFAULT_RESEED_INTERVAL: u64 = 1 << 16;
/// Largest request served by one [`Drbg::fill`] call.
pub const MAX_REQUEST: usize = 4096;
/// Largest chunk or hardware sample absorbed in one call (longer input is refused).
pub const MAX_SEED_INPUT: usize = 4096;

const INFO_RESEED: &[u8] = b"portcullis drbg v1 reseed";

/// Why the generator refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrbgError {
    /// Fewer than [`MIN_SEED_BITS`] bits of seed material absorbed so far.
    Unseeded,
    /// The generate-call limit since the last reseed has been reached.
    ReseedRequired,
    /// A request or a seed input longer than the fixed bound.
    TooLong,
}

impl fmt::Display for DrbgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DrbgError::Unseeded => "drbg has not absorbed enough seed material",
            DrbgError::ReseedRequired => "drbg reached its generate limit and needs a reseed",
            DrbgError::TooLong => "drbg input or request too long",
        })
    }
}

impl core::error::Error for DrbgError {}

/// The ChaCha20 DRBG (see the module docs for its rules).
pub struct Drbg {
    key: Zeroizing<[u8; 32]>,
    seed_bits: u64,
    calls_since_reseed: u64,
    reseed_interval: u64,
    reseeds: u64,
}

impl Drbg {
    /// An unseeded generator that allows `reseed_interval` generate calls per reseed.
    pub fn new(reseed_interval: u64) -> Drbg {
        Drbg {
            key: Zeroizing::new([0u8; 32]),
            seed_bits: 0,
            calls_since_reseed: 0,
            reseed_interval: reseed_interval.max(1),
            reseeds: 0,
        }
    }

    /// Mixes an `entropy_pub` chunk and a local hardware sample into the state:
    ///
    /// `key' = HKDF-SHA256(salt = key, ikm = u32be(len chunk) || chunk ||
    /// u32be(len hw) || hw, info = "portcullis drbg v1 reseed", L = 32)`.
    ///
    /// Credits `8 * len(chunk)` bits and resets the generate-call counter.
    pub fn reseed(&mut self, chunk: &[u8], hw_sample: &[u8]) -> Result<(), DrbgError> {
        if chunk.len() > MAX_SEED_INPUT || hw_sample.len() > MAX_SEED_INPUT {
            return Err(DrbgError::TooLong);
        }
        let mut extract = HkdfExtract::<Sha256>::new(Some(&self.key[..]));
        extract.input_ikm(&len32(chunk));
        extract.input_ikm(chunk);
        extract.input_ikm(&len32(hw_sample));
        extract.input_ikm(hw_sample);
        let (mut prk, hk) = extract.finalize();
        prk.zeroize();
        let mut next = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        hk.expand(INFO_RESEED, &mut next[..]).map_err(|_| DrbgError::TooLong)?;
        self.key.copy_from_slice(&next[..]);
        let credited = u64::try_from(chunk.len()).unwrap_or(u64::MAX).saturating_mul(8);
        self.seed_bits = self.seed_bits.saturating_add(credited);
        self.calls_since_reseed = 0;
        self.reseeds = self.reseeds.saturating_add(1);
        Ok(())
    }

    /// Mixes a local sample into the state without crediting it and without
    /// counting as a reseed (prediction resistance between chunks): the same
    /// HKDF step as [`Drbg::reseed`] with an empty chunk.
    pub fn mix(&mut self, hw_sample: &[u8]) -> Result<(), DrbgError> {
        let (bits, calls, reseeds) = (self.seed_bits, self.calls_since_reseed, self.reseeds);
        self.reseed(&[], hw_sample)?;
        (self.seed_bits, self.calls_since_reseed, self.reseeds) = (bits, calls, reseeds);
        Ok(())
    }

    /// Generate calls left before a reseed is required (0 when unseeded).
    pub fn remaining(&self) -> u64 {
        if self.is_seeded() {
            self.reseed_interval.saturating_sub(self.calls_since_reseed)
        } else {
            0
        }
    }

    /// Whether enough seed material has been absorbed to generate.
    pub fn is_seeded(&self) -> bool {
        self.seed_bits >= MIN_SEED_BITS
    }

    /// Bits of chunk data absorbed so far.
    pub fn seed_bits(&self) -> u64 {
        self.seed_bits
    }

    /// Number of reseeds so far.
    pub fn reseeds(&self) -> u64 {
        self.reseeds
    }

    /// Whether the next generate call would be refused for want of a reseed.
    pub fn needs_reseed(&self) -> bool {
        self.calls_since_reseed >= self.reseed_interval
    }

    /// Fills `out` with random bytes (at most [`MAX_REQUEST`] per call).
    pub fn fill(&mut self, out: &mut [u8]) -> Result<(), DrbgError> {
        if !self.is_seeded() {
            return Err(DrbgError::Unseeded);
        }
        if self.needs_reseed() {
            return Err(DrbgError::ReseedRequired);
        }
        if out.len() > MAX_REQUEST {
            return Err(DrbgError::TooLong);
        }
        self.calls_since_reseed += 1;
        // The ChaCha20 keystream under the current key (nonce 0, block
        // counter from 0): the same bytes as rand_chacha's `ChaCha20Rng`
        // seeded with the key, from the cipher implementation the sealed
        // state already links (one ChaCha20 in the guest image, not two).
        let mut stream = ChaCha20::new((&*self.key).into(), &[0u8; 12].into());
        let mut next = Zeroizing::new([0u8; 32]);
        stream.apply_keystream(&mut next[..]);
        out.fill(0);
        stream.apply_keystream(out);
        self.key.copy_from_slice(&next[..]);
        // Overwrite the stream's key schedule before it goes out of scope.
        stream = ChaCha20::new(&[0u8; 32].into(), &[0u8; 12].into());
        core::hint::black_box(&mut stream);
        Ok(())
    }

    /// Returns `N` random bytes in a zeroizing buffer.
    pub fn bytes<const N: usize>(&mut self) -> Result<Zeroizing<[u8; N]>, DrbgError> {
        let mut out = Zeroizing::new([0u8; N]);
        self.fill(&mut out[..])?;
        Ok(out)
    }
}

impl Zeroize for Drbg {
    fn zeroize(&mut self) {
        self.key.zeroize();
        self.seed_bits = 0;
        self.calls_since_reseed = 0;
    }
}

impl Drop for Drbg {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Drbg {}

impl fmt::Debug for Drbg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drbg")
            .field("seed_bits", &self.seed_bits)
            .field("calls_since_reseed", &self.calls_since_reseed)
            .field("reseed_interval", &self.reseed_interval)
            .finish_non_exhaustive()
    }
}

fn len32(bytes: &[u8]) -> [u8; 4] {
    u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_rand_chachas_chacha20rng_for_the_key() {
        use rand_core::{Rng, SeedableRng};
        for key in [[0u8; 32], [7u8; 32], core::array::from_fn(|i| i as u8)] {
            let mut ours = ChaCha20::new(&key.into(), &[0u8; 12].into());
            let mut a = [0u8; 4096 + 32];
            ours.apply_keystream(&mut a);
            let mut b = [0u8; 4096 + 32];
            rand_chacha::ChaCha20Rng::from_seed(key).fill_bytes(&mut b);
            assert_eq!(a, b);
        }
    }
    use proptest::prelude::*;

    fn seeded() -> Drbg {
        let mut d = Drbg::new(DEFAULT_RESEED_INTERVAL);
        d.reseed(&[7u8; 32], b"hw").unwrap();
        d
    }

    #[test]
    fn unseeded_drbg_refuses() {
        let mut d = Drbg::new(10);
        let mut out = [0u8; 16];
        assert_eq!(d.fill(&mut out), Err(DrbgError::Unseeded));
        // 31 bytes of chunk is 248 bits: still refused, whatever the hw sample.
        d.reseed(&[1u8; 31], &[9u8; 512]).unwrap();
        assert_eq!(d.fill(&mut out), Err(DrbgError::Unseeded));
        d.reseed(&[1u8; 1], b"").unwrap();
        assert!(d.is_seeded());
        assert_eq!(d.fill(&mut out), Ok(()));
        assert_ne!(out, [0u8; 16]);
    }

    #[test]
    fn refuses_past_reseed_interval_until_next_chunk() {
        let mut d = Drbg::new(3);
        d.reseed(&[3u8; 32], b"").unwrap();
        let mut out = [0u8; 8];
        for _ in 0..3 {
            d.fill(&mut out).unwrap();
        }
        assert_eq!(d.fill(&mut out), Err(DrbgError::ReseedRequired));
        d.reseed(&[4u8; 64], b"").unwrap();
        assert_eq!(d.fill(&mut out), Ok(()));
    }

    #[test]
    fn output_never_repeats_and_depends_on_every_input() {
        let mut a = seeded();
        let x: [u8; 32] = *a.bytes().unwrap();
        let y: [u8; 32] = *a.bytes().unwrap();
        assert_ne!(x, y);

        let mut b = Drbg::new(DEFAULT_RESEED_INTERVAL);
        b.reseed(&[7u8; 32], b"hx").unwrap();
        assert_ne!(*b.bytes::<32>().unwrap(), x, "hardware sample is mixed in");

        let mut c = seeded();
        assert_eq!(*c.bytes::<32>().unwrap(), x, "same inputs, same stream");
    }

    #[test]
    fn mix_changes_output_but_not_credit_or_counter() {
        let mut d = Drbg::new(2);
        d.mix(&[1u8; 64]).unwrap();
        assert!(!d.is_seeded(), "hardware samples are not credited");
        d.reseed(&[7u8; 32], b"hw").unwrap();
        d.fill(&mut [0u8; 4]).unwrap();
        d.mix(b"sample").unwrap();
        assert_eq!(d.remaining(), 1);
        let mut a = [0u8; 16];
        d.fill(&mut a).unwrap();
        let mut e = Drbg::new(2);
        e.reseed(&[7u8; 32], b"hw").unwrap();
        e.fill(&mut [0u8; 4]).unwrap();
        let mut b = [0u8; 16];
        e.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn length_bounds() {
        let mut d = seeded();
        let mut big = alloc::vec![0u8; MAX_REQUEST + 1];
        assert_eq!(d.fill(&mut big), Err(DrbgError::TooLong));
        assert_eq!(d.reseed(&big, b""), Err(DrbgError::TooLong));
    }

    #[test]
    fn zeroize_clears_key_and_credit() {
        let mut d = seeded();
        d.zeroize();
        assert_eq!(*d.key, [0u8; 32]);
        assert!(!d.is_seeded());
    }

    proptest! {
        #[test]
        fn seeding_threshold_is_exactly_256_bits(lens in proptest::collection::vec(0usize..40, 0..6)) {
            let mut d = Drbg::new(DEFAULT_RESEED_INTERVAL);
            let mut total = 0usize;
            for len in lens {
                d.reseed(&alloc::vec![0xa5; len], b"").unwrap();
                total += len;
            }
            let mut out = [0u8; 4];
            prop_assert_eq!(d.fill(&mut out).is_ok(), total * 8 >= 256);
        }
    }
}
