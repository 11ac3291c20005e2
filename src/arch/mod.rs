//! The only place with `core::arch` and `#[target_feature]`: CPU detection, the ISA tiers,
//! and each tier's kernel table. Detection runs once; `CONVKIT_ISA` (or an explicit ISA in
//! the plan options) pins a tier, and asking for one the CPU lacks is an error, never a
//! silent fallback.

use crate::error::{Error, Result};
use crate::kernels::KernelTable;
use std::sync::OnceLock;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod activation;
pub mod dwconv;
pub mod winograd;
pub(crate) use winograd::wino_kernel;

/// Hints that the floats `from..to` of `data` will be read soon: a software prefetch of each
/// cache line into L1 (nothing where the target has none; the range is clipped to `data`).
#[inline]
pub fn prefetch_read(data: &[f32], from: usize, to: usize) {
    let to = to.min(data.len());
    let mut at = from;
    while at < to {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults and changes no memory; `at` lies inside `data`.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().add(at) as *const i8);
        }
        at += 16;
    }
}

/// Declares a tier's depthwise plane kernel: the generic body of [`dwconv`] compiled under
/// the tier's target features, behind a safe entry that checks the tier is available.
macro_rules! dw_plane_kernel {
    ($isa:ident, $name:literal, $block_name:literal, $features:literal, $interleave:ty) => {
        crate::arch::dw_plane_kernel!(
            $isa,
            $name,
            $block_name,
            $features,
            $interleave,
            |_p: &mut crate::arch::dwconv::DwBlock| false,
            |_p: &mut crate::arch::dwconv::DwPlane| false
        );
    };
    ($isa:ident, $name:literal, $block_name:literal, $features:literal, $interleave:ty, $fast:expr, $plane_fast:expr) => {
        crate::arch::dw_plane_kernel!(
            $isa,
            $name,
            $block_name,
            $features,
            $interleave,
            $fast,
            $plane_fast,
            None,
            None
        );
    };
    // `$fast` takes the blocks it has a hand-written kernel for (returns true), the generic
    // body the rest; `$plane_fast` likewise for planes; `$direct` is the tier's direct-plane
    // kernel, if any; `$channels_last` its channels-last kernel, if any.
    ($isa:ident, $name:literal, $block_name:literal, $features:literal, $interleave:ty, $fast:expr, $plane_fast:expr, $direct:expr, $channels_last:expr) => {
        /// Depthwise kernels: the generic bodies vectorized under this tier's features.
        pub const F32_DWCONV_PLANE: crate::arch::dwconv::DwUkernel =
            crate::arch::dwconv::DwUkernel {
                name: $name,
                isa: Isa::$isa,
                run: dw_plane,
                block_name: $block_name,
                block: dw_block,
                interleave: <$interleave as crate::arch::dwconv::Interleave>::interleave,
                direct: $direct,
                channels_last: $channels_last,
            };

        fn dw_block(p: &mut crate::arch::dwconv::DwBlock) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { dw_block_tf(p) }
        }

        #[target_feature(enable = $features)]
        fn dw_block_tf(p: &mut crate::arch::dwconv::DwBlock) {
            if !($fast)(p) {
                crate::arch::dwconv::dw_block_generic(p, f32::mul_add)
            }
        }

        fn dw_plane(p: &mut crate::arch::dwconv::DwPlane) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { dw_plane_tf(p) }
        }

        #[target_feature(enable = $features)]
        fn dw_plane_tf(p: &mut crate::arch::dwconv::DwPlane) {
            if !($plane_fast)(p) {
                crate::arch::dwconv::dw_plane_generic(p, f32::mul_add)
            }
        }
    };
}
pub(crate) use dw_plane_kernel;

/// The `direct_oc` tile in plain Rust (LLVM vectorizes the channel loop): the body of the
/// tiers without a hand-written kernel.
///
/// # Safety
/// The contract of [`crate::kernels::OcUkernel::run`].
#[inline(always)]
pub(crate) unsafe fn conv_oc_generic(
    t: &crate::kernels::OcTile,
    fma: impl Fn(f32, f32, f32) -> f32,
) {
    use crate::kernels::{OC_MR, OC_NR};
    let mut acc = [[0f32; OC_NR]; OC_MR];
    for p in 0..t.k {
        // SAFETY: `offsets` holds k entries and `w` k rows of OC_NR (the contract).
        let (o, w) = unsafe {
            (
                *t.offsets.add(p),
                &*(t.w.add(p * OC_NR) as *const [f32; OC_NR]),
            )
        };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: every pixel slot's taps are readable (the contract).
            let a = unsafe { *t.img.add(t.bases[i] + o) };
            for (r, &wj) in row.iter_mut().zip(w) {
                *r = fma(a, wj, *r);
            }
        }
    }
    // A copy leaves by reference, so the loop's accumulators can stay in registers (see
    // the AVX2 kernel: with `&acc` LLVM stored them on every k step).
    let tile = acc;
    // SAFETY: forwarded contract.
    unsafe { store_oc_tile(&tile, t) }
}

/// Stores a `direct_oc` accumulator tile (pixel-major) into the output, channel by channel
/// or (`pixel_major`) pixel by pixel: C (when `load_c`), then bias, then the clamp, as
/// [`store_tile_scalar`] does for GEMM tiles.
///
/// # Safety
/// The output part of [`crate::kernels::OcUkernel::run`]'s contract.
#[inline(always)]
pub(crate) unsafe fn store_oc_tile(
    acc: &[[f32; crate::kernels::OC_NR]; crate::kernels::OC_MR],
    t: &crate::kernels::OcTile,
) {
    for j in 0..t.n {
        // SAFETY: bias is null or holds n floats, j < n.
        let bias = if t.bias.is_null() {
            0.0
        } else {
            unsafe { *t.bias.add(j) }
        };
        for (i, row) in acc.iter().enumerate().take(t.m) {
            let at = if t.pixel_major {
                i * t.cs + j
            } else {
                j * t.cs + i
            };
            // SAFETY: channel j < n, pixel i < m: inside the output the caller vouches for.
            let dst = unsafe { t.c.add(at) };
            let mut v = row[j];
            if t.load_c {
                // SAFETY: as above.
                v += unsafe { *dst };
            }
            v = clamp_nan(v + bias, t.lo, t.hi);
            // SAFETY: as above.
            unsafe { *dst = v };
        }
    }
}

/// Runs one `direct_oc` tile after checking everything it touches: `m` pixels whose image
/// offsets are `bases` (slots past `m` repeat a real pixel), all `k` taps of `offsets`,
/// weights `w` (`panels` panels of `k * OC_NR` floats), and `n` output channels of `m`
/// floats from `c_offset` at stride `cs` (`pixel_major`: `m` pixels of `n` channels at
/// stride `cs`); `load_c` adds what the output holds. Panics on a violated bound (an
/// internal invariant, as for the GEMM doors).
#[allow(clippy::too_many_arguments)]
pub fn run_oc_tile(
    uk: &crate::kernels::OcUkernel,
    img: &[f32],
    bases: &[usize; crate::kernels::OC_MR_MAX],
    offsets: &OffsetTable,
    w: &[f32],
    panels: usize,
    c: &SharedMut,
    c_offset: usize,
    cs: usize,
    pixel_major: bool,
    m: usize,
    n: usize,
    load_c: bool,
    bias: Option<&[f32]>,
    clamp: (f32, f32),
) {
    use crate::kernels::OC_NR;
    let k = offsets.len();
    assert!(
        (1..=uk.panels).contains(&panels),
        "{panels} panels for a kernel of {}",
        uk.panels
    );
    assert!(
        uk.isa.is_available(),
        "kernel {} needs a tier this CPU lacks",
        uk.name
    );
    assert!(
        (1..=uk.mr).contains(&m) && ((panels - 1) * OC_NR + 1..=panels * OC_NR).contains(&n),
        "tile {m} x {n} out of range for {panels} panels"
    );
    assert!(
        w.len() >= panels * k * OC_NR,
        "packed weights shorter than {panels} panels of k = {k}"
    );
    if k > 0 {
        let top = bases[..uk.mr].iter().max().copied().unwrap_or(0);
        assert!(
            top.checked_add(offsets.max())
                .is_some_and(|e| e < img.len()),
            "tile reads past the image"
        );
    }
    if pixel_major {
        c.assert_block(c_offset, cs, m, n);
    } else {
        c.assert_block(c_offset, cs, n, m);
    }
    if let Some(b) = bias {
        assert!(b.len() >= n, "bias shorter than the tile");
    }
    let tile = crate::kernels::OcTile {
        k,
        img: img.as_ptr(),
        bases: *bases,
        offsets: offsets.offsets().as_ptr(),
        w: w.as_ptr(),
        panels,
        c: c.ptr.wrapping_add(c_offset),
        cs,
        pixel_major,
        m,
        n,
        load_c,
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        lo: clamp.0,
        hi: clamp.1,
    };
    // SAFETY: the tier is available and every bound of the contract was checked above; the
    // tile's outputs belong to the calling task (the SharedMut invariant).
    unsafe { (uk.run)(&tile) }
}

/// A strided gather `dst[t] = src[t * stride]` (`KernelTable::gather`).
pub type GatherFn = fn(&mut [f32], &[f32], usize);

/// A two-phase deinterleave (`KernelTable::deinterleave2`).
pub type Deinterleave2Fn = fn(&mut [f32], &mut [f32], &[f32]);

/// `even[t] = src[2t]` and `odd[t] = src[2t + 1]`, element by element: the portable tier's
/// deinterleave and every tier's tail. Panics if `src` is too short (an internal invariant).
pub fn deinterleave2_scalar(even: &mut [f32], odd: &mut [f32], src: &[f32]) {
    for (t, e) in even.iter_mut().enumerate() {
        *e = src[2 * t];
    }
    for (t, o) in odd.iter_mut().enumerate() {
        *o = src[2 * t + 1];
    }
}

/// A transpose (`KernelTable::transpose`): `dst[j * dst_stride + i] = src[i * cols + j]`
/// for `i < rows`, `j < cols`, arguments `(src, rows, cols, dst, dst_stride)`.
pub type TransposeFn = fn(&[f32], usize, usize, &mut [f32], usize);

/// Checks a [`TransposeFn`]'s operands: `src` holds `rows x cols`, and every output row
/// (`cols` of them, `rows` floats each, `dst_stride` apart) lies inside `dst` without
/// overlapping the next. Panics otherwise (an internal invariant).
pub fn check_transpose(src: &[f32], rows: usize, cols: usize, dst: &[f32], dst_stride: usize) {
    assert!(
        rows.checked_mul(cols).is_some_and(|n| n <= src.len()),
        "transpose source shorter than {rows} x {cols}"
    );
    if rows > 0 && cols > 0 {
        assert!(
            (dst_stride >= rows || cols == 1)
                && (cols - 1)
                    .checked_mul(dst_stride)
                    .and_then(|e| e.checked_add(rows))
                    .is_some_and(|e| e <= dst.len()),
            "transpose output of {cols} rows of {rows} at stride {dst_stride} past its buffer"
        );
    }
}

/// [`TransposeFn`] element by element: the portable and NEON tiers' transpose, and every
/// tier's edges.
pub fn transpose_scalar(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], dst_stride: usize) {
    check_transpose(src, rows, cols, dst, dst_stride);
    for j in 0..cols {
        for (i, d) in dst[j * dst_stride..][..rows].iter_mut().enumerate() {
            *d = src[i * cols + j];
        }
    }
}

/// `dst[t] = src[t * stride]`, element by element: the portable tier's gather and every
/// tier's tail.
pub fn gather_scalar(dst: &mut [f32], src: &[f32], stride: usize) {
    for (t, d) in dst.iter_mut().enumerate() {
        *d = src[t * stride];
    }
}

/// Declares a tier's activation kernel: the generic body of [`activation`] compiled under the
/// tier's target features, behind a safe entry that checks the tier is available. (NEON's;
/// the x86 tiers write the activations that divide by hand.)
#[cfg(target_arch = "aarch64")]
macro_rules! act_kernel {
    ($isa:ident, $name:literal, $features:literal) => {
        /// Activation kernel: the generic body vectorized under this tier's features.
        pub const F32_ACT: crate::arch::activation::ActUkernel =
            crate::arch::activation::ActUkernel {
                name: $name,
                isa: Isa::$isa,
                run: act,
            };

        fn act(a: crate::epilogue::Activation, data: crate::arch::activation::RowsMut<'_>) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { act_tf(a, data) }
        }

        #[target_feature(enable = $features)]
        fn act_tf(a: crate::epilogue::Activation, data: crate::arch::activation::RowsMut<'_>) {
            crate::arch::activation::apply_generic_with(a, data, f32::mul_add)
        }
    };
}
#[cfg(target_arch = "aarch64")]
pub(crate) use act_kernel;

/// Declares a tier's plane-pooling kernel: the generic body of [`crate::algo::pool::pool_plane`]
/// compiled under the tier's target features, behind a safe entry that checks the tier.
macro_rules! pool_kernel {
    ($isa:ident, $features:literal) => {
        /// Pools one plane (the generic body vectorized under this tier's features).
        pub fn pool_plane(args: &crate::algo::pool::PlaneArgs, plane: &[f32], out: &mut [f32]) {
            assert!(
                Isa::$isa.is_available(),
                "pooling for {:?} on a CPU without it",
                Isa::$isa
            );
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { pool_plane_tf(args, plane, out) }
        }

        #[target_feature(enable = $features)]
        fn pool_plane_tf(args: &crate::algo::pool::PlaneArgs, plane: &[f32], out: &mut [f32]) {
            crate::algo::pool::pool_plane(args, plane, out)
        }

        /// Pools a channels-last band (the generic body vectorized under this tier's
        /// features).
        pub fn pool_channels_last(
            args: &crate::algo::pool::PlaneArgs,
            band: &[f32],
            channels: usize,
            out: &mut [f32],
            plane_stride: usize,
            nhwc_out: bool,
        ) {
            assert!(
                Isa::$isa.is_available(),
                "pooling for {:?} on a CPU without it",
                Isa::$isa
            );
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { pool_channels_last_tf(args, band, channels, out, plane_stride, nhwc_out) }
        }

        #[target_feature(enable = $features)]
        fn pool_channels_last_tf(
            args: &crate::algo::pool::PlaneArgs,
            band: &[f32],
            channels: usize,
            out: &mut [f32],
            plane_stride: usize,
            nhwc_out: bool,
        ) {
            crate::algo::pool::pool_channels_last(args, band, channels, out, plane_stride, nhwc_out)
        }
    };
}
pub(crate) use pool_kernel;
pub mod portable;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// An instruction-set tier.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// The `wide` crate at the build's baseline (SSE2 on x86_64, NEON on aarch64).
    Portable,
    /// AVX2 + FMA intrinsics.
    Avx2,
    /// AVX-512F intrinsics.
    Avx512,
    /// NEON intrinsics (aarch64).
    Neon,
}

/// Every tier, in a fixed order.
pub const ALL_ISAS: [Isa; 4] = [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Portable];

impl Isa {
    /// The SPEC name: `avx512`, `avx2`, `neon`, `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parses a SPEC name (not `auto`).
    pub fn parse(s: &str) -> Result<Isa> {
        match s {
            "portable" => Ok(Isa::Portable),
            "avx2" => Ok(Isa::Avx2),
            "avx512" => Ok(Isa::Avx512),
            "neon" => Ok(Isa::Neon),
            other => Err(Error::Isa(format!(
                "unknown ISA `{other}` (expected avx512, avx2, neon, portable or auto)"
            ))),
        }
    }

    /// Whether this CPU can run the tier (detected once per process; one load afterwards,
    /// since the kernels' safe door asks on every tile).
    pub fn is_available(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 4]> = OnceLock::new();
        AVAILABLE.get_or_init(|| ALL_ISAS.map(Isa::detect))[self.index()]
    }

    fn index(self) -> usize {
        match self {
            Isa::Avx512 => 0,
            Isa::Avx2 => 1,
            Isa::Neon => 2,
            Isa::Portable => 3,
        }
    }

    fn detect(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The tier's kernel table. Errors when the CPU lacks the tier.
    pub fn kernels(self) -> Result<&'static KernelTable> {
        if !self.is_available() {
            return Err(Error::Isa(format!(
                "ISA `{}` is not available on this CPU (available: {})",
                self.name(),
                available_isas()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match avx512_datapath() {
                Avx512Datapath::Full512 => &x86_64::avx512::TABLE,
                Avx512Datapath::Split256 => &x86_64::avx512::TABLE_SPLIT256,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &x86_64::avx2::TABLE,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => &aarch64::neon::TABLE,
            _ => &portable::TABLE,
        })
    }
}

/// How the CPU executes a 512-bit FMA, which decides the AVX-512 tier's GEMM tile and
/// blocking ([`Isa::kernels`], [`crate::gemm::Blocking::derive`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Avx512Datapath {
    /// Whole: Intel's server cores, two 512-bit FMAs a cycle, twice the AVX2 tier's peak.
    Full512,
    /// As two 256-bit halves: AMD Zen 4, one zmm FMA a cycle, the same FLOP peak as AVX2
    /// (`convkit info` there: 112-117 GFLOP/s on either tier).
    Split256,
}

/// This CPU's [`Avx512Datapath`], detected once: `Split256` on AMD family 19h (Zen 3 and
/// Zen 4, of which only Zen 4 has AVX-512), else `Full512` (Zen 5, family 1Ah, has whole
/// 512-bit units on its desktop and server parts). `CONVKIT_AVX512_DATAPATH=512|256`
/// overrides the detection, for side-by-side runs of the two tables on one machine.
pub fn avx512_datapath() -> Avx512Datapath {
    static DATAPATH: OnceLock<Avx512Datapath> = OnceLock::new();
    *DATAPATH.get_or_init(
        || match std::env::var("CONVKIT_AVX512_DATAPATH").as_deref() {
            Ok("512") => Avx512Datapath::Full512,
            Ok("256") => Avx512Datapath::Split256,
            _ => detect_avx512_datapath(),
        },
    )
}

/// Whether the AVX-512 tier's GEMM sizes its K blocks from L2 rather than L1
/// ([`crate::gemm::KcRule`]): on AMD's AVX-512 cores (family 19h, Zen 4, and 1Ah, Zen 5),
/// whose private 1 MiB L2 feeds the B micro-panels fast enough that a deep KC pays, and on
/// any CPU taken as [`Avx512Datapath::Split256`]; not on Intel's (measured on a Xeon: KC
/// past L1 lost 2-5%). `CONVKIT_AVX512_KC=l1|l2` overrides it, for side-by-side runs.
pub fn avx512_kc_from_l2() -> bool {
    static FROM_L2: OnceLock<bool> = OnceLock::new();
    *FROM_L2.get_or_init(|| match std::env::var("CONVKIT_AVX512_KC").as_deref() {
        Ok("l1") => false,
        Ok("l2") => true,
        _ => avx512_datapath() == Avx512Datapath::Split256 || is_amd_avx512_core(),
    })
}

fn is_amd_avx512_core() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let (vendor, family) = x86_64::vendor_and_family();
        &vendor == b"AuthenticAMD" && family >= 0x19
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn detect_avx512_datapath() -> Avx512Datapath {
    #[cfg(target_arch = "x86_64")]
    {
        let (vendor, family) = x86_64::vendor_and_family();
        if &vendor == b"AuthenticAMD" && family == 0x19 {
            return Avx512Datapath::Split256;
        }
    }
    Avx512Datapath::Full512
}

/// The tiers this CPU can run, best first.
pub fn available_isas() -> Vec<Isa> {
    ALL_ISAS
        .iter()
        .copied()
        .filter(|i| i.is_available())
        .collect()
}

/// The best tier this CPU runs.
pub fn best_isa() -> Isa {
    available_isas()[0]
}

/// The tier used when none is named: `CONVKIT_ISA` if set (an error if it names an unknown
/// or unavailable tier), else the best detected. Resolved once per process.
pub fn default_isa() -> Result<Isa> {
    static CHOSEN: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| match std::env::var("CONVKIT_ISA") {
            Ok(s) if !s.is_empty() && s != "auto" => {
                let isa = Isa::parse(&s).map_err(|e| format!("CONVKIT_ISA: {e}"))?;
                isa.kernels().map_err(|e| format!("CONVKIT_ISA: {e}"))?;
                Ok(isa)
            }
            _ => Ok(best_isa()),
        })
        .clone()
        .map_err(Error::Isa)
}

/// Resolves a user's ISA request: `None` or `auto` is [`default_isa`], a name must be
/// available.
pub fn resolve_isa(name: Option<&str>) -> Result<Isa> {
    match name {
        None | Some("auto") => default_isa(),
        Some(n) => {
            let isa = Isa::parse(n)?;
            isa.kernels()?;
            Ok(isa)
        }
    }
}

/// CPU feature flags worth reporting (`convkit info`).
pub fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => { $( if is_x86_feature_detected!($name) { f.push($name); } )* };
        }
        probe!(
            "sse2",
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512dq",
            "avx512bf16",
            "avx512vnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($name) { f.push($name); } )* };
        }
        probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2");
    }
    f
}

/// Stores a finished tile held as `acc` (row-major, `nr` floats a row) into C with the tile's
/// epilogue, for the rows and columns the tile asks for. The edge path of every kernel and
/// the whole store of the portable kernel.
///
/// # Safety
/// `t` satisfies the contract of [`crate::kernels::GemmUkernel::run`], and `acc` holds at
/// least `t.m` rows of `nr >= t.n` floats.
#[inline]
pub(crate) unsafe fn store_tile_scalar(acc: &[f32], nr: usize, t: &crate::kernels::GemmTile) {
    use crate::kernels::TileBias;
    for i in 0..t.m {
        for j in 0..t.n {
            // SAFETY: i < m and j < n, inside the C tile the caller vouches for.
            let dst = unsafe { t.c.add(i * t.rsc + j) };
            let mut v = acc[i * nr + j];
            if t.load_c {
                // SAFETY: as above.
                v += unsafe { *dst };
            }
            if t.finish {
                v += match t.bias {
                    TileBias::None => 0.0,
                    // SAFETY: a Row bias holds m floats, a Col bias n.
                    TileBias::Row(p) => unsafe { *p.add(i) },
                    // SAFETY: as above.
                    TileBias::Col(p) => unsafe { *p.add(j) },
                };
                v = clamp_nan(v, t.lo, t.hi);
            }
            // SAFETY: as above.
            unsafe { *dst = v };
        }
    }
}

/// The epilogue's clamp with NaN passing through (SPEC: NaN propagates as in the reference).
#[inline(always)]
pub(crate) fn clamp_nan(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// A mutable matrix that parallel tasks write in disjoint tiles (the C of a GEMM split by
/// columns is not a set of disjoint slices). Every write is bounds-checked against the
/// whole buffer; the drivers guarantee that no two tasks write the same tile.
pub struct SharedMut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: SharedMut is a &mut [f32] whose tiles are handed to tasks that write disjoint
// regions (the invariant of every driver that builds one); f32 is Send.
unsafe impl Send for SharedMut<'_> {}
// SAFETY: as above: concurrent tasks never touch the same element.
unsafe impl Sync for SharedMut<'_> {}

impl<'a> SharedMut<'a> {
    /// Wraps an exclusive borrow.
    pub fn new(buf: &'a mut [f32]) -> Self {
        SharedMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _borrow: std::marker::PhantomData,
        }
    }
    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Asserts that `rows` rows of `cols` elements from `offset`, `stride` apart, lie inside
    /// the buffer and do not overlap (a kernel's block of C; nothing to check when empty).
    /// Panics otherwise: an internal invariant of the drivers, not reachable from input.
    fn assert_block(&self, offset: usize, stride: usize, rows: usize, cols: usize) {
        if rows == 0 || cols == 0 {
            return;
        }
        assert!(
            cols <= stride || rows == 1,
            "stride {stride} narrower than the block's {cols}"
        );
        let end = offset + (rows - 1) * stride + cols;
        assert!(
            end <= self.len,
            "block ends at {end}, past the buffer's {}",
            self.len
        );
    }
    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Copies `dst.len()` floats starting at `off` into `dst`. The region must belong to the
    /// calling task (the driver's invariant, as for tile writes).
    pub fn read_into(&self, off: usize, dst: &mut [f32]) {
        assert!(
            off.checked_add(dst.len())
                .is_some_and(|end| end <= self.len),
            "read of {} at {off} past the buffer's {}",
            dst.len(),
            self.len
        );
        // SAFETY: the range lies inside the buffer (checked above), and no other task writes
        // it (the region belongs to the caller).
        let src = unsafe { std::slice::from_raw_parts(self.ptr.add(off), dst.len()) };
        crate::gemm::pack::copy_floats(dst, src);
    }
    /// Hints that the line holding element `off` will be written soon (a software prefetch
    /// into L1; nothing where the tier has none, or past the buffer).
    #[inline(always)]
    pub fn prefetch(&self, off: usize) {
        if off < self.len {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch never faults and changes no memory; the address lies inside
            // the buffer (checked above).
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.ptr.add(off) as *const i8);
            }
        }
    }

    /// Writes the `N` floats of `src` at `off`, inlined (a fixed-size store): the region must
    /// belong to the calling task. (The Winograd input transform's stores through
    /// [`SharedMut::write_from`] were a call each, 4% of resnet50.res3.3x3.)
    #[inline(always)]
    pub fn write_array<const N: usize>(&self, off: usize, src: &[f32; N]) {
        assert!(
            off.checked_add(N).is_some_and(|end| end <= self.len),
            "write of {N} at {off} past the buffer's {}",
            self.len
        );
        // SAFETY: the N floats lie inside the buffer (checked above), and no other task
        // touches them (the region belongs to the caller).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), N) };
    }

    /// Writes `src` at `off`. The region must belong to the calling task.
    pub fn write_from(&self, off: usize, src: &[f32]) {
        assert!(
            off.checked_add(src.len())
                .is_some_and(|end| end <= self.len),
            "write of {} at {off} past the buffer's {}",
            src.len(),
            self.len
        );
        // SAFETY: the range lies inside the buffer (checked above), and no other task touches
        // it (the region belongs to the caller).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), src.len()) };
        crate::gemm::pack::copy_floats(dst, src);
    }
}

/// Runs one GEMM microkernel call on checked slices: the safe door to the kernels.
///
/// `a` and `b` are the packed micro-panels (at least `k * mr` and `k * nr` floats), the C
/// tile starts at `c_offset` in `c` with row stride `rsc`; `bias` is per row (`m` floats) or
/// per column (`n` floats) and applied with the clamp when `finish`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn run_gemm_tile(
    uk: &crate::kernels::GemmUkernel,
    k: usize,
    a: &[f32],
    b: BPanel,
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    m: usize,
    n: usize,
    load_c: bool,
    finish: bool,
    bias: GemmBias,
    clamp: (f32, f32),
) {
    assert!(
        m >= 1 && m <= uk.mr,
        "tile of {m} rows outside 1..={}",
        uk.mr
    );
    run_gemm_column(
        uk, k, a, b, c, c_offset, rsc, m, n, load_c, finish, bias, clamp,
    );
}

/// The kernel's bias for a column of `rows` rows and `n` columns, after checking that a `Row`
/// bias covers the rows and a `Col` bias the columns (panics otherwise: an internal
/// invariant).
fn checked_tile_bias(bias: GemmBias, rows: usize, n: usize) -> crate::kernels::TileBias {
    use crate::kernels::TileBias;
    match bias {
        GemmBias::None => TileBias::None,
        GemmBias::Row(s) => {
            assert!(s.len() >= rows, "row bias shorter than the column");
            TileBias::Row(s.as_ptr())
        }
        GemmBias::Col(s) => {
            assert!(s.len() >= n, "column bias shorter than the tile");
            TileBias::Col(s.as_ptr())
        }
    }
}

/// Runs the microkernel down a column of C: `rows` rows (`rows.div_ceil(mr)` tiles, the last
/// possibly short) against one B micro-panel, `a` holding the tiles' packed A micro-panels one
/// after another (`k * mr` floats each). The checks are made once for the column, not per
/// tile: per-tile checks and tile set-up were 10% of resnet50.res2.1x1b's profile
/// (`block_tiles` 6.4%, `run_gemm_tile` 4.0%), whose tiles are only 64 deep.
///
/// The C column starts at `c_offset` (row stride `rsc`, `n` columns); a `Row` bias holds
/// `rows` floats, a `Col` bias `n`.
#[allow(clippy::too_many_arguments)]
pub fn run_gemm_column(
    uk: &crate::kernels::GemmUkernel,
    k: usize,
    a: &[f32],
    b: BPanel,
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    rows: usize,
    n: usize,
    load_c: bool,
    finish: bool,
    bias: GemmBias,
    clamp: (f32, f32),
) {
    use crate::kernels::GemmTile;
    if rows == 0 {
        return;
    }
    let tiles = rows.div_ceil(uk.mr);
    assert!(
        uk.isa.is_available(),
        "kernel {} needs a tier this CPU lacks",
        uk.name
    );
    assert!(n >= 1 && n <= uk.nr, "tile width {n} outside 1..={}", uk.nr);
    assert!(
        a.len() >= tiles * k * uk.mr,
        "packed A shorter than {tiles} panels of k = {k}"
    );
    let (b_ptr, b_off) = b.checked_parts(k, uk.nr);
    c.assert_block(c_offset, rsc, rows, n);
    let bias = checked_tile_bias(bias, rows, n);
    let column = GemmTile {
        k,
        a: a.as_ptr(),
        a_rs: 0,
        prefetch_lines: 0,
        prefetch: std::ptr::null(),
        b: b_ptr,
        b_off,
        c: c.ptr.wrapping_add(c_offset),
        rsc,
        m: rows,
        n,
        load_c,
        finish,
        bias,
        lo: clamp.0,
        hi: clamp.1,
    };
    if let Some((width, narrow)) = uk.narrow.filter(|&(width, _)| n <= width && tiles > 1) {
        debug_assert!(n <= width);
        // SAFETY: as for the tiles below (the checks above cover the whole column), and n is
        // within the narrow kernel's width.
        unsafe { narrow(&column) };
        return;
    }
    for t in 0..tiles {
        let tile = GemmTile {
            a: column.a.wrapping_add(t * k * uk.mr),
            ..column.rows_from(t * uk.mr, uk.mr)
        };
        // SAFETY: the tier is available and, for every tile of the column (checked above for
        // the whole column): its A panel lies inside `a`, every B row inside its buffer, its
        // rows of C inside the buffer, and a Row bias covers its rows.
        unsafe { (uk.run)(&tile) }
    }
}

/// Runs the microkernel down a column of C with A read in place: `rows` rows of A, row `i`
/// the `k` floats at `a[a_offset + i * a_rs..]` (an NHWC image's pixels), against the packed
/// B micro-panel `b` (`k * nr` floats); C as in [`run_gemm_column`]. The tiles prefetch the
/// lines of `prefetch` into L2 (the next B panel; empty for none), dealt in turn, at most a
/// line a K step. Each tile goes to the
/// tile kernel (`run`, never `narrow`: its edge kernels read A as packed panels). The checks
/// are made once for the column.
#[allow(clippy::too_many_arguments)]
pub fn run_gemm_column_in_place(
    uk: &crate::kernels::GemmUkernel,
    k: usize,
    a: &[f32],
    a_offset: usize,
    a_rs: usize,
    b: &[f32],
    prefetch: &[f32],
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    rows: usize,
    n: usize,
    load_c: bool,
    finish: bool,
    bias: GemmBias,
    clamp: (f32, f32),
) {
    use crate::kernels::GemmTile;
    if rows == 0 {
        return;
    }
    assert!(
        uk.isa.is_available(),
        "kernel {} needs a tier this CPU lacks",
        uk.name
    );
    assert!(n >= 1 && n <= uk.nr, "tile width {n} outside 1..={}", uk.nr);
    // The last row's last element: every row of every tile lies inside `a`.
    let a_end = (rows - 1)
        .checked_mul(a_rs)
        .and_then(|v| v.checked_add(a_offset)?.checked_add(k));
    assert!(
        a_end.is_some_and(|end| end <= a.len()),
        "A rows in place reach past the image's {} floats",
        a.len()
    );
    assert!(b.len() >= k * uk.nr, "packed B shorter than k = {k} rows");
    c.assert_block(c_offset, rsc, rows, n);
    let bias = checked_tile_bias(bias, rows, n);
    // A stride of zero would mean a packed panel; with one row (or k = 0) any stride reads
    // the same floats.
    let a_rs = a_rs.max(1);
    let column = GemmTile {
        k,
        a: a.as_ptr().wrapping_add(a_offset),
        a_rs,
        prefetch_lines: 0,
        prefetch: std::ptr::null(),
        b: b.as_ptr(),
        b_off: std::ptr::null(),
        c: c.ptr.wrapping_add(c_offset),
        rsc,
        m: rows,
        n,
        load_c,
        finish,
        bias,
        lo: clamp.0,
        hi: clamp.1,
    };
    // The lines of `prefetch` dealt to the tiles in turn, at most k a tile.
    let lines = prefetch.len().div_ceil(16);
    let tiles = rows.div_ceil(uk.mr);
    let share = lines.div_ceil(tiles);
    for (t, i0) in (0..rows).step_by(uk.mr).enumerate() {
        let first = (t * share).min(lines);
        let tile = GemmTile {
            a: column.a.wrapping_add(i0 * a_rs),
            prefetch_lines: share.min(lines - first),
            prefetch: prefetch.as_ptr().wrapping_add(16 * first),
            ..column.rows_from(i0, uk.mr)
        };
        // SAFETY: the tier is available and, for every tile of the column (checked above for
        // the whole column): its rows of A lie inside `a` (rows past the tile's m repeat its
        // last row), B's k rows inside `b`, its rows of C inside the buffer, and a Row bias
        // covers its rows.
        unsafe { (uk.run)(&tile) }
    }
}

/// Applies a band-pass activation to an `m x n` tile of C at `c_offset` (row stride `rsc`)
/// right after the microkernel finished it, while the tile is in L1: a separate pass over
/// the whole output was memory-bound (1.3 of wav2vec2.conv0's 5 ms).
pub fn activate_tile(
    kernel: &activation::ActUkernel,
    act: crate::epilogue::Activation,
    c: &SharedMut,
    c_offset: usize,
    rsc: usize,
    m: usize,
    n: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    c.assert_block(c_offset, rsc, m, n);
    // SAFETY: every row lies inside the buffer (checked above), and the tile belongs to the
    // calling task, as for the microkernel that just wrote it (the SharedMut invariant); the
    // rows live only for this call.
    let rows = unsafe { activation::RowsMut::from_raw(c.ptr.add(c_offset), rsc, m, n) };
    (kernel.run)(act, rows);
}

/// Where a GEMM tile reads B.
#[derive(Copy, Clone, Debug)]
pub enum BPanel<'a> {
    /// A packed micro-panel, `k * NR` floats.
    Packed(&'a [f32]),
    /// Rows of an image: row `p` is `x[base + offsets[p] ..][..NR]`.
    Indirect {
        /// The image (padded and phase-split by the direct algorithm).
        x: &'a [f32],
        /// The tile's base offset.
        base: usize,
        /// The per-row offsets, with their maximum.
        offsets: &'a OffsetTable,
    },
}

impl BPanel<'_> {
    /// The kernel's `(b, b_off)` for `k` rows of `nr` floats, after checking that every row
    /// lies inside its buffer (panics otherwise: an internal invariant).
    fn checked_parts(&self, k: usize, nr: usize) -> (*const f32, *const usize) {
        match *self {
            BPanel::Packed(b) => {
                assert!(b.len() >= k * nr, "packed B panel shorter than k = {k}");
                (b.as_ptr(), std::ptr::null())
            }
            BPanel::Indirect { x, base, offsets } => {
                assert!(
                    offsets.offsets.len() >= k,
                    "offset table shorter than k = {k}"
                );
                let end = base + offsets.max + nr;
                assert!(
                    end <= x.len(),
                    "indirect B reads up to {end}, past the image's {}",
                    x.len()
                );
                (x.as_ptr().wrapping_add(base), offsets.offsets.as_ptr())
            }
        }
    }
}

/// Offsets of B rows for indirect tiles, with their maximum computed once, so that each
/// tile checks its reads in O(1).
#[derive(Clone, Debug, Default)]
pub struct OffsetTable {
    offsets: Vec<usize>,
    max: usize,
}

impl OffsetTable {
    /// A table over `offsets`.
    pub fn new(offsets: Vec<usize>) -> Self {
        let max = offsets.iter().copied().max().unwrap_or(0);
        OffsetTable { offsets, max }
    }
    /// The offsets.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }
    /// The sub-table of rows `p0..p0 + k`.
    pub fn slice(&self, p0: usize, k: usize) -> OffsetTable {
        OffsetTable::new(self.offsets[p0..p0 + k].to_vec())
    }
    /// The largest offset.
    pub fn max(&self) -> usize {
        self.max
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }
    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// The bias of a GEMM tile, as slices starting at the tile's first row or column.
#[derive(Copy, Clone, Debug)]
pub enum GemmBias<'a> {
    /// None.
    None,
    /// Per row of C.
    Row(&'a [f32]),
    /// Per column of C.
    Col(&'a [f32]),
}
