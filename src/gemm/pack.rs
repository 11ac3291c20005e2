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
    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]) {
        for (jp, panel) in out.chunks_mut(kc * nr).enumerate().take(n.div_ceil(nr)) {
            let c0 = jp * nr;
            let w = nr.min(n - c0);
            for p in 0..kc {
                let dst = &mut panel[p * nr..(p + 1) * nr];
                let row = (p0 + p) * self.rs + (j0 + c0) * self.cs;
                if self.cs == 1 {
                    dst[..w].copy_from_slice(&self.data[row..row + w]);
                } else {
                    for (j, d) in dst[..w].iter_mut().enumerate() {
                        *d = self.data[row + j * self.cs];
                    }
                }
                dst[w..].fill(0.0);
            }
        }
    }
}
