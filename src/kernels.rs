//! The contract between the drivers (`gemm/`, `algo/`) and the ISA kernels (`arch/`):
//! kernels are data, a descriptor per kernel in a per-ISA static table.

use crate::arch::Isa;

/// How the bias enters a GEMM tile.
#[derive(Copy, Clone, Debug)]
pub enum TileBias {
    /// No bias.
    None,
    /// One value per row of C (per output channel in NCHW convolution); points at the tile's
    /// first row.
    Row(*const f32),
    /// One value per column of C (per output channel in NHWC convolution); points at the
    /// tile's first column.
    Col(*const f32),
}

/// One call of a GEMM microkernel: `C[m x n] (+)= A~ B~`, then on the last K block
/// `C = clamp(C + bias, lo, hi)`.
///
/// Packed layouts (zero-padded to full panels by the packers):
///
/// ```text
///   A~ (MR x k):  for p in 0..k { a[0][p], a[1][p], .., a[MR-1][p] }   -> k * MR floats
///   B~ (k x NR):  for p in 0..k { b[p][0], b[p][1], .., b[p][NR-1] }   -> k * NR floats
/// ```
///
/// With `b_off` set, B is not packed: row `p` is read at `b + b_off[p]` (an image row at the
/// right channel, kernel tap and phase), which is how the `direct` algorithm runs the same
/// microkernels without an im2col copy.
#[derive(Copy, Clone, Debug)]
pub struct GemmTile {
    /// Depth of this K block (may be 0: then only the C update/epilogue happens).
    pub k: usize,
    /// Packed A micro-panel, `k * MR` floats; or, when `a_rs` is not zero, A's first row.
    pub a: *const f32,
    /// A read in place (an NHWC image's pixels, whose channels lie contiguous): when not
    /// zero, row `i` of A is the `k` floats at `a + i * a_rs`, and rows from `m` on read row
    /// `m - 1` (their results are not stored). Zero: `a` is a packed micro-panel. Only the
    /// tile kernel (`run`) takes it, with packed B (`b_off` null); never `narrow`.
    pub a_rs: usize,
    /// With A in place: lines the tile prefetches into L2, one a K step from `prefetch`
    /// (64 bytes apart), at most `k` of them: the next B panel, so that its first tile does
    /// not wait on it. Zero for none.
    pub prefetch_lines: usize,
    /// Where the prefetched lines start.
    pub prefetch: *const f32,
    /// Packed B micro-panel, `k * NR` floats; or, when `b_off` is not null, the base that the
    /// offsets index from.
    pub b: *const f32,
    /// Indirect B (direct convolution without packing): when not null, `k` offsets, and row
    /// `p` of B is the `NR` floats at `b + b_off[p]`.
    pub b_off: *const usize,
    /// Top-left of the C tile.
    pub c: *mut f32,
    /// Row stride of C in elements (columns are contiguous).
    pub rsc: usize,
    /// Rows of C to write, 1..=MR.
    pub m: usize,
    /// Columns of C to write, 1..=NR.
    pub n: usize,
    /// Add the product to the existing C (later K blocks, or a preloaded residual).
    pub load_c: bool,
    /// Apply bias and clamp after the product (the last K block).
    pub finish: bool,
    /// The bias, applied when `finish`.
    pub bias: TileBias,
    /// Clamp lower bound, applied when `finish` (-inf for none).
    pub lo: f32,
    /// Clamp upper bound, applied when `finish` (+inf for none).
    pub hi: f32,
}

impl GemmTile {
    /// Rows `i0..` of this tile (or column of tiles), at most `mr` of them: C and a row bias
    /// moved to row `i0`, the row count cut; A is the caller's to move (its panels' layout
    /// depends on the kernel). Pointer arithmetic only (`wrapping_add`): nothing is read.
    pub fn rows_from(&self, i0: usize, mr: usize) -> GemmTile {
        GemmTile {
            c: self.c.wrapping_add(i0 * self.rsc),
            m: mr.min(self.m - i0),
            bias: match self.bias {
                TileBias::Row(p) => TileBias::Row(p.wrapping_add(i0)),
                other => other,
            },
            ..*self
        }
    }

    /// Columns `j0..j0 + n` of this tile (or column of tiles): C and a column bias moved to
    /// column `j0`, B to its column `j0` (packed B: rows keep their stride). Pointer
    /// arithmetic only (`wrapping_add`): nothing is read.
    pub fn cols_from(&self, j0: usize, n: usize) -> GemmTile {
        GemmTile {
            b: self.b.wrapping_add(j0),
            c: self.c.wrapping_add(j0),
            n,
            bias: match self.bias {
                TileBias::Col(p) => TileBias::Col(p.wrapping_add(j0)),
                other => other,
            },
            ..*self
        }
    }
}

/// A microkernel entry: one tile (or, for a narrow kernel, one column of tiles).
pub type TileFn = unsafe fn(&GemmTile);

/// A GEMM microkernel descriptor.
/// Only convkit builds these (`#[non_exhaustive]`): its safe doors trust a descriptor's
/// function to honour the kernel contract.
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct GemmUkernel {
    /// Canonical name, `f32_gemm_{MR}x{NR}__{isa}`.
    pub name: &'static str,
    /// The tier it needs.
    pub isa: Isa,
    /// Rows of the C tile.
    pub mr: usize,
    /// Columns of the C tile (the vector dimension).
    pub nr: usize,
    /// The kernel.
    ///
    /// # Safety
    /// The CPU supports `isa`; `a` holds `k * mr` readable floats (with `a_rs`: rows
    /// `0..m` of `k` floats at stride `a_rs`, and `b_off` is null); `b` holds `k * nr`, or
    /// with `b_off`, `b + b_off[p]` starts `nr` readable floats for each `p < k`; `c` is
    /// valid for `m` rows of `n` floats at stride `rsc`, with `1 <= m <= mr`, `1 <= n <= nr`;
    /// a `Row` bias holds `m` floats, a `Col` bias `n`.
    pub run: unsafe fn(&GemmTile),
    /// A kernel for narrow columns, `(widest n, kernel)`: it takes a whole column of tiles
    /// in one call (`m` may exceed `mr`: `m.div_ceil(mr)` A panels one after another, each
    /// `k * mr` floats, C rows at stride `rsc` throughout) and, for `n` up to its width,
    /// computes the same bits as `run` tile by tile. `None` where the tier has none.
    ///
    /// # Safety
    /// As `run`, with `1 <= n <= ` the width and `a` holding `m.div_ceil(mr)` panels.
    pub narrow: Option<(usize, TileFn)>,
}

/// Pixels of a [`OcTile`] (the broadcast side) for the kernels of 6 pixels (AVX2, NEON,
/// portable), and the unit of the transposing stores.
pub const OC_MR: usize = 6;
/// The most pixels a `direct_oc` kernel takes ([`OcUkernel::mr`]).
pub const OC_MR_MAX: usize = 12;
/// Output channels of a [`OcTile`] (the vector side).
pub const OC_NR: usize = 16;

/// One tile of the direct convolution vectorized over output channels (`direct_oc`):
/// `OC_MR` output pixels by `OC_NR` output channels, `C^T = X W^T` with the pixels' input
/// values broadcast straight from the image (no packing) and the weights packed K x OC_NR.
/// Raw parts, as for [`GemmTile`]; built only by `arch::run_oc_tile`, which checks them.
#[derive(Copy, Clone, Debug)]
pub struct OcTile {
    /// Depth (taps x input channels).
    pub k: usize,
    /// The padded, phase-split image.
    pub img: *const f32,
    /// Each pixel's offset in the image (the kernel's `mr` of them readable, also past `m`).
    pub bases: [usize; OC_MR_MAX],
    /// Tap `p`'s offset from a pixel's base, `k` of them.
    pub offsets: *const usize,
    /// Packed weights, `panels` panels of `k * OC_NR` floats one after another (row `p` of a
    /// panel: its channels at tap `p`).
    pub w: *const f32,
    /// Channel panels of this call, 1..=the kernel's `panels`.
    pub panels: usize,
    /// Output (channel 0, pixel 0 of the tile); channel `j` pixel `i` at `c + j * cs + i`,
    /// or at `c + i * cs + j` when `pixel_major`.
    pub c: *mut f32,
    /// Stride between output channels (between pixels when `pixel_major`).
    pub cs: usize,
    /// The output holds each pixel's channels together (a channels-last band): the tile is
    /// stored row by row as the accumulators hold it, with no transpose.
    pub pixel_major: bool,
    /// Pixels to store, 1..=the kernel's `mr`.
    pub m: usize,
    /// Channels to store: more than `(panels - 1) * OC_NR`, at most `panels * OC_NR`.
    pub n: usize,
    /// Add the product to what the output holds (a preloaded residual).
    pub load_c: bool,
    /// Bias per channel, `n` floats, or null.
    pub bias: *const f32,
    /// Clamp bounds (NaN passes).
    pub lo: f32,
    /// Upper clamp bound.
    pub hi: f32,
}

/// A `direct_oc` tile kernel.
/// Only convkit builds these (`#[non_exhaustive]`).
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct OcUkernel {
    /// Canonical name, `f32_conv_oc_{pixels}x{channels}__{isa}`.
    pub name: &'static str,
    /// The tier it needs.
    pub isa: Isa,
    /// Pixels a tile (at most [`OC_MR_MAX`]).
    pub mr: usize,
    /// The most channel panels (of `OC_NR`) one call covers: 2 lets an AVX-512 tile reuse
    /// each broadcast image value for 32 channels.
    pub panels: usize,
    /// The kernel.
    ///
    /// # Safety
    /// The CPU supports `isa`; every field of the tile is as documented on [`OcTile`]: the
    /// image readable at `bases[i] + offsets[p]` for every pixel slot and tap, `w` holding
    /// `panels * k * OC_NR` floats, the output valid for `n` channels of `m` floats at stride
    /// `cs` (`m` pixels of `n` floats when `pixel_major`) and touched by no one else
    /// meanwhile, `bias` null or `n` floats.
    pub run: unsafe fn(&OcTile),
}

/// All kernels of one ISA tier.
#[derive(Debug)]
pub struct KernelTable {
    /// The tier.
    pub isa: Isa,
    /// GEMM microkernels, the default (fastest) first.
    pub gemm: &'static [GemmUkernel],
    /// The depthwise plane kernel.
    pub dwconv: crate::arch::dwconv::DwUkernel,
    /// The activation kernel of the band pass (sigmoid, tanh, gelu, silu, leaky relu).
    pub activation: crate::arch::activation::ActUkernel,
    /// The Winograd input and output transforms.
    pub winograd: crate::arch::winograd::WinoUkernel,
    /// Strided gather `dst[t] = src[t * stride]` for `t < dst.len()` (`src` at least that
    /// long, checked; a longer `src` lets more of the run go in vector blocks, which read
    /// ahead within it): the packing of strided im2col.
    pub gather: fn(&mut [f32], &[f32], usize),
    /// Pooling of one channel plane of a band (`algo::pool`).
    pub pool_plane: crate::algo::pool::PoolPlaneFn,
    /// Pooling of a channels-last band (`algo::pool`).
    pub pool_channels_last: crate::algo::pool::PoolChannelsLastFn,
    /// `dst[j * dst_stride + i] = src[i * cols + j]`: the channels-last pool's pooled rows
    /// into planes.
    pub transpose: crate::arch::TransposeFn,
    /// Both stride-2 phases of a row at once: `even[t] = src[2t]`, `odd[t] = src[2t + 1]`
    /// (`src` checked to cover both): the phase split of stride-2 layers.
    pub deinterleave2: crate::arch::Deinterleave2Fn,
    /// The `direct_oc` tile kernel.
    pub conv_oc: OcUkernel,
    /// A wider `direct_oc` tile for channels-last bands (fewer pixels, more channels a
    /// call), where the tier has one.
    pub conv_oc_wide: Option<OcUkernel>,
    /// A `direct_oc` tile of 7 pixels, for layers whose pixel count 7 divides better than
    /// the default tile's (`plan::direct_oc_kernel`), where the tier has one.
    pub conv_oc_seven: Option<OcUkernel>,
    /// The GEMM tile for shallow GEMMs ([`KernelTable::gemm_for_shape`]), where the tier
    /// has one that beats its row-fit choice there (AVX-512's 6x64; AVX2's 4x24 ran 0.65x
    /// the 6x16 on the same shapes).
    pub gemm_shallow: Option<&'static GemmUkernel>,
    /// The GEMM tile for the deeper GEMMs of layers ([`KernelTable::gemm_for_shape`]), where
    /// the tier has one that beats its row-fit choice there (AVX-512's 8x48).
    pub gemm_deep: Option<&'static GemmUkernel>,
}

/// Depth up to which [`KernelTable::gemm_for_shape`] takes the widest tile.
pub const SHALLOW_K: usize = 256;

impl KernelTable {
    /// The default GEMM microkernel.
    pub fn gemm_default(&self) -> &'static GemmUkernel {
        &self.gemm[0]
    }
    /// The GEMM microkernel for `m` rows of A (output channels a group), among the kernels
    /// of the default's NR (so the same columns, edges and B layout):
    /// - where the default has at least 12 rows, the tile of at least 12 rows that pads `m`
    ///   least (the default on a tie), if it pads by at most 5%. Those run as fast as the default when full; on AVX-512 the
    ///   13x32 pads M = 64, 128 and 256 to 65, 130 and 260 where the 14x32 pads to 70, 140
    ///   and 266. Paired, one thread: resnet50.res2.1x1a 1.13x, res4.1x1 1.07x (with the
    ///   lane-major edge: res5.1x1 1.17x), Winograd res2.3x3 and res3.3x3 1.09x, vgg16.conv2_2
    ///   1.04x, res3.3x3s2 1.03x;
    /// - else the default if it pads by at most a tenth;
    /// - else the kernel that pads least: the 8x32 for M = 16, 24 and 32 (the 13x32 padded
    ///   pw56's M = 24 to 26 and ran 0.95x the 8x32).
    pub fn gemm_for_rows(&self, m: usize) -> &'static GemmUkernel {
        if let Some(forced) = self.gemm_forced() {
            return forced;
        }
        let default = self.gemm_default();
        let m = m.max(1);
        let padded = |k: &GemmUkernel| m.div_ceil(k.mr) * k.mr;
        let same_nr = || self.gemm.iter().filter(|k| k.nr == default.nr);
        // Only a tall default trades for another tall tile (AVX-512's 14x32): where the
        // default is short (the 8x32 of `TABLE_SPLIT256`) the tall tiles ran slower.
        if default.mr >= 12 {
            if let Some(tall) = same_nr().filter(|k| k.mr >= 12).min_by_key(|k| padded(k)) {
                if padded(tall) * 20 <= m * 21 {
                    return tall;
                }
            }
        }
        if padded(default) * 10 <= m * 11 {
            return default;
        }
        same_nr().min_by_key(|k| padded(k)).unwrap_or(default)
    }
    /// The GEMM microkernel for a layer's GEMM of `m` rows of A (output channels a group)
    /// and depth `k`: up to depth [`SHALLOW_K`], the tier's shallow tile
    /// ([`KernelTable::gemm_shallow`], the 6x64 on AVX-512), deeper its deep tile
    /// ([`KernelTable::gemm_deep`], the 8x48), either if it pads `m` by at most 5%; else
    /// [`KernelTable::gemm_for_rows`].
    ///
    /// Deep: with the blocking of session 15 (KC 160, MC 112 for the 8x48), paired, min ms
    /// against the row-fit 13x32 / 14x32, one thread: resnet50.res4.1x1 (K = 1024) 1.05x and
    /// 1.07x faster in two runs, res5.1x1 (K = 512) 1.09x, wav2vec2.conv1's im2col (K =
    /// 1536) 1.06x, textcnn.k3's im2col (K = 900) 1.06x (forced by `CONVKIT_GEMM_UK`), and
    /// with this rule in the build against the last: res4.1x1 1.02-1.06x, res5.1x1 1.02-1.08x,
    /// wav2vec2.conv1 1.04-1.08x, textcnn.k3 0.99x; two threads res4.1x1 0.97-0.99x, res5.1x1
    /// and wav2vec2.conv1 1.00x. (The 6x64 there: 0.98-1.05x.) Winograd's GEMMs keep the row fit (`gemm_for_rows`: the 8x48 ran
    /// 0.86-1.01x on them).
    ///
    /// Shallow: a shallow GEMM does few FMAs a C tile, and the wide tile loads less a FMA
    /// (6 broadcasts and 4 B vectors for 24 FMAs, against 13 and 2 for 26 on the 13x32).
    /// Paired, one thread, min ms against the row-fit choice (session 14's blocking):
    /// resnet50.res2.1x1a (K = 64) 1.04x faster, res2.1x1b (K = 64) 1.08x, mobilenetv2.pw56
    /// (K = 144) 1.07-1.15x, wav2vec2.conv0's im2col (K = 10) 1.06x; on deeper GEMMs it did
    /// not pay (textcnn.k3's im2col 1.02x, res4.1x1 0.97-0.98x, res5.1x1 1.00x). Two
    /// threads: res2.1x1a 1.01x, res2.1x1b 1.03x, pw56 1.07x.
    pub fn gemm_for_shape(&self, m: usize, k: usize) -> &'static GemmUkernel {
        if let Some(forced) = self.gemm_forced() {
            return forced;
        }
        let m = m.max(1);
        let tile = if k <= SHALLOW_K {
            self.gemm_shallow
        } else {
            self.gemm_deep
        };
        match tile {
            Some(t) if m.div_ceil(t.mr) * t.mr * 20 <= m * 21 => t,
            _ => self.gemm_for_rows(m),
        }
    }
    /// The GEMM microkernel for A read in place ([`crate::gemm::gemm_a_in_place`], an NHWC
    /// 1x1 layer: `m` pixels a run of rows, `n` output channels a group). The tier's default
    /// tile where it has at most 8 rows (AVX2, NEON, portable, and AVX-512's 8x32 where it
    /// pads `m` by at most an eighth); else (AVX-512) the tile of at most 8 rows whose padded M x N is least, ties to the larger
    /// tile (fewer loads a FMA): the 6x64 for 64, 128 or 256 channels, the 8x32 for 24, the
    /// 7x48 for 49 pixels by 2048 channels. Rows: the kernel steps through each row of A by
    /// its own offset, which stay in registers up to about 8. Measured, one thread, NHWC:
    /// AVX2's 4x24, which fits 24 channels, ran mobilenetv2.pw56 at 41 GFLOP/s against the
    /// 6x16's 87 (it is 0.65x on packed GEMMs too); on resnet50.res5.1x1 the 7x48 ran 1.03-
    /// 1.05x the 6x64 (54 rows for 49).
    pub fn gemm_in_place(&self, m: usize, n: usize) -> &'static GemmUkernel {
        if let Some(forced) = self.gemm_forced() {
            return forced;
        }
        let default = &self.gemm[0];
        let (m, n) = (m.max(1), n.max(1));
        // AVX-512's short default (the 8x32 of `TABLE_SPLIT256`) gives way only where it
        // pads the pixels by over an eighth. Zen 4, NHWC, one thread, 8x32 against 7x48,
        // 6x64, 8x48: res5.1x1 (49 pixels) 97.4 GFLOP/s against 110.6, 99.1, 95.3; res2.1x1a
        // 107.7 against 64.8, 96.3, 64.1; res4.1x1 110.1 against 98.8, 109.5, 97.8; pw56
        // (144 channels) 81.5 against 54.2, 39.3, 54.8.
        let rows_fit = m.div_ceil(default.mr) * default.mr * 8 <= m * 9;
        if default.mr <= 8 && (self.isa != crate::arch::Isa::Avx512 || rows_fit) {
            return default;
        }
        let padded = |k: &GemmUkernel| m.div_ceil(k.mr) * k.mr * n.div_ceil(k.nr) * k.nr;
        self.gemm
            .iter()
            .filter(|k| k.mr <= 8)
            .min_by_key(|k| (padded(k), usize::MAX - k.mr * k.nr))
            .unwrap_or(default)
    }
    /// The tile `CONVKIT_GEMM_UK=NAME` names, if this table has it: layers' GEMMs take it
    /// instead of the shape's choice (for kernel experiments, as `CONVKIT_KC` is for
    /// blocking).
    fn gemm_forced(&self) -> Option<&'static GemmUkernel> {
        static FORCED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let name = FORCED.get_or_init(|| std::env::var("CONVKIT_GEMM_UK").ok());
        name.as_deref().and_then(|n| self.gemm_by_name(n))
    }
    /// A GEMM microkernel by canonical name.
    pub fn gemm_by_name(&self, name: &str) -> Option<&'static GemmUkernel> {
        self.gemm.iter().find(|k| k.name == name)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// The row-fit choice (read off the static tables: no kernel runs, so any x86 CPU
    /// checks it): AVX-512 takes the 13x32 where it pads least, the 14x32 default where that
    /// does, the 8x32 where every tall tile pads over 5% and the default over a tenth; AVX2
    /// has one kernel of its NR and always keeps it.
    #[test]
    fn gemm_kernel_for_rows_fits_small_m_only() {
        let avx512 = &crate::arch::x86_64::avx512::TABLE;
        for (m, mr) in [
            (24, 8),
            (32, 8),
            (16, 8),
            (64, 13),
            (100, 13),
            (128, 13),
            (256, 13),
            (512, 14),
            (98, 14),
            (2048, 13),
        ] {
            assert_eq!(avx512.gemm_for_rows(m).mr, mr, "m = {m}");
            assert_eq!(avx512.gemm_for_rows(m).nr, 32);
        }
        let avx2 = &crate::arch::x86_64::avx2::TABLE;
        for m in [1, 6, 24, 32, 64, 100] {
            assert_eq!(avx2.gemm_for_rows(m).name, avx2.gemm_default().name);
        }
    }

    /// The depth-aware choice: shallow GEMMs take the 6x64 on AVX-512 where it pads M by at
    /// most 5%, the row-fit choice otherwise and at depth over 256; AVX2 keeps its 6x16.
    #[test]
    fn gemm_kernel_for_shallow_and_deep_shapes() {
        let avx512 = &crate::arch::x86_64::avx512::TABLE;
        for (m, k, name) in [
            (64, 64, "f32_gemm_6x64__avx512"),
            (256, 64, "f32_gemm_6x64__avx512"),
            (24, 144, "f32_gemm_6x64__avx512"),
            (512, 10, "f32_gemm_6x64__avx512"),
            (64, 256, "f32_gemm_6x64__avx512"),
            // Deeper: the 8x48 where it pads by at most 5%, else the row fit.
            (64, 257, "f32_gemm_8x48__avx512"),
            (256, 1024, "f32_gemm_8x48__avx512"),
            (100, 900, "f32_gemm_8x48__avx512"),
            (2048, 512, "f32_gemm_8x48__avx512"),
            (13, 1024, "f32_gemm_13x32__avx512"),
            // 16 rows pad to 18 (12.5%): the row fit's 8x32.
            (16, 64, "f32_gemm_8x32__avx512"),
        ] {
            assert_eq!(avx512.gemm_for_shape(m, k).name, name, "m = {m}, k = {k}");
        }
        let avx2 = &crate::arch::x86_64::avx2::TABLE;
        for (m, k) in [(64, 64), (24, 144), (512, 10)] {
            assert_eq!(avx2.gemm_for_shape(m, k).name, avx2.gemm_default().name);
        }
    }

    /// The split-datapath AVX-512 table (Zen 4) keeps its 8x32 for every layer's GEMM
    /// whatever the depth, where the 8x32 pads M by at most a tenth (never trading it for a
    /// tall tile), and for NHWC 1x1 layers where it pads the pixels by at most an eighth;
    /// past that the least padding: 12 rows take the 13x32 (13 rows: 8.3%, 16: 33%), 49
    /// pixels by 2048 channels the 7x48.
    #[test]
    fn gemm_kernel_choices_on_the_split_datapath() {
        let split = &crate::arch::x86_64::avx512::TABLE_SPLIT256;
        let name = |k: &super::GemmUkernel| k.name;
        for m in [8, 24, 64, 100, 128, 144, 256, 512, 2048] {
            for k in [10, 64, 256, 257, 1024] {
                assert_eq!(name(split.gemm_for_shape(m, k)), "f32_gemm_8x32__avx512");
            }
        }
        assert_eq!(name(split.gemm_for_rows(12)), "f32_gemm_13x32__avx512");
        for (m, n, tile) in [
            (3136, 64, "f32_gemm_8x32__avx512"),
            (3136, 144, "f32_gemm_8x32__avx512"),
            (196, 256, "f32_gemm_8x32__avx512"),
            (49, 2048, "f32_gemm_7x48__avx512"),
        ] {
            assert_eq!(name(split.gemm_in_place(m, n)), tile, "m = {m}, n = {n}");
        }
    }
}
