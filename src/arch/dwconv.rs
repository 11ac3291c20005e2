//! The depthwise plane kernel, written once in safe Rust and compiled per tier: each tier's
//! file wraps [`dw_plane_generic`] in a `#[target_feature]` function, so the chunk loop below
//! is vectorized for that tier's registers.
//!
//! The input channel arrives padded and, for stride > 1, split into phase planes (the layout
//! of `algo::direct::PhaseLayout`), so that for every tap the `CHUNK` outputs of a row read
//! `CHUNK` consecutive floats:
//!
//! ```text
//!   out[oy][ox + j] = clamp(bias (+ out) + sum_t w[t] * xp[off[t] + oy * PW + ox + j]),
//!   j = 0..CHUNK, off[t] = phase(t) * PH * PW + (ky*DH / SH) * PW + kx*DW / SW
//! ```
//!
//! Every output takes this path: lanes past the row's end read the next row or the slack and
//! are not stored. (A first version ran borders and row tails in scalar code and reached
//! 1.4 GFLOP/s on mobilenetv2.dw112.)

/// Outputs computed together in registers: four AVX2 vectors (two AVX-512), so four
/// independent FMA chains hide the FMA latency (with 16, the kernel was latency-bound at
/// about a third of peak).
pub const CHUNK: usize = 32;

/// One depthwise output plane.
pub struct DwPlane<'a> {
    /// The padded, phase-split input channel, from its first float to the end of the image
    /// buffer (at least `max(off) + (OH - 1) * PW + OW + CHUNK` floats, checked).
    pub input: &'a [f32],
    /// Per-tap offsets into `input`.
    pub offsets: &'a [usize],
    /// The plane's kernel, one weight per tap.
    pub weight: &'a [f32],
    /// Phase-plane row length.
    pub pw: usize,
    /// Output width.
    pub ow: usize,
    /// The output plane, `OH * OW` floats.
    pub out: &'a mut [f32],
    /// The plane's bias (0 for none).
    pub bias: f32,
    /// Add to what `out` holds (a preloaded residual).
    pub accumulate: bool,
    /// Clamp applied last.
    pub clamp: (f32, f32),
}

/// The portable body; tiers inline it under their target features, passing `fma` (a fused
/// `f32::mul_add` where the tier has FMA, `a * b + c` where it does not: there `mul_add` is a
/// libm call).
#[inline(always)]
pub(crate) fn dw_plane_generic(p: &mut DwPlane, fma: impl Fn(f32, f32, f32) -> f32) {
    // The chunk follows the row: narrow rows (mobilenetv2.dw7: 7 columns) filled 7 of 32
    // lanes with the widest chunk.
    match p.ow {
        0 => {}
        1..=8 => dw_rows::<8>(p, fma),
        9..=16 => dw_rows::<16>(p, fma),
        _ => dw_rows::<CHUNK>(p, fma),
    }
}

/// The plane, `C` outputs at a time (`C` <= `CHUNK`, so the layout's slack covers the reads).
#[inline(always)]
fn dw_rows<const C: usize>(p: &mut DwPlane, fma: impl Fn(f32, f32, f32) -> f32) {
    let (ow, pw) = (p.ow, p.pw);
    let oh = p.out.len() / ow;
    let max_off = p.offsets.iter().copied().max().unwrap_or(0);
    assert!(p.weight.len() == p.offsets.len(), "one weight per tap");
    assert!(
        max_off + (oh.max(1) - 1) * pw + ow.div_ceil(C) * C <= p.input.len(),
        "depthwise input shorter than its reads"
    );
    let (lo, hi) = p.clamp;
    for oy in 0..oh {
        let out_row = &mut p.out[oy * ow..(oy + 1) * ow];
        let mut ox = 0;
        while ox < ow {
            let n = C.min(ow - ox);
            let mut acc = [0f32; C];
            let base = oy * pw + ox;
            for (&off, &w) in p.offsets.iter().zip(p.weight) {
                let src: &[f32; C] = p.input[base + off..base + off + C]
                    .try_into()
                    .expect("CHUNK floats");
                for j in 0..C {
                    acc[j] = fma(w, src[j], acc[j]);
                }
            }
            // The epilogue over a fixed-size chunk vectorizes (a variable-length loop ran
            // scalar, a branch per lane); full chunks load and store as fixed arrays.
            let mut res = [0f32; C];
            let mut prev = [0f32; C];
            if p.accumulate {
                prev[..n].copy_from_slice(&out_row[ox..ox + n]);
            }
            // Two selects (not an if/else-if chain) so the clamp vectorizes; NaN fails both
            // comparisons and passes through.
            for j in 0..C {
                let v = acc[j] + p.bias + prev[j];
                let v = if v < lo { lo } else { v };
                res[j] = if v > hi { hi } else { v };
            }
            if n == C {
                let dst: &mut [f32; C] =
                    (&mut out_row[ox..ox + C]).try_into().expect("CHUNK floats");
                *dst = res;
            } else {
                out_row[ox..ox + n].copy_from_slice(&res[..n]);
            }
            ox += n;
        }
    }
}

/// A depthwise plane kernel descriptor.
/// Only convkit builds these (`#[non_exhaustive]`).
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct DwUkernel {
    /// Canonical name, `f32_dwconv_plane__{isa}`.
    pub name: &'static str,
    /// The tier.
    pub isa: crate::arch::Isa,
    /// The kernel.
    pub run: fn(&mut DwPlane),
}
