//! The depthwise plane kernel, written once in safe Rust and compiled per tier: each tier's
//! file wraps [`dw_plane_generic`] in a `#[target_feature]` function, so the chunk loop below
//! is vectorized for that tier's registers (8 lanes AVX2, 16 AVX-512, 4 NEON, SSE2 baseline
//! for portable).
//!
//! One output plane from one input plane:
//! `out[oy][ox] = clamp(bias (+ out) + sum_{ky,kx} w[ky][kx] * in[oy*SH - PT + ky*DH][ox*SW - PL + kx*DW])`.
//! Interior columns (every tap inside the row) run in chunks of `CHUNK` outputs whose
//! accumulators stay in registers across all taps; border columns take a checked scalar path.

use crate::geometry::Geometry;

/// Outputs computed together in registers (two AVX2 vectors, one AVX-512 vector).
const CHUNK: usize = 16;

/// One depthwise plane.
pub struct DwPlane<'a> {
    /// The layer (kernel, stride, dilation, padding, sizes).
    pub g: &'a Geometry,
    /// The input plane, `H * W` floats.
    pub input: &'a [f32],
    /// The plane's kernel, `KH * KW` floats.
    pub weight: &'a [f32],
    /// The output plane, `OH * OW` floats.
    pub out: &'a mut [f32],
    /// The plane's bias (0 for none).
    pub bias: f32,
    /// Add to what `out` holds (a preloaded residual).
    pub accumulate: bool,
    /// Clamp applied last.
    pub clamp: (f32, f32),
}

/// The portable body; tiers inline it under their target features.
#[inline(always)]
pub(crate) fn dw_plane_generic(p: &mut DwPlane) {
    let g = p.g;
    let [ih, iw] = g.input;
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.conv_out;
    let (sh, sw) = (g.stride[0], g.stride[1]);
    let (dh, dw) = (g.dilation[0], g.dilation[1]);
    let (pt, pl) = (g.pad_before[0], g.pad_before[1]);
    let (lo, hi) = p.clamp;
    // Interior columns: ox*SW >= PL and ox*SW - PL + (KW-1)*DW < IW.
    let ox_lo = pl.div_ceil(sw).min(ow);
    let span = (kw - 1) * dw;
    let ox_hi = if iw + pl > span {
        ((iw + pl - span - 1) / sw + 1).min(ow)
    } else {
        0
    };
    let ox_hi = ox_hi.max(ox_lo);
    let input = p.input;
    // The input row that kernel row `ky` reads for output row `oy`, or None in the padding.
    let input_row = |oy: usize, ky: usize| -> Option<&[f32]> {
        let y = (oy * sh + ky * dh).checked_sub(pt)?;
        (y < ih).then(|| &input[y * iw..(y + 1) * iw])
    };
    for oy in 0..oh {
        let out_row = &mut p.out[oy * ow..(oy + 1) * ow];
        // Border columns (scalar, bounds-checked).
        let border = |ox: usize| -> f32 {
            let mut acc = 0f32;
            for ky in 0..kh {
                let Some(row) = input_row(oy, ky) else {
                    continue;
                };
                for kx in 0..kw {
                    let x = (ox * sw + kx * dw) as isize - pl as isize;
                    if x >= 0 && (x as usize) < iw {
                        acc += p.weight[ky * kw + kx] * row[x as usize];
                    }
                }
            }
            acc
        };
        for ox in (0..ox_lo).chain(ox_hi..ow) {
            let v = border(ox) + p.bias + if p.accumulate { out_row[ox] } else { 0.0 };
            out_row[ox] = crate::arch::clamp_nan(v, lo, hi);
        }
        // Interior, CHUNK outputs at a time: fixed-size accumulators, fully unrolled, stay
        // in registers across all taps (a variable-length loop here spilled them to the
        // stack and ran at ~7 cycles per FMA through store forwarding).
        let mut ox = ox_lo;
        while ox + CHUNK <= ox_hi {
            let mut acc = [0f32; CHUNK];
            for ky in 0..kh {
                let Some(row) = input_row(oy, ky) else {
                    continue;
                };
                for kx in 0..kw {
                    let w = p.weight[ky * kw + kx];
                    let x0 = ox * sw + kx * dw - pl;
                    if sw == 1 {
                        let src: &[f32; CHUNK] =
                            row[x0..x0 + CHUNK].try_into().expect("interior chunk");
                        for j in 0..CHUNK {
                            acc[j] += w * src[j];
                        }
                    } else {
                        let src = &row[x0..x0 + (CHUNK - 1) * sw + 1];
                        for j in 0..CHUNK {
                            acc[j] += w * src[j * sw];
                        }
                    }
                }
            }
            let dst: &mut [f32; CHUNK] = (&mut out_row[ox..ox + CHUNK]).try_into().expect("chunk");
            for j in 0..CHUNK {
                let v = acc[j] + p.bias + if p.accumulate { dst[j] } else { 0.0 };
                dst[j] = crate::arch::clamp_nan(v, lo, hi);
            }
            ox += CHUNK;
        }
        // The interior's tail: one output at a time, its accumulator in a register.
        for (ox, dst) in out_row.iter_mut().enumerate().take(ox_hi).skip(ox) {
            let mut acc = 0f32;
            for ky in 0..kh {
                let Some(row) = input_row(oy, ky) else {
                    continue;
                };
                let x0 = ox * sw - pl;
                for kx in 0..kw {
                    acc += p.weight[ky * kw + kx] * row[x0 + kx * dw];
                }
            }
            let v = acc + p.bias + if p.accumulate { *dst } else { 0.0 };
            *dst = crate::arch::clamp_nan(v, lo, hi);
        }
    }
}

/// A depthwise plane kernel descriptor.
/// Only convkit builds these (`#[non_exhaustive]`): its safe doors trust a descriptor's
/// function to honour the kernel contract.
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct DwUkernel {
    /// Canonical name, `f32_dwconv_plane__{isa}`.
    pub name: &'static str,
    /// The tier.
    pub isa: crate::arch::Isa,
    /// The kernel (safe: each tier's wrapper checks nothing more is needed than the
    /// availability its table guarantees).
    pub run: fn(&mut DwPlane),
}
