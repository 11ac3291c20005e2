//! im2col + GEMM: the image is read as its im2col matrix straight into the GEMM's packed B
//! panels, so the full im2col matrix never exists in memory. Also serves `gemm1x1`, where B
//! is the image itself.
//!
//! Per image and group g (NCHW):
//! ```text
//!   C_g [Cout/g x OH*OW] = W_g [Cout/g x (C/g)*KH*KW] . B_g
//!   B_g [(ci, ky, kx)][(oy, ox)] = x[ci][oy*SH - PT + ky*DH][ox*SW - PL + kx*DW]  (0 outside)
//! ```

use crate::gemm::PackB;
use crate::geometry::Geometry;

/// One image's channels of one group, read as an im2col matrix.
pub struct Im2colB<'a> {
    /// The group's input channels of one image, `C/g * H * W` floats.
    pub x: &'a [f32],
    /// The layer.
    pub g: &'a Geometry,
    /// The first output position (oy * OW + ox) that column 0 of B stands for: a band of rows.
    pub col0: usize,
    /// The tier's strided gather ([`crate::kernels::KernelTable::gather`]).
    pub gather: fn(&mut [f32], &[f32], usize),
}

/// A run of B columns that lie on one output row: `len` columns from `at` in panel `panel`,
/// standing for output pixels (oy, ox..ox + len).
#[derive(Copy, Clone)]
struct Run {
    panel: usize,
    at: usize,
    oy: usize,
    ox: usize,
    len: usize,
}

impl PackB for Im2colB<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]) {
        let g = self.g;
        let [ih, iw] = g.input;
        let [kh, kw] = g.kernel;
        let ow = g.conv_out[1];
        let (sh, sw) = (g.stride[0], g.stride[1]);
        let (dh, dw) = (g.dilation[0], g.dilation[1]);
        let (pt, pl) = (g.pad_before[0] as isize, g.pad_before[1] as isize);
        let runs = column_runs(self.col0 + j0, n, nr, ow);
        let (mut ci, mut ky, mut kx) = (p0 / (kh * kw), (p0 % (kh * kw)) / kw, p0 % kw);
        for p in 0..kc {
            let plane = &self.x[ci * ih * iw..(ci + 1) * ih * iw];
            for r in &runs {
                let base = r.panel * kc * nr + p * nr;
                let dst = &mut out[base + r.at..base + r.at + r.len];
                let y = (r.oy * sh + ky * dh) as isize - pt;
                if y < 0 || y >= ih as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[y as usize * iw..(y as usize + 1) * iw];
                let x0 = (r.ox * sw + kx * dw) as isize - pl;
                // Columns t with 0 <= x0 + t*sw < iw read input; those before and after are
                // padding. Split so the middle goes without a test per element (a run that
                // touched the left padding went element by element, with a test each).
                let swi = sw as isize;
                let t0 = if x0 >= 0 {
                    0
                } else {
                    ((-x0 + swi - 1) / swi) as usize
                }
                .min(r.len);
                let t1 = if x0 >= iw as isize {
                    0
                } else {
                    ((iw as isize - x0 + swi - 1) / swi) as usize
                }
                .clamp(t0, r.len);
                dst[..t0].fill(0.0);
                dst[t1..].fill(0.0);
                if t1 > t0 {
                    let first = (x0 + (t0 * sw) as isize) as usize;
                    let last = first + (t1 - t0 - 1) * sw;
                    if sw == 1 {
                        crate::gemm::pack::copy_floats(&mut dst[t0..t1], &src[first..=last]);
                    } else {
                        // The rest of the plane, not just the run: the gather's vector blocks
                        // read up to a block past the run's last element (into the next
                        // rows), values it does not keep.
                        let at = y as usize * iw + first;
                        debug_assert!(at + (t1 - t0 - 1) * sw == y as usize * iw + last);
                        (self.gather)(&mut dst[t0..t1], &plane[at..], sw);
                    }
                }
            }
            kx += 1;
            if kx == kw {
                kx = 0;
                ky += 1;
                if ky == kh {
                    ky = 0;
                    ci += 1;
                }
            }
        }
        zero_last_panel(out, n, kc, nr);
    }
}

/// Zeroes the columns past `n` in the last panel.
fn zero_last_panel(out: &mut [f32], n: usize, kc: usize, nr: usize) {
    let panels = n.div_ceil(nr);
    let w_last = n - (panels - 1) * nr;
    if w_last < nr {
        let last = &mut out[(panels - 1) * kc * nr..panels * kc * nr];
        for row in last.chunks_exact_mut(nr) {
            row[w_last..].fill(0.0);
        }
    }
}

/// The runs of B columns `first..first + n` (output positions) that lie on one output row,
/// per panel of `nr`. The same for every row of B: found once per block (the divisions per
/// run and row took a third of the packing of resnet50.res3.3x3s2).
fn column_runs(first: usize, n: usize, nr: usize, ow: usize) -> Vec<Run> {
    let panels = n.div_ceil(nr);
    let mut runs = Vec::with_capacity(panels * 3);
    let (mut oy, mut ox) = (first / ow.max(1), first % ow.max(1));
    for panel in 0..panels {
        let w = nr.min(n - panel * nr);
        let mut at = 0;
        while at < w {
            let len = (ow - ox).min(w - at);
            runs.push(Run {
                panel,
                at,
                oy,
                ox,
                len,
            });
            at += len;
            ox += len;
            if ox == ow {
                ox = 0;
                oy += 1;
            }
        }
    }
    runs
}

/// One image's channels of one group, padded and split into stride phases
/// ([`crate::algo::direct::PhaseLayout`]), read as the im2col matrix: B row p (tap
/// (ci, ky, kx)) at output (oy, ox) is `xp[off[p] + oy * PW + ox]`, so every run of B columns
/// on one output row is one contiguous copy, with no padding test and no strided gather.
/// (Packing res3.3x3s2 straight from the image, with its stride-2 gathers of 12-16 floats
/// and the padding splits, was a third of the layer's time.)
pub struct Im2colPhaseB<'a> {
    /// The group's phase planes (from its first channel; the image's slack after them).
    pub xp: &'a [f32],
    /// Phase plane width.
    pub pw: usize,
    /// The layer.
    pub g: &'a Geometry,
    /// `off[p]` for every row of B ([`crate::algo::direct::PhaseLayout::offsets`]).
    pub offsets: &'a [usize],
    /// The first output position that column 0 of B stands for.
    pub col0: usize,
}

impl PackB for Im2colPhaseB<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]) {
        let ow = self.g.conv_out[1];
        let runs = column_runs(self.col0 + j0, n, nr, ow);
        // Four B rows at a time, run by run: the copies go to consecutive panel rows.
        for pb in (0..kc).step_by(4) {
            for r in &runs {
                let start = r.oy * self.pw + r.ox;
                for (p, &o) in self.offsets[p0..p0 + kc]
                    .iter()
                    .enumerate()
                    .skip(pb)
                    .take(4)
                {
                    let base = r.panel * kc * nr + p * nr + r.at;
                    crate::gemm::pack::copy_floats(
                        &mut out[base..base + r.len],
                        &self.xp[o + start..o + start + r.len],
                    );
                }
            }
        }
        zero_last_panel(out, n, kc, nr);
    }
}
