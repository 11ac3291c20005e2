//! `direct_oc`: the direct convolution vectorized over output channels.
//!
//! `direct` computes `C = W X` with the weights broadcast and the vectors along output
//! pixels, so a tile is MR output channels by NR pixels of one row (or of the phase plane's
//! padded row): a 28- or 55-wide output row wastes part of its last tile, and every tap's
//! B row is a misaligned 16-float read from the image. Here the roles swap, `C^T = X^T W^T`:
//! a tile is the kernel's `mr` output pixels by up to its `panels` panels of OC_NR channels
//! (6 x 1 elsewhere; on AVX-512 8 x 2, or 6 x 4 for layers of 48+ channels and K <= 1152:
//! `plan::direct_oc_kernel`) (any pixels: each has its own image offset, so tiles run across row ends
//! with nothing wasted), the pixels' input values are broadcast straight from the padded
//! image, and the weights are packed once, K x OC_NR per channel panel. The tile is written
//! channel by channel (`mr` consecutive floats of each output plane), or, into the band of a
//! fused window pool, pixel by pixel as the accumulators hold it (channels-last): the pool
//! reads that band a whole pixel at a time and transposes only its pooled rows. Paired runs
//! against planar bands (min time, 2026-11-30): alexnet.conv1 1.20x faster on one and two
//! threads, resnet50.conv1 1.03x on one, 1.07x on two.
//!
//! The image is padded but not split into stride phases (the [`PhaseLayout`] of the layer
//! taken at stride 1): a tile's taps then lie on few rows. Split, alexnet.conv1's 363 taps
//! fall on 144 phase-plane rows (3 channels x 16 phases x 3) instead of 33.
//!
//! Measured against `direct` side by side (one thread, AVX2, paired runs, 2026-11-29):
//! googlenet.inc3a.5x5 0.84-0.92x its time (OW = 28 left direct's 16-wide row tiles 12%
//! empty; here nothing is), alexnet.conv1 0.99-1.02x, resnet50.res3.3x3s2 0.97-1.04x,
//! resnet50.conv1 1.14-1.30x (K = 147: the transposed store of each tile weighs more). A
//! stand-alone loop over alexnet's shape (no bias, no pool, no bands) reached 68-77 GFLOP/s
//! in some runs, 51-58 in others; the plan's version has not matched its best runs, and
//! why is not settled.

use super::direct::PhaseLayout;
use crate::arch::{activate_tile, run_oc_tile, OffsetTable, SharedMut};
use crate::geometry::Geometry;
use crate::kernels::{OcUkernel, OC_MR_MAX, OC_NR};

/// A planned `direct_oc` convolution.
pub struct DirectOcPlan {
    /// The tile kernel.
    pub uk: OcUkernel,
    /// The image layout: the layer's padded image at stride 1 (no phase split).
    pub layout: PhaseLayout,
    /// The layer at stride 1, which `layout` pads.
    unit_stride: Geometry,
    /// Weights per group: `ceil(Cout/g / OC_NR)` panels of K x OC_NR (zero past the group's
    /// channels; denormals flushed to zero, as every packing does), 64-byte aligned so that
    /// each panel row is one cache line.
    pub panels: Vec<crate::tensor::AlignedBuf>,
    /// Every tap's offset from a pixel's base, relative to the group's first channel.
    pub offsets: OffsetTable,
}

impl DirectOcPlan {
    /// The layer at stride 1 and the padded image layout it gives (no phase split), or why
    /// not (too large).
    pub fn padded_layout(g: &Geometry) -> Result<(Geometry, PhaseLayout), String> {
        let unit_stride = Geometry {
            stride: [1, 1],
            ..g.clone()
        };
        let layout = PhaseLayout::new(&unit_stride, OC_NR)?;
        Ok((unit_stride, layout))
    }

    /// Packs `weight` (OIHW) for `g`.
    pub fn new(g: &Geometry, uk: OcUkernel, weight: &[f32]) -> Result<Self, String> {
        let (unit_stride, layout) = Self::padded_layout(g)?;
        let k = g.cin_per_group * g.kernel_area();
        let opg = g.cout_per_group;
        let count = opg.div_ceil(OC_NR);
        let panels = (0..g.groups)
            .map(|grp| {
                // Aligned: a plain `Vec` starts at 16 bytes mod 64 by the allocator's whim,
                // and then every 64-byte weight load of the K loop spans two lines.
                // Paired, one thread, against a `Vec` whose offset happened to differ with
                // the command line's length: resnet50.conv1 and alexnet.conv1 each swung
                // 0.89-1.09x between two placements.
                let mut packed = crate::tensor::aligned_zeros(count * k * OC_NR);
                for (jp, panel) in packed.chunks_exact_mut(k * OC_NR).enumerate() {
                    for (p, row) in panel.chunks_exact_mut(OC_NR).enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            let co = jp * OC_NR + j;
                            if co < opg {
                                *v = crate::gemm::flush_denormal(weight[(grp * opg + co) * k + p]);
                            }
                        }
                    }
                }
                packed
            })
            .collect();
        let offsets = OffsetTable::new(layout.offsets(&unit_stride));
        Ok(DirectOcPlan {
            uk,
            layout,
            unit_stride,
            panels,
            offsets,
        })
    }

    /// Fills `xp` (`self.layout.image` floats) with one NHWC image, padded (its planes as
    /// [`DirectOcPlan::fill`] lays them out).
    pub fn fill_nhwc(&self, x: &[f32], xp: &mut [f32], transpose: crate::arch::TransposeFn) {
        self.layout.fill_nhwc(&self.unit_stride, x, xp, transpose)
    }

    /// Fills `xp` (`self.layout.image` floats) with one NCHW image, padded.
    pub fn fill(&self, x: &[f32], xp: &mut [f32], gather: crate::algo::direct::Gather) {
        self.layout.fill(&self.unit_stride, x, xp, gather)
    }

    /// Bytes of packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.panels.iter().map(|p| p.len() * 4).sum()
    }

    /// Computes conv rows `r0..r1` of one image whose padded copy is `xp` (`self.fill`), into
    /// `out` laid out `[Cout][r1 - r0][OW]`, or channels-last `[r1 - r0][OW][Cout]` when
    /// `channels_last` (preloaded with the residual rows when `pass.accumulate`).
    ///
    /// Channels-last is the tile's own order (pixels by channels), stored without the
    /// transpose that the planar layout needs; the fused pool takes such bands.
    #[allow(clippy::too_many_arguments)]
    pub fn run_rows(
        &self,
        g: &Geometry,
        xp: &[f32],
        r0: usize,
        r1: usize,
        out: &mut [f32],
        pass: &super::OutputPass,
        channels_last: bool,
    ) {
        let super::OutputPass {
            bias,
            accumulate,
            clamp,
            activation,
        } = *pass;
        let ow = g.conv_out[1];
        let band = (r1 - r0) * ow;
        if band == 0 {
            return;
        }
        let (cpg, opg) = (g.cin_per_group, g.cout_per_group);
        let (pw, chan) = (self.layout.pw, self.layout.chan);
        let [sh, sw] = g.stride;
        let k = self.offsets.len();
        let mr = self.uk.mr;
        let tiles = band.div_ceil(mr);
        // Tasks: (group, chunk of pixel tiles, share of the channel calls), a few per
        // thread. The calls are shared out only where the tiles alone give fewer tasks than
        // the pool wants (task_chunks: about four a thread): resnet50.res5.3x3's 49 pixels are
        // 7 tiles, which two threads took 4 and 3.
        let (chunks, per_chunk) = super::task_chunks(tiles, g.groups);
        let calls = opg.div_ceil(OC_NR).div_ceil(self.uk.panels);
        let wanted = 4 * crate::par::threads();
        let shares = wanted.div_ceil(g.groups * chunks).clamp(1, calls);
        let per_share = calls.div_ceil(shares);
        let shares = calls.div_ceil(per_share);
        let shared = SharedMut::new(out);
        let task = |t: usize| {
            let (share, t) = (t % shares, t / shares);
            let (grp, chunk) = (t / chunks, t % chunks);
            let grp_base = grp * cpg * chan;
            let c_grp = grp * opg * band;
            let panels = &self.panels[grp];
            // Tile by tile, then panel: the tile's image lines stay in L1 while every panel's
            // weights stream past. (Panel by panel, with each panel's weights in L1 and the
            // image lines read again per panel, and K blocks of 128-256 taps, measured
            // 1.03-1.14x slower on alexnet.conv1, googlenet.inc3a.5x5 and res3.3x3s2.)
            for tile in chunk * per_chunk..((chunk + 1) * per_chunk).min(tiles) {
                let q0 = tile * mr;
                let m = mr.min(band - q0);
                // Pixel slots past the band repeat its last pixel (read, never stored). The
                // row and column step along from q0's (one division a tile, not one a
                // pixel).
                let mut bases = [0usize; OC_MR_MAX];
                let (mut row, mut col) = (q0 / ow, q0 % ow);
                for (i, base) in bases.iter_mut().enumerate() {
                    *base = grp_base + (r0 + row) * sh * pw + col * sw;
                    if q0 + i + 1 < band {
                        col += 1;
                        if col == ow {
                            (row, col) = (row + 1, 0);
                        }
                    }
                }
                // As many channel panels a call as the kernel takes (AVX-512: 2, each
                // broadcast image value then feeds 32 channels).
                let group = self.uk.panels;
                for (jg, w) in panels
                    .chunks(group * k * OC_NR)
                    .enumerate()
                    .skip(share * per_share)
                    .take(per_share)
                {
                    let c0 = jg * group * OC_NR;
                    let n = (group * OC_NR).min(opg - c0);
                    // Where channel c0 of pixel q0 goes, and the stride between channels
                    // (planar) or between pixels (channels-last).
                    let (c_off, stride) = if channels_last {
                        (q0 * g.out_channels + grp * opg + c0, g.out_channels)
                    } else {
                        (c_grp + c0 * band + q0, band)
                    };
                    run_oc_tile(
                        &self.uk,
                        xp,
                        &bases,
                        &self.offsets,
                        w,
                        n.div_ceil(OC_NR),
                        &shared,
                        c_off,
                        stride,
                        channels_last,
                        m,
                        n,
                        accumulate,
                        bias.map(|b| &b[grp * opg + c0..]),
                        clamp,
                    );
                    if let Some((kernel, act)) = activation {
                        if channels_last {
                            activate_tile(&kernel, act, &shared, c_off, stride, m, n);
                        } else {
                            activate_tile(&kernel, act, &shared, c_off, stride, n, m);
                        }
                    }
                }
            }
        };
        crate::par::for_each_index(g.groups * chunks * shares, task);
    }
}
