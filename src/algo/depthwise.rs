//! Depthwise convolution (one input channel per group, any channel multiplier) in two
//! layouts, both under the algorithm name `depthwise`:
//!
//! - **planes**: each channel padded (and phase-split for stride > 1) on its own and
//!   convolved by the plane kernel, vectorized along the output row
//!   ([`crate::arch::dwconv::DwPlane`]). Best on wide stride-1 planes.
//! - **channel blocks**: `CB` channels interleaved into a padded `[row][col][CB]` block and
//!   convolved a pixel of `CB` channels per vector ([`crate::arch::dwconv::DwBlock`]); no
//!   lanes lost to short rows, no phase split for stride 2.
//!
//! [`DwLayout::pick`] chooses between them from measurements recorded beside it.

use crate::algo::OutputPass;
use crate::arch::dwconv::{DwBlock, DwUkernel, CB};
use crate::geometry::Geometry;
use crate::tensor::{aligned_zeros, AlignedBuf};

/// How a depthwise plan lays out its channels.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum DwLayout {
    /// Chosen by [`DwLayout::pick`].
    #[default]
    Auto,
    /// One padded plane per channel, vectorized along the row.
    Planes,
    /// `CB` channels interleaved, vectorized across channels.
    ChannelBlocks,
    /// `CB` channel multipliers of one input channel in the lanes, the input pixel
    /// broadcast (few input channels, a multiplier that is a multiple of `CB`:
    /// wav2vec2.conv0's 1 channel x 512).
    MultiplierBlocks,
    /// Planes read where they are in the NCHW input, padding by masked loads
    /// ([`crate::arch::dwconv::DwDirect`]): tiers with such a kernel, layers it takes.
    Direct,
    /// NHWC read and written where it lies, a vector of channels a pixel
    /// ([`crate::arch::dwconv::DwNhwc`]): NHWC plans of [`nhwc_native`] layers on tiers
    /// with the kernel.
    ChannelsLast,
}

impl DwLayout {
    /// The layout for `g`: channel blocks unless there are too few channels to fill half a
    /// block; then multiplier blocks where the multiplier is a multiple of `CB`, else planes.
    /// Measured on this machine (AVX2, median ms of `convkit bench`, layouts alternating in
    /// one run, one thread unless said): mobilenetv2.dw112 planes 0.56 vs blocks 0.29-0.44,
    /// dw56s2 0.65-0.69 vs 0.14-0.18, dw7 0.34-0.41 vs 0.07-0.09; wav2vec2.conv0 (one input
    /// channel, multiplier 512) channel blocks would fill one lane of eight (2.1 against 6.5
    /// GFLOP/s for planes), multiplier blocks tie planes on one thread (5.1-5.6 against
    /// 5.1 ms, the exact gelu is half the time) and win on two (2.7-2.9 against 3.4-5.2 ms:
    /// planes run a single channel as one task).
    ///
    /// Direct planes before all of these where the tier has the kernel and the layer suits it
    /// ([`crate::arch::dwconv::direct_accepts`]). Measured on AVX-512, paired, one thread,
    /// min ms, channel blocks against direct: dw112 0.145 / 0.118, dw56s2 0.080 / 0.065, dw7
    /// 0.028 / 0.027 (0.023 with the flat small planes).
    pub fn pick(self, g: &Geometry, uk: &DwUkernel) -> DwLayout {
        let direct = uk.direct.is_some() && crate::arch::dwconv::direct_accepts(g);
        // CONVKIT_DW_LAYOUT=planes|blocks|multipliers|direct overrides `Auto`, to compare the
        // layouts in one program (as CONVKIT_WINO_TILES does for Winograd's block size).
        let forced = match std::env::var("CONVKIT_DW_LAYOUT").as_deref() {
            Ok("planes") => Some(DwLayout::Planes),
            Ok("blocks") => Some(DwLayout::ChannelBlocks),
            Ok("multipliers") if g.cout_per_group.is_multiple_of(CB) => {
                Some(DwLayout::MultiplierBlocks)
            }
            Ok("direct") if direct => Some(DwLayout::Direct),
            _ => None,
        };
        match self {
            DwLayout::Auto if direct => forced.unwrap_or(DwLayout::Direct),
            // Direct planes need the kernel and a layer it takes: channel blocks otherwise.
            DwLayout::Direct if !direct => DwLayout::Auto.pick(g, uk),
            DwLayout::ChannelsLast if uk.channels_last.is_none() || !nhwc_native(g) => {
                DwLayout::Auto.pick(g, uk)
            }
            DwLayout::Auto if g.in_channels < CB / 2 && g.cout_per_group.is_multiple_of(CB) => {
                forced.unwrap_or(DwLayout::MultiplierBlocks)
            }
            DwLayout::Auto if g.in_channels < CB / 2 => forced.unwrap_or(DwLayout::Planes),
            // Multiplier blocks need whole blocks of multipliers.
            DwLayout::MultiplierBlocks if !g.cout_per_group.is_multiple_of(CB) => DwLayout::Planes,
            DwLayout::Auto => forced.unwrap_or(DwLayout::ChannelBlocks),
            fixed => fixed,
        }
    }

    /// The layout of a grouped plan (`algo::Algo::Grouped`): planes (each output plane sums
    /// its group's input planes, vectorized along the row) or channel blocks (whole groups
    /// in the lanes, each input spread over its group's lanes by a shuffle).
    /// `CONVKIT_DW_LAYOUT=planes|blocks` overrides `Auto`.
    ///
    /// Planes where AVX-512's kernel takes them: four output planes a call, rows of more than
    /// 16 outputs, a clamp for activation. Measured one thread, median ms, layouts
    /// alternating: resnext50.grouped3x3 (groups of 4, 56 x 56) AVX-512 planes 0.39-0.40
    /// against blocks 0.45-0.46 (two threads 0.20 against 0.23); on AVX2, whose planes run
    /// the generic body, 0.59 against 0.45.
    pub fn pick_grouped(self, g: &Geometry, isa: crate::arch::Isa) -> DwLayout {
        let forced = match std::env::var("CONVKIT_DW_LAYOUT").as_deref() {
            Ok("planes") => Some(DwLayout::Planes),
            Ok("blocks") => Some(DwLayout::ChannelBlocks),
            _ => None,
        };
        let hand_kernel = isa == crate::arch::Isa::Avx512
            && g.cout_per_group.is_multiple_of(crate::arch::dwconv::PLANES)
            && g.conv_out[1] > 16
            && g.epilogue.activation.as_clamp().is_some();
        match self {
            DwLayout::Auto if hand_kernel => forced.unwrap_or(DwLayout::Planes),
            DwLayout::Auto => forced.unwrap_or(DwLayout::ChannelBlocks),
            DwLayout::MultiplierBlocks | DwLayout::Direct | DwLayout::ChannelsLast => {
                DwLayout::ChannelBlocks
            }
            fixed => fixed,
        }
    }
}

/// The weights of the multiplier-block kernel: `[ci][m / CB][tap][CB]`, lane `c` holding
/// output channel `ci * mult + m + c` (`mult` a multiple of `CB`).
pub fn multiplier_weights(g: &Geometry, weight: &[f32]) -> AlignedBuf {
    let (c, mult, ka) = (g.in_channels, g.cout_per_group, g.kernel_area());
    let mut out = aligned_zeros(c * mult * ka);
    for (blk, dst) in out.chunks_exact_mut(ka * CB).enumerate() {
        for t in 0..ka {
            for lane in 0..CB {
                dst[t * CB + lane] = weight[(blk * CB + lane) * ka + t];
            }
        }
    }
    out
}

/// Conv rows `r0..r1` of one image into `out` by multiplier blocks: each block is `CB`
/// consecutive output channels of one input channel, the input broadcast to the lanes.
#[allow(clippy::too_many_arguments)]
pub fn run_multiplier_blocks(
    g: &Geometry,
    uk: &DwUkernel,
    blocked: &[f32],
    x: &[f32],
    r0: usize,
    r1: usize,
    out: &mut [f32],
    pass: &OutputPass,
) {
    let OutputPass {
        bias,
        accumulate,
        clamp,
        activation,
    } = *pass;
    let [ih, iw] = g.input;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [pt, pl] = g.pad_before;
    let ow = g.conv_out[1];
    let (mult, ka, in_area) = (g.cout_per_group, g.kernel_area(), g.input_area());
    let rows = r1 - r0;
    let band = rows * ow;
    if band == 0 || !mult.is_multiple_of(CB) {
        return;
    }
    let pw = (ow - 1) * sw + (kw - 1) * dw + 1;
    let n_in = (rows - 1) * sh + (kh - 1) * dh + 1;
    let groups = mult / CB;
    let blocks = g.in_channels * groups;
    // Blocks per task: at least four tasks per thread (wav2vec2.conv0 has 64 blocks of one
    // channel; one task per channel ran its 512 planes on one thread).
    let threads = crate::par::threads().max(1);
    let per_task = blocks.div_ceil(4 * threads).max(1);
    let block_out = CB * band;
    crate::par::for_each_chunk_mut(out, per_task * block_out, |task, task_out| {
        // The padded rows of the block's input channel, `[n_in][pw]`, refilled only when
        // the channel changes.
        let mut xb = crate::tensor::take_scratch(n_in * pw);
        let mut filled = None;
        for (j, planes) in task_out.chunks_mut(block_out).enumerate() {
            let b = task * per_task + j;
            let (ci, mg) = (b / groups, b % groups);
            if filled != Some(ci) {
                let plane = &x[ci * in_area..(ci + 1) * in_area];
                for (i, dst) in xb[..n_in * pw].chunks_exact_mut(pw).enumerate() {
                    let py = r0 * sh + i;
                    let iy = py.wrapping_sub(pt);
                    if py < pt || iy >= ih {
                        dst.fill(0.0);
                        continue;
                    }
                    let (c0, c1) = (pl.min(pw), (pl + iw).min(pw));
                    dst[..c0].fill(0.0);
                    dst[c1..].fill(0.0);
                    dst[c0..c1].copy_from_slice(&plane[iy * iw..iy * iw + (c1 - c0)]);
                }
                filled = Some(ci);
            }
            let co0 = ci * mult + mg * CB;
            let mut lanes = [0f32; CB];
            if let Some(bias) = bias {
                lanes.copy_from_slice(&bias[co0..co0 + CB]);
            }
            let mut job = DwBlock {
                input: &xb[..n_in * pw],
                pw,
                weight: &blocked[b * ka * CB..(b + 1) * ka * CB],
                kernel: [kh, kw],
                stride: [sh, sw],
                dilation: [dh, dw],
                bias: lanes,
                clamp,
                accumulate,
                rows,
                ow,
                // The block's planes are consecutive output channels.
                out: planes,
                plane_stride: band,
                lanes: CB,
                broadcast: true,
                group: 1,
                channels_last: false,
            };
            (uk.block)(&mut job);
            if let Some((kernel, act)) = activation {
                for plane in planes.chunks_mut(band) {
                    (kernel.run)(act, crate::arch::activation::RowsMut::from_slice(plane));
                }
            }
        }
        crate::tensor::give_scratch(xb);
    });
}

/// Conv rows `r0..r1` of one image into `out` (`[C][r1 - r0][OW]`) by direct planes with
/// the tier's `kernel` (`DwUkernel::direct`): `weight` is the layer's own (`[C][KH * KW]`).
#[allow(clippy::too_many_arguments)]
pub fn run_direct(
    g: &Geometry,
    kernel: crate::arch::dwconv::DwDirectFn,
    weight: &[f32],
    x: &[f32],
    r0: usize,
    r1: usize,
    out: &mut [f32],
    pass: &OutputPass,
) {
    let OutputPass {
        bias,
        accumulate,
        clamp,
        activation,
    } = *pass;
    let band = (r1 - r0) * g.conv_out[1];
    let (c, ka, in_area) = (g.in_channels, g.kernel_area(), g.input_area());
    if band == 0 {
        return;
    }
    // Planes per task: about 16K input floats of work each (a 7x7 plane is 49), but at
    // least four tasks per thread where there are enough planes.
    let threads = crate::par::threads().max(1);
    let per_task = (16384 / in_area.max(1)).min(c.div_ceil(4 * threads)).max(1);
    crate::par::for_each_chunk_mut(out, per_task * band, |task, planes| {
        let first = task * per_task;
        let n = planes.len() / band;
        let mut job = crate::arch::dwconv::DwDirect {
            // The rest of the image: the kernel prefetches the plane after its last.
            input: &x[first * in_area..],
            in_stride: in_area,
            in_dims: g.input,
            weight: &weight[first * ka..(first + n) * ka],
            kernel: g.kernel,
            stride: g.stride[0],
            pad: g.pad_before,
            rows: [r0, r1],
            ow: g.conv_out[1],
            out: planes,
            out_stride: band,
            planes: n,
            bias: bias.map_or(&[][..], |b| &b[first..first + n]),
            accumulate,
            clamp,
        };
        kernel(&mut job);
        if let Some((kernel, act)) = activation {
            for plane in planes.chunks_mut(band) {
                (kernel.run)(act, crate::arch::activation::RowsMut::from_slice(plane));
            }
        }
    });
}

/// Whether an NHWC plan of layer `g` runs channels-last as it is
/// ([`run_channel_blocks_nhwc`]): depthwise with one output a channel and no pool (pooled
/// layers, multipliers and grouped layers convert to NCHW and back).
pub fn nhwc_native(g: &Geometry) -> bool {
    g.is_depthwise() && g.cout_per_group == 1 && g.epilogue.pool.is_none()
}

/// Whether an NHWC plan of the grouped layer `g` runs channels-last as it is
/// ([`run_channel_blocks_nhwc`] with whole groups in each block of `CB` channels): groups of
/// 2, 4 or 8 channels in and out ([`check_grouped`]), no pool.
pub fn nhwc_native_grouped(g: &Geometry) -> bool {
    check_grouped(g).is_ok() && g.epilogue.pool.is_none()
}

/// Tasks over whole output rows of one NHWC image (`out` is `[OH][OW][C]`: a task's rows
/// are one run), at least four a thread: `conv(r0, rows)` computes rows `r0..` into `rows`,
/// then a non-clamp `activation` runs over them while they are in cache.
fn for_each_row_task(
    g: &Geometry,
    out: &mut [f32],
    activation: Option<(
        crate::arch::activation::ActUkernel,
        crate::epilogue::Activation,
    )>,
    conv: impl Fn(usize, &mut [f32]) + Sync,
) {
    let [oh, ow] = g.conv_out;
    let row_floats = ow * g.out_channels;
    if row_floats == 0 || oh == 0 {
        return;
    }
    let per_task = row_task_rows(g);
    crate::par::for_each_chunk_mut(out, per_task * row_floats, |task, rows| {
        conv(task * per_task, rows);
        if let Some((kernel, act)) = activation {
            (kernel.run)(act, crate::arch::activation::RowsMut::from_slice(rows));
        }
    });
}

/// Output rows a task of [`for_each_row_task`].
fn row_task_rows(g: &Geometry) -> usize {
    g.conv_out[0]
        .div_ceil(4 * crate::par::threads().max(1))
        .max(1)
}

/// One NHWC image by channel blocks, channels-last in and out: `x` is `[IH][IW][C]`, `out`
/// `[OH][OW][C]` (holding the residual when `pass.accumulate`), `blocked` the
/// [`block_weights`]. Tasks take whole output rows (a pixel's channels are contiguous, so a
/// task's output is one run); each copies its rows' input of one block of `CB` channels at a
/// time into a padded block (`CB` floats a pixel: no transpose), and the kernel stores pixel
/// by pixel. Converting to NCHW and back cost 3-6x the layer (mobilenetv2.dw56s2: 0.28
/// against 0.058 ms).
pub fn run_channel_blocks_nhwc(
    g: &Geometry,
    uk: &DwUkernel,
    blocked: &[f32],
    x: &[f32],
    out: &mut [f32],
    pass: &OutputPass,
) {
    debug_assert!(nhwc_native(g) || nhwc_native_grouped(g));
    // Depthwise: one input a lane. Grouped: `group` inputs and as many outputs a group,
    // whole groups in a block (CB is a multiple of the group), their weights `[tap][i][CB]`.
    let group = if g.is_depthwise() { 1 } else { g.cin_per_group };
    let OutputPass {
        bias,
        accumulate,
        clamp,
        activation,
    } = *pass;
    let [ih, iw] = g.input;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [pt, pl] = g.pad_before;
    let [oh, ow] = g.conv_out;
    let (c, ka) = (g.in_channels, g.kernel_area());
    let row_floats = ow * c;
    if row_floats == 0 || oh == 0 {
        return;
    }
    let pw = (ow - 1) * sw + (kw - 1) * dw + 1;
    let in_rows = |out_rows: usize| (out_rows - 1) * sh + (kh - 1) * dh + 1;
    // Output rows a strip: its padded block within a quarter of L2 (as the planar path).
    let budget = (crate::sysinfo::caches().l2 / 4 / 4).max(1);
    let strip = (1..=row_task_rows(g))
        .rev()
        .find(|&s| in_rows(s) * pw * CB <= budget)
        .unwrap_or(1);
    let (c0, c1) = (pl.min(pw), (pl + iw).min(pw));
    for_each_row_task(g, out, activation, |r0, rows_out| {
        let rows = rows_out.len() / row_floats;
        let mut xb = crate::tensor::take_scratch(in_rows(strip.min(rows)) * pw * CB);
        let mut s0 = 0;
        while s0 < rows {
            let s1 = (s0 + strip).min(rows);
            let n_in = in_rows(s1 - s0);
            for b in 0..c.div_ceil(CB) {
                let (ch, nc) = (b * CB, CB.min(c - b * CB));
                for (i, dst) in xb[..n_in * pw * CB].chunks_exact_mut(pw * CB).enumerate() {
                    let py = (r0 + s0) * sh + i;
                    let iy = py.wrapping_sub(pt);
                    if py < pt || iy >= ih {
                        dst.fill(0.0);
                        continue;
                    }
                    dst[..c0 * CB].fill(0.0);
                    dst[c1 * CB..].fill(0.0);
                    let src = &x[iy * iw * c..(iy + 1) * iw * c];
                    for (px, d) in dst[c0 * CB..c1 * CB].chunks_exact_mut(CB).enumerate() {
                        let from = &src[px * c + ch..][..nc];
                        if nc == CB {
                            d.copy_from_slice(from);
                        } else {
                            d[..nc].copy_from_slice(from);
                            d[nc..].fill(0.0);
                        }
                    }
                }
                let mut lanes = [0f32; CB];
                if let Some(bias) = bias {
                    lanes[..nc].copy_from_slice(&bias[ch..ch + nc]);
                }
                let mut job = DwBlock {
                    input: &xb[..n_in * pw * CB],
                    pw,
                    weight: &blocked[b * ka * group * CB..(b + 1) * ka * group * CB],
                    kernel: [kh, kw],
                    stride: [sh, sw],
                    dilation: [dh, dw],
                    bias: lanes,
                    clamp,
                    accumulate,
                    rows: s1 - s0,
                    ow,
                    // The block's channels of pixel (s0, 0) of the task's rows, a pixel
                    // `c` floats on.
                    out: &mut rows_out[s0 * row_floats + ch..],
                    plane_stride: c,
                    lanes: nc,
                    broadcast: false,
                    group,
                    channels_last: true,
                };
                (uk.block)(&mut job);
            }
            s0 = s1;
        }
        crate::tensor::give_scratch(xb);
    });
}

/// One NHWC image by the tier's channels-last `kernel` (`DwUkernel::channels_last`): `x` is
/// `[IH][IW][C]`, `out` `[OH][OW][C]` (holding the residual when `pass.accumulate`),
/// `packed` the [`crate::arch::dwconv::nhwc_weights`]. Tasks take whole output rows.
pub fn run_channels_last(
    g: &Geometry,
    kernel: crate::arch::dwconv::DwNhwcFn,
    packed: &[f32],
    x: &[f32],
    out: &mut [f32],
    pass: &OutputPass,
) {
    let OutputPass {
        bias,
        accumulate,
        clamp,
        activation,
    } = *pass;
    let ow = g.conv_out[1];
    let row_floats = ow * g.in_channels;
    for_each_row_task(g, out, activation, |r0, rows_out| {
        let mut job = crate::arch::dwconv::DwNhwc {
            input: x,
            in_dims: g.input,
            channels: g.in_channels,
            weight: packed,
            kernel: g.kernel,
            stride: g.stride,
            dilation: g.dilation,
            pad: g.pad_before,
            rows: [r0, r0 + rows_out.len() / row_floats],
            ow,
            out: rows_out,
            bias: bias.unwrap_or(&[]),
            accumulate,
            clamp,
        };
        kernel(&mut job);
    });
}

/// Interleaves the weights for the channel-block kernel: `[block][m][tap][CB]`, lane `c` of
/// block `b` and multiplier `m` holding output channel `(b * CB + c) * mult + m`; lanes past
/// the last channel are zero.
pub fn block_weights(g: &Geometry, weight: &[f32]) -> AlignedBuf {
    let (c, mult, ka) = (g.in_channels, g.cout_per_group, g.kernel_area());
    let blocks = c.div_ceil(CB);
    let mut out = aligned_zeros(blocks * mult * ka * CB);
    for b in 0..blocks {
        for m in 0..mult {
            for t in 0..ka {
                for lane in 0..CB.min(c - b * CB) {
                    let co = (b * CB + lane) * mult + m;
                    out[((b * mult + m) * ka + t) * CB + lane] = weight[co * ka + t];
                }
            }
        }
    }
    out
}

/// Interleaves the weights of a grouped layer (`group` = C/g = Cout/g channels a group, 2, 4
/// or 8) for the channel-block kernel: `[block][tap][i][CB]`, lane `l` of block `b` at input
/// `i` holding the weight of output channel `b * CB + l` for its group's input `i`; lanes
/// past the last channel are zero.
pub fn grouped_block_weights(g: &Geometry, weight: &[f32]) -> AlignedBuf {
    let (c, gs, ka) = (g.out_channels, g.cin_per_group, g.kernel_area());
    let blocks = c.div_ceil(CB);
    let mut out = aligned_zeros(blocks * ka * gs * CB);
    for (co, w) in weight.chunks_exact(gs * ka).enumerate().take(c) {
        let (b, lane) = (co / CB, co % CB);
        for i in 0..gs {
            for t in 0..ka {
                out[((b * ka + t) * gs + i) * CB + lane] = w[i * ka + t];
            }
        }
    }
    out
}

/// Why `g` cannot run on the `grouped` algorithm, or `Ok`: it needs groups of 2, 4 or 8
/// input channels with as many outputs each (so that a block of 8 lanes holds whole
/// groups, in and out).
pub fn check_grouped(g: &Geometry) -> Result<(), String> {
    if g.groups < 2 || !matches!(g.cin_per_group, 2 | 4 | 8) || g.cout_per_group != g.cin_per_group
    {
        return Err(format!(
            "needs groups of 2, 4 or 8 channels in and out; the layer has {} in and {} out a group ({} groups)",
            g.cin_per_group, g.cout_per_group, g.groups
        ));
    }
    Ok(())
}

/// Conv rows `r0..r1` of one image into `out` (`[Cout][r1 - r0][OW]`) by channel blocks.
#[allow(clippy::too_many_arguments)]
pub fn run_channel_blocks(
    g: &Geometry,
    uk: &DwUkernel,
    blocked: &[f32],
    x: &[f32],
    r0: usize,
    r1: usize,
    out: &mut [f32],
    pass: &OutputPass,
) {
    let OutputPass {
        bias,
        accumulate,
        clamp,
        activation,
    } = *pass;
    let [ih, iw] = g.input;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let [pt, pl] = g.pad_before;
    let ow = g.conv_out[1];
    // Depthwise: one input channel a group, `mult` outputs of each. Grouped (the `grouped`
    // algorithm): `group` inputs and as many outputs a group, one output a lane (mult 1).
    let (group, mult) = if g.is_depthwise() {
        (1, g.cout_per_group)
    } else {
        (g.cin_per_group, 1)
    };
    let (c_in, ka, in_area) = (g.in_channels, g.kernel_area(), g.input_area());
    let rows = r1 - r0;
    let band = rows * ow;
    if band == 0 {
        return;
    }
    // Padded columns the taps reach: no more (a stride can skip the last input columns).
    let pw = (ow - 1) * sw + (kw - 1) * dw + 1;
    let in_rows = |out_rows: usize| (out_rows - 1) * sh + (kh - 1) * dh + 1;
    // Output rows per strip: the strip's interleaved input within a quarter of L2, so it is
    // still there for the taps of the next rows (dw112's whole block would be 415 KB).
    let budget = (crate::sysinfo::caches().l2 / 4 / 4).max(1);
    let strip = (1..=rows)
        .rev()
        .find(|&s| in_rows(s) * pw * CB <= budget)
        .unwrap_or(1);
    let blocks = c_in.div_ceil(CB);
    // Blocks per task: about 16K input floats of work each (a 7x7 block is 392), but at
    // least four tasks per thread when there are enough blocks.
    let threads = crate::par::threads().max(1);
    let per_task = (16384 / (CB * in_area).max(1))
        .min(blocks.div_ceil(4 * threads))
        .max(1);
    let block_out = CB * mult * band;
    crate::par::for_each_chunk_mut(out, per_task * block_out, |task, task_out| {
        let mut xb = crate::tensor::take_scratch(in_rows(strip.min(rows)) * pw * CB);
        let mut run = crate::tensor::take_scratch(if iw < 16 {
            in_rows(strip.min(rows)).min(ih) * iw * CB
        } else {
            0
        });
        for (j, planes) in task_out.chunks_mut(block_out).enumerate() {
            let b = task * per_task + j;
            let nc = CB.min(c_in - b * CB);
            let mut s0 = 0;
            while s0 < rows {
                let s1 = (s0 + strip).min(rows);
                // Padded rows of this strip: from the first tap of output row r0 + s0.
                let first = (r0 + s0) * sh;
                let n_in = in_rows(s1 - s0);
                // Input rows of the strip: iy0..iy1 (the rest is padding).
                let iy0 = first.saturating_sub(pt).min(ih);
                let iy1 = (first + n_in).saturating_sub(pt).clamp(iy0, ih);
                let c0 = pl.min(pw);
                let c1 = (pl + iw).min(pw);
                // Narrow rows (dw7: 7 columns) would give the 8x8 transposes nothing to
                // do row by row: interleave the strip's rows as one run, then place them.
                let whole = iw < 16 && c1 - c0 == iw;
                // Channel c of the block is the plane at c * in_area from the block's.
                let block_x = &x[b * CB * in_area..];
                if whole && iy1 > iy0 {
                    (uk.interleave)(
                        &block_x[iy0 * iw..],
                        nc,
                        in_area,
                        &mut run[..(iy1 - iy0) * iw * CB],
                    );
                }
                for (i, dst) in xb[..n_in * pw * CB].chunks_exact_mut(pw * CB).enumerate() {
                    let py = first + i;
                    let iy = py.wrapping_sub(pt);
                    if py < pt || iy >= ih {
                        dst.fill(0.0);
                        continue;
                    }
                    // Columns pl .. pl + iw hold input (those the taps reach).
                    dst[..c0 * CB].fill(0.0);
                    dst[c1 * CB..].fill(0.0);
                    if whole {
                        let at = (iy - iy0) * iw * CB;
                        dst[c0 * CB..c1 * CB].copy_from_slice(&run[at..at + iw * CB]);
                    } else if c1 > c0 {
                        (uk.interleave)(
                            &block_x[iy * iw..],
                            nc,
                            in_area,
                            &mut dst[c0 * CB..c1 * CB],
                        );
                    }
                }
                for m in 0..mult {
                    let mut lanes = [0f32; CB];
                    if let Some(bias) = bias {
                        for (c, l) in lanes.iter_mut().enumerate().take(nc) {
                            *l = bias[(b * CB + c) * mult + m];
                        }
                    }
                    let w0 = (b * mult + m) * ka * CB * group;
                    let mut job = DwBlock {
                        input: &xb[..n_in * pw * CB],
                        pw,
                        weight: &blocked[w0..w0 + ka * CB * group],
                        kernel: [kh, kw],
                        stride: [sh, sw],
                        dilation: [dh, dw],
                        bias: lanes,
                        clamp,
                        accumulate,
                        rows: s1 - s0,
                        ow,
                        // Output planes of lanes 0..nc: channel (b*CB + c)*mult + m is plane
                        // c*mult + m of this block.
                        out: &mut planes[m * band + s0 * ow..],
                        plane_stride: mult * band,
                        lanes: nc,
                        broadcast: false,
                        group,
                        channels_last: false,
                    };
                    (uk.block)(&mut job);
                }
                s0 = s1;
            }
            if let Some((kernel, act)) = activation {
                for plane in planes.chunks_mut(band) {
                    (kernel.run)(act, crate::arch::activation::RowsMut::from_slice(plane));
                }
            }
        }
        crate::tensor::give_scratch(xb);
        crate::tensor::give_scratch(run);
    });
}
