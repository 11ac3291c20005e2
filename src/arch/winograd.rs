//! Winograd minimal-filtering transforms F(m, 3), written once in safe Rust over lanes of
//! [`LANES`] tiles and compiled under each tier's features (as the depthwise kernel is).
//!
//! # The algebra
//!
//! For one output row segment of `m` values of a 3-tap correlation `y[i] = sum_k g[k] d[i+k]`
//! over `alpha = m + 2` inputs, Winograd's minimal algorithm is
//!
//! ```text
//!   y = A^T [ (G g) * (B^T d) ]          (* elementwise, alpha products instead of 3m)
//! ```
//!
//! and in 2-D, nesting it along both axes, for an `alpha x alpha` input tile `d` and a 3x3
//! kernel `g`:
//!
//! ```text
//!   Y = A^T [ (G g G^T) * (B^T d B) ] A
//! ```
//!
//! Summed over input channels, the elementwise product becomes, for each of the `alpha^2`
//! transformed positions xi, a matrix product `M[xi] = U[xi] V[xi]` (Cout x C times C x tiles):
//! the batched GEMM that runs on the GEMM microkernels. `U = G g G^T` is computed once at plan
//! time, `V = B^T d B` per tile (the input transform below), `Y = A^T M A` per output tile (the
//! output transform, with bias, residual and activation fused).
//!
//! # Interpolation points
//!
//! The matrices come from the Chinese-remainder construction (Toom-Cook) on the points
//! listed with each variant, plus the point at infinity. F(6,3) uses 0, +-1, +-2, +-1/2: the
//! points with the smallest magnitudes whose products stay exact in binary, so the entries
//! of A and B stay small (|entries| <= 32) and the f32 error stays within SPEC's 1e-3 x S
//! (PERFORMANCE.md records the worst error on every suite layer). Points such as +-3 would
//! grow the entries of A^T to 3^5 = 243 and the error with them.
//!
//! The transforms are checked against these matrices exactly on small integers in the unit
//! tests, and the identity `A^T[(G g) * (B^T d)] = correlation(d, g)` in f64.

/// Tiles transformed together: one AVX2 register of f32 (two NEON registers).
pub const LANES: usize = 8;

type Lanes = [f32; LANES];

/// A Winograd variant: output tile `m`, input tile `alpha = m + 2`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// F(2,3): points 0, +-1.
    F2,
    /// F(4,3): points 0, +-1, +-2.
    F4,
    /// F(6,3): points 0, +-1, +-2, +-1/2.
    F6,
}

impl Variant {
    /// Outputs per tile along an axis.
    pub fn m(self) -> usize {
        match self {
            Variant::F2 => 2,
            Variant::F4 => 4,
            Variant::F6 => 6,
        }
    }
    /// Inputs per tile along an axis (`m + 2`).
    pub fn alpha(self) -> usize {
        self.m() + 2
    }
    /// `B^T`, `alpha x alpha`, row-major, in f64.
    pub fn bt(self) -> &'static [f64] {
        match self {
            Variant::F2 => &BT2_64,
            Variant::F4 => &BT4_64,
            Variant::F6 => &BT6_64,
        }
    }
    /// `G`, `alpha x 3`, row-major, in f64.
    pub fn g(self) -> &'static [f64] {
        match self {
            Variant::F2 => &G2_64,
            Variant::F4 => &G4_64,
            Variant::F6 => &G6_64,
        }
    }
    /// `A^T`, `m x alpha`, row-major, in f64.
    pub fn at(self) -> &'static [f64] {
        match self {
            Variant::F2 => &AT2_64,
            Variant::F4 => &AT4_64,
            Variant::F6 => &AT6_64,
        }
    }
}

/// Declares a transform matrix in f64. These define the transforms: plan time builds U from
/// G in f64, and the unit tests hold the hand-factored B^T and A^T below to them.
macro_rules! matrix {
    ($n64:ident, $len:literal, [$($v:expr),* $(,)?]) => {
        const $n64: [f64; $len] = [$(($v) as f64),*];
    };
}

// F(2,3), points 0, 1, -1, inf.
matrix!(
    BT2_64,
    16,
    [1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0, -1.0,]
);
matrix!(
    G2_64,
    12,
    [1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0,]
);
matrix!(AT2_64, 8, [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0,]);

// F(4,3), points 0, 1, -1, 2, -2, inf.
matrix!(
    BT4_64,
    36,
    [
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0, 0.0, -4.0, -4.0, 1.0, 1.0, 0.0, 0.0, 4.0, -4.0, -1.0, 1.0,
        0.0, 0.0, -2.0, -1.0, 2.0, 1.0, 0.0, 0.0, 2.0, -1.0, -2.0, 1.0, 0.0, 0.0, 4.0, 0.0, -5.0,
        0.0, 1.0,
    ]
);
matrix!(
    G4_64,
    18,
    [
        1.0 / 4.0,
        0.0,
        0.0,
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0,
        1.0 / 6.0,
        -1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 12.0,
        1.0 / 6.0,
        1.0 / 24.0,
        -1.0 / 12.0,
        1.0 / 6.0,
        0.0,
        0.0,
        1.0,
    ]
);
matrix!(
    AT4_64,
    24,
    [
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, 2.0, -2.0, 0.0, 0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ]
);

// F(6,3), points 0, 1, -1, 2, -2, 1/2, -1/2, inf.
matrix!(
    BT6_64,
    64,
    [
        1.0,
        0.0,
        -21.0 / 4.0,
        0.0,
        21.0 / 4.0,
        0.0,
        -1.0,
        0.0,
        0.0,
        1.0,
        1.0,
        -17.0 / 4.0,
        -17.0 / 4.0,
        1.0,
        1.0,
        0.0,
        0.0,
        -1.0,
        1.0,
        17.0 / 4.0,
        -17.0 / 4.0,
        -1.0,
        1.0,
        0.0,
        0.0,
        0.5,
        0.25,
        -5.0 / 2.0,
        -5.0 / 4.0,
        2.0,
        1.0,
        0.0,
        0.0,
        -0.5,
        0.25,
        5.0 / 2.0,
        -5.0 / 4.0,
        -2.0,
        1.0,
        0.0,
        0.0,
        2.0,
        4.0,
        -5.0 / 2.0,
        -5.0,
        0.5,
        1.0,
        0.0,
        0.0,
        -2.0,
        4.0,
        5.0 / 2.0,
        -5.0,
        -0.5,
        1.0,
        0.0,
        0.0,
        -1.0,
        0.0,
        21.0 / 4.0,
        0.0,
        -21.0 / 4.0,
        0.0,
        1.0,
    ]
);
matrix!(
    G6_64,
    24,
    [
        1.0,
        0.0,
        0.0,
        -2.0 / 9.0,
        -2.0 / 9.0,
        -2.0 / 9.0,
        -2.0 / 9.0,
        2.0 / 9.0,
        -2.0 / 9.0,
        1.0 / 90.0,
        1.0 / 45.0,
        2.0 / 45.0,
        1.0 / 90.0,
        -1.0 / 45.0,
        2.0 / 45.0,
        32.0 / 45.0,
        16.0 / 45.0,
        8.0 / 45.0,
        32.0 / 45.0,
        -16.0 / 45.0,
        8.0 / 45.0,
        0.0,
        0.0,
        1.0,
    ]
);
matrix!(
    AT6_64,
    48,
    [
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
        1.0,
        -1.0,
        2.0,
        -2.0,
        0.5,
        -0.5,
        0.0,
        0.0,
        1.0,
        1.0,
        4.0,
        4.0,
        0.25,
        0.25,
        0.0,
        0.0,
        1.0,
        -1.0,
        8.0,
        -8.0,
        0.125,
        -0.125,
        0.0,
        0.0,
        1.0,
        1.0,
        16.0,
        16.0,
        1.0 / 16.0,
        1.0 / 16.0,
        0.0,
        0.0,
        1.0,
        -1.0,
        32.0,
        -32.0,
        1.0 / 32.0,
        -1.0 / 32.0,
        1.0,
    ]
);

/// The input transform of `n` tiles of one channel: `V[xi][t] = (B^T d_t B)[xi]` (2-D) or
/// `(B^T d_t)[xi]` (1-D), for tiles `t0 .. t0 + n` of the band.
pub struct WinoInput<'a> {
    /// The variant.
    pub variant: Variant,
    /// 2-D tiles (alpha x alpha) or 1-D (alpha x 1).
    pub two_d: bool,
    /// The padded channel plane from the band's first tile row; every tile's input lies
    /// inside it (checked).
    pub plane: &'a [f32],
    /// Row length of the padded plane.
    pub pw: usize,
    /// Tiles per tile row.
    pub tiles_w: usize,
    /// First tile, counted from the band's first tile row.
    pub t0: usize,
    /// Tiles to transform.
    pub n: usize,
    /// Tiles a phase plane (a dilated layer's tiles run phase after phase; `usize::MAX`
    /// when there is one plane).
    pub phase_tiles: usize,
    /// Floats from one phase plane to the next in `plane`.
    pub phase_stride: usize,
    /// V: transformed position xi of tile `t0 + j` at `layout.at(xi, j)`. Channels
    /// transformed in parallel write disjoint elements of it.
    pub out: &'a crate::arch::SharedMut<'a>,
    /// Where each value goes in `out`.
    pub layout: VLayout,
}

/// Where the input transform writes a channel's V: transformed position `x` of the block's
/// tile `j` at `base + x * xi_stride + (j / panel) * panel_stride + j % panel`.
///
/// [`VLayout::rows`] is the plain `[xi][ld]` slab; [`VLayout::panels`] writes V straight in
/// the GEMM's packed B layout (panels of NR tiles, the K block's channels one NR-float row
/// after another), so the transformed-domain GEMMs read V where it lies and pack nothing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct VLayout {
    /// Offset of (x = 0, j = 0).
    pub base: usize,
    /// Floats from one transformed position to the next.
    pub xi_stride: usize,
    /// Tiles a panel: a multiple of [`LANES`] (a lane group never straddles two panels).
    pub panel: usize,
    /// Floats from one panel to the next.
    pub panel_stride: usize,
}

impl VLayout {
    /// The slab `[xi][ld]` from `base` (`ld` a multiple of [`LANES`]): one panel of `ld`.
    pub fn rows(base: usize, ld: usize) -> Self {
        VLayout {
            base,
            xi_stride: ld,
            panel: ld,
            panel_stride: 0,
        }
    }

    /// Channel `c` of GEMM B panels `nr` wide, for `cols` columns (a multiple of `nr`), the
    /// rows in the K blocks `blocks`: one B matrix per transformed position, `xi_stride`
    /// floats apart (see [`crate::gemm::PrepackedB`]).
    pub fn panels(
        c: usize,
        blocks: &[(usize, usize)],
        cols: usize,
        nr: usize,
        xi_stride: usize,
    ) -> Self {
        let (base, panel_stride) = crate::gemm::PrepackedB::row_place(blocks, cols, nr, c);
        VLayout {
            base,
            xi_stride,
            panel: nr,
            panel_stride,
        }
    }

    /// The offset of transformed position `x` of tile `j`.
    #[inline(always)]
    pub fn at(&self, x: usize, j: usize) -> usize {
        self.base + x * self.xi_stride + (j / self.panel) * self.panel_stride + j % self.panel
    }
}

/// The output transform of `n` tiles of one output channel with the fused epilogue:
/// `Y_t = A^T M_t A + bias (+ residual)`, clamped or activated, stored where it lies inside
/// the band.
pub struct WinoOutput<'a> {
    /// The variant.
    pub variant: Variant,
    /// 2-D tiles or 1-D.
    pub two_d: bool,
    /// `[xi][ld]`: the GEMM's result for tile `t0 + j` at `xi * ld + j`.
    pub m: &'a [f32],
    /// Row stride of `m`.
    pub ld: usize,
    /// Tiles per tile row.
    pub tiles_w: usize,
    /// The band's first tile row (global).
    pub tile_row0: usize,
    /// First tile, counted from the band's first tile row.
    pub t0: usize,
    /// Tiles.
    pub n: usize,
    /// Tiles a phase (as in [`WinoInput`]; `usize::MAX` when there is one).
    pub phase_tiles: usize,
    /// Floats from one phase's output rows to the next in `out`.
    pub phase_stride: usize,
    /// The output plane of the band: rows `r0..r1` (global) of `ow` floats, a phase after
    /// another `phase_stride` apart.
    pub out: &'a mut [f32],
    /// Output width.
    pub ow: usize,
    /// The band's first output row (global).
    pub r0: usize,
    /// One past the band's last output row (global).
    pub r1: usize,
    /// The channel's bias (0 for none).
    pub bias: f32,
    /// Add what `out` holds (a preloaded residual).
    pub accumulate: bool,
    /// Clamp (`(-inf, inf)` for none).
    pub clamp: (f32, f32),
    /// An activation that is not a clamp, with the tier's kernel.
    pub activation: Option<(
        crate::arch::activation::ActUkernel,
        crate::epilogue::Activation,
    )>,
}

/// The transform of output gradients for the Winograd weight gradient: for `channels` (at
/// most [`LANES`]) output channels at once, one per lane, and tiles `t0 .. t0 + n` of one
/// plane (`m x m` each in 2-D, `1 x m` in 1-D, zero past the plane's edges),
/// `(A dY_t A^T)[xi]` with `A = (A^T)^T` (`alpha x m`; in 1-D `A dY_t`, alpha positions),
/// written channel-contiguous: channel `l` of tile `t0 + j` at
/// `base + xi * xi_stride + j * tile_stride + l`, the layout the weight gradient's GEMMs
/// read as B rows. It is the adjoint of the output transform: with `Y = A^T [U * V] A`, the
/// gradient of `U` is `(A dY A^T) * V`.
///
/// The plane is a phase plane of a dilated layer's output gradient (row `a`, column `b` at
/// `origin + a * row_stride + b * col_stride` of each channel), or, undilated, the whole
/// plane (`origin` 0, `row_stride` OW, `col_stride` 1).
pub struct WinoGrad<'a> {
    /// The variant.
    pub variant: Variant,
    /// 2-D tiles (m x m) or 1-D (1 x m).
    pub two_d: bool,
    /// The channels' output-gradient planes, `plane_stride` apart.
    pub dy: &'a [f32],
    /// Channels (lanes used), 1 ..= [`LANES`].
    pub channels: usize,
    /// Floats from one channel's plane to the next.
    pub plane_stride: usize,
    /// Offset of the phase plane's first value in each channel's plane.
    pub origin: usize,
    /// Floats from one phase-plane row to the next.
    pub row_stride: usize,
    /// Floats from one phase-plane column to the next.
    pub col_stride: usize,
    /// Rows of the phase plane.
    pub rows: usize,
    /// Columns of the phase plane.
    pub cols: usize,
    /// Tiles per tile row.
    pub tiles_w: usize,
    /// First tile (of the phase plane).
    pub t0: usize,
    /// Tiles.
    pub n: usize,
    /// The transformed gradients (channels of other tasks interleave: each writes its own).
    pub out: &'a crate::arch::SharedMut<'a>,
    /// Offset of (xi = 0, tile t0, channel 0).
    pub base: usize,
    /// Floats from one transformed position to the next.
    pub xi_stride: usize,
    /// Floats from one tile to the next.
    pub tile_stride: usize,
}

/// A tier's Winograd transform kernels.
/// Only convkit builds these (`#[non_exhaustive]`).
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct WinoUkernel {
    /// Canonical name, `f32_winograd__{isa}`.
    pub name: &'static str,
    /// The tier.
    pub isa: crate::arch::Isa,
    /// The input transform.
    pub input: fn(&mut WinoInput),
    /// The output transform with the epilogue.
    pub output: fn(&mut WinoOutput),
    /// The output-gradient transform of the weight gradient.
    pub grad: fn(&mut WinoGrad),
}

// ---------------------------------------------------------------------------------------
// The 1-D transforms, factored by hand.
//
// The rows of B^T come in pairs that differ only in the sign of their odd columns (the
// interpolation points +-p), and the columns of A^T in pairs whose sum or difference every
// row takes. So each pair of B^T rows is `e +- o` with `e` the even columns' sum and `o` the
// odd columns', and A^T works on the sums and differences of column pairs, as in Lavin &
// Gray's and NNPACK's transforms. F(6,3)'s B^T takes 26 vector operations here, against 80
// multiplies and adds for its 8 x 8 matrix term by term (which the input and output
// transforms did before: 205 and 226 cycles a tile on this machine, 89-117 and 84-146 now).
// Every function is checked against its matrix in the unit tests (exactly, on integers).
// ---------------------------------------------------------------------------------------

#[inline(always)]
fn vadd(a: &Lanes, b: &Lanes) -> Lanes {
    let mut r = [0f32; LANES];
    for l in 0..LANES {
        r[l] = a[l] + b[l];
    }
    r
}

#[inline(always)]
fn vsub(a: &Lanes, b: &Lanes) -> Lanes {
    let mut r = [0f32; LANES];
    for l in 0..LANES {
        r[l] = a[l] - b[l];
    }
    r
}

#[inline(always)]
fn vscale(k: f32, a: &Lanes) -> Lanes {
    let mut r = [0f32; LANES];
    for l in 0..LANES {
        r[l] = k * a[l];
    }
    r
}

/// `k * a + c` lane by lane, with the tier's `fma`.
#[inline(always)]
fn vfma(k: f32, a: &Lanes, c: &Lanes, fma: impl Fn(f32, f32, f32) -> f32) -> Lanes {
    let mut r = [0f32; LANES];
    for l in 0..LANES {
        r[l] = fma(k, a[l], c[l]);
    }
    r
}

/// B^T x, F(2,3).
#[inline(always)]
fn bt2(x: &[Lanes; 4]) -> [Lanes; 4] {
    [
        vsub(&x[0], &x[2]),
        vadd(&x[1], &x[2]),
        vsub(&x[2], &x[1]),
        vsub(&x[1], &x[3]),
    ]
}

/// B^T x, F(4,3): rows 1, 2 and 3, 4 are `e +- o`.
#[inline(always)]
fn bt4(x: &[Lanes; 6], f: impl Fn(f32, f32, f32) -> f32 + Copy) -> [Lanes; 6] {
    let (e1, o1) = (vfma(-4.0, &x[2], &x[4], f), vfma(-4.0, &x[1], &x[3], f));
    let (e2, o2) = (vsub(&x[4], &x[2]), vscale(2.0, &vsub(&x[3], &x[1])));
    [
        vfma(4.0, &x[0], &vfma(-5.0, &x[2], &x[4], f), f),
        vadd(&e1, &o1),
        vsub(&e1, &o1),
        vadd(&e2, &o2),
        vsub(&e2, &o2),
        vfma(4.0, &x[1], &vfma(-5.0, &x[3], &x[5], f), f),
    ]
}

/// B^T x, F(6,3): rows 1, 2 / 3, 4 / 5, 6 are `e +- o`.
#[inline(always)]
fn bt6(x: &[Lanes; 8], f: impl Fn(f32, f32, f32) -> f32 + Copy) -> [Lanes; 8] {
    let e1 = vfma(-4.25, &x[4], &vadd(&x[2], &x[6]), f);
    let o1 = vfma(-4.25, &x[3], &vadd(&x[1], &x[5]), f);
    let e2 = vfma(0.25, &x[2], &vfma(-1.25, &x[4], &x[6], f), f);
    let o2 = vfma(0.5, &x[1], &vfma(-2.5, &x[3], &vadd(&x[5], &x[5]), f), f);
    let e3 = vfma(4.0, &x[2], &vfma(-5.0, &x[4], &x[6], f), f);
    let o3 = vfma(2.0, &x[1], &vfma(-2.5, &x[3], &vscale(0.5, &x[5]), f), f);
    [
        vfma(5.25, &vsub(&x[4], &x[2]), &vsub(&x[0], &x[6]), f),
        vadd(&e1, &o1),
        vsub(&e1, &o1),
        vadd(&e2, &o2),
        vsub(&e2, &o2),
        vadd(&e3, &o3),
        vsub(&e3, &o3),
        vfma(5.25, &vsub(&x[3], &x[5]), &vsub(&x[7], &x[1]), f),
    ]
}

/// A^T x, F(2,3).
#[inline(always)]
fn at2(x: &[Lanes; 4]) -> [Lanes; 2] {
    [
        vadd(&vadd(&x[0], &x[1]), &x[2]),
        vsub(&vsub(&x[1], &x[2]), &x[3]),
    ]
}

/// A^T x, F(4,3), on the sums and differences of columns 1, 2 and 3, 4.
#[inline(always)]
fn at4(x: &[Lanes; 6], f: impl Fn(f32, f32, f32) -> f32 + Copy) -> [Lanes; 4] {
    let (s1, d1) = (vadd(&x[1], &x[2]), vsub(&x[1], &x[2]));
    let (s2, d2) = (vadd(&x[3], &x[4]), vsub(&x[3], &x[4]));
    [
        vadd(&vadd(&x[0], &s1), &s2),
        vfma(2.0, &d2, &d1, f),
        vfma(4.0, &s2, &s1, f),
        vfma(8.0, &d2, &vadd(&d1, &x[5]), f),
    ]
}

/// A^T x, F(6,3), on the sums and differences of columns 1, 2 / 3, 4 / 5, 6.
#[inline(always)]
fn at6(x: &[Lanes; 8], f: impl Fn(f32, f32, f32) -> f32 + Copy) -> [Lanes; 6] {
    let (s1, d1) = (vadd(&x[1], &x[2]), vsub(&x[1], &x[2]));
    let (s2, d2) = (vadd(&x[3], &x[4]), vsub(&x[3], &x[4]));
    let (s3, d3) = (vadd(&x[5], &x[6]), vsub(&x[5], &x[6]));
    [
        vadd(&vadd(&x[0], &s1), &vadd(&s2, &s3)),
        vfma(2.0, &d2, &vfma(0.5, &d3, &d1, f), f),
        vfma(4.0, &s2, &vfma(0.25, &s3, &s1, f), f),
        vfma(8.0, &d2, &vfma(0.125, &d3, &d1, f), f),
        vfma(16.0, &s2, &vfma(0.0625, &s3, &s1, f), f),
        vfma(32.0, &d2, &vfma(0.03125, &d3, &vadd(&d1, &x[7]), f), f),
    ]
}

/// B^T x for the variant of `A` points.
#[inline(always)]
pub(crate) fn bt_1d<const A: usize>(
    x: &[Lanes; A],
    f: impl Fn(f32, f32, f32) -> f32 + Copy,
) -> [Lanes; A] {
    let mut out = [[0f32; LANES]; A];
    match A {
        4 => out.copy_from_slice(&bt2(x.as_slice().try_into().expect("4 points"))),
        6 => out.copy_from_slice(&bt4(x.as_slice().try_into().expect("6 points"), f)),
        8 => out.copy_from_slice(&bt6(x.as_slice().try_into().expect("8 points"), f)),
        _ => unreachable!("no B^T of {A} points"),
    }
    out
}

/// A^T x for the variant of `A` points and `M` outputs.
#[inline(always)]
fn at_1d<const A: usize, const M: usize>(
    x: &[Lanes; A],
    f: impl Fn(f32, f32, f32) -> f32 + Copy,
) -> [Lanes; M] {
    let mut out = [[0f32; LANES]; M];
    match (A, M) {
        (4, 2) => out.copy_from_slice(&at2(x.as_slice().try_into().expect("4 points"))),
        (6, 4) => out.copy_from_slice(&at4(x.as_slice().try_into().expect("6 points"), f)),
        (8, 6) => out.copy_from_slice(&at6(x.as_slice().try_into().expect("8 points"), f)),
        _ => unreachable!("no A^T of {A} points to {M}"),
    }
    out
}

// Index loops: the tile algebra reads clearer with explicit (row, column) indices.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_tiles<G: TileGather, const A: usize, const M: usize>(
    j: &mut WinoInput,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let (ah, mh) = if j.two_d { (A, M) } else { (1, 1) };
    assert!(
        j.layout.panel > 0 && j.layout.panel.is_multiple_of(LANES),
        "V panels of whole lane groups"
    );
    if j.n == 0 {
        return;
    }
    // The row-transformed tiles of a lane group, reused by every group: declared in the
    // loop, the array was zeroed (a memset call) and returned by copy (a memcpy) for each
    // group, a fifth of the transform.
    let mut t1 = [[[0f32; LANES]; A]; A];
    let mut t1_1d = [[[0f32; LANES]; A]; 1];
    let mut t = 0;
    while t < j.n {
        // Lanes past the last tile repeat it: in bounds, and their columns are not read.
        // Each lane's tile's first input float in the band's plane (phase planes
        // `phase_stride` apart), from running counters: one division a group of lanes, not
        // one or two a lane (with the phase split's second, the F(4,3) input transform of
        // vgg16.conv1_2 went from 19% to 28% of the layer).
        let mut base = [0usize; LANES];
        let first = j.t0 + t;
        let (mut phase, in_phase) = if j.phase_tiles == usize::MAX {
            (0, first)
        } else {
            (first / j.phase_tiles, first % j.phase_tiles)
        };
        let (mut tr, mut tc) = (in_phase / j.tiles_w, in_phase % j.tiles_w);
        let mut left = j.phase_tiles - in_phase;
        let advancing = j.n - 1 - t;
        for (l, b) in base.iter_mut().enumerate() {
            *b = phase * j.phase_stride + tr * mh * j.pw + tc * M;
            // Lanes past the last tile repeat it.
            if l < advancing {
                tc += 1;
                if tc == j.tiles_w {
                    (tr, tc) = (tr + 1, 0);
                }
                left -= 1;
                if left == 0 {
                    (phase, tr, tc, left) = (phase + 1, 0, 0, j.phase_tiles);
                }
            }
        }
        // Starting a panel of V: fetch the lines of the next one. A panel row of every xi
        // is a line of its own (the GEMM's packed layout), which the hardware prefetchers
        // do not follow; without this the input transform of vgg16.conv3_3 ran 1.3-1.5x
        // slower in that layout than into plain [xi][ld] rows.
        if j.layout.panel_stride != 0 && t % j.layout.panel == 0 && t + j.layout.panel < j.n {
            for x in 0..ah * A {
                j.out.prefetch(j.layout.at(x, t + j.layout.panel));
            }
        }
        // This lane group's column of V; xi steps add `xi_stride` (one division a group).
        let col = j.layout.at(0, t);
        let xs = j.layout.xi_stride;
        if j.two_d {
            // Rows first, each as it is gathered (along its columns), then each column of
            // that: V = B^T (d B).
            G::gather_rows::<A, A>(j.plane, &base, j.pw, fma, &mut t1);
            for q in 0..A {
                let column: [Lanes; A] = std::array::from_fn(|i| t1[i][q]);
                let v = bt_1d::<A>(&column, fma);
                for (p, vp) in v.iter().enumerate() {
                    // Bounds-checked: a layout past the buffer panics, never writes.
                    j.out.write_array(col + (p * A + q) * xs, vp);
                }
            }
        } else {
            G::gather_rows::<A, 1>(j.plane, &base, j.pw, fma, &mut t1_1d);
            for (q, vq) in t1_1d[0].iter().enumerate() {
                j.out.write_array(col + q * xs, vq);
            }
        }
        t += LANES;
    }
}

#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_tiles<G: TileGather, const A: usize, const M: usize>(
    j: &mut WinoOutput,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let (ah, mh) = if j.two_d { (A, M) } else { (1, 1) };
    let xi = ah * A;
    assert!(j.m.len() >= xi * j.ld, "M slab too short");
    assert!(
        j.ld >= j.n.div_ceil(LANES) * LANES,
        "ld below the lane-rounded tile count"
    );
    // The last tile's phase bounds the writes.
    let phases = if j.n == 0 {
        0
    } else {
        (j.t0 + j.n - 1) / j.phase_tiles + 1
    };
    assert!(
        phases
            .saturating_sub(1)
            .saturating_mul(j.phase_stride)
            .saturating_add((j.r1 - j.r0) * j.ow)
            <= j.out.len(),
        "output band too short"
    );
    let (lo, hi) = j.clamp;
    // Without a residual, bias and clamp are applied as each column of Y is made, while it
    // is in registers (two more passes over the tile through the stack otherwise); the
    // residual must come before the clamp, so then they stay separate passes.
    let fused = !j.accumulate;
    let bias = j.bias;
    let finish = |v: &Lanes| -> Lanes {
        let mut r = [0f32; LANES];
        for l in 0..LANES {
            // Two selects, so NaN passes through (as crate::arch::clamp_nan).
            let x = v[l] + bias;
            let c = if x < lo { lo } else { x };
            r[l] = if c > hi { hi } else { c };
        }
        r
    };
    // Working arrays reused by every lane group (see `input_tiles`).
    let mut y = [[[0f32; LANES]; M]; M];
    let mut ty = [[[0f32; LANES]; LANES]; M];
    let mut t1 = [[[0f32; LANES]; M]; A];
    let mut t = 0;
    while t < j.n {
        // y[a][b] lanes: output row a, column b of each of LANES tiles.
        let load = |xi: usize| -> Lanes {
            let o = xi * j.ld + t;
            j.m[o..o + LANES].try_into().expect("LANES floats")
        };
        if j.two_d {
            // Rows first (row p of M along its columns), then each column of that:
            // Y = A^T (M A).
            for (p, tp) in t1.iter_mut().enumerate() {
                let row: [Lanes; A] = std::array::from_fn(|q| load(p * A + q));
                *tp = at_1d::<A, M>(&row, fma);
            }
            for b in 0..M {
                let column: [Lanes; A] = std::array::from_fn(|p| t1[p][b]);
                let yb = at_1d::<A, M>(&column, fma);
                for (a, ya) in yb.iter().enumerate() {
                    y[a][b] = if fused { finish(ya) } else { *ya };
                }
            }
        } else {
            let row: [Lanes; A] = std::array::from_fn(load);
            y[0] = at_1d::<A, M>(&row, fma);
            if fused {
                for yb in y[0].iter_mut() {
                    *yb = finish(yb);
                }
            }
        }
        let lanes = LANES.min(j.n - t);
        // Where each lane's tile goes: (tile's first row, first band row, rows, first column,
        // columns), from a running tile counter (no division per lane).
        // The column of `(r - r0) * ow + col0` is phase-shifted: `col0` carries the phase's
        // offset in `out`.
        let mut place = [(0usize, 0usize, 0usize, 0usize, 0usize); LANES];
        let first = j.t0 + t;
        let (mut phase, in_phase) = (first / j.phase_tiles, first % j.phase_tiles);
        let (mut tr, mut tc) = (in_phase / j.tiles_w, in_phase % j.tiles_w);
        let mut left = j.phase_tiles - in_phase;
        for pl in place.iter_mut().take(lanes) {
            let row0 = (j.tile_row0 + tr) * mh;
            let col0 = tc * M;
            let ra = row0.max(j.r0);
            let rb = (row0 + mh).min(j.r1);
            *pl = (
                row0,
                ra,
                rb.saturating_sub(ra),
                phase * j.phase_stride + col0,
                M.min(j.ow.saturating_sub(col0)),
            );
            tc += 1;
            if tc == j.tiles_w {
                tc = 0;
                tr += 1;
            }
            left -= 1;
            if left == 0 {
                (phase, tr, tc, left) = (phase + 1, 0, 0, j.phase_tiles);
            }
        }
        if !fused {
            let rows_used = &mut y[..mh];
            for x in rows_used.as_flattened_mut().as_flattened_mut() {
                *x += j.bias;
            }
        }
        if j.accumulate {
            for (l, &(row0, ra, rows, col0, cols)) in place.iter().enumerate().take(lanes) {
                for r in ra..ra + rows {
                    let o = (r - j.r0) * j.ow + col0;
                    for (b, &prev) in j.out[o..o + cols].iter().enumerate() {
                        y[r - row0][b][l] += prev;
                    }
                }
            }
        }
        let flat = y[..mh].as_flattened_mut().as_flattened_mut();
        if !fused {
            for x in flat.iter_mut() {
                // Two selects, so NaN passes through (as crate::arch::clamp_nan).
                let c = if *x < lo { lo } else { *x };
                *x = if c > hi { hi } else { c };
            }
        }
        if let Some((kernel, act)) = j.activation {
            (kernel.run)(act, crate::arch::activation::RowsMut::from_slice(flat));
        }
        // The 8 tiles whole and side by side in one tile row (most groups inside an image):
        // each output row of theirs is 8 M contiguous floats, which a tier may build from
        // the M column vectors directly (AVX2, F(4,3): 10 shuffles and 4 stores a row, where
        // the transpose below takes 24 and 8).
        let side_by_side = lanes == LANES
            && place.iter().enumerate().all(|(l, p)| {
                (p.0, p.1, p.2) == (place[0].0, place[0].1, place[0].2)
                    && p.3 == place[0].3 + l * M
                    && p.4 == M
            });
        if side_by_side {
            let (row0, ra, rows, col0, _) = place[0];
            let mut done = true;
            for r in ra..ra + rows {
                let o = (r - j.r0) * j.ow + col0;
                // Bounds-checked: the 8 tiles' row lies inside the band.
                done &= G::interleave(&y[r - row0], &mut j.out[o..o + LANES * M]);
            }
            if done {
                t += LANES;
                continue;
            }
        }
        // Each output row of the 8 tiles turned lane-major, ty[a][l][b] = y[a][b][l], by the
        // tier's 8x8 transpose, so that each tile row is one copy of M floats. (Element by
        // element from the lanes, with a bounds check each, was most of the output transform.)
        for (t, ya) in ty.iter_mut().zip(&y).take(mh) {
            let mut src = [[0f32; LANES]; LANES];
            src[..M].copy_from_slice(ya);
            *t = G::transpose(&src);
        }
        for (l, &(row0, ra, rows, col0, cols)) in place.iter().enumerate().take(lanes) {
            for r in ra..ra + rows {
                let o = (r - j.r0) * j.ow + col0;
                let src = &ty[r - row0][l];
                if cols == M {
                    // A fixed-size copy (moves, not a memmove call: 8% of vgg16.conv1_2).
                    let dst: &mut [f32; M] = (&mut j.out[o..o + M]).try_into().expect("M floats");
                    *dst = src[..M].try_into().expect("M floats");
                } else {
                    for (d, &v) in j.out[o..o + cols].iter_mut().zip(src) {
                        *d = v;
                    }
                }
            }
        }
        t += LANES;
    }
}

/// The input transform for any variant (the body each tier compiles), gathering tiles with
/// `G`.
#[inline(always)]
pub fn input_generic<G: TileGather>(j: &mut WinoInput, fma: impl Fn(f32, f32, f32) -> f32 + Copy) {
    match j.variant {
        Variant::F2 => input_tiles::<G, 4, 2>(j, fma),
        Variant::F4 => input_tiles::<G, 6, 4>(j, fma),
        Variant::F6 => input_tiles::<G, 8, 6>(j, fma),
    }
}

/// Loads `LANES` input tiles into lanes, a tile row at a time, and applies B^T along each
/// row as it arrives: `out[i] = B^T row_i` with `row_i[q][l] = plane[base[l] + i * pw + q]`,
/// for rows `i < rows`. Implementations check every read against `plane` once per call.
/// (Each row is transformed while it is in registers; the whole gathered tile went through
/// the stack twice before, most of the input transform's loads and stores. A callback in
/// place of `bt_1d` was not inlined and lost the tier's FMA.)
pub trait TileGather {
    /// Gathers the tiles starting at `base` (one per lane), transforming row by row.
    /// `R` tile rows of `A` columns, into `out` (every element written).
    fn gather_rows<const A: usize, const R: usize>(
        plane: &[f32],
        base: &[usize; LANES],
        pw: usize,
        fma: impl Fn(f32, f32, f32) -> f32 + Copy,
        out: &mut [[Lanes; A]; R],
    );

    /// The 8x8 transpose `out[l][b] = src[b][l]` (element by element unless the tier has a
    /// faster one).
    #[inline(always)]
    fn transpose(src: &[Lanes; LANES]) -> [Lanes; LANES] {
        std::array::from_fn(|l| std::array::from_fn(|b| src[b][l]))
    }

    /// `dst[l * M + b] = columns[b][l]` (`dst` holds `LANES * M` floats): one output row of
    /// 8 side-by-side tiles from its M column vectors, where the tier has a fast way for
    /// this M; returns whether it wrote (by default it does not, and the caller transposes).
    #[inline(always)]
    fn interleave<const M: usize>(columns: &[Lanes; M], dst: &mut [f32]) -> bool {
        let _ = (columns, dst);
        false
    }
}

/// Tiles gathered with scalar loads (the portable and NEON tiers). Lanes go through memory,
/// and the vector reloads wait on store forwarding: on AVX2 this gather was the hottest part
/// of the input transform (the F(4,3) transform ran at 32 ns a tile against 12 with the
/// hardware gather).
pub struct ScalarGather;

impl TileGather for ScalarGather {
    #[inline(always)]
    fn gather_rows<const A: usize, const R: usize>(
        plane: &[f32],
        base: &[usize; LANES],
        pw: usize,
        fma: impl Fn(f32, f32, f32) -> f32 + Copy,
        out: &mut [[Lanes; A]; R],
    ) {
        for (i, o) in out.iter_mut().enumerate() {
            let mut row = [[0f32; LANES]; A];
            for (q, v) in row.iter_mut().enumerate() {
                for (l, x) in v.iter_mut().enumerate() {
                    *x = plane[base[l] + i * pw + q];
                }
            }
            *o = bt_1d(&row, fma);
        }
    }
}

/// The output transform for any variant (the body each tier compiles).
#[inline(always)]
pub fn output_generic<G: TileGather>(
    j: &mut WinoOutput,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    match j.variant {
        Variant::F2 => output_tiles::<G, 4, 2>(j, fma),
        Variant::F4 => output_tiles::<G, 6, 4>(j, fma),
        Variant::F6 => output_tiles::<G, 8, 6>(j, fma),
    }
}

/// `(A dY A^T)` for lanes of channels, `A^T` taken from the variant's f64 matrix. Term by
/// term (alpha m^2 + alpha^2 m multiply-adds a tile, 240 for F(4,3)): a tenth of the weight
/// gradient's GEMM work a tile at 64 input channels, so it is not factored by hand.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn grad_tiles<const A: usize, const M: usize>(
    j: &mut WinoGrad,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let at = j.variant.at();
    let at: [[f32; A]; M] = std::array::from_fn(|i| std::array::from_fn(|p| at[i * A + p] as f32));
    assert!(
        (1..=LANES).contains(&j.channels),
        "1 to {LANES} channels a call"
    );
    let lanes = j.channels;
    let mh = if j.two_d { M } else { 1 };
    for t in 0..j.n {
        let tile = j.t0 + t;
        let (y0, x0) = ((tile / j.tiles_w) * mh, (tile % j.tiles_w) * M);
        let (rows, cols) = (
            mh.min(j.rows.saturating_sub(y0)),
            M.min(j.cols.saturating_sub(x0)),
        );
        // The tile of each channel into lanes (zeros past the plane and in unused lanes).
        // Bounds-checked reads: a plane description past `dy` panics, never reads outside.
        let mut d = [[[0f32; LANES]; M]; M];
        // A tile with nothing to read reads nothing: a phase plane of no rows has an origin
        // past its channel's plane, at the batch's end past `dy`.
        if rows > 0 && cols > 0 {
            for l in 0..lanes {
                let plane = &j.dy[l * j.plane_stride + j.origin..];
                for i in 0..rows {
                    let row = (y0 + i) * j.row_stride + x0 * j.col_stride;
                    if j.col_stride == 1 {
                        for (k, &v) in plane[row..row + cols].iter().enumerate() {
                            d[i][k][l] = v;
                        }
                    } else {
                        for k in 0..cols {
                            d[i][k][l] = plane[row + k * j.col_stride];
                        }
                    }
                }
            }
        }
        let at_tile = j.base + t * j.tile_stride;
        if !j.two_d {
            // 1-D: A dY, alpha positions.
            for p in 0..A {
                let mut v = [0f32; LANES];
                for k in 0..M {
                    let c = at[k][p];
                    for l in 0..LANES {
                        v[l] = fma(c, d[0][k][l], v[l]);
                    }
                }
                let off = at_tile + p * j.xi_stride;
                if lanes == LANES {
                    j.out.write_array(off, &v);
                } else {
                    j.out.write_from(off, &v[..lanes]);
                }
            }
            continue;
        }
        // Row p of t1 = A dY (m vectors), then row p of A dY A^T from it: one row of t1 at
        // a time stays in registers (all of t1, alpha x m vectors, was spilled and every
        // product accumulated through the stack).
        for p in 0..A {
            let mut t1 = [[0f32; LANES]; M];
            for i in 0..M {
                let c = at[i][p];
                for k in 0..M {
                    for l in 0..LANES {
                        t1[k][l] = fma(c, d[i][k][l], t1[k][l]);
                    }
                }
            }
            for q in 0..A {
                let mut v = [0f32; LANES];
                for k in 0..M {
                    let c = at[k][q];
                    for l in 0..LANES {
                        v[l] = fma(c, t1[k][l], v[l]);
                    }
                }
                // Bounds-checked: a layout past the buffer panics, never writes.
                let off = at_tile + (p * A + q) * j.xi_stride;
                if lanes == LANES {
                    j.out.write_array(off, &v);
                } else {
                    j.out.write_from(off, &v[..lanes]);
                }
            }
        }
    }
}

/// The output-gradient transform for any variant (the body each tier compiles).
#[inline(always)]
pub fn grad_generic(j: &mut WinoGrad, fma: impl Fn(f32, f32, f32) -> f32 + Copy) {
    match j.variant {
        Variant::F2 => grad_tiles::<4, 2>(j, fma),
        Variant::F4 => grad_tiles::<6, 4>(j, fma),
        Variant::F6 => grad_tiles::<8, 6>(j, fma),
    }
}

/// Declares a tier's Winograd transforms: the generic bodies compiled under the tier's
/// target features, behind safe entries that check the tier is available.
macro_rules! wino_kernel {
    ($isa:ident, $name:literal, $features:literal, $gather:ty) => {
        /// Winograd transforms: the generic bodies vectorized under this tier's features.
        pub const F32_WINOGRAD: crate::arch::winograd::WinoUkernel =
            crate::arch::winograd::WinoUkernel {
                name: $name,
                isa: Isa::$isa,
                input: wino_input,
                output: wino_output,
                grad: wino_grad,
            };

        fn wino_input(j: &mut crate::arch::winograd::WinoInput) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { wino_input_tf(j) }
        }

        #[target_feature(enable = $features)]
        fn wino_input_tf(j: &mut crate::arch::winograd::WinoInput) {
            crate::arch::winograd::input_generic::<$gather>(j, f32::mul_add)
        }

        fn wino_output(j: &mut crate::arch::winograd::WinoOutput) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { wino_output_tf(j) }
        }

        #[target_feature(enable = $features)]
        fn wino_output_tf(j: &mut crate::arch::winograd::WinoOutput) {
            crate::arch::winograd::output_generic::<$gather>(j, f32::mul_add)
        }

        fn wino_grad(j: &mut crate::arch::winograd::WinoGrad) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { wino_grad_tf(j) }
        }

        #[target_feature(enable = $features)]
        fn wino_grad_tf(j: &mut crate::arch::winograd::WinoGrad) {
            crate::arch::winograd::grad_generic(j, f32::mul_add)
        }
    };
}
pub(crate) use wino_kernel;

/// The portable tier's transforms (the build's baseline).
pub const F32_WINOGRAD_PORTABLE: WinoUkernel = WinoUkernel {
    name: "f32_winograd__portable",
    isa: crate::arch::Isa::Portable,
    input: input_portable,
    output: output_portable,
    grad: grad_portable,
};

/// The input transform at the build's baseline (no FMA: there `mul_add` is a libm call).
fn input_portable(j: &mut WinoInput) {
    input_generic::<ScalarGather>(j, |a, b, c| a * b + c)
}

/// The output transform at the build's baseline.
fn output_portable(j: &mut WinoOutput) {
    output_generic::<ScalarGather>(j, |a, b, c| a * b + c)
}

/// The output-gradient transform at the build's baseline.
fn grad_portable(j: &mut WinoGrad) {
    grad_generic(j, |a, b, c| a * b + c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D correlation of `d` (alpha) with `g` (3) by the algorithm, in f64.
    fn wino_1d(v: Variant, d: &[f64], g: &[f64]) -> Vec<f64> {
        let (m, a) = (v.m(), v.alpha());
        let gg: Vec<f64> = (0..a)
            .map(|i| (0..3).map(|k| v.g()[i * 3 + k] * g[k]).sum())
            .collect();
        let bd: Vec<f64> = (0..a)
            .map(|i| (0..a).map(|k| v.bt()[i * a + k] * d[k]).sum())
            .collect();
        (0..m)
            .map(|r| (0..a).map(|i| v.at()[r * a + i] * gg[i] * bd[i]).sum())
            .collect()
    }

    #[test]
    fn matrices_compute_the_correlation_exactly_on_small_integers() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % 9) as f64 - 4.0
        };
        for v in [Variant::F2, Variant::F4, Variant::F6] {
            for _ in 0..200 {
                let d: Vec<f64> = (0..v.alpha()).map(|_| next()).collect();
                let g: Vec<f64> = (0..3).map(|_| next()).collect();
                let got = wino_1d(v, &d, &g);
                for (i, y) in got.iter().enumerate() {
                    let want: f64 = (0..3).map(|k| g[k] * d[i + k]).sum();
                    // Integers up to 4 * 4 * 3: exact up to the rounding of the fractions
                    // of G (1/90, 2/9, ...), far below 1e-9.
                    assert!(
                        (y - want).abs() < 1e-9,
                        "{v:?}: y[{i}] = {y}, correlation {want}"
                    );
                }
            }
        }
    }

    /// Each hand-factored 1-D transform is its matrix: applied to the unit vectors (lane
    /// `l` scaled by `l + 1`, so that a lane mix-up shows), it returns the matrix's columns,
    /// exactly, with and without a fused multiply-add.
    #[test]
    fn factored_transforms_are_their_matrices() {
        fn check<const C: usize, const R: usize>(
            name: &str,
            mat: &[f64],
            f: impl Fn(&[Lanes; C]) -> [Lanes; R],
        ) {
            for k in 0..C {
                let mut x = [[0f32; LANES]; C];
                for (l, v) in x[k].iter_mut().enumerate() {
                    *v = (l + 1) as f32;
                }
                let y = f(&x);
                for (r, yr) in y.iter().enumerate() {
                    for (l, &v) in yr.iter().enumerate() {
                        let want = mat[r * C + k] * (l + 1) as f64;
                        assert_eq!(v as f64, want, "{name}[{r}][{k}] lane {l}");
                    }
                }
            }
        }
        let fused = f32::mul_add;
        let plain = |a: f32, b: f32, c: f32| a * b + c;
        check::<4, 4>("BT2", &BT2_64, bt2);
        check::<4, 2>("AT2", &AT2_64, at2);
        check::<6, 6>("BT4", &BT4_64, |x| bt4(x, fused));
        check::<6, 6>("BT4", &BT4_64, |x| bt4(x, plain));
        check::<6, 4>("AT4", &AT4_64, |x| at4(x, fused));
        check::<6, 4>("AT4", &AT4_64, |x| at4(x, plain));
        check::<8, 8>("BT6", &BT6_64, |x| bt6(x, fused));
        check::<8, 8>("BT6", &BT6_64, |x| bt6(x, plain));
        check::<8, 6>("AT6", &AT6_64, |x| at6(x, fused));
        check::<8, 6>("AT6", &AT6_64, |x| at6(x, plain));
    }

    /// The tiles of a test plane that an input transform reads.
    struct PlaneTiles<'a> {
        plane: &'a [f32],
        pw: usize,
        tiles_w: usize,
        t0: usize,
        n: usize,
    }

    /// The scalar input transform of `tiles` into `buf` with `layout`.
    fn transform_into(
        v: Variant,
        two_d: bool,
        tiles: &PlaneTiles,
        buf: &mut [f32],
        layout: VLayout,
    ) {
        let shared = crate::arch::SharedMut::new(buf);
        input_portable(&mut WinoInput {
            phase_tiles: usize::MAX,
            phase_stride: 0,
            variant: v,
            two_d,
            plane: tiles.plane,
            pw: tiles.pw,
            tiles_w: tiles.tiles_w,
            t0: tiles.t0,
            n: tiles.n,
            out: &shared,
            layout,
        });
    }

    /// Every tier's transforms give exactly the portable tier's results on integer data
    /// (every intermediate is exact, so FMA or not does not matter): 1-D and 2-D, every
    /// variant, planes that end right after the last tile (the last lane group cannot load
    /// whole 8-float rows there and takes the element-by-element path) and groups that
    /// wrap a tile row. (The AVX2 tier's 1-D F(2,3) and F(4,3) once differed under qemu's
    /// Haswell model only, through a hardware gather.)
    #[test]
    fn every_tier_transforms_like_the_portable_one() {
        for isa in crate::arch::available_isas() {
            let k = isa.kernels().expect("available tier").winograd;
            // Rows of 5 tiles (every group of 8 wraps a row) and of 17 (groups side by side
            // in a row: the tiers' interleaved row stores).
            for (v, two_d, tiles_w) in [Variant::F2, Variant::F4, Variant::F6]
                .into_iter()
                .flat_map(|v| [(v, false, 5), (v, true, 5), (v, false, 17), (v, true, 17)])
            {
                {
                    let (m, a) = (v.m(), v.alpha());
                    let (mh, ah) = if two_d { (m, a) } else { (1, 1) };
                    let tiles_h = if two_d { 3 } else { 1 };
                    let n = tiles_w * tiles_h;
                    let pw = tiles_w * m + a - m;
                    let ph = tiles_h * mh + ah - mh;
                    let plane: Vec<f32> =
                        (0..pw * ph).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
                    let ld = n.div_ceil(LANES) * LANES;
                    let xi = ah * a;
                    let mut want = vec![0f32; xi * ld];
                    let mut got = vec![0f32; xi * ld];
                    for (f, buf) in [
                        (input_portable as fn(&mut WinoInput), &mut want),
                        (k.input, &mut got),
                    ] {
                        let shared = crate::arch::SharedMut::new(buf);
                        f(&mut WinoInput {
                            variant: v,
                            two_d,
                            plane: &plane,
                            pw,
                            tiles_w,
                            t0: 0,
                            n,
                            phase_tiles: usize::MAX,
                            phase_stride: 0,
                            out: &shared,
                            layout: VLayout::rows(0, ld),
                        });
                    }
                    assert_eq!(got, want, "{isa:?} input {v:?} 2d={two_d}");
                    let mm: Vec<f32> = (0..xi * ld).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
                    let (ow, oh) = (tiles_w * m, tiles_h * mh);
                    let mut want = vec![0.5f32; oh * ow];
                    let mut got = want.clone();
                    for (f, out) in [
                        (output_portable as fn(&mut WinoOutput), &mut want),
                        (k.output, &mut got),
                    ] {
                        f(&mut WinoOutput {
                            variant: v,
                            two_d,
                            m: &mm,
                            ld,
                            tiles_w,
                            tile_row0: 0,
                            t0: 0,
                            n,
                            phase_tiles: usize::MAX,
                            phase_stride: 0,
                            out,
                            ow,
                            r0: 0,
                            r1: oh,
                            bias: 0.5,
                            accumulate: two_d,
                            clamp: (-40.0, 40.0),
                            activation: None,
                        });
                    }
                    assert_eq!(got, want, "{isa:?} output {v:?} 2d={two_d}");
                }
            }
        }
    }

    /// V written in the GEMM's packed layout holds, element for element, what the plain
    /// `[xi][ld]` slab holds, and nothing else in the buffer is written.
    #[test]
    fn input_transform_writes_the_packed_layout() {
        let (blocks, nr) = ([(0usize, 3usize), (3, 2)], 16);
        for v in [Variant::F2, Variant::F4, Variant::F6] {
            for two_d in [false, true] {
                let (m, a) = (v.m(), v.alpha());
                let (mh, ah) = if two_d { (m, a) } else { (1, 1) };
                let (tiles_w, tiles_h) = (7, if two_d { 4 } else { 1 });
                let pw = tiles_w * m + 2;
                let ph = tiles_h * mh + ah - mh;
                let plane: Vec<f32> = (0..pw * ph).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
                let n = tiles_w * tiles_h - 3;
                let ld = n.div_ceil(LANES) * LANES;
                let cols = ld.div_ceil(nr) * nr;
                let xi = ah * a;
                let xi_stride = 5 * cols + 16;
                let transform = |buf: &mut [f32], layout: VLayout| {
                    let tiles = PlaneTiles {
                        plane: &plane,
                        pw,
                        tiles_w,
                        t0: 2,
                        n,
                    };
                    transform_into(v, two_d, &tiles, buf, layout)
                };
                let mut rows = vec![0f32; xi * ld];
                transform(&mut rows, VLayout::rows(0, ld));
                for c in 0..5 {
                    let mut packed = vec![f32::NAN; xi * xi_stride];
                    let layout = VLayout::panels(c, &blocks, cols, nr, xi_stride);
                    transform(&mut packed, layout);
                    let mut written = 0;
                    for x in 0..xi {
                        for t in 0..ld {
                            let got = packed[layout.at(x, t)];
                            if t < n {
                                assert_eq!(
                                    got,
                                    rows[x * ld + t],
                                    "{v:?} 2d={two_d} c {c} xi {x} tile {t}"
                                );
                            }
                            written += 1;
                        }
                        // Row (c, x) of the packed B: the K block's row c, panel by panel.
                        let (p0, kc) = if c < 3 { (0, 3) } else { (3, 2) };
                        let panel0 = x * xi_stride + p0 * cols + (c - p0) * nr;
                        assert_eq!(layout.at(x, 0), panel0);
                        assert_eq!(layout.at(x, nr), panel0 + kc * nr);
                    }
                    let touched = packed.iter().filter(|f| !f.is_nan()).count();
                    assert_eq!(
                        touched, written,
                        "{v:?} 2d={two_d} c {c}: writes outside V's rows"
                    );
                }
            }
        }
    }

    /// The input transform against `B^T d B` computed from the matrix, on integer tiles
    /// (every entry of B is a dyadic rational, so both are exact).
    #[test]
    fn input_transform_matches_its_matrix() {
        for v in [Variant::F2, Variant::F4, Variant::F6] {
            for two_d in [false, true] {
                let (m, a) = (v.m(), v.alpha());
                let (mh, ah) = if two_d { (m, a) } else { (1, 1) };
                let tiles_w = 5;
                let tiles_h = if two_d { 3 } else { 1 };
                let pw = tiles_w * m + 2;
                let ph = tiles_h * mh + ah - mh;
                let plane: Vec<f32> = (0..pw * ph).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
                let n = tiles_w * tiles_h - 2;
                let ld = n.div_ceil(LANES) * LANES;
                let xi = ah * a;
                let mut out = vec![0f32; xi * ld];
                let tiles = PlaneTiles {
                    plane: &plane,
                    pw,
                    tiles_w,
                    t0: 1,
                    n,
                };
                transform_into(v, two_d, &tiles, &mut out, VLayout::rows(0, ld));
                let bt = v.bt();
                for j in 0..n {
                    let t = j + 1;
                    let base = (t / tiles_w) * mh * pw + (t % tiles_w) * m;
                    let d = |i: usize, k: usize| plane[base + i * pw + k] as f64;
                    for p in 0..ah {
                        for q in 0..a {
                            let want: f64 = if two_d {
                                (0..a)
                                    .flat_map(|i| (0..a).map(move |k| (i, k)))
                                    .map(|(i, k)| bt[p * a + i] * d(i, k) * bt[q * a + k])
                                    .sum()
                            } else {
                                (0..a).map(|k| bt[q * a + k] * d(0, k)).sum()
                            };
                            let got = out[(p * a + q) * ld + j] as f64;
                            assert_eq!(got, want, "{v:?} 2d={two_d} tile {t} xi ({p},{q})");
                        }
                    }
                }
            }
        }
    }

    /// The output transform against `A^T M A + bias`, with a band that cuts tiles, a ragged
    /// right edge, and a residual.
    #[test]
    fn output_transform_matches_its_matrix_and_stores_only_the_band() {
        for v in [Variant::F2, Variant::F4, Variant::F6] {
            for (two_d, accumulate) in [(false, true), (true, true), (false, false), (true, false)]
            {
                let (m, a) = (v.m(), v.alpha());
                let (mh, ah) = if two_d { (m, a) } else { (1, 1) };
                let xi = ah * a;
                let tiles_w = 3;
                let ow = tiles_w * m - 1;
                let tiles_h = if two_d { 3 } else { 1 };
                let oh = tiles_h * mh - usize::from(two_d);
                // The band: rows 1..oh-1 when 2-D (cuts the first and last tile rows).
                let (r0, r1) = if two_d { (1, oh - 1) } else { (0, 1) };
                let n = tiles_w * tiles_h;
                let ld = n.div_ceil(LANES) * LANES;
                let mm: Vec<f32> = (0..xi * ld).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
                let residual = |o: usize| (o % 3) as f32 * 10.0;
                let mut out: Vec<f32> = (0..(r1 - r0) * ow).map(residual).collect();
                let mut checked = 0;
                output_portable(&mut WinoOutput {
                    phase_tiles: usize::MAX,
                    phase_stride: 0,
                    variant: v,
                    two_d,
                    m: &mm,
                    ld,
                    tiles_w,
                    tile_row0: 0,
                    t0: 0,
                    n,
                    out: &mut out,
                    ow,
                    r0,
                    r1,
                    bias: 0.5,
                    accumulate,
                    clamp: (f32::NEG_INFINITY, f32::INFINITY),
                    activation: None,
                });
                let at = v.at();
                for t in 0..n {
                    for y in 0..mh {
                        for x in 0..m {
                            let (gr, gc) = ((t / tiles_w) * mh + y, (t % tiles_w) * m + x);
                            if gr < r0 || gr >= r1 || gc >= ow {
                                continue;
                            }
                            let want: f64 = if two_d {
                                (0..a)
                                    .flat_map(|p| (0..a).map(move |q| (p, q)))
                                    .map(|(p, q)| {
                                        at[y * a + p]
                                            * mm[(p * a + q) * ld + t] as f64
                                            * at[x * a + q]
                                    })
                                    .sum()
                            } else {
                                (0..a).map(|q| at[x * a + q] * mm[q * ld + t] as f64).sum()
                            };
                            let o = (gr - r0) * ow + gc;
                            let prev = if accumulate { residual(o) as f64 } else { 0.0 };
                            let want = want + 0.5 + prev;
                            // Dyadic entries on small integers: exact up to f32 rounding of
                            // the largest partial sums.
                            assert!(
                                (out[o] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                                "{v:?} 2d={two_d} tile {t} ({y},{x}): {} vs {want}",
                                out[o]
                            );
                            checked += 1;
                        }
                    }
                }
                assert_eq!(
                    checked,
                    out.len(),
                    "every band element is some tile's output"
                );
            }
        }
    }
}
