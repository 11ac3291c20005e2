//! Pooling of conv output rows while they are in cache: one channel plane of a band at a
//! time, separable (the window's rows reduced elementwise into one row, then each window's
//! columns), the same definitions as the reference in f32.
//!
//! [`pool_plane`] is generic safe Rust; each tier compiles it under its target features
//! (`arch::pool_kernel!`), so the elementwise passes run in the tier's vectors (SSE2 at the
//! baseline took twice the instructions per element of the NaN-propagating max).

use crate::geometry::PoolDim;

/// What one plane's pooling needs to know.
#[derive(Copy, Clone, Debug)]
pub struct PlaneArgs {
    /// Pool windows per dim (`[h, w]`).
    pub dims: [PoolDim; 2],
    /// Max (else average).
    pub is_max: bool,
    /// Average counts the padding.
    pub count_include_pad: bool,
    /// Conv output size `[oh, ow]`.
    pub conv_out: [usize; 2],
    /// Pooled output size `[ph, pw]`.
    pub output: [usize; 2],
    /// The conv rows the band holds start at `r0`.
    pub r0: usize,
    /// Pooled rows `p0..p1` to produce.
    pub p0: usize,
    /// End of the pooled rows.
    pub p1: usize,
    /// The tier's strided gather.
    pub gather: crate::arch::GatherFn,
    /// The tier's transpose.
    pub transpose: crate::arch::TransposeFn,
}

/// The plane-pooling entry of a tier: `(args, plane rows of the band, pooled plane)`.
pub type PoolPlaneFn = fn(&PlaneArgs, &[f32], &mut [f32]);

/// The channels-last pooling entry of a tier: `(args, band, channels, out, plane_stride,
/// nhwc_out)`; see [`pool_channels_last`].
pub type PoolChannelsLastFn = fn(&PlaneArgs, &[f32], usize, &mut [f32], usize, bool);

/// `acc[i] = op(acc[i], v[i])`: `max_nan` for max pools, `+` for average pools (a loop
/// per operation, so each vectorizes).
#[inline(always)]
fn fold_into(acc: &mut [f32], v: &[f32], is_max: bool) {
    if is_max {
        for (a, &v) in acc.iter_mut().zip(v) {
            *a = crate::epilogue::max_nan(*a, v);
        }
    } else {
        for (a, &v) in acc.iter_mut().zip(v) {
            *a += v;
        }
    }
}

/// `max_nan` of `acc` and every element of `xs`, in 16 independent lanes: folded element by
/// element, a global max is one dependency chain of a compare and two selects an element
/// (textcnn.k3's 100 x 254 outputs took a tenth of its two-thread run on the calling thread).
/// The maximum is the same set's whichever the order; only the sign of a zero maximum and
/// the payload of a NaN may come out otherwise.
pub fn fold_max(acc: f32, xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = crate::epilogue::max_nan(*l, x);
        }
    }
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(acc, crate::epilogue::max_nan);
    lanes.iter().copied().fold(rest, crate::epilogue::max_nan)
}

/// The sum of `xs` in 16 lanes (then the lanes in order), as [`fold_max`] folds.
pub fn sum_lanes(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l += x;
        }
    }
    let rest: f32 = chunks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + rest
}

/// The window of pooled index `p` along one dim, clipped to `0..n` (`k` taps at stride `s`
/// from `p s - pad`).
#[inline(always)]
fn window(p: usize, s: usize, pad: usize, k: usize, n: usize) -> std::ops::Range<usize> {
    let lo = (p * s) as isize - pad as isize;
    lo.max(0) as usize..((lo + k as isize).min(n as isize)).max(0) as usize
}

/// Pools a channels-last band (`band[((y - r0) * ow + x) * channels + c]`, the layout
/// `direct_oc` stores without transposing its tiles): pooled rows `p0..p1` of every channel,
/// pixel `px` of row `py` of channel `ch` at `out[ch * plane_stride + (py - p0) * pw + px]`
/// (`out` from row `p0` of the pooled planes, or a task's own rows), or with `nhwc_out` at
/// `out[((py - p0) * pw + px) * channels + ch]` (the pooled rows as they are, no transpose).
///
/// Separable as [`pool_plane`], in the same order (the window's rows reduced elementwise,
/// then its columns; first element copied, then `max_nan` or `+`), but every pass runs over
/// whole pixels of `channels` contiguous floats: the window's rows are one elementwise pass
/// over `ow * channels` floats, each pooled pixel an elementwise pass over `channels`. Only
/// the pooled row is transposed into the planes (a quarter of the conv outputs at stride 2).
#[inline(always)]
pub fn pool_channels_last(
    args: &PlaneArgs,
    band: &[f32],
    channels: usize,
    out: &mut [f32],
    plane_stride: usize,
    nhwc_out: bool,
) {
    let PlaneArgs {
        dims: d,
        is_max,
        count_include_pad: cip,
        conv_out: [oh, ow],
        output: [_, pw],
        r0,
        p0,
        p1,
        gather: _,
        transpose,
    } = *args;
    let c = channels;
    let row_len = ow * c;
    if p1 <= p0 || c == 0 {
        return;
    }
    let need = if nhwc_out {
        (p1 - p0) * pw * c
    } else {
        (c - 1) * plane_stride + (p1 - p0) * pw
    };
    assert!(
        out.len() >= need,
        "pooled output shorter than {c} channels of {} rows",
        p1 - p0
    );
    // The window's rows reduced ([ow][c]) and the pooled row ([pw][c]).
    // From the per-thread scratch: 64-byte aligned (whole-line vector loads) and not
    // allocated afresh per call.
    let mut rows = crate::tensor::take_scratch(row_len);
    let mut pooled = crate::tensor::take_scratch(pw * c);
    let (k, sx, pl) = (d[1].size, d[1].stride, d[1].pad_before);
    // What an empty window pools to (as the reference: the fold's start).
    let empty = if is_max { f32::NEG_INFINITY } else { 0.0 };
    let conv_row = |y: usize| &band[(y - r0) * row_len..(y - r0 + 1) * row_len];
    for py in p0..p1 {
        let ys = window(py, d[0].stride, d[0].pad_before, d[0].size, oh);
        // The first two rows reduced straight into `rows` (no copy of the first).
        let mut ys_rest = ys.clone();
        match (ys_rest.next(), ys_rest.next()) {
            (Some(a), Some(b)) => {
                let (a, b) = (conv_row(a), conv_row(b));
                if is_max {
                    for ((r, &u), &v) in rows.iter_mut().zip(a).zip(b) {
                        *r = crate::epilogue::max_nan(u, v);
                    }
                } else {
                    for ((r, &u), &v) in rows.iter_mut().zip(a).zip(b) {
                        *r = u + v;
                    }
                }
            }
            (Some(a), None) => rows.copy_from_slice(conv_row(a)),
            _ => rows.fill(empty),
        }
        for y in ys_rest {
            fold_into(&mut rows, conv_row(y), is_max);
        }
        for (px, dst) in pooled.chunks_exact_mut(c).enumerate() {
            let xs = window(px, sx, pl, k, ow);
            match xs.clone().next() {
                Some(first) => dst.copy_from_slice(&rows[first * c..(first + 1) * c]),
                None => dst.fill(empty),
            }
            for x in xs.clone().skip(1) {
                fold_into(dst, &rows[x * c..(x + 1) * c], is_max);
            }
            if !is_max {
                let count = if cip {
                    d[0].size * d[1].size
                } else {
                    ys.len() * xs.len()
                } as f32;
                for a in dst.iter_mut() {
                    *a /= count;
                }
            }
        }
        if nhwc_out {
            out[(py - p0) * pw * c..][..pw * c].copy_from_slice(&pooled);
        } else {
            // [pw][c] into row py of each of the c planes.
            transpose(&pooled, pw, c, &mut out[(py - p0) * pw..], plane_stride);
        }
    }
    crate::tensor::give_scratch(rows);
    crate::tensor::give_scratch(pooled);
}

/// Pools one channel: `plane` holds conv rows `r0..` (`[rows][ow]`), `o` the pooled plane
/// (`[ph][pw]`), of which rows `p0..p1` are written.
#[inline(always)]
pub fn pool_plane(args: &PlaneArgs, plane: &[f32], o: &mut [f32]) {
    let PlaneArgs {
        dims: d,
        is_max,
        count_include_pad: cip,
        conv_out: [oh, ow],
        output: [_, pw],
        r0,
        p0,
        p1,
        gather,
        transpose: _,
    } = *args;
    let mut acc = vec![0f32; ow];
    let (k, sx, pl) = (d[1].size, d[1].stride, d[1].pad_before);
    // The window row `acc` split into its `sx` column phases,
    // phase r = acc[r], acc[r + sx], ... (with the tier's strided gather), so
    // that each of the k taps of the interior outputs is one contiguous
    // elementwise pass: output px, tap j reads acc[px sx - pl + j]. (A sliding
    // reduction over every column then a scalar pick of every sx-th was a
    // fifth of resnet50.conv1 with its pool.)
    let phase_len = ow.div_ceil(sx);
    let mut phases = vec![0f32; if sx > 1 { sx * phase_len } else { 0 }];
    for py in p0..p1 {
        let ys = window(py, d[0].stride, d[0].pad_before, d[0].size, oh);
        let conv_row = |y: usize| &plane[(y - r0) * ow..(y - r0 + 1) * ow];
        match ys.clone().next() {
            Some(first) => acc.copy_from_slice(conv_row(first)),
            None => acc.fill(if is_max { f32::NEG_INFINITY } else { 0.0 }),
        }
        for y in ys.clone().skip(1) {
            fold_into(&mut acc, conv_row(y), is_max);
        }
        // Interior outputs (their window inside the row): px in lo..hi.
        let lo = pl.div_ceil(sx).min(pw);
        let hi = if ow + pl >= k {
            ((ow + pl - k) / sx + 1).clamp(lo, pw)
        } else {
            lo
        };
        let orow = &mut o[py * pw..(py + 1) * pw];
        if hi > lo {
            if sx > 1 {
                for (r, ph) in phases.chunks_mut(phase_len).enumerate() {
                    let len = (ow - r.min(ow)).div_ceil(sx);
                    gather(&mut ph[..len], &acc[r.min(ow)..], sx);
                }
            }
            // Tap j of output lo + t reads column t sx + lo sx - pl + j.
            let tap = |j: usize| -> &[f32] {
                let c = lo * sx - pl + j;
                if sx > 1 {
                    let ph = &phases[(c % sx) * phase_len..][..phase_len];
                    &ph[c / sx..c / sx + (hi - lo)]
                } else {
                    &acc[c..c + (hi - lo)]
                }
            };
            let out = &mut orow[lo..hi];
            out.copy_from_slice(tap(0));
            for j in 1..k {
                fold_into(out, tap(j), is_max);
            }
            if !is_max {
                let count = if cip {
                    d[0].size * d[1].size
                } else {
                    ys.len() * k
                } as f32;
                for a in out.iter_mut() {
                    *a /= count;
                }
            }
        }
        for px in (0..lo).chain(hi..pw) {
            let xs = window(px, sx, pl, k, ow);
            orow[px] = if is_max {
                acc[xs.clone()]
                    .iter()
                    .copied()
                    .fold(f32::NEG_INFINITY, crate::epilogue::max_nan)
            } else {
                let count = if cip {
                    d[0].size * d[1].size
                } else {
                    ys.len() * xs.len()
                };
                acc[xs.clone()].iter().sum::<f32>() / count as f32
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values without zeros (whose sign the order may pick), in a fixed pseudo-random order.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 100.0 - 10.005
            })
            .collect()
    }

    #[test]
    fn global_folds_in_lanes_match_the_sequential_folds() {
        for n in 0..70 {
            let xs = values(n, n as u32 + 1);
            for acc in [f32::NEG_INFINITY, -3.25, 50.0] {
                let want = xs.iter().copied().fold(acc, crate::epilogue::max_nan);
                assert_eq!(fold_max(acc, &xs).to_bits(), want.to_bits(), "max, n = {n}");
            }
            let want: f64 = xs.iter().map(|&x| x as f64).sum();
            let scale: f64 = xs.iter().map(|&x| x.abs() as f64).sum::<f64>().max(1.0);
            let got = sum_lanes(&xs) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * scale,
                "sum, n = {n}: {got} vs {want}"
            );
            // A NaN anywhere (a lane, the remainder) makes the max NaN.
            for at in 0..n {
                let mut with_nan = xs.clone();
                with_nan[at] = f32::NAN;
                assert!(fold_max(-1.0, &with_nan).is_nan(), "n = {n}, NaN at {at}");
                assert!(sum_lanes(&with_nan).is_nan(), "n = {n}, NaN at {at}");
            }
        }
        assert!(
            fold_max(f32::NAN, &values(20, 3)).is_nan(),
            "a NaN accumulator"
        );
    }
}
