//! Packing of B into NR-wide panels:
//!
//! ```text
//! for each panel j (columns j0 + j*NR ..):
//!   for p in 0..kc: b[p0+p][col 0] .. b[p0+p][col NR-1]     (zero past column n)
//! ```

/// A source of B blocks: a plain matrix, or an image read as its im2col matrix.
pub trait PackB: Sync {
    /// Packs rows `p0..p0+kc`, columns `j0..j0+n` into `out` (`ceil(n/nr) * kc * nr` floats),
    /// zero-filling the columns past `n` in the last panel.
    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]);

    /// B as rows that the microkernel may read where they lie, `B[p][j] = data[p * rs + j]`,
    /// when the layout allows (`None` by default: B must be packed).
    fn in_place(&self) -> Option<(&[f32], usize)> {
        None
    }

    /// The packed panels of rows `p0..p0+kc`, columns `j0..j0+n` (panels of `nr`), when the
    /// source already holds them in the packed layout (`None` by default: call
    /// [`PackB::pack`]). Columns past `n` in the last panel may hold anything: the
    /// microkernels compute them but never store them.
    fn prepacked(
        &self,
        _p0: usize,
        _kc: usize,
        _j0: usize,
        _n: usize,
        _nr: usize,
    ) -> Option<&[f32]> {
        None
    }
}

/// B held already packed, as its producer wrote it (the Winograd input transform writes V
/// this way, so the transformed-domain GEMMs pack nothing). Rows are grouped in the GEMM's
/// K blocks; block `(p0, kc)` starts at `p0 * cols`, holds `cols / nr` panels of `kc * nr`
/// floats, and row `p` of panel `jp` is at `p0 * cols + jp * kc * nr + (p - p0) * nr`.
pub struct PrepackedB<'a> {
    /// The panels.
    pub data: &'a [f32],
    /// Columns, a multiple of `nr`.
    pub cols: usize,
    /// Panel width.
    pub nr: usize,
    /// The K blocks `(p0, kc)`, in order, covering the rows.
    pub blocks: &'a [(usize, usize)],
}

impl PrepackedB<'_> {
    /// Where row `p` lies, for the layout of `blocks` and `cols`: the offset of its column 0
    /// and the floats from one of its panels to the next (the panel stride of its K block).
    /// Column `j` is then at `start + (j / nr) * panel_stride + j % nr`.
    pub fn row_place(
        blocks: &[(usize, usize)],
        cols: usize,
        nr: usize,
        p: usize,
    ) -> (usize, usize) {
        let &(p0, kc) = blocks
            .iter()
            .find(|&&(p0, kc)| p >= p0 && p < p0 + kc)
            .expect("row inside the K blocks");
        (p0 * cols + (p - p0) * nr, kc * nr)
    }

    /// Where element (row `p`, column `j`) lies, for the layout of `blocks` and `cols`.
    pub fn offset(blocks: &[(usize, usize)], cols: usize, nr: usize, p: usize, j: usize) -> usize {
        let (start, panel_stride) = Self::row_place(blocks, cols, nr, p);
        start + (j / nr) * panel_stride + j % nr
    }
}

impl PackB for PrepackedB<'_> {
    fn prepacked(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize) -> Option<&[f32]> {
        let whole = nr == self.nr
            && j0.is_multiple_of(nr)
            && j0 + n <= self.cols
            && self.blocks.contains(&(p0, kc));
        let start = p0 * self.cols + j0 / nr * kc * nr;
        let end = start + n.div_ceil(nr) * kc * nr;
        (whole && end <= self.data.len()).then(|| &self.data[start..end])
    }

    /// Repacks from the held layout (for a split the held panels do not match).
    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]) {
        for jp in 0..n.div_ceil(nr) {
            for p in 0..kc {
                let row = &mut out[(jp * kc + p) * nr..(jp * kc + p + 1) * nr];
                for (j, d) in row.iter_mut().enumerate() {
                    let col = jp * nr + j;
                    *d = if col < n {
                        self.data[Self::offset(self.blocks, self.cols, self.nr, p0 + p, j0 + col)]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// A strided matrix `B[p][j] = data[p * rs + j * cs]`.
pub struct StridedB<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl PackB for StridedB<'_> {
    fn in_place(&self) -> Option<(&[f32], usize)> {
        (self.cs == 1).then_some((self.data, self.rs))
    }

    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]) {
        let panels = n.div_ceil(nr);
        // In blocks of ROWS rows: for each panel, the block's rows (one NR-float piece of each
        // source row, read as ROWS sequential streams) go to ROWS consecutive panel rows.
        // Row by row scattered every row over all the panels, a whole panel (16 KiB) apart,
        // into the same L1 sets; panel by panel over all kc rows walked kc streams at once
        // (the res2.3x3 shape ran at 29 GFLOP/s). Packing time against kernel time (perf, one
        // thread): vgg16.conv3_3's GEMM shape 23% row by row, 14-15% with 4 rows, 13-19% with
        // 8, 21% with 16, 28% with 32; resnet50.res2.3x3's 61% row by row, 39-45% with 4
        // rows, 47-60% with 8.
        const ROWS: usize = 4;
        for pb in (0..kc).step_by(ROWS) {
            let rows = ROWS.min(kc - pb);
            for jp in 0..panels {
                let c0 = jp * nr;
                let w = nr.min(n - c0);
                for p in pb..pb + rows {
                    let row = (p0 + p) * self.rs + j0 * self.cs;
                    let dst = &mut out[jp * kc * nr + p * nr..jp * kc * nr + (p + 1) * nr];
                    if self.cs == 1 {
                        copy_floats(&mut dst[..w], &self.data[row + c0..row + c0 + w]);
                    } else {
                        for (j, d) in dst[..w].iter_mut().enumerate() {
                            *d = self.data[row + (c0 + j) * self.cs];
                        }
                    }
                    dst[w..].fill(0.0);
                }
            }
        }
    }
}

/// Copies `src` into `dst` (same length) without a library call for short lengths: up to 32
/// floats as two overlapping fixed-size blocks (4, 8 or 16 floats; the overlap is written
/// twice with the same values), longer ones in blocks of 8 (LLVM may make that loop a
/// memcpy, which is fine at that length).
///
/// `copy_from_slice` of a run-time length calls memmove: once per 16-float panel row it took
/// 30% of the res2.3x3-shaped GEMM, and once per 12-16 float run of the direct spill buffer,
/// im2col and pooling copies it was 4-6% of alexnet.conv1.
#[inline]
pub fn copy_floats(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn block<const N: usize>(dst: &mut [f32], src: &[f32], at: usize) {
        let d: &mut [f32; N] = (&mut dst[at..at + N]).try_into().expect("N floats");
        *d = src[at..at + N].try_into().expect("N floats");
    }
    let n = dst.len();
    assert_eq!(n, src.len(), "copy_floats: lengths differ");
    match n {
        0 => {}
        1..=3 => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => {
            block::<4>(dst, src, 0);
            block::<4>(dst, src, n - 4);
        }
        8..=15 => {
            block::<8>(dst, src, 0);
            block::<8>(dst, src, n - 8);
        }
        // A whole panel row (NR = 16) once, not as two overlapping blocks at 0: this is the
        // copy of most im2col runs.
        16 => block::<16>(dst, src, 0),
        17..=32 => {
            block::<16>(dst, src, 0);
            block::<16>(dst, src, n - 16);
        }
        // Image rows of 33 to 64 floats (resnet50's and resnext's 56, googlenet's 28 + pad):
        // four blocks, no loop. The loop below became a memmove call, 13% of
        // resnext50.grouped3x3 in grouped planes (a call for every row of 56 floats).
        33..=64 => {
            block::<16>(dst, src, 0);
            block::<16>(dst, src, 16);
            block::<16>(dst, src, n - 32);
            block::<16>(dst, src, n - 16);
        }
        _ => {
            let mut d = dst.chunks_exact_mut(8);
            let mut s = src.chunks_exact(8);
            for (dc, sc) in (&mut d).zip(&mut s) {
                let sc: &[f32; 8] = sc.try_into().expect("chunks of 8");
                let dc: &mut [f32; 8] = dc.try_into().expect("chunks of 8");
                *dc = *sc;
            }
            for (dv, sv) in d.into_remainder().iter_mut().zip(s.remainder()) {
                *dv = *sv;
            }
        }
    }
}

/// `dst.fill(0.0)` without a memset call for short runs (an image row's padding: a few
/// floats at each end, the call cost more than the stores).
#[inline]
pub fn zero_floats(dst: &mut [f32]) {
    let n = dst.len();
    match n {
        0 => {}
        1..=3 => {
            dst[0] = 0.0;
            dst[n / 2] = 0.0;
            dst[n - 1] = 0.0;
        }
        4..=7 => {
            dst[..4].fill(0.0);
            dst[n - 4..].fill(0.0);
        }
        8..=16 => {
            dst[..8].fill(0.0);
            dst[n - 8..].fill(0.0);
        }
        17..=32 => {
            dst[..16].fill(0.0);
            dst[n - 16..].fill(0.0);
        }
        _ => dst.fill(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_floats, zero_floats, PackB, PrepackedB, StridedB};

    /// B held in the packed layout of uneven K blocks: the panels it hands out are the ones
    /// packing the plain matrix gives (on the real columns), and its own packing for a
    /// split that does not match is the plain matrix's, zero tail included.
    #[test]
    fn prepacked_b_hands_out_the_panels_packing_would_make() {
        let (k, n, nr) = (37usize, 40usize, 16usize);
        let blocks = [(0, 20), (20, 17)];
        let cols = n.div_ceil(nr) * nr;
        let b: Vec<f32> = (0..k * n).map(|i| i as f32 * 0.5 - 3.0).collect();
        // Floats outside the real columns hold NaN: nothing may copy them into a packing.
        let mut held = vec![f32::NAN; k * cols];
        for p in 0..k {
            for j in 0..n {
                held[PrepackedB::offset(&blocks, cols, nr, p, j)] = b[p * n + j];
            }
        }
        let pre = PrepackedB {
            data: &held,
            cols,
            nr,
            blocks: &blocks,
        };
        let plain = StridedB {
            data: &b,
            rs: n,
            cs: 1,
        };
        for &(p0, kc) in &blocks {
            for j0 in [0, 16, 32] {
                let w = n - j0;
                let len = w.div_ceil(nr) * kc * nr;
                let mut want = vec![0f32; len];
                plain.pack(p0, kc, j0, w, nr, &mut want);
                let got = pre.prepacked(p0, kc, j0, w, nr).expect("held panels");
                assert_eq!(got.len(), len);
                for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    let col = j0 + i / (kc * nr) * nr + i % nr;
                    if col < n {
                        assert_eq!(g, e, "block {p0}, j0 {j0}, float {i}");
                    }
                }
                let mut repacked = vec![f32::NAN; len];
                pre.pack(p0, kc, j0, w, nr, &mut repacked);
                assert_eq!(repacked, want, "repacked block {p0}, j0 {j0}");
            }
        }
        // Splits the held panels do not match are not handed out.
        assert!(
            pre.prepacked(0, 20, 8, 16, nr).is_none(),
            "column inside a panel"
        );
        assert!(pre.prepacked(0, 10, 0, 16, nr).is_none(), "another K block");
        assert!(
            pre.prepacked(0, 20, 0, 16, 8).is_none(),
            "another panel width"
        );
    }

    #[test]
    fn copy_floats_copies_every_length_exactly() {
        for n in 0..80 {
            let src: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
            // Guards on both sides: nothing outside dst may change.
            let mut buf = vec![-1.0f32; n + 2];
            copy_floats(&mut buf[1..n + 1], &src);
            assert_eq!(&buf[1..n + 1], &src[..], "length {n}");
            assert_eq!(
                (buf[0], buf[n + 1]),
                (-1.0, -1.0),
                "length {n}: guard overwritten"
            );
        }
    }

    #[test]
    fn zero_floats_zeroes_every_length_exactly() {
        for n in 0..80 {
            let mut buf = vec![-1.0f32; n + 2];
            zero_floats(&mut buf[1..n + 1]);
            assert!(buf[1..n + 1].iter().all(|&v| v == 0.0), "length {n}");
            assert_eq!(
                (buf[0], buf[n + 1]),
                (-1.0, -1.0),
                "length {n}: guard overwritten"
            );
        }
    }
}
