//! Hostile input: property-based fuzzing of the spec parser, the geometry, the `.npy` reader
//! and plan creation/run. None may panic, and what is accepted must be consistent.
//! `CONVKIT_FUZZ_CASES=N` sets the cases per target (default 1500; CI runs the default, a
//! longer run is `CONVKIT_FUZZ_CASES=200000 cargo test --release --test fuzz`).

use convkit::{ConvSpec, Geometry, Plan, PlanOptions};
use proptest::prelude::*;
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("CONVKIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..6).prop_map(|v| json!(v)),
        (-3i64..0).prop_map(|v| json!(v)),
        Just(json!(u64::MAX)),
        Just(json!(1u64 << 33)),
        Just(json!(2.5)),
        Just(json!("3")),
        Just(Value::Null),
    ]
}

fn list(max: usize) -> impl Strategy<Value = Value> {
    prop::collection::vec(number(), 0..max).prop_map(Value::Array)
}

fn spec_value() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(1u64..9, 3..5),
        number(),
        list(3),
        prop_oneof![list(3), Just(Value::Null)],
        prop_oneof![list(3), Just(json!("same")), Just(json!("valid")), Just(json!("full")), Just(json!([[1, 2], [0, 9]]))],
        prop_oneof![list(3), Just(Value::Null)],
        number(),
        prop_oneof![Just(json!("relu")), Just(json!("gelu")), Just(json!({"kind": "clamp", "min": 1, "max": 0})), Just(json!(7))],
        prop_oneof![
            Just(Value::Null),
            Just(json!({"kind": "max", "size": [2, 2]})),
            Just(json!({"kind": "avg", "size": [3], "padding": [2]})),
            Just(json!({"kind": "global_avg"})),
            Just(json!({"kind": "max"})),
        ],
        any::<bool>(),
    )
        .prop_map(|(input, co, kernel, stride, padding, dilation, groups, act, pool, extra)| {
            let mut v = json!({"input": input, "out_channels": co, "kernel": kernel, "stride": stride,
                               "padding": padding, "dilation": dilation, "groups": groups,
                               "activation": act, "pool": pool});
            if extra {
                v["unexpected"] = json!(1);
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = ConvSpec::from_json(&text);
        let _ = convkit::spec::parse_suite(&text);
    }

    #[test]
    fn geometry_is_consistent_or_an_error(v in spec_value()) {
        if let Ok(spec) = ConvSpec::from_value(&v, "") {
            if let Ok(g) = Geometry::new(&spec) {
                // Accepted: every size is positive and the shapes agree with the spec.
                prop_assert!(g.output_len() > 0 && g.weight_len() > 0 && g.input_len() > 0);
                prop_assert_eq!(g.input_shape(), spec.input.clone());
                prop_assert!(g.output[0] <= g.conv_out[0] && g.output[1] <= g.conv_out[1]);
                // And a plan over small accepted layers runs with the right lengths only.
                if g.input_len() < 20_000 && g.weight_len() < 20_000 {
                    let w = vec![0.5f32; g.weight_len()];
                    let b = spec.bias.then(|| vec![0.1f32; g.out_channels]);
                    let plan = Plan::new(&spec, &w, b.as_deref(), &PlanOptions::default()).unwrap();
                    let x = vec![1.0f32; g.input_len()];
                    let r = spec.residual.then(|| vec![0.0f32; g.conv_output_len()]);
                    let mut y = vec![0.0f32; g.output_len()];
                    prop_assert!(plan.run(&x, r.as_deref(), &mut y).is_ok());
                    let mut short = vec![0.0f32; g.output_len() - 1];
                    prop_assert!(plan.run(&x, r.as_deref(), &mut short).is_err());
                    prop_assert!(plan.run(&x[1..], r.as_deref(), &mut y).is_err());
                }
            }
        }
    }

    #[test]
    fn npy_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), cut in 0usize..200, flip in 0usize..200) {
        let dir = std::env::temp_dir().join(format!("convkit-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f{:?}.npy", std::thread::current().id()));
        // Random bytes, and a valid file truncated and with one byte flipped.
        std::fs::write(&path, &bytes).unwrap();
        let _ = convkit::npy::read_f32(&path, &[1, 2, 3], "input");
        let mut valid = convkit::npy::encode_f32(&[2, 3], &[1.0; 6]);
        let n = valid.len();
        valid[flip % n] ^= 0x5a;
        valid.truncate(n - cut % n);
        std::fs::write(&path, &valid).unwrap();
        let r = convkit::npy::read_f32(&path, &[2, 3], "input");
        if let Ok(v) = r {
            prop_assert_eq!(v.len(), 6);
        }
    }
}
