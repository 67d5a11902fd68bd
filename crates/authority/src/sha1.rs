//! HMAC-SHA1 (RFC 2104 over FIPS 180-4's SHA-1) for TOTP, written for size.
//!
//! Authenticator apps mostly speak HMAC-SHA1 TOTP, so cryptod keeps it; it
//! uses SHA-1 for nothing else (collision resistance plays no part in
//! HMAC). The `sha1` crate unrolls the 80 rounds into 3.6 KB of code in the
//! guest image; this is one loop of 80 rounds over a 16-word schedule, a few
//! hundred bytes (issue 14). No branch or memory address depends on the key
//! or the message bytes; the buffers that held the key are zeroed.
//! The tests compare it with the `sha1` and `hmac` crates over random keys
//! and messages, and with FIPS 180-2's and RFC 2202's vectors.

use zeroize::{Zeroize, Zeroizing};

/// SHA-1's initial state (FIPS 180-4 section 5.3.1).
const INIT: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];

/// One 64-byte block into the state (FIPS 180-4 section 6.1.2).
fn compress(state: &mut [u32; 5], block: &[u8; 64]) {
    let mut w = [0u32; 16];
    for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
        if let [a, b, c, d] = *bytes {
            *word = u32::from_be_bytes([a, b, c, d]);
        }
    }
    let [mut a, mut b, mut c, mut d, mut e] = *state;
    for i in 0..80usize {
        // The schedule kept in a ring of 16: W[i] replaces W[i-16].
        let slot = i & 15;
        if i >= 16 {
            let x = w[(i + 13) & 15] ^ w[(i + 8) & 15] ^ w[(i + 2) & 15] ^ w[slot];
            w[slot] = x.rotate_left(1);
        }
        let (f, k) = match i / 20 {
            0 => ((b & c) | (!b & d), 0x5A82_7999),
            1 => (b ^ c ^ d, 0x6ED9_EBA1),
            2 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
            _ => (b ^ c ^ d, 0xCA62_C1D6),
        };
        let t =
            a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(w[slot]);
        e = d;
        d = c;
        c = b.rotate_left(30);
        b = a;
        a = t;
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e]) {
        *s = s.wrapping_add(v);
    }
    w.zeroize();
}

/// SHA-1 of the concatenation of `parts`.
fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut state = INIT;
    let mut block = Zeroizing::new([0u8; 64]);
    let mut used = 0usize;
    let mut bits = 0u64;
    for &byte in parts.iter().flat_map(|p| p.iter()) {
        if let Some(slot) = block.get_mut(used) {
            *slot = byte;
        }
        used += 1;
        bits = bits.wrapping_add(8);
        if used == 64 {
            compress(&mut state, &block);
            used = 0;
        }
    }
    // Padding: 0x80, zeros, the length in bits in the last 8 bytes, over
    // one block or two.
    if let Some(slot) = block.get_mut(used) {
        *slot = 0x80;
    }
    if let Some(rest) = block.get_mut(used + 1..) {
        rest.fill(0);
    }
    if used >= 56 {
        compress(&mut state, &block);
        block.fill(0);
    }
    if let Some(len) = block.last_chunk_mut::<8>() {
        *len = bits.to_be_bytes();
    }
    compress(&mut state, &block);
    let mut out = [0u8; 20];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    state.zeroize();
    out
}

/// HMAC-SHA1 of `message` under `key` (RFC 2104; any key length).
pub(crate) fn hmac_sha1(key: &[u8], message: &[u8]) -> [u8; 20] {
    let mut padded = Zeroizing::new([0u8; 64]);
    if key.len() > 64 {
        let digest = Zeroizing::new(sha1(&[key]));
        if let Some(head) = padded.get_mut(..20) {
            head.copy_from_slice(&*digest);
        }
    } else if let Some(head) = padded.get_mut(..key.len()) {
        head.copy_from_slice(key);
    }
    let mut pad = Zeroizing::new([0u8; 64]);
    for (p, k) in pad.iter_mut().zip(padded.iter()) {
        *p = k ^ 0x36;
    }
    let inner = Zeroizing::new(sha1(&[&pad[..], message]));
    for (p, k) in pad.iter_mut().zip(padded.iter()) {
        *p = k ^ 0x5c;
    }
    sha1(&[&pad[..], &inner[..]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use hmac::{Hmac, KeyInit, Mac};
    use proptest::prelude::*;
    use sha1::{Digest, Sha1};

    #[test]
    fn fips_180_vectors() {
        assert_eq!(hex::encode(sha1(&[b"abc"])), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hex::encode(sha1(&[b""])), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let two_blocks = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex::encode(sha1(&[two_blocks])), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        let million = vec![b'a'; 1_000_000];
        assert_eq!(hex::encode(sha1(&[&million])), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    }

    #[test]
    fn rfc2202_vectors() {
        assert_eq!(
            hex::encode(hmac_sha1(&[0x0b; 20], b"Hi There")),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        assert_eq!(
            hex::encode(hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        // A key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha1(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    proptest! {
        #[test]
        fn matches_the_sha1_and_hmac_crates(
            key in proptest::collection::vec(any::<u8>(), 0..160),
            message in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            prop_assert_eq!(&sha1(&[&message])[..], &Sha1::digest(&message)[..]);
            let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&key).unwrap();
            mac.update(&message);
            prop_assert_eq!(&hmac_sha1(&key, &message)[..], &mac.finalize().into_bytes()[..]);
        }
    }
}
