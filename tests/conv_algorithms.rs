//! Every algorithm x every ISA tier this CPU runs x a generated grid of layers, against the
//! f64 reference with SPEC's tolerance; the worst element is reported on failure. Also
//! bitwise determinism across 1, 2 and 3 threads, NHWC, and concurrent runs of one plan.
//! `CONVKIT_SLOW_TESTS=1` widens the sweep.

use convkit::init::Rng;
use convkit::reference::{self, coords, Operands};
use convkit::{
    algo, algo::depthwise::DwLayout, Activation, Algo, ConvSpec, Geometry, Isa, Layout, Padding,
    Plan, PlanOptions, Pool, PoolWindow,
};
use proptest::prelude::*;

struct Case {
    spec: ConvSpec,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    r: Option<Vec<f32>>,
}

fn make_case(spec: ConvSpec, seed: u64) -> Case {
    let g = Geometry::new(&spec).unwrap();
    let mut rng = Rng::new(seed);
    let mut fill = |n: usize| {
        (0..n)
            .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
            .collect::<Vec<f32>>()
    };
    let x = fill(g.input_len());
    let w = fill(g.weight_len());
    let b = g.epilogue.bias.then(|| fill(g.out_channels));
    let r = g.epilogue.residual.then(|| fill(g.conv_output_len()));
    Case { spec, x, w, b, r }
}

/// The same bits in every element (SPEC: the same output whatever the thread count).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn tolerance(algo: Algo) -> f64 {
    if algo.name().starts_with("winograd") {
        1e-3
    } else {
        1e-4
    }
}

/// The case's geometry, its f64 reference output and SPEC's magnitude S.
fn reference_of(case: &Case) -> (Geometry, Vec<f64>, f64) {
    let g = Geometry::new(&case.spec).unwrap();
    let ops = Operands {
        input: &case.x,
        weight: &case.w,
        bias: case.b.as_deref(),
        residual: case.r.as_deref(),
    };
    let want = reference::forward_f64(&g, &ops).unwrap();
    let s = reference::magnitude(&g, &ops).unwrap();
    (g, want, s)
}

/// Runs `algo` on `isa` and checks against the reference; returns the output.
fn check(
    case: &Case,
    algo: Algo,
    isa: Isa,
    threads: Option<usize>,
    layout: Layout,
) -> Result<Vec<f32>, String> {
    check_banded(case, algo, isa, threads, layout, None)
}

/// As `check`, with the fused pool's band height forced (1, 2, 3 rows exercise every band
/// boundary of overlapping windows).
fn check_banded(
    case: &Case,
    algo: Algo,
    isa: Isa,
    threads: Option<usize>,
    layout: Layout,
    band_rows: Option<usize>,
) -> Result<Vec<f32>, String> {
    let (g, want, s) = reference_of(case);
    // Depthwise runs in each of its channel layouts, grouped in planes and in blocks.
    let dw_layouts: &[DwLayout] = match algo {
        Algo::Depthwise => &[
            DwLayout::Planes,
            DwLayout::ChannelBlocks,
            DwLayout::MultiplierBlocks,
            DwLayout::Direct,
            DwLayout::ChannelsLast,
        ],
        Algo::Grouped => &[DwLayout::Planes, DwLayout::ChannelBlocks],
        _ => &[DwLayout::Auto],
    };
    let mut last = Vec::new();
    for &depthwise_layout in dw_layouts {
        // Direct planes only where the tier has the kernel and it takes the layer (forced
        // elsewhere, they fall back to a layout this loop runs anyway).
        // So is the channels-last kernel, on NHWC plans only.
        if matches!(depthwise_layout, DwLayout::Direct | DwLayout::ChannelsLast) {
            let uk = isa.kernels().map_err(|e| e.to_string())?.dwconv;
            if depthwise_layout.pick(&g, &uk) != depthwise_layout
                || (depthwise_layout == DwLayout::ChannelsLast && layout != Layout::Nhwc)
            {
                continue;
            }
        }
        let opts = PlanOptions {
            algo: Some(algo.name().into()),
            isa: Some(isa.name().into()),
            threads,
            layout,
            band_rows,
            depthwise_layout,
            ..Default::default()
        };
        last = run_checked(case, &g, algo, &opts, &want, s)
            .map_err(|e| format!("{e} (depthwise layout {depthwise_layout:?})"))?;
    }
    Ok(last)
}

/// One plan built with `opts`, run and compared with the reference output `want`.
fn run_checked(
    case: &Case,
    g: &Geometry,
    algo: Algo,
    opts: &PlanOptions,
    want: &[f64],
    s: f64,
) -> Result<Vec<f32>, String> {
    let (isa, layout) = (opts.isa.clone().unwrap_or_default(), opts.layout);
    let plan =
        Plan::new(&case.spec, &case.w, case.b.as_deref(), opts).map_err(|e| e.to_string())?;
    let mut y = vec![f32::NAN; g.output_len()];
    let (x, r) = match layout {
        Layout::Nchw => (case.x.clone(), case.r.clone()),
        Layout::Nhwc => {
            let mut x = vec![0.0; case.x.len()];
            convkit::tensor::nchw_to_nhwc(&case.x, &mut x, g.batch, g.in_channels, g.input_area());
            let r = case.r.as_ref().map(|r| {
                let mut t = vec![0.0; r.len()];
                convkit::tensor::nchw_to_nhwc(
                    r,
                    &mut t,
                    g.batch,
                    g.out_channels,
                    g.conv_out_area(),
                );
                t
            });
            (x, r)
        }
    };
    plan.run(&x, r.as_deref(), &mut y)
        .map_err(|e| e.to_string())?;
    if layout == Layout::Nhwc {
        let mut t = vec![0.0; y.len()];
        convkit::tensor::nhwc_to_nchw(
            &y,
            &mut t,
            g.batch,
            g.out_channels,
            g.output[0] * g.output[1],
        );
        y = t;
    }
    let c = reference::compare(&y, want, s);
    if c.normalized_err > tolerance(algo) {
        return Err(format!(
            "{} on {} ({:?}): worst element {:?} = {} (reference {}), error {:.3e} x S (S = {:.3e}), spec {}",
            algo.name(),
            isa,
            layout,
            coords(&g.output_shape(), c.worst_index),
            c.worst_values.0,
            c.worst_values.1,
            c.normalized_err,
            s,
            case.spec.to_json()
        ));
    }
    Ok(y)
}

fn activation_strategy() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::None),
        Just(Activation::Relu),
        Just(Activation::Relu6),
        Just(Activation::Sigmoid),
        Just(Activation::Tanh),
        Just(Activation::Gelu),
        Just(Activation::GeluTanh),
        Just(Activation::Silu),
        Just(Activation::LeakyRelu { alpha: 0.1 }),
        Just(Activation::Clamp {
            min: -0.5,
            max: 0.75
        }),
    ]
}

fn spec_strategy() -> impl Strategy<Value = ConvSpec> {
    (
        (1usize..3, 1usize..4, 1usize..5, any::<bool>()),
        (1usize..12, 1usize..12, 1usize..6, 1usize..6),
        (1usize..3, 1usize..3, 0usize..4, 0usize..4),
        (
            any::<bool>(),
            any::<bool>(),
            activation_strategy(),
            0usize..5,
        ),
    )
        .prop_map(
            |(
                (n, cpg, opg, one_d),
                (h, w, kh, kw),
                (s, d, pad_kind, groups_sel),
                (bias, residual, act, pool_sel),
            )| {
                // The last choice is depthwise over 9, 13 or 17 channels: full and partial
                // blocks of the channel-block layout (8 lanes), with multipliers 1..5.
                let groups = [1, 1, 2, 4 * cpg + 5][groups_sel];
                let cpg = if groups_sel == 3 { 1 } else { cpg };
                let (c, co) = (cpg * groups, opg * groups);
                let (input, kernel, rank) = if one_d {
                    (vec![n, c, w + kw * d], vec![kw], 1)
                } else {
                    (vec![n, c, h + kh, w + kw * d], vec![kh, kw], 2)
                };
                let padding = match pad_kind {
                    0 => Padding::Valid,
                    1 => Padding::Same,
                    2 => Padding::Symmetric(vec![1; rank]),
                    _ => Padding::Explicit(vec![(0, 2); rank]),
                };
                let pool = match pool_sel {
                    1 => Some(Pool::Max(PoolWindow {
                        size: vec![2; rank],
                        stride: vec![2; rank],
                        padding: vec![(0, 0); rank],
                    })),
                    2 => Some(Pool::Avg {
                        window: PoolWindow {
                            size: vec![3; rank],
                            stride: vec![2; rank],
                            padding: vec![(1, 1); rank],
                        },
                        count_include_pad: false,
                    }),
                    3 => Some(Pool::GlobalAvg),
                    4 => Some(Pool::GlobalMax),
                    _ => None,
                };
                let mut spec = ConvSpec::new(&input, co, &kernel)
                    .with_stride(&vec![s; rank])
                    .with_dilation(&vec![d; rank])
                    .with_padding(padding)
                    .with_groups(groups)
                    .with_bias(bias)
                    .with_residual(residual)
                    .with_activation(act);
                // Keep only pools that fit the conv output.
                if let Some(p) = pool {
                    let trial = spec.clone().with_pool(Some(p.clone()));
                    if Geometry::new(&trial).is_ok() {
                        spec = trial;
                    }
                }
                spec
            },
        )
        .prop_filter("valid geometry", |s| Geometry::new(s).is_ok())
}

/// Generated layers per run: 96, 2000 with `CONVKIT_SLOW_TESTS`, or `CONVKIT_TEST_CASES`
/// (the valgrind and qemu legs of CI run few).
fn cases() -> u32 {
    if let Some(n) = std::env::var("CONVKIT_TEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var("CONVKIT_SLOW_TESTS").is_ok() {
        2000
    } else {
        96
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn every_algorithm_on_every_tier_matches_the_reference(spec in spec_strategy(), seed in 0u64..1000) {
        let case = make_case(spec, seed);
        let g = Geometry::new(&case.spec).unwrap();
        // Half the cases in NHWC: its conversions, and `direct_oc`'s tiles stored straight
        // into NHWC outputs, over the generated shapes too.
        let layout = if seed % 2 == 0 { Layout::Nchw } else { Layout::Nhwc };
        for isa in convkit::arch::available_isas() {
            for al in algo::accepting(&g) {
                if let Err(e) = check(&case, al, isa, Some(1), layout) {
                    prop_assert!(false, "{}", e);
                }
            }
        }
    }
}

/// A resnet50.conv1-shaped layer: 7x7 stride 2, relu, 3x3 stride-2 max pool.
fn conv1_like(input: &[usize], out_channels: usize) -> ConvSpec {
    ConvSpec::new(input, out_channels, &[7, 7])
        .with_stride(&[2, 2])
        .with_padding(Padding::Symmetric(vec![3, 3]))
        .with_activation(Activation::Relu)
        .with_pool(Some(Pool::Max(PoolWindow {
            size: vec![3, 3],
            stride: vec![2, 2],
            padding: vec![(1, 1); 2],
        })))
}

fn suite_like_cases() -> Vec<ConvSpec> {
    vec![
        ConvSpec::new(&[1, 16, 20, 20], 24, &[3, 3])
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_activation(Activation::Relu),
        conv1_like(&[2, 3, 31, 29], 8),
        // 64 channels (AVX-512's wide direct_oc tile) and 16 pooled rows: the channels-last
        // pool's tasks then take several rows each, in planes and in NHWC rows.
        conv1_like(&[1, 3, 64, 64], 64),
        ConvSpec::new(&[1, 40, 9, 9], 36, &[1, 1])
            .with_residual(true)
            .with_activation(Activation::Relu6),
        ConvSpec::new(&[1, 32, 12, 12], 32, &[3, 3])
            .with_groups(8)
            .with_padding(Padding::Same)
            .with_activation(Activation::Silu),
        ConvSpec::new(&[1, 17, 13, 13], 19, &[3, 3])
            .with_dilation(&[2, 2])
            .with_padding(Padding::Symmetric(vec![2, 2])),
        ConvSpec::new(&[1, 1, 400], 16, &[10])
            .with_stride(&[5])
            .with_activation(Activation::Gelu),
        ConvSpec::new(&[1, 30, 64], 20, &[3])
            .with_activation(Activation::Relu)
            .with_pool(Some(Pool::GlobalMax)),
        // Depthwise of 2 channels x multiplier 8: multiplier blocks, with a residual.
        ConvSpec::new(&[1, 2, 9, 11], 16, &[3, 3])
            .with_groups(2)
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_stride(&[2, 1])
            .with_residual(true)
            .with_activation(Activation::Relu6),
        ConvSpec::new(&[1, 12, 10, 10], 12, &[3, 3])
            .with_groups(12)
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_stride(&[2, 2]),
        // K = 70 * 9 = 630: more than one K block in every algorithm (direct's are 512 deep).
        ConvSpec::new(&[1, 70, 9, 10], 7, &[3, 3])
            .with_padding(Padding::Same)
            .with_residual(true)
            .with_activation(Activation::Relu6),
        // 64 output channels with a bias and a clamp, no residual: whole two-panel tiles of
        // `direct_oc` (32 channels by 8 pixels on AVX-512, stored by 8x8 transposes).
        ConvSpec::new(&[1, 6, 12, 11], 64, &[3, 3])
            .with_padding(Padding::Same)
            .with_activation(Activation::Relu6),
        // 49 pixels (7 x 7) and fewer than 48 channels: AVX-512's 7-pixel `direct_oc` tile
        // (7 tiles, none short), with a residual and a partial panel (40 = 32 + 8), and whole
        // tiles of 32 channels through its transposing store.
        ConvSpec::new(&[1, 8, 7, 7], 40, &[3, 3])
            .with_padding(Padding::Same)
            .with_residual(true)
            .with_activation(Activation::Relu),
        ConvSpec::new(&[1, 9, 7, 7], 32, &[3, 3])
            .with_padding(Padding::Same)
            .with_activation(Activation::Relu6),
        // 110 output channels: more A panels than `direct` feeds from B in place, so its
        // tiles' B rows are packed first (stride 2 and a residual on the way).
        ConvSpec::new(&[1, 5, 11, 13], 110, &[3, 3])
            .with_stride(&[2, 2])
            .with_padding(Padding::Same)
            .with_residual(true)
            .with_activation(Activation::Relu),
    ]
}

#[test]
fn suite_like_layers_all_tiers_both_layouts() {
    for (i, spec) in suite_like_cases().into_iter().enumerate() {
        let case = make_case(spec, i as u64);
        let g = Geometry::new(&case.spec).unwrap();
        for isa in convkit::arch::available_isas() {
            for al in algo::accepting(&g) {
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    check(&case, al, isa, None, layout).unwrap();
                }
            }
        }
    }
}

/// The hand-written channel-block kernels (AVX2: eight pixels a step, tails of 1..7): 3x3
/// at every output width 1..=17 at strides 1 and 2, a full and a partial block of channels,
/// with and without a residual (which moves the clamp out of the kernel); and multiplier
/// blocks.
#[test]
fn depthwise_3x3_every_row_tail_and_stride() {
    for s in [1usize, 2] {
        for ow in 1..=17usize {
            for residual in [false, true] {
                let w = (ow - 1) * s + 1 + (ow % 2) * (s - 1);
                let spec = ConvSpec::new(&[1, 13, 4, w], 13, &[3, 3])
                    .with_groups(13)
                    .with_stride(&[s, s])
                    .with_padding(Padding::Symmetric(vec![1, 1]))
                    .with_residual(residual)
                    .with_activation(Activation::Relu6);
                let g = Geometry::new(&spec).unwrap();
                assert_eq!(g.conv_out[1], ow, "stride {s}, width {w}");
                let case = make_case(spec, (s * 100 + ow) as u64);
                for isa in convkit::arch::available_isas() {
                    check(&case, Algo::Depthwise, isa, None, Layout::Nchw).unwrap();
                }
            }
        }
    }
    // The multiplier-block kernel (one input channel broadcast to 8 multipliers a block):
    // wav2vec2.conv0's kernel 10, stride 5, every output length 1..=17, undilated and
    // dilated, with and without a residual.
    for ow in 1..=17usize {
        for (d, residual) in [(1usize, false), (2, true)] {
            let len = 9 * d + 1 + 5 * (ow - 1);
            let spec = ConvSpec::new(&[1, 1, len], 16, &[10])
                .with_stride(&[5])
                .with_dilation(&[d])
                .with_residual(residual)
                .with_activation(Activation::Relu);
            let case = make_case(spec, (1000 + ow * 10 + d) as u64);
            for isa in convkit::arch::available_isas() {
                check(&case, Algo::Depthwise, isa, None, Layout::Nchw).unwrap();
            }
        }
    }
}

/// Depthwise 3x3 planes, NCHW, at strides 1 and 2: widths that end every column block of
/// the AVX-512 kernel (four, two and one vectors of 16, partial ones), heights that leave
/// every row-step tail and steps wholly inside the plane, padding of 0, 1 and 2 on either
/// side, with a bias, a residual or neither, and a band of rows (a fused pool's), against
/// the reference on every tier.
#[test]
fn depthwise_3x3_planes_of_every_block_and_step() {
    let pool = Some(Pool::Max(PoolWindow {
        size: vec![2, 2],
        stride: vec![2, 2],
        padding: vec![(0, 0); 2],
    }));
    let mut seed = 2000;
    for s in [1usize, 2] {
        for (h, w) in [
            (1, 33),
            (3, 47),
            (5, 48),
            (9, 49),
            (13, 64),
            (16, 65),
            (6, 100),
            (11, 17),
        ] {
            for (pads, residual, bias) in [
                (vec![(1, 1), (1, 1)], false, true),
                (vec![(0, 2), (2, 0)], true, false),
                (vec![(2, 1), (0, 1)], false, false),
            ] {
                let spec = ConvSpec::new(&[1, 3, h, w * s], 3, &[3, 3])
                    .with_groups(3)
                    .with_stride(&[s, s])
                    .with_padding(Padding::Explicit(pads))
                    .with_bias(bias)
                    .with_residual(residual)
                    .with_activation(Activation::Relu6);
                seed += 1;
                let case = make_case(spec.clone(), seed);
                for isa in convkit::arch::available_isas() {
                    check(&case, Algo::Depthwise, isa, None, Layout::Nchw).unwrap();
                }
                if h >= 4 && !residual {
                    let case = make_case(spec.with_pool(pool.clone()), seed + 500);
                    for isa in convkit::arch::available_isas() {
                        check_banded(&case, Algo::Depthwise, isa, None, Layout::Nchw, Some(3))
                            .unwrap();
                    }
                }
            }
        }
    }
}

/// Small depthwise 3x3 planes at stride 1 with the output the input's size (AVX-512 pads
/// them in registers where the padding is 1 left and right and rows are 4 to 7 wide, and
/// takes the others with masked loads): widths 1..=9, heights 1..=17, padding before of 0,
/// 1 and 2 on top and on the left, a bias or not, a residual or not, relu6 or no
/// activation, 37 planes (several tasks), against the reference on every tier.
#[test]
fn depthwise_small_planes_of_every_size_and_padding() {
    let mut seed = 9000;
    for w in 1..=9usize {
        for h in [1usize, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17] {
            for (top, left) in [(1usize, 1usize), (0, 1), (2, 1), (1, 0), (1, 2)] {
                seed += 1;
                let pads = vec![(top, 2 - top), (left, 2 - left)];
                let spec = ConvSpec::new(&[1, 37, h, w], 37, &[3, 3])
                    .with_groups(37)
                    .with_padding(Padding::Explicit(pads))
                    .with_bias(seed % 2 == 0)
                    .with_residual(seed % 3 == 0)
                    .with_activation(if seed % 5 < 3 {
                        Activation::Relu6
                    } else {
                        Activation::None
                    });
                let case = make_case(spec, seed);
                for isa in convkit::arch::available_isas() {
                    check(&case, Algo::Depthwise, isa, None, Layout::Nchw).unwrap();
                }
            }
        }
    }
}

/// NHWC depthwise runs channels-last as it is (channel blocks copied from the NHWC rows, or
/// the tier's channels-last kernel reading them in place; pixels stored with their channels
/// together): partial blocks (5 and 19 channels), one block, strides 1 and 2, "same" and
/// symmetric padding, 5x5 dilated, a residual, a clamp and a non-clamp activation (run over
/// the task's rows), rows of 16 (the last 8-pixel step's last tap one past the row: not
/// "inside"), on every tier; one and three threads (tasks take output rows) give the same
/// bits.
#[test]
fn depthwise_nhwc_runs_channels_last() {
    let specs = [
        ConvSpec::new(&[1, 5, 13, 16], 5, &[3, 3])
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_activation(Activation::Relu6)
            .with_residual(true),
        ConvSpec::new(&[2, 8, 12, 17], 8, &[3, 3])
            .with_stride(&[2, 2])
            .with_padding(Padding::Same)
            .with_residual(true),
        ConvSpec::new(&[1, 19, 9, 10], 19, &[5, 5])
            .with_dilation(&[2, 2])
            .with_padding(Padding::Symmetric(vec![4, 3]))
            .with_activation(Activation::Gelu),
        ConvSpec::new(&[1, 24, 1, 40], 24, &[1, 5])
            .with_padding(Padding::Same)
            .with_activation(Activation::Silu)
            .with_residual(true),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let channels = spec.input[1];
        let spec = spec.with_groups(channels);
        let case = make_case(spec, 4000 + i as u64);
        for isa in convkit::arch::available_isas() {
            let one = check(&case, Algo::Depthwise, isa, Some(1), Layout::Nhwc)
                .unwrap_or_else(|e| panic!("NHWC depthwise case {i} on {}: {e}", isa.name()));
            let three = check(&case, Algo::Depthwise, isa, Some(3), Layout::Nhwc).unwrap();
            assert!(
                same_bits(&one, &three),
                "NHWC depthwise case {i} on {}: three threads differ from one",
                isa.name()
            );
        }
    }
}

/// Channel multipliers in the plane layout: up to four planes of one input channel are
/// computed together, and a non-clamp activation runs over segments of 256 outputs as they
/// finish. Multipliers 1, 3, 6 (a group of four and one of two) and 9, on rows longer than
/// a segment (1-D, 600 outputs; 2-D, 300 columns) and on planes of several row groups (2-D,
/// 40 columns), with gelu, and with a residual and relu6; every tier and thread counts 1
/// and 2 (tasks split a channel's multipliers).
#[test]
fn depthwise_planes_of_many_multipliers_and_long_rows() {
    let shapes: [&[usize]; 3] = [&[1, 2, 1205], &[1, 2, 3, 302], &[1, 2, 17, 42]];
    for (i, shape) in shapes.into_iter().enumerate() {
        for mult in [1usize, 3, 6, 9] {
            for (act, residual) in [(Activation::Gelu, false), (Activation::Relu6, true)] {
                let kernel: &[usize] = if shape.len() == 3 { &[5] } else { &[3, 3] };
                let spec = ConvSpec::new(shape, 2 * mult, kernel)
                    .with_groups(2)
                    .with_stride(&vec![if shape.len() == 3 { 2 } else { 1 }; kernel.len()])
                    .with_residual(residual)
                    .with_activation(act);
                let case = make_case(spec, (i * 100 + mult) as u64);
                let (g, want, s) = reference_of(&case);
                for isa in convkit::arch::available_isas() {
                    for threads in [1, 2] {
                        let opts = PlanOptions {
                            algo: Some("depthwise".into()),
                            isa: Some(isa.name().into()),
                            threads: Some(threads),
                            depthwise_layout: DwLayout::Planes,
                            ..Default::default()
                        };
                        run_checked(&case, &g, Algo::Depthwise, &opts, &want, s)
                            .map_err(|e| {
                                format!("{shape:?} x{mult} {act:?} {isa:?} {threads}t: {e}")
                            })
                            .unwrap();
                    }
                }
            }
        }
    }
}

/// The `grouped` algorithm: groups of 2, 4 and 8 channels, blocks full and partial, 3x3 at
/// strides 1 and 2 over output widths that leave every tail of the eight-pixel steps, 5x5
/// dilated, 1-D; with and without a residual.
#[test]
fn grouped_blocks_of_every_group_size() {
    for (gs, groups) in [(2usize, 5usize), (4, 3), (4, 8), (8, 2)] {
        let c = gs * groups;
        let mut specs = Vec::new();
        for s in [1usize, 2] {
            for ow in [1usize, 5, 8, 11, 16, 17] {
                let w = (ow - 1) * s + 1;
                specs.push(
                    ConvSpec::new(&[1, c, 3, w], c, &[3, 3])
                        .with_stride(&[s, s])
                        .with_padding(Padding::Symmetric(vec![1, 1]))
                        .with_residual(ow % 2 == 1)
                        .with_activation(Activation::Relu6),
                );
            }
        }
        specs.push(
            ConvSpec::new(&[2, c, 11, 12], c, &[5, 5])
                .with_dilation(&[2, 1])
                .with_padding(Padding::Same)
                .with_activation(Activation::Silu),
        );
        specs.push(ConvSpec::new(&[1, c, 30], c, &[3]).with_stride(&[2]));
        for (i, spec) in specs.into_iter().enumerate() {
            let case = make_case(spec.with_groups(groups), (gs * 100 + i) as u64);
            let g = Geometry::new(&case.spec).unwrap();
            assert!(Algo::Grouped.accepts(&g), "{}", case.spec.to_json());
            for isa in convkit::arch::available_isas() {
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    check(&case, Algo::Grouped, isa, None, layout).unwrap();
                }
            }
        }
    }
    // Refused, with the reason: other group sizes, unequal in and out, one group.
    for spec in [
        ConvSpec::new(&[1, 12, 5, 5], 12, &[3, 3]).with_groups(4),
        ConvSpec::new(&[1, 8, 5, 5], 16, &[3, 3]).with_groups(2),
        ConvSpec::new(&[1, 4, 5, 5], 4, &[3, 3]),
    ] {
        let g = Geometry::new(&spec).unwrap();
        let why = Algo::Grouped.check(&g).unwrap_err();
        assert!(why.contains("groups of 2, 4 or 8"), "{why}");
    }
}

/// `gemm1x1` on NHWC images reads the pixels where they lie (no conversion): stride 1 and
/// strided, 2-D and 1-D, groups, output channels off every tile width, a residual, a clamp
/// in the kernel and a band activation, a batch of two; with a pool it takes the converted
/// path. Every tier, against the reference, and bitwise the same on 1, 2 and 3 threads.
#[test]
fn gemm1x1_nhwc_reads_pixels_in_place() {
    let specs = [
        ConvSpec::new(&[2, 19, 7, 9], 70, &[1, 1])
            .with_residual(true)
            .with_activation(Activation::Relu6),
        ConvSpec::new(&[1, 24, 9, 11], 5, &[1, 1])
            .with_stride(&[2, 3])
            .with_activation(Activation::Gelu),
        ConvSpec::new(&[1, 12, 6, 5], 18, &[1, 1])
            .with_groups(3)
            .with_stride(&[2, 2])
            .with_residual(true),
        ConvSpec::new(&[2, 33, 40], 24, &[1]).with_activation(Activation::Silu),
        ConvSpec::new(&[1, 8, 41], 64, &[1])
            .with_stride(&[3])
            .with_groups(2)
            .with_activation(Activation::Relu),
        ConvSpec::new(&[1, 10, 8, 8], 20, &[1, 1]).with_pool(Some(Pool::Max(PoolWindow {
            size: vec![2, 2],
            stride: vec![2, 2],
            padding: vec![(0, 0); 2],
        }))),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let case = make_case(spec, 300 + i as u64);
        let g = Geometry::new(&case.spec).unwrap();
        assert!(Algo::Gemm1x1.accepts(&g), "{}", case.spec.to_json());
        for isa in convkit::arch::available_isas() {
            let outs: Vec<Vec<f32>> = [1, 2, 3]
                .iter()
                .map(|&t| check(&case, Algo::Gemm1x1, isa, Some(t), Layout::Nhwc).unwrap())
                .collect();
            for o in &outs[1..] {
                assert!(
                    same_bits(o, &outs[0]),
                    "gemm1x1 NHWC on {}: results differ with the thread count ({})",
                    isa.name(),
                    case.spec.to_json()
                );
            }
        }
    }
}

#[test]
fn bitwise_identical_across_thread_counts() {
    for (i, spec) in suite_like_cases().into_iter().enumerate() {
        let case = make_case(spec, 100 + i as u64);
        let g = Geometry::new(&case.spec).unwrap();
        for isa in convkit::arch::available_isas() {
            for al in algo::accepting(&g) {
                let outs: Vec<Vec<f32>> = [1, 2, 3]
                    .iter()
                    .map(|&t| check(&case, al, isa, Some(t), Layout::Nchw).unwrap())
                    .collect();
                for o in &outs[1..] {
                    assert!(
                        same_bits(o, &outs[0]),
                        "{} on {}: results differ with the thread count",
                        al.name(),
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn one_plan_runs_concurrently_from_many_threads() {
    let spec = suite_like_cases().remove(0);
    let case = make_case(spec, 7);
    let g = Geometry::new(&case.spec).unwrap();
    let plan = Plan::new(
        &case.spec,
        &case.w,
        case.b.as_deref(),
        &PlanOptions::default(),
    )
    .unwrap();
    let inputs: Vec<Vec<f32>> = (0..8)
        .map(|i| case.x.iter().map(|v| v * (1.0 + i as f32 * 0.1)).collect())
        .collect();
    let sequential: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| {
            let mut y = vec![0.0; g.output_len()];
            plan.run(x, None, &mut y).unwrap();
            y
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| {
                let (plan, len) = (&plan, g.output_len());
                s.spawn(move || {
                    let mut y = vec![0.0; len];
                    plan.run(x, None, &mut y).unwrap();
                    y
                })
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&sequential) {
            assert_eq!(&h.join().unwrap(), want);
        }
    });
}

#[test]
fn plan_errors_are_results_not_panics() {
    let spec = ConvSpec::new(&[1, 4, 8, 8], 4, &[3, 3]);
    let w = vec![0.0; 4 * 4 * 9];
    let b = vec![0.0; 4];
    assert!(Plan::new(&spec, &w[1..], Some(&b), &PlanOptions::default()).is_err());
    assert!(Plan::new(&spec, &w, None, &PlanOptions::default()).is_err());
    let e = Plan::new(
        &spec,
        &w,
        Some(&b),
        &PlanOptions {
            algo: Some("gemm1x1".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("gemm1x1"), "{e}");
    let e = Plan::new(
        &spec,
        &w,
        Some(&b),
        &PlanOptions {
            algo: Some("fastest".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown algorithm"), "{e}");
    let e = Plan::new(
        &spec,
        &w,
        Some(&b),
        &PlanOptions {
            isa: Some("sse9".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("sse9"), "{e}");
    assert!(Plan::new(
        &spec,
        &w,
        Some(&b),
        &PlanOptions {
            threads: Some(0),
            ..Default::default()
        }
    )
    .is_err());
    let plan = Plan::new(&spec, &w, Some(&b), &PlanOptions::default()).unwrap();
    let mut y = vec![0.0; 4 * 36];
    assert!(plan.run(&[0.0; 10], None, &mut y).is_err());
    assert!(plan.run(&vec![0.0; 256], Some(&y.clone()), &mut y).is_err());
    assert!(plan.run(&vec![0.0; 256], None, &mut y[1..]).is_err());
}

#[test]
fn fused_pool_bands_of_every_height_match_the_reference() {
    let pools = [
        Pool::Max(PoolWindow {
            size: vec![3, 3],
            stride: vec![2, 2],
            padding: vec![(1, 1); 2],
        }),
        Pool::Avg {
            window: PoolWindow {
                size: vec![2, 3],
                stride: vec![2, 1],
                padding: vec![(1, 0), (1, 1)],
            },
            count_include_pad: true,
        },
        Pool::Max(PoolWindow {
            size: vec![2, 2],
            stride: vec![2, 2],
            padding: vec![(0, 0); 2],
        }),
        // Stride 3 in the row: three column phases, windows reaching into both paddings.
        Pool::Max(PoolWindow {
            size: vec![3, 4],
            stride: vec![1, 3],
            padding: vec![(0, 0), (2, 1)],
        }),
        Pool::Avg {
            window: PoolWindow {
                size: vec![1, 5],
                stride: vec![1, 3],
                padding: vec![(0, 0), (2, 2)],
            },
            count_include_pad: false,
        },
        Pool::GlobalAvg,
        Pool::GlobalMax,
    ];
    for (i, pool) in pools.into_iter().enumerate() {
        let spec = ConvSpec::new(&[2, 6, 13, 11], 10, &[3, 3])
            .with_padding(Padding::Same)
            .with_residual(true)
            .with_activation(Activation::Gelu)
            .with_pool(Some(pool));
        let case = make_case(spec, 300 + i as u64);
        let g = Geometry::new(&case.spec).unwrap();
        for al in algo::accepting(&g) {
            for rows in [1, 2, 3, 5] {
                check_banded(
                    &case,
                    al,
                    convkit::arch::best_isa(),
                    Some(2),
                    Layout::Nchw,
                    Some(rows),
                )
                .unwrap();
            }
        }
    }
    // The fused plan never holds the pre-pool tensor: its scratch is a band. The band budget
    // is at most 4 MiB whatever the caches (a 2 MiB L2 reaches it), so the image is large
    // enough (a 51 MB pre-pool tensor) for the band to be a small part of it on any machine.
    let spec = ConvSpec::new(&[1, 64, 448, 448], 64, &[3, 3])
        .with_padding(Padding::Same)
        .with_activation(Activation::Relu)
        .with_pool(Some(Pool::Max(PoolWindow {
            size: vec![2, 2],
            stride: vec![2, 2],
            padding: vec![(0, 0); 2],
        })));
    let g = Geometry::new(&spec).unwrap();
    let w = vec![0.0; g.weight_len()];
    let b = vec![0.0; 64];
    let plan = Plan::new(
        &spec,
        &w,
        Some(&b),
        &PlanOptions {
            algo: Some("im2col".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let pre_pool = 4 * g.conv_output_len();
    assert!(
        plan.scratch_bytes() <= 4 << 20 && plan.scratch_bytes() * 8 < pre_pool,
        "scratch {} vs pre-pool {pre_pool}",
        plan.scratch_bytes()
    );
}

#[test]
fn memory_budget_refuses_before_allocating() {
    // 512 x 512 x 3 x 3 weights = 9.4 MB packed: over a 1 MB budget, under the default.
    let spec = ConvSpec::new(&[1, 512, 7, 7], 512, &[3, 3]).with_padding(Padding::Same);
    let g = Geometry::new(&spec).unwrap();
    let w = vec![0.0; g.weight_len()];
    let b = vec![0.0; 512];
    for algo in ["im2col", "direct", "reference"] {
        let opts = PlanOptions {
            algo: Some(algo.into()),
            max_bytes: Some(1 << 20),
            ..Default::default()
        };
        let e = Plan::new(&spec, &w, Some(&b), &opts).unwrap_err();
        assert!(matches!(e, convkit::Error::Budget(_)), "{algo}: {e}");
        assert!(e.to_string().contains("limit"), "{e}");
    }
    assert!(Plan::new(&spec, &w, Some(&b), &PlanOptions::default()).is_ok());
}

/// Layers Winograd accepts: kernel 3, stride 1, dilation 1 or 2 (phase planes); odd sizes
/// whose outputs are not multiples of any tile, every padding kind, groups, 1-D and 2-D,
/// every epilogue.
fn winograd_spec_strategy() -> impl Strategy<Value = ConvSpec> {
    spec_strategy()
        .prop_map(|spec| {
            let rank = spec.kernel.len();
            let mut spec = spec.with_stride(&vec![1; rank]);
            spec.kernel = vec![3; rank];
            spec
        })
        .prop_filter("valid geometry", |s| Geometry::new(s).is_ok())
}

/// The Winograd algorithms for `g`: `winograd_*` at dilation 1 (SPEC), `dilated_*` above.
fn winograd_names(g: &Geometry) -> [&'static str; 3] {
    if g.dilation == [1, 1] {
        ["winograd_f2x3", "winograd_f4x3", "winograd_f6x3"]
    } else {
        ["dilated_f2x3", "dilated_f4x3", "dilated_f6x3"]
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn winograd_variants_on_every_tier_match_the_reference(spec in winograd_spec_strategy(), seed in 0u64..1000) {
        let case = make_case(spec, seed);
        let g = Geometry::new(&case.spec).unwrap();
        for isa in convkit::arch::available_isas() {
            for name in winograd_names(&g) {
                let al = Algo::parse(name).unwrap();
                prop_assert!(al.accepts(&g), "{} must accept {}", name, case.spec.to_json());
                for threads in [Some(1), Some(2)] {
                    if let Err(e) = check(&case, al, isa, threads, Layout::Nchw) {
                        prop_assert!(false, "{}", e);
                    }
                }
            }
        }
    }
}

/// Grouped layers in planes, on the shapes AVX-512's hand kernel takes (four output planes a
/// call, rows of 17 to 32 outputs and of more than 32, a clamp, with and without a residual,
/// batch 2) and on ones the generic body takes (gelu, groups of 2 and 8): against the
/// reference on every tier, in both layouts, and bitwise the same on 1 and 3 threads.
#[test]
fn grouped_planes_match_the_reference() {
    let specs = [
        ConvSpec::new(&[1, 16, 9, 40], 16, &[3, 3])
            .with_groups(4)
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_residual(true)
            .with_activation(Activation::Relu),
        ConvSpec::new(&[2, 32, 7, 20], 32, &[3, 3])
            .with_groups(8)
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_activation(Activation::Relu6),
        ConvSpec::new(&[1, 16, 6, 37], 16, &[3, 3])
            .with_groups(2)
            .with_dilation(&[1, 2])
            .with_padding(Padding::Same)
            .with_activation(Activation::Gelu),
        ConvSpec::new(&[1, 16, 5, 33], 16, &[3, 3])
            .with_groups(8)
            .with_stride(&[1, 1])
            .with_padding(Padding::Symmetric(vec![0, 2])),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let case = make_case(spec, 300 + i as u64);
        let (g, want, s) = reference_of(&case);
        for isa in convkit::arch::available_isas() {
            for depthwise_layout in [DwLayout::Planes, DwLayout::ChannelBlocks] {
                let outs: Vec<Vec<f32>> = [1, 3]
                    .iter()
                    .map(|&t| {
                        let opts = PlanOptions {
                            algo: Some("grouped".into()),
                            isa: Some(isa.name().into()),
                            threads: Some(t),
                            depthwise_layout,
                            ..Default::default()
                        };
                        run_checked(&case, &g, Algo::Grouped, &opts, &want, s).unwrap_or_else(|e| {
                            panic!("grouped case {i}, {depthwise_layout:?}: {e}")
                        })
                    })
                    .collect();
                assert!(
                    same_bits(&outs[1], &outs[0]),
                    "grouped case {i} on {}, {depthwise_layout:?}: three threads differ from one",
                    isa.name()
                );
            }
        }
    }
}

/// Winograd on several threads must give one thread's bits, and the reference's values. An
/// undilated image of many tiles runs as one part of whole tile rows per thread (each with
/// its own blocks); from 4 threads, where the parts would hold less than a block, the blocks
/// of split loops hold threads / 2 times the tiles. 64 channels over 48 x 44 outputs, on a
/// 2 MiB L2: every variant's parts hold a block or more on two threads and F(2,3)'s and
/// F(4,3)'s on three (rows of 2, 4 or 6 split unevenly: 24, 12 and 8 tile rows); on six,
/// F(2,3) runs in parts and F(4,3) and F(6,3) in grown blocks. With a residual in place.
#[test]
fn winograd_on_many_threads_changes_nothing() {
    let spec = ConvSpec::new(&[1, 64, 48, 44], 64, &[3, 3])
        .with_padding(Padding::Symmetric(vec![1, 1]))
        .with_bias(true)
        .with_residual(true)
        .with_activation(Activation::Silu);
    let case = make_case(spec, 78);
    let (g, want, s) = reference_of(&case);
    for isa in convkit::arch::available_isas() {
        for name in ["winograd_f2x3", "winograd_f4x3", "winograd_f6x3"] {
            let al = Algo::parse(name).unwrap();
            let outs: Vec<Vec<f32>> = [1, 2, 3, 6]
                .iter()
                .map(|&t| {
                    let opts = PlanOptions {
                        algo: Some(name.into()),
                        isa: Some(isa.name().into()),
                        threads: Some(t),
                        ..Default::default()
                    };
                    run_checked(&case, &g, al, &opts, &want, s)
                        .unwrap_or_else(|e| panic!("{name}, {t} threads: {e}"))
                })
                .collect();
            for (o, t) in outs[1..].iter().zip([2, 3, 6]) {
                assert!(
                    same_bits(o, &outs[0]),
                    "{name} on {}: {t} threads differ from one",
                    isa.name()
                );
            }
        }
    }
}

/// A batch that divides among the threads runs as one part of whole images per thread: every
/// algorithm that takes the layer, NCHW and NHWC, with a residual, a fused pool or neither,
/// must give one thread's bits (6 images on 2 and 3 threads, 5 on 2 and 3 where the parts
/// are not split) and the reference's.
#[test]
fn batches_in_parts_of_whole_images_change_nothing() {
    let pool = Some(Pool::Max(PoolWindow {
        size: vec![3, 3],
        stride: vec![2, 2],
        padding: vec![(1, 1); 2],
    }));
    let specs = [
        ConvSpec::new(&[6, 16, 14, 13], 20, &[3, 3])
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_bias(true)
            .with_residual(true)
            .with_activation(Activation::Relu),
        ConvSpec::new(&[5, 12, 11, 12], 16, &[3, 3])
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_activation(Activation::Relu6)
            .with_pool(pool),
        ConvSpec::new(&[6, 24, 9, 9], 24, &[1, 1]).with_residual(true),
        ConvSpec::new(&[6, 16, 10, 10], 16, &[3, 3])
            .with_groups(16)
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_bias(true),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let case = make_case(spec, 500 + i as u64);
        // The reference once a case (under qemu and valgrind it costs more than the runs).
        let (g, want, s) = reference_of(&case);
        for isa in convkit::arch::available_isas() {
            for al in algo::accepting(&g) {
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    let outs: Vec<Vec<f32>> = [1, 2, 3]
                        .iter()
                        .map(|&t| {
                            let opts = PlanOptions {
                                algo: Some(al.name().into()),
                                isa: Some(isa.name().into()),
                                threads: Some(t),
                                layout,
                                ..Default::default()
                            };
                            run_checked(&case, &g, al, &opts, &want, s).unwrap()
                        })
                        .collect();
                    for (o, t) in outs[1..].iter().zip([2, 3]) {
                        assert!(
                            same_bits(o, &outs[0]),
                            "{} on {} ({layout:?}): {t} threads differ from one ({})",
                            al.name(),
                            isa.name(),
                            case.spec.to_json()
                        );
                    }
                }
            }
        }
    }
}

/// On NHWC, undilated Winograd and `direct_oc` fill their padded planes from the NHWC rows
/// (one thread: straight into the planes; more: bands of padded rows through a buffer)
/// instead of from an NCHW copy of the image. The planes hold the same values either way, so
/// the NHWC run must give the NCHW run's bits, and the reference's values: every Winograd
/// variant and `direct_oc` (which stores NHWC tiles and pools channels-last), every tier,
/// 1 and 3 threads, symmetric, "valid" and asymmetric padding (planes cut short of the input's
/// last columns), stride 2 (`direct_oc`'s planes stay unsplit), a residual, pools, batches of
/// 2 and 3 (in image parts), 2-D and 1-D, on images large enough to take the NHWC fill.
#[test]
fn padded_planes_fill_from_nhwc_rows() {
    let pool = |size: usize, pad: usize| {
        Some(Pool::Max(PoolWindow {
            size: vec![size, size],
            stride: vec![2, 2],
            padding: vec![(pad, pad); 2],
        }))
    };
    // Images of 64K floats or more (smaller ones take the NCHW copy).
    let specs = [
        ConvSpec::new(&[2, 16, 66, 64], 8, &[3, 3])
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_bias(true)
            .with_residual(true)
            .with_activation(Activation::Relu),
        ConvSpec::new(&[1, 16, 65, 66], 8, &[3, 3]),
        ConvSpec::new(&[1, 16, 64, 67], 8, &[3, 3])
            .with_padding(Padding::Explicit(vec![(0, 2), (2, 1)]))
            .with_pool(pool(2, 0)),
        ConvSpec::new(&[3, 64, 1030], 8, &[3])
            .with_padding(Padding::Symmetric(vec![1]))
            .with_activation(Activation::Silu),
        ConvSpec::new(&[1, 3, 150, 151], 16, &[7, 7])
            .with_stride(&[2, 2])
            .with_padding(Padding::Symmetric(vec![3, 3]))
            .with_bias(true)
            .with_activation(Activation::Relu)
            .with_pool(pool(3, 1)),
        ConvSpec::new(&[2, 17, 64, 62], 8, &[5, 5])
            .with_padding(Padding::Explicit(vec![(2, 0), (1, 3)]))
            .with_residual(true),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let case = make_case(spec, 900 + i as u64);
        let (g, want, s) = reference_of(&case);
        for isa in convkit::arch::available_isas() {
            for name in [
                "winograd_f2x3",
                "winograd_f4x3",
                "winograd_f6x3",
                "direct_oc",
            ] {
                let al = Algo::parse(name).unwrap();
                if !al.accepts(&g) {
                    continue;
                }
                // One thread fills straight into the planes, three in uneven bands.
                for t in [1, 3] {
                    let run = |layout| {
                        let opts = PlanOptions {
                            algo: Some(name.into()),
                            isa: Some(isa.name().into()),
                            threads: Some(t),
                            layout,
                            ..Default::default()
                        };
                        run_checked(&case, &g, al, &opts, &want, s)
                            .unwrap_or_else(|e| panic!("{name}, {t} threads, {layout:?}: {e}"))
                    };
                    assert!(
                        same_bits(&run(Layout::Nhwc), &run(Layout::Nchw)),
                        "{name} on {}, {t} threads: NHWC differs from NCHW ({})",
                        isa.name(),
                        case.spec.to_json()
                    );
                }
            }
        }
    }
}

/// Every activation through every Winograd variant, 2-D and 1-D, undilated and dilated
/// (2 x 3 in 2-D, 2 in 1-D: phase planes of unequal sizes), with bias and residual, on a
/// size that leaves partial tiles on both edges, and a pool band of each height.
#[test]
fn winograd_fuses_every_epilogue() {
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::Relu6,
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::Clamp {
            min: -0.3,
            max: 0.4,
        },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
    ];
    for (i, act) in acts.into_iter().enumerate() {
        for (input, dilation) in [
            (vec![2, 5, 13, 11], vec![1, 1]),
            (vec![2, 5, 23], vec![1]),
            (vec![2, 5, 17, 19], vec![2, 3]),
            (vec![2, 5, 29], vec![2]),
        ] {
            // Dilated, a clamp and a band activation suffice (the phases change where the
            // rows go, not how the epilogue works): every activation doubled this test's
            // time, a minute and a half of CI under valgrind.
            if dilation.iter().any(|&d| d > 1)
                && !matches!(act, Activation::Relu6 | Activation::Gelu)
            {
                continue;
            }
            let rank = input.len() - 2;
            let spec = ConvSpec::new(&input, 7, &vec![3; rank])
                .with_dilation(&dilation)
                .with_padding(Padding::Same)
                .with_residual(true)
                .with_activation(act);
            let pooled = spec.clone().with_pool(Some(Pool::Max(PoolWindow {
                size: vec![2; rank],
                stride: vec![2; rank],
                padding: vec![(0, 0); rank],
            })));
            for spec in [spec, pooled] {
                let case = make_case(spec, i as u64);
                let g = Geometry::new(&case.spec).unwrap();
                for isa in convkit::arch::available_isas() {
                    for name in winograd_names(&g) {
                        let al = Algo::parse(name).unwrap();
                        for band in [None, Some(1), Some(3)] {
                            check_banded(&case, al, isa, Some(2), Layout::Nchw, band)
                                .unwrap_or_else(|e| panic!("{e}"));
                        }
                    }
                }
            }
        }
    }
}

/// Winograd is refused, with the reason, where it does not apply: `winograd_*` outside
/// kernel 3, stride 1, dilation 1 (SPEC), `dilated_*` outside kernel 3, stride 1, dilation
/// above 1.
#[test]
fn winograd_refuses_what_it_cannot_run() {
    let dilated = ["dilated_f2x3", "dilated_f4x3", "dilated_f6x3"];
    let undilated = ["winograd_f2x3", "winograd_f4x3", "winograd_f6x3"];
    for (spec, why, names) in [
        (ConvSpec::new(&[1, 4, 9, 9], 4, &[5, 5]), "3x3", undilated),
        (
            ConvSpec::new(&[1, 4, 9, 9], 4, &[3, 3]).with_stride(&[2, 2]),
            "stride",
            undilated,
        ),
        (
            ConvSpec::new(&[1, 4, 9, 9], 4, &[3, 3]).with_dilation(&[2, 2]),
            "dilation",
            undilated,
        ),
        (
            ConvSpec::new(&[1, 4, 20], 4, &[5]),
            "kernel of 3",
            undilated,
        ),
        (
            ConvSpec::new(&[1, 4, 9, 9], 4, &[3, 3]),
            "dilation above 1",
            dilated,
        ),
        (
            ConvSpec::new(&[1, 4, 13, 13], 4, &[3, 3])
                .with_dilation(&[2, 2])
                .with_stride(&[2, 2]),
            "stride",
            dilated,
        ),
        (
            ConvSpec::new(&[1, 4, 20, 20], 4, &[5, 5]).with_dilation(&[2, 2]),
            "3x3",
            dilated,
        ),
    ] {
        let g = Geometry::new(&spec).unwrap();
        let w = vec![0.0; g.weight_len()];
        let b = vec![0.0; g.out_channels];
        for name in names {
            let opts = PlanOptions {
                algo: Some(name.into()),
                ..Default::default()
            };
            let err = Plan::new(&spec, &w, Some(&b), &opts)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert!(!algo::accepting(&g).iter().any(|a| a.name() == name));
        }
    }
}

/// im2col packs from a padded copy of the image up to 4 MiB of copy, and straight from the
/// image above that (and gemm1x1 always): the second path on a stride-1 image of 4.4 MB.
#[test]
fn im2col_packs_large_images_in_place() {
    let spec = ConvSpec::new(&[1, 64, 131, 129], 5, &[3, 3])
        .with_padding(Padding::Symmetric(vec![1, 2]))
        .with_dilation(&[1, 2])
        .with_activation(Activation::Relu);
    let case = make_case(spec, 77);
    for isa in [Isa::Portable, convkit::arch::best_isa()] {
        check(&case, Algo::Im2col, isa, None, Layout::Nchw).unwrap();
    }
}
