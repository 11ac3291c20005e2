//! AVX2+FMA kernels. 16 ymm registers: the 6x16 GEMM tile keeps 12 accumulators, two B
//! vectors and one broadcast A value in registers (the BLIS Haswell shape).

use crate::arch::activation::{
    EXP_CLAMP, EXP_POLY, GELU_TANH_C, GELU_TANH_K, LN2_HI, LN2_LO, SIGMOID_ZERO_BELOW,
};
use crate::arch::{store_tile_scalar, Isa};
use crate::kernels::{GemmTile, GemmUkernel, KernelTable, TileBias};
use core::arch::x86_64::*;

/// The AVX2 kernel table.
pub static TABLE: KernelTable = KernelTable {
    isa: Isa::Avx2,
    gemm: &[F32_GEMM_6X16, F32_GEMM_4X24],
    dwconv: F32_DWCONV_PLANE,
    activation: F32_ACT,
    winograd: F32_WINOGRAD,
    gather,
    pool_plane,
    pool_channels_last,
    transpose,
    conv_oc: F32_CONV_OC,
    conv_oc_wide: None,
    conv_oc_seven: None,
    gemm_shallow: None,
    gemm_deep: None,
    deinterleave2,
};

macro_rules! gemm_kernel {
    ($const:ident, $fn:ident, $name:literal, $mr:literal, $nv:literal) => {
        /// GEMM microkernel descriptor.
        pub const $const: GemmUkernel = GemmUkernel {
            name: $name,
            isa: Isa::Avx2,
            mr: $mr,
            nr: $nv * 8,
            run: $fn,
            narrow: Some((NARROW_MAX, narrow_column::<$mr, { $nv * 8 }>)),
        };
        unsafe fn $fn(t: &GemmTile) {
            // SAFETY: the descriptor is reached only through TABLE after the CPU was found to
            // support AVX2+FMA (Isa::kernels), and the caller upholds the tile contract.
            unsafe { edge_dispatch::<$mr, $nv>(t) }
        }
    };
}

/// Edge tiles compute only the rows and vectors they store: resnet50.res5.1x1 (N = 49 =
/// 3 x 16 + 1) spent a whole 6x16 tile on its last column, and M = 64 or 32 (res2, googlenet)
/// a 6-row tile on 4 or 2 rows. A 2- or 4-row tile has 4 or 8 accumulator chains, so it
/// runs at 4 cycles a k step (FMA latency) against 6 for the full tile.
///
/// # Safety
/// As [`gemm_tile`] with `AS` rows and `8 BV` columns.
#[inline(always)]
unsafe fn edge_dispatch<const AS: usize, const BV: usize>(t: &GemmTile) {
    // SAFETY: t.n <= 8 NV in each branch; the panels are AS x (8 BV).
    unsafe {
        if BV > 1 && t.n <= 8 {
            edge_rows::<AS, 1, BV>(t)
        } else if BV > 2 && t.n <= 16 {
            edge_rows::<AS, 2, BV>(t)
        } else {
            edge_rows::<AS, BV, BV>(t)
        }
    }
}

/// The row count of [`edge_dispatch`].
///
/// # Safety
/// As [`gemm_tile`], with `t.n <= 8 NV`.
#[inline(always)]
unsafe fn edge_rows<const AS: usize, const NV: usize, const BV: usize>(t: &GemmTile) {
    // SAFETY: t.m <= the rows computed in each branch; the A panel is AS rows tall.
    unsafe {
        if AS > 2 && t.m <= 2 {
            gemm_tile::<2, AS, NV, BV>(t)
        } else if AS > 4 && t.m <= 4 {
            gemm_tile::<4, AS, NV, BV>(t)
        } else {
            gemm_tile::<AS, AS, NV, BV>(t)
        }
    }
}

gemm_kernel!(F32_GEMM_6X16, f32_gemm_6x16, "f32_gemm_6x16__avx2", 6, 2);
gemm_kernel!(F32_GEMM_4X24, f32_gemm_4x24, "f32_gemm_4x24__avx2", 4, 3);

/// `C[MR x 8 NV] (+)= A~ B~`, then bias and clamp, on A panels `AS` rows tall and B panels
/// `8 BV` floats wide (`MR <= AS`, `NV <= BV`: an edge tile computes its first MR rows and NV
/// vectors only). Accumulators live in registers: the loops over `MR` and `NV` have constant
/// trip counts and unroll completely.
///
/// # Safety
/// AVX2+FMA is available and `t` satisfies the contract of `GemmUkernel::run` with
/// `mr = AS`, `nr = 8 BV`, and `t.m <= MR`, `t.n <= 8 NV`.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_tile<const MR: usize, const AS: usize, const NV: usize, const BV: usize>(
    t: &GemmTile,
) {
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    // Prefetch the C tile: it is read (load_c) and written after the K loop, and between K
    // blocks it has usually left L2; without this the final loads and stores stalled on
    // memory (a quarter of the kernel's samples on vgg16.conv4_3).
    for i in 0..t.m {
        let row = t.c.wrapping_add(i * t.rsc);
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(8 * NV - 1) as *const i8);
    }
    // The K loop, unrolled by 4 so the pointer updates and the branch are amortized.
    let step = |acc: &mut [[__m256; NV]; MR], a: *const f32, b: *const f32| {
        let mut bv = [_mm256_set1_ps(0.0); NV];
        for (v, slot) in bv.iter_mut().enumerate() {
            // SAFETY: each step reads NR floats of B row p, readable by the tile contract.
            *slot = unsafe { _mm256_loadu_ps(b.add(8 * v)) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: A~ holds k * AS floats; each step reads MR <= AS of them.
            let ai = _mm256_set1_ps(unsafe { *a.add(i) });
            for v in 0..NV {
                row[v] = _mm256_fmadd_ps(ai, bv[v], row[v]);
            }
        }
    };
    let mut a = t.a;
    if t.a_rs != 0 {
        // A read in place: one pointer a row (rows past m repeat row m - 1).
        let (a0, last, rs) = (t.a, t.m - 1, t.a_rs);
        // A closure on the accumulator array, as `step` is: written as a loop over
        // `acc.iter_mut().zip(&rows)`, LLVM stored every accumulator after each FMA (the
        // AVX-512 tile ran at a third of its speed).
        let step_rows = |acc: &mut [[__m256; NV]; MR], p: usize, b: *const f32| {
            let mut bv = [_mm256_set1_ps(0.0); NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                // SAFETY: B row p holds NR floats (the tile contract, packed B).
                *slot = unsafe { _mm256_loadu_ps(b.add(8 * v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: each of A's rows holds k floats (the in-place contract), p < k.
                let ai = _mm256_set1_ps(unsafe { *a0.add(i.min(last) * rs + p) });
                for v in 0..NV {
                    row[v] = _mm256_fmadd_ps(ai, bv[v], row[v]);
                }
            }
        };
        let mut b = t.b;
        for p in 0..t.k {
            step_rows(&mut acc, p, b);
            b = b.wrapping_add(8 * BV);
        }
    } else if t.b_off.is_null() {
        let mut b = t.b;
        for _ in 0..t.k / 4 {
            // Pointer steps stay within the panels: 4 steps of MR and NR = 8 BV.
            step(&mut acc, a, b);
            step(&mut acc, a.wrapping_add(AS), b.wrapping_add(8 * BV));
            step(&mut acc, a.wrapping_add(2 * AS), b.wrapping_add(2 * 8 * BV));
            step(&mut acc, a.wrapping_add(3 * AS), b.wrapping_add(3 * 8 * BV));
            a = a.wrapping_add(4 * AS);
            b = b.wrapping_add(4 * 8 * BV);
        }
        for _ in 0..t.k % 4 {
            step(&mut acc, a, b);
            a = a.wrapping_add(AS);
            b = b.wrapping_add(8 * BV);
        }
    } else {
        // Indirect B: row p at b + off[p].
        // SAFETY: b_off holds k offsets (the tile contract).
        let off = unsafe { std::slice::from_raw_parts(t.b_off, t.k) };
        let mut quads = off.chunks_exact(4);
        for q in &mut quads {
            step(&mut acc, a, t.b.wrapping_add(q[0]));
            step(&mut acc, a.wrapping_add(AS), t.b.wrapping_add(q[1]));
            step(&mut acc, a.wrapping_add(2 * AS), t.b.wrapping_add(q[2]));
            step(&mut acc, a.wrapping_add(3 * AS), t.b.wrapping_add(q[3]));
            a = a.wrapping_add(4 * AS);
        }
        for &o in quads.remainder() {
            step(&mut acc, a, t.b.wrapping_add(o));
            a = a.wrapping_add(AS);
        }
    }
    // Full-width tiles store in vectors, also when short (m < MR: the last panel of M = 64
    // with MR = 6 has 4 rows, and its scalar store was 7% of resnet50.res2.1x1a's profile).
    if t.n == 8 * NV {
        let lo = _mm256_set1_ps(t.lo);
        let hi = _mm256_set1_ps(t.hi);
        for (i, row) in acc.iter().enumerate().take(t.m) {
            for (v, &r) in row.iter().enumerate() {
                // SAFETY: full-width tile: row i < m, columns 8v..8v+8 <= n, inside C.
                let dst = unsafe { t.c.add(i * t.rsc + 8 * v) };
                let mut x = r;
                if t.load_c {
                    // SAFETY: as above.
                    x = _mm256_add_ps(x, unsafe { _mm256_loadu_ps(dst) });
                }
                if t.finish {
                    x = match t.bias {
                        TileBias::None => x,
                        // SAFETY: a Row bias holds m floats and i < m.
                        TileBias::Row(p) => _mm256_add_ps(x, _mm256_set1_ps(unsafe { *p.add(i) })),
                        // SAFETY: a Col bias holds n = NR floats.
                        TileBias::Col(p) => {
                            _mm256_add_ps(x, unsafe { _mm256_loadu_ps(p.add(8 * v)) })
                        }
                    };
                    // max(lo, x) then min(hi, .): with x NaN, maxps returns its second
                    // operand (x) and minps likewise, so NaN propagates.
                    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
                }
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(dst, x) };
            }
        }
    } else {
        // Edge tile: spill the accumulators and store the m x n corner in scalar code.
        let mut tile = [0f32; TILE_MAX];
        debug_assert!(MR * 8 * NV <= TILE_MAX);
        for (i, row) in acc.iter().enumerate() {
            for (v, &r) in row.iter().enumerate() {
                // SAFETY: MR * 8 NV <= TILE_MAX for every instantiation above.
                unsafe { _mm256_storeu_ps(tile.as_mut_ptr().add(i * 8 * NV + 8 * v), r) };
            }
        }
        // SAFETY: the caller's contract for t; tile holds MR rows of 8 NV floats.
        unsafe { store_tile_scalar(&tile, 8 * NV, t) };
    }
}

/// Widest edge that [`narrow_column`] takes. Up to 4 columns it runs 8 or more chains;
/// wider, the tile kernel's one-vector edge (6 chains, 4 cycles a k step) is as fast. On
/// resnet50.res5.1x1's GEMM (2048 x 49 x 512, best of 300) it lifted 67.7-74.8 GFLOP/s to
/// 84.3-87.4 (N = 48: 89-94); paired layer runs: res5.1x1 1.14-1.16x, res4.1x1 (N = 196,
/// an edge of 4) 1.06x.
const NARROW_MAX: usize = 4;

/// Edge columns of `n <= NARROW_MAX` down a whole column of tiles: rows are the vector lanes
/// (an A panel's `AS` values of one k, one masked load) and each column a broadcast B value.
/// A tile of one column through [`gemm_tile`] is one chain of dependent FMAs (4 cycles a k
/// step, almost what a full 6x16 tile costs: resnet50.res5.1x1, N = 49 = 3 x 16 + 1, ran at
/// 71% of peak against 97% for N = 48); here `G` tiles go side by side, `G * n` independent
/// chains. Each element is still one FMA chain over k in order from zero, then C, bias and
/// clamp as in [`store_tile_scalar`]: the same bits as the tile kernel.
///
/// # Safety
/// AVX2+FMA is available; `t` satisfies [`GemmUkernel::narrow`]'s contract for `mr = AS`,
/// `nr = NR`.
unsafe fn narrow_column<const AS: usize, const NR: usize>(t: &GemmTile) {
    // SAFETY: forwarded contract; each arm has n equal to its column count.
    unsafe {
        match t.n {
            1 => narrow_tiles::<AS, NR, 1, 8>(t),
            2 => narrow_tiles::<AS, NR, 2, 4>(t),
            3 => narrow_tiles::<AS, NR, 3, 3>(t),
            _ => narrow_tiles::<AS, NR, 4, 2>(t),
        }
    }
}

/// [`narrow_column`] with `NC = n` columns, `G` tiles at a time (the rest as one group).
///
/// # Safety
/// As [`narrow_column`], with `t.n == NC`.
#[target_feature(enable = "avx2,fma")]
unsafe fn narrow_tiles<const AS: usize, const NR: usize, const NC: usize, const G: usize>(
    t: &GemmTile,
) {
    let tiles = t.m.div_ceil(AS);
    let mut done = 0;
    while done + G <= tiles {
        // SAFETY: tiles done..done + G exist (the contract's m.div_ceil(AS) panels).
        unsafe { narrow_group::<AS, NR, NC, G>(t, done) };
        done += G;
    }
    // The rest in one group, never wider than G (small MC blocks left single chains, as
    // on AVX-512).
    // SAFETY: as above, tiles done..tiles (fewer than G, so at most 7).
    unsafe {
        match tiles - done {
            0 => {}
            1 => narrow_group::<AS, NR, NC, 1>(t, done),
            2 => narrow_group::<AS, NR, NC, 2>(t, done),
            3 => narrow_group::<AS, NR, NC, 3>(t, done),
            4 => narrow_group::<AS, NR, NC, 4>(t, done),
            5 => narrow_group::<AS, NR, NC, 5>(t, done),
            6 => narrow_group::<AS, NR, NC, 6>(t, done),
            _ => narrow_group::<AS, NR, NC, 7>(t, done),
        }
    }
}

/// Tiles `first..first + G` of [`narrow_tiles`].
///
/// # Safety
/// As [`narrow_tiles`], with `first + G <= t.m.div_ceil(AS)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn narrow_group<const AS: usize, const NR: usize, const NC: usize, const G: usize>(
    t: &GemmTile,
    first: usize,
) {
    // The first AS lanes: an A panel's values for one k (lanes past AS are neither read nor
    // used).
    let lane_mask: [i32; 8] = std::array::from_fn(|l| if l < AS { -1 } else { 0 });
    // SAFETY: 8 i32 (32 bytes, unaligned load).
    let mask = unsafe { _mm256_loadu_si256(lane_mask.as_ptr().cast()) };
    let mut acc = [[_mm256_setzero_ps(); NC]; G];
    let a0 = t.a.wrapping_add(first * t.k * AS);
    for p in 0..t.k {
        let b_row = if t.b_off.is_null() {
            t.b.wrapping_add(p * NR)
        } else {
            // SAFETY: b_off holds k offsets (the tile contract).
            t.b.wrapping_add(unsafe { *t.b_off.add(p) })
        };
        let mut bv = [_mm256_setzero_ps(); NC];
        for (j, v) in bv.iter_mut().enumerate() {
            // SAFETY: B row p holds NR >= n = NC readable floats (the tile contract).
            *v = _mm256_set1_ps(unsafe { *b_row.add(j) });
        }
        for (g, row) in acc.iter_mut().enumerate() {
            // SAFETY: panel first + g holds k * AS floats and the mask reads AS of them at
            // p * AS (the contract: m.div_ceil(AS) panels).
            let av = unsafe { _mm256_maskload_ps(a0.wrapping_add((g * t.k + p) * AS), mask) };
            for j in 0..NC {
                row[j] = _mm256_fmadd_ps(av, bv[j], row[j]);
            }
        }
    }
    for (g, cols) in acc.iter().enumerate() {
        let i0 = (first + g) * AS;
        let mut lanes = [[0f32; 8]; NC];
        for (dst, &v) in lanes.iter_mut().zip(cols) {
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) };
        }
        // Row i of the tile is lanes[j][i] for its NC columns: the layout store_tile_scalar
        // reads (row stride NC).
        let mut tile = [0f32; 32];
        for i in 0..AS {
            for j in 0..NC {
                tile[i * NC + j] = lanes[j][i];
            }
        }
        let one = t.rows_from(i0, AS);
        // SAFETY: the tile's rows lie inside the column the caller vouches for, n = NC.
        unsafe { store_tile_scalar(&tile, NC, &one) };
    }
}

/// Largest MR x NR of the kernels above.
const TILE_MAX: usize = 256;

/// FMA peak probe: `iters` rounds of 12 independent FMA chains on ymm registers
/// (enough to cover 4-cycle latency on 2 pipes with room), returns a value that depends on
/// every chain so the work cannot be elided. FLOPs done: iters * 12 * 8 * 2.
pub fn fma_peak_probe(iters: u64) -> Option<f32> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    // SAFETY: AVX2+FMA was detected just above.
    Some(unsafe { fma_probe(iters) })
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma_probe(iters: u64) -> f32 {
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let m = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
    lanes.iter().sum()
}

crate::arch::dw_plane_kernel!(
    Avx2,
    "f32_dwconv_plane__avx2",
    "f32_dwconv_cb8__avx2",
    "avx2,fma",
    AvxInterleave,
    // Safe to call here: dw_block_tf runs under this tier's features.
    |p| dw_block_fast(p),
    // Planes: the generic body (hand kernels only on AVX-512).
    |_p: &mut crate::arch::dwconv::DwPlane| false
);
crate::arch::pool_kernel!(Avx2, "avx2,fma");

/// Activation kernel: the activations that divide (gelu's erf, the sigmoid family) by hand,
/// 8 lanes a step, every other activation the generic body under AVX2.
pub const F32_ACT: crate::arch::activation::ActUkernel = crate::arch::activation::ActUkernel {
    name: "f32_act__avx2",
    isa: Isa::Avx2,
    run: act,
};

fn act(a: crate::epilogue::Activation, data: crate::arch::activation::RowsMut<'_>) {
    assert!(
        Isa::Avx2.is_available(),
        "f32_act__avx2 on a CPU without it"
    );
    // SAFETY: the tier's features were just checked; the bodies read and write the rows'
    // slices only.
    unsafe { act_tf(a, data) }
}

#[target_feature(enable = "avx2,fma")]
fn act_tf(a: crate::epilogue::Activation, data: crate::arch::activation::RowsMut<'_>) {
    use crate::epilogue::Activation;
    // SAFETY (each arm): this function runs only where AVX2 and FMA are available (its
    // entry checks).
    match a {
        Activation::Gelu => data.for_each(|row| unsafe { map8(row, |x| gelu8(x)) }),
        Activation::Sigmoid => data.for_each(|row| unsafe { map8(row, |x| sigmoid8(x)) }),
        Activation::Silu => {
            data.for_each(|row| unsafe { map8(row, |x| _mm256_mul_ps(x, sigmoid8(x))) })
        }
        Activation::Tanh => data.for_each(|row| unsafe {
            map8(row, |x| {
                let s = sigmoid8(_mm256_add_ps(x, x));
                _mm256_fmsub_ps(_mm256_set1_ps(2.0), s, _mm256_set1_ps(1.0))
            })
        }),
        Activation::GeluTanh => data.for_each(|row| unsafe {
            map8(row, |x| {
                // x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), as the generic body.
                let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                let inner = _mm256_mul_ps(
                    _mm256_set1_ps(GELU_TANH_K),
                    _mm256_fmadd_ps(_mm256_set1_ps(GELU_TANH_C), x3, x),
                );
                _mm256_mul_ps(x, sigmoid8(_mm256_add_ps(inner, inner)))
            })
        }),
        other => crate::arch::activation::apply_generic_with(other, data, f32::mul_add),
    }
}

/// `row[i] = f(row[i])` 8 lanes a step; the last `len % 8` floats through a copy in an
/// 8-float buffer, so that every element gets the same arithmetic wherever a row begins or
/// ends (the bitwise identity across thread counts) without a masked store.
///
/// # Safety
/// AVX2 and FMA are available.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn map8(row: &mut [f32], f: impl Fn(__m256) -> __m256) {
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), f(_mm256_loadu_ps(c.as_ptr()))) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [0f32; 8];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), f(_mm256_loadu_ps(buf.as_ptr()))) };
        tail.copy_from_slice(&buf[..tail.len()]);
    }
}

/// 1/q: a 12-bit `vrcpps` estimate and two Newton steps in residual form, r + r (1 - q r)
/// with the residual exact by FMA. (With r (2 - q r), 1/(1 + e^-inf) stayed at 0.99999994
/// = 1 - 2^-24, not the reference's exact 1.) The division's unit bounds the generic gelu
/// and sigmoid (see the AVX-512 tier).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn recip8(q: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let r = _mm256_rcp_ps(q);
    let r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(q, r, one), r);
    _mm256_fmadd_ps(r, _mm256_fnmadd_ps(q, r, one), r)
}

/// gelu(x) = x/2 (1 + erf(x / sqrt 2)), as the AVX-512 tier's: the generic rational erf with
/// [`recip8`] for its division; exactly +-1 where |x / sqrt 2| >= 4. A NaN x makes `x / 2`,
/// and so the result, NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu8(x: __m256) -> __m256 {
    use crate::arch::activation::{ERF_P, ERF_Q};
    let xs = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let xc = _mm256_min_ps(_mm256_set1_ps(4.0), _mm256_max_ps(_mm256_set1_ps(-4.0), xs));
    let x2 = _mm256_mul_ps(xc, xc);
    let mut p = _mm256_set1_ps(ERF_P[0]);
    for &c in &ERF_P[1..] {
        p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(c));
    }
    let mut q = _mm256_set1_ps(ERF_Q[0]);
    for &c in &ERF_Q[1..] {
        q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(c));
    }
    let erf = _mm256_mul_ps(_mm256_mul_ps(xc, p), recip8(q));
    // xc^2 = 16 exactly where |x / sqrt 2| >= 4: erf = xc / 4 = +-1 there.
    let sat = _mm256_cmp_ps::<_CMP_GE_OQ>(x2, _mm256_set1_ps(16.0));
    let erf = _mm256_blendv_ps(erf, _mm256_mul_ps(xc, _mm256_set1_ps(0.25)), sat);
    let half = _mm256_mul_ps(x, _mm256_set1_ps(0.5));
    _mm256_fmadd_ps(half, erf, half)
}

/// 1 / (1 + e^-x), as the generic body (clamp to [-87.3, 88.7], n = round(x / ln 2) by the
/// 1.5 * 2^23 trick, ln 2 in two parts, the degree-6 polynomial, 2^n through the exponent
/// bits), with [`recip8`] for the division; exactly 0 below -88. NaN stays NaN (the clamp
/// passes it on: maxps and minps return their second operand when one is NaN).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn sigmoid8(x: __m256) -> __m256 {
    let v = _mm256_sub_ps(_mm256_setzero_ps(), x);
    let v = _mm256_min_ps(
        _mm256_set1_ps(EXP_CLAMP.1),
        _mm256_max_ps(_mm256_set1_ps(EXP_CLAMP.0), v),
    );
    let magic = _mm256_set1_ps(12_582_912.0);
    let t = _mm256_fmadd_ps(v, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
    let n = _mm256_sub_ps(t, magic);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), v);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(r, p, _mm256_set1_ps(c));
    }
    // 2^n: t's bits are magic's plus n; (n + 127) << 23 is 2^n's.
    let n_int = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        n_int,
        _mm256_set1_epi32(127),
    )));
    let e = _mm256_mul_ps(p, scale);
    let s = recip8(_mm256_add_ps(_mm256_set1_ps(1.0), e));
    let low = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(SIGMOID_ZERO_BELOW));
    _mm256_andnot_ps(low, s)
}
crate::arch::wino_kernel!(Avx2, "f32_winograd__avx2", "avx2,fma", HardwareGather);

/// Winograd tiles gathered with `vgatherdps`: one instruction per (row, column) of 8 tiles,
/// straight into a register.
pub struct HardwareGather;

impl crate::arch::winograd::TileGather for HardwareGather {
    #[inline(always)]
    fn gather_rows<const A: usize, const R: usize>(
        plane: &[f32],
        base: &[usize; crate::arch::winograd::LANES],
        pw: usize,
        fma: impl Fn(f32, f32, f32) -> f32 + Copy,
        out: &mut [[[f32; crate::arch::winograd::LANES]; A]; R],
    ) {
        assert!(Isa::Avx2.is_available(), "AVX2 gather on a CPU without it");
        assert!(A <= 8 && R > 0, "tiles of 1 to 8 rows of at most 8 columns");
        // Every read is base[l] + i * pw + q with i < R, q < A: bounded by the largest base.
        let top = base.iter().copied().max().unwrap_or(0);
        let end = (R - 1)
            .checked_mul(pw)
            .and_then(|v| v.checked_add(top))
            .and_then(|v| v.checked_add(A));
        assert!(
            end.is_some_and(|e| e <= plane.len() && e <= i32::MAX as usize),
            "tile gather past the plane"
        );
        // Loops over arrays written in place, not `array::from_fn`: its closures were not
        // inlined, and outside the tier's features each `mul_add` became a libm call.
        // Each lane's tile row i is 8 contiguous floats (wherever the tile lies: lanes of a
        // group may wrap to the next tile row), so 8 loads and an 8x8 transpose give the 8
        // columns, instead of A gathers that each wait on 8 loads. The gathers were 70% of
        // the F(6,3) input transform (vgg16.conv1_2: that transform 37% of the layer); taken
        // only for evenly spaced lanes, the groups that wrap (most of them with 10 tiles a
        // row, as on resnet50.res2.3x3 and vgg16.conv3_3) still gathered.
        if (R - 1) * pw + top + 8 <= plane.len() {
            for (i, o) in out.iter_mut().enumerate() {
                let at = |l: usize| plane[base[l] + i * pw..].as_ptr();
                // SAFETY: AVX2 was checked above; each lane's row has 8 floats in the plane
                // (base[l] + i * pw + 8 <= (R - 1) * pw + top + 8 <= plane.len()).
                let t = unsafe {
                    transpose8([
                        _mm256_loadu_ps(at(0)),
                        _mm256_loadu_ps(at(1)),
                        _mm256_loadu_ps(at(2)),
                        _mm256_loadu_ps(at(3)),
                        _mm256_loadu_ps(at(4)),
                        _mm256_loadu_ps(at(5)),
                        _mm256_loadu_ps(at(6)),
                        _mm256_loadu_ps(at(7)),
                    ])
                };
                let mut row = [[0f32; 8]; A];
                for (q, v) in row.iter_mut().enumerate() {
                    // SAFETY: `v` holds 8 floats.
                    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), t[q]) };
                }
                *o = crate::arch::winograd::bt_1d(&row, fma);
            }
            return;
        }
        // Tiles whose 8-float rows would run past the plane (the last group of a plane, in
        // 1-D mostly): element by element. (A `vgatherdps` here returned lane 0's value in
        // every lane under qemu's Haswell model, which CI runs; natively it was right. The
        // path is rare enough that scalar loads cost nothing measurable.)
        for (i, o) in out.iter_mut().enumerate() {
            let mut row = [[0f32; 8]; A];
            for (q, v) in row.iter_mut().enumerate() {
                for (l, x) in v.iter_mut().enumerate() {
                    *x = plane[base[l] + i * pw + q];
                }
            }
            *o = crate::arch::winograd::bt_1d(&row, fma);
        }
    }

    #[inline(always)]
    fn transpose(src: &[[f32; 8]; 8]) -> [[f32; 8]; 8] {
        Self::transpose_avx(src)
    }

    #[inline(always)]
    fn interleave<const M: usize>(columns: &[[f32; 8]; M], dst: &mut [f32]) -> bool {
        if M != 4 {
            return false;
        }
        assert!(
            Isa::Avx2.is_available(),
            "AVX2 interleave on a CPU without it"
        );
        assert!(dst.len() >= 32, "a row of 8 tiles of 4");
        // SAFETY: AVX2 was checked; M = 4 columns of 8 floats in, 32 floats out (checked).
        unsafe { interleave4x8(columns.as_ptr().cast(), dst.as_mut_ptr()) };
        true
    }
}

/// `dst[4 l + b] = col[b][l]` for the 4 column vectors of 8 floats at `cols` (32 floats, row
/// after row): pairs of columns interleaved, then pairs of pairs (each 128-bit half then
/// holds one tile's 4), then the halves put in tile order.
///
/// # Safety
/// AVX2 must be available; `cols` must be readable and `dst` writable for 32 floats.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn interleave4x8(cols: *const f32, dst: *mut f32) {
    // SAFETY: the caller guarantees 32 readable floats at `cols`, 32 writable at `dst`.
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|b| _mm256_loadu_ps(cols.add(8 * b)));
        // u_i: tiles i (low half) and i + 4 (high half), their 4 columns each.
        let [u0, u1, u2, u3] = transpose4_halves(v);
        _mm256_storeu_ps(dst, _mm256_permute2f128_ps::<0x20>(u0, u1));
        _mm256_storeu_ps(dst.add(8), _mm256_permute2f128_ps::<0x20>(u2, u3));
        _mm256_storeu_ps(dst.add(16), _mm256_permute2f128_ps::<0x31>(u0, u1));
        _mm256_storeu_ps(dst.add(24), _mm256_permute2f128_ps::<0x31>(u2, u3));
    }
}

impl HardwareGather {
    /// The 8x8 transpose of [`crate::arch::winograd::TileGather::transpose`] in registers.
    #[inline(always)]
    fn transpose_avx(src: &[[f32; 8]; 8]) -> [[f32; 8]; 8] {
        assert!(
            Isa::Avx2.is_available(),
            "AVX2 transpose on a CPU without it"
        );
        let mut out = [[0f32; 8]; 8];
        let rows: [*const f32; 8] = std::array::from_fn(|b| src[b].as_ptr());
        let dst: [*mut f32; 8] = std::array::from_fn(|l| out[l].as_mut_ptr());
        // SAFETY: AVX2 was checked above; every row and destination holds 8 floats.
        unsafe { transpose8x8(rows, dst) };
        out
    }
}

/// Depthwise interleaving with in-register 8x8 transposes (unpack, shuffle, lane permute:
/// 24 shuffles for 64 floats); tails and partial blocks element by element.
pub struct AvxInterleave;

/// Transposes the 8x8 block whose rows are the 8 floats at `rows[i]`, storing row `q` of the
/// result at `out[q]`.
///
/// # Safety
/// AVX must be available; every `rows[i]` must be readable and every `out[q]` writable for
/// 8 floats.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose8x8(rows: [*const f32; 8], out: [*mut f32; 8]) {
    // SAFETY: the caller guarantees 8 readable floats at each row pointer.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(rows[i]) });
    let o = transpose8(r);
    for (q, v) in o.into_iter().enumerate() {
        // SAFETY: the caller guarantees 8 writable floats at each output pointer.
        unsafe { _mm256_storeu_ps(out[q], v) };
    }
}

/// The 4x4 transposes within each 128-bit half of four row vectors: output `i` holds column
/// `i` of the low halves and column `i + 4` of the high halves (pairs of rows interleaved,
/// then pairs of pairs).
#[target_feature(enable = "avx2")]
#[inline]
fn transpose4_halves(r: [__m256; 4]) -> [__m256; 4] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
    ]
}

/// The 8x8 transpose of eight row vectors.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped:
    // t = (r0 r1 lo/hi), u = 4x4 transposes within each half, o = halves joined.
    let [u0, u1, u2, u3] = transpose4_halves([r[0], r[1], r[2], r[3]]);
    let [u4, u5, u6, u7] = transpose4_halves([r[4], r[5], r[6], r[7]]);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

impl crate::arch::dwconv::Interleave for AvxInterleave {
    fn interleave(src: &[f32], nc: usize, stride: usize, dst: &mut [f32]) {
        use crate::arch::dwconv::CB;
        let n = dst.len() / CB;
        let mut done = 0;
        if nc == CB && n >= 8 && Isa::Avx2.is_available() {
            // Every read is src[c * stride + p] with c < 8, p < n.
            assert!(
                7usize
                    .checked_mul(stride)
                    .and_then(|v| v.checked_add(n))
                    .is_some_and(|end| end <= src.len()),
                "source planes shorter than the block"
            );
            // SAFETY: AVX2 was checked; the bounds of src were checked just above, and dst
            // holds n * CB floats.
            done = unsafe { interleave_avx2(src, stride, dst, n) };
        }
        crate::arch::dwconv::interleave_scalar(src, nc, stride, dst, done);
    }
}

/// The 8x8 blocks of [`AvxInterleave::interleave`]; returns the pixels done (a multiple of
/// 8).
///
/// # Safety
/// AVX2 must be available, `src` must hold `7 * stride + n` floats and `dst` `8 * n`.
#[target_feature(enable = "avx2")]
unsafe fn interleave_avx2(src: &[f32], stride: usize, dst: &mut [f32], n: usize) -> usize {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut p = 0;
    while p + 8 <= n {
        // SAFETY: rows c * stride + p .. + 8 <= 7 * stride + n <= src.len(); outputs
        // (p + q) * 8 .. + 8 <= 8 * n <= dst.len() (the caller's contract).
        unsafe {
            let rows: [*const f32; 8] = std::array::from_fn(|c| s.add(c * stride + p));
            let out: [*mut f32; 8] = std::array::from_fn(|q| d.add((p + q) * 8));
            transpose8x8(rows, out);
        }
        p += 8;
    }
    p
}

/// Strided gather: stride 2 (every strided 3x3 and 1x1 of the suite) by vector shuffles, 8
/// outputs from two loads; strides 3 to 64 (alexnet.conv1's 4) by `vgatherdps`, 8 outputs an
/// instruction; stride 1 and the tails element by element. The element loop ran at several
/// cycles a float and was a third of resnet50.res3.3x3s2's im2col packing.
pub fn gather(dst: &mut [f32], src: &[f32], stride: usize) {
    let n = dst.len();
    let mut done = 0;
    if stride == 2 && n >= 8 && Isa::Avx2.is_available() {
        // Whole blocks of 8 outputs read 16 floats each: src[2*done .. 2*done + 16].
        let blocks = (n / 8).min(src.len() / 16);
        // SAFETY: AVX2 was checked; block b reads src[16b .. 16b + 16] (b < blocks <=
        // src.len() / 16) and writes dst[8b .. 8b + 8] (b < blocks <= n / 8).
        unsafe { gather2_avx2(dst, src, blocks) };
        done = blocks * 8;
        // The last partial block as one more whole block ending at n, overlapping the one
        // before (it rewrites the same values): a phase row of 28 had 4 of its floats done
        // one by one.
        if done < n && blocks == n / 8 && 2 * n <= src.len() {
            // SAFETY: AVX2 was checked; the block reads src[2(n-8) .. 2n] (2n <= src.len())
            // and writes dst[n-8 .. n] (n >= 8).
            unsafe { gather2_avx2(&mut dst[n - 8..], &src[2 * (n - 8)..], 1) };
            done = n;
        }
    } else if stride == 4 && n >= 8 && Isa::Avx2.is_available() {
        // Whole blocks of 8 outputs read 32 floats each (alexnet.conv1's phase split: with
        // vgatherdps it was 10% of the layer).
        let blocks = (n / 8).min(src.len() / 32);
        // SAFETY: AVX2 was checked; block b reads src[32b .. 32b + 32] (b < blocks <=
        // src.len() / 32) and writes dst[8b .. 8b + 8] (b < n / 8).
        unsafe { gather4_avx2(dst, src, blocks) };
        done = blocks * 8;
        if done < n && blocks == n / 8 && 4 * n <= src.len() {
            // SAFETY: AVX2 was checked; the block reads src[4(n-8) .. 4n] (4n <= src.len())
            // and writes dst[n-8 .. n] (n >= 8).
            unsafe { gather4_avx2(&mut dst[n - 8..], &src[4 * (n - 8)..], 1) };
            done = n;
        }
    } else if (3..=64).contains(&stride) && n >= 8 && Isa::Avx2.is_available() {
        // Block b reads src[8b*stride + l*stride], l < 8: its last read is
        // (8b + 7) * stride, so whole blocks while (8b + 7) * stride < src.len().
        let in_src = (src.len() / stride).saturating_sub(7).div_ceil(8);
        let blocks = (n / 8).min(in_src);
        // SAFETY: AVX2 was checked; block b < blocks reads up to (8b + 7) * stride <
        // src.len() (b < in_src) and writes dst[8b .. 8b + 8] (b < n / 8); offsets are
        // below 8 * 64 and fit i32.
        unsafe { gather_any_avx2(dst, src, stride, blocks) };
        done = blocks * 8;
    }
    crate::arch::gather_scalar(&mut dst[done..], &src[done * stride.max(1)..], stride);
}

/// [`crate::arch::TransposeFn`] in 8x8 blocks held in registers (24 shuffles for 64 floats,
/// where element by element each float was a load and a store of its own: 40% of the
/// channels-last pool of resnet50.conv1); the edges element by element.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], dst_stride: usize) {
    crate::arch::check_transpose(src, rows, cols, dst, dst_stride);
    if !Isa::Avx2.is_available() {
        return crate::arch::transpose_scalar(src, rows, cols, dst, dst_stride);
    }
    let (full_rows, full_cols) = (rows / 8 * 8, cols / 8 * 8);
    // One pointer for all the blocks' stores (a fresh `as_mut_ptr` per row would reborrow
    // `dst` under the earlier pointers).
    let out = dst.as_mut_ptr();
    // Column blocks outer, every row inner: eight output rows written front to back as
    // streams. Rows outer wrote a partial line of every output row per block row (144 of
    // them for an NHWC image of 144 channels), and the lines were evicted before their
    // second half came: [3136 x 144] to [144 x 3136] took 289 us (12.5 GB/s), 168 us this
    // way; [64 x 3136] 83 against 53 us, [144 x 784] 33 against 22 us.
    for j0 in (0..full_cols).step_by(8) {
        for i0 in (0..full_rows).step_by(8) {
            let from: [*const f32; 8] =
                std::array::from_fn(|i| src[(i0 + i) * cols + j0..][..8].as_ptr());
            let to: [*mut f32; 8] =
                std::array::from_fn(|q| out.wrapping_add((j0 + q) * dst_stride + i0));
            // SAFETY: AVX2 was checked; each source row holds 8 floats (sliced above), and
            // output row j0 + q < cols holds floats i0..i0 + 8 <= rows of its `rows`, inside
            // `dst` and apart from the other rows (check_transpose).
            unsafe { transpose8x8(from, to) };
        }
    }
    // The edges: columns past the full blocks for every row, rows past them for the rest.
    for j in 0..cols {
        let edge = if j < full_cols { full_rows } else { 0 };
        for (i, d) in dst[j * dst_stride..][..rows]
            .iter_mut()
            .enumerate()
            .skip(edge)
        {
            *d = src[i * cols + j];
        }
    }
}

/// Both stride-2 phases of a row in one pass: each 16 floats read give 8 of each phase (two
/// shuffles and two lane permutes), where two stride-2 gathers read the row twice, each
/// call with its own checks and tail. Whole blocks of 8 while both outputs and `src`
/// allow, the rest element by element.
pub fn deinterleave2(even: &mut [f32], odd: &mut [f32], src: &[f32]) {
    let n = even.len().min(odd.len());
    let mut done = 0;
    if n >= 8 && Isa::Avx2.is_available() {
        let blocks = (n / 8).min(src.len() / 16);
        // SAFETY: AVX2 was checked; block b reads src[16b .. 16b + 16] (b < blocks <=
        // src.len() / 16) and writes even[8b .. 8b + 8] and odd[8b .. 8b + 8] (b < n / 8).
        unsafe { deinterleave2_avx2(even, odd, src, blocks) };
        done = blocks * 8;
    }
    crate::arch::deinterleave2_scalar(&mut even[done..], &mut odd[done..], &src[2 * done..]);
}

/// `blocks` blocks of [`deinterleave2`].
///
/// # Safety
/// AVX2 must be available, `src` must hold `16 * blocks` floats, `even` and `odd` `8 *
/// blocks` each.
#[target_feature(enable = "avx2")]
unsafe fn deinterleave2_avx2(even: &mut [f32], odd: &mut [f32], src: &[f32], blocks: usize) {
    let (s, e, o) = (src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr());
    for b in 0..blocks {
        // SAFETY: within the bounds the caller guarantees (16 floats read, 8 + 8 written).
        unsafe {
            let lo = _mm256_loadu_ps(s.add(16 * b));
            let hi = _mm256_loadu_ps(s.add(16 * b + 8));
            // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] (and the odd lanes), then the 64-bit lanes
            // reordered 0 2 1 3.
            let ev = _mm256_shuffle_ps::<0x88>(lo, hi);
            let od = _mm256_shuffle_ps::<0xDD>(lo, hi);
            let order =
                |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
            _mm256_storeu_ps(e.add(8 * b), order(ev));
            _mm256_storeu_ps(o.add(8 * b), order(od));
        }
    }
}

/// `blocks` blocks of 8 floats at `stride` by `vgatherdps`.
///
/// # Safety
/// AVX2 must be available, `src` must hold `(8 * blocks - 1) * stride + 1` floats, `dst`
/// `8 * blocks`, and `8 * stride` must fit i32.
#[target_feature(enable = "avx2")]
unsafe fn gather_any_avx2(dst: &mut [f32], src: &[f32], stride: usize, blocks: usize) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let st = stride as i32;
    let idx = _mm256_setr_epi32(0, st, 2 * st, 3 * st, 4 * st, 5 * st, 6 * st, 7 * st);
    for b in 0..blocks {
        // SAFETY: lanes read s[8b*stride + l*stride] <= (8b + 7) * stride, in bounds by the
        // caller's contract; 8 floats written at d[8b].
        unsafe {
            let v = _mm256_i32gather_ps::<4>(s.add(8 * b * stride), idx);
            _mm256_storeu_ps(d.add(8 * b), v);
        }
    }
}

/// `blocks` blocks of 8 floats at stride 4: 4 loads, 3 shuffles and a lane permute per
/// block.
///
/// # Safety
/// AVX2 must be available, `src` must hold `32 * blocks` floats and `dst` `8 * blocks`.
#[target_feature(enable = "avx2")]
unsafe fn gather4_avx2(dst: &mut [f32], src: &[f32], blocks: usize) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..blocks {
        // SAFETY: within the bounds the caller guarantees (32 floats read, 8 written).
        unsafe {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(s.add(32 * b + 8 * i)));
            // Per 128-bit half: a = [v0[0] v0[0] v1[0] v1[0]] (and v0[4].. in the high half),
            // c = [v0[0] v1[0] v2[0] v3[0] | v0[4] v1[4] v2[4] v3[4]], then interleaved.
            let a = _mm256_shuffle_ps::<0x00>(v[0], v[1]);
            let bb = _mm256_shuffle_ps::<0x00>(v[2], v[3]);
            let c = _mm256_shuffle_ps::<0x88>(a, bb);
            let out = _mm256_permutevar8x32_ps(c, order);
            _mm256_storeu_ps(d.add(8 * b), out);
        }
    }
}

/// `blocks` blocks of 8 even-indexed floats.
///
/// # Safety
/// AVX2 must be available, `src` must hold `16 * blocks` floats and `dst` `8 * blocks`.
#[target_feature(enable = "avx2")]
unsafe fn gather2_avx2(dst: &mut [f32], src: &[f32], blocks: usize) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for b in 0..blocks {
        // SAFETY: within the bounds the caller guarantees (16 floats read, 8 written).
        unsafe {
            let lo = _mm256_loadu_ps(s.add(16 * b));
            let hi = _mm256_loadu_ps(s.add(16 * b + 8));
            // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6], then the 64-bit lanes reordered 0 2 1 3.
            let even = _mm256_shuffle_ps::<0x88>(lo, hi);
            let ordered = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(even)));
            _mm256_storeu_ps(d.add(8 * b), ordered);
        }
    }
}

/// `direct_oc` tile kernel: 6 pixels x 16 output channels in 12 ymm accumulators; each tap
/// loads the 16 channels' weights (two vectors) and broadcasts each pixel's input value
/// from the image, 12 FMAs to 8 loads (the 6x16 GEMM tile's ratio, with A read in place).
/// Up to four such panels a call, one after the other (`conv_oc_panels`).
pub const F32_CONV_OC: crate::kernels::OcUkernel = crate::kernels::OcUkernel {
    name: "f32_conv_oc_6x16__avx2",
    isa: Isa::Avx2,
    mr: crate::kernels::OC_MR,
    panels: 4,
    run: conv_oc_panels,
};

/// The tile's channel panels one after the other through [`conv_oc`]: the call, its bounds
/// checks and the tile's bookkeeping are paid once for up to 64 channels (resnet50.conv1 and
/// alexnet.conv1 have 64; with one panel a call, `run_oc_tile` and the tile loop were 7% of
/// resnet50.conv1's `direct_oc` time, perf, AMD Zen 3).
///
/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`] on a CPU with AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_oc_panels(t: &crate::kernels::OcTile) {
    use crate::kernels::OC_NR;
    for panel in 0..t.panels {
        let c0 = panel * OC_NR;
        let one = crate::kernels::OcTile {
            w: t.w.wrapping_add(panel * t.k * OC_NR),
            panels: 1,
            c: t.c.wrapping_add(if t.pixel_major { c0 } else { c0 * t.cs }),
            // The contract: n > (panels - 1) * OC_NR, so every panel has a channel.
            n: (t.n - c0).min(OC_NR),
            bias: if t.bias.is_null() {
                t.bias
            } else {
                t.bias.wrapping_add(c0)
            },
            ..*t
        };
        // SAFETY: panel `panel` of the caller's tile: its weights, channels c0.. of the
        // output and of the bias, all inside what the caller's contract covers.
        unsafe { conv_oc(&one) }
    }
}

/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`] on a CPU with AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_oc(t: &crate::kernels::OcTile) {
    use crate::kernels::{OC_MR, OC_NR};
    let mut acc = [[_mm256_setzero_ps(); 2]; OC_MR];
    let px: [*const f32; OC_MR] = std::array::from_fn(|i| t.img.wrapping_add(t.bases[i]));
    let mut w = t.w;
    for p in 0..t.k {
        // SAFETY: offsets holds k entries, w k rows of 16 floats, and every pixel slot's
        // taps are readable (the contract).
        unsafe {
            let o = *t.offsets.add(p);
            let w0 = _mm256_loadu_ps(w);
            let w1 = _mm256_loadu_ps(w.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*px[i].add(o));
                row[0] = _mm256_fmadd_ps(a, w0, row[0]);
                row[1] = _mm256_fmadd_ps(a, w1, row[1]);
            }
            w = w.add(OC_NR);
        }
    }
    // The accumulators leave by reference: handing over a copy keeps the loop's own in
    // registers. With `&acc` itself LLVM kept the array in memory and stored all 12
    // accumulators on every k step (AMD EPYC Zen 3, paired, one thread, median time with the
    // copy over without: alexnet.conv1 0.39, googlenet.inc3a.5x5 0.38, resnet50.conv1 0.43,
    // res3.3x3s2 0.45).
    let tile = acc;
    // SAFETY: forwarded output contract.
    unsafe { store_oc_acc(&tile, t) }
}

/// Stores a `direct_oc` accumulator tile held as two ymm halves of 8 channels per pixel:
/// C (when `load_c`), bias, clamp, as [`crate::arch::store_oc_tile`] does. Shared by the
/// AVX-512 kernel, which splits its zmm accumulators into these halves.
///
/// # Safety
/// AVX2 is available, and the output part of [`crate::kernels::OcUkernel::run`]'s contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn store_oc_acc(
    acc: &[[__m256; 2]; crate::kernels::OC_MR],
    t: &crate::kernels::OcTile,
) {
    use crate::kernels::{OC_MR, OC_NR};
    if t.pixel_major && t.n == OC_NR {
        // Each pixel's 16 channels are its two accumulators: no transpose.
        let (lo, hi) = (_mm256_set1_ps(t.lo), _mm256_set1_ps(t.hi));
        for (i, row) in acc.iter().enumerate().take(t.m) {
            for (half, &v) in row.iter().enumerate() {
                // SAFETY: pixel i < m, channels 8 half..8 half + 8 <= n = 16: inside the
                // output the caller vouches for; a bias holds n floats.
                unsafe {
                    let dst = t.c.add(i * t.cs + 8 * half);
                    let mut x = v;
                    if t.load_c {
                        x = _mm256_add_ps(x, _mm256_loadu_ps(dst));
                    }
                    if !t.bias.is_null() {
                        x = _mm256_add_ps(x, _mm256_loadu_ps(t.bias.add(8 * half)));
                    }
                    // max(lo, x) then min(hi, .): a NaN x comes through (the second operand).
                    _mm256_storeu_ps(dst, _mm256_min_ps(hi, _mm256_max_ps(lo, x)));
                }
            }
        }
        return;
    }
    if t.m == OC_MR && t.n == OC_NR && !t.load_c && !t.pixel_major {
        // A whole tile: bias and clamp on the accumulators (lanes are channels), then two
        // 8x8 transposes (pixel rows 6 and 7 empty) give each channel's 6 pixels, stored as
        // 4 + 2 floats. The scalar store below was 12-15% of resnet50.conv1's kernel time
        // (K = 147, so 880 cycles of FMAs a tile against ~130 storing it).
        let (lo, hi) = (_mm256_set1_ps(t.lo), _mm256_set1_ps(t.hi));
        // `half` picks the accumulator column, the bias half and the channels alike.
        #[allow(clippy::needless_range_loop)]
        for half in 0..2 {
            let bias = if t.bias.is_null() {
                _mm256_setzero_ps()
            } else {
                // SAFETY: a bias holds n = 16 floats.
                unsafe { _mm256_loadu_ps(t.bias.add(8 * half)) }
            };
            let rows: [__m256; 8] = std::array::from_fn(|i| {
                if i < OC_MR {
                    // max(lo, x) then min(hi, .): a NaN x comes through (the second operand).
                    _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(acc[i][half], bias)))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (q, v) in transpose8(rows).into_iter().enumerate() {
                // SAFETY: channel 8 half + q < n = 16 and pixels 0..6 = m: inside the output
                // the caller vouches for.
                unsafe {
                    let dst = t.c.add((8 * half + q) * t.cs);
                    _mm_storeu_ps(dst, _mm256_castps256_ps128(v));
                    let upper = _mm_castps_pd(_mm256_extractf128_ps::<1>(v));
                    _mm_store_sd(dst.add(4).cast::<f64>(), upper);
                }
            }
        }
        return;
    }
    let mut tile = [[0f32; OC_NR]; OC_MR];
    for (dst, row) in tile.iter_mut().zip(acc) {
        // SAFETY: 16 floats per row.
        unsafe {
            _mm256_storeu_ps(dst.as_mut_ptr(), row[0]);
            _mm256_storeu_ps(dst.as_mut_ptr().add(8), row[1]);
        }
    }
    // SAFETY: forwarded output contract.
    unsafe { crate::arch::store_oc_tile(&tile, t) }
}

/// The channel-block kernels by hand: depthwise 3x3 at stride 1 or 2 (both directions
/// alike) without dilation ([`dw3x3_pixels`]: every depthwise layer of the suite),
/// multiplier blocks of any kernel ([`dw_bcast_pixels`]), grouped blocks of 2, 4 or 8
/// channels ([`grouped_pixels`]). `false` (nothing done) for any other block, which the
/// generic body takes.
///
/// Each steps eight pixels with one ymm accumulator each: eight FMA chains (Zen 3 issues two
/// FMAs a cycle at four cycles' latency, so the generic body's four chains ran at half
/// rate).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn dw_block_fast(p: &mut crate::arch::dwconv::DwBlock) -> bool {
    let taps = Taps::of(p);
    let s = p.stride[0];
    let dw3x3 = p.kernel == [3, 3] && p.dilation == [1, 1] && p.stride == [s, s];
    // What the generic body keeps: other group sizes, and depthwise blocks other than 3x3
    // at stride 1 or 2.
    let taken = match (p.broadcast, p.group) {
        (true, _) => true,
        (false, 2 | 4 | 8) => true,
        (false, 1) => dw3x3 && (1..=2).contains(&s),
        _ => false,
    };
    if !taken {
        return false;
    }
    let oh = crate::arch::dwconv::checked_block_rows(p);
    match (p.broadcast, p.group, s) {
        (true, _, _) => block_rows(p, oh, &Broadcast(taps)),
        (false, 2, _) => block_rows(p, oh, &Grouped::<2>(taps)),
        (false, 4, _) => block_rows(p, oh, &Grouped::<4>(taps)),
        (false, 8, _) => block_rows(p, oh, &Grouped::<8>(taps)),
        (false, _, 1) => block_rows(p, oh, &Dw3x3::<1>(taps)),
        _ => block_rows(p, oh, &Dw3x3::<2>(taps)),
    }
    true
}

/// The step loop every block kernel shares: `oh` rows, eight pixels a step (the row's last
/// 1..7 in one step), each step's accumulators from `kernel` and stored by [`PlanarStore`].
/// `checked_block_rows` must have vouched for the block (the kernels' reads and the stores).
#[target_feature(enable = "avx2,fma")]
fn block_rows<K: BlockPixels>(p: &mut crate::arch::dwconv::DwBlock, oh: usize, kernel: &K) {
    let (ow, [sh, sw], pixel) = (p.ow, p.stride, K::PIXEL_FLOATS);
    // SAFETY: bias holds CB = 8 floats.
    let bias = unsafe { _mm256_loadu_ps(p.bias.as_ptr()) };
    let store = PlanarStore::of(p);
    let inp = p.input.as_ptr();
    for oy in 0..oh {
        let mut ox = 0;
        while ox < ow {
            // SAFETY: the step reads input pixels (oy*SH + ky*DH, (ox + j)*SW + kx*DW) for the
            // kernel's taps and ox + j < ow, and its taps' weights: checked_block_rows
            // asserted the last of each inside `input` and `weight`, and every lane's plane
            // to its pixel (oh - 1, ow - 1) inside `out`.
            unsafe {
                let at = inp.add((oy * sh * p.pw + ox * sw) * pixel);
                let o = oy * ow + ox;
                ox += match ow - ox {
                    8.. => store.put(kernel.pixels::<8>(at, bias), o),
                    7 => store.put(kernel.pixels::<7>(at, bias), o),
                    6 => store.put(kernel.pixels::<6>(at, bias), o),
                    5 => store.put(kernel.pixels::<5>(at, bias), o),
                    4 => store.put(kernel.pixels::<4>(at, bias), o),
                    3 => store.put(kernel.pixels::<3>(at, bias), o),
                    2 => store.put(kernel.pixels::<2>(at, bias), o),
                    _ => store.put(kernel.pixels::<1>(at, bias), o),
                };
            }
        }
    }
}

/// A block kernel's accumulators for `J` output pixels from the input pixel at `at`.
trait BlockPixels {
    /// Floats of one input pixel.
    const PIXEL_FLOATS: usize;
    /// # Safety
    /// Every input pixel and weight the `J` pixels' taps read is readable from `at` and the
    /// kernel's weights; AVX2+FMA.
    unsafe fn pixels<const J: usize>(&self, at: *const f32, bias: __m256) -> [__m256; J];
}

/// The taps of a block: the input row length, kernel, column stride, dilation and the
/// interleaved weights.
struct Taps {
    pw: usize,
    kernel: [usize; 2],
    stride_w: usize,
    dilation: [usize; 2],
    w: *const f32,
}

impl Taps {
    fn of(p: &crate::arch::dwconv::DwBlock) -> Self {
        Taps {
            pw: p.pw,
            kernel: p.kernel,
            stride_w: p.stride[1],
            dilation: p.dilation,
            w: p.weight.as_ptr(),
        }
    }
}

/// 3x3 at stride `S` (both directions), no dilation: [`dw3x3_pixels`].
struct Dw3x3<const S: usize>(Taps);
/// Multiplier blocks: [`dw_bcast_pixels`].
struct Broadcast(Taps);
/// Grouped blocks of `G` channels: [`grouped_pixels`].
struct Grouped<const G: usize>(Taps);

impl<const S: usize> BlockPixels for Dw3x3<S> {
    const PIXEL_FLOATS: usize = crate::arch::dwconv::CB;
    #[inline(always)]
    unsafe fn pixels<const J: usize>(&self, at: *const f32, bias: __m256) -> [__m256; J] {
        // SAFETY: the trait's contract is dw3x3_pixels's.
        unsafe { dw3x3_pixels::<J, S>(at, self.0.pw, self.0.w, bias) }
    }
}

impl BlockPixels for Broadcast {
    const PIXEL_FLOATS: usize = 1;
    #[inline(always)]
    unsafe fn pixels<const J: usize>(&self, at: *const f32, bias: __m256) -> [__m256; J] {
        // SAFETY: the trait's contract is dw_bcast_pixels's.
        unsafe { dw_bcast_pixels::<J>(at, &self.0, bias) }
    }
}

impl<const G: usize> BlockPixels for Grouped<G> {
    const PIXEL_FLOATS: usize = crate::arch::dwconv::CB;
    #[inline(always)]
    unsafe fn pixels<const J: usize>(&self, at: *const f32, bias: __m256) -> [__m256; J] {
        // SAFETY: the trait's contract is grouped_pixels's.
        unsafe { grouped_pixels::<J, G>(at, &self.0, bias) }
    }
}

/// A block kernel's output planes (see [`crate::arch::dwconv::DwBlock::out`]): where and how
/// its pixels' lanes are stored.
struct PlanarStore {
    out: *mut f32,
    plane_stride: usize,
    lanes: usize,
    accumulate: bool,
    lo: f32,
    hi: f32,
    channels_last: bool,
}

impl PlanarStore {
    fn of(p: &mut crate::arch::dwconv::DwBlock) -> Self {
        PlanarStore {
            out: p.out.as_mut_ptr(),
            plane_stride: p.plane_stride,
            lanes: p.lanes,
            accumulate: p.accumulate,
            lo: p.clamp.0,
            hi: p.clamp.1,
            channels_last: p.channels_last,
        }
    }

    /// Stores `J` pixels channels-last: accumulator `j` is pixel `o + j`'s lanes, stored
    /// together at `(o + j) * plane_stride` (the residual added, clamped); all eight lanes
    /// with a plain store, fewer (a partial block) with a masked one. Returns `J`.
    ///
    /// # Safety
    /// Lanes `0..lanes` of pixels `o..o + J` lie inside the output (`checked_block_rows`);
    /// AVX2+FMA. Inlined into [`PlanarStore::put`].
    #[inline(always)]
    unsafe fn put_channels_last<const J: usize>(&self, acc: [__m256; J], o: usize) -> usize {
        // SAFETY: AVX2 (the caller's contract); the masked loads and stores touch lanes
        // 0..lanes of each pixel only, inside the output (the caller's contract).
        unsafe {
            let (lo, hi) = (_mm256_set1_ps(self.lo), _mm256_set1_ps(self.hi));
            let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(self.lanes as i32), iota);
            for (j, &a) in acc.iter().enumerate() {
                let dst = self.out.add((o + j) * self.plane_stride);
                let mut v = a;
                if self.lanes == 8 {
                    if self.accumulate {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(dst));
                    }
                    _mm256_storeu_ps(dst, _mm256_min_ps(hi, _mm256_max_ps(lo, v)));
                } else {
                    if self.accumulate {
                        v = _mm256_add_ps(v, _mm256_maskload_ps(dst, mask));
                    }
                    _mm256_maskstore_ps(dst, mask, _mm256_min_ps(hi, _mm256_max_ps(lo, v)));
                }
            }
        }
        J
    }

    /// Stores `J` pixels (accumulator `j` holds pixel `o + j`'s CB lanes) into the lanes'
    /// planes: an 8x8 transpose turns them into one vector of pixels per lane, then, the
    /// residual added, clamped and stored: whole for 8 pixels, element by element for a
    /// row's tail. Returns `J`.
    ///
    /// # Safety
    /// Pixels `o..o + J` of planes `0..lanes` lie inside the output (as `checked_block_rows`
    /// asserts for a row's pixels); AVX2+FMA. Inlined into [`block_rows`] (always: called as
    /// a function, its accumulators went through memory and it was a quarter of
    /// mobilenetv2.dw112's time; `inline(always)` rules out `target_feature`, so it takes
    /// its caller's).
    #[inline(always)]
    unsafe fn put<const J: usize>(&self, acc: [__m256; J], o: usize) -> usize {
        if self.channels_last {
            // SAFETY: the same contract, for the channels-last layout.
            return unsafe { self.put_channels_last(acc, o) };
        }
        // SAFETY: AVX2+FMA are available (the caller's contract).
        let (rows, lo, hi) = unsafe {
            let zero = _mm256_setzero_ps();
            let rows = transpose8(std::array::from_fn(|j| if j < J { acc[j] } else { zero }));
            (rows, _mm256_set1_ps(self.lo), _mm256_set1_ps(self.hi))
        };
        for (c, &row) in rows.iter().enumerate().take(self.lanes) {
            // SAFETY: the caller's contract: J floats of plane c from pixel o, and AVX2+FMA.
            unsafe {
                let dst = self.out.add(c * self.plane_stride + o);
                if J == 8 {
                    let mut v = row;
                    if self.accumulate {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(dst));
                    }
                    // max(lo, x) then min(hi, .): a NaN x comes through (the second operand).
                    _mm256_storeu_ps(dst, _mm256_min_ps(hi, _mm256_max_ps(lo, v)));
                } else if !self.accumulate {
                    // A row's tail: clamped in the vector, stored in 4-, 2- and 1-float
                    // pieces (element by element, dw7's rows of 7 ran 0.86x the old
                    // interleaved store and second pass).
                    let v = _mm256_min_ps(hi, _mm256_max_ps(lo, row));
                    let (mut part, mut at) = (_mm256_castps256_ps128(v), 0);
                    if J >= 4 {
                        _mm_storeu_ps(dst, part);
                        part = _mm256_extractf128_ps::<1>(v);
                        at = 4;
                    }
                    if J - at >= 2 {
                        _mm_store_sd(dst.add(at).cast::<f64>(), _mm_castps_pd(part));
                        part = _mm_movehl_ps(part, part);
                        at += 2;
                    }
                    if J > at {
                        _mm_store_ss(dst.add(at), part);
                    }
                } else {
                    let mut lanes = [0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), row);
                    for (j, &x) in lanes.iter().enumerate().take(J) {
                        let d = dst.add(j);
                        *d = crate::arch::clamp_nan(x + *d, self.lo, self.hi);
                    }
                }
            }
        }
        J
    }
}

/// The accumulators of `J` output pixels from the block pixel at `at` (row stride `pw`
/// pixels), bias included. A kernel row's three weight vectors sit in registers and each
/// input pixel of the row is loaded once and fed to every (pixel, tap) that reads it: at
/// stride 1 a row of the step is 10 loads for 24 FMAs (the generic body loaded per tap, 9 x
/// 4 loads for 36 FMAs, and LLVM turned its [f32; 8] arrays into shuffles when asked for
/// eight pixels).
///
/// # Safety
/// Rows `at + ky * pw` for ky < 3, pixels `0..(J - 1) * S + 3` of each, and 9 x CB weights
/// readable; AVX2+FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw3x3_pixels<const J: usize, const S: usize>(
    at: *const f32,
    pw: usize,
    w: *const f32,
    bias: __m256,
) -> [__m256; J] {
    use crate::arch::dwconv::CB;
    let mut acc = [bias; J];
    for ky in 0..3 {
        // SAFETY: the caller's contract.
        unsafe {
            let row = at.add(ky * pw * CB);
            let taps = [
                _mm256_loadu_ps(w.add(ky * 3 * CB)),
                _mm256_loadu_ps(w.add((ky * 3 + 1) * CB)),
                _mm256_loadu_ps(w.add((ky * 3 + 2) * CB)),
            ];
            // Input pixel q feeds output pixel j through tap kx where q = j*S + kx. Unrolled
            // by `unroll!` (constant indices, dead arms folded): as loops, LLVM left them
            // rolled with the accumulators on the stack (dw56s2 1.4x slower than before).
            if S == 1 {
                unroll!(q in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] {
                    if q < J + 2 {
                        let x = _mm256_loadu_ps(row.add(q * CB));
                        unroll!(kx in [0, 1, 2] {
                            if q >= kx && q - kx < J {
                                acc[q - kx] = _mm256_fmadd_ps(taps[kx], x, acc[q - kx]);
                            }
                        });
                    }
                });
            } else {
                // S = 2: even pixels 2j feed taps 0 (pixel j) and 2 (pixel j - 1), odd ones
                // tap 1.
                unroll!(j in [0, 1, 2, 3, 4, 5, 6, 7, 8] {
                    if j <= J {
                        let x = _mm256_loadu_ps(row.add(2 * j * CB));
                        if j < J {
                            acc[j] = _mm256_fmadd_ps(taps[0], x, acc[j]);
                        }
                        if j > 0 {
                            acc[j - 1] = _mm256_fmadd_ps(taps[2], x, acc[j - 1]);
                        }
                    }
                    if j < J {
                        let x = _mm256_loadu_ps(row.add((2 * j + 1) * CB));
                        acc[j] = _mm256_fmadd_ps(taps[1], x, acc[j]);
                    }
                });
            }
        }
    }
    acc
}

/// Multiplier blocks: eight output pixels a step, one ymm accumulator each (eight FMA
/// chains), every tap one weight vector and eight broadcast input pixels (the generic body
/// ran four pixels, four chains, at half the FMA rate). wav2vec2.conv0: one input channel,
/// 512 multipliers, kernel 10, stride 5.
///
/// The accumulators of `J` multiplier-block output pixels from input pixel `at`, bias
/// included.
///
/// # Safety
/// Every tap's input pixel of the J outputs readable from `at`, KH x KW x CB weights at
/// `taps.w`; AVX2+FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_bcast_pixels<const J: usize>(
    at: *const f32,
    taps: &Taps,
    bias: __m256,
) -> [__m256; J] {
    use crate::arch::dwconv::CB;
    let [kh, kw] = taps.kernel;
    let [dh, dw] = taps.dilation;
    let sw = taps.stride_w;
    let mut acc = [bias; J];
    for ky in 0..kh {
        for kx in 0..kw {
            // SAFETY: the caller's contract.
            unsafe {
                let w = _mm256_loadu_ps(taps.w.add((ky * kw + kx) * CB));
                let px = at.add(ky * dh * taps.pw + kx * dw);
                unroll!(j in [0, 1, 2, 3, 4, 5, 6, 7] {
                    if j < J {
                        let x = _mm256_broadcast_ss(&*px.add(j * sw));
                        acc[j] = _mm256_fmadd_ps(w, x, acc[j]);
                    }
                });
            }
        }
    }
    acc
}

/// Input `i` of each `G`-lane group of `x`, spread across the group's lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn group_lanes<const G: usize>(x: __m256, i: usize) -> __m256 {
    match (G, i) {
        (2, 0) => _mm256_permute_ps::<0b10_10_00_00>(x),
        (2, _) => _mm256_permute_ps::<0b11_11_01_01>(x),
        (4, 0) => _mm256_permute_ps::<0x00>(x),
        (4, 1) => _mm256_permute_ps::<0x55>(x),
        (4, 2) => _mm256_permute_ps::<0xAA>(x),
        (4, _) => _mm256_permute_ps::<0xFF>(x),
        _ => _mm256_permutevar8x32_ps(x, _mm256_set1_epi32(i as i32)),
    }
}

/// Grouped blocks (`G` = 2, 4 or 8 channels a group in and out, `CB / G` groups a block):
/// eight output pixels a step, one accumulator each; every tap's input pixel is loaded once
/// and each of its group's `G` inputs spread across the group's lanes by an in-register
/// shuffle, then one FMA with that input's weight vector (all eight lanes useful: each is
/// an output channel). Any kernel, stride and dilation.
///
/// The accumulators of `J` grouped-block output pixels from the block pixel at `at`, bias
/// included.
///
/// # Safety
/// Every tap's input pixel (CB floats) of the J outputs readable from `at`, KH x KW x G x CB
/// weights at `taps.w`; AVX2+FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn grouped_pixels<const J: usize, const G: usize>(
    at: *const f32,
    taps: &Taps,
    bias: __m256,
) -> [__m256; J] {
    use crate::arch::dwconv::CB;
    let [kh, kw] = taps.kernel;
    let [dh, dw] = taps.dilation;
    let sw = taps.stride_w;
    let mut acc = [bias; J];
    for ky in 0..kh {
        for kx in 0..kw {
            // SAFETY: the caller's contract.
            unsafe {
                let px = at.add((ky * dh * taps.pw + kx * dw) * CB);
                let w = taps.w.add((ky * kw + kx) * G * CB);
                let wv: [__m256; G] = std::array::from_fn(|i| _mm256_loadu_ps(w.add(i * CB)));
                // Pixel by pixel, input by input. (Input-major order, each shuffle reading its
                // pixel from memory, measured even; a stride-1 variant that spread each pixel
                // once for its three taps, weights from memory, ran 0.72x.)
                unroll!(j in [0, 1, 2, 3, 4, 5, 6, 7] {
                    if j < J {
                        let x = _mm256_loadu_ps(px.add(j * sw * CB));
                        unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7] {
                            if i < G {
                                acc[j] = _mm256_fmadd_ps(group_lanes::<G>(x, i), wv[i], acc[j]);
                            }
                        });
                    }
                });
            }
        }
    }
    acc
}
