//! The hash and pseudo-random helpers: FNV-1a for identities, the SplitMix64 finaliser to
//! spread bits, and a cheap xorshift stream for per-request draws.

/// FNV-1a over `bytes`, continuing from `h` (start from `FNV_OFFSET`).
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a's 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// SplitMix64 finaliser: spreads FNV's low bits before a modulo, and whitens a seed.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Marsaglia's xorshift64 (13, 7, 17): a per-worker stream, cheap enough for every request.
/// Its output is passed through `mix64` where it is used as a draw, so low bits are good too.
#[derive(Debug, Clone)]
pub struct Xorshift64(u64);

impl Xorshift64 {
    /// A stream that starts exactly at `state` (0 is replaced, as it would stay 0).
    pub fn from_state(state: u64) -> Self {
        Xorshift64(state.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_never_sticks_at_zero_and_repeats_from_a_state() {
        let mut a = Xorshift64::from_state(0);
        assert_ne!(a.next_u64(), 0);
        let (mut x, mut y) = (Xorshift64::from_state(42), Xorshift64::from_state(42));
        assert_eq!(
            (0..5).map(|_| x.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| y.next_u64()).collect::<Vec<_>>()
        );
    }
}
