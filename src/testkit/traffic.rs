//! Seeded synthetic traffic for the judge's bench and property tests: a splitmix64 stream with
//! a uniform draw and a binomial one (inversion: cheap for the small counts of one tick).

pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Binomial(n, p) by inversion of its CDF.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 || n == 0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        let u = self.unit();
        let q = 1.0 - p;
        let mut pmf = q.powi(i32::try_from(n).unwrap_or(i32::MAX));
        let mut cdf = pmf;
        let mut k = 0u64;
        while u > cdf && k < n {
            pmf *= (n - k) as f64 / (k + 1) as f64 * p / q;
            k += 1;
            cdf += pmf;
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_draws_have_the_right_mean() {
        let mut r = Rng(1);
        let n = 20_000u64;
        let total: u64 = (0..n).map(|_| r.binomial(20, 0.1)).sum();
        let mean = total as f64 / n as f64;
        assert!((mean - 2.0).abs() < 0.05, "{mean}");
        assert_eq!(r.binomial(5, 1.0), 5);
        assert_eq!(r.binomial(5, 0.0), 0);
    }
}
