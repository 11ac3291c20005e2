//! The depthwise plane kernel, written once in safe Rust and compiled per tier: each tier's
//! file wraps `dw_plane_generic` in a `#[target_feature]` function, so the chunk loop below
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

/// Output planes one plane call computes together from the same input: the channel
/// multipliers of one input channel (wav2vec2.conv0: 1 channel x 512). Each input chunk is
/// loaded once for the four, and four planes x two vectors are eight independent FMA chains
/// (one plane's four chains at a time were latency-bound: 4 cycles a tap for 32 outputs).
pub const PLANES: usize = 4;

/// Up to [`PLANES`] output planes of one input channel (depthwise), or of `inputs` input
/// channels that each plane sums (a grouped layer's group, vectorized along the row as
/// depthwise is).
pub struct DwPlane<'a> {
    /// The padded, phase-split input channel, from its first float to the end of the image
    /// buffer (at least `max(off) + (OH - 1) * PW + OW + CHUNK` floats, checked); with
    /// `inputs > 1`, input channel `i` from `i * in_stride`.
    pub input: &'a [f32],
    /// Input channels each plane sums (1 for depthwise).
    pub inputs: usize,
    /// Floats from one input channel to the next in `input`.
    pub in_stride: usize,
    /// Per-tap offsets into `input`.
    pub offsets: &'a [usize],
    /// The planes' kernels, one after the other: `inputs` x taps weights each (OIHW order).
    pub weight: &'a [f32],
    /// Phase-plane row length.
    pub pw: usize,
    /// Output width.
    pub ow: usize,
    /// The output planes, one after the other, `OH * OW` floats each.
    pub out: &'a mut [f32],
    /// Planes in `out` (1..=[`PLANES`]).
    pub planes: usize,
    /// Each plane's bias (0 for none); entries past `planes` are ignored.
    pub bias: [f32; PLANES],
    /// Add to what `out` holds (a preloaded residual).
    pub accumulate: bool,
    /// Clamp applied after the residual.
    pub clamp: (f32, f32),
    /// An activation that is not a clamp, applied last, a segment of about [`SEGMENT`]
    /// outputs of each plane at a time while they are in L1.
    pub activation: Option<(
        crate::arch::activation::ActUkernel,
        crate::epilogue::Activation,
    )>,
}

/// Outputs of a plane computed before the activation runs over them: the `PLANES` planes'
/// segments (4 KiB) stay in L1. Applied to whole planes afterwards, gelu read wav2vec2.conv0's
/// four 3199-float planes back from L2 and took longer than the convolution.
pub const SEGMENT: usize = 256;

/// The portable body; tiers inline it under their target features, passing `fma` (a fused
/// `f32::mul_add` where the tier has FMA, `a * b + c` where it does not: there `mul_add` is a
/// libm call).
#[inline(always)]
pub(crate) fn dw_plane_generic(p: &mut DwPlane, fma: impl Fn(f32, f32, f32) -> f32 + Copy) {
    // The chunk follows the row: narrow rows (mobilenetv2.dw7: 7 columns) filled 7 of 32
    // lanes with the widest chunk. Several planes take 16 outputs each (two AVX2 vectors a
    // plane, eight accumulators for four planes: no spills).
    match (p.planes, p.ow) {
        (_, 0) => {}
        (1, 1..=8) => dw_rows::<8, 1>(p, fma),
        (1, 9..=16) => dw_rows::<16, 1>(p, fma),
        (1, _) => dw_rows::<CHUNK, 1>(p, fma),
        (2, 1..=8) => dw_rows::<8, 2>(p, fma),
        (2, _) => dw_rows::<16, 2>(p, fma),
        (3, 1..=8) => dw_rows::<8, 3>(p, fma),
        (3, _) => dw_rows::<16, 3>(p, fma),
        (4, 1..=8) => dw_rows::<8, 4>(p, fma),
        (4, _) => dw_rows::<16, 4>(p, fma),
        (n, _) => panic!("{n} planes in one depthwise call (1..={PLANES})"),
    }
}

/// `M` planes, `C` outputs of each at a time (`C` <= `CHUNK`, so the layout's slack covers
/// the reads).
#[inline(always)]
fn dw_rows<const C: usize, const M: usize>(
    p: &mut DwPlane,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let ow = p.ow;
    let (plane, oh) = checked_plane_rows(p, M, C);
    // Segments: whole rows while a row is shorter than `SEGMENT`, else `SEGMENT` columns of
    // one row (a multiple of every chunk width).
    let seg_rows = (SEGMENT / ow).max(1);
    let seg_cols = if seg_rows > 1 { ow } else { SEGMENT };
    for oy0 in (0..oh).step_by(seg_rows) {
        let oy1 = (oy0 + seg_rows).min(oh);
        for x0 in (0..ow).step_by(seg_cols) {
            let x1 = (x0 + seg_cols).min(ow);
            for oy in oy0..oy1 {
                chunks_of_row::<C, M>(p, oy, x0, x1, plane, fma);
            }
            if let Some((kernel, act)) = p.activation {
                // The segment of each plane: rows oy0..oy1 (whole rows) or columns x0..x1
                // of row oy0; either way `len` consecutive floats of each plane.
                let start = oy0 * ow + x0;
                let len = if seg_rows > 1 {
                    (oy1 - oy0) * ow
                } else {
                    x1 - x0
                };
                assert!((M - 1) * plane + start + len <= p.out.len());
                // SAFETY: the M rows (plane m's floats start + m * plane .. + len) lie inside
                // `p.out` (asserted) and do not overlap (len <= plane); `p.out` is borrowed
                // mutably here and not touched while the rows are in use.
                let rows = unsafe {
                    crate::arch::activation::RowsMut::from_raw(
                        p.out.as_mut_ptr().add(start),
                        plane,
                        M,
                        len,
                    )
                };
                (kernel.run)(act, rows);
            }
        }
    }
}

/// `(plane, oh)`: the floats of each of `m` output planes and their rows, after asserting
/// that `out` holds `m` whole planes, `weight` one weight per plane, input and tap, and that
/// every read of `c` outputs a step (the last input channel's last row, rounded up to `c`)
/// lies inside `input`. Checked arithmetic: the unchecked loads of a tier's plane kernel
/// rely on it.
pub(crate) fn checked_plane_rows(p: &DwPlane, m: usize, c: usize) -> (usize, usize) {
    let (ow, pw, taps) = (p.ow, p.pw, p.offsets.len());
    let plane = p.out.len() / m;
    let oh = plane / ow;
    let max_off = p.offsets.iter().copied().max().unwrap_or(0);
    assert!(p.inputs >= 1, "at least one input channel");
    assert!(
        Some(p.weight.len()) == m.checked_mul(p.inputs).and_then(|v| v.checked_mul(taps)),
        "one weight per tap, input and plane"
    );
    assert!(plane * m == p.out.len() && oh * ow == plane, "whole planes");
    let reads_to = (p.inputs - 1)
        .checked_mul(p.in_stride)
        .and_then(|v| v.checked_add(max_off))
        .and_then(|v| v.checked_add((oh.max(1) - 1).checked_mul(pw)?))
        .and_then(|v| v.checked_add(ow.div_ceil(c).checked_mul(c)?));
    assert!(
        reads_to.is_some_and(|end| end <= p.input.len()),
        "depthwise input shorter than its reads"
    );
    (plane, oh)
}

/// Columns `x0..x1` of output row `oy` of the `M` planes, `C` at a time.
#[inline(always)]
fn chunks_of_row<const C: usize, const M: usize>(
    p: &mut DwPlane,
    oy: usize,
    x0: usize,
    x1: usize,
    plane: usize,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let (ow, pw, taps) = (p.ow, p.pw, p.offsets.len());
    let inputs = p.inputs;
    // Plane k's taps, input by input (planes past M repeat the last; their sums are never
    // stored).
    let w = |k: usize| &p.weight[k.min(M - 1) * inputs * taps..][..inputs * taps];
    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
    let mut ox = x0;
    while ox < x1 {
        let n = C.min(x1 - ox);
        // One local array per plane, each updated by its own flat loop: one
        // `[[f32; C]; M]` indexed by plane was not vectorized at all (scalar FMAs
        // through the stack, 10x slower).
        let (mut a0, mut a1, mut a2, mut a3) = ([0f32; C], [0f32; C], [0f32; C], [0f32; C]);
        let base = oy * pw + ox;
        for i in 0..inputs {
            let from = base + i * p.in_stride;
            for (t, &off) in p.offsets.iter().enumerate() {
                let src: &[f32; C] = p.input[from + off..from + off + C]
                    .try_into()
                    .expect("CHUNK floats");
                let t = i * taps + t;
                let (k0, k1, k2, k3) = (w0[t], w1[t], w2[t], w3[t]);
                for j in 0..C {
                    a0[j] = fma(k0, src[j], a0[j]);
                }
                if M > 1 {
                    for j in 0..C {
                        a1[j] = fma(k1, src[j], a1[j]);
                    }
                }
                if M > 2 {
                    for j in 0..C {
                        a2[j] = fma(k2, src[j], a2[j]);
                    }
                }
                if M > 3 {
                    for j in 0..C {
                        a3[j] = fma(k3, src[j], a3[j]);
                    }
                }
            }
        }
        let at = oy * ow + ox;
        store_chunk(p, at, n, &a0, 0);
        if M > 1 {
            store_chunk(p, plane + at, n, &a1, 1);
        }
        if M > 2 {
            store_chunk(p, 2 * plane + at, n, &a2, 2);
        }
        if M > 3 {
            store_chunk(p, 3 * plane + at, n, &a3, 3);
        }
        ox += n;
    }
}

/// Stores `n` of the sums `acc` at `out[at..]` through plane `m`'s epilogue: bias, the
/// preloaded residual, the clamp.
#[inline(always)]
fn store_chunk<const C: usize>(p: &mut DwPlane, at: usize, n: usize, acc: &[f32; C], m: usize) {
    let (lo, hi) = p.clamp;
    let bias = p.bias[m];
    // Two selects (not an if/else-if chain) so the clamp vectorizes; NaN fails both
    // comparisons and passes through.
    let finish = |v: f32| {
        let v = if v < lo { lo } else { v };
        if v > hi {
            hi
        } else {
            v
        }
    };
    if n == C {
        // Full chunks: fixed-size loads and stores, no partial copies (those spilled the
        // sums to the stack on every chunk).
        let dst: &mut [f32; C] = (&mut p.out[at..at + C]).try_into().expect("C floats");
        let prev = if p.accumulate { *dst } else { [0f32; C] };
        let mut res = [0f32; C];
        for j in 0..C {
            res[j] = finish(acc[j] + bias + prev[j]);
        }
        *dst = res;
    } else {
        for (j, o) in p.out[at..at + n].iter_mut().enumerate() {
            let prev = if p.accumulate { *o } else { 0.0 };
            *o = finish(acc[j] + bias + prev);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Channel blocks: the second depthwise layout.
//
// The plane kernel above vectorizes along the output row, which suits wide planes
// (mobilenetv2.dw112: 112 columns) but wastes lanes and per-row work on small ones (dw7:
// 7 columns, 960 channels) and needs a phase split of every channel for stride 2 (dw56s2,
// where the split cost twice the arithmetic). Here `CB` channels are interleaved
// (`[row][col][CB]`, the NCHW8c layout XNNPACK and oneDNN use for depthwise), so one vector
// holds one pixel of `CB` channels, every tap is one FMA per vector, and stride and dilation
// are only a different step between pixels:
//
//   out[oy][ox][c] = clamp(bias[c] + sum_{ky,kx} w[ky][kx][c] * x[oy*SH + ky*DH][ox*SW + kx*DW][c])
//
// NCHW is interleaved into a padded block on the way in and back on the way out (8x8
// transposes, in registers where the tier has them).
// ---------------------------------------------------------------------------------------

/// Channels interleaved in one block: one AVX2 vector (half an AVX-512 one, which keeps the
/// blocks of the 32- and 144-channel suite layers full).
pub const CB: usize = 8;

/// Output pixels computed together: four independent FMA chains per tap hide the latency,
/// and the tap's weight vector is loaded once for the four.
const PIXELS: usize = 4;

/// One block of `CB` interleaved channels.
pub struct DwBlock<'a> {
    /// Padded, interleaved input, `[rows][pw][CB]`: row 0 is the padded row of the first
    /// output row's first tap.
    pub input: &'a [f32],
    /// Padded row length in pixels.
    pub pw: usize,
    /// Interleaved taps, `[KH * KW][CB]`.
    pub weight: &'a [f32],
    /// Kernel, stride and dilation, `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Bias per lane.
    pub bias: [f32; CB],
    /// Clamp applied last (after the residual).
    pub clamp: (f32, f32),
    /// Add what the output holds (a preloaded residual) before the clamp.
    pub accumulate: bool,
    /// Output rows and width.
    pub rows: usize,
    /// Output width.
    pub ow: usize,
    /// The output planes, one per lane: lane `c`'s pixel (oy, ox) at `c * plane_stride +
    /// oy * ow + ox`. The kernels store their pixels' lanes straight there (a transpose in
    /// registers), not into an interleaved block and a second pass (the deinterleave was
    /// 16% of mobilenetv2.dw112 before the 3x3 kernel and a quarter after).
    pub out: &'a mut [f32],
    /// Floats from one lane's output plane to the next; with `channels_last`, from one
    /// output pixel to the next.
    pub plane_stride: usize,
    /// The output is channels-last (NHWC): lane `c` of pixel (oy, ox) at `(oy * ow + ox) *
    /// plane_stride + c`, the pixel's lanes stored together. Depthwise blocks only (not
    /// broadcast, group 1).
    pub channels_last: bool,
    /// Lanes stored (`nc` of a partial block; the rest are computed and dropped).
    pub lanes: usize,
    /// The input is one channel, `[rows][pw]`, shared by every lane (the lanes are `CB`
    /// channel multipliers of it): each tap broadcasts its pixel.
    pub broadcast: bool,
    /// Channels a group (1: depthwise). Above 1 (2, 4 or 8, with as many output channels a
    /// group), the block holds `CB / group` whole groups and output lane `l` sums input
    /// lanes `l / group * group + i` for `i < group`, each with its own weights: `weight`
    /// is `[KH * KW][group][CB]`, entry `[t][i][l]` the weight of output lane `l` for its
    /// group's input `i` at tap `t`.
    pub group: usize,
}

/// The block kernel's portable body; tiers inline it under their features (see
/// [`dw_plane_generic`] for `fma`).
#[inline(always)]
pub(crate) fn dw_block_generic(p: &mut DwBlock, fma: impl Fn(f32, f32, f32) -> f32 + Copy) {
    let [kh, kw] = p.kernel;
    let oh = checked_block_rows(p);
    if oh == 0 {
        return;
    }
    if p.group > 1 {
        grouped_rows(p, oh, fma);
        return;
    }
    // 3x3 (every depthwise layer of the suite) unrolls its taps with the weights in
    // registers; other kernels loop.
    match (kh == 3 && kw == 3, p.broadcast) {
        (true, false) => rows_of_block::<true, false>(p, oh, fma),
        (false, false) => rows_of_block::<false, false>(p, oh, fma),
        (_, true) => rows_of_block::<false, true>(p, oh, fma),
    }
}

/// The block's output rows, after asserting that every read of the kernel (the last pixel
/// its taps reach, the last tap's weights) lies inside `input` and `weight`: an undersized
/// buffer fails here and not mid-plane, and the unchecked loads of the kernels rely on it.
/// Checked arithmetic throughout.
pub(crate) fn checked_block_rows(p: &DwBlock) -> usize {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let (ow, oh) = (p.ow, p.rows);
    if ow == 0 || kh == 0 || kw == 0 || oh == 0 || p.lanes == 0 {
        return 0;
    }
    // The writes: lane `lanes - 1`'s plane to its last pixel, or the last pixel's lanes.
    let out_end = if p.channels_last {
        (oh.checked_mul(ow).map(|n| n - 1))
            .and_then(|v| v.checked_mul(p.plane_stride))
            .and_then(|v| v.checked_add(p.lanes))
    } else {
        (p.lanes - 1)
            .checked_mul(p.plane_stride)
            .and_then(|v| v.checked_add(oh.checked_mul(ow)?))
    };
    assert!(
        p.lanes <= CB && out_end.is_some_and(|e| e <= p.out.len()),
        "depthwise block output shorter than its writes"
    );
    assert!(
        !p.channels_last || !p.broadcast,
        "channels-last output for depthwise and grouped blocks only"
    );
    let last = (|| {
        let row = ((oh - 1).checked_mul(sh)?).checked_add((kh - 1).checked_mul(dh)?)?;
        let col = ((ow - 1).checked_mul(sw)?).checked_add((kw - 1).checked_mul(dw)?)?;
        row.checked_mul(p.pw)?
            .checked_add(col)?
            .checked_add(1)?
            .checked_mul(if p.broadcast { 1 } else { CB })
    })();
    assert!(
        p.group == 1 || (matches!(p.group, 2 | 4 | 8) && !p.broadcast),
        "block groups of 1, 2, 4 or 8 channels (no broadcast)"
    );
    let taps = kh
        .checked_mul(kw)
        .and_then(|t| t.checked_mul(CB))
        .and_then(|t| t.checked_mul(p.group));
    assert!(
        last.is_some_and(|l| l <= p.input.len()) && taps.is_some_and(|t| t <= p.weight.len()),
        "depthwise block shorter than its reads"
    );
    oh
}

#[inline(always)]
fn rows_of_block<const K3: bool, const BCAST: bool>(
    p: &mut DwBlock,
    oh: usize,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    for oy in 0..oh {
        let mut ox = 0;
        while ox + PIXELS <= p.ow {
            block_pixels::<PIXELS, K3, BCAST>(p, oy, ox, fma);
            ox += PIXELS;
        }
        // The row's last 1..3 pixels in one call, so they still run as parallel chains
        // (one at a time, each of dw7's rows spent 3 x 9 dependent FMAs on its tail).
        match p.ow - ox {
            0 => {}
            1 => block_pixels::<1, K3, BCAST>(p, oy, ox, fma),
            2 => block_pixels::<2, K3, BCAST>(p, oy, ox, fma),
            _ => block_pixels::<3, K3, BCAST>(p, oy, ox, fma),
        }
    }
}

/// Grouped blocks (`group` > 1), pixel by pixel: the portable body behind the tiers' fast
/// kernels, and every tier's kernel for shapes they do not take.
#[inline(always)]
fn grouped_rows(p: &mut DwBlock, oh: usize, fma: impl Fn(f32, f32, f32) -> f32) {
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let gs = p.group;
    let (lo, hi) = p.clamp;
    for oy in 0..oh {
        for ox in 0..p.ow {
            let mut acc = p.bias;
            for ky in 0..kh {
                for kx in 0..kw {
                    let pixel = ((oy * sh + ky * dh) * p.pw + ox * sw + kx * dw) * CB;
                    let x = &p.input[pixel..pixel + CB];
                    let t = (ky * kw + kx) * gs;
                    for i in 0..gs {
                        let w = &p.weight[(t + i) * CB..(t + i + 1) * CB];
                        for (l, a) in acc.iter_mut().enumerate() {
                            *a = fma(w[l], x[l / gs * gs + i], *a);
                        }
                    }
                }
            }
            for (c, &a) in acc.iter().enumerate().take(p.lanes) {
                let d = if p.channels_last {
                    &mut p.out[(oy * p.ow + ox) * p.plane_stride + c]
                } else {
                    &mut p.out[c * p.plane_stride + oy * p.ow + ox]
                };
                let v = if p.accumulate { a + *d } else { a };
                // Two selects so NaN passes (as in the plane kernel).
                let t = if v < lo { lo } else { v };
                *d = if t > hi { hi } else { t };
            }
        }
    }
}

/// `CB` floats of `v` from `at`, unchecked.
///
/// # Safety
/// `at + CB <= v.len()`.
#[inline(always)]
unsafe fn lanes_at(v: &[f32], at: usize) -> [f32; CB] {
    debug_assert!(at + CB <= v.len());
    // SAFETY: the caller guarantees `CB` floats from `at`; [f32; CB] has f32's alignment.
    unsafe { v.as_ptr().add(at).cast::<[f32; CB]>().read() }
}

/// Output pixels `ox..ox + J` of row `oy` (`K3`: the kernel is 3x3; `BCAST`: one input
/// channel broadcast to the lanes).
#[inline(always)]
fn block_pixels<const J: usize, const K3: bool, const BCAST: bool>(
    p: &mut DwBlock,
    oy: usize,
    ox: usize,
    fma: impl Fn(f32, f32, f32) -> f32,
) {
    let (kh, kw) = if K3 {
        (3, 3)
    } else {
        (p.kernel[0], p.kernel[1])
    };
    let [sh, sw] = p.stride;
    let [dh, dw] = p.dilation;
    let mut acc = [p.bias; J];
    for ky in 0..kh {
        let row = (oy * sh + ky * dh) * p.pw + ox * sw;
        for kx in 0..kw {
            let t = (ky * kw + kx) * CB;
            // SAFETY: t + CB <= KH * KW * CB <= weight.len(), asserted in dw_block_generic.
            let w = unsafe { lanes_at(p.weight, t) };
            for (j, a) in acc.iter_mut().enumerate() {
                let pixel = row + j * sw + kx * dw;
                let x = if BCAST {
                    // Checked: one index per tap and pixel, as cheap as the broadcast.
                    [p.input[pixel]; CB]
                } else {
                    // SAFETY: this pixel, (oy*SH + ky*DH) * PW + (ox + j)*SW + kx*DW with oy <
                    // OH, ox + j < OW, ky < KH, kx < KW, is at most `last`, and (last + 1) * CB
                    // <= input.len() was asserted in dw_block_generic.
                    unsafe { lanes_at(p.input, pixel * CB) }
                };
                for c in 0..CB {
                    a[c] = fma(w[c], x[c], a[c]);
                }
            }
        }
    }
    let (lo, hi) = p.clamp;
    let at = oy * p.ow + ox;
    if p.channels_last {
        for (j, a) in acc.iter().enumerate() {
            let dst = &mut p.out[(at + j) * p.plane_stride..][..p.lanes];
            for (d, &v) in dst.iter_mut().zip(a) {
                let v = if p.accumulate { v + *d } else { v };
                // Two selects so NaN passes (as in the plane kernel).
                let t = if v < lo { lo } else { v };
                *d = if t > hi { hi } else { t };
            }
        }
        return;
    }
    for c in 0..p.lanes {
        let dst = &mut p.out[c * p.plane_stride + at..][..J];
        for (d, a) in dst.iter_mut().zip(&acc) {
            let v = if p.accumulate { a[c] + *d } else { a[c] };
            // Two selects so NaN passes (as in the plane kernel).
            let t = if v < lo { lo } else { v };
            *d = if t > hi { hi } else { t };
        }
    }
}

/// Moving rows of planes into an interleaved block: 8x8 transposes. Plane `c` of a block
/// starts at `c * stride` of the planes' slice. (The way back is in the kernels' stores.)
pub trait Interleave {
    /// `dst[p * CB + c] = src[c * stride + p]` for `c < nc`, `p < dst.len() / CB`; lanes
    /// `nc..CB` (a partial block) are zero.
    fn interleave(src: &[f32], nc: usize, stride: usize, dst: &mut [f32]);
}

/// Element by element: the portable and NEON tiers, and every tier's tails.
pub struct ScalarInterleave;

impl Interleave for ScalarInterleave {
    #[inline(always)]
    fn interleave(src: &[f32], nc: usize, stride: usize, dst: &mut [f32]) {
        interleave_scalar(src, nc, stride, dst, 0);
    }
}

/// Pixels `from..` of [`Interleave::interleave`], one float at a time.
#[inline(always)]
pub(crate) fn interleave_scalar(
    src: &[f32],
    nc: usize,
    stride: usize,
    dst: &mut [f32],
    from: usize,
) {
    assert!(nc <= CB, "at most CB channels");
    for (p, px) in dst.chunks_exact_mut(CB).enumerate().skip(from) {
        for (c, v) in px.iter_mut().enumerate() {
            *v = if c < nc { src[c * stride + p] } else { 0.0 };
        }
    }
}

/// A depthwise kernel descriptor: the plane kernel and the channel-block kernel with its
/// interleaving. Only convkit builds these (`#[non_exhaustive]`).
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct DwUkernel {
    /// Canonical name, `f32_dwconv_plane__{isa}`.
    pub name: &'static str,
    /// The tier.
    pub isa: crate::arch::Isa,
    /// The plane kernel.
    pub run: fn(&mut DwPlane),
    /// Canonical name of the channel-block kernel, `f32_dwconv_cb8__{isa}`.
    pub block_name: &'static str,
    /// The channel-block kernel.
    pub block: fn(&mut DwBlock),
    /// [`Interleave::interleave`] of the tier.
    pub interleave: fn(&[f32], usize, usize, &mut [f32]),
    /// The direct-plane kernel and its name, `f32_dwconv_direct__{isa}`, on tiers that have
    /// one (AVX-512: masked loads stand in for the padding).
    pub direct: Option<(&'static str, DwDirectFn)>,
    /// The channels-last kernel and its name, `f32_dwconv_nhwc16__{isa}`, on tiers that have
    /// one (AVX-512: 16 channels a zmm, read and stored where they are in NHWC).
    pub channels_last: Option<(&'static str, DwNhwcFn)>,
}

/// A direct-plane depthwise kernel ([`DwDirect`]).
pub type DwDirectFn = fn(&mut DwDirect);

/// A channels-last depthwise kernel ([`DwNhwc`]).
pub type DwNhwcFn = fn(&mut DwNhwc);

/// Channels a vector of the channels-last kernel.
pub const NHWC_LANES: usize = 16;

/// Output rows of one NHWC image of a depthwise layer with one output a channel, computed
/// where the input lies: each output pixel's `NHWC_LANES` channels are a vector, each tap
/// one load of the input pixel's channels and one FMA, no copy and no transpose (XNNPACK's
/// layout). Taps in the padding are skipped (their loads masked off).
pub struct DwNhwc<'a> {
    /// The image, `[IH][IW][C]`.
    pub input: &'a [f32],
    /// Input height and width.
    pub in_dims: [usize; 2],
    /// Channels `C` (in and out).
    pub channels: usize,
    /// The taps as [`nhwc_weights`] lays them out.
    pub weight: &'a [f32],
    /// Kernel `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Padding before, `[top, left]`.
    pub pad: [usize; 2],
    /// Output rows `[r0, r1)` computed.
    pub rows: [usize; 2],
    /// Output width.
    pub ow: usize,
    /// Output rows `r0..r1` of `[OH][OW][C]`.
    pub out: &'a mut [f32],
    /// Each channel's bias, or empty for none.
    pub bias: &'a [f32],
    /// Add what the output holds (a preloaded residual) before the clamp.
    pub accumulate: bool,
    /// Clamp applied last.
    pub clamp: (f32, f32),
}

/// The weights of the channels-last kernel: `[C / NHWC_LANES][KH * KW][NHWC_LANES]`, lane
/// `l` of block `b` holding channel `b * NHWC_LANES + l`'s tap (zero past the last channel).
pub fn nhwc_weights(g: &crate::geometry::Geometry, weight: &[f32]) -> crate::tensor::AlignedBuf {
    let (c, ka) = (g.in_channels, g.kernel_area());
    let mut out = crate::tensor::aligned_zeros(c.div_ceil(NHWC_LANES) * ka * NHWC_LANES);
    for (ch, taps) in weight.chunks_exact(ka.max(1)).enumerate().take(c) {
        let (b, l) = (ch / NHWC_LANES, ch % NHWC_LANES);
        for (t, &w) in taps.iter().enumerate() {
            out[(b * ka + t) * NHWC_LANES + l] = w;
        }
    }
    out
}

/// Asserts that every read and write of `p` lies inside its buffers (checked arithmetic);
/// returns whether there is work. The kernels' unchecked loads and stores rely on it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn checked_nhwc(p: &DwNhwc) -> bool {
    let [ih, iw] = p.in_dims;
    let [r0, r1] = p.rows;
    let c = p.channels;
    if r1 <= r0 || p.ow == 0 || c == 0 || ih == 0 || iw == 0 {
        return false;
    }
    let ka = p.kernel[0].checked_mul(p.kernel[1]);
    let image = ih.checked_mul(iw).and_then(|a| a.checked_mul(c));
    let band = (r1 - r0).checked_mul(p.ow).and_then(|a| a.checked_mul(c));
    let taps = ka.and_then(|t| t.checked_mul(c.div_ceil(NHWC_LANES) * NHWC_LANES));
    assert!(
        image.is_some_and(|n| n <= p.input.len())
            && band.is_some_and(|n| n <= p.out.len())
            && taps.is_some_and(|n| n <= p.weight.len())
            && (p.bias.is_empty() || p.bias.len() >= c)
            && p.stride.iter().all(|&s| s > 0)
            && p.dilation.iter().all(|&d| d > 0),
        "channels-last depthwise: buffers shorter than the layer"
    );
    true
}

// ---------------------------------------------------------------------------------------
// Direct planes: the third depthwise layout.
//
// Channel blocks pay for the NCHW input twice before any arithmetic: the interleave reads
// every plane and writes the block, the kernel reads the block back, and the store
// transposes again. On mobilenetv2.dw56s2 (one thread) the interleave was 55% of the time,
// whatever its shuffle count (a 24-shuffles-a-128-floats zmm network ran no faster than the
// 8x8 blocks' 24 a 64): reads, writes and re-reads through L2. A tier with masked loads that
// suppress faults (AVX-512) can read the planes where they are instead, the lanes that fall
// in the padding masked off, one plane at a time:
//
//   out[oy][ox] = clamp(bias (+ out) + sum_{ky,kx} w[ky][kx] * x[oy*S + ky - PT][ox*S + kx - PL])
//
// A step computes R output rows x 16 columns in R accumulators. Each input row the step
// reaches is loaded once and feeds every output row whose window holds it, so R = 7 rows of
// a 3x3 kernel at stride 1 load 9 rows (27 vectors) for 63 FMAs, with the nine weights in
// registers. At stride 1 tap column kx is one masked load from column ox0 + kx - PL; at
// stride 2 the 32 columns from 2 ox0 - PL + 2m (two loads) hold taps 2m (even lanes) and
// 2m + 1 (odd lanes), which a two-register permute picks out. Rows in the padding are
// skipped. While a plane computes, the next plane's rows are prefetched, a share a step.
// ---------------------------------------------------------------------------------------

/// Largest kernel side the direct kernels take (their per-tap masks are arrays of this).
pub const DIRECT_MAX_KERNEL: usize = 7;

/// Planes of a depthwise layer with one output per input channel, read where they are in the
/// NCHW input: see the section comment above.
pub struct DwDirect<'a> {
    /// The planes' input: plane `i`'s `[IH][IW]` from `i * in_stride`.
    pub input: &'a [f32],
    /// Floats from one input plane to the next (at least `IH * IW`).
    pub in_stride: usize,
    /// Input height and width.
    pub in_dims: [usize; 2],
    /// Each plane's `KH * KW` taps, one plane after the other.
    pub weight: &'a [f32],
    /// Kernel `[h, w]`, each at most [`DIRECT_MAX_KERNEL`].
    pub kernel: [usize; 2],
    /// Stride in both directions: 1 or 2.
    pub stride: usize,
    /// Padding before, `[top, left]`, less than the kernel's side.
    pub pad: [usize; 2],
    /// Output rows `[r0, r1)` computed.
    pub rows: [usize; 2],
    /// Output width.
    pub ow: usize,
    /// Plane `i`'s output rows `r0..r1` from `i * out_stride`, `(r1 - r0) * ow` floats.
    pub out: &'a mut [f32],
    /// Floats from one output plane to the next (at least `(r1 - r0) * ow`).
    pub out_stride: usize,
    /// Planes computed.
    pub planes: usize,
    /// Each plane's bias, or empty for none.
    pub bias: &'a [f32],
    /// Add what the output holds (a preloaded residual) before the clamp.
    pub accumulate: bool,
    /// Clamp applied last.
    pub clamp: (f32, f32),
}

/// Whether the direct kernels take layer `g`: depthwise with one output a channel, no
/// dilation, kernel sides up to [`DIRECT_MAX_KERNEL`] with padding before less than them,
/// stride 1 or 2 both ways.
pub fn direct_accepts(g: &crate::geometry::Geometry) -> bool {
    let [kh, kw] = g.kernel;
    let [pt, pl] = g.pad_before;
    g.is_depthwise()
        && g.cout_per_group == 1
        && g.dilation == [1, 1]
        && (1..=DIRECT_MAX_KERNEL).contains(&kh)
        && (1..=DIRECT_MAX_KERNEL).contains(&kw)
        && pt < kh
        && pl < kw
        && matches!(g.stride, [1, 1] | [2, 2])
}

/// Asserts that every read and write of `p` lies inside its buffers (checked arithmetic)
/// and that its shape is one the kernels take; returns whether there is work. The unchecked
/// (masked) loads and stores of the kernels rely on it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn checked_direct(p: &DwDirect) -> bool {
    let [ih, iw] = p.in_dims;
    let [kh, kw] = p.kernel;
    let [r0, r1] = p.rows;
    assert!(
        (1..=DIRECT_MAX_KERNEL).contains(&kh)
            && (1..=DIRECT_MAX_KERNEL).contains(&kw)
            && p.pad[0] < kh
            && p.pad[1] < kw
            && r0 <= r1
            && matches!(p.stride, 1 | 2),
        "direct depthwise: a shape its kernels do not take"
    );
    if p.planes == 0 || r1 == r0 || p.ow == 0 || ih == 0 || iw == 0 {
        return false;
    }
    let last = p.planes - 1;
    let area = ih.checked_mul(iw);
    let band = (r1 - r0).checked_mul(p.ow);
    let reads = area.and_then(|a| last.checked_mul(p.in_stride)?.checked_add(a));
    let writes = band.and_then(|b| last.checked_mul(p.out_stride)?.checked_add(b));
    assert!(
        area.is_some_and(|a| a <= p.in_stride)
            && band.is_some_and(|b| b <= p.out_stride)
            && reads.is_some_and(|r| r <= p.input.len())
            && writes.is_some_and(|w| w <= p.out.len())
            && (kh * kw)
                .checked_mul(p.planes)
                .is_some_and(|t| t <= p.weight.len())
            && (p.bias.is_empty() || p.bias.len() >= p.planes),
        "direct depthwise: buffers shorter than the planes"
    );
    true
}
