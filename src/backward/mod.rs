//! The backward pass: gradients w.r.t. the input (`backward_data`, also the forward pass of
//! the transposed convolution), the weights and the bias, through the activation and the
//! pool, for every geometry the forward pass accepts; a training-mode plan that keeps what
//! the backward pass needs.
//!
//! With `dz` the gradient w.r.t. the pre-activation conv output (`[Cout][P]` per image,
//! `P = OH * OW`), `K = C/g * KH * KW` and `cols = im2col(x)` (`[K][P]`), per group:
//!
//! ```text
//!   data:     cols_dx = W^T dz       (K x Cout/g times Cout/g x P, GEMM)  then col2im -> dx
//!   weights:  dW     += dz cols^T    (Cout/g x P times P x K, GEMM), summed over the batch
//!   bias:     db      = sum over n, p of dz
//! ```
//!
//! Both GEMMs run on the forward pass's packed microkernels: `W^T` is packed once per weight
//! update, `dz` is packed per image as the A of the weight GEMM, and `cols^T` is packed
//! straight from the image into B panels (`Im2colT`) without an im2col matrix in memory.
//! The data GEMM runs over bands of output rows so `cols` stays within a few megabytes.
//! Layers with very thin groups (depthwise and its neighbours, `C/g * Cout/g < 16`) run
//! plain loops instead: a GEMM with one row per group does nothing useful. The weight
//! gradient of 3x3 stride-1 layers with many tiles runs on Winograd F(4,3) instead
//! ([`backward_weights_winograd_into`], [`weights_by_winograd`]).
//!
//! Determinism: the GEMMs sum each element in the same order on any thread count, col2im
//! runs one task per input channel (a fixed order within it), the weight GEMM accumulates
//! the images in batch order, and the bias sums in f64 in a fixed order: gradients are
//! bitwise identical whatever the thread count.

mod winograd;
pub use winograd::{
    backward_weights_winograd_blocks, backward_weights_winograd_into, winograd_weights_check,
};

use crate::arch::{resolve_isa, SharedMut};
use crate::epilogue::Pool;
use crate::error::{Error, Result};
use crate::gemm::pack::PackB;
use crate::gemm::{gemm_packed, Blocking, GemmEpilogue, PackedA, StridedB};
use crate::geometry::Geometry;
use crate::kernels::GemmUkernel;
use crate::plan::{Plan, PlanOptions};
use crate::reference::{check_len, check_optional, max_pool_pick};
use crate::spec::{ConvSpec, Padding};
use crate::tensor::Layout;

/// Whether the groups are too thin for the GEMM path.
fn thin(g: &Geometry) -> bool {
    g.cin_per_group * g.cout_per_group < 16
}

/// Bytes of the `cols` band of the data gradient: 4 MiB (a few L2s; the GEMM streams it
/// once and col2im reads it once).
const COLS_BAND_BYTES: usize = 4 << 20;

/// The weights prepared for the data gradient: `W^T` per group, packed as GEMM A panels.
pub struct DataWeights {
    /// The layer the weights were packed for.
    geom: Geometry,
    uk: &'static GemmUkernel,
    blocking: Blocking,
    packed: Vec<PackedA>,
    weight: Vec<f32>,
    /// At stride 1 the data gradient is itself a forward convolution (see
    /// [`transposed_forward`]): its plan, on the fastest forward algorithm (Winograd for 3x3).
    forward: Option<Plan>,
}

/// The data gradient of a stride-1 convolution as a forward convolution: correlating `dz`
/// (`Cout` channels, padded by `d (k - 1) - p` on each side) with the kernel rotated by 180
/// degrees and its channel axes swapped per group,
///
/// ```text
///   dx[ci][y][x] = sum_{co, ky, kx} W[co][ci][ky][kx] dz[co][y + pt - ky d][x + pl - kx d]
///                = sum_{co, ky', kx'} W'[ci][co][ky'][kx'] dzpad[co][y + ky' d][x + kx' d],
///   W'[ci][co][ky'][kx'] = W[co][ci][KH-1-ky'][KW-1-kx'],  padding d (k - 1) - p.
/// ```
///
/// `None` where that padding would be negative (a padding wider than the dilated kernel).
fn transposed_forward(g: &Geometry, isa: crate::arch::Isa, weight: &[f32]) -> Option<Plan> {
    if g.stride != [1, 1] {
        return None;
    }
    let rank = g.spatial_rank;
    let dims: Vec<usize> = (2 - rank..2).collect();
    let mut padding = Vec::new();
    for &d in &dims {
        let span = g.dilation[d] * (g.kernel[d] - 1);
        padding.push((
            span.checked_sub(g.pad_before[d])?,
            span.checked_sub(g.pad_after[d])?,
        ));
    }
    let mut input = vec![g.batch, g.out_channels];
    input.extend(dims.iter().map(|&d| g.conv_out[d]));
    let kernel: Vec<usize> = dims.iter().map(|&d| g.kernel[d]).collect();
    let dilation: Vec<usize> = dims.iter().map(|&d| g.dilation[d]).collect();
    let spec = ConvSpec::new(&input, g.in_channels, &kernel)
        .with_dilation(&dilation)
        .with_padding(Padding::Explicit(padding))
        .with_groups(g.groups)
        .with_bias(false);
    let tg = Geometry::new(&spec).ok()?;
    if tg.conv_out != g.input {
        return None;
    }
    let (kh, kw) = (g.kernel[0], g.kernel[1]);
    let (cg, og) = (g.cin_per_group, g.cout_per_group);
    let mut rotated = vec![0f32; weight.len()];
    for co in 0..g.out_channels {
        let (grp, o) = (co / og, co % og);
        for ci in 0..cg {
            for ky in 0..kh {
                for kx in 0..kw {
                    let src = ((co * cg + ci) * kh + ky) * kw + kx;
                    let dst =
                        (((grp * cg + ci) * og + o) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx);
                    rotated[dst] = weight[src];
                }
            }
        }
    }
    let opts = PlanOptions {
        algo: Some(crate::plan::choose_algo(&tg).name().into()),
        isa: Some(isa.name().into()),
        ..PlanOptions::default()
    };
    Plan::new(&spec, &rotated, None, &opts).ok()
}

impl DataWeights {
    /// Packs `weight` (OIHW) for `g` with the tier's default GEMM kernel.
    pub fn new(
        g: &Geometry,
        kernels: &crate::kernels::KernelTable,
        weight: &[f32],
    ) -> Result<Self> {
        check_len("weight", weight.len(), g.weight_len())?;
        let uk = kernels.gemm_default();
        let blocking = Blocking::derive(uk, crate::sysinfo::caches());
        let k = g.cin_per_group * g.kernel_area();
        let og = g.cout_per_group;
        let packed = if thin(g) {
            Vec::new()
        } else {
            (0..g.groups)
                .map(|grp| {
                    let wg = &weight[grp * og * k..(grp + 1) * og * k];
                    // A[i][p] = W^T[i][p] = W[p][i]: K rows, Cout/g columns.
                    PackedA::pack(k, og, uk.mr, &blocking, |i, p| wg[p * k + i])
                })
                .collect()
        };
        Ok(DataWeights {
            geom: g.clone(),
            uk,
            blocking,
            packed,
            weight: weight.to_vec(),
            forward: transposed_forward(g, kernels.isa, weight),
        })
    }
}

/// Adds `scale * src[oyl][ox]` into the input plane at the positions tap `(ky, kx)` of
/// output rows `oy0 .. oy0 + rows` reads (the scatter of col2im for one tap).
#[allow(clippy::too_many_arguments)]
fn scatter_tap(
    g: &Geometry,
    plane: &mut [f32],
    ky: usize,
    kx: usize,
    oy0: usize,
    rows: usize,
    src: &[f32],
    scale: f32,
) {
    let [ih, iw] = g.input;
    let ow = g.conv_out[1];
    let (sh, sw) = (g.stride[0], g.stride[1]);
    let (pt, pl) = (g.pad_before[0], g.pad_before[1]);
    let (dky, dkx) = (ky * g.dilation[0], kx * g.dilation[1]);
    // Columns: ix = ox * sw + dkx - pl in [0, iw).
    let ox_lo = pl.saturating_sub(dkx).div_ceil(sw);
    let ox_hi = if iw + pl > dkx {
        (iw + pl - dkx).div_ceil(sw).min(ow)
    } else {
        0
    };
    if ox_lo >= ox_hi {
        return;
    }
    for oyl in 0..rows {
        let iy = (oy0 + oyl) * sh + dky;
        if iy < pt || iy - pt >= ih {
            continue;
        }
        let dst_row = &mut plane[(iy - pt) * iw..(iy - pt + 1) * iw];
        let s = &src[oyl * ow + ox_lo..oyl * ow + ox_hi];
        let ix0 = ox_lo * sw + dkx - pl;
        if sw == 1 {
            for (d, &v) in dst_row[ix0..ix0 + s.len()].iter_mut().zip(s) {
                *d += scale * v;
            }
        } else {
            for (j, &v) in s.iter().enumerate() {
                dst_row[ix0 + j * sw] += scale * v;
            }
        }
    }
}

/// dL/dx (input shape, overwritten) from `dz`, the gradient w.r.t. the pre-activation conv
/// output (conv-output shape), for the whole batch of the layer `w` was packed for. Runs on
/// the current rayon pool. Wrong lengths are errors.
pub fn backward_data_into(w: &DataWeights, dz: &[f32], dx: &mut [f32]) -> Result<()> {
    let g = &w.geom;
    check_len("dz", dz.len(), g.conv_output_len())?;
    check_len("dx", dx.len(), g.input_len())?;
    if let Some(plan) = &w.forward {
        return plan.run(dz, None, dx);
    }
    let [oh, ow] = g.conv_out;
    let (kh, kw) = (g.kernel[0], g.kernel[1]);
    let ka = kh * kw;
    let (cg, og) = (g.cin_per_group, g.cout_per_group);
    let p_all = oh * ow;
    let in_area = g.input_area();
    let (cin, cout) = (g.in_channels, g.out_channels);
    if thin(g) {
        // One task per input plane: the group's output channels scatter into it, tap by tap.
        crate::par::for_each_chunk_mut(dx, in_area, |nc, plane| {
            let (n, c) = (nc / cin, nc % cin);
            let (grp, ci) = (c / cg, c % cg);
            plane.fill(0.0);
            for o in 0..og {
                let co = grp * og + o;
                let dzp = &dz[(n * cout + co) * p_all..(n * cout + co + 1) * p_all];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = w.weight[((co * cg + ci) * kh + ky) * kw + kx];
                        scatter_tap(g, plane, ky, kx, 0, oh, dzp, wv);
                    }
                }
            }
        });
        return Ok(());
    }
    let k = cg * ka;
    let rows = (COLS_BAND_BYTES / (4 * k * ow).max(1)).clamp(1, oh);
    let mut cols = crate::tensor::take_scratch(k * rows * ow);
    for n in 0..g.batch {
        let dz_img = &dz[n * cout * p_all..(n + 1) * cout * p_all];
        let dx_img = &mut dx[n * cin * in_area..(n + 1) * cin * in_area];
        dx_img.fill(0.0);
        for grp in 0..g.groups {
            for oy0 in (0..oh).step_by(rows) {
                let r = rows.min(oh - oy0);
                let ncols = r * ow;
                {
                    let shared = SharedMut::new(&mut cols[..k * ncols]);
                    let b = StridedB {
                        data: &dz_img[grp * og * p_all + oy0 * ow..],
                        rs: p_all,
                        cs: 1,
                    };
                    gemm_packed(
                        w.uk,
                        &w.blocking,
                        &w.packed[grp],
                        &b,
                        ncols,
                        &shared,
                        0,
                        ncols,
                        GemmEpilogue::default(),
                        true,
                    );
                }
                let cols = &cols[..k * ncols];
                crate::par::for_each_chunk_mut(
                    &mut dx_img[grp * cg * in_area..(grp + 1) * cg * in_area],
                    in_area,
                    |ci, plane| {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let row = (ci * ka + ky * kw + kx) * ncols;
                                scatter_tap(g, plane, ky, kx, oy0, r, &cols[row..row + ncols], 1.0);
                            }
                        }
                    },
                );
            }
        }
    }
    crate::tensor::give_scratch(cols);
    Ok(())
}

/// `cols^T` of one image and group as a GEMM B source: `B[p][k] = im2col(x)[k][p]`, rows are
/// output pixels, columns are taps `(ci, ky, kx)`; padding reads as 0.
struct Im2colT<'a> {
    /// The whole batch's input.
    x: &'a [f32],
    /// The group's first channel.
    c0: usize,
    g: &'a Geometry,
    /// Per tap: (offset of its channel plane, row offset ky*DH - PT, column offset kx*DW - PL).
    taps: Vec<(usize, isize, isize)>,
}

impl<'a> Im2colT<'a> {
    fn new(x: &'a [f32], c0: usize, g: &'a Geometry) -> Self {
        let (kh, kw) = (g.kernel[0], g.kernel[1]);
        let taps = (0..g.cin_per_group * kh * kw)
            .map(|t| {
                let (ci, ky, kx) = (t / (kh * kw), (t / kw) % kh, t % kw);
                (
                    ci * g.input_area(),
                    (ky * g.dilation[0]) as isize - g.pad_before[0] as isize,
                    (kx * g.dilation[1]) as isize - g.pad_before[1] as isize,
                )
            })
            .collect();
        Im2colT { x, c0, g, taps }
    }
}

impl PackB for Im2colT<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]) {
        let [ih, iw] = self.g.input;
        let [oh, ow] = self.g.conv_out;
        let p_img = oh * ow;
        let img = self.g.in_channels * self.g.input_area();
        let chan0 = self.c0 * self.g.input_area();
        let (sh, sw) = (self.g.stride[0], self.g.stride[1]);
        // Rows are the pixels of every image in turn (p = n * OH * OW + oy * OW + ox).
        // Tap by tap: a tap reads, along an output row, input columns ox * SW + dx, so each
        // row of pixels is a strided run of one input row, written down the panel column.
        // (Computing every element's coordinates and bounds apart cost a third of
        // vgg16.conv3_3's weight gradient.)
        for (jp, panel) in out[..n.div_ceil(nr) * kc * nr]
            .chunks_mut(kc * nr)
            .enumerate()
        {
            for jj in 0..nr {
                let t = jp * nr + jj;
                if t >= n {
                    for p in 0..kc {
                        panel[p * nr + jj] = 0.0;
                    }
                    continue;
                }
                let (off, dy, dx) = self.taps[j0 + t];
                let (mut n_img, mut oy, mut ox) = (p0 / p_img, (p0 % p_img) / ow, p0 % ow);
                let mut p = 0;
                while p < kc {
                    let run = (ow - ox).min(kc - p);
                    let iy = (oy * sh) as isize + dy;
                    // Valid pixels of the run: 0 <= (ox + i) * SW + dx < IW.
                    let (ia, ib) = if iy < 0 || iy as usize >= ih {
                        (0, 0)
                    } else {
                        let first = (-(dx + (ox * sw) as isize)).max(0) as usize;
                        let lo = first.div_ceil(sw);
                        let lim = iw as isize - dx - (ox * sw) as isize;
                        let hi = if lim <= 0 {
                            0
                        } else {
                            (lim as usize).div_ceil(sw)
                        };
                        (lo.min(run), hi.clamp(lo.min(run), run))
                    };
                    for i in (0..ia).chain(ib..run) {
                        panel[(p + i) * nr + jj] = 0.0;
                    }
                    if ib > ia {
                        let base = n_img * img + chan0 + off;
                        let row = &self.x[base + iy as usize * iw..base + (iy as usize + 1) * iw];
                        let x0 = ((ox + ia) * sw) as isize + dx;
                        for i in ia..ib {
                            panel[(p + i) * nr + jj] = row[x0 as usize + (i - ia) * sw];
                        }
                    }
                    p += run;
                    ox = 0;
                    oy += 1;
                    if oy == oh {
                        oy = 0;
                        n_img += 1;
                    }
                }
            }
        }
    }
}

/// dL/dw (weight shape, overwritten) from the input `x` and `dz` (conv-output shape), summed
/// over the batch in batch order, by the faster of the two methods for the layer
/// ([`weights_by_winograd`]): Winograd ([`backward_weights_winograd_into`]) or the im2col
/// GEMM ([`backward_weights_gemm_into`]). Runs on the current rayon pool. Wrong lengths are
/// errors.
pub fn backward_weights_into(
    g: &Geometry,
    kernels: &crate::kernels::KernelTable,
    x: &[f32],
    dz: &[f32],
    dw: &mut [f32],
) -> Result<()> {
    match weights_by_winograd(g) {
        Some(v) => backward_weights_winograd_into(g, kernels, v, x, dz, dw),
        None => backward_weights_gemm_into(g, kernels, x, dz, dw),
    }
}

/// The Winograd variant the weight gradient of `g` runs on, or `None` for the GEMM.
///
/// F(4,3) for 3x3 stride-1 layers with at least 32 F(4,3) tiles over the batch and at least
/// a quarter as many tiles as channels a group (in or out, the larger). The tiles are the
/// GEMMs' depth and `dU` (`alpha^2` x C/g x Cout/g) their output, read and written per block
/// and transformed back at the end, so layers of few tiles and many channels pay more than
/// they save. Measured on one thread (AMD EPYC Zen 3, AVX2, `convkit bench --pass
/// backward_weights`, min ms of two runs, GEMM -> F(4,3)): vgg16.conv1_2 (3136 tiles, 64
/// channels) 120 -> 42-83, conv2_2 (784, 128) 65-85 -> 40-49, conv3_3 (196, 256) 70 -> 47-49,
/// res3.3x3.b8 (392, 128) 48-50 -> 18-28, res2.3x3 (196, 64) 5.0-7.7 -> 2.9-4.4, res3.3x3 (49,
/// 128) 4.1-5.4 -> 3.0-3.8; and against it vgg16.conv4_3 (49, 512) 52-61 -> 62-64,
/// res4.3x3 (16, 256) 3.6-4.7 -> 13, conv5_3 (16, 512) 13-16 -> 49-57, res5.3x3 (4, 512)
/// 4.3-5.5 -> 49-58. F(2,3) and F(6,3) were never clearly faster than F(4,3).
///
/// A dilated 2-D layer needs as many tiles (over its phase planes, each of which pads its
/// own tile grid) as channels. Dilation 2, one thread, three alternating runs, min and
/// medians, F(4,3) against the GEMM: deeplab.dilated3x3 (100 tiles, 256 channels) 27-32 ms
/// against 21-26, its batch of 2 (200) 39-58 against 49-53, of 4 (400) 75-98 against
/// 92-113; 128 channels of 28x28 (64 tiles) 4.1-6.8 against 4.6-6.2, a batch of 4 of them
/// 12.8-21.8 against 23.7-26.5; 64 channels of 56x56 (196) 4.4-6.0 against 5.1-8.1.
///
/// A 1-D layer needs as many tiles as channels and no more output than input channels
/// (the output-gradient transform, one tile and eight channels at a time, costs more per
/// channel than the input transform). F(4,3) against the GEMM, one thread, three
/// alternating runs, medians, after the row-group packing of V (session 22; the figures
/// above are from before it) (batch x channels x length, in -> out): 4x256x1000 26-28 ms
/// against 36-38, 1x256x4000 27 against 32-34, 8x64x1000 5.8-6.7 against 8.6-9.4,
/// 2x300x1024 -> 100 6.6-8.3 against 10.4-11.4, 16x128x256 7.1-10.6 against 12.3-12.6,
/// 32x300x256 -> 100 32-37 against 43-45; and against it 1x100x2048 -> 300 9.1-11.1 against
/// 6.2-7.8, 1x512x800 (200 tiles) 23-25 against 21-23, textcnn.k3 (64 tiles) 1.56 against
/// 1.18-1.21.
pub fn weights_by_winograd(g: &Geometry) -> Option<crate::arch::winograd::Variant> {
    use crate::arch::winograd::Variant;
    winograd_weights_check(g).ok()?;
    if thin(g) || (g.spatial_rank == 1 && g.cout_per_group > g.cin_per_group) {
        return None;
    }
    let [_, _, tiles_h, tiles_w, _, _, phases] =
        crate::algo::winograd::tile_geometry(g, Variant::F4.m(), Variant::F4.alpha())?;
    let tiles = g
        .batch
        .checked_mul(tiles_h)?
        .checked_mul(tiles_w)?
        .checked_mul(phases)?;
    let widest = g.cin_per_group.max(g.cout_per_group);
    let enough = if phases == 1 && g.spatial_rank == 2 {
        tiles.saturating_mul(4) >= widest
    } else {
        tiles >= widest
    };
    (tiles >= 32 && enough).then_some(Variant::F4)
}

/// dL/dw (weight shape, overwritten) from the input `x` and `dz` (conv-output shape), summed
/// over the batch in batch order, as one GEMM per group (`dz` times `im2col(x)^T`). Runs on
/// the current rayon pool. Wrong lengths are errors.
pub fn backward_weights_gemm_into(
    g: &Geometry,
    kernels: &crate::kernels::KernelTable,
    x: &[f32],
    dz: &[f32],
    dw: &mut [f32],
) -> Result<()> {
    check_len("x", x.len(), g.input_len())?;
    check_len("dz", dz.len(), g.conv_output_len())?;
    check_len("dw", dw.len(), g.weight_len())?;
    let [oh, ow] = g.conv_out;
    let (kh, kw) = (g.kernel[0], g.kernel[1]);
    let (cg, og) = (g.cin_per_group, g.cout_per_group);
    let (p_all, in_area) = (oh * ow, g.input_area());
    let (cin, cout) = (g.in_channels, g.out_channels);
    let k = cg * kh * kw;
    if thin(g) {
        // One task per output channel: its C/g x KH x KW weights, each a dot product of dz
        // with the input positions the tap reads, images in batch order.
        let [ih, iw] = g.input;
        crate::par::for_each_chunk_mut(dw, k, |co, wk| {
            let grp = co / og;
            wk.fill(0.0);
            for n in 0..g.batch {
                let dzp = &dz[(n * cout + co) * p_all..(n * cout + co + 1) * p_all];
                for (t, acc) in wk.iter_mut().enumerate() {
                    let (ci, ky, kx) = (t / (kh * kw), (t / kw) % kh, t % kw);
                    let c = grp * cg + ci;
                    let plane = &x[(n * cin + c) * in_area..(n * cin + c + 1) * in_area];
                    let mut s = 0f32;
                    for oy in 0..oh {
                        let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                            - g.pad_before[0] as isize;
                        if iy < 0 || iy >= ih as isize {
                            continue;
                        }
                        for ox in 0..ow {
                            let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                - g.pad_before[1] as isize;
                            if ix >= 0 && ix < iw as isize {
                                s += dzp[oy * ow + ox] * plane[iy as usize * iw + ix as usize];
                            }
                        }
                    }
                    *acc += s;
                }
            }
        });
        return Ok(());
    }
    let uk = kernels.gemm_default();
    let blocking = Blocking::derive(uk, crate::sysinfo::caches());
    // One GEMM per group over the whole batch: the images' pixels are one long K dimension
    // (dW = sum_n dz_n cols_n^T = [dz_0 .. dz_N-1] [cols_0 .. cols_N-1]^T), so C is written
    // once instead of read and written per image (res3.3x3.b8 ran at 42 GFLOP/s per image).
    let depth = g.batch * p_all;
    for grp in 0..g.groups {
        let a = if g.batch == 1 {
            let dz_g = &dz[grp * og * p_all..(grp + 1) * og * p_all];
            PackedA::from_row_major(dz_g, og, p_all, p_all, uk.mr, &blocking)
        } else {
            PackedA::pack(og, depth, uk.mr, &blocking, |i, p| {
                let (n, q) = (p / p_all, p % p_all);
                dz[(n * cout + grp * og + i) * p_all + q]
            })
        };
        let b = Im2colT::new(x, grp * cg, g);
        let shared = SharedMut::new(&mut dw[grp * og * k..(grp + 1) * og * k]);
        gemm_packed(
            uk,
            &blocking,
            &a,
            &b,
            k,
            &shared,
            0,
            k,
            GemmEpilogue::default(),
            true,
        );
    }
    Ok(())
}

/// dL/db: the sum of `dz` over the batch and the pixels of each channel, in f64.
pub fn backward_bias(g: &Geometry, dz: &[f32]) -> Vec<f32> {
    let area = g.conv_out_area();
    (0..g.out_channels)
        .map(|co| {
            (0..g.batch)
                .map(|n| {
                    let o = (n * g.out_channels + co) * area;
                    dz[o..o + area].iter().map(|&v| v as f64).sum::<f64>()
                })
                .sum::<f64>() as f32
        })
        .collect()
}

/// A convolution's backward pass, planned once: the layer's geometry and its weights packed
/// for the data gradient, with the tier, threads and layout to run on. For frameworks that
/// run their own activations and pools: every gradient starts from `dz`, the gradient w.r.t.
/// the convolution's output. NCHW (NCL) or NHWC (NLC) tensors: NHWC ones are transposed to
/// NCHW and back around the same computation, so both layouts give the same values bit for
/// bit. `Send + Sync`: the gradients may be computed from several threads at once.
pub struct ConvGrad {
    geom: Geometry,
    kernels: &'static crate::kernels::KernelTable,
    data: DataWeights,
    runner: crate::par::Runner,
    layout: Layout,
}

impl std::fmt::Debug for ConvGrad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvGrad")
            .field("tier", &self.kernels.isa)
            .field("layout", &self.layout)
            .finish()
    }
}

impl ConvGrad {
    /// Plans the backward pass of `spec` (the convolution alone: an activation, pool or
    /// residual is an error) with `weight` (OIHW). `opts` gives the tier, the threads and
    /// the layout; its algorithm is not used (each gradient has its own method).
    pub fn new(spec: &ConvSpec, weight: &[f32], opts: &PlanOptions) -> Result<Self> {
        let epilogue = [
            ("activation", spec.activation != crate::Activation::None),
            ("pool", spec.pool.is_some()),
            ("residual", spec.residual),
        ];
        if let Some((field, _)) = epilogue.iter().find(|(_, set)| *set) {
            return Err(Error::Spec {
                field: field.to_string(),
                msg: "a gradient plan takes the convolution alone (no activation, pool or \
                      residual): apply their gradients first and pass the gradient w.r.t. \
                      the convolution's output"
                    .into(),
            });
        }
        let geom = Geometry::new(spec)?;
        let kernels = resolve_isa(opts.isa.as_deref())?.kernels()?;
        Ok(ConvGrad {
            data: DataWeights::new(&geom, kernels, weight)?,
            runner: crate::par::Runner::new(opts.threads)?,
            geom,
            kernels,
            layout: opts.layout,
        })
    }

    /// The layer's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    /// Replaces the weights (after an optimizer step) and packs them again; on error the
    /// plan keeps the previous ones.
    pub fn set_weight(&mut self, weight: &[f32]) -> Result<()> {
        self.data = DataWeights::new(&self.geom, self.kernels, weight)?;
        Ok(())
    }

    /// `src` (a whole batch of `c` channels of `area` pixels) as NCHW: itself for an NCHW
    /// plan, else transposed into a scratch buffer.
    fn as_nchw<'a>(
        &self,
        src: &'a [f32],
        c: usize,
        area: usize,
        scratch: &'a mut crate::tensor::Scratch,
    ) -> &'a [f32] {
        if self.layout == Layout::Nchw {
            return src;
        }
        for (s, d) in src
            .chunks_exact(c * area)
            .zip(scratch.chunks_exact_mut(c * area))
        {
            crate::tensor::transpose_image(self.kernels.transpose, s, area, c, d);
        }
        scratch
    }

    /// A scratch buffer for an NHWC plan's transposed copy of `len` floats (empty for NCHW).
    fn scratch(&self, len: usize) -> crate::tensor::Scratch {
        crate::tensor::take_scratch(if self.layout == Layout::Nchw { 0 } else { len })
    }

    /// dL/dx (input shape, overwritten) from `dz` (conv-output shape). Wrong lengths are
    /// errors that leave `dx` untouched.
    pub fn data(&self, dz: &[f32], dx: &mut [f32]) -> Result<()> {
        let g = &self.geom;
        check_len("dz", dz.len(), g.conv_output_len())?;
        check_len("dx", dx.len(), g.input_len())?;
        self.runner.run(|| {
            let mut dz_t = self.scratch(dz.len());
            let dz_nchw = self.as_nchw(dz, g.out_channels, g.conv_out_area(), &mut dz_t);
            let r = if self.layout == Layout::Nchw {
                backward_data_into(&self.data, dz_nchw, dx)
            } else {
                let mut dx_nchw = crate::tensor::take_scratch(dx.len());
                let r = backward_data_into(&self.data, dz_nchw, &mut dx_nchw);
                let (c, area) = (g.in_channels, g.input_area());
                for (s, d) in dx_nchw
                    .chunks_exact(c * area)
                    .zip(dx.chunks_exact_mut(c * area))
                {
                    crate::tensor::transpose_image(self.kernels.transpose, s, c, area, d);
                }
                crate::tensor::give_scratch(dx_nchw);
                r
            };
            crate::tensor::give_scratch(dz_t);
            r
        })
    }

    /// dL/dw (OIHW, overwritten) from the input `x` and `dz` (conv-output shape), summed
    /// over the batch in batch order. Wrong lengths are errors that leave `dw` untouched.
    pub fn weight(&self, x: &[f32], dz: &[f32], dw: &mut [f32]) -> Result<()> {
        let g = &self.geom;
        check_len("x", x.len(), g.input_len())?;
        check_len("dz", dz.len(), g.conv_output_len())?;
        check_len("dw", dw.len(), g.weight_len())?;
        self.runner.run(|| {
            let (mut x_t, mut dz_t) = (self.scratch(x.len()), self.scratch(dz.len()));
            let x_nchw = self.as_nchw(x, g.in_channels, g.input_area(), &mut x_t);
            let dz_nchw = self.as_nchw(dz, g.out_channels, g.conv_out_area(), &mut dz_t);
            let r = backward_weights_into(g, self.kernels, x_nchw, dz_nchw, dw);
            crate::tensor::give_scratch(x_t);
            crate::tensor::give_scratch(dz_t);
            r
        })
    }

    /// dL/db (Cout floats, overwritten) from `dz` (conv-output shape), summed in f64. Wrong
    /// lengths are errors that leave `db` untouched.
    pub fn bias(&self, dz: &[f32], db: &mut [f32]) -> Result<()> {
        let g = &self.geom;
        check_len("dz", dz.len(), g.conv_output_len())?;
        check_len("db", db.len(), g.out_channels)?;
        self.runner.run(|| {
            let mut dz_t = self.scratch(dz.len());
            let dz_nchw = self.as_nchw(dz, g.out_channels, g.conv_out_area(), &mut dz_t);
            db.copy_from_slice(&backward_bias(g, dz_nchw));
            crate::tensor::give_scratch(dz_t);
        });
        Ok(())
    }
}

/// What a training-mode forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct Saved {
    /// The pre-activation conv output `conv + bias + residual` (conv-output shape).
    pub pre: Vec<f32>,
    /// For max pools, the cell (index within its conv-output plane) each pooled output came
    /// from: the first NaN of the window in scan order, else its first maximum.
    pub argmax: Vec<u32>,
}

/// Gradients of one layer.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// dL/dx (input shape), when asked for.
    pub input: Option<Vec<f32>>,
    /// dL/dw (weight shape).
    pub weight: Vec<f32>,
    /// dL/db, when the spec has a bias.
    pub bias: Option<Vec<f32>>,
    /// dL/dresidual (conv-output shape), when the spec has a residual.
    pub residual: Option<Vec<f32>>,
}

/// A layer planned for training: the forward convolution as an inference [`Plan`] (any
/// algorithm), the activation and pool applied after it keeping what backward needs, and
/// the weights packed for the data gradient. NCHW (NCL) only.
pub struct TrainPlan {
    spec: ConvSpec,
    geom: Geometry,
    opts: PlanOptions,
    conv: Plan,
    data: DataWeights,
    bias: Option<Vec<f32>>,
    kernels: &'static crate::kernels::KernelTable,
    runner: crate::par::Runner,
}

impl std::fmt::Debug for TrainPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainPlan")
            .field("conv", &self.conv)
            .finish()
    }
}

impl TrainPlan {
    /// Plans `spec` for training with `weight` (OIHW) and `bias`. The options choose the
    /// forward algorithm, ISA and threads as for [`Plan::new`]; the layout must be NCHW.
    pub fn new(
        spec: &ConvSpec,
        weight: &[f32],
        bias: Option<&[f32]>,
        opts: &PlanOptions,
    ) -> Result<Self> {
        if opts.layout != Layout::Nchw {
            return Err(Error::InvalidArgument(
                "training plans take NCHW (NCL) tensors".into(),
            ));
        }
        let geom = Geometry::new(spec)?;
        let conv_spec = ConvSpec {
            activation: crate::Activation::None,
            pool: None,
            ..spec.clone()
        };
        let conv_opts = PlanOptions {
            threads: None,
            ..opts.clone()
        };
        let conv = Plan::new(&conv_spec, weight, bias, &conv_opts)?;
        let kernels = resolve_isa(opts.isa.as_deref())?.kernels()?;
        let runner = crate::par::Runner::new(opts.threads)?;
        Ok(TrainPlan {
            spec: spec.clone(),
            data: DataWeights::new(&geom, kernels, weight)?,
            geom,
            opts: conv_opts,
            conv,
            bias: bias.map(<[f32]>::to_vec),
            kernels,
            runner,
        })
    }

    /// The layer's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    /// The weights (OIHW).
    pub fn weight(&self) -> &[f32] {
        &self.data.weight
    }

    /// The bias, when the spec has one.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Replaces the weights and bias (after an optimizer step) and repacks them.
    pub fn set_weights(&mut self, weight: &[f32], bias: Option<&[f32]>) -> Result<()> {
        let conv_spec = ConvSpec {
            activation: crate::Activation::None,
            pool: None,
            ..self.spec.clone()
        };
        let algo = self.conv.algo().name().to_string();
        self.conv = Plan::new(
            &conv_spec,
            weight,
            bias,
            &PlanOptions {
                algo: Some(algo),
                ..self.opts.clone()
            },
        )?;
        self.data = DataWeights::new(&self.geom, self.kernels, weight)?;
        self.bias = bias.map(<[f32]>::to_vec);
        Ok(())
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.runner.run(f)
    }

    /// The forward pass in training mode: writes the layer's output (as [`Plan::run`] does)
    /// and returns what [`TrainPlan::backward`] needs.
    pub fn forward(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> Result<Saved> {
        let g = &self.geom;
        check_len("output", output.len(), g.output_len())?;
        let mut pre = vec![0f32; g.conv_output_len()];
        self.install(|| self.conv.run(input, residual, &mut pre))?;
        let act = g.epilogue.activation;
        let activated: Vec<f32> = match act {
            crate::Activation::None => Vec::new(),
            _ => pre.iter().map(|&z| act.apply(z)).collect(),
        };
        let a = if activated.is_empty() {
            &pre
        } else {
            &activated
        };
        let argmax = pool_forward(g, a, output);
        Ok(Saved { pre, argmax })
    }

    /// The backward pass: from `grad_output` (output shape), the gradients w.r.t. the
    /// weights, the bias, the residual, and (when `want_input`) the input. `input` and
    /// `saved` are those of the forward pass.
    pub fn backward(
        &self,
        input: &[f32],
        saved: &Saved,
        grad_output: &[f32],
        want_input: bool,
    ) -> Result<Gradients> {
        let g = &self.geom;
        check_len("input", input.len(), g.input_len())?;
        check_len("grad_output", grad_output.len(), g.output_len())?;
        check_len("saved pre-activation", saved.pre.len(), g.conv_output_len())?;
        let act = g.epilogue.activation;
        let mut dz = pool_backward(g, &saved.pre, &saved.argmax, grad_output)?;
        for (d, &z) in dz.iter_mut().zip(&saved.pre) {
            *d *= act.derivative(z);
        }
        self.install(|| {
            let mut dw = vec![0f32; g.weight_len()];
            backward_weights_into(g, self.kernels, input, &dz, &mut dw)?;
            let dx = if want_input {
                let mut dx = vec![0f32; g.input_len()];
                backward_data_into(&self.data, &dz, &mut dx)?;
                Some(dx)
            } else {
                None
            };
            Ok(Gradients {
                input: dx,
                weight: dw,
                bias: g.epilogue.bias.then(|| backward_bias(g, &dz)),
                residual: g.epilogue.residual.then(|| dz.clone()),
            })
        })
    }
}

/// The pool of the training forward pass over the activated conv output `a`, recording the
/// max pools' picks.
fn pool_forward(g: &Geometry, a: &[f32], out: &mut [f32]) -> Vec<u32> {
    let [oh, ow] = g.conv_out;
    let area = oh * ow;
    match &g.epilogue.pool {
        None => {
            out.copy_from_slice(a);
            Vec::new()
        }
        Some(Pool::GlobalAvg) => {
            for (o, plane) in out.iter_mut().zip(a.chunks(area)) {
                *o = (plane.iter().map(|&v| v as f64).sum::<f64>() / area as f64) as f32;
            }
            Vec::new()
        }
        Some(Pool::GlobalMax) => out
            .iter_mut()
            .zip(a.chunks(area))
            .map(|(o, plane)| {
                let mut best = None;
                for (i, &v) in plane.iter().enumerate() {
                    best = max_pool_pick(best, v, i);
                }
                let (v, i) = best.expect("non-empty plane");
                *o = v;
                i as u32
            })
            .collect(),
        Some(pool) => {
            let dims = g.pool_dims.expect("windowed pool has dims");
            let is_max = matches!(pool, Pool::Max(_));
            let cip = matches!(
                pool,
                Pool::Avg {
                    count_include_pad: true,
                    ..
                }
            );
            let [ph, pw] = g.output;
            let mut argmax = Vec::with_capacity(if is_max { out.len() } else { 0 });
            for (plane, o) in a.chunks(area).zip(out.chunks_mut(ph * pw)) {
                for py in 0..ph {
                    for px in 0..pw {
                        let (mut best, mut sum, mut count) = (None, 0f64, 0usize);
                        for_window(g, &dims, py, px, |c| {
                            best = max_pool_pick(best, plane[c], c);
                            sum += plane[c] as f64;
                            count += 1;
                        });
                        o[py * pw + px] = if is_max {
                            let (v, c) = best.expect("a window holds a real cell");
                            argmax.push(c as u32);
                            v
                        } else {
                            let div = if cip {
                                dims[0].size * dims[1].size
                            } else {
                                count
                            };
                            (sum / div as f64) as f32
                        };
                    }
                }
            }
            argmax
        }
    }
}

/// Calls `f` with each real cell (index in the conv-output plane) of pooled output
/// `(py, px)`, in scan order.
fn for_window(
    g: &Geometry,
    dims: &[crate::geometry::PoolDim; 2],
    py: usize,
    px: usize,
    mut f: impl FnMut(usize),
) {
    let [oh, ow] = g.conv_out;
    for wy in 0..dims[0].size {
        let y = (py * dims[0].stride + wy) as isize - dims[0].pad_before as isize;
        if y < 0 || y >= oh as isize {
            continue;
        }
        for wx in 0..dims[1].size {
            let x = (px * dims[1].stride + wx) as isize - dims[1].pad_before as isize;
            if x >= 0 && x < ow as isize {
                f(y as usize * ow + x as usize);
            }
        }
    }
}

/// dL/d(activated conv output) from `dy` through the pool.
fn pool_backward(g: &Geometry, pre: &[f32], argmax: &[u32], dy: &[f32]) -> Result<Vec<f32>> {
    let [oh, ow] = g.conv_out;
    let area = oh * ow;
    let mut da = vec![0f32; pre.len()];
    let planes = g.batch * g.out_channels;
    match &g.epilogue.pool {
        None => da.copy_from_slice(dy),
        Some(Pool::GlobalAvg) => {
            for (d, &v) in da.chunks_mut(area).zip(dy) {
                d.fill(v / area as f32);
            }
        }
        Some(Pool::GlobalMax) => {
            check_len("saved argmax", argmax.len(), planes)?;
            check_picks(argmax, area)?;
            for ((d, &v), &c) in da.chunks_mut(area).zip(dy).zip(argmax) {
                d[c as usize] += v;
            }
        }
        Some(pool) => {
            let dims = g.pool_dims.expect("windowed pool has dims");
            let [ph, pw] = g.output;
            let is_max = matches!(pool, Pool::Max(_));
            if is_max {
                check_len("saved argmax", argmax.len(), planes * ph * pw)?;
                check_picks(argmax, area)?;
                for (p, d) in da.chunks_mut(area).enumerate() {
                    for q in 0..ph * pw {
                        d[argmax[p * ph * pw + q] as usize] += dy[p * ph * pw + q];
                    }
                }
            } else {
                let cip = matches!(
                    pool,
                    Pool::Avg {
                        count_include_pad: true,
                        ..
                    }
                );
                for (p, d) in da.chunks_mut(area).enumerate() {
                    for py in 0..ph {
                        for px in 0..pw {
                            let mut count = 0;
                            for_window(g, &dims, py, px, |_| count += 1);
                            let div = if cip {
                                dims[0].size * dims[1].size
                            } else {
                                count
                            };
                            let v = dy[(p * ph + py) * pw + px] / div as f32;
                            for_window(g, &dims, py, px, |c| d[c] += v);
                        }
                    }
                }
            }
        }
    }
    Ok(da)
}

/// Saved max-pool picks must index their conv-output plane (`Saved` is plain data a caller
/// can build).
fn check_picks(argmax: &[u32], area: usize) -> Result<()> {
    match argmax.iter().find(|&&c| c as usize >= area) {
        Some(c) => Err(Error::tensor(
            "saved argmax",
            format!("holds cell {c}, past a plane of {area}"),
        )),
        None => Ok(()),
    }
}

/// A transposed convolution ("deconvolution"), as frameworks define it: the gradient of a
/// convolution w.r.t. its input, used as a layer. Input `[N, Cin, H, W]` (or `[N, Cin, L]`),
/// weight `[Cin, Cout / groups, KH, KW]`, output `[N, Cout, OH, OW]` with
/// `OH = (H - 1) * stride - pad_before - pad_after + dilation * (KH - 1) + output_padding + 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTransposeSpec {
    /// Input shape.
    pub input: Vec<usize>,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size per spatial dim.
    pub kernel: Vec<usize>,
    /// Stride per spatial dim.
    pub stride: Vec<usize>,
    /// (before, after) padding per spatial dim, removed from the output.
    pub padding: Vec<(usize, usize)>,
    /// Extra rows/columns on the after side (each < stride or < dilation, as in PyTorch).
    pub output_padding: Vec<usize>,
    /// Dilation per spatial dim.
    pub dilation: Vec<usize>,
    /// Groups.
    pub groups: usize,
    /// Whether a bias `[Cout]` is added.
    pub bias: bool,
}

impl ConvTransposeSpec {
    /// Stride, dilation 1, no padding, one group, no bias.
    pub fn new(input: &[usize], out_channels: usize, kernel: &[usize]) -> Self {
        let r = kernel.len();
        ConvTransposeSpec {
            input: input.to_vec(),
            out_channels,
            kernel: kernel.to_vec(),
            stride: vec![1; r],
            padding: vec![(0, 0); r],
            output_padding: vec![0; r],
            dilation: vec![1; r],
            groups: 1,
            bias: false,
        }
    }

    /// The convolution whose data gradient this is: input of the transposed output's
    /// shape, `Cin` output channels; its output has the transposed input's shape.
    pub fn forward_conv(&self) -> Result<ConvSpec> {
        let rank = self.kernel.len();
        if !(1..=2).contains(&rank) || self.input.len() != rank + 2 {
            return Err(Error::spec(
                "input",
                format!(
                    "a {rank}-D transposed convolution needs an input of rank {}",
                    rank + 2
                ),
            ));
        }
        for (name, v) in [
            ("stride", &self.stride),
            ("output_padding", &self.output_padding),
            ("dilation", &self.dilation),
        ] {
            if v.len() != rank {
                return Err(Error::spec(name, format!("needs {rank} values")));
            }
        }
        if self.padding.len() != rank {
            return Err(Error::spec("padding", format!("needs {rank} pairs")));
        }
        let mut out = vec![self.input[0], self.out_channels];
        for d in 0..rank {
            let (s, k, dil, op) = (
                self.stride[d],
                self.kernel[d],
                self.dilation[d],
                self.output_padding[d],
            );
            if s == 0 || k == 0 || dil == 0 {
                return Err(Error::spec(
                    "kernel",
                    "kernel, stride and dilation must be >= 1",
                ));
            }
            if op >= s && op >= dil {
                return Err(Error::spec(
                    "output_padding",
                    format!("{op} must be smaller than the stride ({s}) or the dilation ({dil})"),
                ));
            }
            let (pb, pa) = self.padding[d];
            let ovf = || Error::overflow("transposed convolution output size");
            let full = self.input[2 + d]
                .checked_sub(1)
                .ok_or_else(|| Error::spec("input", "spatial sizes must be >= 1"))?
                .checked_mul(s)
                .and_then(|v| v.checked_add(dil.checked_mul(k - 1)?))
                .and_then(|v| v.checked_add(op + 1))
                .ok_or_else(ovf)?;
            let size = full
                .checked_sub(pb + pa)
                .filter(|&v| v >= 1)
                .ok_or_else(|| {
                    Error::spec(
                        "padding",
                        format!("removes the whole output along dim {d} ({full} before padding)"),
                    )
                })?;
            out.push(size);
        }
        let spec = ConvSpec::new(&out, self.input[1], &self.kernel)
            .with_stride(&self.stride)
            .with_dilation(&self.dilation)
            .with_padding(Padding::Explicit(self.padding.clone()))
            .with_groups(self.groups)
            .with_bias(false);
        let g = Geometry::new(&spec)?;
        let want: Vec<usize> = self.input[2..].to_vec();
        let got: Vec<usize> = g.conv_output_shape()[2..].to_vec();
        if want != got {
            return Err(Error::spec(
                "input",
                format!("no convolution maps {out:?} to the transposed input {want:?}"),
            ));
        }
        Ok(spec)
    }

    /// The output shape.
    pub fn output_shape(&self) -> Result<Vec<usize>> {
        Ok(self.forward_conv()?.input)
    }
}

/// The transposed convolution of `input` with `weight` (`[Cin, Cout/groups, KH, KW]`) plus
/// `bias`, on the GEMM path of the data gradient. `isa` as in [`PlanOptions`].
pub fn conv_transpose(
    spec: &ConvTransposeSpec,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    isa: Option<&str>,
) -> Result<Vec<f32>> {
    let fwd = spec.forward_conv()?;
    let g = Geometry::new(&fwd)?;
    check_len("input", input.len(), g.conv_output_len())?;
    check_len("weight", weight.len(), g.weight_len())?;
    check_optional("bias", spec.bias, bias, g.in_channels)?;
    let kernels = resolve_isa(isa)?.kernels()?;
    let data = DataWeights::new(&g, kernels, weight)?;
    let mut out = vec![0f32; g.input_len()];
    backward_data_into(&data, input, &mut out)?;
    if let Some(b) = bias {
        let area = g.input_area();
        for (i, plane) in out.chunks_mut(area).enumerate() {
            let v = b[i % g.in_channels];
            plane.iter_mut().for_each(|x| *x += v);
        }
    }
    Ok(out)
}
