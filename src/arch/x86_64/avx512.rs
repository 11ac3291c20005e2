//! AVX-512F kernels. 32 zmm registers: the 14x32 GEMM tile keeps 28 accumulators, two B
//! vectors and one broadcast A value in registers.

use crate::arch::activation::{
    EXP_CLAMP, EXP_POLY, GELU_TANH_C, GELU_TANH_K, LN2_HI, LN2_LO, SIGMOID_ZERO_BELOW,
};
use crate::arch::{store_tile_scalar, Isa};
use crate::kernels::{GemmTile, GemmUkernel, KernelTable, TileBias};
use core::arch::x86_64::*;

/// The AVX-512 kernel table.
pub static TABLE: KernelTable = KernelTable {
    isa: Isa::Avx512,
    gemm: &[
        F32_GEMM_14X32,
        F32_GEMM_13X32,
        F32_GEMM_8X48,
        F32_GEMM_8X32,
        F32_GEMM_6X64,
        F32_GEMM_7X48,
    ],
    dwconv: F32_DWCONV_PLANE,
    activation: F32_ACT,
    // The AVX2 transforms (8-lane groups, ymm): compiled under AVX-512, LLVM moved the
    // lane arrays in zmm pairs and the F(4,3) and F(6,3) transforms stalled on the stack
    // (store forwarding); paired runs, one thread, old/new time: vgg16.conv1_2 F(6,3) 1.15,
    // resnet50.res2.3x3 F(6,3) 1.12, F(4,3) 1.06, res3.3x3 F(4,3) 1.07.
    winograd: crate::arch::x86_64::avx2::F32_WINOGRAD,
    gather: crate::arch::x86_64::avx2::gather,
    pool_plane,
    pool_channels_last,
    transpose: crate::arch::x86_64::avx2::transpose,
    conv_oc: F32_CONV_OC,
    conv_oc_wide: Some(F32_CONV_OC_WIDE),
    conv_oc_seven: Some(F32_CONV_OC_SEVEN),
    // Shallow GEMMs (K <= 256) take the 6x64: see KernelTable::gemm_for_shape.
    gemm_shallow: Some(&F32_GEMM_6X64),
    // Deeper GEMMs of layers take the 8x48: see KernelTable::gemm_for_shape.
    gemm_deep: Some(&F32_GEMM_8X48),
    deinterleave2: crate::arch::x86_64::avx2::deinterleave2,
};

/// The AVX-512 kernel table for CPUs that split each 512-bit FMA into two 256-bit halves
/// ([`crate::arch::Avx512Datapath::Split256`], AMD Zen 4): the same kernels, with the 8x32
/// GEMM tile first and no shallow or deep tile. There a zmm FMA issues once a cycle, not
/// twice, so a tile needs half the registers' worth of accumulators to hide latency, and
/// with KC from L2 ([`crate::gemm::Blocking::derive`]) the 8x32 ran fastest or level on
/// every shape. Paired, one thread, Zen 4 (AVX-512 FMA peak 112 GFLOP/s), GFLOP/s, 14x32
/// at this machine's old KC 160 -> 14x32 at KC 768 -> 8x32 at KC 768 (the 13x32, 8x48 and
/// 6x64 at KC 768 within 3% of the 8x32 or behind it): 1024^3 91.7 -> 100.3 -> 103.3;
/// 2048^3 91.3 -> 105.7 -> 105.4; vgg16.conv3_3's im2col (256 x 3136 x 2304) 88.7 -> 89.0
/// -> 95.9; resnet50.res2.3x3's (64 x 3136 x 576) 71.3 -> 69.3 -> 80.6; res4.1x1 (256 x
/// 196 x 1024) 95.1 -> 100.9 -> 101.0; wav2vec2.conv1's im2col (512 x 1599 x 1536) 95.3
/// -> 99.0 -> 102.7; mobilenetv2.pw56 (144 x 3136 x 24) 74.5 -> 75.1 -> 94.5; res2.1x1a
/// (64 x 3136 x 256) 79.4 -> 82.6 -> 93.4.
pub static TABLE_SPLIT256: KernelTable = KernelTable {
    gemm: &[
        F32_GEMM_8X32,
        F32_GEMM_14X32,
        F32_GEMM_13X32,
        F32_GEMM_8X48,
        F32_GEMM_6X64,
        F32_GEMM_7X48,
    ],
    gemm_shallow: None,
    gemm_deep: None,
    ..TABLE
};

macro_rules! gemm_kernel {
    ($const:ident, $fn:ident, $name:literal, $mr:literal, $nv:literal) => {
        /// GEMM microkernel descriptor.
        pub const $const: GemmUkernel = GemmUkernel {
            name: $name,
            isa: Isa::Avx512,
            mr: $mr,
            nr: $nv * 16,
            run: $fn,
            narrow: Some((16 * ($nv - 1) + EDGE_MAX, narrow_column::<$mr, $nv>)),
        };
        unsafe fn $fn(t: &GemmTile) {
            // SAFETY: the descriptor is reached only through TABLE after the CPU was found to
            // support AVX-512F (Isa::kernels), and the caller upholds the tile contract.
            unsafe { gemm_tile::<$mr, $nv, $nv>(t) }
        }
    };
}

gemm_kernel!(
    F32_GEMM_14X32,
    f32_gemm_14x32,
    "f32_gemm_14x32__avx512",
    14,
    2
);
// 13 rows: M = 64, 128 and 256 pad to 65, 130 and 260 (1.6%) where 14 pads to 70, 140 and
// 266 (9.4%, 9.4%, 3.9%); see KernelTable::gemm_for_rows.
gemm_kernel!(
    F32_GEMM_13X32,
    f32_gemm_13x32,
    "f32_gemm_13x32__avx512",
    13,
    2
);
gemm_kernel!(F32_GEMM_8X48, f32_gemm_8x48, "f32_gemm_8x48__avx512", 8, 3);
gemm_kernel!(F32_GEMM_8X32, f32_gemm_8x32, "f32_gemm_8x32__avx512", 8, 2);
gemm_kernel!(F32_GEMM_6X64, f32_gemm_6x64, "f32_gemm_6x64__avx512", 6, 4);
// 7 rows, for A read in place: 49 pixels (7 x 7 images, resnet50.res5) in whole tiles; see
// KernelTable::gemm_in_place.
gemm_kernel!(F32_GEMM_7X48, f32_gemm_7x48, "f32_gemm_7x48__avx512", 7, 3);

/// Columns past a panel's last whole vector that [`narrow_column`] takes lane-major, rows as
/// the vector lanes.
const EDGE_MAX: usize = 4;

/// A partial panel of `n <= 16 (BS - 1) + EDGE_MAX` columns down a whole column of tiles:
/// its `n / 16` whole vectors through [`gemm_tile`] (one to `BS - 1` vectors of the panel's
/// `BS`, where the full-width kernel multiplied the zero padding of the others: the Winograd
/// GEMMs of 7x7 and 14x14 outputs have N = 16 tiles), and an edge of up to [`EDGE_MAX`]
/// columns past them by [`edge_tiles`]; an edge of 5 to 15 as one more vector.
/// resnet50.res5.1x1 (N = 49 = 32 + 16 + 1) took two full panels, 64 columns of work for
/// 49, and res4.1x1 (N = 196 = 6 x 32 + 4) a vector for its last 4.
///
/// # Safety
/// AVX-512F is available; `t` satisfies [`GemmUkernel::narrow`]'s contract for `mr = MR`,
/// `nr = 16 BS` and `n <= 16 (BS - 1) + EDGE_MAX`.
unsafe fn narrow_column<const MR: usize, const BS: usize>(t: &GemmTile) {
    let (whole, edge) = (t.n / 16, t.n % 16);
    let (vectors, edge) = if edge > EDGE_MAX || !t.b_off.is_null() {
        (t.n.div_ceil(16), 0)
    } else {
        (whole, edge)
    };
    if vectors > 0 {
        let n = t.n.min(16 * vectors);
        let tiles = t.m.div_ceil(MR);
        for i in 0..tiles {
            let tile = GemmTile {
                a: t.a.wrapping_add(i * t.k * MR),
                n,
                ..t.rows_from(i * MR, MR)
            };
            // SAFETY: tile i of the column (the contract covers all of them), n <= 16
            // vectors <= 16 BS (vectors <= BS: n <= 16 BS); each arm reads `vectors` of
            // the panel's BS vectors a row.
            unsafe {
                match vectors {
                    1 => gemm_tile::<MR, 1, BS>(&tile),
                    2 => gemm_tile::<MR, 2, BS>(&tile),
                    3 => gemm_tile::<MR, 3, BS>(&tile),
                    _ => gemm_tile::<MR, 4, BS>(&tile),
                }
            }
        }
    }
    if edge > 0 {
        let cols = t.cols_from(16 * whole, edge);
        // SAFETY: columns 16 whole .. n of the same column of tiles, packed B (b_off null),
        // n = edge <= EDGE_MAX.
        unsafe {
            match edge {
                1 => edge_tiles::<MR, BS, 1, 8>(&cols),
                2 => edge_tiles::<MR, BS, 2, 4>(&cols),
                3 => edge_tiles::<MR, BS, 3, 3>(&cols),
                _ => edge_tiles::<MR, BS, 4, 2>(&cols),
            }
        }
    }
}

/// `NC` columns of a column of tiles with rows as the vector lanes (an A panel's MR values
/// of one k, one masked load) and each column a broadcast B value, `G` tiles side by side
/// (`G * NC` independent FMA chains; a tile of one column through [`gemm_tile`] is one chain,
/// 4 cycles a k step for 1/16 of a vector's work). Each element is still one FMA chain over
/// k in order from zero, then C, bias and clamp as in [`store_tile_scalar`]: the same bits
/// as the tile kernel. (The AVX2 tier's `narrow_column`, on zmm.)
///
/// # Safety
/// AVX-512F is available; `t` satisfies the narrow contract for `mr = MR`, `nr = 16 BS`,
/// with packed B (`b_off` null) and `t.n == NC`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn edge_tiles<const MR: usize, const BS: usize, const NC: usize, const G: usize>(
    t: &GemmTile,
) {
    let tiles = t.m.div_ceil(MR);
    let mut done = 0;
    while done + G <= tiles {
        // SAFETY: tiles done..done + G exist (the contract's m.div_ceil(MR) panels).
        unsafe { edge_group::<MR, BS, NC, G>(t, done) };
        done += G;
    }
    // The rest in one group, never wider than G: with MC blocks of 5 tiles a 1-column edge
    // (G = 8) ran five single chains, each waiting 4 cycles a k step (the 2048 x 49 x 512
    // GEMM 0.88x as fast as with one group).
    // SAFETY: as above, tiles done..tiles (fewer than G, so at most 7).
    unsafe {
        match tiles - done {
            0 => {}
            1 => edge_group::<MR, BS, NC, 1>(t, done),
            2 => edge_group::<MR, BS, NC, 2>(t, done),
            3 => edge_group::<MR, BS, NC, 3>(t, done),
            4 => edge_group::<MR, BS, NC, 4>(t, done),
            5 => edge_group::<MR, BS, NC, 5>(t, done),
            6 => edge_group::<MR, BS, NC, 6>(t, done),
            _ => edge_group::<MR, BS, NC, 7>(t, done),
        }
    }
}

/// Tiles `first..first + G` of [`edge_tiles`].
///
/// # Safety
/// As [`edge_tiles`], with `first + G <= t.m.div_ceil(MR)`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn edge_group<const MR: usize, const BS: usize, const NC: usize, const G: usize>(
    t: &GemmTile,
    first: usize,
) {
    // The first MR lanes: an A panel's values for one k (lanes past MR are not read).
    let mask: __mmask16 = ((1u32 << MR) - 1) as __mmask16;
    let mut acc = [[_mm512_setzero_ps(); NC]; G];
    let a0 = t.a.wrapping_add(first * t.k * MR);
    for p in 0..t.k {
        let b_row = t.b.wrapping_add(p * 16 * BS);
        let mut bv = [_mm512_setzero_ps(); NC];
        for (j, v) in bv.iter_mut().enumerate() {
            // SAFETY: B row p holds the panel's 16 BS floats, of which the tile's NC columns
            // are readable (the tile contract).
            *v = _mm512_set1_ps(unsafe { *b_row.add(j) });
        }
        for (g, row) in acc.iter_mut().enumerate() {
            // SAFETY: panel first + g holds k * MR floats and the mask reads MR of them at
            // p * MR (the contract: m.div_ceil(MR) panels).
            let av = unsafe { _mm512_maskz_loadu_ps(mask, a0.wrapping_add((g * t.k + p) * MR)) };
            for j in 0..NC {
                row[j] = _mm512_fmadd_ps(av, bv[j], row[j]);
            }
        }
    }
    for (g, cols) in acc.iter().enumerate() {
        let i0 = (first + g) * MR;
        let mut lanes = [[0f32; 16]; NC];
        for (dst, &v) in lanes.iter_mut().zip(cols) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        }
        // Row i of the tile is lanes[j][i] for its NC columns: the layout store_tile_scalar
        // reads (row stride NC).
        let mut tile = [0f32; 16 * EDGE_MAX];
        for i in 0..MR {
            for j in 0..NC {
                tile[i * NC + j] = lanes[j][i];
            }
        }
        let one = t.rows_from(i0, MR);
        // SAFETY: the tile's rows lie inside the column the caller vouches for, n = NC.
        unsafe { store_tile_scalar(&tile, NC, &one) };
    }
}

/// Prefetches the first and last line of each of the tile's `t.m` rows of C (`width`
/// floats a row) with hint `HINT`.
#[inline(always)]
fn prefetch_rows<const HINT: i32>(t: &GemmTile, width: usize) {
    for i in 0..t.m {
        let row = t.c.wrapping_add(i * t.rsc);
        // SAFETY: a prefetch reads nothing architecturally and never faults; SSE is baseline.
        unsafe {
            _mm_prefetch::<HINT>(row as *const i8);
            _mm_prefetch::<HINT>(row.wrapping_add(width - 1) as *const i8);
        }
    }
}

/// `C[MR x 16 NV] (+)= A~ B~`, then bias and clamp, B's rows `16 BS` floats apart (`BS >=
/// NV`: the narrow edge reads one vector of a wider panel). Accumulators live in registers:
/// the loops over `MR` and `NV` have constant trip counts and unroll completely.
///
/// # Safety
/// AVX-512F is available and `t` satisfies the contract of `GemmUkernel::run` with
/// `mr = MR`, `nr = 16 BS`, and `n <= 16 NV`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_tile<const MR: usize, const NV: usize, const BS: usize>(t: &GemmTile) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    // Prefetch the C tile: it is read (load_c) and written after the K loop, and between K
    // blocks it has usually left L2; without this the final loads and stores stalled on
    // memory (a quarter of the kernel's samples on vgg16.conv4_3).
    // With rows a multiple of 4 KiB apart (square power-of-two GEMMs) the tile's 2 MR
    // lines all fall in one 12-way L1 set and the prefetches evict one another: there they
    // go to L2 (16 ways, 2048 sets) instead. Paired runs, 14x32, GFLOP/s T0 -> T1: 1024^3
    // 134 -> 142, 2048^3 130 -> 134; T1 everywhere lost 2-4% on the conv shapes.
    if (t.rsc * 4).is_multiple_of(4096) {
        prefetch_rows::<_MM_HINT_T1>(t, 16 * NV);
    } else {
        prefetch_rows::<_MM_HINT_T0>(t, 16 * NV);
    }
    let step = |acc: &mut [[__m512; NV]; MR], a: *const f32, b: *const f32| {
        let mut bv = [_mm512_set1_ps(0.0); NV];
        for (v, slot) in bv.iter_mut().enumerate() {
            // SAFETY: each step reads NR floats of B row p, readable by the tile contract.
            *slot = unsafe { _mm512_loadu_ps(b.add(16 * v)) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: A~ holds k * MR floats; each step reads MR of them.
            let ai = _mm512_set1_ps(unsafe { *a.add(i) });
            for v in 0..NV {
                row[v] = _mm512_fmadd_ps(ai, bv[v], row[v]);
            }
        }
    };
    // The K loop, unrolled by `unroll` steps so the pointer updates and the branch are
    // amortized. Tiles of more than 16 accumulators are not unrolled: with 28 (14x32) LLVM
    // kept the unrolled loop's accumulators in memory, a store after every FMA, and the
    // kernel ran at 31% of peak (69 GFLOP/s at 1024^3 on a Xeon with 226 GFLOP/s peak);
    // rolled, the same tile holds all 28 in registers.
    let unroll = if MR * NV > 16 { 1 } else { 4 };
    let mut a = t.a;
    if t.a_rs != 0 {
        // A read in place: one pointer a row (rows past m repeat row m - 1), each step
        // broadcasts element p of every row. The tiles that take this (MR <= 8) keep the
        // row pointers in registers, and each row is read front to back, one line per 16
        // steps.
        let (a0, last, rs) = (t.a, t.m - 1, t.a_rs);
        // A closure on the accumulator array, as `step` is: written as a loop over
        // `acc.iter_mut().zip(&rows)`, LLVM stored every accumulator after each FMA and
        // resnet50.res2.1x1a (NHWC) ran at 75 GFLOP/s against 160.
        let step_rows = |acc: &mut [[__m512; NV]; MR], p: usize, b: *const f32| {
            let mut bv = [_mm512_set1_ps(0.0); NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                // SAFETY: B row p holds NR floats (the tile contract, packed B).
                *slot = unsafe { _mm512_loadu_ps(b.add(16 * v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: each of A's rows holds k floats (the in-place contract), p < k.
                let ai = _mm512_set1_ps(unsafe { *a0.add(i.min(last) * rs + p) });
                for v in 0..NV {
                    row[v] = _mm512_fmadd_ps(ai, bv[v], row[v]);
                }
            }
        };
        let mut b = t.b;
        let ahead = t.prefetch_lines.min(t.k);
        for p in 0..ahead {
            // A prefetch reads nothing architecturally and never faults.
            _mm_prefetch::<_MM_HINT_T1>(t.prefetch.wrapping_add(16 * p) as *const i8);
            step_rows(&mut acc, p, b);
            b = b.wrapping_add(16 * BS);
        }
        for p in ahead..t.k {
            step_rows(&mut acc, p, b);
            b = b.wrapping_add(16 * BS);
        }
    } else if t.b_off.is_null() {
        let mut b = t.b;
        for _ in 0..t.k / unroll {
            // Pointer steps stay within the panels: `unroll` steps of MR and NR.
            for u in 0..unroll {
                step(
                    &mut acc,
                    a.wrapping_add(u * MR),
                    b.wrapping_add(u * 16 * BS),
                );
            }
            a = a.wrapping_add(unroll * MR);
            b = b.wrapping_add(unroll * 16 * BS);
        }
        for _ in 0..t.k % unroll {
            step(&mut acc, a, b);
            a = a.wrapping_add(MR);
            b = b.wrapping_add(16 * BS);
        }
    } else {
        // Indirect B: row p at b + off[p].
        // SAFETY: b_off holds k offsets (the tile contract).
        let off = unsafe { std::slice::from_raw_parts(t.b_off, t.k) };
        let mut groups = off.chunks_exact(unroll);
        for q in &mut groups {
            for (u, &o) in q.iter().enumerate() {
                step(&mut acc, a.wrapping_add(u * MR), t.b.wrapping_add(o));
            }
            a = a.wrapping_add(unroll * MR);
        }
        for &o in groups.remainder() {
            step(&mut acc, a, t.b.wrapping_add(o));
            a = a.wrapping_add(MR);
        }
    }
    // Full-width tiles store in vectors, also when short (m < MR: the last panel of M = 64
    // with MR = 6 has 4 rows, and its scalar store was 7% of resnet50.res2.1x1a's profile).
    if t.n == 16 * NV {
        let lo = _mm512_set1_ps(t.lo);
        let hi = _mm512_set1_ps(t.hi);
        for (i, row) in acc.iter().enumerate().take(t.m) {
            for (v, &r) in row.iter().enumerate() {
                // SAFETY: full-width tile: row i < m, columns 16v..16v+16 <= n, inside C.
                let dst = unsafe { t.c.add(i * t.rsc + 16 * v) };
                let mut x = r;
                if t.load_c {
                    // SAFETY: as above.
                    x = _mm512_add_ps(x, unsafe { _mm512_loadu_ps(dst) });
                }
                if t.finish {
                    x = match t.bias {
                        TileBias::None => x,
                        // SAFETY: a Row bias holds m floats and i < m.
                        TileBias::Row(p) => _mm512_add_ps(x, _mm512_set1_ps(unsafe { *p.add(i) })),
                        // SAFETY: a Col bias holds n = NR floats.
                        TileBias::Col(p) => {
                            _mm512_add_ps(x, unsafe { _mm512_loadu_ps(p.add(16 * v)) })
                        }
                    };
                    // max(lo, x) then min(hi, .): with x NaN, maxps returns its second
                    // operand (x) and minps likewise, so NaN propagates.
                    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
                }
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(dst, x) };
            }
        }
    } else {
        // Edge tile (n < NR): the same epilogue on the vectors that hold columns, the last
        // one masked. (The scalar store it replaced took most of mobilenetv2.pw56's NHWC
        // time: 24 channels on 32-column tiles.)
        let lo = _mm512_set1_ps(t.lo);
        let hi = _mm512_set1_ps(t.hi);
        for (i, row) in acc.iter().enumerate().take(t.m) {
            for (v, &r) in row.iter().enumerate().take(t.n.div_ceil(16)) {
                let lanes = (t.n - 16 * v).min(16);
                let mask = (u32::MAX >> (32 - lanes)) as __mmask16;
                // Masked lanes are neither read nor written, so only columns < n are touched:
                // row i < m, inside C.
                let dst = t.c.wrapping_add(i * t.rsc + 16 * v);
                let mut x = r;
                if t.load_c {
                    // SAFETY: as above.
                    x = _mm512_add_ps(x, unsafe { _mm512_maskz_loadu_ps(mask, dst) });
                }
                if t.finish {
                    x = match t.bias {
                        TileBias::None => x,
                        // SAFETY: a Row bias holds m floats and i < m.
                        TileBias::Row(p) => _mm512_add_ps(x, _mm512_set1_ps(unsafe { *p.add(i) })),
                        // SAFETY: a Col bias holds n floats; the mask reads those < n.
                        TileBias::Col(p) => _mm512_add_ps(x, unsafe {
                            _mm512_maskz_loadu_ps(mask, p.wrapping_add(16 * v))
                        }),
                    };
                    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
                }
                // SAFETY: as above.
                unsafe { _mm512_mask_storeu_ps(dst, mask, x) };
            }
        }
    }
}

/// FMA peak probe: `iters` rounds of 24 independent FMA chains on zmm registers
/// (enough to cover 4-cycle latency on 2 pipes with room), returns a value that depends on
/// every chain so the work cannot be elided. FLOPs done: iters * 24 * 16 * 2.
pub fn fma_peak_probe(iters: u64) -> Option<f32> {
    if !Isa::Avx512.is_available() {
        return None;
    }
    // SAFETY: AVX-512F was detected just above.
    Some(unsafe { fma_probe(iters) })
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn fma_probe(iters: u64) -> f32 {
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let m = _mm512_set1_ps(0.999_999);
    let c = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s)
}

crate::arch::dw_plane_kernel!(
    Avx512,
    "f32_dwconv_plane__avx512",
    "f32_dwconv_cb8__avx512",
    "avx512f,avx2,fma",
    crate::arch::x86_64::avx2::AvxInterleave,
    // The AVX2 block kernels (blocks are 8 lanes, one ymm, on this tier too); safe to call
    // here: dw_block_tf runs under a superset of their features.
    |p| crate::arch::x86_64::avx2::dw_block_fast(p),
    // Safe to call here: dw_plane_tf runs under this tier's features.
    |p| grouped_planes(p),
    Some(("f32_dwconv_direct__avx512", dw_direct)),
    Some(("f32_dwconv_nhwc16__avx512", dw_nhwc))
);

/// Output pixels a step of the channels-last kernel computes (eight zmm accumulators).
const NHWC_PIXELS: usize = 8;

/// The channels-last depthwise kernel ([`crate::arch::dwconv::DwNhwc`]): for each output
/// row and block of 16 channels, steps of [`NHWC_PIXELS`] pixels; each tap is one 16-channel
/// load of the input pixel and one FMA a pixel, the tap's weights one load for the step. At
/// stride 1 neighbouring pixels' taps read the same input pixels, and the loads are shared
/// (the same address in one block: LLVM keeps one). Steps whose taps all lie inside the row
/// take no column checks; the others mask off the taps in the padding. 3x3 and 5x5 at
/// stride 1 or 2 have their sides and stride as constants; other shapes run the same body
/// with them read at run time.
fn dw_nhwc(p: &mut crate::arch::dwconv::DwNhwc) {
    assert!(
        Isa::Avx512.is_available(),
        "f32_dwconv_nhwc16__avx512 on a CPU without it"
    );
    if !crate::arch::dwconv::checked_nhwc(p) {
        return;
    }
    // SAFETY: AVX-512F was just checked; checked_nhwc asserted the image, the output rows,
    // the taps and the bias inside their buffers.
    unsafe {
        match (p.kernel, p.stride, p.dilation) {
            ([3, 3], [1, 1], [1, 1]) => nhwc_rows::<3, 3, 1, true>(p),
            ([3, 3], [2, 2], [1, 1]) => nhwc_rows::<3, 3, 2, true>(p),
            ([5, 5], [1, 1], [1, 1]) => nhwc_rows::<5, 5, 1, true>(p),
            ([5, 5], [2, 2], [1, 1]) => nhwc_rows::<5, 5, 2, true>(p),
            _ => nhwc_rows::<1, 1, 1, false>(p),
        }
    }
}

/// [`dw_nhwc`]'s body: kernel `KH x KW` at stride `S` without dilation when `FIXED`, else
/// the shape of `p` read at run time.
///
/// # Safety
/// [`crate::arch::dwconv::checked_nhwc`] returned true for `p`; AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn nhwc_rows<const KH: usize, const KW: usize, const S: usize, const FIXED: bool>(
    p: &mut crate::arch::dwconv::DwNhwc,
) {
    use crate::arch::dwconv::NHWC_LANES;
    const P: usize = NHWC_PIXELS;
    let [ih, iw] = p.in_dims;
    let ([kh, kw], [sh, sw], [dh, dw]) = if FIXED {
        ([KH, KW], [S, S], [1, 1])
    } else {
        (p.kernel, p.stride, p.dilation)
    };
    let [pt, pl] = p.pad;
    let [r0, r1] = p.rows;
    let (ow, c, ka) = (p.ow, p.channels, kh * kw);
    let (inp, w, out) = (p.input.as_ptr(), p.weight.as_ptr(), p.out.as_mut_ptr());
    // SAFETY (the block): AVX-512F register arithmetic (the contract); the loads and stores
    // carry their own comments.
    unsafe {
        let (lo, hi) = (_mm512_set1_ps(p.clamp.0), _mm512_set1_ps(p.clamp.1));
        // Pixels outer, channel blocks inner: a step's input is its pixels' whole channel
        // runs, read front to back. Channel blocks outer walked each input row once per
        // block, a line per pixel at the pixel stride; paired, one thread, NHWC, pixels outer
        // over blocks outer: mobilenetv2.dw56s2 0.78x the time, dw7 0.73-0.79x, dw112
        // 0.99-1.01x. (Prefetching the next output row's input rows a share a step, into L1
        // or L2, ran dw56s2 0.86-0.89x.)
        for oy in r0..r1 {
            for ox0 in (0..ow).step_by(P) {
                for cb in (0..c).step_by(NHWC_LANES) {
                    let chans = lane_range(0, (c - cb) as isize);
                    // The block's taps: NHWC_LANES floats each, zero past the last channel.
                    let taps = w.add(cb / NHWC_LANES * ka * NHWC_LANES);
                    let bias = if p.bias.is_empty() {
                        _mm512_setzero_ps()
                    } else {
                        // SAFETY: channels cb.. of the bias (at least C floats).
                        _mm512_maskz_loadu_ps(chans, p.bias.as_ptr().add(cb))
                    };
                    let dst = out.add((oy - r0) * ow * c + cb);
                    // Every tap of the step's P pixels inside the row?
                    let first = (ox0 * sw) as isize - pl as isize;
                    let last = ((ox0 + P - 1) * sw + (kw - 1) * dw) as isize - pl as isize;
                    let inside = first >= 0 && last < iw as isize;
                    let mut acc = [bias; P];
                    for ky in 0..kh {
                        let iy = (oy * sh + ky * dh) as isize - pt as isize;
                        if iy < 0 || iy >= ih as isize {
                            continue;
                        }
                        // Channel cb of input pixel (iy, 0).
                        let row = inp.add(iy as usize * iw * c + cb);
                        for kx in 0..kw {
                            // SAFETY: tap (ky, kx) of the block, inside its KH * KW * 16.
                            let wv = _mm512_loadu_ps(taps.add((ky * kw + kx) * NHWC_LANES));
                            for (j, a) in acc.iter_mut().enumerate() {
                                let ix = ((ox0 + j) * sw + kx * dw) as isize - pl as isize;
                                let m = if inside || (ix >= 0 && ix < iw as isize) {
                                    chans
                                } else {
                                    0
                                };
                                // SAFETY: the masked lanes read channels cb.. (< C) of input
                                // pixel (iy, ix), 0 <= ix < IW (inside, or checked), inside
                                // the image; with an empty mask nothing is read, and the
                                // pointer (wrapping arithmetic) is never dereferenced.
                                let x =
                                    _mm512_maskz_loadu_ps(m, row.wrapping_offset(ix * c as isize));
                                *a = _mm512_fmadd_ps(x, wv, *a);
                            }
                        }
                    }
                    for (j, &a) in acc.iter().enumerate().take(ow - ox0) {
                        // SAFETY: channels cb.. (< C) of output pixel (oy, ox0 + j), ox0 + j
                        // < OW, inside the output rows (checked_nhwc).
                        let at = dst.add((ox0 + j) * c);
                        let mut v = a;
                        if p.accumulate {
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(chans, at));
                        }
                        // max(lo, x) then min(hi, .): a NaN x comes through.
                        _mm512_mask_storeu_ps(at, chans, _mm512_min_ps(hi, _mm512_max_ps(lo, v)));
                    }
                }
            }
        }
    }
}

/// Output rows a [`direct_rows`] step computes (the kernels other than 3x3, which
/// [`dw3x3_planes`] takes): every input row loaded (with its `KW` shifts) feeds
/// up to `KH` of them, so a step of `R` rows loads `(R - 1) S + KH` rows for `R KH KW` FMAs.
/// Seven divides every MobileNet plane side (7, 14, 28, 56, 112); `R` accumulators, the
/// `KH KW` weights and the row's shifts stay in registers (26 of 32 for 3x3, with the odd
/// kernel rows' second accumulators). Four rows a step measured 1.05x faster on dw112 on one
/// thread but 0.83x on two, two, three, five and six rows slower: seven kept.
const DIRECT_ROWS: usize = 7;

/// The direct-plane depthwise kernels (see the section comment in
/// [`crate::arch::dwconv`]): one plane at a time, steps of [`DIRECT_ROWS`] output rows by 16
/// columns, the kernel's sides and stride as constants where the suite has them.
fn dw_direct(p: &mut crate::arch::dwconv::DwDirect) {
    assert!(
        Isa::Avx512.is_available(),
        "f32_dwconv_direct__avx512 on a CPU without it"
    );
    if !crate::arch::dwconv::checked_direct(p) {
        return;
    }
    // SAFETY: AVX-512F was just checked; checked_direct asserted that every plane's input
    // (IH * IW floats from i * in_stride), taps, bias and output rows lie inside the buffers
    // and that the kernel's sides are at most DIRECT_MAX_KERNEL.
    unsafe {
        let [ih, iw] = p.in_dims;
        // Small 3x3 planes with padding 1 left and right, rows of 4 to 7: padded in
        // registers. Paired processes, one thread, median ms: mobilenetv2.dw7 0.011-0.013
        // against 0.023-0.029 for the masked loads below.
        if let Some(l) = PaddedPlanes::new(p) {
            match (iw + 1, l.vectors) {
                (5, 1..=2) => return direct_padded_planes::<5, 2>(p, &l),
                (5, _) => return direct_padded_planes::<5, 4>(p, &l),
                (6, 1..=2) => return direct_padded_planes::<6, 2>(p, &l),
                (6, _) => return direct_padded_planes::<6, 4>(p, &l),
                (7, 1..=2) => return direct_padded_planes::<7, 2>(p, &l),
                (7, _) => return direct_padded_planes::<7, 4>(p, &l),
                (8, 1..=2) => return direct_padded_planes::<8, 2>(p, &l),
                (8, _) => return direct_padded_planes::<8, 4>(p, &l),
                _ => {}
            }
        }
        // Other whole planes of at most 64 outputs at stride 1 with the input's size: flat.
        if p.kernel == [3, 3]
            && p.stride == 1
            && p.ow == iw
            && p.rows == [0, ih]
            && ih * iw <= SMALL_PLANE
        {
            return direct_small_planes(p);
        }
        match (p.kernel, p.stride) {
            ([3, 3], 1) => dw3x3_planes::<1>(p),
            ([3, 3], 2) => dw3x3_planes::<2>(p),
            ([5, 5], 1) => direct_rows::<5, 5, 1, true>(p),
            ([5, 5], 2) => direct_rows::<5, 5, 2, true>(p),
            ([1, 3], 1) => direct_rows::<1, 3, 1, true>(p),
            ([1, 5], 1) => direct_rows::<1, 5, 1, true>(p),
            (_, 1) => direct_rows::<7, 7, 1, false>(p),
            _ => direct_rows::<7, 7, 2, false>(p),
        }
    }
}

/// Output rows a step of [`dw3x3_planes`] computes. (Measured in a standalone loop over
/// 64 x 64 planes in L2, ns an output vector: stride 1, 4 rows x 4 vectors 2.29, 8 x 2 2.40,
/// 4 x 2 2.51, 2 x 4 2.63, 8 x 1 2.61, 12 x 1 4.05; stride 2, 4 x 2 4.54, 4 x 1 4.44, 2 x 2
/// 4.69, 7 x 2 6.39, 8 x 1 6.07.)
const DW3_ROWS: usize = 4;

/// 3x3 depthwise planes at stride `S` (1 or 2), plane by plane in column blocks of up to four
/// vectors of 16 outputs (two at stride 2), each block in steps of [`DW3_ROWS`] rows.
///
/// Against [`direct_rows`] (seven rows by one vector, each row's loads held behind the
/// previous row's FMAs by an empty asm block, the odd kernel rows in second accumulators):
/// left free, the loads of a step's rows overlap the FMAs of the rows before; the standalone
/// loop ran 1.45x faster without that block (stride 1, 3.74 -> 2.50 ns a vector, stride 2
/// 5.95 -> 4.54). In the suite, paired, time ratio: mobilenetv2.dw56s2 0.82-0.86 on one
/// thread and 0.86-0.88 on two, dw112 0.98-1.02 (its 1.6 MB input streams from L3; 8 of its
/// planes, in L2, 0.90).
///
/// # Safety
/// [`crate::arch::dwconv::checked_direct`] returned true for `p`, whose kernel is 3 x 3 and
/// stride `S`; AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn dw3x3_planes<const S: usize>(p: &mut crate::arch::dwconv::DwDirect) {
    let ([ih, iw], pt, [r0, r1], ow) = (p.in_dims, p.pad[0], p.rows, p.ow);
    let v_max = if S == 1 { 4 } else { 2 };
    let blocks = {
        let (mut n, mut ox0) = (0, 0);
        while ox0 < ow {
            let left = (ow - ox0).div_ceil(16).min(v_max);
            ox0 += 16 * if left == 3 { 2 } else { left };
            n += 1;
        }
        n
    };
    // The input rows the band reads, and the floats of the next plane's to prefetch a step.
    let rows_lo = (r0 * S).saturating_sub(pt).min(ih);
    let rows_hi = ((r1 - 1) * S + 3).saturating_sub(pt).clamp(rows_lo, ih);
    let steps = (r1 - r0).div_ceil(DW3_ROWS) * blocks;
    let share = ((rows_hi - rows_lo) * iw)
        .div_ceil(steps.max(1))
        .next_multiple_of(16);
    for plane in 0..p.planes {
        // The next plane's rows, a share each step, so that its reads from L3 overlap this
        // plane's arithmetic (the next plane may be past this call's: `input` may run on).
        let next_at = (plane + 1) * p.in_stride;
        let mut prefetch = Dw3Prefetch {
            next: (next_at + ih * iw <= p.input.len())
                .then(|| p.input.as_ptr().wrapping_add(next_at)),
            at: rows_lo * iw,
            end: rows_hi * iw,
            share,
        };
        let mut ox0 = 0;
        while ox0 < ow {
            let left = (ow - ox0).div_ceil(16).min(v_max);
            // SAFETY: as this function's contract, for columns ox0.. of the plane.
            unsafe {
                match left {
                    4 => dw3x3_block::<S, 4>(p, plane, ox0, &mut prefetch),
                    3 | 2 => dw3x3_block::<S, 2>(p, plane, ox0, &mut prefetch),
                    _ => dw3x3_block::<S, 1>(p, plane, ox0, &mut prefetch),
                }
            }
            ox0 += 16 * if left == 3 { 2 } else { left };
        }
    }
}

/// Where [`dw3x3_block`]'s steps prefetch the next plane: floats `at..end` of it, `share` a
/// step.
struct Dw3Prefetch {
    next: Option<*const f32>,
    at: usize,
    end: usize,
    share: usize,
}

/// Output columns `ox0..ox0 + 16 V` (those below OW) of the band's rows of one plane of
/// [`dw3x3_planes`].
///
/// # Safety
/// As [`dw3x3_planes`], `plane < p.planes`, `ox0 < p.ow`.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn dw3x3_block<const S: usize, const V: usize>(
    p: &mut crate::arch::dwconv::DwDirect,
    plane: usize,
    ox0: usize,
    prefetch: &mut Dw3Prefetch,
) {
    const R: usize = DW3_ROWS;
    let [ih, iw] = p.in_dims;
    let [pt, pl] = p.pad;
    let [r0, r1] = p.rows;
    let ow = p.ow;
    // Every load of a row is at a constant offset from the row's column `base`: S = 1, tap
    // kx of vector v is the 16 floats from base + 16 v + kx; S = 2, loads k = 0..4 of
    // vector v are the 16 floats from base + 32 v + 16 (k % 2) + 2 (k / 2): the even and odd
    // lanes of loads 0, 1 are taps 0 and 1, the even lanes of loads 2, 3 tap 2.
    let base = (S * ox0) as isize - pl as isize;
    let masks: [[u16; 4]; V] = std::array::from_fn(|v| {
        std::array::from_fn(|k| {
            let q = base + dw3_offset::<S>(v, k);
            lane_range(-q, iw as isize - q)
        })
    });
    let stores: [u16; V] =
        std::array::from_fn(|v| lane_range(0, ow as isize - (ox0 + 16 * v) as isize));
    let taps = &p.weight[plane * 9..plane * 9 + 9];
    // SAFETY (the block): AVX-512F register arithmetic (the contract); the loads and stores
    // carry their own comments.
    unsafe {
        let step = Dw3Step::<S, V> {
            w: std::array::from_fn(|ky| {
                std::array::from_fn(|kx| _mm512_set1_ps(taps[ky * 3 + kx]))
            }),
            masks,
            even: _mm512_loadu_si512(EVEN_ODD[0].as_ptr().cast()),
            odd: _mm512_loadu_si512(EVEN_ODD[1].as_ptr().cast()),
            ih,
            iw,
        };
        let bias = _mm512_set1_ps(if p.bias.is_empty() {
            0.0
        } else {
            p.bias[plane]
        });
        let (lo, hi) = (_mm512_set1_ps(p.clamp.0), _mm512_set1_ps(p.clamp.1));
        // The plane's input (inside the buffer: checked_direct), from column `base`.
        let src = p
            .input
            .as_ptr()
            .add(plane * p.in_stride)
            .wrapping_offset(base);
        let dst = p.out.as_mut_ptr().add(plane * p.out_stride + ox0);
        for oy0 in (r0..r1).step_by(R) {
            if let Some(next) = prefetch.next {
                let to = (prefetch.at + prefetch.share).min(prefetch.end);
                while prefetch.at < to {
                    // A prefetch never faults; the address lies inside the next plane's rows
                    // (checked_direct).
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(prefetch.at).cast());
                    prefetch.at += 16;
                }
            }
            let first_row = (oy0 * S) as isize - pt as isize;
            let last_row = first_row + ((R - 1) * S + 3) as isize;
            let acc = if first_row >= 0 && last_row <= ih as isize {
                step.rows::<R, true>(src, first_row, bias)
            } else {
                step.rows::<R, false>(src, first_row, bias)
            };
            for (j, accs) in acc.iter().enumerate().take(r1 - oy0) {
                for (v, &a) in accs.iter().enumerate() {
                    // SAFETY: outputs (oy0 + j - r0) OW + ox0 + 16 v + l with oy0 + j < r1
                    // and ox0 + 16 v + l < OW lie inside the plane's (r1 - r0) OW output
                    // rows (checked_direct); only those lanes are touched.
                    let at = dst.add((oy0 + j - r0) * ow + 16 * v);
                    let mut r = a;
                    if p.accumulate {
                        r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(stores[v], at));
                    }
                    // max(lo, x) then min(hi, .): a NaN x comes through.
                    _mm512_mask_storeu_ps(at, stores[v], _mm512_min_ps(hi, _mm512_max_ps(lo, r)));
                }
            }
        }
    }
}

/// Load `k` of vector `v` of a [`dw3x3_block`] row, in floats from the row's base column.
#[inline(always)]
fn dw3_offset<const S: usize>(v: usize, k: usize) -> isize {
    (if S == 1 {
        16 * v + k
    } else {
        32 * v + 16 * (k % 2) + 2 * (k / 2)
    }) as isize
}

/// What a step of [`dw3x3_block`] reads besides the plane.
struct Dw3Step<const S: usize, const V: usize> {
    w: [[__m512; 3]; 3],
    masks: [[u16; 4]; V],
    even: __m512i,
    odd: __m512i,
    ih: usize,
    iw: usize,
}

impl<const S: usize, const V: usize> Dw3Step<S, V> {
    /// `R` output rows from input row `first_row` of `src` (the plane from the block's base
    /// column): each input row's tap vectors loaded once and fed to every output row whose
    /// window holds it. `INSIDE`: every row lies inside the plane.
    ///
    /// # Safety
    /// `src` is a plane of `IH * IW` floats offset by the block's base column; AVX-512F.
    // `v` picks a vector's masks and, with the output row, its accumulator.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn rows<const R: usize, const INSIDE: bool>(
        &self,
        src: *const f32,
        first_row: isize,
        bias: __m512,
    ) -> [[__m512; V]; R] {
        let mut acc = [[bias; V]; R];
        // SAFETY (the block): AVX-512F register arithmetic (the contract); the loads carry
        // their own comments.
        unsafe {
            unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] {
                let iy = first_row + i as isize;
                if i < (R - 1) * S + 3 && (INSIDE || (iy >= 0 && iy < self.ih as isize)) {
                    let row = src.wrapping_offset(iy * self.iw as isize);
                    for v in 0..V {
                        // SAFETY: the masked lanes read columns of row iy (in 0..IH) inside
                        // 0..IW (lane_range); masked-off lanes are not accessed (AVX-512
                        // suppresses their faults), so the address may lie outside the row.
                        let ld = |k: usize| {
                            _mm512_maskz_loadu_ps(
                                self.masks[v][k],
                                row.wrapping_offset(dw3_offset::<S>(v, k)),
                            )
                        };
                        let x: [__m512; 3] = if S == 1 {
                            [ld(0), ld(1), ld(2)]
                        } else {
                            let (a0, a1, b0, b1) = (ld(0), ld(1), ld(2), ld(3));
                            [
                                _mm512_permutex2var_ps(a0, self.even, a1),
                                _mm512_permutex2var_ps(a0, self.odd, a1),
                                _mm512_permutex2var_ps(b0, self.even, b1),
                            ]
                        };
                        for ky in 0..3 {
                            // Output row j of the step reads input row j S + ky.
                            if ky <= i && (i - ky).is_multiple_of(S) && (i - ky) / S < R {
                                let j = (i - ky) / S;
                                for (kx, &xv) in x.iter().enumerate() {
                                    acc[j][v] = _mm512_fmadd_ps(xv, self.w[ky][kx], acc[j][v]);
                                }
                            }
                        }
                    }
                }
            });
        }
        acc
    }
}

/// Outputs of the planes [`direct_small_planes`] takes (four vectors).
const SMALL_PLANE: usize = 64;

/// 3x3 planes of at most [`SMALL_PLANE`] outputs that [`direct_padded_planes`] does not take
/// (padding other than 1 left and right, rows of 1-3 or 8 and more), stride 1, output the
/// input's size: the plane is one flat run of `IH * IW` floats, and tap
/// (ky, kx) of output `o = oy * IW + ox` reads input `o + (ky - PT) * IW + (kx - PL)`, so the
/// whole plane is four vectors (49 of 64 lanes used, where rows of 7 fill 7 of 16) and each
/// tap is one masked load and one FMA a vector. A lane reads only where its input pixel lies
/// in the plane (row and column): the masks, per vector and tap, are the same for every
/// plane and computed once a call. Paired, one thread, min ms, row steps / this: dw7 0.028
/// / 0.023 (1.22x); two threads even (0.017).
///
/// # Safety
/// [`crate::arch::dwconv::checked_direct`] returned true for `p`, with the shape checked by
/// the caller; AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn direct_small_planes(p: &mut crate::arch::dwconv::DwDirect) {
    const V: usize = SMALL_PLANE / 16;
    let [ih, iw] = p.in_dims;
    let [pt, pl] = p.pad;
    let n = ih * iw;
    // Per tap: its flat offset, and per vector the lanes whose input pixel is in the plane.
    let mut offset = [0isize; 9];
    let mut masks = [[0u16; 9]; V];
    for t in 0..9 {
        let (ky, kx) = (t / 3, t % 3);
        offset[t] = (ky as isize - pt as isize) * iw as isize + kx as isize - pl as isize;
        for (v, mv) in masks.iter_mut().enumerate() {
            for l in 0..16 {
                let o = v * 16 + l;
                let (iy, ix) = (
                    (o / iw + ky) as isize - pt as isize,
                    (o % iw + kx) as isize - pl as isize,
                );
                if o < n && iy >= 0 && ix >= 0 && iy < ih as isize && ix < iw as isize {
                    mv[t] |= 1 << l;
                }
            }
        }
    }
    let stores: [u16; V] = std::array::from_fn(|v| lane_range(0, n as isize - (v * 16) as isize));
    // SAFETY (the block): AVX-512F register arithmetic (the contract); the loads and stores
    // carry their own comments.
    unsafe {
        let (lo, hi) = (_mm512_set1_ps(p.clamp.0), _mm512_set1_ps(p.clamp.1));
        for plane in 0..p.planes {
            let taps = &p.weight[plane * 9..(plane + 1) * 9];
            let bias = _mm512_set1_ps(if p.bias.is_empty() {
                0.0
            } else {
                p.bias[plane]
            });
            let src = p.input.as_ptr().add(plane * p.in_stride);
            let dst = p.out.as_mut_ptr().add(plane * p.out_stride);
            let mut acc = [bias; V];
            for (t, &w) in taps.iter().enumerate() {
                let wv = _mm512_set1_ps(w);
                for (v, a) in acc.iter_mut().enumerate() {
                    // SAFETY: the masked lanes read input o + offset[t] of the plane, the
                    // pixel (oy + ky - PT, ox + kx - PL) inside it (the mask's condition);
                    // masked-off lanes are not accessed, so the pointer may lie outside the
                    // plane (wrapping arithmetic).
                    let x = _mm512_maskz_loadu_ps(
                        masks[v][t],
                        src.wrapping_offset((v * 16) as isize + offset[t]),
                    );
                    *a = _mm512_fmadd_ps(x, wv, *a);
                }
            }
            for (v, &a) in acc.iter().enumerate() {
                // SAFETY: outputs v * 16 + l < IH * IW of the plane's output (the store mask),
                // inside its rows (checked_direct: the band is the whole plane).
                let at = dst.add(v * 16);
                let mut r = a;
                if p.accumulate {
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(stores[v], at));
                }
                // max(lo, x) then min(hi, .): a NaN x comes through.
                _mm512_mask_storeu_ps(at, stores[v], _mm512_min_ps(hi, _mm512_max_ps(lo, r)));
            }
        }
    }
}

/// Where [`direct_padded_planes`] moves each vector: the plane's rows `S = IW + 1` floats
/// apart, a zero between them and `PT` zero rows above, so that tap `(ky, kx)` of output
/// lane `o = oy S + ox` is padded lane `o + ky S + kx - 1` for every output: the left and
/// right padding of a row are the zeros either side of it.
struct PaddedPlanes {
    /// Output vectors a plane: `ceil(((OH - 1) S + OW) / 16)`, at most 4.
    vectors: usize,
    /// Per data vector `u` (padded lanes `16 u..16 u + 16`, at most 6): the first input
    /// float its lanes take, the load's lanes (the floats from there up to its last), the
    /// input float each padded lane takes (from the first), and the padded lanes that are
    /// pixels (the rest are zero).
    gather: [(usize, __mmask16, __m512i, __mmask16); 6],
    /// Per output vector: the first output float its lanes give, the store's lanes, and the
    /// output vector lane each stored float comes from.
    scatter: [(usize, __mmask16, __m512i); 4],
}

impl PaddedPlanes {
    /// The layout for `p`'s planes, or `None` where the kernel does not take them: 3x3 at
    /// stride 1, padding 1 left and right (output as wide as the input), rows of 4 to 7
    /// floats, the whole plane in the band, at most four output vectors and `vectors`
    /// rounded up to even + 2 data vectors. Built lane-parallel: per vector of lanes `i`,
    /// row `i / S` (a multiply and shift: exact for `i < 2^16 / S`), column `i - S row`.
    /// (Lane by lane in scalar code, building it took half the time of a 96-plane layer.)
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn new(p: &crate::arch::dwconv::DwDirect) -> Option<PaddedPlanes> {
        let ([ih, iw], [pt, pl]) = (p.in_dims, p.pad);
        if p.kernel != [3, 3]
            || p.stride != 1
            || pl != 1
            || p.ow != iw
            || p.rows != [0, ih]
            || !(4..=7).contains(&iw)
            || ih > 16
        {
            return None;
        }
        let s = iw + 1;
        let vectors = (ih.checked_sub(1)? * s + iw).div_ceil(16);
        let data_end = ((pt + ih) * s).div_ceil(16);
        if vectors > 4 || data_end > vectors.next_multiple_of(2) + 2 {
            return None;
        }
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let inv = _mm512_set1_epi32((65536 + s as i32 - 1) / s as i32);
        let (sv, iwv) = (_mm512_set1_epi32(s as i32), _mm512_set1_epi32(iw as i32));
        // Lanes 16 v.. as (row, column, flat index row * IW + column, the lanes that are
        // rows lo..hi and columns below IW).
        let lanes = |v: usize, lo: usize, hi: usize| {
            let i = _mm512_add_epi32(_mm512_set1_epi32(16 * v as i32), iota);
            let row = _mm512_srli_epi32::<16>(_mm512_mullo_epi32(i, inv));
            let col = _mm512_sub_epi32(i, _mm512_mullo_epi32(row, sv));
            let inside = _mm512_cmpge_epi32_mask(row, _mm512_set1_epi32(lo as i32))
                & _mm512_cmplt_epi32_mask(row, _mm512_set1_epi32(hi as i32))
                & _mm512_cmplt_epi32_mask(col, iwv);
            let flat = _mm512_add_epi32(
                _mm512_mullo_epi32(_mm512_sub_epi32(row, _mm512_set1_epi32(lo as i32)), iwv),
                col,
            );
            (flat, inside)
        };
        let mut gather = [(0, 0, _mm512_setzero_si512(), 0); 6];
        for (u, g) in gather.iter_mut().enumerate().take(data_end) {
            let (flat, pixels) = lanes(u, pt, pt + ih);
            if pixels != 0 {
                // Flat indices rise with the lane: the first pixel lane has the smallest.
                let first = _mm512_mask_reduce_min_epi32(pixels, flat);
                let last = _mm512_mask_reduce_max_epi32(pixels, flat);
                let span = (last - first + 1) as u32;
                let index = _mm512_sub_epi32(flat, _mm512_set1_epi32(first));
                *g = (first as usize, ((1u32 << span) - 1) as u16, index, pixels);
            }
        }
        let mut scatter = [(0, 0, _mm512_setzero_si512()); 4];
        for (v, sc) in scatter.iter_mut().enumerate().take(vectors) {
            let (flat, outputs) = lanes(v, 0, ih);
            if outputs != 0 {
                let first = _mm512_mask_reduce_min_epi32(outputs, flat);
                let from = _mm512_maskz_compress_epi32(outputs, iota);
                *sc = (
                    first as usize,
                    ((1u32 << outputs.count_ones()) - 1) as u16,
                    from,
                );
            }
        }
        Some(PaddedPlanes {
            vectors,
            gather,
            scatter,
        })
    }
}

/// Lanes `r..r + 16` of the 32 of `lo` then `hi` (`valignd`; `r` folds to the immediate
/// wherever the caller's is a constant).
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn shifted_lanes(lo: __m512, hi: __m512, r: usize) -> __m512 {
    let (lo, hi) = (_mm512_castps_si512(lo), _mm512_castps_si512(hi));
    _mm512_castsi512_ps(match r {
        0 => lo,
        1 => _mm512_alignr_epi32::<1>(hi, lo),
        2 => _mm512_alignr_epi32::<2>(hi, lo),
        3 => _mm512_alignr_epi32::<3>(hi, lo),
        4 => _mm512_alignr_epi32::<4>(hi, lo),
        5 => _mm512_alignr_epi32::<5>(hi, lo),
        6 => _mm512_alignr_epi32::<6>(hi, lo),
        7 => _mm512_alignr_epi32::<7>(hi, lo),
        8 => _mm512_alignr_epi32::<8>(hi, lo),
        9 => _mm512_alignr_epi32::<9>(hi, lo),
        10 => _mm512_alignr_epi32::<10>(hi, lo),
        11 => _mm512_alignr_epi32::<11>(hi, lo),
        12 => _mm512_alignr_epi32::<12>(hi, lo),
        13 => _mm512_alignr_epi32::<13>(hi, lo),
        14 => _mm512_alignr_epi32::<14>(hi, lo),
        _ => _mm512_alignr_epi32::<15>(hi, lo),
    })
}

/// 3x3 stride-1 planes, padding 1 all round, rows `S` floats apart in the padded layout of
/// [`PaddedPlanes`] (mobilenetv2.dw7: 960 planes of 7 x 7, `S = 8`, 55 lanes in `V = 4`
/// vectors), everything in registers: each plane's input is moved in by a masked load and a
/// lane permute a vector; each tap of each output vector is then one `valignd` (none where
/// the tap's offset is a multiple of 16) and one FMA; each output vector is compacted by a
/// permute and stored. With `S`, `V` and the taps constant, the loops unroll into straight
/// code, about 100 instructions a plane.
///
/// # Safety
/// [`crate::arch::dwconv::checked_direct`] returned true for `p`, `layout` is
/// [`PaddedPlanes::new`]'s for `p`, with rows `S` apart, padding 1 on the left, at most `V`
/// output vectors and at most `V + 2` data vectors; AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn direct_padded_planes<const S: usize, const V: usize>(
    p: &mut crate::arch::dwconv::DwDirect,
    layout: &PaddedPlanes,
) {
    debug_assert!(layout.vectors <= V && layout.gather[V + 2..].iter().all(|g| g.3 == 0));
    let (in_len, out_len) = (p.in_dims[0] * p.in_dims[1], p.in_dims[0] * p.ow);
    // SAFETY (the block): AVX-512F register arithmetic (the contract); the loads and stores
    // carry their own comments.
    unsafe {
        // Data vector u (0..V + 2) of the padded plane: nothing where u is outside the data.
        let gather = layout.gather;
        let scatter: [(usize, __mmask16, __m512i); V] = std::array::from_fn(|v| layout.scatter[v]);
        let (lo, hi) = (_mm512_set1_ps(p.clamp.0), _mm512_set1_ps(p.clamp.1));
        for plane in 0..p.planes {
            let src = p.input.as_ptr().add(plane * p.in_stride);
            // rows[u + 1] is data vector u; rows[0] (lanes left of the plane) and those past
            // the data are zero.
            let mut rows = [_mm512_setzero_ps(); 8];
            for (u, &(first, load, lanes, pixels)) in gather.iter().enumerate().take(V + 2) {
                // SAFETY: the load's lanes are input floats first.. of the plane, all below
                // IH * IW (PaddedPlanes::new); an empty mask reads nothing.
                debug_assert!(load == 0 || first + (16 - load.leading_zeros() as usize) <= in_len);
                let x = _mm512_maskz_loadu_ps(load, src.wrapping_add(first));
                rows[u + 1] = _mm512_maskz_permutexvar_ps(pixels, lanes, x);
            }
            let w = &p.weight[plane * 9..(plane + 1) * 9];
            let bias = _mm512_set1_ps(if p.bias.is_empty() {
                0.0
            } else {
                p.bias[plane]
            });
            let mut acc = [bias; V];
            for (t, &wt) in w.iter().enumerate() {
                // Tap (ky, kx) reads lane o + ky S + kx - 1 for output lane o: + 16 for the
                // zero vector in front.
                let d = (t / 3) * S + t % 3 + 15;
                let wv = _mm512_set1_ps(wt);
                for (v, a) in acc.iter_mut().enumerate() {
                    // SAFETY: AVX-512F (the contract).
                    let x = shifted_lanes(rows[v + d / 16], rows[v + d / 16 + 1], d % 16);
                    *a = _mm512_fmadd_ps(x, wv, *a);
                }
            }
            let dst = p.out.as_mut_ptr().add(plane * p.out_stride);
            for (&a, &(first, store, lanes)) in acc.iter().zip(&scatter) {
                // SAFETY: the store's lanes are output floats first.. of the plane, below
                // OH * OW (PaddedPlanes::new), inside its rows (checked_direct: the band is
                // the whole plane); an empty mask writes nothing.
                debug_assert!(
                    store == 0 || first + (16 - store.leading_zeros() as usize) <= out_len
                );
                let at = dst.wrapping_add(first);
                let mut r = _mm512_permutexvar_ps(lanes, a);
                if p.accumulate {
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(store, at));
                }
                // max(lo, x) then min(hi, .): a NaN x comes through.
                _mm512_mask_storeu_ps(at, store, _mm512_min_ps(hi, _mm512_max_ps(lo, r)));
            }
        }
    }
}

/// Bits `lo..hi` of a 16-lane mask (both clamped to 0..=16).
#[inline(always)]
fn lane_range(lo: isize, hi: isize) -> u16 {
    let (lo, hi) = (lo.clamp(0, 16) as u32, hi.clamp(0, 16) as u32);
    if hi <= lo {
        0
    } else {
        ((((1u32 << (hi - lo)) - 1) << lo) & 0xFFFF) as u16
    }
}

/// The even (`EVEN_ODD[0]`) and odd (`EVEN_ODD[1]`) lanes of a register pair, for
/// `vpermt2ps`.
static EVEN_ODD: [[i32; 16]; 2] = [
    [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30],
    [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31],
];

/// What a step of [`direct_rows`] reads: the plane, its tap columns and masks, the weights.
struct DirectStep<'a, const KH: usize, const KW: usize> {
    src: *const f32,
    ih: usize,
    iw: usize,
    kh: usize,
    kw: usize,
    first: &'a [isize; KW],
    masks: &'a [(u16, u16); KW],
    wv: &'a [[__m512; KW]; KH],
    even: __m512i,
    odd: __m512i,
}

impl<const KH: usize, const KW: usize> DirectStep<'_, KH, KW> {
    /// The step's [`DIRECT_ROWS`] accumulators from `bias`: its input rows `first_row + i`
    /// loaded in turn, each feeding the output rows whose window holds it. `INSIDE`: every
    /// row lies inside the plane.
    ///
    /// # Safety
    /// `src` is a plane of `IH * IW` floats, `first`/`masks` hold each tap column's first
    /// input column and its lanes inside the row ([`direct_rows`]); AVX-512F.
    // The row pointer goes through a `nomem` asm block as a value: nothing reads through
    // it there.
    #[allow(clippy::pointers_in_nomem_asm_block)]
    #[inline(always)]
    unsafe fn rows<const S: usize, const EXACT: bool, const INSIDE: bool>(
        &self,
        bias: __m512,
        first_row: isize,
    ) -> [__m512; DIRECT_ROWS] {
        const R: usize = DIRECT_ROWS;
        let pairs = KW.div_ceil(2);
        // SAFETY (the block): AVX-512F register arithmetic (the contract); the loads carry
        // their own comments.
        unsafe {
            let mut acc = [bias; R];
            // Odd kernel rows' sums: two chains an output row, half as long (dw112-shaped
            // planes in L2, 3x3: 1.04-1.09x faster).
            let mut acc_odd = [_mm512_setzero_ps(); R];
            // Input rows of the step: first_row + i, i < (R - 1) S + KH (at most 19),
            // each a constant in its copy of the body so that acc[j] is a register.
            unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18] {
                if i < (R - 1) * S + KH {
                    let iy = first_row + i as isize;
                    // All lanes where the row is inside the plane, none where it is
                    // padding: an and, not a branch (branches per row let LLVM load
                    // and permute every row of the step before the FMAs, spilling).
                    // A row in the padding adds nothing: skipped (a branch; as masks, a select and
                    // a mask move a load).
                    let valid = INSIDE || (iy >= 0 && iy < self.ih as isize);
                    // The row's floats; dereferenced only when valid.
                    let mut row = self.src.wrapping_offset(iy * self.iw as isize);
                    if i > 0 {
                        // The row's address passes through an empty asm block that
                        // takes an accumulator the previous row updated: its loads
                        // cannot be scheduled before that row's FMAs. Left free,
                        // LLVM loaded every row of the step first and spilled the
                        // weights (3x3 stride 1: 27 loads, then 63 FMAs with nine
                        // weights reloaded from the stack).
                        // SAFETY: the block is empty: the pointer comes out as it
                        // went in, no instruction runs.
                        core::arch::asm!(
                            "/* {0} {1} */",
                            inout(reg) row,
                            in(xmm_reg) _mm512_castps512_ps128(acc[((i - 1) / S).min(R - 1)]),
                            options(pure, nomem, nostack, preserves_flags)
                        );
                    }
                    if !valid {
                        // Nothing to add.
                    } else if S == 1 {
                        for kx in 0..KW {
                            let m = if EXACT || kx < self.kw { self.masks[kx].0 } else { 0 };
                            // SAFETY: the masked lanes read columns self.first[kx] + l in
                            // 0..IW of row iy in 0..IH of the plane (lane_range, valid),
                            // inside its IH * IW floats; masked-off lanes are not
                            // accessed (AVX-512 masked loads suppress their faults), so
                            // the pointer may lie outside the row (wrapping arithmetic).
                            let x = _mm512_maskz_loadu_ps(m, row.wrapping_offset(self.first[kx]));
                            for ky in 0..KH {
                                // Output row j of the step reads input row j + ky.
                                if ky <= i && i - ky < R && (EXACT || ky < self.kh) {
                                    if ky % 2 == 0 {
                                        acc[i - ky] = _mm512_fmadd_ps(x, self.wv[ky][kx], acc[i - ky]);
                                    } else {
                                        acc_odd[i - ky] =
                                            _mm512_fmadd_ps(x, self.wv[ky][kx], acc_odd[i - ky]);
                                    }
                                }
                            }
                        }
                    } else {
                        for m in 0..pairs {
                            let (m0, m1) = if EXACT || 2 * m < self.kw {
                                self.masks[m]
                            } else {
                                (0, 0)
                            };
                            // SAFETY: as for S = 1, columns self.first[m] + l for l < 32.
                            let x0 = _mm512_maskz_loadu_ps(m0, row.wrapping_offset(self.first[m]));
                            let x1 = _mm512_maskz_loadu_ps(
                                m1,
                                row.wrapping_offset(self.first[m] + 16),
                            );
                            let ev = _mm512_permutex2var_ps(x0, self.even, x1);
                            let od = _mm512_permutex2var_ps(x0, self.odd, x1);
                            for ky in 0..KH {
                                // Output row j of the step reads input row 2j + ky.
                                if ky <= i && (i - ky).is_multiple_of(2) && (i - ky) / 2 < R
                                    && (EXACT || ky < self.kh)
                                {
                                    let j = (i - ky) / 2;
                                    let a = if ky % 2 == 0 { &mut acc[j] } else { &mut acc_odd[j] };
                                    *a = _mm512_fmadd_ps(ev, self.wv[ky][2 * m], *a);
                                    // The odd lanes past a pair's end (KW odd) are the
                                    // next column's, not a tap: skipped.
                                    if 2 * m + 1 < KW && (EXACT || 2 * m + 1 < self.kw) {
                                        *a = _mm512_fmadd_ps(od, self.wv[ky][2 * m + 1], *a);
                                    }
                                }
                            }
                        }
                    }
                }
            });
            std::array::from_fn(|j| _mm512_add_ps(acc[j], acc_odd[j]))
        }
    }
}

/// The direct kernel for sides up to `KH x KW` at stride `S` (1 or 2): a smaller kernel
/// runs with the taps past its sides skipped (`p.kernel`; the 7x7 instances take every size
/// the specialized ones do not).
///
/// A step is [`DIRECT_ROWS`] output rows x 16 columns from `ox0`. Each input row the step
/// reaches is loaded once:
/// - `S = 1`: tap column `kx` is the 16 floats from column `ox0 + kx - PL`, one masked load
///   each (lanes outside `0..IW` masked off: the padding);
/// - `S = 2`: the 32 floats from `2 ox0 - PL + 2m` (two masked loads) hold taps `2m` (even
///   lanes) and `2m + 1` (odd lanes), picked out by a two-register permute;
///
/// and each tap vector feeds every output row of the step whose window holds that input
/// row (`oy S + ky - PT = iy`). Rows outside `0..IH` load with an empty mask (zeros).
///
/// # Safety
/// [`crate::arch::dwconv::checked_direct`] returned true for `p`, and `p.kernel` is at most
/// `[KH, KW]`; AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn direct_rows<const KH: usize, const KW: usize, const S: usize, const EXACT: bool>(
    p: &mut crate::arch::dwconv::DwDirect,
) {
    const R: usize = DIRECT_ROWS;
    let [ih, iw] = p.in_dims;
    // EXACT: the kernel is KH x KW (the sides fold into the unrolled body); else it is
    // smaller, and the taps past its sides are skipped at run time (zero weights alone would
    // turn an infinite input into NaN).
    let [kh, kw] = if EXACT { [KH, KW] } else { p.kernel };
    let [pt, pl] = p.pad;
    let [r0, r1] = p.rows;
    let (ow, ka) = (p.ow, kh * kw);
    // SAFETY (the block): AVX-512F register arithmetic under AVX-512F (the contract); the
    // loads, stores and pointers carry their own comments.
    unsafe {
        let (lo, hi) = (_mm512_set1_ps(p.clamp.0), _mm512_set1_ps(p.clamp.1));
        let (even, odd) = (
            _mm512_loadu_si512(EVEN_ODD[0].as_ptr().cast()),
            _mm512_loadu_si512(EVEN_ODD[1].as_ptr().cast()),
        );
        let (inp, out) = (p.input.as_ptr(), p.out.as_mut_ptr());
        // Input rows the band reads, and the floats of them to prefetch a step.
        let rows_lo = (r0 * S).saturating_sub(pt).min(ih);
        let rows_hi = ((r1 - 1) * S + kh).saturating_sub(pt).clamp(rows_lo, ih);
        let steps = (r1 - r0).div_ceil(R) * ow.div_ceil(16);
        let prefetch_step = ((rows_hi - rows_lo) * iw)
            .div_ceil(steps.max(1))
            .next_multiple_of(16);
        for plane in 0..p.planes {
            // The plane's taps as `[KH][KW]` broadcasts, zero past the kernel's sides (those
            // taps are skipped below).
            let taps = &p.weight[plane * ka..(plane + 1) * ka];
            let wv: [[__m512; KW]; KH] = std::array::from_fn(|ky| {
                std::array::from_fn(|kx| {
                    _mm512_set1_ps(if ky < kh && kx < kw {
                        taps[ky * kw + kx]
                    } else {
                        0.0
                    })
                })
            });
            let bias = _mm512_set1_ps(if p.bias.is_empty() {
                0.0
            } else {
                p.bias[plane]
            });
            // The plane's input (inside the buffer: checked_direct).
            let src = inp.add(plane * p.in_stride);
            let dst = out.add(plane * p.out_stride);
            // The next plane's rows, a share of them each step: prefetched so that its reads
            // from L3 overlap this plane's arithmetic (mobilenetv2.dw56s2's 1.8 MB input does
            // not stay in L2 from one run to the next; computing from L2 took about as long
            // as streaming it in).
            // (The next plane may be past this call's: `input` may run on.)
            let next_at = (plane + 1) * p.in_stride;
            let next = (next_at + ih * iw <= p.input.len()).then(|| inp.wrapping_add(next_at));
            let mut prefetch_at = rows_lo * iw;
            for oy0 in (r0..r1).step_by(R) {
                for ox0 in (0..ow).step_by(16) {
                    if let Some(next) = next {
                        let to = (prefetch_at + prefetch_step).min(rows_hi * iw);
                        while prefetch_at < to {
                            // A prefetch never faults; the address lies inside the next
                            // plane's rows (checked_direct).
                            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(prefetch_at).cast());
                            prefetch_at += 16;
                        }
                    }
                    // Per tap column (S = 1) or tap pair (S = 2): its first input column and
                    // the lanes inside the row.
                    let mut first = [0isize; KW];
                    let mut masks = [(0u16, 0u16); KW];
                    for kx in 0..KW {
                        let q = if S == 1 {
                            (ox0 + kx) as isize - pl as isize
                        } else {
                            (2 * ox0 + 2 * kx) as isize - pl as isize
                        };
                        first[kx] = q;
                        let lim = iw as isize - q;
                        masks[kx] = (lane_range(-q, lim), lane_range(-q - 16, lim - 16));
                    }
                    let first_row = (oy0 * S) as isize - pt as isize;
                    let last_row = first_row + ((R - 1) * S + KH) as isize;
                    let step = DirectStep {
                        src,
                        ih,
                        iw,
                        kh,
                        kw,
                        first: &first,
                        masks: &masks,
                        wv: &wv,
                        even,
                        odd,
                    };
                    // Steps whose rows all lie inside the plane take a body without the
                    // per-row validity masks (a select and a mask move a load).
                    let acc = if first_row >= 0 && last_row <= ih as isize {
                        step.rows::<S, EXACT, true>(bias, first_row)
                    } else {
                        step.rows::<S, EXACT, false>(bias, first_row)
                    };
                    let store = lane_range(0, (ow - ox0) as isize);
                    for (j, &a) in acc.iter().enumerate().take(r1 - oy0) {
                        // SAFETY: outputs (oy0 + j - r0) * OW + ox0 + l with oy0 + j < r1 and
                        // ox0 + l < OW lie inside the plane's (r1 - r0) * OW output rows
                        // (checked_direct); only those lanes are touched.
                        let at = dst.add((oy0 + j - r0) * ow + ox0);
                        let mut v = a;
                        if p.accumulate {
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(store, at));
                        }
                        // max(lo, x) then min(hi, .): a NaN x comes through.
                        _mm512_mask_storeu_ps(at, store, _mm512_min_ps(hi, _mm512_max_ps(lo, v)));
                    }
                }
            }
        }
    }
}

/// Grouped planes ([`crate::arch::dwconv::DwPlane`] with `inputs > 1`), four planes at a
/// time, `16 V` outputs of each a step (V = 4 on rows of more than 32, else 2): 4 V zmm
/// accumulators, as many FMA chains. Each input channel's tap loads V vectors of its row and
/// feeds them to the four planes, each plane's weight one broadcast: V + 4 loads for 4 V
/// FMAs. (The generic body compiled four planes of 16 outputs into four chains, 0.54 ms on
/// resnext50.grouped3x3, and of 32 into scalar code, 3.7 ms.) `false` (nothing done) for
/// other shapes and for activations that are not a clamp, which the generic body takes.
fn grouped_planes(p: &mut crate::arch::dwconv::DwPlane) -> bool {
    if p.inputs < 2
        || p.planes != crate::arch::dwconv::PLANES
        || p.ow <= 16
        || p.activation.is_some()
    {
        return false;
    }
    // SAFETY: the callers (this tier's plane kernel) run under AVX-512F.
    unsafe {
        if p.ow > 32 {
            grouped_planes_v::<4>(p)
        } else {
            grouped_planes_v::<2>(p)
        }
    }
    true
}

/// [`grouped_planes`] with `V` vectors a plane.
///
/// # Safety
/// AVX-512F is available.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn grouped_planes_v<const V: usize>(p: &mut crate::arch::dwconv::DwPlane) {
    use crate::arch::dwconv::PLANES;
    let c = 16 * V;
    let (ow, pw, taps, inputs) = (p.ow, p.pw, p.offsets.len(), p.inputs);
    // Every read and write below lies inside the bounds this asserts.
    let (plane, oh) = crate::arch::dwconv::checked_plane_rows(p, PLANES, c);
    let (lo, hi) = (_mm512_set1_ps(p.clamp.0), _mm512_set1_ps(p.clamp.1));
    let bias: [__m512; PLANES] = std::array::from_fn(|m| _mm512_set1_ps(p.bias[m]));
    let (inp, w, out) = (p.input.as_ptr(), p.weight.as_ptr(), p.out.as_mut_ptr());
    for oy in 0..oh {
        let mut ox = 0;
        while ox < ow {
            let n = c.min(ow - ox);
            let mut acc = [[_mm512_setzero_ps(); V]; PLANES];
            let base = oy * pw + ox;
            for i in 0..inputs {
                for (t, &off) in p.offsets.iter().enumerate() {
                    // SAFETY: input i's row from `base + off` holds c floats (reads_to above);
                    // plane m's weight for (i, t) lies inside the asserted 4 x inputs x taps.
                    unsafe {
                        let src = inp.add(base + i * p.in_stride + off);
                        let x: [__m512; V] =
                            std::array::from_fn(|v| _mm512_loadu_ps(src.add(16 * v)));
                        for (m, row) in acc.iter_mut().enumerate() {
                            let wv = _mm512_set1_ps(*w.add((m * inputs + i) * taps + t));
                            for v in 0..V {
                                row[v] = _mm512_fmadd_ps(wv, x[v], row[v]);
                            }
                        }
                    }
                }
            }
            for (m, row) in acc.iter().enumerate() {
                for (h, &a) in row.iter().enumerate() {
                    // The lanes of vector h inside the row.
                    let lanes = n.saturating_sub(16 * h).min(16);
                    if lanes == 0 {
                        break;
                    }
                    let mask = ((1u32 << lanes) - 1) as __mmask16;
                    // SAFETY: plane m's outputs (oy, ox + 16 h ..) for the mask's lanes lie
                    // inside the plane (ox + 16 h + lanes <= ow), inside `out` (asserted).
                    unsafe {
                        let dst = out.add(m * plane + oy * ow + ox + 16 * h);
                        let mut v = _mm512_add_ps(a, bias[m]);
                        if p.accumulate {
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst));
                        }
                        // max(lo, x) then min(hi, .): a NaN x comes through.
                        v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
                        _mm512_mask_storeu_ps(dst, mask, v);
                    }
                }
            }
            ox += n;
        }
    }
}
crate::arch::pool_kernel!(Avx512, "avx512f,avx2,fma");

/// Activation kernel: gelu (its erf from `ERF_PIECES`) and the sigmoid family (through
/// `recip16`) by hand, 16 lanes a step, every other activation the generic body vectorized
/// under AVX-512.
pub const F32_ACT: crate::arch::activation::ActUkernel = crate::arch::activation::ActUkernel {
    name: "f32_act__avx512",
    isa: Isa::Avx512,
    run: act,
};

fn act(a: crate::epilogue::Activation, data: crate::arch::activation::RowsMut<'_>) {
    assert!(
        Isa::Avx512.is_available(),
        "f32_act__avx512 on a CPU without it"
    );
    // SAFETY: the tier's features were just checked; the bodies read and write the rows'
    // slices only.
    unsafe { act_tf(a, data) }
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn act_tf(a: crate::epilogue::Activation, data: crate::arch::activation::RowsMut<'_>) {
    use crate::epilogue::Activation;
    // SAFETY (each arm): this function runs only where AVX-512F is available (its entry
    // checks).
    match a {
        Activation::Gelu => data.for_each(|row| unsafe { map16(row, |x| gelu16(x)) }),
        Activation::Sigmoid => data.for_each(|row| unsafe { map16(row, |x| sigmoid16(x)) }),
        Activation::Silu => {
            data.for_each(|row| unsafe { map16(row, |x| _mm512_mul_ps(x, sigmoid16(x))) })
        }
        Activation::Tanh => data.for_each(|row| unsafe {
            map16(row, |x| {
                let s = sigmoid16(_mm512_add_ps(x, x));
                _mm512_fmsub_ps(_mm512_set1_ps(2.0), s, _mm512_set1_ps(1.0))
            })
        }),
        Activation::GeluTanh => data.for_each(|row| unsafe {
            map16(row, |x| {
                // x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), as the generic body.
                let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
                let inner = _mm512_mul_ps(
                    _mm512_set1_ps(GELU_TANH_K),
                    _mm512_fmadd_ps(_mm512_set1_ps(GELU_TANH_C), x3, x),
                );
                _mm512_mul_ps(x, sigmoid16(_mm512_add_ps(inner, inner)))
            })
        }),
        other => crate::arch::activation::apply_generic_with(other, data, f32::mul_add),
    }
}

/// `row[i] = f(row[i])` 16 lanes a step, the tail through masked loads and stores.
///
/// # Safety
/// AVX-512F is available.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map16(row: &mut [f32], f: impl Fn(__m512) -> __m512) {
    let n = row.len();
    let ptr = row.as_mut_ptr();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: floats i..i + 16 of the row.
        unsafe { _mm512_storeu_ps(ptr.add(i), f(_mm512_loadu_ps(ptr.add(i)))) };
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
        // SAFETY: the masked lanes are floats i..n of the row; the others are not touched.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, ptr.add(i));
            _mm512_mask_storeu_ps(ptr.add(i), mask, f(x));
        }
    }
}

/// 1/q: a 14-bit `vrcp14ps` estimate and one Newton step in residual form, r + r (1 - q r)
/// with the residual exact by FMA (relative error about 2^-28 before rounding). The
/// division's unit was the bottleneck of the rational gelu: wav2vec2.conv0 (gelu on 1.6M
/// outputs, 43% of its time on one thread) ran 1.10-1.11x faster with this in place of the
/// generic body's division (gelu now uses [`ERF_PIECES`]; sigmoid, silu, tanh and gelu_tanh
/// divide through this).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn recip16(q: __m512) -> __m512 {
    let r = _mm512_rcp14_ps(q);
    _mm512_fmadd_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(1.0)), r)
}

/// erf on `[0, 4)` in 16 pieces of width 1/4, piece `k` a degree-4 polynomial in
/// `r = a - k/4` (`|r| <= 1/8`), coefficients `ERF_PIECES[j][k]` for `r^j`: pieces 0-14 are
/// near-minimax fits (Lawson's iteration on 4001 points of each piece; piece 0 on `[0, 1/8]`
/// with no constant term), piece 15 (from `a >= 3.625`, where erfc is below 3e-7) is exactly
/// one. Evaluated in f32 with FMA, the worst absolute error over 200,000 points of `[0, 5]`
/// is 3.0e-7 (the rational form: 1e-7); see [`gelu16`] for the use.
#[rustfmt::skip]
const ERF_PIECES: [[f32; 16]; 5] = [
    [
        0.0, 0.2763264, 0.5204999, 0.71115565, 0.8427008, 0.92290014, 0.96610516, 0.9866717,
        0.9953223, 0.9985373, 0.999593, 0.9998994, 0.9999779, 0.9999957, 0.9999993, 1.0,
    ],
    [
        1.1283773, 1.060008, 0.87878203, 0.6429351, 0.41511273, 0.23652472, 0.11893143, 0.052774504,
        0.020665994, 0.007141507, 0.0021778168, 0.000586066, 0.00013917487, 2.916481e-05, 5.393067e-06, 0.0,
    ],
    [
        0.0001470557, -0.26499555, -0.43938187, -0.482193, -0.41510838, -0.2956556, -0.17839925, -0.092358015,
        -0.04133407, -0.016069647, -0.0054451567, -0.0016119331, -0.000417612, -9.48116e-05, -1.888238e-05, 0.0,
    ],
    [
        -0.37969, -0.307613, -0.14632279, 0.02575528, 0.137023, 0.16661566, 0.13846044, 0.09028445,
        0.048477475, 0.02193247, 0.008469729, 0.002814414, 0.0008090779, 0.00020199234, 4.391782e-05, 0.0,
    ],
    [
        0.034085415, 0.12587814, 0.18174125, 0.14995375, 0.06930807, -0.0055801217, -0.044071946, -0.047857214,
        -0.034431547, -0.01916225, -0.008698759, -0.003303487, -0.0010646575, -0.0002938224, -6.986334e-05, 0.0,
    ],
];

/// gelu(x) = x/2 (1 + erf(x / sqrt 2)), erf from [`ERF_PIECES`]: `a = min(|x / sqrt 2|, 3.87)`,
/// its piece `k = round(4a)` read from the `2^23 * 1.5 + 4a` sum's low bits and each
/// coefficient picked by one `vpermps` from a 16-lane table, `r = a - k/4` exact, Horner in
/// `r`, the sign of `x` put back by one `vpternlogd`. 18 vector operations against the
/// rational form's 24 (its two polynomials, the reciprocal and its Newton step, the clamp
/// and the saturation). From 3.625 on piece 15 gives exactly 1, so gelu(x) is exactly x for
/// x >= 5.13 and exactly 0 for x <= -5.13; gelu(-inf) is -inf x -1 + -inf = NaN like the
/// reference's -inf x 0; a NaN x makes `x / 2`, and so the result, NaN.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gelu16(x: __m512) -> __m512 {
    let xs = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    // minps returns its second operand when one is NaN: a NaN stays NaN.
    let a = _mm512_min_ps(_mm512_set1_ps(3.87), _mm512_abs_ps(xs));
    let magic = _mm512_set1_ps(12_582_912.0);
    let t = _mm512_fmadd_ps(a, _mm512_set1_ps(4.0), magic);
    let k = _mm512_castps_si512(t);
    let r = _mm512_fnmadd_ps(_mm512_sub_ps(t, magic), _mm512_set1_ps(0.25), a);
    let coef = |j: usize| {
        // SAFETY: 16 floats, a whole row of the table.
        let row = unsafe { _mm512_loadu_ps(ERF_PIECES[j].as_ptr()) };
        _mm512_permutexvar_ps(k, row)
    };
    let mut p = coef(4);
    for j in (0..4).rev() {
        p = _mm512_fmadd_ps(p, r, coef(j));
    }
    // p | (xs & sign): p >= 0, so this is erf with the sign of x.
    let erf = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xF8>(
        _mm512_castps_si512(p),
        _mm512_castps_si512(xs),
        _mm512_set1_epi32(i32::MIN),
    ));
    let half = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
    _mm512_fmadd_ps(half, erf, half)
}

/// 1 / (1 + e^-x), as the generic body: e^-x with the input clamped to [-87.3, 88.7], n =
/// round(x / ln 2), r = x - n ln 2 (ln 2 in two parts), the degree-6 Taylor polynomial of
/// e^r and 2^n by `vscalefps`; [`recip16`] for the division; exactly 0 below -88 (so silu
/// of -inf is NaN, as in the reference). NaN stays NaN (the clamp passes it on).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sigmoid16(x: __m512) -> __m512 {
    let v = _mm512_sub_ps(_mm512_setzero_ps(), x);
    // maxps and minps return their second operand when one is NaN.
    let v = _mm512_min_ps(
        _mm512_set1_ps(EXP_CLAMP.1),
        _mm512_max_ps(_mm512_set1_ps(EXP_CLAMP.0), v),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), v);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(c));
    }
    let e = _mm512_scalef_ps(p, n);
    let s = recip16(_mm512_add_ps(_mm512_set1_ps(1.0), e));
    let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(SIGMOID_ZERO_BELOW));
    _mm512_mask_blend_ps(low, s, _mm512_setzero_ps())
}

/// `direct_oc` tile kernel: 8 pixels x 32 output channels (two weight panels), two zmm
/// accumulators a pixel, 16 chains: each tap loads two weight vectors and broadcasts 8 image
/// values for 16 FMAs. A group's last panel alone (16 channels) runs 8 chains. (The generic
/// body passed `f32::mul_add` through a closure here and ran at 9 GFLOP/s: libm calls.)
/// Paired runs, one thread, 6 pixels' time over 8's: googlenet.inc3a.5x5 1.14, alexnet.conv1
/// 1.10, res3.3x3s2 1.11, textcnn.k3 1.11, resnet50.conv1 0.99; 10 pixels measured 1.00-1.03x
/// 8's, and 12 spilled accumulators (0.77-0.82x).
pub const F32_CONV_OC: crate::kernels::OcUkernel = crate::kernels::OcUkernel {
    name: "f32_conv_oc_8x32__avx512",
    isa: Isa::Avx512,
    mr: OC_PIXELS,
    panels: 2,
    run: conv_oc,
};

/// The `direct_oc` tile of 7 pixels x 32 channels, for layers whose pixel count 8 divides
/// badly and 7 well (`plan::direct_oc_kernel`): resnet50.res5.3x3's 49 pixels are 7 tiles
/// of 7 instead of 7 of 8 with the last holding one pixel (12.5% of the work thrown away).
pub const F32_CONV_OC_SEVEN: crate::kernels::OcUkernel = crate::kernels::OcUkernel {
    name: "f32_conv_oc_7x32__avx512",
    isa: Isa::Avx512,
    mr: 7,
    panels: 2,
    run: conv_oc_seven,
};

/// The wide `direct_oc` tile: 6 pixels x 64 output channels (four
/// weight panels), 24 zmm accumulators; each tap loads four weight vectors and broadcasts 6
/// image values for 24 FMAs (0.42 loads an FMA against the 8x32 tile's 0.63), and a layer of
/// 64 channels takes one call a tile instead of two. Stored pixel-major straight from the
/// registers. Paired runs (both orders), min time, against the 8x32 tile: one thread
/// alexnet.conv1 0.91-0.97x the time, resnet50.conv1 0.97-1.00x; two threads 0.92-0.94x and
/// 0.97-0.98x. Planar outputs go through the AVX2 tile's transposing store, panel by
/// panel (see `plan::direct_oc_kernel` for which layers take this tile).
pub const F32_CONV_OC_WIDE: crate::kernels::OcUkernel = crate::kernels::OcUkernel {
    name: "f32_conv_oc_6x64__avx512",
    isa: Isa::Avx512,
    mr: WIDE_PIXELS,
    panels: 4,
    run: conv_oc_wide,
};

/// Pixels of the wide tile.
const WIDE_PIXELS: usize = 6;

/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`] on a CPU with AVX-512F, `mr = 6`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn conv_oc_wide(t: &crate::kernels::OcTile) {
    use crate::kernels::OC_NR;
    if t.pixel_major {
        // SAFETY: forwarded contract.
        unsafe {
            match t.panels {
                4 => oc_panels_pixel_major::<WIDE_PIXELS, 4>(t),
                3 => oc_panels_pixel_major::<WIDE_PIXELS, 3>(t),
                2 => oc_panels_pixel_major::<WIDE_PIXELS, 2>(t),
                _ => oc_panels_pixel_major::<WIDE_PIXELS, 1>(t),
            }
        }
        return;
    }
    // Planar: the accumulators spilled, then each panel through the AVX2 6-pixel
    // transposing store.
    let mut spill = [[0f32; 4 * OC_NR]; WIDE_PIXELS];
    // SAFETY: forwarded contract.
    unsafe {
        match t.panels {
            4 => oc_spill::<WIDE_PIXELS, 4, 64>(t, &mut spill),
            3 => oc_spill::<WIDE_PIXELS, 3, 64>(t, &mut spill),
            2 => oc_spill::<WIDE_PIXELS, 2, 64>(t, &mut spill),
            _ => oc_spill::<WIDE_PIXELS, 1, 64>(t, &mut spill),
        }
    }
    for q in 0..t.panels {
        let mut h = [[_mm256_setzero_ps(); 2]; WIDE_PIXELS];
        for (slot, row) in h.iter_mut().zip(&spill) {
            // SAFETY: 16 floats from panel q's start in a row of 64.
            unsafe {
                slot[0] = _mm256_loadu_ps(row.as_ptr().add(q * OC_NR));
                slot[1] = _mm256_loadu_ps(row.as_ptr().add(q * OC_NR + 8));
            }
        }
        let part = crate::kernels::OcTile {
            n: (t.n - q * OC_NR).min(OC_NR),
            c: t.c.wrapping_add(q * OC_NR * t.cs),
            bias: if t.bias.is_null() {
                t.bias
            } else {
                t.bias.wrapping_add(q * OC_NR)
            },
            ..*t
        };
        // SAFETY: AVX2 is implied by this function's features; `part` is channels 16 q.. of
        // the tile (n > 16 q), inside the output and bias the contract covers; WIDE_PIXELS =
        // OC_MR rows.
        unsafe { crate::arch::x86_64::avx2::store_oc_acc(&h, &part) };
    }
}

/// The K loop of a `PX`-pixel tile of `P` channel panels into `spill` (panel `q` of pixel
/// `i` at `spill[i][16 q..]`, rows of `W >= 16 P` floats), for the transposing stores. (The
/// K loop runs in a function of its own and leaves the accumulators in memory: kept in
/// registers into the ymm stores, all of them were confined to zmm0-15, as ymm16-31 need
/// AVX512VL, and the loop spilled.)
///
/// # Safety
/// As [`conv_oc`], for a kernel of `PX` pixels, with `t.panels == P`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
unsafe fn oc_spill<const PX: usize, const P: usize, const W: usize>(
    t: &crate::kernels::OcTile,
    spill: &mut [[f32; W]; PX],
) {
    use crate::kernels::OC_NR;
    const { assert!(W >= 16 * P) };
    // SAFETY: forwarded contract.
    unsafe {
        oc_k_loop::<PX, P>(t, |acc| {
            for (row, a) in spill.iter_mut().zip(acc) {
                for (q, &v) in a.iter().enumerate() {
                    // SAFETY: each row holds W >= 16 P floats, q < P.
                    _mm512_storeu_ps(row.as_mut_ptr().add(q * OC_NR), v);
                }
            }
        })
    }
}

/// Pixels of the AVX-512 `direct_oc` tile.
const OC_PIXELS: usize = 8;

/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`] on a CPU with AVX-512F, `mr = 8`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn conv_oc(t: &crate::kernels::OcTile) {
    // SAFETY: forwarded contract.
    unsafe { conv_oc_px::<OC_PIXELS>(t) }
}

/// The 7-pixel tile ([`F32_CONV_OC_SEVEN`]).
///
/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`] on a CPU with AVX-512F, `mr = 7`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn conv_oc_seven(t: &crate::kernels::OcTile) {
    // SAFETY: forwarded contract.
    unsafe { conv_oc_px::<7>(t) }
}

/// The `PX`-pixel (7 or 8) tiles of 32 channels.
///
/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`] on a CPU with AVX-512F, `mr = PX`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn conv_oc_px<const PX: usize>(t: &crate::kernels::OcTile) {
    use crate::kernels::{OC_MR, OC_NR};
    const { assert!(PX == 7 || PX == 8) };
    if t.pixel_major {
        // SAFETY: forwarded contract.
        unsafe {
            if t.panels == 2 {
                oc_panels_pixel_major::<PX, 2>(t);
            } else {
                oc_panels_pixel_major::<PX, 1>(t);
            }
        }
        return;
    }
    let mut spill = [[0f32; 32]; PX];
    // SAFETY: forwarded contract.
    unsafe {
        if t.panels == 2 {
            oc_spill::<PX, 2, 32>(t, &mut spill);
        } else {
            oc_spill::<PX, 1, 32>(t, &mut spill);
        }
    }
    if t.m == PX && t.n == 2 * OC_NR && !t.load_c {
        // A whole tile: each group of 8 channels is an 8x8 transpose of the pixels' rows
        // (a zero row past the seventh), giving each channel's pixels as one vector: bias
        // and clamp on it, one store (of 7 lanes for 7 pixels). (The 6-pixel store below
        // took the 2 pixels left over one float at a time.)
        let (lo, hi) = (_mm256_set1_ps(t.lo), _mm256_set1_ps(t.hi));
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let store_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(PX as i32), lanes);
        for group in 0..2 * OC_NR / 8 {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (r, row) in rows.iter_mut().zip(&spill) {
                // SAFETY: 8 floats from 8 group, inside a row of 32.
                *r = unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * group)) };
            }
            let columns = crate::arch::x86_64::avx2::transpose8(rows);
            for (q, &v) in columns.iter().enumerate() {
                let ch = 8 * group + q;
                let bias = if t.bias.is_null() {
                    0.0
                } else {
                    // SAFETY: a bias holds n = 32 floats, ch < 32.
                    unsafe { *t.bias.add(ch) }
                };
                // max(lo, x) then min(hi, .): a NaN x comes through (the second operand).
                let x = _mm256_min_ps(
                    hi,
                    _mm256_max_ps(lo, _mm256_add_ps(v, _mm256_set1_ps(bias))),
                );
                // SAFETY: channel ch < n and pixels 0..PX = m: inside the output the caller
                // vouches for (the mask stores PX lanes).
                unsafe {
                    if PX == 8 {
                        _mm256_storeu_ps(t.c.add(ch * t.cs), x)
                    } else {
                        _mm256_maskstore_ps(t.c.add(ch * t.cs), store_mask, x)
                    }
                };
            }
        }
        return;
    }
    for half in 0..PX.div_ceil(OC_MR) {
        let m = t.m.saturating_sub(half * OC_MR).min(OC_MR);
        if m == 0 {
            break;
        }
        for panel in 0..t.panels {
            let mut h = [[_mm256_setzero_ps(); 2]; OC_MR];
            for (i, slot) in h.iter_mut().enumerate().take(PX - half * OC_MR) {
                let row = &spill[half * OC_MR + i][panel * OC_NR..];
                // SAFETY: 16 floats from the panel's start in a row of 32.
                unsafe {
                    slot[0] = _mm256_loadu_ps(row.as_ptr());
                    slot[1] = _mm256_loadu_ps(row.as_ptr().add(8));
                }
            }
            let part = crate::kernels::OcTile {
                m,
                n: (t.n - panel * OC_NR).min(OC_NR),
                panels: 1,
                c: t.c.wrapping_add(panel * OC_NR * t.cs + half * OC_MR),
                bias: if t.bias.is_null() {
                    t.bias
                } else {
                    t.bias.wrapping_add(panel * OC_NR)
                },
                ..*t
            };
            // SAFETY: AVX2 is implied by this function's features; `part` is pixels
            // 6 half.. and channels 16 panel.. of the tile (n > 16 when there are two
            // panels), inside the output and bias the contract covers.
            unsafe { crate::arch::x86_64::avx2::store_oc_acc(&h, &part) };
        }
    }
}

/// The image pointers of the tile's pixels.
#[inline(always)]
fn oc_pixels<const PX: usize>(t: &crate::kernels::OcTile) -> [*const f32; PX] {
    let mut px = [t.img; PX];
    for (p, &b) in px.iter_mut().zip(&t.bases) {
        *p = t.img.wrapping_add(b);
    }
    px
}

/// The K loop of a tile of `PX` pixels and `P` channel panels (1 to 4), then `finish` on the
/// accumulators (panel `q` of pixel `i` at `[i][q]`) while they are in registers. (Returned
/// instead, the call was not inlined and the 24 zmm of the 6 x 64 tile went through the
/// stack: 24 stores and 24 loads a tile.)
///
/// # Safety
/// As [`conv_oc`], for a kernel of `PX` pixels, with `t.panels == P`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn oc_k_loop<const PX: usize, const P: usize>(
    t: &crate::kernels::OcTile,
    finish: impl FnOnce(&[[__m512; P]; PX]),
) {
    use crate::kernels::OC_NR;
    let mut acc = [[_mm512_setzero_ps(); P]; PX];
    let px = oc_pixels::<PX>(t);
    let panel_stride = t.k * OC_NR;
    let mut w = t.w;
    let step = |acc: &mut [[__m512; P]; PX], p: usize, w: *const f32| {
        // SAFETY: offsets holds k entries, w P panels of k rows of 16 floats, and every
        // pixel slot's taps are readable (the contract).
        unsafe {
            let o = *t.offsets.add(p);
            let mut wv = [_mm512_setzero_ps(); P];
            for (q, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(w.add(q * panel_stride));
            }
            for i in 0..PX {
                let a = _mm512_set1_ps(*px[i].add(o));
                for q in 0..P {
                    acc[i][q] = _mm512_fmadd_ps(a, wv[q], acc[i][q]);
                }
            }
        }
    };
    // Four taps an iteration: paired runs, one thread, min time, against one: alexnet.conv1
    // 0.90x the time, googlenet.inc3a.5x5 0.91x, res3.3x3s2 0.91x, textcnn.k3 0.87x,
    // resnet50.conv1 1.01x (two taps: alexnet.conv1 0.95x).
    let mut p = 0;
    while p + 4 <= t.k {
        for u in 0..4 {
            step(&mut acc, p + u, w.wrapping_add(u * OC_NR));
        }
        w = w.wrapping_add(4 * OC_NR);
        p += 4;
    }
    while p < t.k {
        step(&mut acc, p, w);
        w = w.wrapping_add(OC_NR);
        p += 1;
    }
    finish(&acc)
}

/// The K loop of a tile of `P` channel panels stored pixel-major straight from the
/// accumulators (channels-last bands): C, bias and clamp on each zmm, masked past `n`. (Through
/// the spill buffer and a second function, the store was 7% of resnet50.conv1.)
///
/// # Safety
/// As [`conv_oc`], for a kernel of `PX` pixels, with `t.panels == P` and `t.pixel_major`.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
unsafe fn oc_panels_pixel_major<const PX: usize, const P: usize>(t: &crate::kernels::OcTile) {
    use crate::kernels::OC_NR;
    let (lo, hi) = (_mm512_set1_ps(t.lo), _mm512_set1_ps(t.hi));
    let masks: [__mmask16; P] = std::array::from_fn(|q| {
        let width = t.n.saturating_sub(q * OC_NR).min(OC_NR);
        ((1u32 << width) - 1) as __mmask16
    });
    let bias: [__m512; P] = std::array::from_fn(|q| {
        if t.bias.is_null() {
            _mm512_setzero_ps()
        } else {
            // SAFETY: the masked lanes are channels 16 q.. < n, inside the bias (n floats).
            unsafe { _mm512_maskz_loadu_ps(masks[q], t.bias.add(q * OC_NR)) }
        }
    });
    // SAFETY: forwarded contract.
    unsafe {
        oc_k_loop::<PX, P>(t, |acc| {
            for (i, row) in acc.iter().enumerate().take(t.m) {
                for q in 0..P {
                    // SAFETY: pixel i < m and the masked lanes are channels 16 q.. < n:
                    // inside the output the caller vouches for.
                    let dst = t.c.add(i * t.cs + q * OC_NR);
                    let mut x = row[q];
                    if t.load_c {
                        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(masks[q], dst));
                    }
                    x = _mm512_add_ps(x, bias[q]);
                    // max(lo, x) then min(hi, .): a NaN x comes through (the second
                    // operand).
                    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
                    _mm512_mask_storeu_ps(dst, masks[q], x);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ERF_PIECES`] through [`gelu16`] at 1.6 million points 1e-5 apart over [-8, 8):
    /// within the fit's 3e-7 of erf (half of it on gelu, relative to |x|) plus the rounding
    /// of the last multiply-add, against f64. (Measured: 1.48e-7 |x|, at the piece-15 cut;
    /// a 0.03% change in one coefficient fails it.)
    #[test]
    fn piecewise_gelu_within_the_fit_of_erf() {
        if !crate::arch::Isa::Avx512.is_available() {
            return;
        }
        let xs: Vec<f32> = (-800_000..800_000).map(|i| i as f32 * 1e-5).collect();
        let mut worst = (0f64, 0f32);
        for chunk in xs.chunks_exact(16) {
            let mut out = [0f32; 16];
            // SAFETY: AVX-512F was checked above; 16 floats in and out.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr(), gelu16(_mm512_loadu_ps(chunk.as_ptr())));
            }
            for (&x, &v) in chunk.iter().zip(&out) {
                let x64 = x as f64;
                let want = 0.5 * x64 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
                let err = (v as f64 - want).abs() - f32::EPSILON as f64 * want.abs();
                let scaled = err / x64.abs().max(1e-30);
                if scaled > worst.0 {
                    worst = (scaled, x);
                }
            }
        }
        assert!(
            worst.0 <= 1.6e-7,
            "gelu error {:.3e} |x| at x = {}",
            worst.0,
            worst.1
        );
    }
}
