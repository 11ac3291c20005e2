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
}

/// A strided matrix B[p][j] = data[p * rs + j * cs].
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

/// Copies `src` into `dst` (same length) in fixed blocks of 8 floats that compile to vector
/// moves; `copy_from_slice` of a run-time length called memmove for every 16-float panel row
/// and took 30% of the res2.3x3-shaped GEMM.
///
/// The panel widths (8, 16, 24, 32 floats) are copied as fixed-size arrays: LLVM recognized
/// the loop below as a memcpy idiom and called `memmove` again (10% of resnet50.res2.1x1a's
/// profile, one call per 16-float panel row).
#[inline]
pub fn copy_floats(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) -> bool {
        match (<&mut [f32; N]>::try_from(dst), <&[f32; N]>::try_from(src)) {
            (Ok(d), Ok(s)) => {
                *d = *s;
                true
            }
            _ => false,
        }
    }
    let done = match dst.len() {
        8 => fixed::<8>(dst, src),
        16 => fixed::<16>(dst, src),
        24 => fixed::<24>(dst, src),
        32 => fixed::<32>(dst, src),
        _ => false,
    };
    if done {
        return;
    }
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
