//! NEON kernels. 32 q registers: the 8x12 GEMM tile keeps 24 accumulators (8 rows x 3
//! vectors of 4), three B vectors and the A values in registers.

use crate::arch::{store_tile_scalar, Isa};
use crate::kernels::{GemmTile, GemmUkernel, KernelTable};
use core::arch::aarch64::*;

/// The NEON kernel table.
pub static TABLE: KernelTable = KernelTable {
    isa: Isa::Neon,
    gemm: &[F32_GEMM_8X12, F32_GEMM_4X16],
    dwconv: F32_DWCONV_PLANE,
    activation: F32_ACT,
    winograd: F32_WINOGRAD,
    gather: crate::arch::gather_scalar,
    pool_plane,
    pool_channels_last,
    transpose: crate::arch::transpose_scalar,
    conv_oc: F32_CONV_OC,
    conv_oc_wide: None,
    conv_oc_seven: None,
    gemm_shallow: None,
    gemm_deep: None,
    deinterleave2: crate::arch::deinterleave2_scalar,
};

macro_rules! gemm_kernel {
    ($const:ident, $fn:ident, $name:literal, $mr:literal, $nv:literal) => {
        /// GEMM microkernel descriptor.
        pub const $const: GemmUkernel = GemmUkernel {
            name: $name,
            isa: Isa::Neon,
            mr: $mr,
            nr: $nv * 4,
            run: $fn,
            narrow: None,
        };
        unsafe fn $fn(t: &GemmTile) {
            // SAFETY: reached only through TABLE after NEON was detected; the caller upholds
            // the tile contract.
            unsafe { gemm_tile::<$mr, $nv>(t) }
        }
    };
}

gemm_kernel!(F32_GEMM_8X12, f32_gemm_8x12, "f32_gemm_8x12__neon", 8, 3);
gemm_kernel!(F32_GEMM_4X16, f32_gemm_4x16, "f32_gemm_4x16__neon", 4, 4);

/// `C[MR x 4 NV] (+)= A~ B~`; the epilogue goes through the shared scalar store (NEON tiles
/// are small, and the store is outside the K loop).
///
/// # Safety
/// NEON is available and `t` satisfies the contract of `GemmUkernel::run`.
#[target_feature(enable = "neon")]
unsafe fn gemm_tile<const MR: usize, const NV: usize>(t: &GemmTile) {
    let mut acc = [[vdupq_n_f32(0.0); NV]; MR];
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
    for p in 0..t.k {
        let b = if t.b_off.is_null() {
            t.b.wrapping_add(p * 4 * NV)
        } else {
            // SAFETY: b_off holds k offsets (the tile contract).
            t.b.wrapping_add(unsafe { *t.b_off.add(p) })
        };
        let mut bv = [vdupq_n_f32(0.0); NV];
        for (v, slot) in bv.iter_mut().enumerate() {
            // SAFETY: B row p has NR readable floats (the tile contract).
            *slot = unsafe { vld1q_f32(b.add(4 * v)) };
        }
        for (row, &r) in acc.iter_mut().zip(&rows) {
            // SAFETY: a packed A~ holds k * MR floats, rows in place k floats each (the tile
            // contract); this step reads element p of each row.
            let ai = unsafe { *r.add(p * step) };
            for v in 0..NV {
                row[v] = vfmaq_n_f32(row[v], bv[v], ai);
            }
        }
    }
    let mut tile = [0f32; 128];
    for (i, row) in acc.iter().enumerate() {
        for (v, &r) in row.iter().enumerate() {
            // SAFETY: MR * 4 NV <= 128 for the kernels above.
            unsafe { vst1q_f32(tile.as_mut_ptr().add(i * 4 * NV + 4 * v), r) };
        }
    }
    // SAFETY: the caller's tile contract; tile holds MR rows of 4 NV floats.
    unsafe { store_tile_scalar(&tile, 4 * NV, t) };
}

crate::arch::dw_plane_kernel!(
    Neon,
    "f32_dwconv_plane__neon",
    "f32_dwconv_cb8__neon",
    "neon",
    crate::arch::dwconv::ScalarInterleave
);
crate::arch::pool_kernel!(Neon, "neon");
crate::arch::act_kernel!(Neon, "f32_act__neon", "neon");
crate::arch::wino_kernel!(
    Neon,
    "f32_winograd__neon",
    "neon",
    crate::arch::winograd::ScalarGather
);

/// `direct_oc` tile kernel: 6 pixels x 16 channels in 24 q accumulators, four weight vectors
/// and each pixel's input value (`vfmaq_n_f32`) a tap. The generic body under NEON had LLVM
/// vectorize the channel loop its own way, in a mix of 2- and 4-lane FMAs with a dozen
/// accumulators stored to and reloaded from the stack on every tap (seen in the
/// disassembly; qemu gives no timing).
pub const F32_CONV_OC: crate::kernels::OcUkernel = crate::kernels::OcUkernel {
    name: "f32_conv_oc_6x16__neon",
    isa: Isa::Neon,
    mr: crate::kernels::OC_MR,
    panels: 1,
    run: conv_oc,
};

/// Vectors of 4 channels a pixel.
const OC_VECTORS: usize = crate::kernels::OC_NR / 4;

/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`] on a CPU with NEON.
#[target_feature(enable = "neon")]
unsafe fn conv_oc(t: &crate::kernels::OcTile) {
    use crate::kernels::{OC_MR, OC_NR};
    let mut acc = [[vdupq_n_f32(0.0); OC_VECTORS]; OC_MR];
    let px: [*const f32; OC_MR] = std::array::from_fn(|i| t.img.wrapping_add(t.bases[i]));
    let mut w = t.w;
    for p in 0..t.k {
        // SAFETY: offsets holds k entries, w k rows of 16 floats, and every pixel slot's
        // taps are readable (the contract).
        unsafe {
            let o = *t.offsets.add(p);
            let mut wv = [vdupq_n_f32(0.0); OC_VECTORS];
            for (v, slot) in wv.iter_mut().enumerate() {
                *slot = vld1q_f32(w.add(4 * v));
            }
            for (row, &x) in acc.iter_mut().zip(&px) {
                let a = *x.add(o);
                for v in 0..OC_VECTORS {
                    row[v] = vfmaq_n_f32(row[v], wv[v], a);
                }
            }
            w = w.add(OC_NR);
        }
    }
    let mut tile = [[0f32; OC_NR]; OC_MR];
    for (dst, row) in tile.iter_mut().zip(&acc) {
        for (v, &r) in row.iter().enumerate() {
            // SAFETY: floats 4 v..4 v + 4 of a row of OC_NR.
            unsafe { vst1q_f32(dst.as_mut_ptr().add(4 * v), r) };
        }
    }
    // SAFETY: forwarded output contract.
    unsafe { crate::arch::store_oc_tile(&tile, t) }
}
