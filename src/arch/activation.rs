//! Vectorized activations for the band pass, written once in safe Rust over fixed chunks and
//! compiled under each tier's features (as the depthwise kernel is). `exp` and `erf` are
//! polynomial approximations that LLVM vectorizes; libm's scalar `erff` cost 20 ns an element
//! and made gelu take 32 of wav2vec2.conv0's 36 ms. The x86 tiers write the activations
//! that divide (gelu's erf and the sigmoid family) by hand with the same approximations and
//! a reciprocal estimate refined by Newton steps in place of the division (the division's
//! unit bounded them); the tests hold every tier's kernel to the f64 definitions.
//!
//! Accuracy (tested against f64 over [-30, 30]): exp relative error < 3e-7 (Cody-Waite
//! reduction, degree-6 polynomial); erf absolute error < 1e-6 (a rational minimax form).
//! Activations stay far inside SPEC's 1e-4 x S.

use crate::epilogue::Activation;

const CHUNK: usize = 16;

/// The input range of [`exp_approx`] (results stay normal and finite).
pub(crate) const EXP_CLAMP: (f32, f32) = (-87.3, 88.7);
/// ln 2 split into a part exact in f32 and the rest (r = x - n ln 2 in two steps).
pub(crate) const LN2_HI: f32 = 0.693_145_75;
/// The rest of ln 2 past [`LN2_HI`].
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
/// Taylor coefficients of e^r, 1/6!, 1/5!, .. 1/1!, 1/0! (Horner order): truncation error <
/// 2e-7 relative on |r| <= 0.347.
pub(crate) const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// Below this, sigmoid is exactly 0 (e^-x has left f32), so that silu(-inf) = -inf * 0 = NaN
/// as in the reference instead of -inf times a denormal.
pub(crate) const SIGMOID_ZERO_BELOW: f32 = -88.0;
/// gelu_tanh(x) = x sigmoid(2 K (x + C x^3)), K = sqrt(2 / pi).
pub(crate) const GELU_TANH_K: f32 = 0.797_884_6;
/// The cubic coefficient of gelu_tanh.
pub(crate) const GELU_TANH_C: f32 = 0.044_715;

/// e^x for finite x: x = n ln2 + r, |r| <= ln2 / 2, e^r by a degree-6 polynomial, 2^n through
/// the exponent bits. Inputs are clamped to [`EXP_CLAMP`].
#[inline(always)]
fn exp_approx(x: f32, fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let x = x.clamp(EXP_CLAMP.0, EXP_CLAMP.1);
    // n = round(x / ln2) with the 1.5 * 2^23 trick (round to nearest even, branch-free).
    // The integer n is also read from t's bits (t = magic + n exactly, so its bit pattern
    // is magic's plus n): integer ops that vectorize, unlike the saturating `as i32`.
    let magic = 12_582_912.0f32;
    let t = fma(x, std::f32::consts::LOG2_E, magic);
    let n = t - magic;
    let n_int = t.to_bits().wrapping_sub(magic.to_bits());
    // r = x - n ln2, with ln2 split into a part exact in f32 and the rest.
    let r = fma(-n, LN2_LO, fma(-n, LN2_HI, x));
    // Horner with `fma` (one instruction a step where the tier has FMA).
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| fma(r, p, c));
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    p * scale
}

/// The numerator of [`erf_approx`]'s x P(x^2) / Q(x^2), highest power first.
pub(crate) const ERF_P: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906e-4,
    -2.954_6e-3,
    -1.609_603_3e-2,
];
/// The denominator of [`erf_approx`], highest power first.
pub(crate) const ERF_Q: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];

/// erf(x) as a rational function x P(x^2) / Q(x^2) on [-4, 4] (beyond, erf is +-1 in f32):
/// degree 13 / 12, the minimax coefficients Eigen and TensorFlow publish for single
/// precision. No exp and one division: about half the work of the Abramowitz & Stegun form
/// with its exp, which made gelu cost 4.5 cycles an element (half of wav2vec2.conv0).
#[inline(always)]
fn erf_approx(x: f32, fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ERF_P.iter().skip(1).fold(ERF_P[0], |p, &c| fma(p, x2, c));
    let q = ERF_Q.iter().skip(1).fold(ERF_Q[0], |q, &c| fma(q, x2, c));
    // Exactly +-1 at the clamp, as f64 erf is there: then gelu(-inf) = -inf * 0 = NaN like
    // the reference, rather than -inf times a tiny residue.
    let r = x * p / q;
    if x.abs() >= 4.0 {
        1.0f32.copysign(x)
    } else {
        r
    }
}

#[inline(always)]
fn sigmoid_approx(x: f32, fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let s = 1.0 / (1.0 + exp_approx(-x, fma));
    if x < SIGMOID_ZERO_BELOW {
        0.0
    } else {
        s
    }
}

/// Rows of a tile, each `len` floats, row `i` at `ptr + i * stride`: what one activation call
/// maps over. A GEMM tile's rows are not one slice (other tasks own the columns between
/// them), and a call per row cost its set-up (entry, checks, the polynomial constants) for
/// every 16 floats: 40 cycles a row, more than the gelu itself on wav2vec2.conv0.
pub struct RowsMut<'a> {
    ptr: *mut f32,
    stride: usize,
    rows: usize,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> RowsMut<'a> {
    /// One row: the whole slice.
    pub fn from_slice(data: &'a mut [f32]) -> Self {
        RowsMut {
            ptr: data.as_mut_ptr(),
            stride: data.len(),
            rows: 1,
            len: data.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// `rows` rows of `len` floats, row `i` at `ptr + i * stride`.
    ///
    /// # Safety
    /// For the lifetime `'a`, every row must be valid for reads and writes and touched by no
    /// one else (no other reference, no other thread).
    pub(crate) unsafe fn from_raw(ptr: *mut f32, stride: usize, rows: usize, len: usize) -> Self {
        RowsMut {
            ptr,
            stride,
            rows,
            len,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Calls `f` on each row in turn.
    #[inline(always)]
    pub(crate) fn for_each(self, mut f: impl FnMut(&mut [f32])) {
        for i in 0..self.rows {
            // SAFETY: the constructor's contract: row i is `len` valid floats this value
            // borrows exclusively; rows are handed out one at a time.
            let row =
                unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.len) };
            f(row);
        }
    }
}

/// Maps `f` over every row in fixed chunks (the loop LLVM vectorizes); NaN passes through.
#[inline(always)]
fn map(rows: RowsMut<'_>, f: impl Fn(f32) -> f32) {
    // NaN lanes give x + x (a NaN, quieted), not x itself: with `x` LLVM saw that those
    // lanes keep their memory value and stored the chunk with a masked store (vmaskmovps),
    // microcoded on AMD: a third of gelu's time on wav2vec2.conv0.
    let g = |x: f32| if x.is_nan() { x + x } else { f(x) };
    rows.for_each(|data| {
        let mut chunks = data.chunks_exact_mut(CHUNK);
        for c in &mut chunks {
            let c: &mut [f32; CHUNK] = c.try_into().expect("chunks_exact yields CHUNK");
            // Compute into a register array and store it whole: selecting NaN inputs in place
            // compiled to a masked store (vmaskmovps), microcoded and slow on AMD.
            let inp = *c;
            let mut out = [0f32; CHUNK];
            for j in 0..CHUNK {
                out[j] = g(inp[j]);
            }
            *c = out;
        }
        for v in chunks.into_remainder() {
            *v = g(*v);
        }
    });
}

/// Applies `act` in place at the build's baseline (no FMA: there `mul_add` is a libm call).
pub(crate) fn apply_generic(act: Activation, data: RowsMut<'_>) {
    apply_generic_with(act, data, |a, b, c| a * b + c)
}

/// Applies `act` in place; the generic body each tier compiles, with `fma` a fused
/// multiply-add where the tier has one (the polynomials are Horner chains: with separate
/// multiplies and adds, perf put gelu at half of wav2vec2.conv0). The match is outside the
/// element loop so that each arm's loop vectorizes (inside, it ran scalar).
#[inline(always)]
pub(crate) fn apply_generic_with(
    act: Activation,
    data: RowsMut<'_>,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    match act {
        Activation::Sigmoid => map(data, |x| sigmoid_approx(x, fma)),
        Activation::Tanh => map(data, |x| 2.0 * sigmoid_approx(2.0 * x, fma) - 1.0),
        Activation::Silu => map(data, |x| x * sigmoid_approx(x, fma)),
        Activation::Gelu => map(data, |x| {
            0.5 * x * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2, fma))
        }),
        Activation::GeluTanh => map(data, |x| {
            let inner = GELU_TANH_K * (x + GELU_TANH_C * x * x * x);
            x * sigmoid_approx(2.0 * inner, fma)
        }),
        // Written without a select that keeps x (which compiled to masked stores, as above).
        Activation::LeakyRelu { alpha } => map(data, |x| x.min(0.0) * alpha + x.max(0.0)),
        other => map(data, |x| other.apply(x)),
    }
}

/// An activation kernel descriptor.
/// Only convkit builds these (`#[non_exhaustive]`): its safe doors trust a descriptor's
/// function to honour the kernel contract.
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct ActUkernel {
    /// Canonical name, `f32_act__{isa}`.
    pub name: &'static str,
    /// The tier.
    pub isa: crate::arch::Isa,
    /// The kernel, over a slice ([`RowsMut::from_slice`]) or a tile's rows.
    pub run: fn(Activation, RowsMut<'_>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both forms the tiers compile: separate multiply and add (the baseline) and fused.
    #[test]
    fn approximations_against_f64() {
        check_approximations(|a, b, c| a * b + c);
        check_approximations(f32::mul_add);
    }

    fn check_approximations(fma: impl Fn(f32, f32, f32) -> f32 + Copy) {
        let mut worst = (0f64, 0f64);
        for i in -30_000..=30_000 {
            let x = i as f32 * 1e-3;
            let e = exp_approx(x, fma) as f64;
            let want = (x as f64).exp();
            worst.0 = worst.0.max(((e - want) / want).abs());
            worst.1 = worst
                .1
                .max((erf_approx(x, fma) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst.0 < 3e-7, "exp relative error {}", worst.0);
        assert!(worst.1 < 1e-6, "erf absolute error {}", worst.1);
    }

    #[test]
    fn every_activation_close_to_the_f64_definition_and_nan_safe() {
        let acts = [
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Silu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::LeakyRelu { alpha: 0.2 },
            Activation::Relu6,
        ];
        // A dense stretch of [-8, 8) first (every piece of AVX-512's erf, 1e-4 apart; a
        // multiple of 16 floats, so the tails below are unchanged), then [-100, 100].
        let xs: Vec<f32> = (-80_000..80_000)
            .map(|i| i as f32 * 1e-4)
            .chain((-4000..=4000).map(|i| i as f32 * 0.025))
            .chain([f32::NAN, 1e-40, -1e-40, 1e30, -1e30, f32::INFINITY])
            .chain([f32::NEG_INFINITY, 0.75])
            .collect();
        // The baseline body, and each tier's kernel this CPU runs (AVX-512's and AVX2's
        // divisions are their own code); 168,009 values, so that a 16- and an 8-lane kernel
        // each end on a tail (9 and 1 floats).
        type Apply = Box<dyn Fn(Activation, RowsMut<'_>)>;
        let mut appliers: Vec<(String, Apply)> =
            vec![("generic".into(), Box::new(apply_generic) as Apply)];
        for isa in crate::arch::available_isas() {
            let kernel = isa.kernels().expect("available").activation;
            appliers.push((kernel.name.into(), Box::new(move |a, d| (kernel.run)(a, d))));
        }
        for (act, (name, apply)) in acts
            .iter()
            .flat_map(|&a| appliers.iter().map(move |ap| (a, ap)))
        {
            let mut y = xs.clone();
            apply(act, RowsMut::from_slice(&mut y));
            for (&x, &v) in xs.iter().zip(&y) {
                let want = act.apply(x as f64);
                if x.is_nan() {
                    assert!(v.is_nan(), "{name} {act:?}: NaN must propagate");
                    continue;
                }
                // At +-inf the reference is exact: +-inf, a finite limit, or NaN (-inf x 0
                // for silu, gelu and gelu_tanh at -inf), and so must the kernel be.
                if x.is_infinite() {
                    assert!(
                        (want.is_nan() && v.is_nan()) || v as f64 == want,
                        "{name} {act:?}({x}) = {v}, want {want}"
                    );
                    continue;
                }
                let tol = 1e-6 * (x.abs() as f64).max(1.0);
                assert!(
                    (v as f64 - want).abs() <= tol,
                    "{name} {act:?}({x}) = {v}, want {want}"
                );
            }
        }
    }
}
