//! A small, version-stable random generator: xoshiro256++ seeded through SplitMix64, with
//! uniform, normal and exact Poisson draws.
//!
//! Written here rather than taken from `rand` so that a corrupted data set (`cema-shift`) and
//! the cloud's replay draws are bit-identical forever, whatever releases of third-party crates
//! come later. Every method is `#[inline]` so the pixel loops of `cema-shift`, built at full
//! optimisation even in tests, get optimised copies.

/// xoshiro256++ (Blackman & Vigna): fast, 256 bits of state, passes BigCrush.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare_normal: Option<f64>,
}

#[inline]
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for a stream identified by several keys (seed, image index, corruption, …):
    /// each distinct key tuple gives an independent stream.
    #[inline]
    pub fn for_stream(keys: &[u64]) -> Self {
        let mut state = 0x243F_6A88_85A3_08D3u64;
        for &key in keys {
            state ^= key;
            state = splitmix(&mut state);
        }
        let s = [splitmix(&mut state), splitmix(&mut state), splitmix(&mut state), splitmix(&mut state)];
        Self { s, spare_normal: None }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = (self.s[0].wrapping_add(self.s[3])).rotate_left(23).wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `lo..=hi`.
    #[inline]
    pub fn int_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1) as u64;
        // Lemire's multiply-shift; the bias for spans this small is far below 2^-50.
        lo + ((self.next_u64() as u128 * span as u128) >> 64) as i64
    }

    /// Standard normal draw (Marsaglia's polar method).
    #[inline]
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        loop {
            let u = self.uniform(-1.0, 1.0);
            let v = self.uniform(-1.0, 1.0);
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let factor = (-2.0 * s.ln() / s).sqrt();
                self.spare_normal = Some(v * factor);
                return u * factor;
            }
        }
    }

    /// Poisson draw with mean `lambda` (exact: Knuth below 10, Hörmann's PTRS above).
    #[inline]
    pub fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda < 10.0 {
            let limit = (-lambda).exp();
            let mut product = self.unit();
            let mut count = 0.0;
            while product > limit {
                product *= self.unit();
                count += 1.0;
            }
            return count;
        }
        // W. Hörmann, "The transformed rejection method for generating Poisson random
        // variables", Insurance: Mathematics and Economics 12 (1993).
        let slam = lambda.sqrt();
        let loglam = lambda.ln();
        let b = 0.931 + 2.53 * slam;
        let a = -0.059 + 0.02483 * b;
        let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
        let vr = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.unit() - 0.5;
            let v = self.unit();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + lambda + 0.43).floor();
            if us >= 0.07 && v <= vr {
                return k;
            }
            if k < 0.0 || (us < 0.013 && v > us) {
                continue;
            }
            if (v * inv_alpha / (a / (us * us) + b)).ln() <= -lambda + k * loglam - ln_gamma(k + 1.0) {
                return k;
            }
        }
    }
}

/// `ln Γ(x)` for x ≥ 1 (Stirling series; exact to ~1e-12 there).
fn ln_gamma(x: f64) -> f64 {
    if x < 7.0 {
        // Shift up so the series is accurate, then divide back.
        let mut shift = 1.0;
        let mut y = x;
        while y < 7.0 {
            shift *= y;
            y += 1.0;
        }
        return ln_gamma(y) - shift.ln();
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    (x - 0.5) * x.ln() - x
        + 0.5 * (2.0 * std::f64::consts::PI).ln()
        + inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(draws: impl Iterator<Item = f64>) -> (f64, f64) {
        let v: Vec<f64> = draws.collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        (mean, var)
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_stream(&[1, 2]);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_stream(&[1, 2]);
                move |_| r.next_u64()
            })
            .collect();
        let c = Rng::for_stream(&[2, 1]).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::for_stream(&[3]);
        let (mean, var) = moments((0..200_000).map(|_| r.normal()));
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "{mean} {var}");
    }

    #[test]
    fn poisson_mean_and_variance_equal_lambda() {
        for lambda in [0.5f64, 3.0, 12.0, 60.0, 500.0] {
            let mut r = Rng::for_stream(&[lambda.to_bits()]);
            let (mean, var) = moments((0..100_000).map(|_| r.poisson(lambda)));
            assert!((mean / lambda - 1.0).abs() < 0.02, "λ={lambda}: mean {mean}");
            assert!((var / lambda - 1.0).abs() < 0.04, "λ={lambda}: var {var}");
        }
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        for (n, fact) in [(1.0, 1.0f64), (5.0, 24.0), (10.0, 362_880.0)] {
            assert!((ln_gamma(n) - fact.ln()).abs() < 1e-10, "{n}");
        }
    }
}
