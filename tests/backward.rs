//! The backward pass: every gradient against the f64 reference's backward (itself checked
//! against central finite differences), on every tier, bitwise identical across thread
//! counts; the training forward against inference; the transposed convolution against its
//! definition.

use convkit::backward::{conv_transpose, ConvTransposeSpec, TrainPlan};
use convkit::init::Rng;
use convkit::reference::{self, Operands};
use convkit::{Activation, ConvSpec, Geometry, Padding, Plan, PlanOptions, Pool, PoolWindow};
use proptest::prelude::*;

/// Values on a grid of 1/8 in [-1, 1]: products and sums of them are exact in f32 for the
/// sizes here, so the f32 pre-activations equal the f64 ones and relu kinks and max-pool
/// ties fall the same way in both.
fn dyadic(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u64() % 17) as f32 - 8.0) / 8.0)
        .collect()
}

fn cases() -> u32 {
    std::env::var("CONVKIT_TEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

fn activation(i: usize) -> Activation {
    [
        Activation::None,
        Activation::Relu,
        Activation::Relu6,
        Activation::LeakyRelu { alpha: 0.125 },
        Activation::Clamp {
            min: -0.5,
            max: 0.75,
        },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
    ][i % 10]
}

fn pool(i: usize, rank: usize) -> Option<Pool> {
    match i % 6 {
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
        3 => Some(Pool::Avg {
            window: PoolWindow {
                size: vec![2; rank],
                stride: vec![1; rank],
                padding: vec![(1, 0); rank],
            },
            count_include_pad: true,
        }),
        4 => Some(Pool::GlobalMax),
        5 => Some(Pool::GlobalAvg),
        _ => None,
    }
}

fn spec_strategy() -> impl Strategy<Value = ConvSpec> {
    (
        (1usize..3, 1usize..7, 1usize..9, any::<bool>(), 0usize..4),
        (1usize..10, 1usize..10, 1usize..4, 1usize..4),
        (1usize..3, 1usize..3, 0usize..4),
        (any::<bool>(), any::<bool>(), 0usize..10, 0usize..6),
    )
        .prop_map(
            |(
                (n, cpg, opg, one_d, gsel),
                (h, w, kh, kw),
                (s, d, pad_kind),
                (bias, residual, act, pool_sel),
            )| {
                // Groups 1, 2, 3, or depthwise (one input channel a group).
                // (C/g * Cout/g >= 16 takes the GEMM path, below it the loops.)
                let (groups, cpg) = match gsel {
                    1 => (2, cpg),
                    2 => (3, cpg),
                    3 => (3, 1),
                    _ => (1, cpg),
                };
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
                let mut spec = ConvSpec::new(&input, co, &kernel)
                    .with_stride(&vec![s; rank])
                    .with_dilation(&vec![d; rank])
                    .with_padding(padding)
                    .with_groups(groups)
                    .with_bias(bias)
                    .with_residual(residual)
                    .with_activation(activation(act));
                let trial = spec.clone().with_pool(pool(pool_sel, rank));
                if Geometry::new(&trial).is_ok() {
                    spec = trial;
                }
                spec
            },
        )
        .prop_filter("valid geometry", |s| Geometry::new(s).is_ok())
}

struct Case {
    spec: ConvSpec,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    r: Option<Vec<f32>>,
    dy: Vec<f32>,
}

fn make_case(spec: ConvSpec, seed: u64) -> Case {
    let g = Geometry::new(&spec).unwrap();
    let mut rng = Rng::new(seed);
    Case {
        x: dyadic(&mut rng, g.input_len()),
        w: dyadic(&mut rng, g.weight_len()),
        b: spec.bias.then(|| dyadic(&mut rng, g.out_channels)),
        r: spec.residual.then(|| dyadic(&mut rng, g.conv_output_len())),
        dy: dyadic(&mut rng, g.output_len()),
        spec,
    }
}

/// Worst |got - want| / magnitude, with its index.
fn worst(got: &[f32], want: &[f64], magnitude: f64) -> (f64, usize) {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .enumerate()
        .map(|(i, (&a, &b))| ((a as f64 - b).abs() / magnitude.max(1e-30), i))
        .fold((0.0, 0), |m, e| if e.0 > m.0 { e } else { m })
}

/// Runs the training forward and backward of `case` and checks every gradient against
/// `backward_f64` (tolerance `tol` x the gradient's magnitude); returns the gradients.
fn check_case(
    case: &Case,
    algo: &str,
    isa: convkit::Isa,
    threads: usize,
    tol: f64,
) -> Result<convkit::backward::Gradients, String> {
    let g = Geometry::new(&case.spec).unwrap();
    let opts = PlanOptions {
        algo: Some(algo.into()),
        isa: Some(isa.name().into()),
        threads: Some(threads),
        ..Default::default()
    };
    let plan =
        TrainPlan::new(&case.spec, &case.w, case.b.as_deref(), &opts).map_err(|e| e.to_string())?;
    let mut y = vec![0f32; g.output_len()];
    let saved = plan
        .forward(&case.x, case.r.as_deref(), &mut y)
        .map_err(|e| e.to_string())?;
    let grads = plan
        .backward(&case.x, &saved, &case.dy, true)
        .map_err(|e| e.to_string())?;
    let ops = Operands {
        input: &case.x,
        weight: &case.w,
        bias: case.b.as_deref(),
        residual: case.r.as_deref(),
    };
    let want = reference::backward_f64(&g, &ops, &case.dy).unwrap();
    let ctx = format!(
        "{algo} on {}, {} threads, spec {}",
        isa.name(),
        threads,
        case.spec.to_json()
    );
    let (e, i) = worst(
        grads.input.as_ref().unwrap(),
        &want.input,
        want.input_magnitude,
    );
    if e > tol {
        return Err(format!(
            "dx[{i}] error {e:.3e} x S: {} vs {} ({ctx})",
            grads.input.as_ref().unwrap()[i],
            want.input[i]
        ));
    }
    let (e, i) = worst(&grads.weight, &want.weight, want.weight_magnitude);
    if e > tol {
        return Err(format!(
            "dw[{i}] error {e:.3e} x S: {} vs {} ({ctx})",
            grads.weight[i], want.weight[i]
        ));
    }
    if let (Some(got), Some(want_b)) = (&grads.bias, &want.bias) {
        let (e, i) = worst(got, want_b, want.bias_magnitude);
        if e > tol {
            return Err(format!("db[{i}] error {e:.3e} x S ({ctx})"));
        }
    }
    if let (Some(got), Some(want_r)) = (&grads.residual, &want.residual) {
        let mag = want_r.iter().fold(0f64, |m, v| m.max(v.abs()));
        let (e, i) = worst(got, want_r, mag.max(1.0));
        if e > tol {
            return Err(format!("dresidual[{i}] error {e:.3e} ({ctx})"));
        }
    }
    Ok(grads)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn gradients_match_the_f64_reference_on_every_tier(spec in spec_strategy(), seed in 0u64..1000) {
        let case = make_case(spec, seed);
        for isa in convkit::arch::available_isas() {
            let one = check_case(&case, "direct", isa, 1, 1e-4);
            prop_assert!(one.is_ok(), "{}", one.unwrap_err());
            let two = check_case(&case, "direct", isa, 2, 1e-4).unwrap();
            let one = one.unwrap();
            prop_assert!(one.input == two.input && one.weight == two.weight && one.bias == two.bias,
                "gradients differ between 1 and 2 threads on {}", isa.name());
        }
    }
}

/// Layers the Winograd weight gradient takes, generated: 1-D or 2-D, kernel 3, dilation 1-3
/// per dimension, any padding, groups, batches of 1-3, sizes down to a single output.
fn winograd_weight_spec() -> impl Strategy<Value = ConvSpec> {
    (
        (1usize..4, 1usize..6, 1usize..6, 1usize..3, any::<bool>()),
        (1usize..14, 1usize..14, 1usize..4, 1usize..4, 0usize..4),
    )
        .prop_map(|((n, cpg, opg, groups, one_d), (h, w, dh, dw, pad_kind))| {
            let (c, co) = (cpg * groups, opg * groups);
            let (input, kernel, dilation, rank) = if one_d {
                (vec![n, c, w + 2 * dw], vec![3], vec![dw], 1)
            } else {
                (
                    vec![n, c, h + 2 * dh, w + 2 * dw],
                    vec![3, 3],
                    vec![dh, dw],
                    2,
                )
            };
            let padding = match pad_kind {
                0 => Padding::Valid,
                1 => Padding::Same,
                2 => Padding::Symmetric(vec![1; rank]),
                _ => Padding::Explicit(vec![(0, 3); rank]),
            };
            ConvSpec::new(&input, co, &kernel)
                .with_dilation(&dilation)
                .with_padding(padding)
                .with_groups(groups)
                .with_bias(false)
        })
        .prop_filter("valid geometry", |s| Geometry::new(s).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    /// The Winograd weight gradient of every variant, with automatic and small blocks (8 or
    /// 16 tiles: blocks ending inside images and phases), against the f64 reference on
    /// every tier.
    #[test]
    fn winograd_weight_gradient_over_generated_layers(
        spec in winograd_weight_spec(),
        seed in 0u64..1000,
        variant in 0usize..3,
        block in prop::sample::select(vec![None, Some(8usize), Some(16)]),
    ) {
        use convkit::algo::WinogradVariant as V;
        let g = Geometry::new(&spec).unwrap();
        let v = [V::F2, V::F4, V::F6][variant];
        let (x, dy, want) = weight_gradient_case(&g, &mut Rng::new(seed));
        for isa in convkit::arch::available_isas() {
            let kernels = isa.kernels().unwrap();
            let mut dw = vec![f32::NAN; g.weight_len()];
            convkit::backward::backward_weights_winograd_blocks(&g, kernels, v, &x, &dy, &mut dw, block)
                .unwrap();
            let (e, i) = worst(&dw, &want.weight, want.weight_magnitude);
            prop_assert!(e <= 1e-3, "dw[{}] error {:.3e} x S, {:?} on {} ({})", i, e, v, isa.name(), spec.to_json());
        }
    }
}

/// Every forward algorithm under the training plan (Winograd included), with a smooth
/// activation: the forward's rounding moves the gradients by at most its tolerance.
#[test]
fn gradients_through_every_forward_algorithm() {
    let specs = [
        ConvSpec::new(&[2, 16, 11, 9], 16, &[3, 3])
            .with_padding(Padding::Same)
            .with_activation(Activation::Tanh)
            .with_pool(Some(Pool::GlobalAvg)),
        ConvSpec::new(&[1, 8, 20], 12, &[3])
            .with_padding(Padding::Symmetric(vec![1]))
            .with_residual(true)
            .with_activation(Activation::Silu),
        ConvSpec::new(&[1, 6, 7, 7], 6, &[3, 3])
            .with_groups(6)
            .with_stride(&[2, 2])
            .with_activation(Activation::Sigmoid),
        ConvSpec::new(&[1, 32, 6, 6], 24, &[1, 1]).with_activation(Activation::Gelu),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        let case = make_case(spec, i as u64);
        let g = Geometry::new(&case.spec).unwrap();
        for isa in convkit::arch::available_isas() {
            for al in convkit::algo::accepting(&g) {
                let tol = if al.name().starts_with("winograd") {
                    1e-3
                } else {
                    1e-4
                };
                check_case(&case, al.name(), isa, 2, tol).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// The training forward writes what inference writes.
#[test]
fn training_forward_matches_inference() {
    for (i, spec) in [
        ConvSpec::new(&[2, 3, 9, 8], 5, &[3, 3])
            .with_padding(Padding::Same)
            .with_activation(Activation::Relu)
            .with_pool(pool(1, 2)),
        ConvSpec::new(&[1, 4, 17], 6, &[5])
            .with_stride(&[2])
            .with_residual(true)
            .with_activation(Activation::Gelu)
            .with_pool(pool(2, 1)),
        ConvSpec::new(&[1, 4, 6, 6], 4, &[3, 3]).with_pool(Some(Pool::GlobalMax)),
    ]
    .into_iter()
    .enumerate()
    {
        let case = make_case(spec, 10 + i as u64);
        let g = Geometry::new(&case.spec).unwrap();
        let opts = PlanOptions {
            algo: Some("direct".into()),
            ..Default::default()
        };
        let train = TrainPlan::new(&case.spec, &case.w, case.b.as_deref(), &opts).unwrap();
        let plan = Plan::new(&case.spec, &case.w, case.b.as_deref(), &opts).unwrap();
        let (mut a, mut b) = (vec![0f32; g.output_len()], vec![0f32; g.output_len()]);
        train.forward(&case.x, case.r.as_deref(), &mut a).unwrap();
        plan.run(&case.x, case.r.as_deref(), &mut b).unwrap();
        for (k, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                "case {i}, element {k}: {p} vs {q}"
            );
        }
    }
}

/// The reference backward against central differences of `L = sum(y * r)` in f64, on
/// smooth layers (no kinks): inputs on a grid of 1/64 and a step of 2^-10 keep `x +- h`
/// exact in f32.
#[test]
fn reference_backward_matches_finite_differences() {
    let specs = [
        ConvSpec::new(&[1, 2, 5, 6], 3, &[3, 2])
            .with_padding(Padding::Explicit(vec![(1, 0), (0, 1)]))
            .with_activation(Activation::Tanh)
            .with_pool(pool(2, 2)),
        ConvSpec::new(&[2, 4, 9], 4, &[3])
            .with_groups(2)
            .with_stride(&[2])
            .with_dilation(&[2])
            .with_padding(Padding::Same)
            .with_activation(Activation::Gelu)
            .with_residual(true),
        ConvSpec::new(&[1, 3, 4, 4], 3, &[3, 3])
            .with_groups(3)
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_activation(Activation::Silu)
            .with_pool(Some(Pool::GlobalAvg)),
        ConvSpec::new(&[1, 2, 4, 5], 2, &[2, 2]).with_activation(Activation::Sigmoid),
    ];
    let h = 1.0f32 / 1024.0;
    for (si, spec) in specs.into_iter().enumerate() {
        let g = Geometry::new(&spec).unwrap();
        let mut rng = Rng::new(si as u64);
        let grid = |rng: &mut Rng, n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| ((rng.next_u64() % 129) as f32 - 64.0) / 64.0)
                .collect()
        };
        let x = grid(&mut rng, g.input_len());
        let w = grid(&mut rng, g.weight_len());
        let b = spec.bias.then(|| grid(&mut rng, g.out_channels));
        let r = spec.residual.then(|| grid(&mut rng, g.conv_output_len()));
        let dy = grid(&mut rng, g.output_len());
        let loss = |x: &[f32], w: &[f32], b: Option<&[f32]>| -> f64 {
            let ops = Operands {
                input: x,
                weight: w,
                bias: b,
                residual: r.as_deref(),
            };
            reference::forward_f64(&g, &ops)
                .unwrap()
                .iter()
                .zip(&dy)
                .map(|(y, d)| y * *d as f64)
                .sum()
        };
        let ops = Operands {
            input: &x,
            weight: &w,
            bias: b.as_deref(),
            residual: r.as_deref(),
        };
        let grads = reference::backward_f64(&g, &ops, &dy).unwrap();
        let fd = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
        for i in (0..x.len()).step_by(3) {
            let num = fd(&|d| {
                let mut xp = x.clone();
                xp[i] += d;
                loss(&xp, &w, b.as_deref())
            });
            assert!(
                (num - grads.input[i]).abs() <= 1e-5 * (1.0 + num.abs()),
                "spec {si}: dx[{i}] analytic {} vs numeric {num}",
                grads.input[i]
            );
        }
        for i in 0..w.len() {
            let num = fd(&|d| {
                let mut wp = w.clone();
                wp[i] += d;
                loss(&x, &wp, b.as_deref())
            });
            assert!(
                (num - grads.weight[i]).abs() <= 1e-5 * (1.0 + num.abs()),
                "spec {si}: dw[{i}] analytic {} vs numeric {num}",
                grads.weight[i]
            );
        }
        if let Some(b) = &b {
            for i in 0..b.len() {
                let num = fd(&|d| {
                    let mut bp = b.clone();
                    bp[i] += d;
                    loss(&x, &w, Some(&bp))
                });
                let got = grads.bias.as_ref().unwrap()[i];
                assert!(
                    (num - got).abs() <= 1e-5 * (1.0 + num.abs()),
                    "spec {si}: db[{i}] {got} vs {num}"
                );
            }
        }
    }
}

/// A max pool routes the gradient to the first maximum of its window (scan order).
#[test]
fn max_pool_gradient_goes_to_the_first_maximum() {
    // Zero weights and a bias of 1: every conv output is 1, every window a tie.
    let spec = ConvSpec::new(&[1, 1, 4, 4], 1, &[1, 1]).with_pool(pool(1, 2));
    let g = Geometry::new(&spec).unwrap();
    let opts = PlanOptions {
        algo: Some("direct".into()),
        ..Default::default()
    };
    let plan = TrainPlan::new(&spec, &[0.0], Some(&[1.0]), &opts).unwrap();
    let x = vec![0.5f32; 16];
    let mut y = vec![0f32; g.output_len()];
    let saved = plan.forward(&x, None, &mut y).unwrap();
    assert_eq!(y, vec![1.0; 4]);
    let grads = plan
        .backward(&x, &saved, &[1.0, 2.0, 3.0, 4.0], true)
        .unwrap();
    // The bias gradient is the sum; the weight gradient sums x at the picked cells.
    assert_eq!(grads.bias.unwrap(), vec![10.0]);
    assert_eq!(grads.weight, vec![5.0]);
    assert_eq!(saved.argmax, vec![0, 2, 8, 10]);
}

/// The transposed convolution against its definition (a scatter, in f64).
#[test]
fn conv_transpose_matches_its_definition() {
    let specs = [
        {
            let mut s = ConvTransposeSpec::new(&[2, 4, 5, 6], 6, &[3, 3]);
            s.stride = vec![2, 2];
            s.padding = vec![(1, 1), (0, 1)];
            s.output_padding = vec![1, 0];
            s.bias = true;
            s
        },
        {
            let mut s = ConvTransposeSpec::new(&[1, 6, 7], 4, &[4]);
            s.stride = vec![3];
            s.dilation = vec![2];
            s.groups = 2;
            s
        },
        {
            let mut s = ConvTransposeSpec::new(&[1, 32, 4, 4], 16, &[2, 2]);
            s.stride = vec![2, 2];
            s.bias = true;
            s
        },
        ConvTransposeSpec::new(&[1, 3, 3, 3], 3, &[1, 1]),
    ];
    for (si, t) in specs.into_iter().enumerate() {
        let out_shape = t.output_shape().unwrap();
        let rank = t.kernel.len();
        let (n, cin, cout) = (t.input[0], t.input[1], t.out_channels);
        let (ih, iw) = if rank == 2 {
            (t.input[2], t.input[3])
        } else {
            (1, t.input[2])
        };
        let (oh, ow) = if rank == 2 {
            (out_shape[2], out_shape[3])
        } else {
            (1, out_shape[2])
        };
        let (kh, kw) = if rank == 2 {
            (t.kernel[0], t.kernel[1])
        } else {
            (1, t.kernel[0])
        };
        let at = |v: &Vec<usize>, d: usize| {
            if rank == 2 {
                v[d]
            } else if d == 0 {
                1
            } else {
                v[0]
            }
        };
        let atp = |d: usize| {
            if rank == 2 {
                t.padding[d].0
            } else if d == 0 {
                0
            } else {
                t.padding[0].0
            }
        };
        let mut rng = Rng::new(si as u64);
        let x: Vec<f32> = (0..n * cin * ih * iw)
            .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
            .collect();
        let opg = cout / t.groups;
        let w: Vec<f32> = (0..cin * opg * kh * kw)
            .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
            .collect();
        let b: Option<Vec<f32>> = t.bias.then(|| (0..cout).map(|i| i as f32 * 0.25).collect());
        let mut want = vec![0f64; n * cout * oh * ow];
        let ipg = cin / t.groups;
        for nn in 0..n {
            for ci in 0..cin {
                let grp = ci / ipg;
                for y in 0..ih {
                    for xx in 0..iw {
                        let v = x[((nn * cin + ci) * ih + y) * iw + xx] as f64;
                        for o in 0..opg {
                            let co = grp * opg + o;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let oy = (y * at(&t.stride, 0) + ky * at(&t.dilation, 0))
                                        as isize
                                        - atp(0) as isize;
                                    let ox = (xx * at(&t.stride, 1) + kx * at(&t.dilation, 1))
                                        as isize
                                        - atp(1) as isize;
                                    if oy < 0 || ox < 0 || oy as usize >= oh || ox as usize >= ow {
                                        continue;
                                    }
                                    want[((nn * cout + co) * oh + oy as usize) * ow
                                        + ox as usize] +=
                                        v * w[((ci * opg + o) * kh + ky) * kw + kx] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = &b {
            for (i, v) in want.iter_mut().enumerate() {
                *v += b[(i / (oh * ow)) % cout] as f64;
            }
        }
        for isa in convkit::arch::available_isas() {
            let got = conv_transpose(&t, &x, &w, b.as_deref(), Some(isa.name())).unwrap();
            assert_eq!(got.len(), want.len());
            for (k, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()) * (kh * kw * cin) as f64,
                    "spec {si} on {}: element {k} {g} vs {r}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn conv_transpose_and_training_reject_bad_input() {
    let mut t = ConvTransposeSpec::new(&[1, 4, 5, 5], 4, &[3, 3]);
    t.stride = vec![2, 2];
    t.output_padding = vec![2, 0];
    assert!(t
        .output_shape()
        .unwrap_err()
        .to_string()
        .contains("output_padding"));
    let mut t = ConvTransposeSpec::new(&[1, 4, 2, 2], 4, &[3, 3]);
    t.padding = vec![(3, 3), (0, 0)];
    assert!(t.output_shape().is_err());
    let t = ConvTransposeSpec::new(&[1, 4, 5, 5], 4, &[3, 3]);
    let err = conv_transpose(&t, &[0.0; 3], &[0.0; 144], None, None).unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
    let spec = ConvSpec::new(&[1, 2, 4, 4], 2, &[3, 3]);
    let g = Geometry::new(&spec).unwrap();
    let w = vec![0.0; g.weight_len()];
    let plan = TrainPlan::new(&spec, &w, Some(&[0.0, 0.0]), &PlanOptions::default()).unwrap();
    let x = vec![0.0; g.input_len()];
    let mut y = vec![0.0; g.output_len()];
    let saved = plan.forward(&x, None, &mut y).unwrap();
    assert!(plan.backward(&x, &saved, &[0.0; 3], true).is_err());
    // The gradient functions check every length; a forged max-pool pick is refused.
    let kernels = convkit::arch::best_isa().kernels().unwrap();
    assert!(convkit::backward::DataWeights::new(&g, kernels, &w[1..]).is_err());
    let data = convkit::backward::DataWeights::new(&g, kernels, &w).unwrap();
    let mut dx = vec![0.0; g.input_len()];
    let err = convkit::backward::backward_data_into(&data, &[0.0; 5], &mut dx).unwrap_err();
    assert!(err.to_string().contains("dz"), "{err}");
    let mut dw = vec![0.0; g.weight_len() - 1];
    let dz = vec![0.0; g.conv_output_len()];
    assert!(convkit::backward::backward_weights_into(&g, kernels, &x, &dz, &mut dw).is_err());
    let pooled = spec.clone().with_pool(Some(Pool::GlobalMax));
    let pg = Geometry::new(&pooled).unwrap();
    let pplan = TrainPlan::new(&pooled, &w, Some(&[0.0, 0.0]), &PlanOptions::default()).unwrap();
    let mut py = vec![0.0; pg.output_len()];
    let mut forged = pplan.forward(&x, None, &mut py).unwrap();
    forged.argmax[0] = 1_000;
    let err = pplan
        .backward(&x, &forged, &vec![1.0; py.len()], true)
        .unwrap_err();
    assert!(err.to_string().contains("argmax"), "{err}");
    let nhwc = PlanOptions {
        layout: convkit::Layout::Nhwc,
        ..Default::default()
    };
    assert!(TrainPlan::new(&spec, &w, Some(&[0.0, 0.0]), &nhwc).is_err());
}

/// Uniform input and output gradient for `g` (no activation, bias or pool: `dz = dy`) and
/// the f64 reference's gradients.
fn weight_gradient_case(
    g: &Geometry,
    rng: &mut Rng,
) -> (Vec<f32>, Vec<f32>, reference::Gradients64) {
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect() };
    let (x, w, dy) = (
        uniform(g.input_len()),
        uniform(g.weight_len()),
        uniform(g.output_len()),
    );
    let ops = Operands {
        input: &x,
        weight: &w,
        bias: None,
        residual: None,
    };
    let want = reference::backward_f64(g, &ops, &dy).unwrap();
    (x, dy, want)
}

/// The Winograd weight gradient against the f64 reference on every tier and variant, over
/// padding kinds, groups, batches whose tiles span several blocks (a block can end inside
/// an image and hold the tiles of several), edge tiles past the output, 1-D layers, dilated
/// layers (phase planes of unequal sizes, 2-D and 1-D), and 1, 2 and 3 threads (bitwise
/// identical).
#[test]
fn winograd_weight_gradient_matches_the_f64_reference() {
    use convkit::algo::WinogradVariant as V;
    use convkit::backward::{backward_weights_winograd_blocks, winograd_weights_check};
    // (batch, C, Cout, groups, H, W, padding)
    let shapes: [(usize, usize, usize, usize, usize, usize, Padding); 7] = [
        (1, 3, 5, 1, 9, 11, Padding::Symmetric(vec![1, 1])),
        (2, 4, 6, 2, 7, 7, Padding::Valid),
        (3, 2, 3, 1, 22, 19, Padding::Same),
        (1, 1, 1, 1, 3, 3, Padding::Valid),
        (2, 8, 8, 1, 12, 30, Padding::Explicit(vec![(0, 2), (2, 1)])),
        (1, 6, 9, 3, 5, 17, Padding::Symmetric(vec![2, 0])),
        (4, 5, 7, 1, 16, 16, Padding::Symmetric(vec![1, 1])),
    ];
    let mut specs: Vec<ConvSpec> = shapes
        .into_iter()
        .map(|(n, c, co, groups, h, w, pad)| {
            ConvSpec::new(&[n, c, h, w], co, &[3, 3])
                .with_padding(pad)
                .with_groups(groups)
        })
        .collect();
    specs.extend([
        // Dilated: 2x2 phases (the last row and column phases one shorter), 3x1, 1x2.
        ConvSpec::new(&[2, 3, 13, 11], 4, &[3, 3])
            .with_dilation(&[2, 2])
            .with_padding(Padding::Same),
        ConvSpec::new(&[1, 4, 20, 9], 6, &[3, 3])
            .with_dilation(&[3, 1])
            .with_padding(Padding::Symmetric(vec![1, 0]))
            .with_groups(2),
        ConvSpec::new(&[1, 2, 8, 15], 3, &[3, 3]).with_dilation(&[1, 2]),
        // One output row for two row phases: the second phase plane has no rows.
        ConvSpec::new(&[1, 8, 5, 9], 8, &[3, 3]).with_dilation(&[2, 2]),
        // 1-D: padded, grouped, a batch past one block, dilated.
        ConvSpec::new(&[2, 5, 37], 7, &[3]).with_padding(Padding::Same),
        ConvSpec::new(&[1, 6, 10], 4, &[3]).with_groups(2),
        ConvSpec::new(&[40, 3, 30], 5, &[3]).with_padding(Padding::Symmetric(vec![1])),
        ConvSpec::new(&[2, 4, 29], 3, &[3])
            .with_dilation(&[3])
            .with_padding(Padding::Same),
        ConvSpec::new(&[2, 8, 5], 8, &[3]).with_dilation(&[2]),
    ]);
    let mut rng = Rng::new(11);
    for spec in specs {
        let spec = spec.with_bias(false);
        let g = Geometry::new(&spec).unwrap();
        assert!(winograd_weights_check(&g).is_ok());
        let (x, dy, want) = weight_gradient_case(&g, &mut rng);
        for isa in convkit::arch::available_isas() {
            let kernels = isa.kernels().unwrap();
            for v in [V::F2, V::F4, V::F6] {
                // Per block size (automatic: the whole batch in one block on these small
                // layers; 8 tiles: blocks ending inside images and phase planes), the
                // result of the first thread count, which the others must match bitwise.
                let mut first: [Option<Vec<f32>>; 2] = [None, None];
                for (threads, block) in
                    [(1, None), (2, None), (3, None), (1, Some(8)), (3, Some(8))]
                {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut dw = vec![f32::NAN; g.weight_len()];
                    pool.install(|| {
                        backward_weights_winograd_blocks(&g, kernels, v, &x, &dy, &mut dw, block)
                    })
                    .unwrap();
                    let (e, i) = worst(&dw, &want.weight, want.weight_magnitude);
                    let ctx = format!(
                        "{v:?} on {}, {threads} threads, blocks {block:?}, {}",
                        isa.name(),
                        spec.to_json()
                    );
                    if threads == 1 {
                        eprintln!("{ctx}: worst dw error {e:.2e} x S");
                    }
                    // SPEC's Winograd tolerance.
                    assert!(
                        e <= 1e-3,
                        "dw[{i}] error {e:.3e} x S: {} vs {} ({ctx})",
                        dw[i],
                        want.weight[i]
                    );
                    match &first[usize::from(block.is_some())] {
                        None => first[usize::from(block.is_some())] = Some(dw),
                        Some(f) => assert!(
                            f.iter().zip(&dw).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "thread counts disagree ({ctx})"
                        ),
                    }
                }
            }
        }
    }
}

/// The automatic choice takes F(4,3) on layers of many tiles, the GEMM elsewhere, and its
/// result matches the reference either way.
#[test]
fn weight_gradient_choice_follows_the_tile_count() {
    use convkit::algo::WinogradVariant as V;
    use convkit::backward::{backward_weights_into, weights_by_winograd};
    let geom = |n: usize, c: usize, hw: usize, k: usize| {
        Geometry::new(
            &ConvSpec::new(&[n, c, hw, hw], c, &[k, k])
                .with_padding(Padding::Same)
                .with_bias(false),
        )
        .unwrap()
    };
    assert_eq!(weights_by_winograd(&geom(1, 64, 224, 3)), Some(V::F4));
    assert_eq!(weights_by_winograd(&geom(8, 128, 28, 3)), Some(V::F4));
    assert_eq!(weights_by_winograd(&geom(1, 128, 28, 3)), Some(V::F4));
    assert_eq!(weights_by_winograd(&geom(1, 512, 28, 3)), None);
    assert_eq!(weights_by_winograd(&geom(1, 256, 14, 3)), None);
    assert_eq!(weights_by_winograd(&geom(1, 8, 16, 3)), None);
    assert_eq!(weights_by_winograd(&geom(1, 16, 224, 5)), None);
    // Dilated: as many tiles over the phases as channels (deeplab.dilated3x3: 4 x 25 F(4,3)
    // tiles for 256 channels, then a batch of 4 of it).
    let dilated = |n: usize| {
        Geometry::new(
            &ConvSpec::new(&[n, 256, 33, 33], 256, &[3, 3])
                .with_dilation(&[2, 2])
                .with_padding(Padding::Same)
                .with_bias(false),
        )
        .unwrap()
    };
    assert_eq!(weights_by_winograd(&dilated(1)), None);
    assert_eq!(weights_by_winograd(&dilated(4)), Some(V::F4));
    // 1-D: as many tiles as channels, and no more output channels than input ones.
    let seq = |n: usize, c: usize, l: usize, co: usize| {
        let spec = ConvSpec::new(&[n, c, l], co, &[3]).with_padding(Padding::Same);
        weights_by_winograd(&Geometry::new(&spec).unwrap())
    };
    assert_eq!(seq(8, 128, 4000, 128), Some(V::F4));
    assert_eq!(seq(2, 300, 1024, 100), Some(V::F4));
    assert_eq!(seq(1, 100, 2048, 300), None);
    assert_eq!(seq(1, 512, 800, 512), None);
    assert_eq!(seq(1, 300, 256, 100), None);
    let g = geom(2, 8, 24, 3);
    assert_eq!(weights_by_winograd(&g), Some(V::F4));
    let (x, dy, want) = weight_gradient_case(&g, &mut Rng::new(5));
    let mut dw = vec![f32::NAN; g.weight_len()];
    let kernels = convkit::arch::resolve_isa(None).unwrap().kernels().unwrap();
    backward_weights_into(&g, kernels, &x, &dy, &mut dw).unwrap();
    let (e, i) = worst(&dw, &want.weight, want.weight_magnitude);
    assert!(e <= 1e-3, "dw[{i}] error {e:.3e} x S");
}

/// Layers the Winograd weight gradient does not take are errors, as are wrong lengths.
#[test]
fn winograd_weight_gradient_refuses_other_layers() {
    use convkit::algo::WinogradVariant as V;
    use convkit::backward::backward_weights_winograd_into;
    let kernels = convkit::Isa::Portable.kernels().unwrap();
    for spec in [
        ConvSpec::new(&[1, 2, 8, 8], 2, &[3, 3]).with_stride(&[2, 2]),
        ConvSpec::new(&[1, 2, 8, 8], 2, &[5, 5]),
        ConvSpec::new(&[1, 2, 8, 8], 2, &[3, 3]).with_stride(&[1, 2]),
        ConvSpec::new(&[1, 2, 8], 2, &[5]),
        ConvSpec::new(&[1, 2, 8], 2, &[3]).with_stride(&[2]),
    ] {
        let g = Geometry::new(&spec).unwrap();
        let (x, dz) = (vec![0f32; g.input_len()], vec![0f32; g.conv_output_len()]);
        let mut dw = vec![0f32; g.weight_len()];
        assert!(backward_weights_winograd_into(&g, kernels, V::F4, &x, &dz, &mut dw).is_err());
    }
    let g = Geometry::new(&ConvSpec::new(&[1, 2, 8, 8], 2, &[3, 3])).unwrap();
    let (x, dz) = (vec![0f32; g.input_len()], vec![0f32; g.conv_output_len()]);
    let mut dw = vec![0f32; g.weight_len()];
    assert!(backward_weights_winograd_into(&g, kernels, V::F4, &x[1..], &dz, &mut dw).is_err());
    assert!(backward_weights_winograd_into(&g, kernels, V::F4, &x, &dz[1..], &mut dw).is_err());
    assert!(backward_weights_winograd_into(&g, kernels, V::F4, &x, &dz, &mut dw[1..]).is_err());
}

/// The C ABI's gradient plan gives the library's gradients bit for bit (on 1 and 2 threads),
/// refuses a layer with an epilogue and wrong lengths, and leaves outputs untouched on error.
#[test]
fn c_abi_gradient_plan_matches_the_library() {
    use convkit::backward::{
        backward_bias, backward_data_into, backward_weights_into, DataWeights,
    };
    use convkit::capi::*;
    use std::ffi::CString;
    let spec = ConvSpec::new(&[2, 6, 11, 10], 4, &[3, 3])
        .with_padding(Padding::Same)
        .with_groups(2)
        .with_bias(false);
    let g = Geometry::new(&spec).unwrap();
    let mut rng = Rng::new(3);
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect() };
    let (x, w, dz) = (
        uniform(g.input_len()),
        uniform(g.weight_len()),
        uniform(g.conv_output_len()),
    );
    let kernels = convkit::arch::resolve_isa(None).unwrap().kernels().unwrap();
    let mut want_dx = vec![0f32; g.input_len()];
    backward_data_into(
        &DataWeights::new(&g, kernels, &w).unwrap(),
        &dz,
        &mut want_dx,
    )
    .unwrap();
    let mut want_dw = vec![0f32; g.weight_len()];
    backward_weights_into(&g, kernels, &x, &dz, &mut want_dw).unwrap();
    let want_db = backward_bias(&g, &dz);
    let json = CString::new(spec.to_json().to_string()).unwrap();
    for threads in [1, 2] {
        let mut grad = std::ptr::null_mut();
        let (mut dx, mut dw, mut db) = (
            vec![f32::NAN; want_dx.len()],
            vec![f32::NAN; want_dw.len()],
            vec![f32::NAN; want_db.len()],
        );
        // SAFETY: valid strings, buffers of the lengths passed, and a plan destroyed once.
        unsafe {
            let ok = ConvkitStatus::Ok;
            assert_eq!(
                convkit_grad_create_json(json.as_ptr(), w.as_ptr(), w.len(), 0, threads, &mut grad),
                ok
            );
            let bad = ConvkitStatus::InvalidArgument;
            let short =
                convkit_grad_data(grad, dz.as_ptr(), dz.len() - 1, dx.as_mut_ptr(), dx.len());
            assert_eq!(short, bad);
            assert!(dx.iter().all(|v| v.is_nan()), "dx written on error");
            assert_eq!(
                convkit_grad_data(grad, dz.as_ptr(), dz.len(), dx.as_mut_ptr(), dx.len()),
                ok
            );
            assert_eq!(
                convkit_grad_weight(
                    grad,
                    x.as_ptr(),
                    x.len(),
                    dz.as_ptr(),
                    dz.len(),
                    dw.as_mut_ptr(),
                    dw.len()
                ),
                ok
            );
            assert_eq!(
                convkit_grad_bias(grad, dz.as_ptr(), dz.len(), db.as_mut_ptr(), db.len()),
                ok
            );
            convkit_grad_destroy(grad);
        }
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same(&dx, &want_dx), "dx differs on {threads} threads");
        assert!(same(&dw, &want_dw), "dw differs on {threads} threads");
        assert!(same(&db, &want_db), "db differs on {threads} threads");
    }
    let relu = CString::new(spec.with_activation(Activation::Relu).to_json().to_string()).unwrap();
    let mut grad = std::ptr::null_mut();
    // SAFETY: as above; the call fails and creates nothing.
    let status =
        unsafe { convkit_grad_create_json(relu.as_ptr(), w.as_ptr(), w.len(), 0, 1, &mut grad) };
    assert_eq!(status, ConvkitStatus::InvalidSpec);
    assert!(grad.is_null());
}

/// `ConvGrad` on NHWC tensors gives the NCHW gradients transposed, bit for bit (the same
/// computation between transposes), 1-D and 2-D, on 1 and 2 threads; wrong lengths leave the
/// outputs untouched; a spec with an epilogue is refused.
#[test]
fn gradient_plan_takes_nhwc_tensors() {
    use convkit::backward::ConvGrad;
    use convkit::tensor::{nchw_to_nhwc, nhwc_to_nchw};
    fn shareable<T: Send + Sync>() {}
    shareable::<ConvGrad>();
    let specs = [
        ConvSpec::new(&[2, 6, 9, 7], 4, &[3, 3])
            .with_padding(Padding::Same)
            .with_stride(&[2, 1]),
        ConvSpec::new(&[3, 5, 20], 6, &[3]).with_padding(Padding::Same),
        // Many tiles: the Winograd weight gradient.
        ConvSpec::new(&[2, 8, 16, 16], 8, &[3, 3]).with_padding(Padding::Same),
    ];
    let mut rng = Rng::new(21);
    for spec in specs {
        let spec = spec.with_bias(false);
        let g = Geometry::new(&spec).unwrap();
        let (area_in, area_out) = (g.input_area(), g.conv_out_area());
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect() };
        let (x, w, dz) = (
            uniform(g.input_len()),
            uniform(g.weight_len()),
            uniform(g.conv_output_len()),
        );
        let nchw = ConvGrad::new(&spec, &w, &PlanOptions::default()).unwrap();
        let (mut dx, mut dw, mut db) = (
            vec![0f32; x.len()],
            vec![0f32; w.len()],
            vec![0f32; g.out_channels],
        );
        nchw.data(&dz, &mut dx).unwrap();
        nchw.weight(&x, &dz, &mut dw).unwrap();
        nchw.bias(&dz, &mut db).unwrap();
        let want = reference::backward_f64(
            &g,
            &Operands {
                input: &x,
                weight: &w,
                bias: None,
                residual: None,
            },
            &dz,
        )
        .unwrap();
        let (e, i) = worst(&dw, &want.weight, want.weight_magnitude);
        assert!(e <= 1e-3, "NCHW dw[{i}] error {e:.3e} x S");
        let (e, i) = worst(&dx, &want.input, want.input_magnitude);
        assert!(e <= 1e-4, "NCHW dx[{i}] error {e:.3e} x S");
        let (mut x_t, mut dz_t) = (vec![0f32; x.len()], vec![0f32; dz.len()]);
        nchw_to_nhwc(&x, &mut x_t, g.batch, g.in_channels, area_in);
        nchw_to_nhwc(&dz, &mut dz_t, g.batch, g.out_channels, area_out);
        for threads in [1, 2] {
            let opts = PlanOptions {
                layout: convkit::Layout::Nhwc,
                threads: Some(threads),
                ..PlanOptions::default()
            };
            let nhwc = ConvGrad::new(&spec, &w, &opts).unwrap();
            let (mut dx_t, mut dw_t, mut db_t) = (
                vec![f32::NAN; x.len()],
                vec![f32::NAN; w.len()],
                vec![f32::NAN; g.out_channels],
            );
            assert!(nhwc.data(&dz_t[1..], &mut dx_t).is_err());
            assert!(dx_t.iter().all(|v| v.is_nan()), "dx written on error");
            nhwc.data(&dz_t, &mut dx_t).unwrap();
            nhwc.weight(&x_t, &dz_t, &mut dw_t).unwrap();
            nhwc.bias(&dz_t, &mut db_t).unwrap();
            let mut dx_back = vec![0f32; x.len()];
            nhwc_to_nchw(&dx_t, &mut dx_back, g.batch, g.in_channels, area_in);
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            let ctx = format!("{threads} threads, {}", spec.to_json());
            assert!(same(&dx_back, &dx), "NHWC dx differs ({ctx})");
            assert!(same(&dw_t, &dw), "NHWC dw differs ({ctx})");
            assert!(same(&db_t, &db), "NHWC db differs ({ctx})");
        }
    }
    let pooled = ConvSpec::new(&[1, 2, 8, 8], 2, &[3, 3]).with_pool(Some(Pool::GlobalMax));
    let err = ConvGrad::new(&pooled, &[0.0; 36], &PlanOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pool"), "{err}");
}
