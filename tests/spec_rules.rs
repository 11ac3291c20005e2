//! SPEC.md sections 1 and 4 rule by rule, with hand-computed values.

use convkit::reference::{self, Operands};
use convkit::{Activation, ConvSpec, Error, Geometry, Padding, Pool, PoolWindow};
use proptest::prelude::*;

fn geom(json: &str) -> convkit::Result<Geometry> {
    Geometry::new(&ConvSpec::from_json(json)?)
}

#[test]
fn defaults_are_those_of_the_spec() {
    let s = ConvSpec::from_json(r#"{"input": [1, 2, 5, 5], "out_channels": 3, "kernel": [3, 3]}"#)
        .unwrap();
    assert_eq!(s.padding, Padding::Valid);
    assert!(s.bias && !s.residual);
    assert_eq!(s.groups, 1);
    assert_eq!(s.activation, Activation::None);
    assert!(s.pool.is_none());
    let g = Geometry::new(&s).unwrap();
    assert_eq!(g.stride, [1, 1]);
    assert_eq!(g.dilation, [1, 1]);
    assert_eq!(g.output_shape(), vec![1, 3, 3, 3]);
    assert_eq!(g.weight_shape(), vec![3, 2, 3, 3]);
}

#[test]
fn output_size_formula() {
    // floor((7 + 1 + 2 - 2*(3-1) - 1) / 2) + 1 = floor(5/2) + 1 = 3
    let g = geom(
        r#"{"input": [1, 1, 7, 7], "out_channels": 1, "kernel": [3, 3], "stride": [2, 2],
                    "padding": [[1, 2], [0, 0]], "dilation": [2, 1]}"#,
    )
    .unwrap();
    assert_eq!(g.conv_out, [3, 3]);
    // W: floor((7 - 2 - 1) / 2) + 1 = 3
    assert_eq!(g.pad_before, [1, 0]);
    assert_eq!(g.pad_after, [2, 0]);
}

#[test]
fn same_padding_follows_tensorflow_with_the_odd_extra_after() {
    // in 7, k 3, s 2: ceil(7/2) = 4; total = (4-1)*2 + 2 + 1 - 7 = 2 -> (1, 1)
    let g = geom(r#"{"input": [1, 1, 7, 6], "out_channels": 1, "kernel": [3, 3], "stride": [2, 2], "padding": "same"}"#).unwrap();
    assert_eq!((g.pad_before[0], g.pad_after[0]), (1, 1));
    // in 6, k 3, s 2: ceil(6/2) = 3; total = 2*2 + 3 - 6 = 1 -> (0, 1)
    assert_eq!((g.pad_before[1], g.pad_after[1]), (0, 1));
    assert_eq!(g.conv_out, [4, 3]);
    // k 4, s 1, d 2: total = 0 + 3*2 + 1 - 1 = 6... in 5: (5-1)*1 + 7 - 5 = 6 -> (3, 3)
    let g = geom(r#"{"input": [1, 1, 5], "out_channels": 1, "kernel": [4], "dilation": [2], "padding": "same"}"#).unwrap();
    assert_eq!((g.pad_before[1], g.pad_after[1]), (3, 3));
    assert_eq!(g.output_shape(), vec![1, 1, 5]);
    // stride larger than the kernel: in 5, k 1, s 3: ceil(5/3)=2, total = 3 + 1 - 5 < 0 -> 0
    let g = geom(r#"{"input": [1, 1, 5], "out_channels": 1, "kernel": [1], "stride": [3], "padding": "same"}"#).unwrap();
    assert_eq!((g.pad_before[1], g.pad_after[1]), (0, 0));
}

#[test]
fn pool_sizes_and_global_pools_keep_rank() {
    let g = geom(r#"{"input": [2, 3, 112, 112], "out_channels": 4, "kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                    "pool": {"kind": "max", "size": [3, 3], "stride": [2, 2], "padding": [1, 1]}}"#).unwrap();
    assert_eq!(g.conv_out, [56, 56]);
    assert_eq!(g.output_shape(), vec![2, 4, 28, 28]);
    let g = geom(r#"{"input": [1, 3, 10], "out_channels": 4, "kernel": [3], "pool": {"kind": "global_avg"}}"#).unwrap();
    assert_eq!(g.output_shape(), vec![1, 4, 1]);
    let g = geom(r#"{"input": [1, 3, 10, 9], "out_channels": 4, "kernel": [3, 3], "pool": {"kind": "global_max"}}"#).unwrap();
    assert_eq!(g.output_shape(), vec![1, 4, 1, 1]);
}

#[test]
fn flops_follow_the_suite_formula() {
    // resnet50.res2.3x3: 2 * 64 * 56 * 56 * 64 * 9 = 231,211,008
    let g = geom(
        r#"{"input": [1, 64, 56, 56], "out_channels": 64, "kernel": [3, 3], "padding": [1, 1]}"#,
    )
    .unwrap();
    assert_eq!(g.flops(), 231_211_008);
    // grouped: 2 * 1 * 128 * 56*56 * 4 * 9
    let g = geom(r#"{"input": [1, 128, 56, 56], "out_channels": 128, "kernel": [3, 3], "padding": [1, 1], "groups": 32}"#).unwrap();
    assert_eq!(g.flops(), 2 * 128 * 56 * 56 * 4 * 9);
}

#[test]
fn every_suite_layer_parses_and_validates() {
    let text = include_str!("../benches/layers.json");
    let layers = convkit::spec::parse_suite(text).unwrap();
    assert_eq!(layers.len(), 27);
    for l in &layers {
        let g = Geometry::new(l).unwrap();
        assert!(g.flops() > 0);
        // Round trip through JSON gives the same spec.
        let back = ConvSpec::from_value(&l.to_json(), "").unwrap();
        assert_eq!(Geometry::new(&back).unwrap(), g, "{:?}", l.name);
    }
}

/// The seed example of the foundation issue: input [[1,1,0],[1,0,1],[0,1,1]], kernel
/// [[1,-1],[-1,1]], stride 1, VALID, ReLU, then 2x2 max pooling.
/// conv: (0,0): 1-1-1+0 = -1; (0,1): 1-0-0+1 = 2; (1,0): 1-0-0+1 = 2; (1,1): 0-1-1+1 = -1
/// relu: [[0,2],[2,0]]; max pool 2x2: 2.
#[test]
fn seed_example_by_hand() {
    let spec = ConvSpec::new(&[1, 1, 3, 3], 1, &[2, 2])
        .with_bias(false)
        .with_activation(Activation::Relu)
        .with_pool(Some(Pool::Max(PoolWindow {
            size: vec![2, 2],
            stride: vec![2, 2],
            padding: vec![(0, 0); 2],
        })));
    let g = Geometry::new(&spec).unwrap();
    assert_eq!(g.output_shape(), vec![1, 1, 1, 1]);
    let x = [1., 1., 0., 1., 0., 1., 0., 1., 1.];
    let w = [1., -1., -1., 1.];
    let ops = Operands {
        input: &x,
        weight: &w,
        bias: None,
        residual: None,
    };
    let (pre, mag) = reference::pre_activation(&g, &ops).unwrap();
    assert_eq!(pre, vec![-1.0, 2.0, 2.0, -1.0]);
    assert_eq!(mag, vec![3.0, 2.0, 2.0, 3.0]);
    assert_eq!(reference::forward(&g, &ops).unwrap(), vec![2.0]);
    // The same through every algorithm that accepts it.
    for algo in convkit::algo::accepting(&g) {
        let plan = convkit::Plan::new(
            &spec,
            &w,
            None,
            &convkit::PlanOptions {
                algo: Some(algo.name().into()),
                ..Default::default()
            },
        )
        .unwrap();
        let mut y = [0f32];
        plan.run(&x, None, &mut y).unwrap();
        assert_eq!(y, [2.0], "{}", algo.name());
    }
}

#[test]
fn bias_residual_activation_order_and_padding_only_outputs() {
    // 1x1 input, 1x1 kernel, padding 1: the 3x3 output's border sees only padding, so it is
    // act(bias + residual). x = 2, w = 3, b = -1, residual = r.
    let spec = ConvSpec::new(&[1, 1, 1, 1], 1, &[1, 1])
        .with_padding(Padding::Symmetric(vec![1, 1]))
        .with_residual(true)
        .with_activation(Activation::Clamp {
            min: -2.0,
            max: 4.0,
        });
    let g = Geometry::new(&spec).unwrap();
    let r: Vec<f32> = (0..9).map(|i| i as f32 - 4.0).collect();
    let ops = Operands {
        input: &[2.0],
        weight: &[3.0],
        bias: Some(&[-1.0]),
        residual: Some(&r),
    };
    let y = reference::forward(&g, &ops).unwrap();
    let want: Vec<f32> = (0..9)
        .map(|i| {
            let conv = if i == 4 { 6.0 } else { 0.0 };
            (conv - 1.0 + r[i]).clamp(-2.0, 4.0)
        })
        .collect();
    assert_eq!(y, want);
}

#[test]
fn avg_pool_divides_by_real_cells_unless_count_include_pad() {
    // conv = identity (1x1 kernel w = 1, no bias) on a 2x2 input [[1,2],[3,4]]; avg pool 2x2,
    // stride 2, padding 1 -> 2x2 windows each covering one real cell.
    for (cip, want) in [
        (false, [1.0, 2.0, 3.0, 4.0]),
        (true, [0.25, 0.5, 0.75, 1.0]),
    ] {
        let spec = ConvSpec::new(&[1, 1, 2, 2], 1, &[1, 1])
            .with_bias(false)
            .with_pool(Some(Pool::Avg {
                window: PoolWindow {
                    size: vec![2, 2],
                    stride: vec![2, 2],
                    padding: vec![(1, 1); 2],
                },
                count_include_pad: cip,
            }));
        let g = Geometry::new(&spec).unwrap();
        let y = reference::forward(
            &g,
            &Operands {
                input: &[1., 2., 3., 4.],
                weight: &[1.],
                bias: None,
                residual: None,
            },
        )
        .unwrap();
        assert_eq!(y, want, "count_include_pad {cip}");
    }
    // Max pool ignores the padding: with all-negative values a padded zero would win.
    let spec = ConvSpec::new(&[1, 1, 2, 2], 1, &[1, 1])
        .with_bias(false)
        .with_pool(Some(Pool::Max(PoolWindow {
            size: vec![2, 2],
            stride: vec![2, 2],
            padding: vec![(1, 1); 2],
        })));
    let g = Geometry::new(&spec).unwrap();
    let y = reference::forward(
        &g,
        &Operands {
            input: &[-1., -2., -3., -4.],
            weight: &[1.],
            bias: None,
            residual: None,
        },
    )
    .unwrap();
    assert_eq!(y, vec![-1., -2., -3., -4.]);
}

#[test]
fn grouped_and_depthwise_with_multiplier_by_hand() {
    // 2 input channels, groups 2, 4 outputs (multiplier 2), 1x1 kernels w = [1, 2, 3, 4]:
    // out0 = 1*x0, out1 = 2*x0, out2 = 3*x1, out3 = 4*x1.
    let spec = ConvSpec::new(&[1, 2, 1, 2], 4, &[1, 1])
        .with_groups(2)
        .with_bias(false);
    let g = Geometry::new(&spec).unwrap();
    assert!(g.is_depthwise());
    let x = [1., 2., 10., 20.];
    let y = reference::forward(
        &g,
        &Operands {
            input: &x,
            weight: &[1., 2., 3., 4.],
            bias: None,
            residual: None,
        },
    )
    .unwrap();
    assert_eq!(y, vec![1., 2., 2., 4., 30., 60., 40., 80.]);
}

#[test]
fn dilation_by_hand_1d() {
    // x = [1, 2, 3, 4, 5], k = [1, 1] dilation 3: y[i] = x[i] + x[i+3] -> [5, 7]
    let spec = ConvSpec::new(&[1, 1, 5], 1, &[2])
        .with_dilation(&[3])
        .with_bias(false);
    let g = Geometry::new(&spec).unwrap();
    let y = reference::forward(
        &g,
        &Operands {
            input: &[1., 2., 3., 4., 5.],
            weight: &[1., 1.],
            bias: None,
            residual: None,
        },
    )
    .unwrap();
    assert_eq!(y, vec![5., 7.]);
}

fn spec_err(json: &str) -> String {
    match geom(json) {
        Ok(g) => panic!("accepted: {json} -> {:?}", g.output_shape()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_error_class_names_its_field() {
    let base = |extra: &str| {
        format!(r#"{{"input": [1, 4, 8, 8], "out_channels": 4, "kernel": [3, 3]{extra}}}"#)
    };
    let cases: &[(&str, &str)] = &[
        (&base(r#", "colour": 1"#), "colour"),
        (&base(r#", "groups": 3"#), "groups"),
        (&base(r#", "groups": 0"#), "groups"),
        (&base(r#", "stride": [1]"#), "stride"),
        (&base(r#", "stride": [0, 1]"#), "stride[0]"),
        (&base(r#", "dilation": [1, -1]"#), "dilation"),
        (&base(r#", "padding": "full""#), "padding"),
        (&base(r#", "padding": [1, 1, 1]"#), "padding"),
        (&base(r#", "padding": [[1, 1], [1]]"#), "padding[1]"),
        (&base(r#", "activation": "swish""#), "activation"),
        (&base(r#", "activation": "leaky_relu""#), "activation"),
        (
            &base(r#", "activation": {"kind": "clamp", "min": 2, "max": 1}"#),
            "activation",
        ),
        (&base(r#", "activation": {"kind": "leaky_relu"}"#), "alpha"),
        (
            &base(r#", "pool": {"kind": "median", "size": [2, 2]}"#),
            "pool.kind",
        ),
        (&base(r#", "pool": {"kind": "max"}"#), "pool.size"),
        (
            &base(r#", "pool": {"kind": "max", "size": [2, 2], "padding": [2, 2]}"#),
            "pool.padding",
        ),
        (
            &base(r#", "pool": {"kind": "max", "size": [9, 9]}"#),
            "pool.size",
        ),
        (
            &base(r#", "pool": {"kind": "global_max", "size": [2, 2]}"#),
            "pool.size",
        ),
        (&base(r#", "bias": "yes""#), "bias"),
        (
            r#"{"input": [1, 4, 8, 8, 8], "out_channels": 4, "kernel": [3, 3]}"#,
            "input",
        ),
        (
            r#"{"input": [1, 0, 8, 8], "out_channels": 4, "kernel": [3, 3]}"#,
            "input[1]",
        ),
        (
            r#"{"input": [1, 4, 8, 8], "out_channels": 0, "kernel": [3, 3]}"#,
            "out_channels",
        ),
        (
            r#"{"input": [1, 4, 8, 8], "out_channels": 4, "kernel": [3]}"#,
            "kernel",
        ),
        (
            r#"{"input": [1, 4, 2, 2], "out_channels": 4, "kernel": [3, 3]}"#,
            "kernel",
        ),
        (
            r#"{"input": [1, 4, 8, 8], "kernel": [3, 3]}"#,
            "out_channels",
        ),
        (
            r#"{"input": [1, 4, 8.5, 8], "out_channels": 4, "kernel": [3, 3]}"#,
            "input[2]",
        ),
        (r#"[1, 2]"#, "object"),
    ];
    for (json, field) in cases {
        let msg = spec_err(json);
        assert!(
            msg.contains(field),
            "error for {json} should name `{field}`: {msg}"
        );
    }
}

#[test]
fn huge_dimensions_are_refused_before_allocation() {
    let e =
        geom(r#"{"input": [1, 1, 5000000000, 5000000000], "out_channels": 1, "kernel": [1, 1]}"#)
            .unwrap_err();
    assert!(matches!(e, Error::Overflow(_)), "{e}");
    let e = geom(r#"{"input": [1, 1, 8, 8], "out_channels": 1, "kernel": [3, 3], "dilation": [18446744073709551615, 1]}"#).unwrap_err();
    assert!(matches!(e, Error::Overflow(_)), "{e}");
    let e = geom(r#"{"input": [1, 1, 8, 8], "out_channels": 1, "kernel": [1, 1], "padding": [18446744073709551615, 0]}"#).unwrap_err();
    assert!(matches!(e, Error::Overflow(_)), "{e}");
    let e = geom(r#"{"input": [1, 1, 8, 8], "out_channels": 1, "kernel": [1, 1], "stride": [99999999999999999999, 1]}"#).unwrap_err();
    assert!(e.to_string().contains("stride"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Geometry invariants: every output position's window starts inside the padded input and
    /// ends inside it; one more position would not fit; "same" at stride 1 keeps the size.
    #[test]
    fn geometry_invariants(inp in 1usize..40, k in 1usize..8, s in 1usize..5, d in 1usize..4, pb in 0usize..6, pa in 0usize..6) {
        let json = format!(r#"{{"input": [1, 1, {inp}], "out_channels": 1, "kernel": [{k}], "stride": [{s}], "dilation": [{d}], "padding": [[{pb}, {pa}]]}}"#);
        let span = d * (k - 1) + 1;
        match geom(&json) {
            Ok(g) => {
                let o = g.conv_out[1];
                prop_assert!(o >= 1);
                prop_assert!((o - 1) * s + span <= inp + pb + pa);
                prop_assert!(o * s + span > inp + pb + pa);
            }
            Err(_) => prop_assert!(inp + pb + pa < span),
        }
        let same = format!(r#"{{"input": [1, 1, {inp}], "out_channels": 1, "kernel": [{k}], "stride": [{s}], "dilation": [{d}], "padding": "same"}}"#);
        let g = geom(&same).unwrap();
        prop_assert_eq!(g.conv_out[1], inp.div_ceil(s));
        prop_assert!(g.pad_after[1] == g.pad_before[1] || g.pad_after[1] == g.pad_before[1] + 1);
    }
}
