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

/// Declares a matrix twice, in f64 (kernel transform at plan time, tests) and in f32 (the
/// run-time transforms), from one list of entries.
macro_rules! matrix {
    ($n64:ident, $n32:ident, $len:literal, [$($v:expr),* $(,)?]) => {
        const $n64: [f64; $len] = [$(($v) as f64),*];
        const $n32: [f32; $len] = [$(($v) as f32),*];
    };
    // G is only used at plan time, in f64.
    ($n64:ident, $len:literal, [$($v:expr),* $(,)?]) => {
        const $n64: [f64; $len] = [$(($v) as f64),*];
    };
}

// F(2,3), points 0, 1, -1, inf.
matrix!(
    BT2_64,
    BT2,
    16,
    [1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 1.0, 0.0, -1.0,]
);
matrix!(
    G2_64,
    12,
    [1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0,]
);
matrix!(AT2_64, AT2, 8, [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0,]);

// F(4,3), points 0, 1, -1, 2, -2, inf.
matrix!(
    BT4_64,
    BT4,
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
    AT4,
    24,
    [
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, 2.0, -2.0, 0.0, 0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ]
);

// F(6,3), points 0, 1, -1, 2, -2, 1/2, -1/2, inf.
matrix!(
    BT6_64,
    BT6,
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
    AT6,
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
}

/// `out[r] = sum_c mat[r][c] src[c]`, where each element is `W` vectors of lanes (a whole
/// tile row when `W = alpha`, one value when `W = 1`), fully unrolled: `mat` is a constant
/// of the caller, so once inlined every entry is a constant, the zero entries vanish and +-1
/// become adds. Rows of a tile are elements of the column pass and values of the row pass,
/// so neither pass transposes. (Left to LLVM's unroller, the 8 x 8 loops of F(6,3) stayed
/// rolled: its input transform ran 2.6x slower than with `-unroll-threshold=2000`.)
#[inline(always)]
fn apply<const R: usize, const C: usize, const W: usize>(
    mat: &[f32],
    src: &[[Lanes; W]; C],
    out: &mut [[Lanes; W]; R],
) {
    match (R, C) {
        (4, 4) => apply_4x4(mat, src, out),
        (6, 6) => apply_6x6(mat, src, out),
        (8, 8) => apply_8x8(mat, src, out),
        (2, 4) => apply_2x4(mat, src, out),
        (4, 6) => apply_4x6(mat, src, out),
        (6, 8) => apply_6x8(mat, src, out),
        _ => unreachable!("no transform of {R} x {C}"),
    }
}

/// One row of [`apply`]: `out[r] = sum mat[r][c] src[c]` over the listed columns.
macro_rules! apply_row {
    ($out:ident, $mat:ident, $src:ident, $r:literal, $cols:literal, [$($c:literal)*]) => {
        // The first non-zero term initializes the sum (0 + x cannot fold away: -0.0).
        let mut acc = [[0f32; LANES]; W];
        let mut first = true;
        $({
            let k = $mat[$r * $cols + $c];
            if k != 0.0 {
                for w in 0..W {
                    for l in 0..LANES {
                        let term = k * $src[$c][w][l];
                        acc[w][l] = if first { term } else { acc[w][l] + term };
                    }
                }
                first = false;
            }
        })*
        let _ = first;
        $out[$r] = acc;
    };
}

/// A fixed-size [`apply`]: every (row, column) pair written out.
macro_rules! apply_fixed {
    ($name:ident, $rows:literal, $cols:literal, [$($r:literal)*], $cs:tt) => {
        #[inline(always)]
        fn $name<const W: usize>(mat: &[f32], src: &[[Lanes; W]], out: &mut [[Lanes; W]]) {
            let (src, out): (&[[Lanes; W]; $cols], &mut [[Lanes; W]; $rows]) = (
                src.try_into().expect("columns"),
                out.try_into().expect("rows"),
            );
            $({ apply_row!(out, mat, src, $r, $cols, $cs); })*
        }
    };
}

apply_fixed!(apply_4x4, 4, 4, [0 1 2 3], [0 1 2 3]);
apply_fixed!(apply_6x6, 6, 6, [0 1 2 3 4 5], [0 1 2 3 4 5]);
apply_fixed!(apply_8x8, 8, 8, [0 1 2 3 4 5 6 7], [0 1 2 3 4 5 6 7]);
apply_fixed!(apply_2x4, 2, 4, [0 1], [0 1 2 3]);
apply_fixed!(apply_4x6, 4, 6, [0 1 2 3], [0 1 2 3 4 5]);
apply_fixed!(apply_6x8, 6, 8, [0 1 2 3 4 5], [0 1 2 3 4 5 6 7]);

/// A row of `A` lane vectors seen as `A` one-vector elements (same layout), without a copy.
#[inline(always)]
fn as_columns<const A: usize>(row: &[Lanes; A]) -> &[[Lanes; 1]; A] {
    row.as_chunks::<1>().0.try_into().expect("A vectors")
}

// Index loops: the tile algebra reads clearer with explicit (row, column) indices.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_tiles<G: TileGather, const A: usize, const M: usize>(j: &mut WinoInput, bt: &[f32]) {
    let (ah, mh) = if j.two_d { (A, M) } else { (1, 1) };
    assert!(
        j.layout.panel > 0 && j.layout.panel.is_multiple_of(LANES),
        "V panels of whole lane groups"
    );
    if j.n == 0 {
        return;
    }
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
        let mut d = [[[0f32; LANES]; A]; A];
        G::gather(j.plane, &base, j.pw, ah, &mut d);
        if j.two_d {
            // Columns first, whole rows as elements: t1 = B^T d; then each row: V = t1 B.
            let mut t1 = [[[0f32; LANES]; A]; A];
            apply::<A, A, A>(bt, &d, &mut t1);
            for (p, row) in t1.iter().enumerate() {
                let src: &[[Lanes; 1]; A] = as_columns(row);
                let mut v = [[[0f32; LANES]; 1]; A];
                apply::<A, A, 1>(bt, src, &mut v);
                for (q, vq) in v.iter().enumerate() {
                    // Bounds-checked: a layout past the buffer panics, never writes.
                    j.out.write_array(col + (p * A + q) * xs, &vq[0]);
                }
            }
        } else {
            let src: &[[Lanes; 1]; A] = as_columns(&d[0]);
            let mut v = [[[0f32; LANES]; 1]; A];
            apply::<A, A, 1>(bt, src, &mut v);
            for (q, vq) in v.iter().enumerate() {
                j.out.write_array(col + q * xs, &vq[0]);
            }
        }
        t += LANES;
    }
}

#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_tiles<G: TileGather, const A: usize, const M: usize>(j: &mut WinoOutput, at: &[f32]) {
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
    let mut t = 0;
    while t < j.n {
        // y[a][b] lanes: output row a, column b of each of LANES tiles.
        let mut y = [[[0f32; LANES]; M]; M];
        if j.two_d {
            let mut mt = [[[0f32; LANES]; A]; A];
            for (p, row) in mt.iter_mut().enumerate() {
                for (q, v) in row.iter_mut().enumerate() {
                    let o = (p * A + q) * j.ld + t;
                    v.copy_from_slice(&j.m[o..o + LANES]);
                }
            }
            // Columns first, whole rows as elements: t1 = A^T M; then each row: y = t1 A.
            let mut t1 = [[[0f32; LANES]; A]; M];
            apply::<M, A, A>(at, &mt, &mut t1);
            for (a, row) in t1.iter().enumerate() {
                let src: &[[Lanes; 1]; A] = as_columns(row);
                let mut v = [[[0f32; LANES]; 1]; M];
                apply::<M, A, 1>(at, src, &mut v);
                for b in 0..M {
                    y[a][b] = v[b][0];
                }
            }
        } else {
            let mut mq = [[[0f32; LANES]; 1]; A];
            for (q, v) in mq.iter_mut().enumerate() {
                let o = q * j.ld + t;
                v[0].copy_from_slice(&j.m[o..o + LANES]);
            }
            let mut v = [[[0f32; LANES]; 1]; M];
            apply::<M, A, 1>(at, &mq, &mut v);
            for b in 0..M {
                y[0][b] = v[b][0];
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
        let rows_used = &mut y[..mh];
        for x in rows_used.as_flattened_mut().as_flattened_mut() {
            *x += j.bias;
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
        for x in flat.iter_mut() {
            // Two selects, so NaN passes through (as crate::arch::clamp_nan).
            let c = if *x < lo { lo } else { *x };
            *x = if c > hi { hi } else { c };
        }
        if let Some((kernel, act)) = j.activation {
            (kernel.run)(act, crate::arch::activation::RowsMut::from_slice(flat));
        }
        // Each output row of the 8 tiles turned lane-major, ty[a][l][b] = y[a][b][l], by the
        // tier's 8x8 transpose, so that each tile row is one copy of M floats. (Element by
        // element from the lanes, with a bounds check each, was most of the output transform.)
        let mut ty = [[[0f32; LANES]; LANES]; M];
        for (a, t) in ty.iter_mut().enumerate().take(mh) {
            let mut src = [[0f32; LANES]; LANES];
            src[..M].copy_from_slice(&y[a]);
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
pub fn input_generic<G: TileGather>(j: &mut WinoInput) {
    match j.variant {
        Variant::F2 => input_tiles::<G, 4, 2>(j, &BT2),
        Variant::F4 => input_tiles::<G, 6, 4>(j, &BT4),
        Variant::F6 => input_tiles::<G, 8, 6>(j, &BT6),
    }
}

/// Loads `LANES` input tiles into lanes: `d[i][q][l] = plane[base[l] + i * pw + q]` for rows
/// `i < rows`. Implementations check every read against `plane` once per call.
pub trait TileGather {
    /// Gathers the tiles starting at `base` (one per lane).
    fn gather<const A: usize>(
        plane: &[f32],
        base: &[usize; LANES],
        pw: usize,
        rows: usize,
        d: &mut [[Lanes; A]; A],
    );

    /// The 8x8 transpose `out[l][b] = src[b][l]` (element by element unless the tier has a
    /// faster one).
    #[inline(always)]
    fn transpose(src: &[Lanes; LANES]) -> [Lanes; LANES] {
        std::array::from_fn(|l| std::array::from_fn(|b| src[b][l]))
    }
}

/// Tiles gathered with scalar loads (the portable and NEON tiers). Lanes go through memory,
/// and the vector reloads wait on store forwarding: on AVX2 this gather was the hottest part
/// of the input transform (the F(4,3) transform ran at 32 ns a tile against 12 with the
/// hardware gather).
pub struct ScalarGather;

impl TileGather for ScalarGather {
    #[inline(always)]
    fn gather<const A: usize>(
        plane: &[f32],
        base: &[usize; LANES],
        pw: usize,
        rows: usize,
        d: &mut [[Lanes; A]; A],
    ) {
        for (i, di) in d.iter_mut().enumerate().take(rows) {
            for (q, v) in di.iter_mut().enumerate() {
                let off = i * pw + q;
                *v = std::array::from_fn(|l| plane[base[l] + off]);
            }
        }
    }
}

/// The output transform for any variant (the body each tier compiles).
#[inline(always)]
pub fn output_generic<G: TileGather>(j: &mut WinoOutput) {
    match j.variant {
        Variant::F2 => output_tiles::<G, 4, 2>(j, &AT2),
        Variant::F4 => output_tiles::<G, 6, 4>(j, &AT4),
        Variant::F6 => output_tiles::<G, 8, 6>(j, &AT6),
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
            };

        fn wino_input(j: &mut crate::arch::winograd::WinoInput) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { wino_input_tf(j) }
        }

        #[target_feature(enable = $features)]
        fn wino_input_tf(j: &mut crate::arch::winograd::WinoInput) {
            crate::arch::winograd::input_generic::<$gather>(j)
        }

        fn wino_output(j: &mut crate::arch::winograd::WinoOutput) {
            assert!(Isa::$isa.is_available(), "{} on a CPU without it", $name);
            // SAFETY: the tier's features were just checked; the body is safe Rust over slices.
            unsafe { wino_output_tf(j) }
        }

        #[target_feature(enable = $features)]
        fn wino_output_tf(j: &mut crate::arch::winograd::WinoOutput) {
            crate::arch::winograd::output_generic::<$gather>(j)
        }
    };
}
pub(crate) use wino_kernel;

/// The portable tier's transforms (the build's baseline).
pub const F32_WINOGRAD_PORTABLE: WinoUkernel = WinoUkernel {
    name: "f32_winograd__portable",
    isa: crate::arch::Isa::Portable,
    input: input_generic::<ScalarGather>,
    output: output_generic::<ScalarGather>,
};

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

    #[test]
    fn f32_matrices_are_the_f64_ones() {
        for (a, b) in [
            (&BT2[..], &BT2_64[..]),
            (&AT2, &AT2_64),
            (&BT4, &BT4_64),
            (&AT4, &AT4_64),
            (&BT6, &BT6_64),
            (&AT6, &AT6_64),
        ] {
            for (x, y) in a.iter().zip(b) {
                assert_eq!(*x, *y as f32);
            }
        }
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
        input_generic::<ScalarGather>(&mut WinoInput {
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
            for two_d in [false, true] {
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
                output_generic::<ScalarGather>(&mut WinoOutput {
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
                    accumulate: true,
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
                            let want = want + 0.5 + residual(o) as f64;
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
