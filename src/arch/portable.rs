//! The portable tier: the `wide` crate at the build's baseline (SSE2 on x86_64, NEON on
//! aarch64), no runtime feature needed. It is the fallback on any CPU and the reference point
//! for the intrinsic tiers. Note `a * b + c` rather than `mul_add`: on a baseline x86_64
//! build `mul_add` becomes a libm call (44 s against 6.3 s for an axpy under qemu).

use crate::arch::{store_tile_scalar, Isa};
use crate::kernels::{GemmTile, GemmUkernel, KernelTable};
use wide::f32x8;

/// The portable kernel table.
pub static TABLE: KernelTable = KernelTable {
    isa: Isa::Portable,
    gemm: &[F32_GEMM_4X8],
    dwconv: F32_DWCONV_PLANE,
    activation: F32_ACT,
    winograd: crate::arch::winograd::F32_WINOGRAD_PORTABLE,
    gather: crate::arch::gather_scalar,
    pool_plane: crate::algo::pool::pool_plane,
    pool_channels_last: crate::algo::pool::pool_channels_last,
    transpose: crate::arch::transpose_scalar,
    conv_oc: F32_CONV_OC,
    conv_oc_wide: None,
    conv_oc_seven: None,
    gemm_shallow: None,
    gemm_deep: None,
    deinterleave2: crate::arch::deinterleave2_scalar,
};

/// 4x8 GEMM tile on `wide::f32x8` (4 accumulators: 8 xmm on SSE2, 8 q registers on NEON).
pub const F32_GEMM_4X8: GemmUkernel = GemmUkernel {
    name: "f32_gemm_4x8__portable",
    isa: Isa::Portable,
    mr: 4,
    nr: 8,
    run: f32_gemm_4x8,
    narrow: None,
};

unsafe fn f32_gemm_4x8(t: &GemmTile) {
    const MR: usize = 4;
    const NR: usize = 8;
    // Element (i, p) of A at rows[i] + p * step: a packed panel (row i at a + i, steps MR
    // floats apart), or rows read in place (row i at a + i * a_rs, rows past m repeating
    // row m - 1, steps one float apart).
    let (rows, step): ([*const f32; MR], usize) = if t.a_rs == 0 {
        (std::array::from_fn(|i| t.a.wrapping_add(i)), MR)
    } else {
        (
            std::array::from_fn(|i| t.a.wrapping_add(i.min(t.m - 1) * t.a_rs)),
            1,
        )
    };
    let mut acc = [f32x8::ZERO; MR];
    for p in 0..t.k {
        let row = if t.b_off.is_null() {
            t.b.wrapping_add(p * NR)
        } else {
            // SAFETY: b_off holds k offsets (the tile contract).
            t.b.wrapping_add(unsafe { *t.b_off.add(p) })
        };
        // SAFETY: B row p has NR readable floats (the tile contract).
        let bp = unsafe { std::slice::from_raw_parts(row, NR) };
        let bv = f32x8::from(<[f32; 8]>::try_from(bp).unwrap_or([0.0; 8]));
        for (a, &r) in acc.iter_mut().zip(&rows) {
            // SAFETY: a packed A~ holds k * MR floats, rows in place k floats each (the tile
            // contract); this step reads element p of each row.
            *a += f32x8::splat(unsafe { *r.add(p * step) }) * bv;
        }
    }
    let mut tile = [0f32; MR * NR];
    for (i, r) in acc.iter().enumerate() {
        tile[i * NR..(i + 1) * NR].copy_from_slice(&r.to_array());
    }
    // SAFETY: the caller's tile contract; tile holds MR rows of NR floats.
    unsafe { store_tile_scalar(&tile, NR, t) };
}

/// FMA-peak probe of the portable tier: 8 independent multiply-add chains on `f32x8`.
/// FLOPs done: iters * 8 * 8 * 2.
pub fn peak_probe(iters: u64) -> Option<f32> {
    let mut acc = [f32x8::splat(0.0); 8];
    let m = f32x8::splat(0.999_999);
    let c = f32x8::splat(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = *a * m + c;
        }
    }
    Some(acc.iter().map(|a| a.reduce_add()).sum())
}

/// Depthwise plane kernel at the build's baseline.
pub const F32_DWCONV_PLANE: crate::arch::dwconv::DwUkernel = crate::arch::dwconv::DwUkernel {
    name: "f32_dwconv_plane__portable",
    isa: Isa::Portable,
    run: dw_plane,
    block_name: "f32_dwconv_cb8__portable",
    block: dw_block,
    interleave:
        <crate::arch::dwconv::ScalarInterleave as crate::arch::dwconv::Interleave>::interleave,
    direct: None,
    channels_last: None,
};

fn dw_block(p: &mut crate::arch::dwconv::DwBlock) {
    crate::arch::dwconv::dw_block_generic(p, |a, b, c| a * b + c)
}

fn dw_plane(p: &mut crate::arch::dwconv::DwPlane) {
    crate::arch::dwconv::dw_plane_generic(p, |a, b, c| a * b + c)
}

/// Activation kernel at the build's baseline.
pub const F32_ACT: crate::arch::activation::ActUkernel = crate::arch::activation::ActUkernel {
    name: "f32_act__portable",
    isa: Isa::Portable,
    run: crate::arch::activation::apply_generic,
};

/// `direct_oc` tile kernel at the build's baseline.
pub const F32_CONV_OC: crate::kernels::OcUkernel = crate::kernels::OcUkernel {
    name: "f32_conv_oc_6x16__portable",
    isa: Isa::Portable,
    mr: crate::kernels::OC_MR,
    panels: 1,
    run: conv_oc,
};

unsafe fn conv_oc(t: &crate::kernels::OcTile) {
    // SAFETY: forwarded tile contract (the portable tier needs no CPU feature).
    unsafe { crate::arch::conv_oc_generic(t, |a, b, c| a * b + c) }
}
