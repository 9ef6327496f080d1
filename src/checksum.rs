//! The integrity checksum that closes every shared-data record (a 64-bit trailer).
//!
//! Word-at-a-time multiply-xorshift over four independent lanes (for speed: a full window of
//! tallies is ~18 kB and is encoded on every publish and decoded on every analyser tick;
//! byte-wise CRC-32C or FNV-1a cost several times the encoding itself), the lanes folded with
//! the length, the tail words, and a final avalanche. Every step is a bijection of the running
//! value for a fixed input word, and of the input word for a fixed running value, so any change
//! confined to one 8-byte word (any single-byte change, any bit flip) always changes the
//! checksum; other corruptions go unnoticed with a probability of about 2^-64. It guards
//! against corruption, not against an attacker (only code in the same VM writes shared data).

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The top bits of a product depend on every input bit but barely change its bottom ones: the
/// shift folds them back down, so a one-bit change never leaves a one-bit difference that the
/// next word's one-bit change could cancel (as it could after a rotation).
#[inline(always)]
fn step(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(K);
    x ^ (x >> 32)
}

/// MurmurHash3's 64-bit finaliser (a bijection).
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline(always)]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The last 1 to 7 bytes as a zero-padded little-endian word (no memcpy call).
fn partial(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |w, b| (w << 8) | u64::from(*b))
}

pub fn checksum(bytes: &[u8]) -> u64 {
    let (mut a, mut b, mut c, mut d) = (K, K.rotate_left(16), K.rotate_left(32), K.rotate_left(48));
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        a = step(a, word_at(block, 0));
        b = step(b, word_at(block, 8));
        c = step(c, word_at(block, 16));
        d = step(d, word_at(block, 24));
    }
    // Lanes are folded in parallel, each through its own multiply (so that two flips in two
    // places cannot cancel by a plain XOR); the length tells a zero-padded tail from zeros.
    let m = K | 2;
    let mut h = (bytes.len() as u64).wrapping_mul(K)
        ^ a.wrapping_mul(m)
        ^ b.wrapping_mul(m).rotate_left(16)
        ^ c.wrapping_mul(m).rotate_left(32)
        ^ d.wrapping_mul(m).rotate_left(48);
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        h = step(h, word_at(w, 0));
    }
    if !words.remainder().is_empty() {
        h = step(h, partial(words.remainder()));
    }
    avalanche(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_length_and_every_byte() {
        assert_ne!(checksum(b""), checksum(b"\0"));
        assert_ne!(checksum(b"\0"), checksum(b"\0\0"));
        // Every position (lanes, tail words, a partial last word), every bit.
        let base: Vec<u8> = (0..77u8).collect();
        let sum = checksum(&base);
        for i in 0..base.len() {
            for bit in 0..8 {
                let mut v = base.clone();
                v[i] ^= 1 << bit;
                assert_ne!(checksum(&v), sum, "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn every_pair_of_bit_flips_is_detected() {
        // 80 bytes: two lane blocks and two tail words (a state record is ~50 bytes). A plain multiply
        // chain lets a top-bit flip in one word cancel one in the next; a plain XOR fold lets a
        // lane's flip cancel a tail word's. Exhaustive over all 2-bit errors.
        let base: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(37)).collect();
        let sum = checksum(&base);
        let bits = base.len() * 8;
        for a in 0..bits {
            for b in a + 1..bits {
                let mut v = base.clone();
                v[a / 8] ^= 1 << (a % 8);
                v[b / 8] ^= 1 << (b % 8);
                assert_ne!(checksum(&v), sum, "bits {a} and {b}");
            }
        }
    }

    #[test]
    fn is_stable() {
        // The stored format depends on it: a change here is a codec version change. Values from
        // an independent implementation (a few lines of Python).
        assert_eq!(checksum(b""), 0xdfe9_6fe0_7d2e_8166);
        assert_eq!(checksum(b"canary-guard"), 0x5a6a_e99f_ef1b_7a0d);
        let ramp: Vec<u8> = (0..100).collect();
        assert_eq!(checksum(&ramp), 0x5659_a776_cb76_d173);
    }
}
