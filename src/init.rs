//! Weight initializers: zeros, Gaussian, Xavier/Glorot and He/Kaiming, uniform and normal,
//! with fans computed from the layer (groups and kernel size included). Seeded and
//! deterministic: the same (geometry, init, seed) gives the same weights on every machine.

use crate::error::{Error, Result};
use crate::geometry::Geometry;

/// How to draw the weights.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Init {
    /// All zero. It cannot break the symmetry between filters: every filter gets the same
    /// gradient, which is the point the training example makes.
    Zeros,
    /// Normal(mean, std).
    Gaussian {
        /// Mean.
        mean: f32,
        /// Standard deviation (>= 0).
        std: f32,
    },
    /// U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).
    XavierUniform {
        /// Gain (1 for linear/tanh-free, 5/3 for tanh, sqrt 2 for relu).
        gain: f32,
    },
    /// N(0, gain^2 * 2 / (fan_in + fan_out)).
    XavierNormal {
        /// Gain.
        gain: f32,
    },
    /// U(-a, a), a = sqrt(6 / fan_in): He et al. for ReLU (gain sqrt 2).
    HeUniform,
    /// N(0, 2 / fan_in).
    HeNormal,
}

/// (fan_in, fan_out) of a conv layer: each output sums over `C/g * KH * KW` inputs, and each
/// input feeds `Cout/g * KH * KW` outputs. (PyTorch's `_calculate_fan_in_and_fan_out` uses
/// `Cout * KH * KW` for fan_out, ignoring groups; dividing by groups counts the connections a
/// grouped layer really has.)
pub fn fans(g: &Geometry) -> (usize, usize) {
    let rf = g.kernel_area();
    (g.cin_per_group * rf, g.cout_per_group * rf)
}

/// A small, fast, well-tested generator: xoshiro256** seeded through SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi).
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Standard normal (Box-Muller; one value per call, the pair's second discarded for
    /// simplicity and determinism).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Fills `out` with uniform values in [lo, hi).
    pub fn fill_uniform(&mut self, out: &mut [f32], lo: f32, hi: f32) {
        for v in out {
            *v = self.uniform_in(lo as f64, hi as f64) as f32;
        }
    }
}

/// Draws a weight tensor of `g.weight_shape()` with `init`, deterministically from `seed`.
pub fn init_weights(g: &Geometry, init: Init, seed: u64) -> Result<Vec<f32>> {
    let (fan_in, fan_out) = fans(g);
    let mut w = vec![0f32; g.weight_len()];
    fill(&mut w, fan_in, fan_out, init, seed)?;
    Ok(w)
}

/// Fills `w` for a layer with the given fans (also used for linear layers).
pub fn fill(w: &mut [f32], fan_in: usize, fan_out: usize, init: Init, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let (fi, fo) = (fan_in as f64, fan_out as f64);
    match init {
        Init::Zeros => w.iter_mut().for_each(|v| *v = 0.0),
        Init::Gaussian { mean, std } => {
            if !(std >= 0.0 && std.is_finite() && mean.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "gaussian init needs a finite mean and std >= 0, got mean {mean}, std {std}"
                )));
            }
            w.iter_mut()
                .for_each(|v| *v = (mean as f64 + std as f64 * rng.normal()) as f32);
        }
        Init::XavierUniform { gain } => {
            let a = gain as f64 * (6.0 / (fi + fo)).sqrt();
            w.iter_mut().for_each(|v| *v = rng.uniform_in(-a, a) as f32);
        }
        Init::XavierNormal { gain } => {
            let s = gain as f64 * (2.0 / (fi + fo)).sqrt();
            w.iter_mut().for_each(|v| *v = (s * rng.normal()) as f32);
        }
        Init::HeUniform => {
            let a = (6.0 / fi).sqrt();
            w.iter_mut().for_each(|v| *v = rng.uniform_in(-a, a) as f32);
        }
        Init::HeNormal => {
            let s = (2.0 / fi).sqrt();
            w.iter_mut().for_each(|v| *v = (s * rng.normal()) as f32);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ConvSpec;

    fn stats(w: &[f32]) -> (f64, f64, f32, f32) {
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (mean, var, lo, hi)
    }

    fn geom() -> Geometry {
        // fan_in = 64/2 * 9 = 288, fan_out = 128/2 * 9 = 576; 128*32*9 = 36864 weights.
        Geometry::new(&ConvSpec::new(&[1, 64, 8, 8], 128, &[3, 3]).with_groups(2)).unwrap()
    }

    #[test]
    fn fans_count_groups_and_kernel() {
        assert_eq!(fans(&geom()), (288, 576));
        let g1 = Geometry::new(&ConvSpec::new(&[1, 300, 20], 100, &[3])).unwrap();
        assert_eq!(fans(&g1), (900, 300));
    }

    // Sampling tolerances: with n = 36864 samples, the standard error of the mean is
    // sigma / sqrt(n) = sigma / 192; we allow 5 standard errors. The variance estimate has
    // relative standard error sqrt(2/n) ~ 0.74% (normal) and less for uniform; we allow 5%.
    #[test]
    fn he_and_xavier_statistics_match_their_formulas() {
        let g = geom();
        let n = g.weight_len() as f64;
        let cases = [
            (Init::HeNormal, 2.0f64 / 288.0, None),
            (
                Init::HeUniform,
                6.0 / 288.0 / 3.0,
                Some((6.0f64 / 288.0).sqrt()),
            ),
            (Init::XavierNormal { gain: 1.0 }, 2.0 / 864.0, None),
            (
                Init::XavierUniform { gain: 1.0 },
                6.0 / 864.0 / 3.0,
                Some((6.0f64 / 864.0).sqrt()),
            ),
        ];
        for (init, want_var, bound) in cases {
            let w = init_weights(&g, init, 7).unwrap();
            let (mean, var, lo, hi) = stats(&w);
            assert!(
                mean.abs() < 5.0 * want_var.sqrt() / n.sqrt(),
                "{init:?}: mean {mean}"
            );
            assert!(
                (var / want_var - 1.0).abs() < 0.05,
                "{init:?}: var {var} want {want_var}"
            );
            if let Some(a) = bound {
                assert!(
                    lo as f64 >= -a && (hi as f64) < a,
                    "{init:?}: [{lo}, {hi}] outside +-{a}"
                );
                assert!(hi as f64 > 0.99 * a, "{init:?}: never came near the bound");
            }
        }
    }

    #[test]
    fn gaussian_has_its_mean_and_std_and_zeros_are_zero() {
        let w = init_weights(
            &geom(),
            Init::Gaussian {
                mean: 0.5,
                std: 2.0,
            },
            1,
        )
        .unwrap();
        let (mean, var, _, _) = stats(&w);
        assert!((mean - 0.5).abs() < 5.0 * 2.0 / 192.0, "mean {mean}");
        assert!((var / 4.0 - 1.0).abs() < 0.05, "var {var}");
        let z = init_weights(&geom(), Init::Zeros, 1).unwrap();
        assert!(z.iter().all(|&v| v == 0.0));
        assert!(init_weights(
            &geom(),
            Init::Gaussian {
                mean: 0.0,
                std: -1.0
            },
            1
        )
        .is_err());
    }

    #[test]
    fn seeded_and_deterministic() {
        let a = init_weights(&geom(), Init::HeNormal, 42).unwrap();
        let b = init_weights(&geom(), Init::HeNormal, 42).unwrap();
        let c = init_weights(&geom(), Init::HeNormal, 43).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
