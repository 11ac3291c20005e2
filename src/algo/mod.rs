//! The convolution algorithms: one module each, with `accepts(&Geometry)`, chosen by name.

use crate::error::{Error, Result};
use crate::geometry::Geometry;

pub mod depthwise;
pub mod direct;
pub mod direct_oc;
pub mod pool;

/// What every algorithm applies to its output tiles: bias, accumulation onto a preloaded
/// residual, the clamp in registers, and a band-pass activation on each finished tile.
#[derive(Copy, Clone, Debug)]
pub struct OutputPass<'a> {
    /// Bias per output channel.
    pub bias: Option<&'a [f32]>,
    /// Add to what the output holds (the residual, copied in first).
    pub accumulate: bool,
    /// Clamp applied in registers (`(-inf, inf)` for none).
    pub clamp: (f32, f32),
    /// An activation that is not a clamp, with the tier's kernel for it.
    pub activation: Option<(
        crate::arch::activation::ActUkernel,
        crate::epilogue::Activation,
    )>,
}
pub mod im2col;
pub mod winograd;

/// Splits `tiles` tiles of each of `groups` groups into chunks for the pool: about 4 tasks a
/// thread in all, each a run of whole tiles. Returns `(chunks a group, tiles a chunk)`; task
/// `t` is group `t / chunks`, tiles `(t % chunks) * per ..` (the last chunk may be short).
pub fn task_chunks(tiles: usize, groups: usize) -> (usize, usize) {
    let threads = crate::par::threads();
    let chunks = (4 * threads).div_ceil(groups.max(1)).clamp(1, tiles.max(1));
    let per_chunk = tiles.div_ceil(chunks).max(1);
    (tiles.div_ceil(per_chunk), per_chunk)
}

pub use crate::arch::winograd::Variant as WinogradVariant;

/// A convolution algorithm.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    /// The GEMM microkernels reading the (padded, phase-split) image in place: no im2col
    /// copy; any geometry.
    Direct,
    /// The direct convolution vectorized over output channels: tiles of pixels x output
    /// channels, the pixels' inputs broadcast from the image in place; any geometry.
    DirectOc,
    /// im2col packed straight into the GEMM's B panels; any geometry.
    Im2col,
    /// 1x1 kernels without padding as plain GEMM (no copy at stride 1).
    Gemm1x1,
    /// One input channel per group (groups == C), any channel multiplier: a plane kernel
    /// vectorized along the output row.
    Depthwise,
    /// Groups of 2, 4 or 8 channels in and out (resnext's 4): channel blocks of 8 lanes
    /// holding whole groups, each output lane summing its group's inputs; any kernel,
    /// stride, dilation.
    Grouped,
    /// Winograd F(m, 3) (2-D: F(m x m, 3 x 3)): kernel 3, stride 1, dilation 1.
    Winograd(WinogradVariant),
    /// Winograd F(m, 3) on the phase planes of a dilated layer (kernel 3, stride 1,
    /// dilation above 1): dh x dw undilated convolutions whose tiles share the GEMMs.
    /// Named apart from `winograd_*`, which SPEC keeps to dilation 1.
    DilatedWinograd(WinogradVariant),
    /// The f64 oracle (never chosen by `auto`).
    Reference,
}

/// Every algorithm, in the order `auto` prefers them (best first); `reference` last.
pub const ALL_ALGOS: [Algo; 13] = [
    Algo::Depthwise,
    Algo::Grouped,
    Algo::Winograd(WinogradVariant::F4),
    Algo::Winograd(WinogradVariant::F6),
    Algo::Winograd(WinogradVariant::F2),
    Algo::DilatedWinograd(WinogradVariant::F4),
    Algo::DilatedWinograd(WinogradVariant::F6),
    Algo::DilatedWinograd(WinogradVariant::F2),
    Algo::Direct,
    Algo::DirectOc,
    Algo::Gemm1x1,
    Algo::Im2col,
    Algo::Reference,
];

impl Algo {
    /// The stable name (SPEC section 3).
    pub fn name(self) -> &'static str {
        match self {
            Algo::Direct => "direct",
            Algo::DirectOc => "direct_oc",
            Algo::Im2col => "im2col",
            Algo::Gemm1x1 => "gemm1x1",
            Algo::Depthwise => "depthwise",
            Algo::Grouped => "grouped",
            Algo::Winograd(WinogradVariant::F2) => "winograd_f2x3",
            Algo::Winograd(WinogradVariant::F4) => "winograd_f4x3",
            Algo::Winograd(WinogradVariant::F6) => "winograd_f6x3",
            Algo::DilatedWinograd(WinogradVariant::F2) => "dilated_f2x3",
            Algo::DilatedWinograd(WinogradVariant::F4) => "dilated_f4x3",
            Algo::DilatedWinograd(WinogradVariant::F6) => "dilated_f6x3",
            Algo::Reference => "reference",
        }
    }

    /// Parses a stable name.
    pub fn parse(name: &str) -> Result<Algo> {
        match name {
            "direct" => Ok(Algo::Direct),
            "direct_oc" => Ok(Algo::DirectOc),
            "im2col" => Ok(Algo::Im2col),
            "gemm1x1" => Ok(Algo::Gemm1x1),
            "depthwise" => Ok(Algo::Depthwise),
            "grouped" => Ok(Algo::Grouped),
            "winograd_f2x3" => Ok(Algo::Winograd(WinogradVariant::F2)),
            "winograd_f4x3" => Ok(Algo::Winograd(WinogradVariant::F4)),
            "winograd_f6x3" => Ok(Algo::Winograd(WinogradVariant::F6)),
            "dilated_f2x3" => Ok(Algo::DilatedWinograd(WinogradVariant::F2)),
            "dilated_f4x3" => Ok(Algo::DilatedWinograd(WinogradVariant::F4)),
            "dilated_f6x3" => Ok(Algo::DilatedWinograd(WinogradVariant::F6)),
            "reference" => Ok(Algo::Reference),
            n => Err(Error::UnknownAlgorithm(n.to_string())),
        }
    }

    /// `Ok` when the algorithm can run the layer, else why not.
    pub fn check(self, g: &Geometry) -> std::result::Result<(), String> {
        match self {
            Algo::Im2col | Algo::Reference => Ok(()),
            Algo::Winograd(_) => winograd::check(g),
            Algo::DilatedWinograd(_) => winograd::check_dilated(g),
            Algo::Grouped => depthwise::check_grouped(g),
            // The widest tile of any tier bounds the slack; the check is on the image size.
            Algo::Direct | Algo::DirectOc => direct::PhaseLayout::new(g, 64).map(|_| ()),
            Algo::Depthwise => {
                if g.is_depthwise() {
                    Ok(())
                } else {
                    Err(format!("needs one input channel per group (groups == C); the layer has {} per group", g.cin_per_group))
                }
            }
            Algo::Gemm1x1 => {
                if g.kernel != [1, 1] {
                    Err(format!(
                        "needs a 1x1 kernel, the layer has {}x{}",
                        g.kernel[0], g.kernel[1]
                    ))
                } else if g.pad_before != [0, 0] || g.pad_after != [0, 0] {
                    Err("needs no padding".into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether the algorithm accepts the layer.
    pub fn accepts(self, g: &Geometry) -> bool {
        self.check(g).is_ok()
    }
}

/// The algorithms that accept `g`, best first (the list `convkit algos` prints).
pub fn accepting(g: &Geometry) -> Vec<Algo> {
    ALL_ALGOS.iter().copied().filter(|a| a.accepts(g)).collect()
}
