//! The GEMM with A read where it lies and B packed once: `C[m x n] (+)= A B` for a 1x1
//! convolution of an NHWC image, whose pixels are A's rows (each pixel's channels lie
//! contiguous, so a tile's rows need no packing) and whose weights are B, packed at plan
//! time. Nothing is packed per run.
//!
//! ```text
//! LOOP 3  tasks over chunks of MR-row panels (in parallel)   the chunk's C rows, all N
//!  LOOP 2  pc over K in steps of KC, jr over B's NR panels    the B panel (KC x NR) in L1
//!   LOOP 1  ir over the chunk's row panels                    A rows in place, from L1/L2
//! ```
//!
//! (The NCHW 1x1 GEMM packs its image as B per run, 6-15% of its time; read in place it ran
//! at half speed, each panel row a plane apart. In NHWC a tile's A rows are MR consecutive
//! pixels, one run of memory read front to back.)
//!
//! Every element of C sums its K blocks in order whatever the chunking, so results are
//! bitwise identical across thread counts.

use super::{flush_denormal, Blocking, GemmEpilogue, PrepackedB};
use crate::arch::{activate_tile, run_gemm_column_in_place, GemmBias, SharedMut};
use crate::kernels::GemmUkernel;
use crate::tensor::{aligned_zeros, AlignedBuf};

/// B (K x N) packed once into NR-wide panels per K block, in [`PrepackedB`]'s layout.
#[derive(Clone, Debug)]
pub struct PackedB {
    buf: AlignedBuf,
    /// Depth.
    pub k: usize,
    /// Columns.
    pub n: usize,
    /// Panel width.
    pub nr: usize,
    blocks: Vec<(usize, usize)>,
}

impl PackedB {
    /// Packs B given by `at(p, j)` (depth p, column j), columns zero-padded to whole panels.
    pub fn pack(
        k: usize,
        n: usize,
        nr: usize,
        blocking: &Blocking,
        at: impl Fn(usize, usize) -> f32,
    ) -> Self {
        let cols = n.div_ceil(nr) * nr;
        let blocks = blocking.k_blocks(k);
        let mut buf = aligned_zeros(cols * k.max(1));
        for &(p0, kc) in &blocks {
            for p in p0..p0 + kc {
                let start = p0 * cols + (p - p0) * nr;
                for j in 0..n {
                    buf[start + (j / nr) * kc * nr + j % nr] = flush_denormal(at(p, j));
                }
            }
        }
        debug_assert!(k == 0 || PrepackedB::offset(&blocks, cols, nr, k - 1, 0) < buf.len());
        PackedB {
            buf,
            k,
            n,
            nr,
            blocks,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buf.len() * 4
    }

    /// The K blocks (start, depth) the panels were packed in.
    pub fn blocks(&self) -> &[(usize, usize)] {
        &self.blocks
    }

    /// Panel `jp` (columns `jp * nr..`) of K block `block`: `kc * nr` floats.
    pub fn panel(&self, block: usize, jp: usize) -> &[f32] {
        let (p0, kc) = self.blocks[block];
        let cols = self.n.div_ceil(self.nr) * self.nr;
        let start = p0 * cols + jp * kc * self.nr;
        &self.buf[start..start + (kc * self.nr).max(1)]
    }
}

/// A (M x K) read where it lies, as runs of rows: `segments` runs of `seg_len` rows, row `r`
/// of run `s` the K floats at `data[offset + s * seg_stride + r * rs..]`. An NHWC image at
/// stride 1 is one run of every pixel (`rs` = channels); at stride s, a run per output row
/// (`rs` = s x channels, `seg_stride` = s image rows). Row `s * seg_len + r` of C goes with
/// row `r` of run `s`.
#[derive(Copy, Clone, Debug)]
pub struct RowsA<'a> {
    /// The image.
    pub data: &'a [f32],
    /// Where row 0 of run 0 starts.
    pub offset: usize,
    /// Floats from one row of a run to the next.
    pub rs: usize,
    /// Rows a run.
    pub seg_len: usize,
    /// Runs.
    pub segments: usize,
    /// Floats from one run to the next.
    pub seg_stride: usize,
}

/// `C (+)= A B` with A read in place (`a`, M = `segments * seg_len` rows) and B packed
/// (`b`, K x N); C row-major from `c_offset` with row stride `rsc`; the epilogue as for
/// [`super::gemm_packed`] (a `Col` bias is per column of C). Runs on the current rayon pool
/// when `parallel`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_a_in_place(
    uk: &GemmUkernel,
    blocking: &Blocking,
    a: &RowsA,
    b: &PackedB,
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    epi: GemmEpilogue,
    parallel: bool,
) {
    let (n, nr) = (b.n, uk.nr);
    if a.segments == 0 || a.seg_len == 0 || n == 0 {
        return;
    }
    assert_eq!(
        b.nr, nr,
        "B packed for NR = {} but the kernel has NR = {nr}",
        b.nr
    );
    let per_run = a.seg_len.div_ceil(uk.mr);
    let panels = a.segments * per_run;
    let threads = if parallel { crate::par::threads() } else { 1 };
    // Chunks of about MC rows (the A block that each B panel meets stays in L2), as many as
    // a multiple of the threads, dealt evenly.
    let mut tasks = panels.div_ceil(blocking.mc_panels(uk.mr, panels));
    if threads > 1 {
        tasks = tasks.div_ceil(threads) * threads;
    }
    let tasks = tasks.clamp(1, panels);
    let bounds = |t: usize| t * panels / tasks;
    let blocks = b.blocks();
    let panels_n = n.div_ceil(nr);
    // B of a quarter of an L2 or more comes from L3 every run: each panel's first tile
    // would stream it at the rate of its FMAs, where the tiles before it prefetch it into L2
    // a line a K step. Paired, NHWC, 2 MiB L2: resnet50.res5.1x1 (4 MB of weights, 7 tiles
    // a panel) 1.20x on one thread and 1.35x on two; res4.1x1 (1 MB) 1.01-1.02x; layers of
    // small B 0.98-1.05x (not prefetched).
    let prefetch_b = b.bytes() >= crate::sysinfo::caches().l2 / 4;
    let task = |t: usize| {
        // The chunk's row panels as pieces of runs: (run, first row, rows).
        let mut pieces = Vec::with_capacity(2);
        let (first, last) = (bounds(t), bounds(t + 1));
        let mut q = first;
        while q < last {
            let (s, i) = (q / per_run, q % per_run);
            let end = last.min((s + 1) * per_run);
            let r0 = i * uk.mr;
            let rows = ((end - s * per_run) * uk.mr).min(a.seg_len) - r0;
            pieces.push((s, r0, rows));
            q = end;
        }
        for (bi, &(p0, kc)) in blocks.iter().enumerate() {
            let (first_block, last_block) = (bi == 0, bi + 1 == blocks.len());
            for jp in 0..panels_n {
                // The panel after this one, prefetched into L2 by the first piece's tiles.
                let next = match (prefetch_b, jp + 1 < panels_n, bi + 1 < blocks.len()) {
                    (false, _, _) => &[][..],
                    (true, true, _) => b.panel(bi, jp + 1),
                    (true, false, true) => b.panel(bi + 1, 0),
                    (true, false, false) => &[][..],
                };
                let jj = jp * nr;
                let cols = nr.min(n - jj);
                for (pi, &(s, r0, rows)) in pieces.iter().enumerate() {
                    let row = s * a.seg_len + r0;
                    let bias = match epi.bias {
                        GemmBias::None => GemmBias::None,
                        GemmBias::Row(v) => GemmBias::Row(&v[row..]),
                        GemmBias::Col(v) => GemmBias::Col(&v[jj..]),
                    };
                    let off = c_offset + row * rsc + jj;
                    run_gemm_column_in_place(
                        uk,
                        kc,
                        a.data,
                        a.offset + s * a.seg_stride + r0 * a.rs + p0,
                        a.rs,
                        b.panel(bi, jp),
                        if pi == 0 { next } else { &[] },
                        c,
                        off,
                        rsc,
                        rows,
                        cols,
                        epi.accumulate || !first_block,
                        last_block,
                        bias,
                        epi.clamp,
                    );
                    if let (true, Some((kernel, act))) = (last_block, epi.activation) {
                        activate_tile(&kernel, act, c, off, rsc, rows, cols);
                    }
                }
            }
        }
    };
    if tasks > 1 && threads > 1 {
        crate::par::for_each_index(tasks, task);
    } else {
        (0..tasks).for_each(task);
    }
}
