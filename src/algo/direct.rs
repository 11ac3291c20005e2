//! Direct convolution on the GEMM microkernels, without an im2col copy ("indirect GEMM").
//!
//! The image is padded once and, for stride s > 1, split into s x s phase planes, so that for
//! every kernel tap the NR outputs of a tile read NR *consecutive* floats:
//!
//! ```text
//!   padded[Y][X] = x[Y - PT][X - PL]  (0 outside)
//!   phase (py, px) plane:  P[r][c] = padded[r * SH + py][c * SW + px],  PH x PW floats
//!   output (oy, ox) reads, for tap (ci, ky, kx):
//!       padded[oy*SH + ky*DH][ox*SW + kx*DW]
//!     = P_(ky*DH % SH, kx*DW % SW) [oy + ky*DH / SH][ox + kx*DW / SW]
//! ```
//!
//! so row p = (ci, ky, kx) of the tile's B is `xp[base(oy, ox0) + off[p]]`, with
//! `off[p] = ci * chan + phase(p) * PH * PW + (ky*DH / SH) * PW + kx*DW / SW` fixed at plan time
//! and `base = oy * PW + ox0`. The microkernel reads those rows in place (`BPanel::Indirect`).
//! Columns of a tile past the output row read the next row or the slack: they are computed
//! and never stored.

use crate::arch::{activate_tile, run_gemm_column, BPanel, GemmBias, OffsetTable, SharedMut};
use crate::gemm::{Blocking, PackedA};
use crate::geometry::Geometry;
use crate::kernels::GemmUkernel;

/// A tier's strided copies for the phase split: its gather and its two-phase deinterleave
/// ([`crate::kernels::KernelTable::gather`], [`crate::kernels::KernelTable::deinterleave2`]).
#[derive(Copy, Clone)]
pub struct Gather {
    /// `dst[t] = src[t * stride]`.
    pub strided: crate::arch::GatherFn,
    /// `even[t] = src[2t]`, `odd[t] = src[2t + 1]`.
    pub deinterleave2: crate::arch::Deinterleave2Fn,
}

impl Gather {
    /// The copies of a tier's kernel table.
    pub fn of(k: &crate::kernels::KernelTable) -> Self {
        Gather {
            strided: k.gather,
            deinterleave2: k.deinterleave2,
        }
    }
}

/// The largest padded, phase-split image (floats) `direct` builds per image: 1 Gi floats.
pub const MAX_IMAGE_FLOATS: usize = 1 << 28;

/// The padded, phase-split image layout of a layer.
#[derive(Clone, Debug)]
pub struct PhaseLayout {
    /// Phase plane height and width.
    pub ph: usize,
    /// Phase plane width.
    pub pw: usize,
    /// Floats per channel (SH * SW phase planes).
    pub chan: usize,
    /// Floats per image, slack included.
    pub image: usize,
    /// Per column phase: the phase-row columns `c0..c1` that hold input and the input column
    /// of `c0` (the same for every row).
    cols: Vec<(usize, usize, usize)>,
    /// Stride 2 with both column phases fed by one deinterleave: `(phase of the first
    /// stream, of the second, first input column, count)`.
    paired: Option<(usize, usize, usize, usize)>,
}

impl PhaseLayout {
    /// The layout for `g` with tiles `nr` wide, or why not (too large).
    pub fn new(g: &Geometry, nr: usize) -> Result<Self, String> {
        let hpad = g.input[0] + g.pad_before[0] + g.pad_after[0];
        let wpad = g.input[1] + g.pad_before[1] + g.pad_after[1];
        let (ph, pw) = (hpad.div_ceil(g.stride[0]), wpad.div_ceil(g.stride[1]));
        let chan = ph
            .checked_mul(pw)
            .and_then(|v| v.checked_mul(g.stride[0] * g.stride[1]))
            .ok_or("padded image size overflows")?;
        let image = chan
            .checked_mul(g.in_channels)
            .and_then(|v| v.checked_add(nr + pw))
            .ok_or("padded image size overflows")?;
        if image > MAX_IMAGE_FLOATS {
            return Err(format!(
                "the padded image would hold {image} floats (more than {MAX_IMAGE_FLOATS}); use im2col"
            ));
        }
        let (pl, iw, sw) = (g.pad_before[1], g.input[1], g.stride[1]);
        // Per column phase px: the phase-row columns c0..c1 that hold input (pl <= cc*sw + px
        // < pl + iw; the rest is padding) and the input column of c0. The same for every row
        // and channel: found once per layout (four divisions a row had cost more than the
        // row's copy).
        let cols: Vec<(usize, usize, usize)> = (0..sw)
            .map(|px| {
                let c0 = pl.saturating_sub(px).div_ceil(sw).min(pw);
                let c1 = (pl + iw).saturating_sub(px).div_ceil(sw).clamp(c0, pw);
                (c0, c1, (c0 * sw + px).saturating_sub(pl))
            })
            .collect();
        // Stride 2 with both column phases holding the same count of inputs from neighbouring
        // first columns (every stride-2 layer of the suite): one deinterleave of the row from
        // the lower first column feeds both, its first stream to that phase, its second to
        // the other. `(phase of the first stream, of the second, first column, count)`.
        // resnet50.res3.3x3s2 (im2col, perf): the split went from 13.9% of the layer (two
        // stride-2 gathers a row, 7.5% the gathers, 4.1% their calls) to 11.4%; paired
        // binaries 1.076x / 0.992x by order. What is left is reading the 1.6 MB image.
        let paired = (sw == 2)
            .then(|| {
                let ((a0, a1, fa), (b0, b1, fb)) = (cols[0], cols[1]);
                (a1 - a0 == b1 - b0 && a1 > a0 && fa.abs_diff(fb) == 1).then(|| {
                    if fa < fb {
                        (0, 1, fa, a1 - a0)
                    } else {
                        (1, 0, fb, a1 - a0)
                    }
                })
            })
            .flatten();
        Ok(PhaseLayout {
            ph,
            pw,
            chan,
            image,
            cols,
            paired,
        })
    }

    /// Fills `xp` (`self.image` floats) from one NHWC image `x` (`[IH][IW][C]`); only for
    /// layouts of a stride-1 geometry (no phase split: `direct_oc`'s), `g` that geometry.
    pub fn fill_nhwc(
        &self,
        g: &Geometry,
        x: &[f32],
        xp: &mut [f32],
        transpose: crate::arch::TransposeFn,
    ) {
        debug_assert!(g.stride == [1, 1] && self.chan == self.ph * self.pw);
        crate::tensor::PaddedPlanes::of(g, [self.ph, self.pw]).fill_from_nhwc(x, xp, transpose);
        xp[self.chan * g.in_channels..self.image].fill(0.0);
    }

    /// Fills `xp` (`self.image` floats) from one NCHW image `x`.
    pub fn fill(&self, g: &Geometry, x: &[f32], xp: &mut [f32], gather: Gather) {
        let [ih, iw] = g.input;
        let chans = &mut xp[..self.chan * g.in_channels];
        crate::par::for_each_chunk_mut(chans, self.chan, |c, dst| {
            self.fill_channel(g, &x[c * ih * iw..(c + 1) * ih * iw], dst, gather)
        });
        xp[self.chan * g.in_channels..].fill(0.0);
    }

    /// Fills one channel's phase planes (`self.chan` floats of `dst`) from its input plane;
    /// `g` is the geometry the layout was made for.
    pub fn fill_channel(&self, g: &Geometry, src: &[f32], dst: &mut [f32], gather: Gather) {
        let [ih, iw] = g.input;
        let (sh, sw) = (g.stride[0], g.stride[1]);
        let pt = g.pad_before[0];
        let (ph, pw) = (self.ph, self.pw);
        // Row by row, all column phases of an input row one after the other: the row is read
        // sw times (once a phase) while it is in L1. (Phase by phase, each input row came
        // back from L2 sw times: alexnet.conv1's stride-4 split.)
        let plane_len = ph * pw;
        let (cols, paired) = (&self.cols, self.paired);
        for py in 0..sh {
            for r in 0..ph {
                let y = r * sh + py;
                let in_image = y >= pt && y - pt < ih;
                if let (true, Some((pe, po, first, count))) = (in_image, paired) {
                    // Rows of phases py * 2 + pe and py * 2 + po: separate planes.
                    let plane0 = py * sw * plane_len;
                    let (first_plane, second_plane) =
                        dst[plane0..plane0 + 2 * plane_len].split_at_mut(plane_len);
                    let row0 = &mut first_plane[r * pw..(r + 1) * pw];
                    let row1 = &mut second_plane[r * pw..(r + 1) * pw];
                    let (even_row, odd_row) = if pe == 0 { (row0, row1) } else { (row1, row0) };
                    let ((ce0, ce1, _), (co0, co1, _)) = (cols[pe], cols[po]);
                    even_row[..ce0].fill(0.0);
                    even_row[ce1..].fill(0.0);
                    odd_row[..co0].fill(0.0);
                    odd_row[co1..].fill(0.0);
                    let at = (y - pt) * iw + first;
                    (gather.deinterleave2)(
                        &mut even_row[ce0..ce0 + count],
                        &mut odd_row[co0..co0 + count],
                        &src[at..],
                    );
                    continue;
                }
                for (px, &(c0, c1, first)) in cols.iter().enumerate() {
                    let phase = py * sw + px;
                    let row = &mut dst[phase * plane_len + r * pw..][..pw];
                    if !in_image {
                        row.fill(0.0);
                        continue;
                    }
                    crate::gemm::pack::zero_floats(&mut row[..c0]);
                    crate::gemm::pack::zero_floats(&mut row[c1..]);
                    if c1 > c0 {
                        let at = (y - pt) * iw + first;
                        if sw == 1 {
                            crate::gemm::pack::copy_floats(
                                &mut row[c0..c1],
                                &src[at..at + (c1 - c0)],
                            );
                        } else {
                            // The tier's strided gather, reading ahead within the channel so
                            // whole runs go in vector blocks (a step_by/zip chain here ran at
                            // 2.5 ns a float, a scalar loop at ~3 cycles, and dominated
                            // mobilenetv2.dw56s2).
                            (gather.strided)(&mut row[c0..c1], &src[at..], sw);
                        }
                    }
                }
            }
        }
    }

    /// `off[p]` for the K = (C/g) * KH * KW rows of one group, relative to the group's first
    /// channel.
    pub fn offsets(&self, g: &Geometry) -> Vec<usize> {
        let [kh, kw] = g.kernel;
        let (sh, sw) = (g.stride[0], g.stride[1]);
        let (dh, dw) = (g.dilation[0], g.dilation[1]);
        let plane = self.ph * self.pw;
        let mut off = Vec::with_capacity(g.cin_per_group * kh * kw);
        for ci in 0..g.cin_per_group {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (yy, xx) = (ky * dh, kx * dw);
                    let phase = (yy % sh) * sw + xx % sw;
                    off.push(ci * self.chan + phase * plane + (yy / sh) * self.pw + xx / sw);
                }
            }
        }
        off
    }
}

/// A planned direct convolution: packed weights per group and offset tables per K block.
pub struct DirectPlan {
    /// The microkernel.
    pub uk: &'static GemmUkernel,
    /// Cache blocking (KC fixes the K blocks, MC the A block).
    pub blocking: Blocking,
    /// Weights per group, packed in the kernel's MR panels and K blocks.
    pub packed: Vec<PackedA>,
    /// Offsets per K block.
    pub tables: Vec<OffsetTable>,
    /// The image layout.
    pub layout: PhaseLayout,
}

impl DirectPlan {
    /// Packs `weight` (OIHW) for `g`.
    pub fn new(g: &Geometry, uk: &'static GemmUkernel, weight: &[f32]) -> Result<Self, String> {
        let layout = PhaseLayout::new(g, uk.nr)?;
        let caches = crate::sysinfo::caches();
        let mut blocking = Blocking::derive(uk, caches);
        // K blocks twice as deep as the GEMM's (512 here): direct reads B rows in place, so
        // KC is not bound by a packed B panel in L1, and each K block costs a round trip of
        // the C tiles. Paired runs, KC 512 / 256: alexnet.conv1 0.85 (K = 363 in one block),
        // deeplab.dilated3x3 0.95, resnet50.res3.3x3s2 0.96, googlenet 5x5 0.87-0.98.
        if std::env::var_os("CONVKIT_KC").is_none() {
            blocking.kc = (2 * blocking.kc).min(512);
        }
        // MC blocks of half of L2 (BLIS's rule, not the GEMM's one and a half L1s): a block
        // reads each B panel in place or packs it once for all its A panels, and AVX-512's
        // 32-column panels read in place ran at half speed. With the GEMM's MC (70 rows)
        // deeplab.dilated3x3 took 2.2x as long, every block below the packing threshold.
        if std::env::var_os("CONVKIT_MC").is_none() {
            blocking.mc = ((caches.l2 / 2 / (4 * blocking.kc)) / uk.mr).max(1) * uk.mr;
        }
        let k = g.cin_per_group * g.kernel_area();
        let opg = g.cout_per_group;
        let packed: Vec<PackedA> = (0..g.groups)
            .map(|grp| {
                let wg = &weight[grp * opg * k..(grp + 1) * opg * k];
                PackedA::from_row_major(wg, opg, k, k, uk.mr, &blocking)
            })
            .collect();
        let off = layout.offsets(g);
        let tables = packed[0]
            .blocks()
            .iter()
            .map(|&(p0, kc)| OffsetTable::new(off[p0..p0 + kc].to_vec()))
            .collect();
        Ok(DirectPlan {
            uk,
            blocking,
            packed,
            tables,
            layout,
        })
    }

    /// Computes conv rows `r0..r1` of one image whose padded, phase-split copy is `xp`
    /// (`self.layout.fill`), into `out` laid out `[Cout][r1 - r0][OW]` (preloaded with the
    /// residual rows when `pass.accumulate`).
    pub fn run_rows(
        &self,
        g: &Geometry,
        xp: &[f32],
        r0: usize,
        r1: usize,
        out: &mut [f32],
        pass: &super::OutputPass,
    ) {
        let super::OutputPass {
            bias,
            accumulate,
            clamp,
            activation,
        } = *pass;
        let uk = self.uk;
        let ow = g.conv_out[1];
        let band = (r1 - r0) * ow;
        let (cpg, opg) = (g.cin_per_group, g.cout_per_group);
        let pw = self.layout.pw;
        let tiles_per_row = ow.div_ceil(uk.nr);
        let row_tiles = (r1 - r0) * tiles_per_row;
        if row_tiles == 0 {
            return;
        }
        // Tiles that span output rows: outputs are computed on the phase plane's grid of PW
        // columns a row (OW real, PW - OW junk ones that are never stored), and tiles of NR
        // run along it across row ends. Worth it when that computes fewer columns than tiles
        // that stop at each row end, with a partial last tile: deeplab.dilated3x3 (OW = 33,
        // PW = 37) computes 37 columns a row instead of 48, alexnet.conv1 57 instead of 64,
        // resnet50.res3.3x3s2 29 instead of 32. A tile that crosses a row end goes through
        // a small buffer (its C rows are not one strided block).
        let span = (r1 - r0 - 1) * pw + ow;
        let flat_tiles = span.div_ceil(uk.nr);
        let flat = flat_tiles * 100 < row_tiles * 97;
        let tiles = if flat { flat_tiles } else { row_tiles };
        // Tasks: (group, chunk of tiles). Enough chunks for the pool, each a few rows' worth.
        let (chunks, per_chunk) = super::task_chunks(tiles, g.groups);
        let panels_m = opg.div_ceil(uk.mr);
        let mc_panels = self.blocking.mc_panels(uk.mr, panels_m);
        let shared = SharedMut::new(out);
        let task = |t: usize| {
            let (grp, chunk) = (t / chunks, t % chunks);
            let (t0, t1) = (chunk * per_chunk, ((chunk + 1) * per_chunk).min(tiles));
            let pa = &self.packed[grp];
            let grp_base = grp * cpg * self.layout.chan;
            let c_grp = grp * opg * band;
            let blocks = pa.blocks();
            // Row-crossing tiles of a whole MC block of rows (only flat tiles cross rows).
            let mut spill = vec![
                0f32;
                if flat {
                    panels_m.min(mc_panels) * uk.mr * uk.nr
                } else {
                    0
                }
            ];
            let pack_panels = pack_b_above();
            // The packed B panel, allocated only when some MC block packs (see below).
            let kc_max = blocks.iter().map(|b| b.1).max().unwrap_or(0);
            let packs = panels_m.min(mc_panels) > pack_panels;
            let mut bpanel = crate::tensor::aligned_zeros(if packs { kc_max * uk.nr } else { 0 });
            for (bi, table) in self.tables.iter().enumerate() {
                let kc = blocks[bi].1;
                let (first, last) = (bi == 0, bi + 1 == blocks.len());
                let mut ic = 0;
                while ic < panels_m {
                    let ic_end = (ic + mc_panels).min(panels_m);
                    for tile in t0..t1 {
                        // The tile's first output on the PW grid (relative to row r0) and
                        // its width.
                        let (q0, ncur) = if flat {
                            (tile * uk.nr, uk.nr.min(span - tile * uk.nr))
                        } else {
                            let (row, ox0) = (tile / tiles_per_row, (tile % tiles_per_row) * uk.nr);
                            (row * pw + ox0, uk.nr.min(ow - ox0))
                        };
                        let (row, col) = (q0 / pw, q0 % pw);
                        let base = grp_base + r0 * pw + q0;
                        // Inside one output row: C is a strided block; else through `spill`.
                        let in_row = col + ncur <= ow;
                        if !in_row && segments(q0, ncur, pw, ow).next().is_none() {
                            continue; // junk columns only
                        }
                        // With many A panels to feed, the tile's B rows are first copied
                        // into one contiguous panel (see `pack_b_above`).
                        let packed_b = ic_end - ic > pack_panels;
                        if packed_b {
                            for (p, &o) in table.offsets().iter().enumerate() {
                                crate::gemm::pack::copy_floats(
                                    &mut bpanel[p * uk.nr..(p + 1) * uk.nr],
                                    &xp[base + o..base + o + uk.nr],
                                );
                            }
                        }
                        // LOOP 1 over the MR panels of the MC block runs inside
                        // `run_gemm_column`: `rows` rows of C from row i0.
                        let i0 = ic * uk.mr;
                        let rows = (ic_end * uk.mr).min(opg) - i0;
                        let tb = match bias {
                            Some(b) => GemmBias::Row(&b[grp * opg + i0..]),
                            None => GemmBias::None,
                        };
                        let b = if packed_b {
                            BPanel::Packed(&bpanel[..kc * uk.nr])
                        } else {
                            BPanel::Indirect {
                                x: xp,
                                base,
                                offsets: table,
                            }
                        };
                        let load = accumulate || !first;
                        // A tile inside one output row writes C in place; a row-crossing one
                        // goes through `spill` (rows of NR): C's row segments gathered in, the
                        // kernel run there, the segments put back.
                        let c_col = c_grp + i0 * band;
                        let seg_off = |r: usize, c: usize| c_col + r * ow + c;
                        if !in_row && load {
                            for (t, r, c, len) in segments(q0, ncur, pw, ow) {
                                for i in 0..rows {
                                    shared.read_into(
                                        seg_off(r, c) + i * band,
                                        &mut spill[i * uk.nr + t..i * uk.nr + t + len],
                                    );
                                }
                            }
                        }
                        let spill_c;
                        let (c, c_off, rsc) = if in_row {
                            (&shared, c_col + row * ow + col, band)
                        } else {
                            spill_c = SharedMut::new(&mut spill[..]);
                            (&spill_c, 0, uk.nr)
                        };
                        run_gemm_column(
                            uk,
                            kc,
                            pa.panels(bi, ic..ic_end),
                            b,
                            c,
                            c_off,
                            rsc,
                            rows,
                            ncur,
                            load,
                            last,
                            tb,
                            clamp,
                        );
                        if let (true, Some((kernel, act))) = (last, activation) {
                            activate_tile(&kernel, act, c, c_off, rsc, rows, ncur);
                        }
                        if !in_row {
                            for (t, r, c, len) in segments(q0, ncur, pw, ow) {
                                for i in 0..rows {
                                    shared.write_from(
                                        seg_off(r, c) + i * band,
                                        &spill[i * uk.nr + t..i * uk.nr + t + len],
                                    );
                                }
                            }
                        }
                    }
                    ic = ic_end;
                }
            }
        };
        crate::par::for_each_index(g.groups * chunks, task);
    }
}

/// The stored parts of a tile of `n` outputs starting at `q0` on a grid of `pw` columns a row
/// of which the first `ow` are real: `(column within the tile, row, first column, length)`.
fn segments(
    q0: usize,
    n: usize,
    pw: usize,
    ow: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let end = q0 + n;
    let first_row = q0 / pw;
    let last_row = (end - 1) / pw;
    (first_row..=last_row).filter_map(move |r| {
        let start = q0.max(r * pw);
        let stop = end.min(r * pw + ow);
        (stop > start).then(|| (start - q0, r, start - r * pw, stop - start))
    })
}

/// Above how many A panels a tile's B rows are packed into a contiguous panel before the
/// panels run (`CONVKIT_DIRECT_PACK=N` sets it for experiments). Read in place, the K rows of
/// a tile lie all over the phase planes (each a pair of cache lines when misaligned) and
/// every A panel walks them again; packed, they are one sequential panel. Paired runs on one
/// thread (median ratio packed / in place over 60 alternations): resnet50.res3.3x3s2 (22
/// panels) 0.92-0.94, deeplab.dilated3x3 (43) 0.94-1.02, resnet50.res5.3x3 (86) 0.91,
/// wav2vec2.conv1 (86) 0.90; but googlenet.inc3a.5x5 (6 panels) 1.15, alexnet.conv1 (11) 1.05,
/// resnet50.conv1 (11) 1.09, where the copy is not repaid.
fn pack_b_above() -> usize {
    static PANELS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PANELS.get_or_init(|| {
        std::env::var("CONVKIT_DIRECT_PACK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16)
    })
}
