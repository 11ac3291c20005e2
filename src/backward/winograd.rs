//! The weight gradient of a stride-1 convolution of kernel 3x3 (2-D) or 3 (1-D), of any
//! dilation, by Winograd's minimal filtering, the adjoint of the forward algorithm
//! ([`crate::algo::winograd`]). A dilated layer is the undilated convolutions of its phase
//! planes, as in the forward algorithm; a 1-D layer has tiles of `1 x m`, `alpha` transformed
//! positions and `dW = G^T dU`.
//!
//! Forward, per tile and channel pair, `Y = A^T [U * V] A` with `U = G g G^T` and
//! `V = B^T d B`; summed over the input channels, `M[xi] = U[xi] V[xi]`. Its gradient:
//!
//! ```text
//!   dU[xi][co][ci] = sum over tiles t of  (A dY_t,co A^T)[xi] V[xi][ci][t]      alpha^2 GEMMs
//!   dW[co][ci]     = G^T dU[co][ci] G                                           3 x 3 each
//! ```
//!
//! with the tiles of every image of the batch forming the GEMMs' K dimension. Per output
//! value, `alpha^2 / m^2` multiply-adds a channel pair against 9 for the im2col GEMM: F(4,3)
//! 2.25 (4x fewer), F(2,3) 4. The transforms of `x` are the forward's input transform; those
//! of `dY` are [`crate::arch::winograd::WinoGrad`].
//!
//! Blocks of tiles bound the memory: V (C/g channels) and the transformed `dY` (Cout/g) of
//! one block, about 4 MiB together, and `dU` accumulated across blocks in batch order.
//! Determinism: each element of `dU` is one GEMM's sum over the tiles in order, whatever the
//! thread count (the GEMMs run one per task), so the gradient is bitwise identical on any
//! number of threads.
//!
//! Non-finite values: as in the forward algorithm, the transforms mix a whole tile, so a NaN
//! or infinity in `x` or `dY` makes NaN every weight gradient of the channel pairs whose
//! tiles hold it, not only the taps that read it.

use crate::algo::winograd::{pad_phase_rows, tile_geometry};
use crate::arch::winograd::{VLayout, Variant, WinoGrad, WinoInput, LANES};
use crate::arch::SharedMut;
use crate::error::{Error, Result};
use crate::gemm::pack::StridedB;
use crate::gemm::{gemm_packed, Blocking, GemmEpilogue, PackedA};
use crate::geometry::Geometry;
use crate::reference::check_len;

/// A run of a block's tiles that lie in one phase plane of one image.
struct Segment {
    /// The image.
    img: usize,
    /// The phase `[py, px]` (`[0, 0]` undilated).
    phase: [usize; 2],
    /// The first tile, counted in the phase plane.
    first: usize,
    /// Tiles.
    n: usize,
    /// The first tile's column in the block.
    col: usize,
}

/// Bytes of V and the transformed `dY` of one block of tiles (together).
const BLOCK_BYTES: usize = 4 << 20;

/// Why `g` cannot take the Winograd weight gradient (kernel 3x3 in 2-D or 3 in 1-D, stride
/// 1, any dilation), or `Ok`.
pub fn winograd_weights_check(g: &Geometry) -> std::result::Result<(), String> {
    crate::algo::winograd::check_shape(g)
}

/// dL/dw (weight shape, overwritten) from `x` and `dz` (conv-output shape) by Winograd
/// `variant`, summed over the batch. Runs on the current rayon pool. A layer the algorithm
/// does not take ([`winograd_weights_check`]) and wrong lengths are errors.
///
/// A dilated layer (dilation dh x dw) is dh x dw undilated convolutions of the phase planes
/// of its padded input, `P[u][v] = xpad[dh u + py][dw v + px]`, each producing the outputs
/// `(dh a + py, dw b + px)` with the same weights (see [`crate::algo::winograd`]): its weight
/// gradient sums the undilated gradients of every phase, so the phases' tiles join the GEMMs'
/// K dimension beside the images'. Each phase gets the largest phase's tile grid; the tiles
/// past a smaller phase's outputs hold zero gradients and add nothing.
pub fn backward_weights_winograd_into(
    g: &Geometry,
    kernels: &crate::kernels::KernelTable,
    variant: Variant,
    x: &[f32],
    dz: &[f32],
    dw: &mut [f32],
) -> Result<()> {
    backward_weights_winograd_blocks(g, kernels, variant, x, dz, dw, None)
}

/// [`backward_weights_winograd_into`] with `tiles_per_block` tiles a block (rounded up to a
/// multiple of 8) in place of the size chosen from [`BLOCK_BYTES`], which on the small
/// layers of a test holds every tile in one block: the tests' way to make blocks end inside
/// images and phases.
#[doc(hidden)]
pub fn backward_weights_winograd_blocks(
    g: &Geometry,
    kernels: &crate::kernels::KernelTable,
    variant: Variant,
    x: &[f32],
    dz: &[f32],
    dw: &mut [f32],
    tiles_per_block: Option<usize>,
) -> Result<()> {
    winograd_weights_check(g).map_err(|why| Error::AlgorithmRejects {
        algo: format!("winograd_f{}x3 weight gradient", variant.m()),
        why,
    })?;
    check_len("x", x.len(), g.input_len())?;
    check_len("dz", dz.len(), g.conv_output_len())?;
    check_len("dw", dw.len(), g.weight_len())?;
    let too_large =
        || Error::InvalidArgument("the layer's tiles overflow the address space".into());
    let (m, alpha) = (variant.m(), variant.alpha());
    let two_d = g.spatial_rank == 2;
    // Tile rows mh and their input rows ah (m and alpha in 2-D, 1 and 1 in 1-D), the phase
    // plane's tile grid and padded row length, and the phases (dh x dw).
    let [mh, ah, tiles_h, tiles_w, _, pw, phases] =
        tile_geometry(g, m, alpha).ok_or_else(too_large)?;
    let xi_n = ah * alpha;
    let [dil_h, dil_w] = g.dilation;
    let [ih, iw] = g.input;
    let [oh, ow] = g.conv_out;
    let (cg, og) = (g.cin_per_group, g.cout_per_group);
    let phase_tiles = tiles_h.checked_mul(tiles_w).ok_or_else(too_large)?;
    let t_img = phase_tiles.checked_mul(phases).ok_or_else(too_large)?;
    let total = g.batch.checked_mul(t_img).ok_or_else(too_large)?;
    let per_tile = (cg + og) * xi_n * 4;
    let tb = tiles_per_block
        .map(|t| t.max(1).next_multiple_of(LANES))
        .unwrap_or_else(|| {
            (BLOCK_BYTES / per_tile)
                .next_multiple_of(LANES)
                .clamp(64, 4096)
        })
        .min(total.max(1));
    // The input transform writes whole lane groups: those past a block's last tile land in
    // this slack.
    let ld = (tb + LANES).next_multiple_of(LANES);
    let slab = xi_n * ld;
    let uk = kernels.gemm_default();
    let blocking = Blocking::derive(uk, crate::sysinfo::caches());
    let gm = variant.g();
    let (in_area, out_area) = (ih * iw, oh * ow);
    // Recycled buffers: fresh ones were faulted in and zeroed on every call (a sixth of
    // resnet50.res2.3x3's F(4,3) weight gradient). Every column a GEMM reads is written
    // first, so their contents need not be cleared; dU is zeroed per group.
    let mut v = crate::tensor::take_scratch(cg * slab);
    let mut dy = crate::tensor::take_scratch(og * slab);
    let mut du = crate::tensor::take_scratch(xi_n * cg * og);
    // V[xi] packed as the GEMMs' A, one matrix a transformed position, reused by every block.
    let mut packs: Vec<PackedA> = (0..xi_n).map(|_| PackedA::empty(uk.mr)).collect();
    for grp in 0..g.groups {
        du.fill(0.0);
        for b0 in (0..total).step_by(tb) {
            let nb = tb.min(total - b0);
            // The block's tiles, image by image and phase by phase: (image, phase, first
            // tile of the phase plane, tiles, column).
            let segments: Vec<Segment> = {
                let mut s = Vec::new();
                let mut t = b0;
                while t < b0 + nb {
                    let (img, local) = (t / t_img, t % t_img);
                    let (phase, first) = (local / phase_tiles, local % phase_tiles);
                    let n = (phase_tiles - first).min(b0 + nb - t);
                    s.push(Segment {
                        img,
                        phase: [phase / dil_w, phase % dil_w],
                        first,
                        n,
                        col: t - b0,
                    });
                    t += n;
                }
                s
            };
            // V: the forward's input transform, a channel a task, its band of padded rows.
            crate::par::for_each_chunk_mut(&mut v, slab, |ci, out| {
                let mut band = Vec::new();
                let shared = SharedMut::new(out);
                for s in &segments {
                    let (tr0, tr1) = (s.first / tiles_w, (s.first + s.n - 1) / tiles_w + 1);
                    let rows = (tr1 - tr0) * mh + ah - mh;
                    band.resize(rows * pw, 0.0);
                    let plane = &x[(s.img * g.in_channels + grp * cg + ci) * in_area..][..in_area];
                    pad_phase_rows(
                        g,
                        pw,
                        plane,
                        s.phase,
                        tr0 * mh,
                        rows,
                        &mut band,
                        kernels.gather,
                    );
                    (kernels.winograd.input)(&mut WinoInput {
                        variant,
                        two_d,
                        plane: &band,
                        pw,
                        tiles_w,
                        t0: s.first - tr0 * tiles_w,
                        n: s.n,
                        phase_tiles: usize::MAX,
                        phase_stride: 0,
                        out: &shared,
                        layout: VLayout::rows(s.col, ld),
                    });
                }
            });
            // A dY A^T, eight output channels a task, written [xi][tile][Cout/g].
            {
                let out = SharedMut::new(&mut dy);
                crate::par::for_each_index(og.div_ceil(LANES), |cb| {
                    let co0 = cb * LANES;
                    for s in &segments {
                        let first = (s.img * g.out_channels + grp * og + co0) * out_area;
                        let [py, px] = s.phase;
                        (kernels.winograd.grad)(&mut WinoGrad {
                            variant,
                            two_d,
                            dy: &dz[first..],
                            channels: LANES.min(og - co0),
                            plane_stride: out_area,
                            origin: py * ow + px,
                            row_stride: dil_h * ow,
                            col_stride: dil_w,
                            rows: oh.saturating_sub(py).div_ceil(dil_h),
                            cols: ow.saturating_sub(px).div_ceil(dil_w),
                            tiles_w,
                            t0: s.first,
                            n: s.n,
                            out: &out,
                            base: s.col * og + co0,
                            xi_stride: ld * og,
                            tile_stride: og,
                        });
                    }
                });
            }
            // dU[xi] (C/g x Cout/g) += V[xi] (C/g x tiles) dY'[xi]^T (tiles x Cout/g): one
            // GEMM a task, K = the block's tiles in order.
            let shared = SharedMut::new(&mut du);
            let (v, dy) = (&v[..], &dy[..]);
            crate::par::for_each_item(packs.iter_mut().collect(), |xi, a: &mut PackedA| {
                a.repack_row_major(&v[xi * ld..], cg, nb, slab, uk.mr, &blocking);
                let b = StridedB {
                    data: &dy[xi * ld * og..],
                    rs: og,
                    cs: 1,
                };
                gemm_packed(
                    uk,
                    &blocking,
                    a,
                    &b,
                    og,
                    &shared,
                    xi * cg * og,
                    og,
                    GemmEpilogue {
                        accumulate: true,
                        ..GemmEpilogue::default()
                    },
                    false,
                );
            });
        }
        // dW = G^T dU G for every channel pair at once, over whole (C/g x Cout/g) planes of
        // dU (vectorizable runs; a pair at a time read 36 values a plane apart, a tenth of
        // resnet50.res2.3x3's weight gradient): t[p][kx] = sum_q dU[p][q] G[q][kx], then
        // s[ky][kx] = sum_p G[p][ky] t[p][kx], then each pair's 9 values into dW. In 1-D
        // dU has alpha planes and s[kx] = sum_q dU[q] G[q][kx] is the gradient.
        let plane = cg * og;
        let axpy = |dst: &mut [f32], c: f64, src: &[f32]| {
            let c = c as f32;
            if c != 0.0 {
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d += c * x;
                }
            }
        };
        let rows_g = if two_d { alpha } else { 1 };
        let mut t = crate::tensor::take_scratch(rows_g * 3 * plane);
        crate::par::for_each_chunk_mut(&mut t, plane, |pk, tp| {
            let (p, kx) = (pk / 3, pk % 3);
            tp.fill(0.0);
            for q in 0..alpha {
                axpy(tp, gm[q * 3 + kx], &du[(p * alpha + q) * plane..][..plane]);
            }
        });
        let taps = g.kernel_area();
        let s = if two_d {
            let mut s9 = crate::tensor::take_scratch(9 * plane);
            crate::par::for_each_chunk_mut(&mut s9, plane, |kk, sp| {
                let (ky, kx) = (kk / 3, kk % 3);
                sp.fill(0.0);
                for p in 0..alpha {
                    axpy(sp, gm[p * 3 + ky], &t[(p * 3 + kx) * plane..][..plane]);
                }
            });
            crate::tensor::give_scratch(t);
            s9
        } else {
            t
        };
        let sr = &s[..];
        crate::par::for_each_chunk_mut(
            &mut dw[grp * og * cg * taps..(grp + 1) * og * cg * taps],
            cg * taps,
            |co, wk| {
                for (ci, wt) in wk.chunks_exact_mut(taps).enumerate() {
                    for (kk, w) in wt.iter_mut().enumerate() {
                        *w = sr[kk * plane + ci * og + co];
                    }
                }
            },
        );
        crate::tensor::give_scratch(s);
    }
    crate::tensor::give_scratch(v);
    crate::tensor::give_scratch(dy);
    crate::tensor::give_scratch(du);
    Ok(())
}
