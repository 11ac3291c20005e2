//! Winograd convolution F(2,3), F(4,3), F(6,3), 2-D (F(m x m, 3 x 3)) and 1-D (F(m, 3)):
//! kernel 3, stride 1, any padding and groups; dilation 1 (`winograd_*`) or above, through
//! phase planes (`dilated_*`, see `tile_geometry`).
//!
//! The pipeline, per block of tiles and per group (the algebra and the matrices are in
//! [`crate::arch::winograd`]):
//!
//! ```text
//!   plan time:  U[xi] = (G g G^T)[xi]          Cout/g x C/g per xi, packed as GEMM A panels
//!   per image:  xp    = the input, zero-padded to whole tiles (no edge branches later);
//!                       undilated NCHW images skip it: each block pads its own rows
//!   per block of T tiles (sized so V and M of the block stay in L2):
//!     input:    V[c][xi][t] = (B^T d B)[xi]    d: the alpha x alpha tile t of channel c
//!     GEMM:     M[co][xi][t] = sum_c U[xi][co][c] V[c][xi][t]     alpha^2 GEMMs
//!     output:   Y_t[co] = A^T M A (+ bias, residual, clamp, activation) -> the output band
//! ```
//!
//! Multiplications per output, against 9 C for direct: alpha^2 / m^2 C, i.e. 4 C (F(2,3),
//! 2.25x fewer), 2.25 C (F(4,3), 4x) and 1.78 C (F(6,3), 5.06x); the transforms add O(alpha^3)
//! per tile and channel, which is what limits small-channel layers.
//!
//! Threads: with many groups, groups run in parallel (each on one thread, block after
//! block); otherwise each block's phases run in parallel (channels, then the alpha^2 GEMMs,
//! then output channels). A tile's result depends neither on the block size nor on the
//! thread count: the GEMM sums each element in the same order whatever its column, so the
//! output is bitwise identical on any number of threads.
//!
//! Non-finite inputs: the transforms mix every input of a tile into every output of the
//! tile, so a NaN or infinity in the input makes NaN every output of the tiles whose input
//! window holds it (m x m outputs around it, not only the 3 x 3 that see it), as in every
//! Winograd implementation. Finite inputs give finite outputs (up to overflow).

use crate::algo::OutputPass;
use crate::arch::winograd::{VLayout, Variant, WinoInput, WinoOutput, WinoUkernel, LANES};
use crate::arch::SharedMut;
use crate::gemm::{gemm_packed, Blocking, GemmEpilogue, PackB, PackedA, PrepackedB, StridedB};
use crate::geometry::Geometry;
use crate::kernels::{GemmUkernel, KernelTable};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The image a Winograd run reads.
#[derive(Copy, Clone, Debug)]
pub enum WinoImage<'a> {
    /// The padded copy that [`WinogradPlan::fill`] or [`WinogradPlan::fill_nhwc`] made.
    Padded(&'a [f32]),
    /// The caller's NCHW image itself (undilated plans: [`WinogradPlan::pads_in_blocks`]):
    /// each block pads the rows it reads.
    Nchw(&'a [f32]),
}

/// The largest padded image (floats) Winograd builds per image: 1 Gi floats.
const MAX_IMAGE_FLOATS: usize = 1 << 28;

/// Why `g` cannot run on the `winograd_*` algorithms (SPEC: kernel 3, stride 1, dilation
/// 1), or `Ok`.
pub fn check(g: &Geometry) -> Result<(), String> {
    check_shape(g)?;
    if g.dilation != [1, 1] {
        return Err("needs dilation 1 (dilated layers: dilated_f*x3)".into());
    }
    Ok(())
}

/// Why `g` cannot run on the `dilated_*` algorithms (kernel 3, stride 1, dilation above 1),
/// or `Ok`.
pub fn check_dilated(g: &Geometry) -> Result<(), String> {
    check_shape(g)?;
    if g.dilation == [1, 1] {
        return Err("needs a dilation above 1 (undilated layers: winograd_f*x3)".into());
    }
    Ok(())
}

/// Kernel 3 and stride 1: what the tiles need (any dilation, through phase planes).
pub(crate) fn check_shape(g: &Geometry) -> Result<(), String> {
    let kernel_ok = if g.spatial_rank == 2 {
        g.kernel == [3, 3]
    } else {
        g.kernel[1] == 3
    };
    if !kernel_ok {
        return Err(if g.spatial_rank == 2 {
            format!(
                "needs a 3x3 kernel, the layer has {}x{}",
                g.kernel[0], g.kernel[1]
            )
        } else {
            format!("needs a kernel of 3, the layer has {}", g.kernel[1])
        });
    }
    if g.stride != [1, 1] {
        return Err("needs stride 1".into());
    }
    Ok(())
}

/// The tile geometry of `g` under a variant with `m` outputs per tile and `alpha` inputs:
/// `(mh, ah, tiles_h, tiles_w, ph, pw, phases)`. A dilated layer (dilation dh x dw) is dh x dw
/// undilated convolutions, one per phase: output (oy, ox) = (dh a + py, dw b + px) reads
///
/// ```text
///   xpad[oy + dh ky][ox + dw kx] = xpad[dh (a + ky) + py][dw (b + kx) + px] = P_(py,px)[a + ky][b + kx]
/// ```
///
/// with `P_(py,px)[u][v] = xpad[dh u + py][dw v + px]`: a plain 3x3 convolution of the phase
/// plane, computed here with the same tiles. Every phase gets the largest phase's tile grid
/// (ceil(OH / dh) x ceil(OW / dw) outputs); a smaller phase's extra row or column is computed
/// from zeros and not stored.
pub(crate) fn tile_geometry(g: &Geometry, m: usize, alpha: usize) -> Option<[usize; 7]> {
    let two_d = g.spatial_rank == 2;
    let (mh, ah) = if two_d { (m, alpha) } else { (1, 1) };
    let [dh, dw] = g.dilation;
    let (ohp, owp) = (g.conv_out[0].div_ceil(dh), g.conv_out[1].div_ceil(dw));
    let (tiles_h, tiles_w) = (ohp.div_ceil(mh), owp.div_ceil(m));
    let ph = tiles_h.checked_mul(mh)?.checked_add(ah - mh)?;
    let pw = tiles_w.checked_mul(m)?.checked_add(alpha - m)?;
    Some([mh, ah, tiles_h, tiles_w, ph, pw, dh.checked_mul(dw)?])
}

/// Rows `y0..y0 + rows` of the zero-padded plane of one undilated channel (`src`, its
/// `IH x IW` input plane; padded row `y` holds input row `y - PT`, padded column `x` input
/// column `x - PL`), columns `c0..c1` of each, into `dst` (`rows` rows of `pw` floats; the
/// other columns are not written). The forward's blocks and the weight gradient pad their
/// rows with it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_plane_rows(
    g: &Geometry,
    pw: usize,
    src: &[f32],
    y0: usize,
    rows: usize,
    c0: usize,
    c1: usize,
    dst: &mut [f32],
) {
    let [ih, iw] = g.input;
    let (pt, pl) = (g.pad_before[0], g.pad_before[1]);
    // Padded columns a..b hold input columns a - pl..b - pl.
    let a = pl.clamp(c0, c1);
    let b = (pl + iw).clamp(a, c1);
    for (r, row) in dst.chunks_mut(pw).take(rows).enumerate() {
        let y = y0 + r;
        let row = &mut row[c0..c1];
        if y < pt || y - pt >= ih {
            crate::gemm::pack::zero_floats(row);
            continue;
        }
        crate::gemm::pack::zero_floats(&mut row[..a - c0]);
        crate::gemm::pack::zero_floats(&mut row[b - c0..]);
        let at = (y - pt) * iw + a - pl;
        crate::gemm::pack::copy_floats(&mut row[a - c0..b - c0], &src[at..at + b - a]);
    }
}

/// Rows `r0..r0 + rows` of phase plane `(py, px)` of one channel of a dilated layer (`src`,
/// its `IH x IW` input plane), whole rows of `pw` floats, into `dst`: phase row `r`, column
/// `v` holds padded row `dh r + py`, column `dw v + px` (zero outside the input). Undilated
/// (`dh = dw = 1`, phase (0, 0)) this is [`pad_plane_rows`] over whole rows. `gather` is the
/// tier's strided gather, for `dw > 1`. [`WinogradPlan::fill`] and the weight gradient
/// split their planes with it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_phase_rows(
    g: &Geometry,
    pw: usize,
    src: &[f32],
    [py, px]: [usize; 2],
    r0: usize,
    rows: usize,
    dst: &mut [f32],
    gather: crate::arch::GatherFn,
) {
    let [dh, dw] = g.dilation;
    if dh == 1 && dw == 1 {
        return pad_plane_rows(g, pw, src, r0, rows, 0, pw, dst);
    }
    let [ih, iw] = g.input;
    let (pt, pl) = (g.pad_before[0], g.pad_before[1]);
    // Phase columns v whose padded column dw v + px holds input: c0..c1, the first at input
    // column dw c0 + px - pl.
    let c0 = pl.saturating_sub(px).div_ceil(dw).min(pw);
    let c1 = (pl + iw).saturating_sub(px).div_ceil(dw).clamp(c0, pw);
    for (r, row) in dst.chunks_mut(pw).take(rows).enumerate() {
        let y = dh * (r0 + r) + py;
        if y < pt || y - pt >= ih || c1 == c0 {
            crate::gemm::pack::zero_floats(row);
            continue;
        }
        crate::gemm::pack::zero_floats(&mut row[..c0]);
        crate::gemm::pack::zero_floats(&mut row[c1..]);
        let at = (y - pt) * iw + dw * c0 + px - pl;
        if dw == 1 {
            crate::gemm::pack::copy_floats(&mut row[c0..c1], &src[at..at + c1 - c0]);
        } else {
            gather(&mut row[c0..c1], &src[at..], dw);
        }
    }
}

/// Floats of the padded (and, dilated, phase-split) image of `g` under `variant`, or `None`
/// when the size overflows.
pub fn image_floats(g: &Geometry, variant: Variant) -> Option<usize> {
    let [_, _, _, _, ph, pw, phases] = tile_geometry(g, variant.m(), variant.alpha())?;
    ph.checked_mul(pw)?
        .checked_mul(phases)?
        .checked_mul(g.in_channels)
}

/// Wall-clock time of each phase, summed over runs (`Plan::run_profiled`).
#[derive(Debug, Default)]
pub struct PhaseClock {
    /// Nanoseconds in the input transform.
    pub input_ns: AtomicU64,
    /// Nanoseconds in the transformed-domain GEMMs.
    pub gemm_ns: AtomicU64,
    /// Nanoseconds in the output transform and epilogue.
    pub output_ns: AtomicU64,
}

impl PhaseClock {
    fn add(counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// A planned Winograd layer: transformed, packed weights and the tile geometry.
pub struct WinogradPlan {
    /// The variant.
    pub variant: Variant,
    /// The GEMM microkernel of the transformed domain.
    pub uk: &'static GemmUkernel,
    /// The tier's transforms.
    pub transforms: WinoUkernel,
    blocking: Blocking,
    /// `U`, one packed matrix per (group, xi).
    packed: Vec<PackedA>,
    two_d: bool,
    /// Output rows per tile (m in 2-D, 1 in 1-D).
    mh: usize,
    /// Transformed positions per tile (alpha^2 in 2-D, alpha in 1-D).
    xi: usize,
    tiles_w: usize,
    /// Padded plane: rows and row length.
    ph: usize,
    pw: usize,
    /// Dilation `[dh, dw]`: dh x dw phase planes a channel (see [`tile_geometry`]).
    dilation: [usize; 2],
    /// Output columns a phase computes: ceil(OW / dw).
    ow_phase: usize,
    /// The tier's strided gather (the phase split of a dilated layer).
    gather: crate::arch::GatherFn,
    /// Floats of the padded image (all channels).
    pub image: usize,
    /// Tiles per block (a multiple of LANES and of the kernel's NR).
    tiles_per_block: usize,
}

impl WinogradPlan {
    /// Transforms and packs `weight` (OIHW) for `g` with `variant` on the tier's kernels.
    pub fn new(
        g: &Geometry,
        kernels: &KernelTable,
        weight: &[f32],
        variant: Variant,
    ) -> Result<Self, String> {
        check_shape(g)?;
        // The transformed-domain GEMMs have Cout/g rows: the tile that pads them least.
        let uk = kernels.gemm_for_rows(g.cout_per_group);
        let blocking = Blocking::derive(uk, crate::sysinfo::caches());
        let two_d = g.spatial_rank == 2;
        let too_large =
            || format!("the padded image would hold more than {MAX_IMAGE_FLOATS} floats");
        let [mh, ah, tiles_h, tiles_w, ph, pw, _] =
            tile_geometry(g, variant.m(), variant.alpha()).ok_or_else(too_large)?;
        let xi = ah * variant.alpha();
        let image = image_floats(g, variant)
            .filter(|&v| v <= MAX_IMAGE_FLOATS)
            .ok_or_else(too_large)?;
        let (cg, og) = (g.cin_per_group, g.cout_per_group);
        let packed = transform_weights(g, weight, variant)
            .iter()
            .map(|u| PackedA::from_row_major(u, og, cg, cg, uk.mr, &blocking))
            .collect();
        // Tiles per block T. Two costs pull apart: V (C/g x xi x T) and M (Cout/g x xi x T)
        // of a block should stay in L2 between the transforms and the GEMMs, but every block
        // streams all of U (xi x Cout/g x C/g) through the GEMMs, so when U is large T must
        // be large enough to amortize it. Measured one thread, F(4,3), min of 2 runs each:
        // - vgg16.conv3_3 (U = 9.4 MB): T = 16: 27.6 ms, 48: 30.7, 128: 22.6, 512: 28.2;
        // - vgg16.conv4_3 (U = 37 MB): T = 16: 28.5, 48: 27.1, 128: 20.3, 512: 25.0;
        // - vgg16.conv1_2 (U = 0.6 MB): T = 16: 45.6, 48: 50.3, 128: 48.2, 512: 86.9.
        // So (measured on a 512 KiB L2): V + M within L2 when U fits in two L2s, else at
        // least 128 tiles. On a 2 MiB L2 that gave the 64-channel layers 96 tiles, and their
        // input transform ran at half speed, writing V into lines that had left L2 since the
        // last block (Intel Xeon, one thread, F(4,3), input transform / layer:
        // resnet50.res2.3x3 T = 32: 0.18 / 0.90 ms, T = 96: 0.42 / 1.14; vgg16.conv1_2
        // T = 32: 3.75 / 17.7, T = 96: 6.67 / 20.8; resnet50.res3.3x3.b8 T = 32: 1.21 /
        // 8.8, T = 64: 2.42 / 8.8). So from 1 MiB of L2, V + M within a quarter of it.
        let unit = lcm(LANES, uk.nr);
        let l2 = crate::sysinfo::caches().l2;
        let large_l2 = l2 >= 1 << 20;
        let share = if large_l2 { l2 / 4 } else { l2 };
        let u_bytes = xi * cg * og * 4;
        let tile_bytes = (4 * xi * (cg + og)).max(1);
        let l2_tiles = share / tile_bytes;
        // All phases of a dilated layer share the blocks (run_rows batches them).
        let all_tiles = tiles_h * tiles_w * g.dilation[0] * g.dilation[1];
        // A layer whose V and M fit in half of a large L2 whole runs as one block: U
        // streams once. (textcnn.k3, 64 tiles, 0.6 MB: one block 0.33 ms, two of 32 0.35.
        // Up to all of L2 was too far: resnet50.res3.3x3's 49 tiles, 1.8 MB, in one block of
        // 64 ran 0.80-0.85x two of 32, on one thread and on two.) On a small L2 the rule
        // above already gives one block to what fits.
        let whole = large_l2 && all_tiles.saturating_mul(tile_bytes) <= l2 / 2;
        let budget = std::env::var("CONVKIT_WINO_TILES")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(if whole {
                all_tiles.div_ceil(unit) * unit
            } else if u_bytes <= 2 * l2 {
                l2_tiles
            } else {
                l2_tiles.max(128)
            });
        let tiles_per_block = (budget / unit).max(1).min(all_tiles.div_ceil(unit).max(1)) * unit;
        Ok(WinogradPlan {
            variant,
            uk,
            transforms: kernels.winograd,
            blocking,
            packed,
            two_d,
            mh,
            xi,
            tiles_w,
            ph,
            pw,
            dilation: g.dilation,
            ow_phase: g.conv_out[1].div_ceil(g.dilation[1]),
            gather: kernels.gather,
            image,
            tiles_per_block,
        })
    }

    /// Bytes of transformed, packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.packed.iter().map(PackedA::bytes).sum()
    }

    /// Scratch floats of one block (V and M), per group in flight. (From 4 threads a block
    /// of split loops holds `threads / 2` times as many tiles, all on the calling thread:
    /// still within this times the thread count that the plan reports.)
    pub fn block_floats(&self, g: &Geometry) -> usize {
        self.xi * self.tiles_per_block * (g.cin_per_group + g.cout_per_group)
    }

    /// Fills `xp` (`self.image` floats) with one NCHW image, zero-padded to whole tiles; a
    /// dilated layer's channels as dh x dw phase planes, `[c][py * dw + px][ph][pw]`.
    pub fn fill(&self, g: &Geometry, x: &[f32], xp: &mut [f32]) {
        let [ih, iw] = g.input;
        let (ph, pw) = (self.ph, self.pw);
        let [dh, dw] = self.dilation;
        let gather = self.gather;
        crate::par::for_each_chunk_zip(
            &mut xp[..self.image],
            dh * dw * ph * pw,
            x,
            ih * iw,
            |_, planes, src| {
                for (phase, plane) in planes.chunks_mut(ph * pw).enumerate() {
                    pad_phase_rows(g, pw, src, [phase / dw, phase % dw], 0, ph, plane, gather);
                }
            },
        );
    }

    /// Whether the blocks read an NCHW image in place ([`WinoImage::Nchw`]), each padding
    /// its channels' rows into a buffer of its own: undilated layers. (A dilated layer's
    /// channels are split into phase planes first, by [`WinogradPlan::fill`].)
    pub fn pads_in_blocks(&self) -> bool {
        self.dilation == [1, 1]
    }

    /// Floats of the buffer a block pads one channel's rows into (an upper bound: whole
    /// rows of as many tile rows as a block can touch).
    pub fn block_rows_floats(&self) -> usize {
        let ah = if self.two_d { self.variant.alpha() } else { 1 };
        let tile_rows = self.tiles_per_block.div_ceil(self.tiles_w) + 1;
        ((tile_rows - 1) * self.mh + ah) * self.pw
    }

    /// Whether [`WinogradPlan::fill_nhwc`] takes this plan's images: undilated layers.
    pub fn fills_nhwc(&self) -> bool {
        self.dilation == [1, 1]
    }

    /// Fills `xp` as [`WinogradPlan::fill`] does, from one NHWC image `x` (`[IH][IW][C]`),
    /// without an NCHW copy of the image in between ([`crate::tensor::PaddedPlanes::fill_from_nhwc`]).
    pub fn fill_nhwc(
        &self,
        g: &Geometry,
        x: &[f32],
        xp: &mut [f32],
        transpose: crate::arch::TransposeFn,
    ) {
        debug_assert!(self.fills_nhwc());
        crate::tensor::PaddedPlanes::of(g, [self.ph, self.pw]).fill_from_nhwc(x, xp, transpose);
    }

    /// Conv rows `r0..r1` of one image from its padded copy `xp` into `out`
    /// (`[Cout][r1 - r0][OW]`), with the output pass fused. `clock` times the phases (and
    /// runs groups one after another so the times are wall-clock).
    #[allow(clippy::too_many_arguments)]
    pub fn run_rows(
        &self,
        g: &Geometry,
        img: WinoImage,
        r0: usize,
        r1: usize,
        out: &mut [f32],
        pass: &OutputPass,
        clock: Option<&PhaseClock>,
    ) {
        if r1 <= r0 {
            return;
        }
        let [dh, dw] = self.dilation;
        let ow = g.conv_out[1];
        if dh * dw == 1 {
            let job = Band {
                img,
                r0,
                r1,
                tr0: r0 / self.mh,
                band: (r1 - r0) * ow,
                ow,
                phase_tiles: usize::MAX,
                phases: 1,
                pass,
            };
            let threads = crate::par::threads();
            let tile_rows = r1.div_ceil(self.mh) - r0 / self.mh;
            if clock.is_none() && self.split_rows(g, tile_rows, threads) {
                self.run_parts(g, &job, out, threads);
            } else {
                let mut planes: Vec<&mut [f32]> = out.chunks_mut(job.band).collect();
                self.run_band(g, &job, &mut planes, clock);
            }
            return;
        }
        // Dilated: the phases run as one band, their tiles side by side in the blocks (run
        // one phase at a time, deeplab's 17 x 17-output phases gave the transformed-domain
        // GEMMs 25 columns of F(4,3) tiles each, and streaming U once per phase held them
        // to 46 GFLOP/s). Phase (py, px) needs rows a with r0 <= dh a + py < r1; every
        // phase computes rows a0..a1 = floor(r0 / dh)..ceil(r1 / dh) into a buffer
        // `[Cout][phase][a1 - a0][OW / dw]`, and those rows are scattered to their columns
        // dw b + px. A residual (preloaded in `out`) goes the other way first.
        let owp = self.ow_phase;
        let (a0, a1) = (r0 / dh, r1.div_ceil(dh));
        let (phases, cout, band) = (dh * dw, g.out_channels, (r1 - r0) * ow);
        let pband = (a1 - a0) * owp;
        let mut tmp_buf = crate::tensor::take_scratch(cout * phases * pband);
        let tmp = &mut tmp_buf[..];
        let each = |tmp: &mut [f32], out: &mut [f32], to_out: bool| {
            for (co, t) in tmp.chunks_mut(phases * pband).enumerate() {
                for (phase, tp) in t.chunks_mut(pband).enumerate() {
                    let (py, px) = (phase / dw, phase % dw);
                    // Phase columns that are output columns: dw b + px < OW.
                    let cols = ow.saturating_sub(px).div_ceil(dw);
                    for a in a0..a1 {
                        let r = dh * a + py;
                        if r < r0 || r >= r1 {
                            continue;
                        }
                        let orow = co * band + (r - r0) * ow;
                        let trow = &mut tp[(a - a0) * owp..(a - a0) * owp + cols];
                        for (b, v) in trow.iter_mut().enumerate() {
                            let o = &mut out[orow + dw * b + px];
                            if to_out {
                                *o = *v;
                            } else {
                                *v = *o;
                            }
                        }
                    }
                }
            }
        };
        if pass.accumulate {
            each(tmp, out, false);
        }
        let tr0 = a0 / self.mh;
        let job = Band {
            img,
            r0: a0,
            r1: a1,
            tr0,
            band: phases * pband,
            ow: owp,
            phase_tiles: (a1.div_ceil(self.mh) - tr0) * self.tiles_w,
            phases,
            pass,
        };
        let mut planes: Vec<&mut [f32]> = tmp.chunks_mut(job.band).collect();
        self.run_band(g, &job, &mut planes, clock);
        each(tmp, out, true);
        crate::tensor::give_scratch(tmp_buf);
    }

    /// Whether an undilated band of `tile_rows` tile rows runs as one part of whole tile rows
    /// per thread rather than as blocks whose loops the threads share.
    ///
    /// Each part must hold a block or more. Paired on two threads (Intel Xeon, 2 MiB L2s),
    /// parts took 0.89x the time of shared blocks on resnet50.res2.3x3 (F(4,3), 196 tiles
    /// of 32-tile blocks), 0.92-0.93x on vgg16.conv1_2 (F(6,3)) and vgg16.conv2_2 (F(4,3)).
    /// Parts of less than a block cost 1.08-1.11x where U is large (vgg16.conv3_3 and conv4_3,
    /// 128-tile blocks, 98 tiles a part; resnet50.res3.3x3): each thread streams all of U
    /// for its short part where shared blocks split it.
    fn split_rows(&self, g: &Geometry, tile_rows: usize, threads: usize) -> bool {
        threads > 1
            && g.groups < 2 * threads
            && tile_rows >= threads
            && tile_rows * self.tiles_w >= threads * self.tiles_per_block
    }

    /// Conv rows `job.r0..job.r1` (undilated) into `out` (`[Cout][r1 - r0][OW]`) as `threads`
    /// parts of whole tile rows, each on one thread from its input transform to its output
    /// rows: a block's V and M stay in that thread's L2, and the threads meet once.
    fn run_parts(&self, g: &Geometry, job: &Band, out: &mut [f32], threads: usize) {
        let (mh, ow, band) = (self.mh, job.ow, job.band);
        let tr_end = job.r1.div_ceil(mh);
        let tile_rows = tr_end - job.tr0;
        // Part p: tile rows tr0 + tile_rows * p / T .. tr0 + tile_rows * (p + 1) / T, as output
        // rows clipped to the band.
        let bounds: Vec<usize> = (0..=threads)
            .map(|p| ((job.tr0 + tile_rows * p / threads) * mh).clamp(job.r0, job.r1))
            .collect();
        let cuts: Vec<usize> = bounds.iter().map(|&r| (r - bounds[0]) * ow).collect();
        let parts = crate::par::plane_parts(&mut out[..g.out_channels * band], band, &cuts);
        crate::par::for_each_part(parts, |p, mut planes| {
            let (r0, r1) = (bounds[p], bounds[p + 1]);
            if r1 > r0 {
                let part = Band {
                    r0,
                    r1,
                    tr0: r0 / mh,
                    band: (r1 - r0) * ow,
                    ..*job
                };
                self.run_band(g, &part, &mut planes, None);
            }
        });
    }

    /// Conv rows `job.r0..job.r1` of one phase (the whole image when undilated) into `out`,
    /// one `[r1 - r0][job.ow]` plane per output channel.
    fn run_band(
        &self,
        g: &Geometry,
        job: &Band,
        out: &mut [&mut [f32]],
        clock: Option<&PhaseClock>,
    ) {
        let tiles = if job.phases == 1 {
            (job.r1.div_ceil(self.mh) - job.tr0) * self.tiles_w
        } else {
            job.phases * job.phase_tiles
        };
        let og = g.cout_per_group;
        let threads = crate::par::threads();
        let by_groups = clock.is_none() && threads > 1 && g.groups >= 2 * threads;
        // Split loops: each of a block's three loops is shared by the threads, so a thread
        // does 1/T of a block between two joins, and the block's V and M lie spread over T
        // L2s. From 4 threads the block grows with T/2: measured on a 16-core Xeon (F(6,3),
        // one reading each, ms at 32 / 128 / 512 tiles a block): 8 threads vgg16.conv1_2
        // 11.4 / 6.3 / 6.8, vgg16.conv2_2 6.5 / 3.4 / 3.6, resnet50.res2.3x3 0.58 / 0.54 /
        // 0.43; 16 threads conv1_2 17.6 / 20.5 / 7.3, conv2_2 5.1 / 4.8 / 3.8. On two
        // threads 64 tiles instead of 32 ran 1.10-1.20x slower (res2.3x3, res3.3x3.b8), so
        // two keep the one-thread block.
        let per_block = if by_groups || threads < 4 {
            self.tiles_per_block
        } else {
            self.tiles_per_block * (threads / 2)
        };
        let blocks: Vec<(usize, usize)> = (0..tiles)
            .step_by(per_block)
            .map(|t0| (t0, per_block.min(tiles - t0)))
            .collect();
        if by_groups {
            crate::par::for_each_chunk_mut(&mut out[..g.groups * og], og, |grp, og_out| {
                for &(t0, n) in &blocks {
                    self.block(g, job, grp, t0, n, og_out, false, None);
                }
            });
        } else {
            for (grp, og_out) in out[..g.groups * og].chunks_mut(og).enumerate() {
                for &(t0, n) in &blocks {
                    self.block(g, job, grp, t0, n, og_out, threads > 1, clock);
                }
            }
        }
    }

    /// One block of `n` tiles from tile `t0` of the band, for one group.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        g: &Geometry,
        job: &Band,
        grp: usize,
        t0: usize,
        n: usize,
        out: &mut [&mut [f32]],
        parallel: bool,
        clock: Option<&PhaseClock>,
    ) {
        let (cg, og, xi) = (g.cin_per_group, g.cout_per_group, self.xi);
        let ld = n.div_ceil(LANES) * LANES;
        let plane_len = self.ph * self.pw;
        let phases = self.dilation[0] * self.dilation[1];
        let plane_off = job.tr0 * self.mh * self.pw;
        // V in the GEMM's packed B layout when its panels hold whole lane groups (every
        // x86 tier; NEON's 12-wide panels do not): the GEMMs then read it where it lies.
        // Packing V per GEMM (StridedB) was 6-7% of vgg16.conv3_3, vgg16.conv4_3 and
        // resnet50.res3.3x3 (perf, one thread).
        let nr = self.uk.nr;
        let held = nr.is_multiple_of(LANES);
        let kblocks = self.packed[grp * xi].blocks();
        let cols = if held { ld.div_ceil(nr) * nr } else { ld };
        // One B matrix per xi, a cache line more than its size apart: each lane group writes
        // one NR-float row in every xi's matrix, and at a stride of exactly C/g x cols (128
        // KiB for vgg16.conv3_3) those xi rows all fell in one L1 and L2 set: the input
        // transform ran at half speed.
        let xi_stride = if held { cg * cols + 16 } else { ld };
        let mut v = crate::tensor::take_scratch(if held { xi * xi_stride } else { cg * xi * ld });
        let mut mm = crate::tensor::take_scratch(og * xi * ld);

        let start = Instant::now();
        let v_out = SharedMut::new(&mut v);
        // Channel by channel. (Panel by panel, every channel for each, so that consecutive
        // channels' V rows are consecutive lines, measured 0.93-1.02x this order's speed.)
        // The block's input rows of a channel: tile rows tr_a..=tr_b of the band, and their
        // columns when the block lies within one tile row.
        let (tr_a, tr_b) = (t0 / self.tiles_w, (t0 + n - 1) / self.tiles_w);
        let (mh, m) = (self.mh, self.variant.m());
        let ah = if self.two_d { self.variant.alpha() } else { 1 };
        let rows_in = (tr_b - tr_a) * mh + ah;
        let (c_a, c_b) = if tr_a == tr_b {
            (
                (t0 % self.tiles_w) * m,
                ((t0 + n - 1) % self.tiles_w + 1) * m + 2,
            )
        } else {
            (0, self.pw)
        };
        // Read in place (`WinoImage::Nchw`): the block's first padded row, and the input
        // rows and columns its padded rows hold (the same for every channel).
        let y0 = (job.tr0 + tr_a) * mh;
        let in_plane = g.input[0] * g.input[1];
        let (pt, pl) = (g.pad_before[0], g.pad_before[1]);
        let [ih, iw] = g.input;
        let src_rows = y0.clamp(pt, pt + ih) - pt..(y0 + rows_in).clamp(pt, pt + ih) - pt;
        let src_cols = (c_a.max(pl) - pl, c_b.min(pl + iw).saturating_sub(pl));
        let input = |ci: usize| {
            let layout = if held {
                VLayout::panels(ci, kblocks, cols, nr, xi_stride)
            } else {
                VLayout::rows(ci * xi * ld, ld)
            };
            let transform = |plane: &[f32], t0: usize| {
                (self.transforms.input)(&mut WinoInput {
                    variant: self.variant,
                    two_d: self.two_d,
                    plane,
                    phase_tiles: job.phase_tiles,
                    phase_stride: plane_len,
                    pw: self.pw,
                    tiles_w: self.tiles_w,
                    t0,
                    n,
                    out: &v_out,
                    layout,
                })
            };
            match job.img {
                WinoImage::Padded(xp) => {
                    let at = (grp * cg + ci) * phases * plane_len;
                    // Fetch the next channel's rows of this block while this one is
                    // transformed: a block reads a few short row pieces of each channel's
                    // plane, too short for the hardware prefetchers (vgg16.conv1_2's 13 MB
                    // padded image: 85 ns a tile in the layer against 30-40 with the plane
                    // in cache).
                    if phases == 1 && ci + 1 < cg {
                        let next = at + plane_len + plane_off + tr_a * mh * self.pw;
                        for r in 0..rows_in {
                            let row = next + r * self.pw;
                            crate::arch::prefetch_read(xp, row + c_a, row + c_b);
                        }
                    }
                    transform(&xp[at + plane_off..at + phases * plane_len], t0)
                }
                WinoImage::Nchw(x) => {
                    // The block's rows of this channel, padded into a buffer that stays in
                    // L1 for the transform: the image is read once and no padded copy of
                    // it goes through memory (vgg16.conv1_2: a 13 MB copy, 7% of the layer
                    // on one thread, perf). The next channel's rows are fetched meanwhile,
                    // as above.
                    let channel = |c: usize| &x[c * in_plane..(c + 1) * in_plane];
                    if ci + 1 < cg {
                        let next = channel(grp * cg + ci + 1);
                        for row in src_rows.clone().map(|r| r * g.input[1]) {
                            crate::arch::prefetch_read(next, row + src_cols.0, row + src_cols.1);
                        }
                    }
                    let mut rows = crate::tensor::take_scratch(rows_in * self.pw);
                    pad_plane_rows(
                        g,
                        self.pw,
                        channel(grp * cg + ci),
                        y0,
                        rows_in,
                        c_a,
                        c_b,
                        &mut rows,
                    );
                    transform(&rows, t0 - tr_a * self.tiles_w);
                    crate::tensor::give_scratch(rows);
                }
            }
        };
        if parallel {
            crate::par::for_each_index(cg, input);
        } else {
            (0..cg).for_each(input);
        }
        if let Some(c) = clock {
            PhaseClock::add(&c.input_ns, start);
        }

        let start = Instant::now();
        {
            let shared = SharedMut::new(&mut mm);
            let gemm = |x: usize| {
                let prepacked = PrepackedB {
                    data: &v[x * xi_stride..x * xi_stride + cg * cols],
                    cols,
                    nr,
                    blocks: kblocks,
                };
                let strided = StridedB {
                    data: &v[x * ld..],
                    rs: xi * ld,
                    cs: 1,
                };
                let b: &dyn PackB = if held { &prepacked } else { &strided };
                // Each xi writes its own columns x*ld .. x*ld + n of every row of M.
                // All `ld` columns (n rounded up to LANES; the input transform filled the
                // extra ones by repeating the last tile, and no output reads them): a
                // remainder of 1..4 columns past the last NR panel went to the narrow
                // kernels, 11% of deeplab's F(4,3) time for 4% of its columns.
                gemm_packed(
                    self.uk,
                    &self.blocking,
                    &self.packed[grp * xi + x],
                    b,
                    ld,
                    &shared,
                    x * ld,
                    xi * ld,
                    GemmEpilogue::default(),
                    false,
                );
            };
            if parallel {
                crate::par::for_each_index(xi, gemm);
            } else {
                (0..xi).for_each(gemm);
            }
        }
        if let Some(c) = clock {
            PhaseClock::add(&c.gemm_ns, start);
        }

        let start = Instant::now();
        let pass = job.pass;
        let output = |(co, (plane_out, mslab)): (usize, (&mut &mut [f32], &[f32]))| {
            (self.transforms.output)(&mut WinoOutput {
                variant: self.variant,
                two_d: self.two_d,
                m: mslab,
                ld,
                tiles_w: self.tiles_w,
                tile_row0: job.tr0,
                t0,
                n,
                out: plane_out,
                ow: job.ow,
                phase_tiles: job.phase_tiles,
                phase_stride: (job.r1 - job.r0) * job.ow,
                r0: job.r0,
                r1: job.r1,
                bias: pass.bias.map_or(0.0, |b| b[grp * og + co]),
                accumulate: pass.accumulate,
                clamp: pass.clamp,
                activation: pass.activation,
            })
        };
        if parallel {
            crate::par::for_each_chunk_zip(&mut out[..og], 1, &mm, xi * ld, |co, o, m| {
                output((co, (&mut o[0], m)))
            });
        } else {
            out[..og]
                .iter_mut()
                .zip(mm.chunks(xi * ld))
                .enumerate()
                .for_each(output);
        }
        if let Some(c) = clock {
            PhaseClock::add(&c.output_ns, start);
        }
        crate::tensor::give_scratch(v);
        crate::tensor::give_scratch(mm);
    }
}

/// What every block of a band shares.
#[derive(Clone, Copy)]
struct Band<'a> {
    img: WinoImage<'a>,
    r0: usize,
    r1: usize,
    /// The band's first tile row.
    tr0: usize,
    /// Floats of one channel's band.
    band: usize,
    /// Output columns a row.
    ow: usize,
    /// Tiles a phase (`usize::MAX` when undilated).
    phase_tiles: usize,
    /// Phase planes a channel (1 when undilated).
    phases: usize,
    pass: &'a OutputPass<'a>,
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

/// `U[group * xi + (p, q)]`, each `Cout/g x C/g` row-major: `G g G^T` (2-D) or `G g` (1-D)
/// per (output, input) channel pair, computed in f64 and rounded once.
pub fn transform_weights(g: &Geometry, weight: &[f32], variant: Variant) -> Vec<Vec<f32>> {
    let two_d = g.spatial_rank == 2;
    let alpha = variant.alpha();
    let ah = if two_d { alpha } else { 1 };
    let xi = ah * alpha;
    let (cg, og) = (g.cin_per_group, g.cout_per_group);
    let gm = variant.g();
    let ka = g.kernel_area();
    let mut u = vec![vec![0f32; og * cg]; g.groups * xi];
    let mut gg = vec![0f64; 3 * alpha];
    for co in 0..g.out_channels {
        let (grp, o) = (co / og, co % og);
        for ci in 0..cg {
            let w = &weight[(co * cg + ci) * ka..(co * cg + ci + 1) * ka];
            if two_d {
                // gg = G g (alpha x 3), then U = gg G^T (alpha x alpha).
                for p in 0..alpha {
                    for l in 0..3 {
                        gg[p * 3 + l] = (0..3).map(|k| gm[p * 3 + k] * w[k * 3 + l] as f64).sum();
                    }
                }
                for p in 0..alpha {
                    for q in 0..alpha {
                        let v: f64 = (0..3).map(|l| gg[p * 3 + l] * gm[q * 3 + l]).sum();
                        u[grp * xi + p * alpha + q][o * cg + ci] = v as f32;
                    }
                }
            } else {
                for q in 0..alpha {
                    let v: f64 = (0..3).map(|l| gm[q * 3 + l] * w[l] as f64).sum();
                    u[grp * xi + q][o * cg + ci] = v as f32;
                }
            }
        }
    }
    u
}
