//! Packed SGEMM in the BLIS style: `C (+)= A B` with a fused epilogue (bias per row or
//! column, clamp), A packed once (weights are prepacked at plan time), B packed per block by
//! a [`PackB`] source (a plain matrix, or im2col straight from an image).
//!
//! ```text
//! LOOP 5  jc over N in steps of NC   (one task each; tasks run in parallel)
//!  LOOP 4  pc over K in steps of KC   pack B[pc.., jc..] into NR-wide panels (L2)
//!   LOOP 3  ic over M in steps of MC  (A is prepacked: MR-tall panels per K block)
//!    LOOP 2  ir over the MR panels    the A micro-panel (MR x KC) stays in L1
//!     LOOP 1  jr over the NR panels   microkernel: MR x NR tile of C in registers
//! ```
//!
//! Every element of C sums its K blocks in the same order whatever the number of threads,
//! so results are bitwise identical across thread counts.

use crate::arch::{activate_tile, run_gemm_column, BPanel, GemmBias, Isa, OffsetTable, SharedMut};
use crate::kernels::GemmUkernel;
use crate::sysinfo::Caches;
use crate::tensor::{aligned_zeros, AlignedBuf};
use std::cell::RefCell;

pub mod in_place;
pub mod pack;
pub use in_place::{gemm_a_in_place, PackedB, RowsA};
pub use pack::{PackB, PrepackedB, StridedB};

/// Cache blocking: BLIS's MC, KC, NC.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Blocking {
    /// Rows of A per block (a multiple of MR).
    pub mc: usize,
    /// Depth of a K block.
    pub kc: usize,
    /// Columns of B per block (a multiple of NR); also the unit of parallel work.
    pub nc: usize,
}

/// Which cache the K blocks are sized from ([`Blocking::derive_for`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KcRule {
    /// The B micro-panel (KC x NR) stays in L1: the rule of [`Blocking::derive`]'s docs, for
    /// every tier but AVX-512 on AMD.
    L1,
    /// The B micro-panel streams from L2, an eighth of it: KC = L2 / 8 / (4 NR) clamped to
    /// 256..=1024, and the A block is a quarter of L2, MC = L2 / 4 / (4 KC) (1 MiB L2, NR =
    /// 32: KC 1024, MC 56 for the 14x32, 64 for the 8x32). AMD's AVX-512 cores feed the
    /// tile's two B vectors a step from their private L2 without stalling, and a deep KC
    /// saves C round trips (each K block loads and stores all of C).
    ///
    /// Zen 4 (FMA peak 112 GFLOP/s, zmm FMAs split in two,
    /// [`crate::arch::Avx512Datapath::Split256`]),
    /// paired, one thread, 14x32 tile, KC 160 (the L1 rule at 32 KiB) -> 512 -> 1024: 1024^3
    /// 81.9 -> 92.0 -> 93.5, 2048^3 84.6 -> 96.0 -> 98.0, res4.1x1 (256 x 196 x 1024) 95.0
    /// -> 99.5 -> 100.4, wav2vec2.conv1's im2col 93.7 -> 99.3 -> 100.9, vgg16.conv3_3's
    /// 91.4 -> 92.0 -> 93.6, shallower GEMMs level; 8x32 tile, KC 512, 768, 1024 and 1536
    /// within 3% of one another, MC 40 to 256 within 4% (no trend).
    ///
    /// Zen 5 (family 1Ah, whole 512-bit FMAs, peak 241 GFLOP/s, 48 KiB L1d), interleaved,
    /// one thread, median of 7, 14x32 tile, KC 256 MC 70 (the L1 rule) -> KC 512 -> 768 ->
    /// 1024 (MC 56): 1024^3 153 -> 170 -> 176 -> 187, 2048^3 145 -> 170 -> 178 -> 187,
    /// vgg16.conv3_3's im2col (256 x 3136 x 2304) 130 -> 139 -> 147 -> 144, wav2vec2.conv1's
    /// (512 x 1599 x 1536) 143 -> 158 -> 164 -> 164, res4.1x1 176 -> 180 -> 184 -> 184;
    /// res2.3x3's (K = 576, one block either way) level. MC 112 instead of 56 at KC 1024:
    /// within noise, no trend.
    ///
    /// The AVX2 6x16 gained nothing from KC 512 to 1024 on either part (0.97-1.05x, no
    /// trend) and keeps the L1 rule.
    L2,
}

impl Blocking {
    /// A panels (of `mr` rows) per MC block when `panels` are to be walked: at most MC's
    /// worth, and as many in each block as the fewest blocks allow. The blocks only
    /// group rows (each element's sum is the same), but a short last block walks all of the
    /// B block again for a few rows: M = 256 with MC = 252 made blocks of 252 and 4 rows,
    /// and the second reread deeplab's 1 MB B block from L3 for 1.6% of its work. (Paired
    /// one-thread runs came out even, 0.995-1.018x, on res4.1x1, res2.1x1b, deeplab and
    /// wav2vec2.conv1: the reread is cheap while one core has L3 to itself.)
    pub fn mc_panels(&self, mr: usize, panels: usize) -> usize {
        let most = (self.mc / mr).max(1);
        let blocks = panels.div_ceil(most).max(1);
        panels.div_ceil(blocks).max(1)
    }

    /// Blocking for `uk` derived from the cache sizes:
    /// - KC: the B micro-panel (KC x NR floats), reused by every A micro-panel of the MC
    ///   block, takes two thirds of L1: KC = 2/3 L1 / (4 NR), clamped to 128..=512.
    ///   (48 KiB L1: NR = 32 gives 256, NR = 16 gives 512; 32 KiB L1: NR = 16 gives 336.)
    /// - MC: the A block (MC x KC) is one and a half L1s: MC = 3/2 L1 / (4 KC), in MR units,
    ///   at least one panel (48 KiB L1, KC = 256: 70 rows for MR = 14).
    /// - NC: the packed B block (KC x NC), a task's unit of work, in a quarter of L3 shared
    ///   by the cores, capped at 1024 columns so that layers split into enough tasks.
    ///
    /// The A block is far smaller than BLIS's rule (half of L2). Measured on a Xeon (48 KiB
    /// L1d, 2 MiB L2, AVX-512 FMA peak ~228 GFLOP/s), one thread, 14x32 tile, median GFLOP/s
    /// of interleaved runs, old rule (KC 192, MC 1358) -> this one (KC 256, MC 70): 1024^3
    /// 132 -> 158, 2048^3 126 -> 154, 512 x 1599 x 1536 142 -> 148, 256 x 3136 x 2304 and
    /// 2048 x 49 x 512 even, 256 x 196 x 1024 158 -> 149 (its layer, res4.1x1 on the 13x32
    /// tile, even in `convkit bench`). In a sweep at 1024^3 and 2048^3, MC 42 and 70 were
    /// level, 140 3-5% and 280 up to 8% slower, and KC 128 lost 7% to the extra C round
    /// trips, 384 and 512 2-5% (a B micro-panel past L1). The likely cause: every K block
    /// loads and stores all of C through L2, and a 1.4 MB A block lost its lines to it and
    /// was read back from L3 by the broadcasts (no PMU counters here to confirm it). The
    /// AVX2 tile on the same machine: squares 1.03-1.06x, the conv shapes 0.96-1.04x.
    ///
    /// AVX-512 on AMD's cores (Zen 4, Zen 5) sizes KC and MC from L2 instead: see
    /// [`KcRule::L2`] and [`crate::arch::avx512_kc_from_l2`].
    pub fn derive(uk: &GemmUkernel, caches: Caches) -> Self {
        let rule = if uk.isa == Isa::Avx512 && crate::arch::avx512_kc_from_l2() {
            KcRule::L2
        } else {
            KcRule::L1
        };
        Self::derive_for(uk, caches, rule)
    }

    /// [`Blocking::derive`] under a given [`KcRule`].
    pub fn derive_for(uk: &GemmUkernel, caches: Caches, rule: KcRule) -> Self {
        let (kc, mc) = match rule {
            KcRule::L2 => {
                let kc = (caches.l2 / 8 / (4 * uk.nr)).clamp(256, 1024) / 16 * 16;
                let mc = ((caches.l2 / 4 / (4 * kc)) / uk.mr).max(1) * uk.mr;
                (kc, mc)
            }
            KcRule::L1 => {
                let kc = (caches.l1d * 2 / 3 / (4 * uk.nr)).clamp(128, 512) / 16 * 16;
                let mc = ((caches.l1d * 3 / 2 / (4 * kc)) / uk.mr).max(1) * uk.mr;
                (kc, mc)
            }
        };
        let nc = ((caches.l3.max(caches.l2) / 4 / (4 * kc)).min(1024) / uk.nr).max(1) * uk.nr;
        Blocking { mc, kc, nc }.with_env_overrides(uk)
    }

    /// `CONVKIT_KC`, `CONVKIT_MC`, `CONVKIT_NC` override the derived sizes (for blocking
    /// experiments; values are rounded to the kernel's MR and NR).
    fn with_env_overrides(mut self, uk: &GemmUkernel) -> Self {
        let get = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&v| v > 0)
        };
        if let Some(kc) = get("CONVKIT_KC") {
            self.kc = kc.max(4);
        }
        if let Some(mc) = get("CONVKIT_MC") {
            self.mc = mc.div_ceil(uk.mr) * uk.mr;
        }
        if let Some(nc) = get("CONVKIT_NC") {
            self.nc = nc.div_ceil(uk.nr) * uk.nr;
        }
        self
    }

    /// The K blocks for depth `k`: as even as possible, none longer than `self.kc`, each a
    /// multiple of 4 except the last. Depends on `k` and the kernel only, never on threads.
    pub fn k_blocks(&self, k: usize) -> Vec<(usize, usize)> {
        if k == 0 {
            return vec![(0, 0)];
        }
        let n = k.div_ceil(self.kc);
        let step = k.div_ceil(n).div_ceil(4) * 4;
        (0..k).step_by(step).map(|p| (p, step.min(k - p))).collect()
    }
}

/// A (M x K) packed into MR-tall micro-panels per K block:
///
/// ```text
/// for each K block (p0, kc):                 offset p0 * Mp   (Mp = M rounded up to MR)
///   for each panel i (rows i*MR .. i*MR+MR):  + i * kc * MR
///     for p in 0..kc: a[i*MR + 0][p0+p] .. a[i*MR + MR-1][p0+p]   (zero past row M)
/// ```
#[derive(Clone, Debug)]
pub struct PackedA {
    buf: AlignedBuf,
    /// Rows.
    pub m: usize,
    /// Depth.
    pub k: usize,
    /// Panel height.
    pub mr: usize,
    blocks: Vec<(usize, usize)>,
}

impl PackedA {
    /// Packs A given by `at(i, p)` (row i, depth p).
    pub fn pack(
        m: usize,
        k: usize,
        mr: usize,
        blocking: &Blocking,
        at: impl Fn(usize, usize) -> f32,
    ) -> Self {
        let panels = m.div_ceil(mr);
        let mp = panels * mr;
        let blocks = blocking.k_blocks(k);
        let mut buf = aligned_zeros(mp * k.max(1));
        for &(p0, kc) in &blocks {
            for panel in 0..panels {
                let base = p0 * mp + panel * kc * mr;
                for p in 0..kc {
                    for r in 0..mr {
                        let i = panel * mr + r;
                        if i < m {
                            buf[base + p * mr + r] = flush_denormal(at(i, p0 + p));
                        }
                    }
                }
            }
        }
        PackedA {
            buf,
            m,
            k,
            mr,
            blocks,
        }
    }

    /// Packs a row-major M x K matrix with row stride `rsa`, each row read front to back
    /// once a K block (the per-element form read a column of MR rows a depth step; the
    /// Winograd weight gradient packs 36 such matrices a block of tiles).
    pub fn from_row_major(
        a: &[f32],
        m: usize,
        k: usize,
        rsa: usize,
        mr: usize,
        blocking: &Blocking,
    ) -> Self {
        let mut packed = PackedA::empty(mr);
        packed.repack_row_major(a, m, k, rsa, mr, blocking);
        packed
    }

    /// A 0 x 0 matrix of panel height `mr`, holding no memory: a buffer for
    /// [`PackedA::repack_row_major`] to fill.
    pub fn empty(mr: usize) -> Self {
        PackedA {
            buf: aligned_zeros(0),
            m: 0,
            k: 0,
            mr,
            blocks: Vec::new(),
        }
    }

    /// [`PackedA::from_row_major`] into this matrix's buffer, which grows when it must and
    /// is otherwise reused: the Winograd weight gradient packs alpha^2 matrices a block of
    /// tiles. With a fresh zeroed buffer for each and rows written MR floats apart, the
    /// packing was 13.7% of a 512-channel 1-D weight gradient (perf, AMD Zen 3); reused and
    /// packed a row group at a time (`pack_rows`), 4.7%.
    pub fn repack_row_major(
        &mut self,
        a: &[f32],
        m: usize,
        k: usize,
        rsa: usize,
        mr: usize,
        blocking: &Blocking,
    ) {
        let mp = m.div_ceil(mr) * mr;
        let blocks = blocking.k_blocks(k);
        let len = mp * k.max(1);
        if self.buf.len() < len {
            self.buf.resize(len, 0.0);
        }
        let buf = &mut self.buf[..len];
        for &(p0, kc) in blocks.iter().filter(|&&(_, kc)| kc > 0) {
            for (panel, dst) in buf[p0 * mp..p0 * mp + mp * kc]
                .chunks_exact_mut(kc * mr)
                .enumerate()
            {
                let i0 = panel * mr;
                let rows = mr.min(m - i0);
                let src = &a[i0 * rsa + p0..];
                match mr {
                    6 => pack_rows::<6>(src, rsa, rows, kc, dst),
                    8 => pack_rows::<8>(src, rsa, rows, kc, dst),
                    14 => pack_rows::<14>(src, rsa, rows, kc, dst),
                    _ => pack_rows_any(src, rsa, rows, kc, mr, dst),
                }
            }
        }
        (self.m, self.k, self.mr, self.blocks) = (m, k, mr, blocks);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buf.len() * 4
    }

    /// The K blocks (start, depth) the panels were packed in.
    pub fn blocks(&self) -> &[(usize, usize)] {
        &self.blocks
    }

    /// The micro-panels `panels` of K block `block`, one after another.
    pub fn panels(&self, block: usize, panels: std::ops::Range<usize>) -> &[f32] {
        let (p0, kc) = self.blocks[block];
        let mp = self.m.div_ceil(self.mr) * self.mr;
        let base = p0 * mp;
        &self.buf[base + panels.start * kc * self.mr..base + panels.end * kc * self.mr]
    }
}

/// One panel of a row-major A: `rows` (<= MR) rows of `kc` floats from `src` (row stride
/// `rsa`) into `dst` (`kc` groups of MR, rows past `rows` zero), denormals flushed. Depth
/// step by depth step, each step's MR floats one contiguous store: row by row with stores
/// MR floats apart, this packing took 3 cycles a float (13% of a 512-channel Winograd
/// weight gradient, perf, AMD Zen 3).
#[inline(always)]
fn pack_rows<const MR: usize>(src: &[f32], rsa: usize, rows: usize, kc: usize, dst: &mut [f32]) {
    if rows < MR {
        return pack_rows_any(src, rsa, rows, kc, MR, dst);
    }
    let rows: [&[f32]; MR] = std::array::from_fn(|r| &src[r * rsa..r * rsa + kc]);
    for (p, out) in dst.chunks_exact_mut(MR).take(kc).enumerate() {
        let group: [f32; MR] = std::array::from_fn(|r| flush_denormal(rows[r][p]));
        out.copy_from_slice(&group);
    }
}

/// [`pack_rows`] for any panel height.
fn pack_rows_any(src: &[f32], rsa: usize, rows: usize, kc: usize, mr: usize, dst: &mut [f32]) {
    for (p, out) in dst.chunks_exact_mut(mr).take(kc).enumerate() {
        for (r, o) in out.iter_mut().enumerate() {
            *o = if r < rows {
                flush_denormal(src[r * rsa + p])
            } else {
                0.0
            };
        }
    }
}

/// Weights are packed with denormals flushed to zero: a denormal operand can cost a microcode
/// assist per FMA on some CPUs, and a denormal weight contributes less than 1.2e-38 x |x| to
/// a sum, far inside SPEC's tolerance. (On this Zen 3 machine denormal weights measured no
/// slower: resnet50.res2.3x3 shape, 4.27 ms denormal vs 5.19 ms normal, min of 15.)
#[inline]
pub fn flush_denormal(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0
    } else {
        v
    }
}

/// The fused epilogue of a GEMM.
#[derive(Copy, Clone, Debug)]
pub struct GemmEpilogue<'a> {
    /// Bias per row of C (`m` floats) or per column (`n` floats), or none.
    pub bias: GemmBias<'a>,
    /// Clamp applied last (`(-inf, inf)` for none).
    pub clamp: (f32, f32),
    /// Add the product to what C holds (a preloaded residual, or accumulation).
    pub accumulate: bool,
    /// A band-pass activation applied to each finished tile while it is in L1.
    pub activation: Option<(
        crate::arch::activation::ActUkernel,
        crate::epilogue::Activation,
    )>,
}

impl Default for GemmEpilogue<'_> {
    fn default() -> Self {
        GemmEpilogue {
            bias: GemmBias::None,
            clamp: (f32::NEG_INFINITY, f32::INFINITY),
            accumulate: false,
            activation: None,
        }
    }
}

thread_local! {
    static PACK_B: RefCell<AlignedBuf> = RefCell::new(aligned_zeros(0));
}

/// `C[m x n] (+)= A B` with A prepacked and B packed per block from `b`; C row-major with row
/// stride `rsc`, starting at `c_offset` of `c`. Runs in parallel on the current rayon pool
/// when `parallel`:
/// - many columns: tasks over column blocks of NC, each packing its own B block;
/// - few columns (fewer than 4 blocks a thread): B is packed once per K block, its panels in
///   parallel, into a shared buffer, and tasks split the rows. (Splitting rows with a B
///   packed per task packed it up to 8 times: resnet50.res4.3x3 and the row bands of pooled
///   layers ran slower on 2 threads than on 1.)
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    uk: &GemmUkernel,
    blocking: &Blocking,
    a: &PackedA,
    b: &(impl PackB + ?Sized),
    n: usize,
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    epi: GemmEpilogue,
    parallel: bool,
) {
    let m = a.m;
    if m == 0 || n == 0 {
        return;
    }
    assert_eq!(
        a.mr, uk.mr,
        "A packed for MR = {} but the kernel has MR = {}",
        a.mr, uk.mr
    );
    let panels_m = m.div_ceil(uk.mr);
    let threads = if parallel { crate::par::threads() } else { 1 };
    // Fewer column blocks than 4 a thread: narrower blocks first (`column_block`); row mode
    // only below that. (mobilenetv2.pw56, N = 3136 in 4 blocks of 1024, went to row mode and
    // ran slower on 2 threads than on 1: 8 parallel sections of ~40 us each for a 0.3 ms
    // layer.)
    let blocks = &a.blocks;
    let col_blocks = match split_columns(n, blocking.nc.max(uk.nr), uk.nr, threads) {
        Split::Columns(col_blocks) => col_blocks,
        Split::Rows(nc) => return gemm_rows_mode(uk, blocking, a, b, n, nc, c, c_offset, rsc, epi),
    };
    // Column mode.
    let in_place = b
        .in_place()
        .filter(|_| read_b_in_place(blocks, panels_m, uk.nr))
        .map(|(data, rs)| {
            let offsets: Vec<OffsetTable> = blocks
                .iter()
                .map(|&(_, kc)| OffsetTable::new((0..kc).map(|p| p * rs).collect()))
                .collect();
            (data, rs, offsets)
        });
    let panelwise = pack_panelwise(a, uk, blocking.nc.min(n));
    let task = |ct: usize| {
        let (j0, ncur) = col_blocks[ct];
        let panels_n = ncur.div_ceil(uk.nr);
        PACK_B.with(|cell| {
            let mut bp = cell.borrow_mut();
            for (bi, &(p0, kc)) in blocks.iter().enumerate() {
                let direct = in_place.as_ref().map(|(data, rs, offsets)| InPlaceB {
                    data,
                    row0: p0 * rs,
                    offsets: &offsets[bi],
                });
                // B the source holds already packed (Winograd's V) is read where it lies.
                let held = if kc > 0 && direct.is_none() {
                    b.prepacked(p0, kc, j0, ncur, uk.nr)
                } else {
                    None
                };
                // Panel by panel (`pack_panelwise`), the buffer holds one panel at a time.
                let panel_by_panel = kc > 0 && held.is_none() && direct.is_none() && panelwise;
                let need = uk.nr * kc.max(1) * if panel_by_panel { 1 } else { panels_n };
                if held.is_none() && bp.len() < need {
                    *bp = aligned_zeros(need);
                }
                if kc > 0 && held.is_none() && !panel_by_panel {
                    match &direct {
                        // Only the panels the kernel cannot read in place are packed.
                        Some(d) => {
                            for jp in 0..panels_n {
                                let jj = j0 + jp * uk.nr;
                                let w = uk.nr.min(j0 + ncur - jj);
                                if !d.readable(jj, w, uk.nr) {
                                    let panel = &mut bp[jp * uk.nr * kc..(jp + 1) * uk.nr * kc];
                                    b.pack(p0, kc, jj, w, uk.nr, panel);
                                }
                            }
                        }
                        None => b.pack(p0, kc, j0, ncur, uk.nr, &mut bp[..need]),
                    }
                }
                let step = BlockStep {
                    bi,
                    kc,
                    first: bi == 0,
                    last: bi + 1 == blocks.len(),
                };
                if panel_by_panel {
                    // Each panel packed just before its tiles, into one panel's room: the
                    // packed panel stays in L2.
                    for jp in 0..panels_n {
                        let jj = j0 + jp * uk.nr;
                        let w = uk.nr.min(j0 + ncur - jj);
                        b.pack(p0, kc, jj, w, uk.nr, &mut bp[..need]);
                        block_tiles(
                            uk,
                            blocking,
                            a,
                            &bp[..need],
                            None,
                            step,
                            jj,
                            w,
                            0..panels_m,
                            c,
                            c_offset,
                            rsc,
                            &epi,
                        );
                    }
                    continue;
                }
                block_tiles(
                    uk,
                    blocking,
                    a,
                    match held {
                        Some(panels) => panels,
                        None => &bp[..need],
                    },
                    direct.as_ref(),
                    step,
                    j0,
                    ncur,
                    0..panels_m,
                    c,
                    c_offset,
                    rsc,
                    &epi,
                );
            }
        });
    };
    if threads > 1 && col_blocks.len() > 1 {
        crate::par::for_each_index(col_blocks.len(), task);
    } else {
        (0..col_blocks.len()).for_each(task);
    }
}

/// Row mode of [`gemm_packed`]: one B packed per (column block of `nc`, K block), its panels
/// in parallel, into a shared buffer, and tasks over the rows.
#[allow(clippy::too_many_arguments)]
fn gemm_rows_mode(
    uk: &GemmUkernel,
    blocking: &Blocking,
    a: &PackedA,
    b: &(impl PackB + ?Sized),
    n: usize,
    nc: usize,
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    epi: GemmEpilogue,
) {
    let blocks = &a.blocks;
    let panels_m = a.m.div_ceil(uk.mr);
    let threads = crate::par::threads();
    let row_tasks = (4 * threads).min(panels_m).max(1);
    let per = panels_m.div_ceil(row_tasks);
    let mut shared_b = aligned_zeros(0);
    for j0 in (0..n).step_by(nc) {
        let ncur = nc.min(n - j0);
        let panels_n = ncur.div_ceil(uk.nr);
        for (bi, &(p0, kc)) in blocks.iter().enumerate() {
            let need = panels_n * uk.nr * kc.max(1);
            if shared_b.len() < need {
                shared_b = aligned_zeros(need);
            }
            if kc > 0 {
                // Panels are independent: pack groups of them in parallel.
                let group = panels_n.div_ceil(2 * threads).max(1);
                crate::par::for_each_chunk_mut(
                    &mut shared_b[..need],
                    group * uk.nr * kc,
                    |gi, chunk| {
                        let c0 = gi * group * uk.nr;
                        let w = (group * uk.nr).min(ncur - c0);
                        b.pack(p0, kc, j0 + c0, w, uk.nr, chunk);
                    },
                );
            }
            let bp = &shared_b[..need];
            let step = BlockStep {
                bi,
                kc,
                first: bi == 0,
                last: bi + 1 == blocks.len(),
            };
            crate::par::for_each_index(panels_m.div_ceil(per), |rt| {
                let rows = rt * per..((rt + 1) * per).min(panels_m);
                block_tiles(
                    uk, blocking, a, bp, None, step, j0, ncur, rows, c, c_offset, rsc, &epi,
                );
            });
        }
    }
}

/// How a GEMM splits among threads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Split {
    /// Column tasks `(first column, columns)`, each packing its own B: no barrier per K
    /// block.
    Columns(Vec<(usize, usize)>),
    /// Row mode over column blocks of this width: one packed B per K block shared by row
    /// tasks, which meet at two barriers per block.
    Rows(usize),
}

/// The split of `n` columns (NC `nc`, panels of `nr`) on `threads`. One thread, or enough
/// NC blocks for 4 tasks a thread: NC blocks. Otherwise the panels are dealt evenly to 4
/// tasks a thread if each gets 16 or more, else to 2 a thread if each gets 4 or more, else
/// to one a thread if each gets 3 or more, else row mode. (The last step came with
/// AVX-512's 32-column panels, which halve the panel counts: 14 x 14 outputs have 7.
/// Paired 2-thread runs, row mode / one task a thread: im2col on res4.3x3 1.08, on
/// vgg16.conv5_3 1.06, gemm1x1 on res4.1x1 0.99.) Paired 2-thread runs, column tasks against row mode (time ratio, median of
/// 20-40 alternations, the geometric mean of both orders, as the second of a pair ran up to
/// 15% slower whatever it was): resnet50.res3.3x3s2 (49 panels) 0.82, deeplab.dilated3x3
/// (69) 0.79, res4.1x1 (13) 0.95, wav2vec2.conv1 (100) 0.93. Layers of 196 panels keep 4
/// tasks a thread (2 a thread measured 1.13-1.35x slower on res2.1x1b and pw56, whose single
/// K block leaves little to amortize). Even shares, not NC-rounded ones: res4.1x1's 13
/// panels in tasks of 4, 4, 4 and 1 gave one thread 8 and the other 5; as 3, 3, 3, 4, 6
/// and 7.
fn split_columns(n: usize, nc: usize, nr: usize, threads: usize) -> Split {
    if threads == 1 || n.div_ceil(nc) >= 4 * threads {
        let blocks = (0..n).step_by(nc).map(|j0| (j0, nc.min(n - j0))).collect();
        return Split::Columns(blocks);
    }
    let panels = n.div_ceil(nr);
    for (per_thread, min_panels) in [(4, 16), (2, 4), (1, 3)] {
        let tasks = per_thread * threads;
        if panels.div_ceil(tasks) >= min_panels {
            let bounds = |t: usize| (t * panels / tasks * nr).min(n);
            let blocks = (0..tasks)
                .map(|t| (bounds(t), bounds(t + 1) - bounds(t)))
                .collect();
            return Split::Columns(blocks);
        }
    }
    Split::Rows(nc)
}

/// Whether a column task reads B where it lies (`BPanel::Indirect` rows) instead of packing
/// it; `CONVKIT_B_IN_PLACE=0|1` decides for experiments.
///
/// Packing reads and writes each B panel once and pays off over the A panels that reuse it
/// from L1; read in place, the panel's rows are a whole image row apart (more L1 sets and
/// misses per reuse). Measured side by side, one thread, min of 200 runs (ms, packed against
/// in place): mobilenetv2.pw56 (M = 24: 4 panels, K = 144) 0.39-0.54 against 0.29-0.30;
/// resnet50.res2.1x1a (11 panels) 0.41-0.53 against 0.44-0.55, a tie; res2.1x1b (43 panels)
/// 1.49-2.11 against 1.60-1.87; res4.1x1 (K = 1024 in 4 blocks) 1.40-1.51 against 1.39-1.78.
/// Paired runs (in place / packed, median of 100 alternations): pw56 0.78, res2.1x1a 1.07,
/// res2.1x1b 1.21, res4.1x1 1.15, res5.1x1 1.42. So: in place for a single K block feeding
/// at most 8 A panels, with panels of at most 16 columns.
///
/// With AVX-512's 32-column panels (a Xeon with 48 KiB L1, 2 MiB L2), in place ran at about
/// half speed everywhere: paired runs, one thread, in place / packed time: pw56 2.23,
/// res2.1x1a 2.11, res2.1x1b 2.09, res4.1x1 2.50, res5.1x1 1.85 (each row of the panel is two
/// lines of a different image row, a plane apart).
fn read_b_in_place(blocks: &[(usize, usize)], panels_m: usize, nr: usize) -> bool {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| match std::env::var("CONVKIT_B_IN_PLACE").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    });
    forced.unwrap_or(nr <= 16 && blocks.len() == 1 && panels_m <= 8)
}

/// Whether a column task packs B one NR panel at a time, just before that panel's tiles,
/// instead of all of a K block's panels first ([`panelwise_rule`] on this machine's L2;
/// `CONVKIT_B_PANELWISE=0|1` decides for experiments).
fn pack_panelwise(a: &PackedA, uk: &GemmUkernel, nc: usize) -> bool {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| match std::env::var("CONVKIT_B_PANELWISE").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    });
    let kc = a.blocks.iter().map(|b| b.1).max().unwrap_or(0);
    let a_block = a.m.div_ceil(uk.mr) * uk.mr * kc * 4;
    let b_block = kc * nc.div_ceil(uk.nr) * uk.nr * 4;
    forced.unwrap_or_else(|| panelwise_rule(a_block, b_block, crate::sysinfo::caches().l2))
}

/// Whether a column task packs B one NR panel at a time, just before that panel's tiles
/// (sizes in bytes): where A's K block fits in a quarter of L2 (few rows: walking all of it
/// once a panel costs little) and the packed B block would not fit in half of L2. Packed
/// whole, such a block (2.3 MB for the im2col of resnet50.res2.3x3, 64 x 3136 x 576, with the
/// AVX-512 blocking of AMD, KC up to 1024, NC 1024) is written out to L3 and read back; a
/// panel (KC x NR floats) stays in L2. With few rows the packing is a large share of the
/// work (34% of that shape's time, perf).
/// Interleaved, one thread, Zen 5, medians of 7, packed whole -> panel by panel: that shape
/// 134 -> 154 and 145 -> 157 GFLOP/s on the 14x32 (two runs), 161 -> 174 and 158 -> 170
/// on the 8x32; 64 x 3136 x 256 1.02-1.03x (within this host's noise of about 7%). Where the
/// B block fits L2 (mobilenetv2.pw56, K = 24) panel by panel lost 5-6%: the rule leaves it.
/// The AVX2 6x16 on the res2.3x3 shape (the L1 rule, K blocks of 288) is level either way
/// (medians of 5 alternating processes, 62.2 and 63.0 GFLOP/s).
pub fn panelwise_rule(a_block_bytes: usize, b_block_bytes: usize, l2: usize) -> bool {
    a_block_bytes <= l2 / 4 && b_block_bytes > l2 / 2
}

/// B rows read in place for one K block: row `p` of the block at `data[row0 + offsets[p] + j]`.
struct InPlaceB<'a> {
    data: &'a [f32],
    row0: usize,
    offsets: &'a OffsetTable,
}

impl InPlaceB<'_> {
    /// Whether the full-width panel at column `jj` (`w` of `nr` columns real) lies inside the
    /// data; partial panels are packed (the kernel reads NR columns).
    fn readable(&self, jj: usize, w: usize, nr: usize) -> bool {
        w == nr && self.row0 + jj + self.offsets.max() + nr <= self.data.len()
    }
}

/// One K block of the loops: which block, its depth, and whether it starts or ends the sum.
#[derive(Copy, Clone)]
struct BlockStep {
    bi: usize,
    kc: usize,
    first: bool,
    last: bool,
}

/// LOOP 3 over MC blocks of A (in L2) within `panels`, LOOP 2 over the B micro-panels of the
/// packed block `bp` (one stays in L1 while LOOP 1 walks the MR panels of the MC block).
#[allow(clippy::too_many_arguments)]
fn block_tiles(
    uk: &GemmUkernel,
    blocking: &Blocking,
    a: &PackedA,
    bp: &[f32],
    in_place: Option<&InPlaceB>,
    step: BlockStep,
    j0: usize,
    ncur: usize,
    panels: std::ops::Range<usize>,
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    epi: &GemmEpilogue,
) {
    let m = a.m;
    let panels_n = ncur.div_ceil(uk.nr);
    let mc_panels = blocking.mc_panels(uk.mr, panels.len());
    let mut ic = panels.start;
    while ic < panels.end {
        let ic_end = (ic + mc_panels).min(panels.end);
        for jp in 0..panels_n {
            let jj = j0 + jp * uk.nr;
            let ncur_t = uk.nr.min(j0 + ncur - jj);
            let bpanel = match in_place {
                Some(d) if d.readable(jj, ncur_t, uk.nr) => BPanel::Indirect {
                    x: d.data,
                    base: d.row0 + jj,
                    offsets: d.offsets,
                },
                _ => BPanel::Packed(&bp[jp * uk.nr * step.kc..]),
            };
            // LOOP 1, the MR panels of the MC block, runs inside `run_gemm_column`.
            let i0 = ic * uk.mr;
            let rows = (ic_end * uk.mr).min(m) - i0;
            let bias = match epi.bias {
                GemmBias::None => GemmBias::None,
                GemmBias::Row(s) => GemmBias::Row(&s[i0..]),
                GemmBias::Col(s) => GemmBias::Col(&s[jj..]),
            };
            let off = c_offset + i0 * rsc + jj;
            let load = epi.accumulate || !step.first;
            run_gemm_column(
                uk,
                step.kc,
                a.panels(step.bi, ic..ic_end),
                bpanel,
                c,
                off,
                rsc,
                rows,
                ncur_t,
                load,
                step.last,
                bias,
                epi.clamp,
            );
            if let (true, Some((kernel, act))) = (step.last, epi.activation) {
                activate_tile(&kernel, act, c, off, rsc, rows, ncur_t);
            }
        }
        ic = ic_end;
    }
}

/// Plain SGEMM for tests and benchmarks: `C = A B (+ epilogue)`, A row-major `m x k`, B
/// row-major `k x n`, C row-major `m x n` (row stride `n`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    uk: &GemmUkernel,
    blocking: &Blocking,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    epi: GemmEpilogue,
    parallel: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "sgemm: operands shorter than their shapes"
    );
    let pa = PackedA::from_row_major(a, m, k, k, uk.mr, blocking);
    let src = StridedB {
        data: b,
        rs: n,
        cs: 1,
    };
    let shared = SharedMut::new(c);
    gemm_packed(uk, blocking, &pa, &src, n, &shared, 0, n, epi, parallel);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocking rules on the machines they were measured on: the L1 rule on Intel (and
    /// every tier but AVX-512), the L2 rule for AVX-512 on AMD's Zen 4 and Zen 5.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn blocking_rules_of_the_measured_machines() {
        use crate::arch::x86_64::{avx2, avx512};
        let kib = 1024;
        let xeon = Caches {
            l1d: 48 * kib,
            l2: 2048 * kib,
            l3: 32768 * kib,
        };
        let zen4 = Caches {
            l1d: 32 * kib,
            l2: 1024 * kib,
            l3: 32768 * kib,
        };
        let zen5 = Caches {
            l1d: 48 * kib,
            ..zen4
        };
        let rule = |uk, caches, rule| {
            let b = Blocking::derive_for(uk, caches, rule);
            (b.kc, b.mc, b.nc)
        };
        let (l1, l2) = (KcRule::L1, KcRule::L2);
        assert_eq!(rule(&avx512::F32_GEMM_14X32, xeon, l1), (256, 70, 1024));
        assert_eq!(rule(&avx512::F32_GEMM_14X32, zen4, l1), (160, 70, 1024));
        assert_eq!(rule(&avx512::F32_GEMM_8X32, zen4, l2), (1024, 64, 1024));
        assert_eq!(rule(&avx512::F32_GEMM_14X32, zen4, l2), (1024, 56, 1024));
        assert_eq!(rule(&avx512::F32_GEMM_14X32, zen5, l2), (1024, 56, 1024));
        assert_eq!(rule(&avx512::F32_GEMM_8X48, zen5, l2), (672, 96, 1008));
        assert_eq!(rule(&avx2::F32_GEMM_6X16, zen4, l1), (336, 36, 1024));
        assert_eq!(rule(&avx2::F32_GEMM_6X16, zen5, l1), (512, 36, 1024));
        // Derived on this machine: AVX2 keeps the L1 rule whatever the vendor.
        let here = crate::sysinfo::caches();
        assert_eq!(
            Blocking::derive(&avx2::F32_GEMM_6X16, here),
            Blocking::derive_for(&avx2::F32_GEMM_6X16, here, l1)
        );
    }

    /// The column split of the suite's shapes on 2 threads (NR = 16, NC = 1024): tasks
    /// cover the columns in order, whole panels each, shares within one panel of each other.
    #[test]
    fn column_split_of_the_suite_shapes() {
        // (N, threads) -> column tasks (None: row mode)
        let cases: [(usize, usize, Option<usize>); 7] = [
            (3136, 1, Some(4)), // one thread: NC blocks
            (3136, 2, Some(8)), // res2 / pw56: 4 tasks a thread of 24-25 panels
            (784, 2, Some(4)),  // res3.3x3s2: 2 tasks a thread of 12-13 panels
            (1089, 2, Some(4)), // deeplab
            (196, 2, Some(4)),  // res4.1x1: 3, 3, 3 and 4 panels
            (49, 2, None),      // res5.1x1: too few panels, row mode
            (50176, 2, Some(49)),
        ];
        for (n, threads, want) in cases {
            match split_columns(n, 1024, 16, threads) {
                Split::Columns(blocks) => {
                    assert_eq!(Some(blocks.len()), want, "N = {n} on {threads} threads");
                    let mut next = 0;
                    for &(j0, w) in &blocks {
                        assert_eq!(j0, next, "N = {n}: tasks must tile the columns");
                        assert!(w > 0 && w <= 1024 && (j0 % 16 == 0));
                        next = j0 + w;
                    }
                    assert_eq!(next, n);
                    if threads > 1 {
                        let panels: Vec<usize> = blocks.iter().map(|b| b.1.div_ceil(16)).collect();
                        let (lo, hi) = (panels.iter().min().unwrap(), panels.iter().max().unwrap());
                        assert!(hi - lo <= 1, "N = {n}: uneven shares {panels:?}");
                    }
                }
                Split::Rows(nc) => {
                    assert_eq!(want, None, "N = {n}: row mode");
                    assert_eq!(nc, 1024);
                }
            }
        }
    }
}
