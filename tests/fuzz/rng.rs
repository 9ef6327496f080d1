//! SplitMix64: deterministic, seedable, good enough to drive mutations.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; 0 gives 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.u64() % n as u64) as usize
        }
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length biased towards small values but reaching `max`.
    pub fn len(&mut self, max: usize) -> usize {
        match self.below(4) {
            0 => self.below(4),
            1 => self.below(32),
            2 => self.below(256),
            _ => self.below(max + 1),
        }
        .min(max)
    }

    /// Values that sit on the boundaries validators check.
    pub fn interesting_u64(&mut self) -> u64 {
        const V: [u64; 20] = [
            0,
            1,
            2,
            99,
            100,
            101,
            127,
            128,
            255,
            256,
            1000,
            65_535,
            65_536,
            86_400_000,
            u32::MAX as u64 - 1,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        if self.one_in(3) {
            self.u64() >> self.below(64)
        } else {
            *self.pick(&V)
        }
    }
}
