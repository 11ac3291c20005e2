//! A plan: a layer with its chosen algorithm, ISA tier and prepacked weights, ready to run
//! many times, from many threads at once (`Plan` is `Send + Sync`).

use crate::algo::direct::Gather;
use crate::algo::im2col::Im2colB;
use crate::algo::Algo;
use crate::arch::GatherFn;
use crate::arch::{resolve_isa, GemmBias, Isa, SharedMut};
use crate::epilogue::Pool;
use crate::error::{Error, Result};
use crate::gemm::{gemm_packed, Blocking, GemmEpilogue, PackedA, StridedB};
use crate::geometry::Geometry;
use crate::kernels::GemmUkernel;
use crate::reference::{self, check_len, Operands};
use crate::spec::ConvSpec;
use crate::tensor::Layout;
use crate::tune::{Choice, Source, TuneMode};

/// How to build a plan.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// An algorithm name, or `None` / `"auto"` to let convkit choose.
    pub algo: Option<String>,
    /// An ISA name, or `None` / `"auto"` for `CONVKIT_ISA` or the best detected.
    pub isa: Option<String>,
    /// Threads to run on: `None` uses the caller's rayon pool (all cores by default);
    /// `Some(1)` runs on the calling thread alone (no pool, no handoff); `Some(n)` runs on
    /// the calling thread and the helpers of a pool of n that every plan of n threads shares
    /// (see `par`: the helpers spin a while after each loop).
    pub threads: Option<usize>,
    /// Layout of input, residual and output.
    pub layout: Layout,
    /// How `auto` decides when the cache has no answer.
    pub tune: crate::tune::TuneMode,
    /// Conv rows per band of the fused pool pass; `None` sizes bands from the caches.
    pub band_rows: Option<usize>,
    /// The most bytes the plan may hold in packed weights and per-run scratch; `None` means
    /// [`DEFAULT_MAX_BYTES`]. A plan that would need more is refused before allocating.
    pub max_bytes: Option<usize>,
    /// The channel layout of the `depthwise` algorithm; `Auto` picks one per geometry.
    pub depthwise_layout: crate::algo::depthwise::DwLayout,
}

/// The default memory budget of a plan: 4 GiB.
pub const DEFAULT_MAX_BYTES: usize = 4 << 30;

/// Bytes an algorithm will hold for `g` (packed weights plus its largest per-run scratch),
/// computed with checked arithmetic before anything is allocated.
fn planned_bytes(g: &Geometry, algo: Algo, isa: Isa) -> Option<usize> {
    let k = g.cin_per_group.checked_mul(g.kernel_area())?;
    let packed = |mr: usize| {
        g.cout_per_group
            .div_ceil(mr)
            .checked_mul(mr)?
            .checked_mul(k)?
            .checked_mul(g.groups)?
            .checked_mul(4)
    };
    let pooled = if g.epilogue.pool.is_some() {
        g.conv_output_len().checked_mul(4)?
    } else {
        0
    };
    let kernels = isa.kernels().ok()?;
    let uk = kernels.gemm_default();
    let bytes = match algo {
        Algo::Reference => g.weight_len().checked_mul(8)?,
        // The weights, and their channel-block copy (channels rounded up to a block).
        Algo::Depthwise => g
            .in_channels
            .div_ceil(crate::arch::dwconv::CB)
            .checked_mul(crate::arch::dwconv::CB)?
            .checked_mul(g.cout_per_group)?
            .checked_mul(g.kernel_area())?
            .checked_add(g.weight_len())?
            .checked_mul(4)?,
        // The weights and their channel-block copy (channels rounded up to a block).
        Algo::Grouped => g
            .out_channels
            .div_ceil(crate::arch::dwconv::CB)
            .checked_mul(crate::arch::dwconv::CB)?
            .checked_mul(g.cin_per_group)?
            .checked_mul(g.kernel_area())?
            .checked_add(g.weight_len())?
            .checked_mul(4)?,
        Algo::Im2col | Algo::Gemm1x1 => packed(
            kernels
                .gemm_for_shape(g.cout_per_group, g.cin_per_group * g.kernel_area())
                .mr,
        )?,
        Algo::Direct => {
            let image = crate::algo::direct::PhaseLayout::new(g, uk.nr).ok()?.image;
            packed(uk.mr)?.checked_add(image.checked_mul(4)?)?
        }
        Algo::DirectOc => {
            let (_, layout) = crate::algo::direct_oc::DirectOcPlan::padded_layout(g).ok()?;
            packed(crate::kernels::OC_NR)?.checked_add(layout.image.checked_mul(4)?)?
        }
        Algo::Winograd(v) | Algo::DilatedWinograd(v) => {
            // alpha^2 (2-D) or alpha (1-D) transformed copies of the packed weights, and the
            // image padded to whole tiles (phase-split when dilated).
            let a = v.alpha();
            let xi = if g.spatial_rank == 2 { a * a } else { a };
            let image = crate::algo::winograd::image_floats(g, v)?;
            packed(kernels.gemm_for_rows(g.cout_per_group).mr)?
                .checked_mul(xi)?
                .checked_add(image.checked_mul(4)?)?
        }
    };
    // The fused pool's band is at most the pre-pool tensor: count that bound.
    bytes.checked_add(pooled)
}

enum Prepared {
    Reference {
        weight: Vec<f32>,
    },
    Depthwise {
        uk: crate::arch::dwconv::DwUkernel,
        weight: Vec<f32>,
        /// The channel-block layout's weights (empty for the plane layout), 64-byte aligned
        /// for the kernels' whole-vector weight loads.
        blocked: crate::tensor::AlignedBuf,
        layout: crate::algo::depthwise::DwLayout,
    },
    Direct(crate::algo::direct::DirectPlan),
    DirectOc(Box<crate::algo::direct_oc::DirectOcPlan>),
    Winograd(crate::algo::winograd::WinogradPlan),
    Gemm {
        uk: &'static GemmUkernel,
        blocking: Blocking,
        packed: Vec<PackedA>,
        /// im2col from the padded, phase-split image (`Im2colPhaseB`): its layout and the
        /// offsets of B's rows. `None` for gemm1x1, and for images too large to copy.
        phases: Option<(crate::algo::direct::PhaseLayout, Vec<usize>)>,
    },
    /// `gemm1x1` on an NHWC image without a pool: the image's pixels are A, read where they
    /// lie, and each group's weights are B, packed here ([`crate::gemm::gemm_a_in_place`]).
    GemmInPlace {
        uk: &'static GemmUkernel,
        blocking: Blocking,
        packed: Vec<crate::gemm::PackedB>,
    },
}

/// Where the time of one run went ([`Plan::run_profiled`]).
#[derive(Clone, Debug)]
pub struct PhaseProfile {
    /// The whole run, milliseconds.
    pub total_ms: f64,
    /// Named phases and their milliseconds (Winograd: `input_transform`, `gemm`,
    /// `output_transform`; the rest of the total is padding the image, layout conversion
    /// and pooling). Empty for the other algorithms.
    pub phases: Vec<(&'static str, f64)>,
}

/// A planned layer: validated geometry, chosen algorithm and kernels, packed weights.
pub struct Plan {
    geom: Geometry,
    algo: Algo,
    isa: Isa,
    layout: Layout,
    bias: Option<Vec<f32>>,
    prepared: Prepared,
    /// Where runs execute: the caller's pool, the calling thread (one thread), or a team.
    runner: crate::par::Runner,
    threads: Option<usize>,
    choice: Choice,
    band_rows: Option<usize>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("algo", &self.algo.name())
            .field("isa", &self.isa.name())
            .field("layout", &self.layout)
            .field("threads", &self.threads)
            .finish()
    }
}

/// Picks an algorithm when the caller does not (the heuristic until the tuner lands).
///
/// Measured on the suite, one thread, AVX2 (PERFORMANCE.md, 2026-11-28):
/// - 1x1, stride 1, no padding: `gemm1x1` reads the image as B directly (res4.1x1 58 vs direct
///   34 GFLOP/s; pw56 46 vs 17).
/// - one input channel per group: `depthwise` (dw112: 12 vs 2.2 for direct; dw56s2: 3.0 vs
///   1.1; dw7: 1.7-2.8 vs 1.0; wav2vec2.conv0, C = 1: 5.4 vs 5.2).
/// - K = (C/g) KH KW <= 600: `direct` wins where im2col's packing dominates (googlenet 5x5,
///   K = 400: 44 vs 25; resnext grouped, K = 36: 10.5 vs 4.8; alexnet.conv1, K = 363: 24 vs
///   19; res2.3x3, K = 576: 45 vs 41).
///   Among those, at stride 1, `direct_oc` when direct's 16-wide row tiles would leave 10%
///   or more of their columns empty and there are 16 or more output channels a group to
///   fill its vectors (googlenet.inc3a.5x5, OW = 28 in tiles of 32: 0.307 vs 0.347 ms,
///   2026-11-29). Elsewhere it measured even or behind: alexnet.conv1 (stride 4, direct's
///   tiles run across rows) 2.79 vs 2.82 ms; res3.3x3s2 0.97-1.04x of direct;
///   resnet50.conv1 (OW = 112) 1.14-1.30x slower.
/// - larger K: `im2col` (res5.3x3, K = 4608: 43 vs 21; vgg16.conv4_3: 62 vs 48).
/// - 3x3 (or 3), stride 1, at least 16 channels a group: Winograd F(4,3) when the image has
///   at least 16 of its tiles (one NR panel of GEMM columns), else F(2,3) when it has 16 of
///   those: vgg16.conv3_3 93-130 vs im2col 60; conv5_3 102-118 vs 70; res2 74 vs direct 48;
///   textcnn.k3 58 vs 53; res5 (7x7: 4 tiles of F(4,3), 16 of F(2,3)) F(2,3) 66 vs F(4,3) 29
///   vs im2col 44. With 4 channels a group (resnext grouped) the alpha^2 GEMMs are too thin:
///   F(4,3) 7.6 vs direct 10.7. Dilated 3x3 layers the same on phase planes (`dilated_*`:
///   deeplab.dilated3x3 F(4,3) 0.855x im2col's time). F(6,3) where F(4,3)'s tiles waste a
///   quarter more multiplications (deeplab's 17 x 17 phase planes: F(4,3) 1.16x F(6,3)),
///   and on undilated images of 40 or more F(6,3) tiles (56 x 56 and up, textcnn's 254:
///   F(4,3) 1.03-1.09x F(6,3)'s time; on 28 x 28, F(6,3) 1.03-1.11x F(4,3)'s).
/// - groups of 2, 4 or 8 channels in and out: `grouped` (resnext50.grouped3x3: 0.71-0.76 ms
///   against direct's 1.03-1.13 in the same minutes, one thread).
///
/// Those rules were measured on AVX2 (16-column GEMM panels). On AVX-512 (32-column panels)
/// `direct`, whose B rows are two lines of an image row read in place, ran about half as
/// fast as the alternatives, and `direct_oc` takes its place (tuner table, one thread, time
/// over the fastest: resnet50.conv1 direct 2.22x, direct_oc fastest; alexnet.conv1 direct
/// 2.21x, direct_oc 1.05x). A depthwise layer of a large channel multiplier (one input
/// channel, 64 or more outputs from it) is a GEMM of K = the kernel area there: `im2col`
/// (wav2vec2.conv0, multiplier 512: depthwise 1.29-1.30x im2col's time in two tuner runs).
pub fn choose_algo_for(g: &Geometry, isa: Isa) -> Algo {
    // F(6,3) over F(4,3) on 2-D images of this many F(6,3) tiles (see `winograd_pick`). On
    // AVX-512 F(4,3) stayed ahead up to vgg16.conv2_2's 361 tiles (paired side by side, one
    // thread, F(6,3) time over F(4,3): res2.3x3 1.16-1.19, conv2_2 1.12, conv3_3 1.23-1.25,
    // res3.3x3.b8 1.10-1.13, textcnn.k3 0.98-0.99) and F(6,3) led on vgg16.conv1_2's 1444
    // (0.94-0.95).
    let f6_tiles = if isa == Isa::Avx512 { 400 } else { 40 };
    let pick = choose_algo_rules(g, f6_tiles);
    if isa == Isa::Avx512 {
        if pick == Algo::Direct && Algo::DirectOc.accepts(g) {
            return Algo::DirectOc;
        }
        // 2-D layers up to K = 1152 that the rules give to im2col: direct_oc (its K loop four
        // taps an iteration) ran resnet50.res3.3x3s2 (K = 1152) in 0.93x im2col's time on one
        // thread and 0.90x on two; at K = 1536, 1-D, wav2vec2.conv1 took 1.8x im2col's.
        let k = g.cin_per_group * g.kernel_area();
        if pick == Algo::Im2col && g.spatial_rank == 2 && k <= 1152 && Algo::DirectOc.accepts(g) {
            return Algo::DirectOc;
        }
        if pick == Algo::Depthwise
            && g.groups == 1
            && g.cout_per_group >= 64
            && Algo::Im2col.accepts(g)
        {
            return Algo::Im2col;
        }
    }
    pick
}

/// The heuristic for the tier `auto` resolves to (`CONVKIT_ISA`, else the best detected):
/// [`choose_algo_for`].
pub fn choose_algo(g: &Geometry) -> Algo {
    choose_algo_for(g, resolve_isa(None).unwrap_or(Isa::Portable))
}

/// The rules measured on AVX2 (see [`choose_algo_for`]), F(6,3) from `f6_tiles` tiles.
fn choose_algo_rules(g: &Geometry, f6_tiles: usize) -> Algo {
    let k = g.cin_per_group * g.kernel_area();
    if let Some(w) = winograd_pick(g, f6_tiles) {
        return w;
    }
    let candidates = if g.is_depthwise() {
        [Algo::Depthwise, Algo::Direct, Algo::Im2col]
    } else if Algo::Grouped.accepts(g) {
        [Algo::Grouped, Algo::Direct, Algo::Im2col]
    } else if Algo::Gemm1x1.accepts(g) && g.stride == [1, 1] {
        [Algo::Gemm1x1, Algo::Direct, Algo::Im2col]
    } else if k <= 600 {
        let ow = g.conv_out[1];
        let row_tiles_columns = ow.div_ceil(16) * 16;
        if g.stride == [1, 1] && g.cout_per_group >= 16 && ow * 10 < row_tiles_columns * 9 {
            [Algo::DirectOc, Algo::Direct, Algo::Im2col]
        } else {
            [Algo::Direct, Algo::Im2col, Algo::Im2col]
        }
    } else {
        [Algo::Im2col, Algo::Im2col, Algo::Im2col]
    };
    candidates
        .into_iter()
        .find(|a| a.accepts(g))
        .unwrap_or(Algo::Reference)
}

/// The Winograd variant the heuristic picks for `g`, if any (see [`choose_algo`]).
fn winograd_pick(g: &Geometry, f6_tiles: usize) -> Option<Algo> {
    use crate::algo::WinogradVariant as V;
    if g.is_depthwise() || g.cin_per_group < 16 || g.cout_per_group < 16 {
        return None;
    }
    let tiles = |m: usize| {
        let rows = if g.spatial_rank == 2 {
            g.conv_out[0].div_ceil(m)
        } else {
            1
        };
        rows * g.conv_out[1].div_ceil(m)
    };
    // Dilated layers: the same variants on phase planes (deeplab.dilated3x3, paired, one
    // thread: dilated_f4x3 0.855x im2col's time, f6x3 0.90x, f2x3 0.98x).
    let family = if g.dilation == [1, 1] {
        Algo::Winograd
    } else {
        Algo::DilatedWinograd
    };
    let pick = [V::F4, V::F2]
        .into_iter()
        .find(|&v| family(v).accepts(g) && tiles(v.m()) >= 16)?;
    // F(6,3) instead of F(4,3) when F(4,3)'s tiles waste so much of the (phase) plane that
    // its multiplications, alpha^2 / m^2 per output times the tiled area over the real one,
    // exceed F(6,3)'s by a quarter: deeplab's 17 x 17 phase planes (F(4,3) tiles 20 x 20,
    // F(6,3) 18 x 18): F(6,3) fastest, F(4,3) 1.16x. Where the two are within that (28, 56,
    // 112, 224 wide, 1-D), their order changed from run to run (res3.3x3 F(6,3) 0.92x of
    // F(4,3) in one, 1.08x in another), and F(4,3) stays.
    let cost = |v: V| {
        let (m, a) = (v.m() as f64, v.alpha() as f64);
        let dims = if g.spatial_rank == 2 { 0..2 } else { 1..2 };
        dims.map(|d| {
            let n = g.conv_out[d].div_ceil(g.dilation[d]) as f64;
            a / m * (n / m).ceil() * m / n
        })
        .product::<f64>()
    };
    if pick == V::F4 && family(V::F6).accepts(g) && cost(V::F6) < 0.8 * cost(V::F4) {
        return Some(family(V::F6));
    }
    // F(6,3) on undilated images of `f6_tiles` or more F(6,3) tiles (40 on AVX2; AVX-512 in
    // `choose_algo_for`). AVX2, paired one-thread runs since V
    // is written in the GEMM's packed layout (F(4,3) time over F(6,3) time, 6 alternations):
    // res2.3x3 (56 x 56, 100 tiles) 1.09, vgg16.conv1_2 1.06, conv2_2 1.09, conv3_3 1.03,
    // textcnn.k3 (1-D, 43 tiles) 1.05; on 28 x 28 (25 tiles) res3.3x3 0.94, res3.3x3.b8
    // 0.97, conv4_3 0.90, and on 14 x 14 res4.3x3 0.52: F(6,3)'s 64 GEMMs of 25 columns or
    // fewer run two partly empty 16-wide panels each.
    if pick == V::F4 && g.dilation == [1, 1] && family(V::F6).accepts(g) && tiles(6) >= f6_tiles {
        return Some(family(V::F6));
    }
    Some(family(pick))
}

/// The `auto` decision: the cache (and wisdom) first, then the configured mode. Measuring
/// plans each candidate with the caller's weights and times it on a synthetic input.
fn tune_choice(
    spec: &ConvSpec,
    geom: &Geometry,
    weight: &[f32],
    bias: Option<&[f32]>,
    isa: Isa,
    opts: &PlanOptions,
) -> Result<Choice> {
    let threads = opts.threads.unwrap_or_else(crate::par::threads);
    let key = crate::tune::cache_key(spec, opts.layout, isa, threads);
    if let Some(c) = crate::tune::lookup(&key) {
        if c.algo.accepts(geom) {
            return Ok(c);
        }
    }
    if opts.tune == TuneMode::Heuristic {
        return Ok(Choice {
            algo: choose_algo_for(geom, isa),
            source: Source::Heuristic,
            times_ms: Vec::new(),
        });
    }
    let mut rng = crate::init::Rng::new(0x7075_6e65);
    let mut fill = |n: usize| {
        let mut v = vec![0f32; n];
        rng.fill_uniform(&mut v, -1.0, 1.0);
        v
    };
    let x = fill(geom.input_len());
    let r = geom.epilogue.residual.then(|| fill(geom.conv_output_len()));
    let mut y = vec![0f32; geom.output_len()];
    let mut plans: Vec<(Algo, Plan)> = Vec::new();
    let cands = crate::tune::candidates(geom);
    let choice = crate::tune::measure(&cands, &opts.tune, |a| {
        if !plans.iter().any(|(p, _)| *p == a) {
            let forced = PlanOptions {
                algo: Some(a.name().into()),
                isa: Some(isa.name().into()),
                ..opts.clone()
            };
            plans.push((a, Plan::new(spec, weight, bias, &forced).ok()?));
        }
        let plan = &plans.iter().find(|(p, _)| *p == a)?.1;
        // Settled runs (see tune::settled): 3 to 4, back to back.
        crate::tune::settled(3, 4, || {
            let t = std::time::Instant::now();
            plan.run(&x, r.as_deref(), &mut y)?;
            Ok::<f64, Error>(t.elapsed().as_secs_f64() * 1e3)
        })
        .ok()
    })?;
    crate::tune::remember(key, choice.clone());
    Ok(choice)
}

impl Plan {
    /// Validates the spec, resolves algorithm and ISA, and packs the weights.
    /// `weight` is OIHW (OIL in 1-D); `bias` is `[Cout]`, present exactly when the spec has one.
    pub fn new(
        spec: &ConvSpec,
        weight: &[f32],
        bias: Option<&[f32]>,
        opts: &PlanOptions,
    ) -> Result<Plan> {
        let geom = Geometry::new(spec)?;
        check_len("weight", weight.len(), geom.weight_len())?;
        reference::check_optional("bias", geom.epilogue.bias, bias, geom.out_channels)?;
        let isa = resolve_isa(opts.isa.as_deref())?;
        let choice = match opts.algo.as_deref() {
            None | Some("auto") => tune_choice(spec, &geom, weight, bias, isa, opts)?,
            Some(name) => {
                let a = Algo::parse(name)?;
                a.check(&geom).map_err(|why| Error::AlgorithmRejects {
                    algo: a.name().into(),
                    why,
                })?;
                Choice {
                    algo: a,
                    source: Source::Forced,
                    times_ms: Vec::new(),
                }
            }
        };
        let algo = choice.algo;
        let budget = opts.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        match planned_bytes(&geom, algo, isa) {
            Some(b) if b <= budget => {}
            Some(b) => {
                return Err(Error::Budget(format!(
                    "algorithm `{}` needs {b} bytes of packed weights and scratch, over the plan's limit of {budget}",
                    algo.name()
                )))
            }
            None => return Err(Error::Budget(format!("algorithm `{}`: its memory need overflows", algo.name()))),
        }
        let runner = crate::par::Runner::new(opts.threads)?;
        let prepared = match algo {
            Algo::Direct => Prepared::Direct(
                crate::algo::direct::DirectPlan::new(&geom, isa.kernels()?.gemm_default(), weight)
                    .map_err(|why| Error::AlgorithmRejects {
                        algo: "direct".into(),
                        why,
                    })?,
            ),
            Algo::DirectOc => Prepared::DirectOc(Box::new(
                crate::algo::direct_oc::DirectOcPlan::new(
                    &geom,
                    direct_oc_kernel(&geom, isa.kernels()?),
                    weight,
                )
                .map_err(|why| Error::AlgorithmRejects {
                    algo: "direct_oc".into(),
                    why,
                })?,
            )),
            Algo::Winograd(v) | Algo::DilatedWinograd(v) => Prepared::Winograd(
                crate::algo::winograd::WinogradPlan::new(&geom, isa.kernels()?, weight, v)
                    .map_err(|why| Error::AlgorithmRejects {
                        algo: algo.name().into(),
                        why,
                    })?,
            ),
            Algo::Depthwise => {
                use crate::algo::depthwise::{block_weights, DwLayout};
                let weight: Vec<f32> = weight
                    .iter()
                    .map(|&v| crate::gemm::flush_denormal(v))
                    .collect();
                let uk = isa.kernels()?.dwconv;
                // NHWC runs channels-last as it is where channel blocks can
                // (`run_channel_blocks_nhwc`): their layout then, unless another is forced.
                let nhwc_native = opts.layout == Layout::Nhwc
                    && crate::algo::depthwise::nhwc_native(&geom)
                    && opts.depthwise_layout == DwLayout::Auto;
                let layout = match opts.depthwise_layout.pick(&geom, &uk) {
                    _ if nhwc_native && uk.channels_last.is_some() => DwLayout::ChannelsLast,
                    _ if nhwc_native => DwLayout::ChannelBlocks,
                    // Channels-last is for NHWC plans.
                    DwLayout::ChannelsLast if opts.layout != Layout::Nhwc => {
                        DwLayout::Auto.pick(&geom, &uk)
                    }
                    picked => picked,
                };
                let blocked = match layout {
                    DwLayout::ChannelBlocks => block_weights(&geom, &weight),
                    DwLayout::ChannelsLast => crate::arch::dwconv::nhwc_weights(&geom, &weight),
                    DwLayout::MultiplierBlocks => {
                        crate::algo::depthwise::multiplier_weights(&geom, &weight)
                    }
                    _ => crate::tensor::aligned_zeros(0),
                };
                Prepared::Depthwise {
                    uk,
                    weight,
                    blocked,
                    layout,
                }
            }
            Algo::Grouped => {
                use crate::algo::depthwise::DwLayout;
                let weight: Vec<f32> = weight
                    .iter()
                    .map(|&v| crate::gemm::flush_denormal(v))
                    .collect();
                // NHWC runs channels-last as it is in channel blocks, unless a layout is
                // forced.
                let layout = if opts.layout == Layout::Nhwc
                    && crate::algo::depthwise::nhwc_native_grouped(&geom)
                    && opts.depthwise_layout == DwLayout::Auto
                {
                    DwLayout::ChannelBlocks
                } else {
                    opts.depthwise_layout.pick_grouped(&geom, isa)
                };
                Prepared::Depthwise {
                    uk: isa.kernels()?.dwconv,
                    blocked: match layout {
                        DwLayout::ChannelBlocks => {
                            crate::algo::depthwise::grouped_block_weights(&geom, &weight)
                        }
                        _ => crate::tensor::aligned_zeros(0),
                    },
                    weight,
                    layout,
                }
            }
            Algo::Reference => Prepared::Reference {
                weight: weight.to_vec(),
            },
            Algo::Gemm1x1 if gemm_in_place(&geom, opts.layout) => {
                // Rows a run: every pixel at stride 1, an output row strided.
                let rows = match geom.stride {
                    [1, 1] => geom.conv_out_area(),
                    _ => geom.conv_out[1],
                };
                let uk = isa.kernels()?.gemm_in_place(rows, geom.cout_per_group);
                let blocking = Blocking::derive(uk, crate::sysinfo::caches());
                let (k, opg) = (geom.cin_per_group, geom.cout_per_group);
                let packed = (0..geom.groups)
                    .map(|grp| {
                        let wg = &weight[grp * opg * k..(grp + 1) * opg * k];
                        crate::gemm::PackedB::pack(k, opg, uk.nr, &blocking, |p, j| wg[j * k + p])
                    })
                    .collect();
                Prepared::GemmInPlace {
                    uk,
                    blocking,
                    packed,
                }
            }
            Algo::Im2col | Algo::Gemm1x1 => {
                let uk = isa
                    .kernels()?
                    .gemm_for_shape(geom.cout_per_group, geom.cin_per_group * geom.kernel_area());
                let blocking = Blocking::derive(uk, crate::sysinfo::caches());
                let k = geom.cin_per_group * geom.kernel_area();
                let opg = geom.cout_per_group;
                let packed = (0..geom.groups)
                    .map(|grp| {
                        let wg = &weight[grp * opg * k..(grp + 1) * opg * k];
                        PackedA::from_row_major(wg, opg, k, k, uk.mr, &blocking)
                    })
                    .collect();
                // im2col packs from a padded (and, strided, phase-split) copy of the image when
                // strided, or when the copy is at most 4 MiB: paired runs, one thread, copy /
                // image: res3.3x3s2 0.84, alexnet.conv1 0.65, resnet50.conv1 0.72, googlenet
                // 5x5 0.80, deeplab 0.93, vgg16.conv3_3 0.94, res5.3x3 0.93. A large stride-1
                // image (vgg16.conv1_2: 13 MB) keeps packing from the image, without the copy.
                let strided = geom.stride.iter().any(|&s| s > 1);
                let phases = (algo == Algo::Im2col)
                    .then(|| crate::algo::direct::PhaseLayout::new(&geom, uk.nr).ok())
                    .flatten()
                    .filter(|layout| strided || layout.image <= 1 << 20)
                    .map(|layout| {
                        let offsets = layout.offsets(&geom);
                        (layout, offsets)
                    });
                Prepared::Gemm {
                    uk,
                    blocking,
                    packed,
                    phases,
                }
            }
        };
        Ok(Plan {
            geom,
            algo,
            isa,
            layout: opts.layout,
            bias: bias.map(<[f32]>::to_vec),
            prepared,
            runner,
            threads: opts.threads,
            choice,
            band_rows: opts.band_rows.filter(|&r| r > 0),
        })
    }

    /// The layer's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }
    /// The algorithm in use.
    pub fn algo(&self) -> Algo {
        self.algo
    }
    /// How the algorithm was chosen, with the timings when it was measured.
    pub fn choice(&self) -> &Choice {
        &self.choice
    }
    /// A readable account of the choice: candidates, times, winner and where it came from.
    pub fn explain(&self) -> String {
        self.choice.explain()
    }
    /// The ISA tier in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// The GEMM microkernel in use, if the algorithm has one.
    pub fn kernel_name(&self) -> Option<&'static str> {
        match &self.prepared {
            Prepared::Gemm { uk, .. } | Prepared::GemmInPlace { uk, .. } => Some(uk.name),
            Prepared::Depthwise {
                uk,
                layout:
                    crate::algo::depthwise::DwLayout::ChannelBlocks
                    | crate::algo::depthwise::DwLayout::MultiplierBlocks,
                ..
            } => Some(uk.block_name),
            Prepared::Depthwise {
                uk,
                layout: crate::algo::depthwise::DwLayout::Direct,
                ..
            } => uk.direct.map(|(name, _)| name),
            Prepared::Depthwise {
                uk,
                layout: crate::algo::depthwise::DwLayout::ChannelsLast,
                ..
            } => uk.channels_last.map(|(name, _)| name),
            Prepared::Depthwise { uk, .. } => Some(uk.name),
            Prepared::Direct(d) => Some(d.uk.name),
            Prepared::DirectOc(d) => Some(d.uk.name),
            Prepared::Winograd(w) => Some(w.uk.name),
            Prepared::Reference { .. } => None,
        }
    }
    /// Bytes of packed weights the plan holds.
    pub fn packed_bytes(&self) -> usize {
        match &self.prepared {
            Prepared::Reference { weight } => weight.len() * 4,
            Prepared::Depthwise {
                weight, blocked, ..
            } => (weight.len() + blocked.len()) * 4,
            Prepared::Gemm { packed, .. } => packed.iter().map(PackedA::bytes).sum(),
            Prepared::GemmInPlace { packed, .. } => {
                packed.iter().map(crate::gemm::PackedB::bytes).sum()
            }
            Prepared::Direct(d) => d.packed.iter().map(PackedA::bytes).sum(),
            Prepared::DirectOc(d) => d.packed_bytes(),
            Prepared::Winograd(w) => w.packed_bytes(),
        }
    }

    /// Runs the layer: `input` of the input shape, `residual` of the conv output shape exactly
    /// when the spec has one, `output` of the output shape, all in the plan's layout.
    pub fn run(&self, input: &[f32], residual: Option<&[f32]>, output: &mut [f32]) -> Result<()> {
        self.run_clocked(input, residual, output, None)
    }

    /// Runs the layer as [`Plan::run`] does and reports where the time went. For Winograd
    /// plans the phases (input transform, transformed-domain GEMM, output transform with the
    /// epilogue) are timed apart, groups one after another so the times are wall-clock;
    /// other algorithms report only the total.
    pub fn run_profiled(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> Result<PhaseProfile> {
        let clock = crate::algo::winograd::PhaseClock::default();
        let start = std::time::Instant::now();
        self.run_clocked(input, residual, output, Some(&clock))?;
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        let ms = |c: &std::sync::atomic::AtomicU64| {
            c.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6
        };
        Ok(PhaseProfile {
            total_ms,
            phases: match self.prepared {
                Prepared::Winograd(_) => vec![
                    ("input_transform", ms(&clock.input_ns)),
                    ("gemm", ms(&clock.gemm_ns)),
                    ("output_transform", ms(&clock.output_ns)),
                ],
                _ => Vec::new(),
            },
        })
    }

    fn run_clocked(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        clock: Option<&crate::algo::winograd::PhaseClock>,
    ) -> Result<()> {
        let g = &self.geom;
        check_len("input", input.len(), g.input_len())?;
        check_len("output", output.len(), g.output_len())?;
        reference::check_optional(
            "residual",
            g.epilogue.residual,
            residual,
            g.conv_output_len(),
        )?;
        self.runner.run(|| {
            let mut body = || self.run_nchw_or_convert(input, residual, output, clock);
            match self.prepared {
                // Three parallel loops a block: on all of the pool's threads (par::in_pool).
                Prepared::Winograd(_) => crate::par::in_pool(body),
                _ => body(),
            }
        })
    }

    fn run_nchw_or_convert(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        clock: Option<&crate::algo::winograd::PhaseClock>,
    ) -> Result<()> {
        let g = &self.geom;
        if self.layout == Layout::Nchw {
            return self.run_nchw(input, residual, output, clock);
        }
        if let Prepared::GemmInPlace {
            uk,
            blocking,
            packed,
        } = &self.prepared
        {
            return self.run_gemm_in_place(uk, blocking, packed, input, residual, output);
        }
        let (c, co) = (g.in_channels, g.out_channels);
        // Each image transposed with the tier's transpose (8x8 blocks in registers on x86)
        // into recycled scratch: element by element into fresh zeroed vectors, NHWC ran
        // res3.3x3s2 (direct_oc) 1.38x slower than NCHW and alexnet.conv1 1.23x.
        let transpose = self.isa.kernels()?.transpose;
        let to_nchw = |src: &[f32], c: usize, hw: usize| {
            let mut t = crate::tensor::take_scratch(src.len());
            for (s, d) in src
                .chunks_exact((c * hw).max(1))
                .zip(t.chunks_exact_mut((c * hw).max(1)))
            {
                crate::tensor::transpose_image(transpose, s, hw, c, d);
            }
            t
        };
        // Depthwise channel blocks and the channels-last kernel run NHWC as it is (residual
        // preloaded, NHWC too).
        if let Prepared::Depthwise {
            uk,
            blocked,
            layout,
            ..
        } = &self.prepared
        {
            use crate::algo::depthwise::DwLayout;
            let channels_last = match (layout, uk.channels_last) {
                (DwLayout::ChannelsLast, Some((_, kernel))) => Some(Some(kernel)),
                (DwLayout::ChannelBlocks, _) => Some(None),
                _ => None,
            };
            let native = crate::algo::depthwise::nhwc_native(g)
                || crate::algo::depthwise::nhwc_native_grouped(g);
            if let Some(kernel) = channels_last.filter(|_| native) {
                return self.run_depthwise_nhwc(uk, blocked, kernel, input, residual, output);
            }
        }
        // Undilated Winograd and `direct_oc` fill their padded planes from the NHWC rows:
        // no NCHW copy of the image in between.
        let nhwc_in = self.fills_nhwc();
        let x = (!nhwc_in).then(|| to_nchw(input, c, g.input_area()));
        let x_in = x.as_deref().unwrap_or(input);
        // `direct_oc` without a pool stores its tiles pixel by pixel straight into the NHWC
        // output (and takes the NHWC residual as it is), and with a window pool its
        // channels-last band pools into NHWC rows as they are: no conversion out.
        if matches!(self.prepared, Prepared::DirectOc(_))
            && (g.epilogue.pool.is_none() || channels_last_band(g))
        {
            let io = ImageIo {
                nhwc_in,
                nhwc_out: true,
            };
            let run = self.run_nchw_in(x_in, residual, output, clock, io);
            if let Some(x) = x {
                crate::tensor::give_scratch(x);
            }
            return run;
        }
        let r = residual.map(|r| to_nchw(r, co, g.conv_out_area()));
        let mut y = crate::tensor::take_scratch(output.len());
        let io = ImageIo {
            nhwc_in,
            nhwc_out: false,
        };
        let run = self.run_nchw_in(x_in, r.as_deref(), &mut y, clock, io);
        if run.is_ok() {
            self.nchw_to_nhwc(&y, output, transpose);
        }
        if let Some(x) = x {
            crate::tensor::give_scratch(x);
        }
        crate::tensor::give_scratch(y);
        if let Some(r) = r {
            crate::tensor::give_scratch(r);
        }
        run
    }

    /// Whether an NHWC run fills the padded planes from the NHWC rows
    /// ([`crate::tensor::PaddedPlanes::fill_from_nhwc`]): undilated Winograd and `direct_oc`,
    /// on images of 64K floats or more. (Row by row, a small image's transposes are short
    /// and their edges scalar: googlenet.inc3a.5x5's 16 x 28 x 28 ran 1.06x slower on one
    /// thread than one transpose of the whole image and a copy. NHWC, paired, `direct_oc`,
    /// time ratio, one / two threads: resnet50.res3.3x3s2 0.94 / 0.87, resnet50.conv1 0.98 /
    /// 0.92, alexnet.conv1 0.96 / 0.85.)
    fn fills_nhwc(&self) -> bool {
        let g = &self.geom;
        let big = g.in_channels * g.input_area() >= 1 << 16;
        big && match &self.prepared {
            Prepared::Winograd(w) => w.fills_nhwc(),
            Prepared::DirectOc(_) => true,
            _ => false,
        }
    }

    /// The NCHW output `y` of every image into the NHWC `output`.
    fn nchw_to_nhwc(&self, y: &[f32], output: &mut [f32], transpose: crate::arch::TransposeFn) {
        let g = &self.geom;
        let co = g.out_channels;
        let hw = g.output[0] * g.output[1];
        let img = (co * hw).max(1);
        for (s, d) in y.chunks_exact(img).zip(output.chunks_exact_mut(img)) {
            crate::tensor::transpose_image(transpose, s, co, hw, d);
        }
    }

    /// NHWC depthwise channels-last throughout, image by image: the tier's channels-last
    /// `kernel` when given ([`crate::algo::depthwise::run_channels_last`], `blocked` its
    /// weights), else channel blocks ([`crate::algo::depthwise::run_channel_blocks_nhwc`]).
    fn run_depthwise_nhwc(
        &self,
        uk: &crate::arch::dwconv::DwUkernel,
        blocked: &[f32],
        kernel: Option<crate::arch::dwconv::DwNhwcFn>,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> Result<()> {
        let g = &self.geom;
        let pass = self.output_pass(residual.is_some())?;
        self.nhwc_images(input, residual, output, |x, out| match kernel {
            Some(k) => crate::algo::depthwise::run_channels_last(g, k, blocked, x, out, &pass),
            None => crate::algo::depthwise::run_channel_blocks_nhwc(g, uk, blocked, x, out, &pass),
        });
        Ok(())
    }

    /// The images of an NHWC run computed channels-last as they are: the residual (NHWC
    /// too) preloaded into the output, then `f(image, its output)` image by image.
    fn nhwc_images(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        mut f: impl FnMut(&[f32], &mut [f32]),
    ) {
        let g = &self.geom;
        let img_in = g.in_channels * g.input_area();
        let img_out = g.out_channels * g.conv_out_area();
        if let Some(r) = residual {
            output.copy_from_slice(r);
        }
        for (x, out) in input
            .chunks_exact(img_in.max(1))
            .zip(output.chunks_exact_mut(img_out.max(1)))
        {
            f(x, out);
        }
    }

    fn run_nchw(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        clock: Option<&crate::algo::winograd::PhaseClock>,
    ) -> Result<()> {
        self.run_nchw_in(input, residual, output, clock, ImageIo::default())
    }

    /// Runs NCHW `input`; the output (and residual) are NCHW, or NHWC when `io.nhwc_out`,
    /// which only `direct_oc` takes, without a pool or with a window pool (its tiles and bands
    /// stored channels-last); the input is NHWC when `io.nhwc_in`, which undilated Winograd
    /// and `direct_oc` take (their fills read NHWC rows).
    fn run_nchw_in(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        clock: Option<&crate::algo::winograd::PhaseClock>,
        io: ImageIo,
    ) -> Result<()> {
        debug_assert!(
            !io.nhwc_out
                || (matches!(self.prepared, Prepared::DirectOc(_))
                    && (self.geom.epilogue.pool.is_none() || channels_last_band(&self.geom)))
        );
        debug_assert!(!io.nhwc_in || self.fills_nhwc());
        let g = &self.geom;
        if let Prepared::Reference { weight } = &self.prepared {
            let ops = Operands {
                input,
                weight,
                bias: self.bias.as_deref(),
                residual,
            };
            let y = reference::forward(g, &ops)?;
            output.copy_from_slice(&y);
            return Ok(());
        }
        let pass = self.output_pass(residual.is_some())?;
        let threads = crate::par::threads();
        if clock.is_none() && split_images(g.batch, threads) {
            return self.run_image_parts(input, residual, output, &pass, io, threads);
        }
        self.run_images(input, residual, output, &pass, clock, io)
    }

    /// The images of an NCHW run in `threads` parts of whole images, each part on one thread
    /// with its own scratch (padded image, Winograd blocks, pool bands): nothing is shared
    /// between the threads but the plan's weights, and they meet once.
    fn run_image_parts(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        pass: &crate::algo::OutputPass,
        io: ImageIo,
        threads: usize,
    ) -> Result<()> {
        let g = &self.geom;
        let img_in = g.in_channels * g.input_area();
        let img_res = g.out_channels * g.conv_out_area();
        let img_out = g.out_channels * g.output[0] * g.output[1];
        let mut parts = Vec::with_capacity(threads);
        let (mut x, mut r, mut y) = (input, residual, output);
        for p in 0..threads {
            let images = g.batch * (p + 1) / threads - g.batch * p / threads;
            let (x_part, x_rest) = x.split_at(images * img_in);
            let (r_part, r_rest) = match r {
                Some(r) => {
                    let (a, b) = r.split_at(images * img_res);
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            let (y_part, y_rest) = std::mem::take(&mut y).split_at_mut(images * img_out);
            parts.push((x_part, r_part, y_part));
            (x, r, y) = (x_rest, r_rest, y_rest);
        }
        let first_error = std::sync::Mutex::new(Ok(()));
        crate::par::for_each_part(parts, |_, (x, r, y)| {
            let run = self.run_images(x, r, y, pass, None, io);
            if let (Err(e), Ok(mut first)) = (run, first_error.lock()) {
                if first.is_ok() {
                    *first = Err(e);
                }
            }
        });
        first_error
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The images in `input` (whole NCHW images of this plan's geometry) into `output`, one
    /// after another, each with the library's parallel loops inside.
    fn run_images(
        &self,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        pass: &crate::algo::OutputPass,
        clock: Option<&crate::algo::winograd::PhaseClock>,
        io: ImageIo,
    ) -> Result<()> {
        let ImageIo { nhwc_in, nhwc_out } = io;
        let g = &self.geom;
        let [oh, ow] = g.conv_out;
        let (cout, area) = (g.out_channels, oh * ow);
        let img_in = g.in_channels * g.input_area();
        let img_out = cout * g.output[0] * g.output[1];
        let batch = input.len() / img_in.max(1);
        // Undilated Winograd reads an NCHW image in place: its blocks pad their own rows.
        let wino_in_place =
            matches!(&self.prepared, Prepared::Winograd(w) if !nhwc_in && w.pads_in_blocks());
        let mut xp = match &self.prepared {
            Prepared::Direct(d) => crate::tensor::take_scratch(d.layout.image),
            Prepared::DirectOc(d) => crate::tensor::take_scratch(d.layout.image),
            Prepared::Winograd(_) if wino_in_place => crate::tensor::Scratch::default(),
            Prepared::Winograd(w) => crate::tensor::take_scratch(w.image),
            Prepared::Gemm {
                phases: Some((layout, _)),
                ..
            } => crate::tensor::take_scratch(layout.image),
            _ => crate::tensor::Scratch::default(),
        };
        let bands = self.bands();
        let band_rows = bands.iter().map(|b| b.1 - b.0).max().unwrap_or(0);
        let mut band_buf = match g.epilogue.pool {
            Some(_) => crate::tensor::take_scratch(band_rows * cout * ow),
            None => crate::tensor::Scratch::default(),
        };
        let mut global = vec![0f32; if g.epilogue.pool.is_some() { cout } else { 0 }];
        let channels_last = matches!(self.prepared, Prepared::DirectOc(_)) && channels_last_band(g);
        for n in 0..batch {
            let x = &input[n * img_in..(n + 1) * img_in];
            match &self.prepared {
                Prepared::Direct(d) => {
                    d.layout
                        .fill(g, x, &mut xp, Gather::of(self.isa.kernels()?))
                }
                Prepared::DirectOc(d) if nhwc_in => {
                    d.fill_nhwc(x, &mut xp, self.isa.kernels()?.transpose)
                }
                Prepared::DirectOc(d) => d.fill(x, &mut xp, Gather::of(self.isa.kernels()?)),
                Prepared::Winograd(_) if wino_in_place => {}
                Prepared::Winograd(w) if nhwc_in => {
                    w.fill_nhwc(g, x, &mut xp, self.isa.kernels()?.transpose)
                }
                Prepared::Winograd(w) => w.fill(g, x, &mut xp),
                Prepared::Gemm {
                    phases: Some((layout, _)),
                    ..
                } => layout.fill(g, x, &mut xp, Gather::of(self.isa.kernels()?)),
                _ => {}
            }
            let res_img = residual.map(|r| &r[n * cout * area..(n + 1) * cout * area]);
            if g.epilogue.pool.is_none() {
                // No pool: the conv output is the user's output, written once.
                let out = &mut output[n * cout * area..(n + 1) * cout * area];
                if let Some(r) = res_img {
                    out.copy_from_slice(r);
                }
                self.conv_rows(x, &xp, wino_in_place, 0, oh, out, pass, clock, nhwc_out)?;
                continue;
            }
            // Pool fused by bands: conv rows r0..r1 for all channels go to a band buffer
            // sized to stay in L2, are pooled into their output rows, and the buffer is
            // reused; the pre-pool tensor never exists whole.
            global.fill(match g.epilogue.pool {
                Some(Pool::GlobalMax) => f32::NEG_INFINITY,
                _ => 0.0,
            });
            let out_img = &mut output[n * img_out..(n + 1) * img_out];
            let pool_kernels = self.isa.kernels().map_or(
                PoolKernels {
                    gather: crate::arch::gather_scalar,
                    transpose: crate::arch::transpose_scalar,
                    plane: crate::algo::pool::pool_plane,
                    channels_last: crate::algo::pool::pool_channels_last,
                },
                |k| PoolKernels {
                    gather: k.gather,
                    transpose: k.transpose,
                    plane: k.pool_plane,
                    channels_last: k.pool_channels_last,
                },
            );
            for &(r0, r1, p0, p1) in &bands {
                let rows = r1 - r0;
                let band = &mut band_buf[..cout * rows * ow];
                if let Some(r) = res_img {
                    for co in 0..cout {
                        band[co * rows * ow..(co + 1) * rows * ow]
                            .copy_from_slice(&r[co * area + r0 * ow..co * area + r1 * ow]);
                    }
                }
                self.conv_rows(
                    x,
                    &xp,
                    wino_in_place,
                    r0,
                    r1,
                    band,
                    pass,
                    clock,
                    channels_last,
                )?;
                let band_layout = BandLayout {
                    r0,
                    r1,
                    p0,
                    p1,
                    channels_last,
                    nhwc_out,
                };
                pool_band(g, band, band_layout, out_img, &mut global, &pool_kernels);
            }
            match g.epilogue.pool {
                Some(Pool::GlobalMax) => out_img.copy_from_slice(&global),
                Some(Pool::GlobalAvg) => {
                    for (o, s) in out_img.iter_mut().zip(&global) {
                        *o = s / area as f32;
                    }
                }
                _ => {}
            }
        }
        crate::tensor::give_scratch(xp);
        crate::tensor::give_scratch(band_buf);
        Ok(())
    }

    /// The row bands of the fused pool pass: (conv rows r0..r1, pooled rows p0..p1). A band
    /// holds as many pooled rows as keep `Cout x rows x OW` floats within the band budget (at
    /// least one); without a pool, one band of every row.
    fn bands(&self) -> Vec<(usize, usize, usize, usize)> {
        let g = &self.geom;
        let [oh, ow] = g.conv_out;
        // Band bytes: L3 / 16, between L2 / 2 and 4 MiB (2 MiB on a 32 MiB L3). Bands of
        // half an L2 (4 rows of vgg16.conv3_3 on a 512 KiB L2) left too little work between
        // the joins of Winograd's parallel passes: 2 threads ran 1.3x one thread; 16+ rows
        // ran 1.7x. `direct_oc`'s channels-last bands (resnet50.conv1, alexnet.conv1) on one
        // thread take half an L2 instead, so that the pool reads its band from L2: on the
        // 2 MiB-L2 Xeon (where the rule gives 4 MiB, resnet50.conv1's whole 3.2 MB pre-pool
        // tensor), 36-row bands ran resnet50.conv1 1.05x faster on one thread, but 0.94-0.98x
        // on two (one band a run, one join between conv and pool), and the Winograd VGG
        // layers 0.80-0.86x with 18-row bands.
        let caches = crate::sysinfo::caches();
        let one_thread = self.threads.unwrap_or_else(crate::par::threads) == 1;
        let budget_bytes = if one_thread && matches!(self.prepared, Prepared::DirectOc(_)) {
            caches.l2 / 2
        } else {
            (caches.l3 / 16).clamp(caches.l2 / 2, 4 << 20)
        };
        let budget_rows = self
            .band_rows
            .unwrap_or_else(|| (budget_bytes / (4 * g.out_channels * ow).max(1)).max(1));
        match (&g.epilogue.pool, g.pool_dims) {
            (Some(Pool::Max(_)) | Some(Pool::Avg { .. }), Some(d)) => {
                let (k, s, pt) = (d[0].size, d[0].stride, d[0].pad_before);
                let per = if budget_rows > k {
                    (budget_rows - k) / s + 1
                } else {
                    1
                };
                let ph = g.output[0];
                (0..ph)
                    .step_by(per)
                    .map(|p0| {
                        let p1 = (p0 + per).min(ph);
                        let r0 = (p0 * s).saturating_sub(pt).min(oh);
                        let r1 = ((p1 - 1) * s + k).saturating_sub(pt).min(oh);
                        (r0, r1.max(r0), p0, p1)
                    })
                    .collect()
            }
            (Some(_), _) => (0..oh)
                .step_by(budget_rows)
                .map(|r0| (r0, (r0 + budget_rows).min(oh), 0, 1))
                .collect(),
            (None, _) => vec![(0, oh, 0, oh)],
        }
    }

    fn band_rows_max(&self) -> usize {
        self.bands().iter().map(|b| b.1 - b.0).max().unwrap_or(0)
    }

    /// Scratch the plan uses per run beyond the caller's buffers: the band buffer of the
    /// fused pool and the padded image of `direct`. The pre-pool tensor is never allocated.
    pub fn scratch_bytes(&self) -> usize {
        let g = &self.geom;
        let band = match g.epilogue.pool {
            Some(_) => self.band_rows_max() * g.out_channels * g.conv_out[1],
            None => 0,
        };
        let threads = self.threads.unwrap_or_else(crate::par::threads);
        // (Per image in flight, per thread.)
        let (image, blocks) = match &self.prepared {
            Prepared::Direct(d) => (d.layout.image, 0),
            Prepared::DirectOc(d) => (d.layout.image, 0),
            Prepared::Gemm {
                phases: Some((layout, _)),
                ..
            } => (layout.image, 0),
            // The padded image (not made for undilated NCHW images, whose blocks pad a few
            // rows a channel) and one block's transformed tiles per thread.
            Prepared::Winograd(w) if w.pads_in_blocks() && self.layout != Layout::Nhwc => {
                (0, w.block_floats(g) + w.block_rows_floats())
            }
            Prepared::Winograd(w) => (w.image, w.block_floats(g)),
            _ => (0, 0),
        };
        // A batch in parts of whole images has one image in flight per thread.
        let in_flight = if split_images(g.batch, threads) {
            threads
        } else {
            1
        };
        4 * ((band + image) * in_flight + blocks * threads)
    }

    /// Conv rows `r0..r1` of one image into `out` (`[Cout][r1 - r0][OW]`, or
    /// `[r1 - r0][OW][Cout]` when `channels_last`, which only `direct_oc` writes). `xp` is
    /// the padded image, except for Winograd when `wino_in_place` (it reads the NCHW `x`).
    #[allow(clippy::too_many_arguments)]
    fn conv_rows(
        &self,
        x: &[f32],
        xp: &[f32],
        wino_in_place: bool,
        r0: usize,
        r1: usize,
        out: &mut [f32],
        pass: &crate::algo::OutputPass,
        clock: Option<&crate::algo::winograd::PhaseClock>,
        channels_last: bool,
    ) -> Result<()> {
        debug_assert!(!channels_last || matches!(self.prepared, Prepared::DirectOc(_)));
        match &self.prepared {
            Prepared::Reference { .. } => unreachable!("the reference runs whole"),
            Prepared::Direct(d) => d.run_rows(&self.geom, xp, r0, r1, out, pass),
            Prepared::DirectOc(d) => d.run_rows(&self.geom, xp, r0, r1, out, pass, channels_last),
            Prepared::Winograd(w) => {
                let img = if wino_in_place {
                    crate::algo::winograd::WinoImage::Nchw(x)
                } else {
                    crate::algo::winograd::WinoImage::Padded(xp)
                };
                w.run_rows(&self.geom, img, r0, r1, out, pass, clock)
            }
            Prepared::Depthwise {
                uk,
                weight,
                blocked,
                layout,
            } => {
                use crate::algo::depthwise::{
                    run_channel_blocks, run_direct, run_multiplier_blocks, DwLayout,
                };
                let g = &self.geom;
                match (layout, uk.direct) {
                    (DwLayout::ChannelBlocks, _) => {
                        run_channel_blocks(g, uk, blocked, x, r0, r1, out, pass)
                    }
                    (DwLayout::MultiplierBlocks, _) => {
                        run_multiplier_blocks(g, uk, blocked, x, r0, r1, out, pass)
                    }
                    (DwLayout::Direct, Some((_, kernel))) => {
                        run_direct(g, kernel, weight, x, r0, r1, out, pass)
                    }
                    // Planes: their layout, and any other on the tier's plain weights.
                    _ => self.depthwise_rows(uk, weight, x, r0, r1, out, pass)?,
                }
            }
            Prepared::Gemm {
                uk,
                blocking,
                packed,
                phases,
            } => {
                let phased = phases.as_ref().map(|(l, o)| (l, o.as_slice(), xp));
                self.gemm_rows(uk, blocking, packed, x, phased, r0, r1, out, pass)
            }
            // Planned only for NHWC without a pool, which runs it whole.
            Prepared::GemmInPlace { .. } => {
                return Err(Error::AlgorithmRejects {
                    algo: "gemm1x1".into(),
                    why: "the in-place plan runs NHWC images whole, not in row bands".into(),
                })
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn depthwise_rows(
        &self,
        uk: &crate::arch::dwconv::DwUkernel,
        weight: &[f32],
        x: &[f32],
        r0: usize,
        r1: usize,
        out: &mut [f32],
        pass: &crate::algo::OutputPass,
    ) -> Result<()> {
        use crate::algo::direct::PhaseLayout;
        use crate::arch::dwconv::PLANES;
        let crate::algo::OutputPass {
            bias,
            accumulate,
            clamp,
            activation,
        } = *pass;
        let g = &self.geom;
        // The layout's slack must cover one chunk past a row.
        let layout = PhaseLayout::new(g, crate::arch::dwconv::CHUNK).map_err(|why| {
            Error::AlgorithmRejects {
                algo: "depthwise".into(),
                why,
            }
        })?;
        // Taps of one channel: the direct layout's offsets for a single input channel.
        let offsets: Vec<usize> = layout
            .offsets(g)
            .into_iter()
            .take(g.kernel_area())
            .collect();
        let ow = g.conv_out[1];
        let (band, ka, mult, in_area) = (
            (r1 - r0) * ow,
            g.kernel_area(),
            g.cout_per_group,
            g.input_area(),
        );
        let chan_len = layout.chan + crate::arch::dwconv::CHUNK + layout.pw;
        // Input channels a group (1 for depthwise; grouped planes sum the group's).
        let cpg = g.cin_per_group;
        let gather = Gather::of(self.isa.kernels()?);
        // Channels per task: enough that a task has ~4K input floats of work. One task per
        // channel spent more on the task and its scratch than on a 7x7 plane
        // (mobilenetv2.dw7: 960 channels of 49 outputs each). A channel with many
        // multipliers is split between tasks, in whole groups of planes, so that each thread
        // gets at least four (wav2vec2.conv0's one channel of 512 ran on one thread).
        let per_task = (4096 / in_area.max(1)).clamp(1, 64);
        let threads = crate::par::threads().max(1);
        let c_out = g.out_channels;
        let planes_per_task = (per_task * mult)
            .min(c_out.div_ceil(4 * threads).next_multiple_of(PLANES))
            .max(1);
        // Each task pads its channels, one at a time, into a buffer that stays in L1/L2,
        // then computes their output planes from it, up to `PLANES` at a time. (Padding the
        // whole image first wrote and re-read megabytes: mobilenetv2.dw56s2 was bound by it.)
        crate::par::for_each_chunk_mut(out, planes_per_task * band, |task, planes_of_task| {
            let mut xp = crate::tensor::take_scratch(cpg * chan_len);
            for slot in xp[..cpg * chan_len].chunks_exact_mut(chan_len) {
                slot[layout.chan..].fill(0.0);
            }
            let first = task * planes_per_task;
            let count = planes_of_task.len() / band.max(1);
            let mut filled = None;
            let mut done = 0;
            while done < count {
                let co = first + done;
                // The group (depthwise: the input channel) of output plane co.
                let grp = co / mult;
                if filled != Some(grp) {
                    for (i, slot) in xp[..cpg * chan_len].chunks_exact_mut(chan_len).enumerate() {
                        let ci = grp * cpg + i;
                        layout.fill_channel(
                            g,
                            &x[ci * in_area..(ci + 1) * in_area],
                            &mut slot[..layout.chan],
                            gather,
                        );
                    }
                    filled = Some(grp);
                }
                // Planes of this group in this task, at most `PLANES` together.
                let n = PLANES.min(count - done).min((grp + 1) * mult - co);
                let planes = &mut planes_of_task[done * band..(done + n) * band];
                let mut lanes = [0f32; PLANES];
                if let Some(b) = bias {
                    lanes[..n].copy_from_slice(&b[co..co + n]);
                }
                let mut p = crate::arch::dwconv::DwPlane {
                    input: &xp[r0 * layout.pw..],
                    inputs: cpg,
                    in_stride: chan_len,
                    offsets: &offsets,
                    weight: &weight[co * cpg * ka..(co + n) * cpg * ka],
                    pw: layout.pw,
                    ow,
                    out: &mut *planes,
                    planes: n,
                    bias: lanes,
                    accumulate,
                    clamp,
                    activation,
                };
                (uk.run)(&mut p);
                done += n;
            }
            crate::tensor::give_scratch(xp);
        });
        Ok(())
    }

    /// The output pass of a run: the bias, accumulation into a preloaded residual, the
    /// activation as a clamp in the kernels where it is one, and the others on each finished
    /// tile or plane while it is in cache (the band pass), not as a pass over the whole output.
    fn output_pass(&self, accumulate: bool) -> Result<crate::algo::OutputPass<'_>> {
        let act = self.geom.epilogue.activation;
        let clamp = act.as_clamp();
        Ok(crate::algo::OutputPass {
            bias: self.bias.as_deref(),
            accumulate,
            clamp: clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY)),
            activation: match clamp {
                Some(_) => None,
                None => Some((self.isa.kernels()?.activation, act)),
            },
        })
    }

    /// `gemm1x1` on NHWC images, image by image and group by group: C (the NHWC output,
    /// the residual preloaded) += the pixels as A in place x the packed weights, bias per
    /// column, the clamp in the kernel and other activations on each finished tile.
    fn run_gemm_in_place(
        &self,
        uk: &GemmUkernel,
        blocking: &Blocking,
        packed: &[crate::gemm::PackedB],
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
    ) -> Result<()> {
        let g = &self.geom;
        let pass = self.output_pass(residual.is_some())?;
        let (cin, cout) = (g.in_channels, g.out_channels);
        let (cpg, opg) = (g.cin_per_group, g.cout_per_group);
        let [oh, ow] = g.conv_out;
        // Stride 1: every pixel, one run of rows `cin` apart; strided: a run an output row,
        // its pixels `sw` pixels apart, the runs `sh` image rows apart.
        let (rs, seg_len, segments, seg_stride) = if g.stride == [1, 1] {
            (cin, oh * ow, 1, 0)
        } else {
            (g.stride[1] * cin, ow, oh, g.stride[0] * g.input[1] * cin)
        };
        self.nhwc_images(input, residual, output, |x, out| {
            let shared = SharedMut::new(out);
            for (grp, b) in packed.iter().enumerate() {
                let a = crate::gemm::RowsA {
                    data: x,
                    offset: grp * cpg,
                    rs,
                    seg_len,
                    segments,
                    seg_stride,
                };
                let epi = GemmEpilogue {
                    bias: match pass.bias {
                        Some(v) => GemmBias::Col(&v[grp * opg..(grp + 1) * opg]),
                        None => GemmBias::None,
                    },
                    clamp: pass.clamp,
                    accumulate: pass.accumulate,
                    activation: pass.activation,
                };
                crate::gemm::gemm_a_in_place(
                    uk,
                    blocking,
                    &a,
                    b,
                    &shared,
                    grp * opg,
                    cout,
                    epi,
                    true,
                );
            }
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_rows(
        &self,
        uk: &GemmUkernel,
        blocking: &Blocking,
        packed: &[PackedA],
        x: &[f32],
        phased: Option<(&crate::algo::direct::PhaseLayout, &[usize], &[f32])>,
        r0: usize,
        r1: usize,
        out: &mut [f32],
        pass: &crate::algo::OutputPass,
    ) {
        let crate::algo::OutputPass {
            bias: bias_all,
            accumulate,
            clamp,
            activation,
        } = *pass;
        let g = &self.geom;
        let ow = g.conv_out[1];
        let band = (r1 - r0) * ow;
        let (cpg, opg, in_area) = (g.cin_per_group, g.cout_per_group, g.input_area());
        let shared = SharedMut::new(out);
        for (grp, pa) in packed.iter().enumerate() {
            let xg = &x[grp * cpg * in_area..(grp + 1) * cpg * in_area];
            let bias = match bias_all {
                Some(b) => GemmBias::Row(&b[grp * opg..(grp + 1) * opg]),
                None => GemmBias::None,
            };
            let epi = GemmEpilogue {
                bias,
                clamp,
                accumulate,
                activation,
            };
            let c_off = grp * opg * band;
            if self.algo == Algo::Gemm1x1 && g.stride == [1, 1] {
                // 1x1, stride 1, no padding: output position p reads input position p.
                let src = StridedB {
                    data: &xg[r0 * ow..],
                    rs: in_area,
                    cs: 1,
                };
                gemm_packed(
                    uk, blocking, pa, &src, band, &shared, c_off, band, epi, true,
                );
            } else if let Some((layout, offsets, xp)) = phased {
                let src = crate::algo::im2col::Im2colPhaseB {
                    xp: &xp[grp * cpg * layout.chan..],
                    pw: layout.pw,
                    g,
                    offsets,
                    col0: r0 * ow,
                };
                gemm_packed(
                    uk, blocking, pa, &src, band, &shared, c_off, band, epi, true,
                );
            } else {
                let src = Im2colB {
                    x: xg,
                    g,
                    col0: r0 * ow,
                    gather: self
                        .isa
                        .kernels()
                        .map_or(crate::arch::gather_scalar, |k| k.gather),
                };
                gemm_packed(
                    uk, blocking, pa, &src, band, &shared, c_off, band, epi, true,
                );
            }
        }
    }
}

/// Whether `gemm1x1` runs `g` with the image's pixels as A in place: NHWC (or NLC), no
/// pool. (A pool takes the planar bands of the converted layout.)
fn gemm_in_place(g: &Geometry, layout: Layout) -> bool {
    layout == Layout::Nhwc && g.epilogue.pool.is_none()
}

/// Whether `direct_oc` writes the layer's bands channels-last: `direct_oc` tiles are pixels
/// by channels, stored channels-last they need no transpose, and a window pool reads such a
/// band as well as a planar one (its pooled rows are transposed instead: a quarter of the
/// floats at stride 2). A residual is preloaded planar, so it keeps the planar band.
fn channels_last_band(g: &Geometry) -> bool {
    !g.epilogue.residual && matches!(g.epilogue.pool, Some(Pool::Max(_) | Pool::Avg { .. }))
}

/// The `direct_oc` tile kernel for `g`: the tier's wide tile for layers of at least 48
/// channels a group (three of its four panels) and K up to 1152 (a call's weights, K x 64
/// floats, then stay within 288 KiB), else its default tile. Paired, min and median time,
/// wide over default: planar resnet50.res3.3x3s2 (K = 1152) 0.95-0.99x on one thread,
/// 0.91-0.93x on two, textcnn.k3 0.95-0.96x and 0.96-1.00x; resnet50.res5.3x3 (K = 4608)
/// 1.10-1.12x; channels-last in [`F32_CONV_OC_WIDE`](crate::arch::x86_64::avx512). Among
/// the others, the tier's 7-pixel tile for an unpooled image whose pixels the default tile
/// divides with over 5% of its slots empty, and 7 with fewer: resnet50.res5.3x3's 49 pixels
/// (7 tiles of 8, the last holding one pixel), alternating processes, median ms: one thread
/// 1.31-1.43 -> 1.18-1.34; two threads 0.74-0.78 -> 0.59 together with the channel shares of
/// [`crate::algo::direct_oc::DirectOcPlan::run_rows`] (the shares alone: 0.79-0.85 ->
/// 0.70-0.80).
fn direct_oc_kernel(
    g: &Geometry,
    table: &crate::kernels::KernelTable,
) -> crate::kernels::OcUkernel {
    let k = g.cin_per_group * g.kernel_area();
    // Pixel slots a tile of `mr` leaves empty in the image (unpooled layers run the whole
    // image as one band; pooled ones run bands of rows).
    let pixels = g.conv_out[0] * g.conv_out[1];
    let empty = |mr: usize| pixels.div_ceil(mr) * mr - pixels;
    match (table.conv_oc_wide, table.conv_oc_seven) {
        (Some(wide), _) if g.cout_per_group >= 48 && k <= 1152 => wide,
        // Seven pixels where the default tile wastes over 5% of its slots and seven waste
        // fewer.
        (_, Some(seven))
            if g.epilogue.pool.is_none()
                && 20 * empty(table.conv_oc.mr) > pixels
                && empty(seven.mr) < empty(table.conv_oc.mr) =>
        {
            seven
        }
        _ => table.conv_oc,
    }
}

/// The pooling kernels of the plan's tier.
struct PoolKernels {
    gather: GatherFn,
    transpose: crate::arch::TransposeFn,
    plane: crate::algo::pool::PoolPlaneFn,
    channels_last: crate::algo::pool::PoolChannelsLastFn,
}

/// One band of the fused pool: conv rows `r0..r1` (planar `[Cout][rows][OW]`, or
/// `[rows][OW][Cout]` when `channels_last`) and the pooled rows `p0..p1` they complete, into
/// planes or (`nhwc_out`, channels-last bands only) NHWC rows.
#[derive(Copy, Clone)]
struct BandLayout {
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
    channels_last: bool,
    nhwc_out: bool,
}

/// Pools conv rows `r0..r1` (all channels, `band` laid out as `layout` says) into pooled
/// rows `p0..p1` of `out_img`, or folds them into `global` (max or sum per channel) for the
/// global pools. The same definitions as the reference, in f32.
fn pool_band(
    g: &Geometry,
    band: &[f32],
    layout: BandLayout,
    out_img: &mut [f32],
    global: &mut [f32],
    kernels: &PoolKernels,
) {
    let BandLayout {
        r0,
        r1,
        p0,
        p1,
        channels_last,
        nhwc_out,
    } = layout;
    debug_assert!(!nhwc_out || channels_last);
    let ow = g.conv_out[1];
    let rows = r1 - r0;
    debug_assert!(
        !channels_last || matches!(g.epilogue.pool, Some(Pool::Max(_) | Pool::Avg { .. }))
    );
    match (&g.epilogue.pool, g.pool_dims) {
        (Some(Pool::GlobalMax), _) => {
            for (acc, plane) in global.iter_mut().zip(band.chunks(rows * ow)) {
                *acc = crate::algo::pool::fold_max(*acc, plane);
            }
        }
        (Some(Pool::GlobalAvg), _) => {
            for (acc, plane) in global.iter_mut().zip(band.chunks(rows * ow)) {
                *acc += crate::algo::pool::sum_lanes(plane);
            }
        }
        (Some(pool), Some(d)) => {
            let is_max = matches!(pool, Pool::Max(_));
            let cip = matches!(
                pool,
                Pool::Avg {
                    count_include_pad: true,
                    ..
                }
            );
            let [ph, pw] = g.output;
            // Separable: first reduce the window's rows elementwise into one row (a loop
            // over whole rows that vectorizes), then reduce each window's columns of that
            // row. k + k operations per output instead of k * k, and channels in parallel.
            // (The direct k x k loop took a third of resnet50.conv1 and ran on one thread.)
            let args = crate::algo::pool::PlaneArgs {
                dims: d,
                is_max,
                count_include_pad: cip,
                conv_out: g.conv_out,
                output: g.output,
                r0,
                p0,
                p1,
                gather: kernels.gather,
                transpose: kernels.transpose,
            };
            if channels_last {
                if p1 <= p0 {
                    return;
                }
                // Tasks of whole pooled rows (every channel, the band read in order), each
                // pooling into its own `[Cout][rows][pw]` and copying each channel's rows
                // out whole (tasks share the output buffer, never an element). Written in
                // place instead, a pooled row at a time (27 floats into each of 64 planes),
                // alexnet.conv1 ran 1.12x slower on one thread (paired, min time).
                let cout = g.out_channels;
                let tasks = (p1 - p0).min(4 * crate::par::threads()).max(1);
                let per_task = (p1 - p0).div_ceil(tasks);
                let shared = SharedMut::new(out_img);
                crate::par::for_each_index((p1 - p0).div_ceil(per_task), |t| {
                    let q0 = p0 + t * per_task;
                    let q1 = (q0 + per_task).min(p1);
                    let task_args = crate::algo::pool::PlaneArgs {
                        p0: q0,
                        p1: q1,
                        ..args
                    };
                    let rows_len = (q1 - q0) * pw;
                    let mut own = crate::tensor::take_scratch(cout * rows_len);
                    (kernels.channels_last)(&task_args, band, cout, &mut own, rows_len, nhwc_out);
                    if nhwc_out {
                        // Pooled rows q0..q1 of the NHWC output, whole.
                        shared.write_from(q0 * pw * cout, &own);
                    } else {
                        for (ch, rows) in own.chunks_exact(rows_len).enumerate() {
                            shared.write_from(ch * ph * pw + q0 * pw, rows);
                        }
                    }
                    crate::tensor::give_scratch(own);
                });
            } else {
                crate::par::for_each_chunk_zip(out_img, ph * pw, band, rows * ow, |_, o, plane| {
                    (kernels.plane)(&args, plane, o)
                });
            }
        }
        _ => {}
    }
}
/// The layouts a run's images come in and go out in, where they are not NCHW.
#[derive(Clone, Copy, Debug, Default)]
struct ImageIo {
    /// NHWC input images (undilated Winograd's fill only).
    nhwc_in: bool,
    /// NHWC output images (`direct_oc` only).
    nhwc_out: bool,
}

/// Whether a batch of `batch` images on `threads` threads runs as one part of whole images
/// per thread ([`Plan::run_image_parts`]): when the parts are even, or many enough that one
/// image more weighs little. Paired on two threads, resnet50.res3.3x3.b8 (8 images) ran in
/// 0.85x the time of images one after another with the threads sharing each (Winograd
/// F(4,3)), 0.81x with `direct_oc`, 0.90x with `im2col`.
fn split_images(batch: usize, threads: usize) -> bool {
    threads > 1 && batch >= threads && (batch.is_multiple_of(threads) || batch >= 4 * threads)
}
