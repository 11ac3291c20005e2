//! The autotuner: heuristic choices, cache keys, wisdom round trip, bad wisdom files, and a
//! plan from wisdom measuring nothing.

use convkit::tune::{self, Source, TuneMode};
use convkit::{Algo, ConvSpec, Geometry, Isa, Layout, Padding, Plan, PlanOptions};

fn geom(spec: &ConvSpec) -> Geometry {
    Geometry::new(spec).unwrap()
}

/// The heuristic's pick for `spec` on the AVX2 tier (where its rules were measured), by name.
fn picks(spec: &ConvSpec) -> &'static str {
    convkit::plan::choose_algo_for(&geom(spec), Isa::Avx2).name()
}

#[test]
fn heuristic_choices_follow_the_measured_rules() {
    let pw = ConvSpec::new(&[1, 144, 56, 56], 24, &[1, 1]);
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&pw), Isa::Avx2),
        Algo::Gemm1x1
    );
    let dw = ConvSpec::new(&[1, 32, 112, 112], 32, &[3, 3])
        .with_groups(32)
        .with_padding(Padding::Same);
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&dw), Isa::Avx2),
        Algo::Depthwise
    );
    let small_k = ConvSpec::new(&[1, 64, 56, 56], 64, &[3, 3])
        .with_padding(Padding::Same)
        .with_stride(&[2, 2]); // K = 576, no Winograd at stride 2
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&small_k), Isa::Avx2),
        Algo::Direct
    );
    let big_k = ConvSpec::new(&[1, 256, 56, 56], 256, &[5, 5]).with_padding(Padding::Same); // K = 6400
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&big_k), Isa::Avx2),
        Algo::Im2col
    );
    // 3x3 stride 1: Winograd F(6,3) on images of 40 or more F(6,3) tiles, else F(4,3), or
    // F(2,3) on images of fewer than 16 F(4,3) tiles; none with few channels a group.
    let vgg = ConvSpec::new(&[1, 256, 56, 56], 256, &[3, 3]).with_padding(Padding::Same);
    assert_eq!(picks(&vgg), "winograd_f6x3");
    let res3 = ConvSpec::new(&[1, 128, 28, 28], 128, &[3, 3]).with_padding(Padding::Same);
    assert_eq!(picks(&res3), "winograd_f4x3");
    // Dilated: the same on phase planes, F(6,3) where F(4,3)'s tiles waste a quarter more
    // multiplications (deeplab's 17 x 17 phases), F(4,3) where they fit (16 x 16 phases).
    let deeplab = ConvSpec::new(&[1, 256, 33, 33], 256, &[3, 3])
        .with_dilation(&[2, 2])
        .with_padding(Padding::Symmetric(vec![2, 2]));
    assert_eq!(picks(&deeplab), "dilated_f6x3");
    let even = ConvSpec::new(&[1, 64, 32, 32], 64, &[3, 3])
        .with_dilation(&[2, 2])
        .with_padding(Padding::Symmetric(vec![2, 2]));
    assert_eq!(picks(&even), "dilated_f4x3");
    let res5 = ConvSpec::new(&[1, 512, 7, 7], 512, &[3, 3]).with_padding(Padding::Same);
    assert_eq!(picks(&res5), "winograd_f2x3");
    let text = ConvSpec::new(&[1, 300, 256], 100, &[3]).with_padding(Padding::Same);
    assert_eq!(picks(&text), "winograd_f6x3");
    let short_text = ConvSpec::new(&[1, 300, 128], 100, &[3]).with_padding(Padding::Same);
    assert_eq!(picks(&short_text), "winograd_f4x3");
    // Small K at stride 1 with rows that leave 16-wide tiles 10% empty (OW = 28): direct_oc.
    let googlenet = ConvSpec::new(&[1, 16, 28, 28], 32, &[5, 5]).with_padding(Padding::Same);
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&googlenet), Isa::Avx2),
        Algo::DirectOc
    );
    // Groups of 4 in and out (resnext): the grouped channel blocks; 4 in and 8 out, direct.
    let grouped = ConvSpec::new(&[1, 128, 56, 56], 128, &[3, 3])
        .with_padding(Padding::Same)
        .with_groups(32);
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&grouped), Isa::Avx2),
        Algo::Grouped
    );
    let widening = ConvSpec::new(&[1, 128, 56, 56], 256, &[3, 3])
        .with_padding(Padding::Same)
        .with_groups(32);
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&widening), Isa::Avx2),
        Algo::Direct
    );
    let strided_1x1 = ConvSpec::new(&[1, 64, 56, 56], 128, &[1, 1]).with_stride(&[2, 2]);
    assert_eq!(
        convkit::plan::choose_algo_for(&geom(&strided_1x1), Isa::Avx2),
        Algo::Direct
    );
    // AVX-512: direct_oc where the AVX2 rules say direct (direct's in-place B rows ran at
    // half speed with 32-wide panels), im2col for one input channel spread to 512 outputs
    // (wav2vec2.conv0); the other picks stand.
    let wav2vec_conv0 = ConvSpec::new(&[1, 1, 16000], 512, &[10]).with_stride(&[5]);
    // And direct_oc for 2-D layers the rules give to im2col up to K = 1152 (res3.3x3s2);
    // 1-D wav2vec2.conv1 (K = 1536) stays with im2col.
    let res3_s2 = ConvSpec::new(&[1, 128, 56, 56], 128, &[3, 3])
        .with_padding(Padding::Symmetric(vec![1, 1]))
        .with_stride(&[2, 2]);
    let wav2vec_conv1 = ConvSpec::new(&[1, 512, 3199], 512, &[3]).with_stride(&[2]);
    // And F(4,3) up to 400 F(6,3) tiles (vgg16.conv3_3's 100, conv2_2's 361), F(6,3) from
    // there (conv1_2's 1444); 1-D likewise.
    let conv1_2 = ConvSpec::new(&[1, 64, 224, 224], 64, &[3, 3]).with_padding(Padding::Same);
    let conv2_2 = ConvSpec::new(&[1, 128, 112, 112], 128, &[3, 3]).with_padding(Padding::Same);
    let f4 = Algo::Winograd(convkit::algo::WinogradVariant::F4);
    let f6 = Algo::Winograd(convkit::algo::WinogradVariant::F6);
    for (spec, avx2, avx512) in [
        (&vgg, f6, f4),
        (&conv2_2, f6, f4),
        (&conv1_2, f6, f6),
        (&res3, f4, f4),
        (&text, f6, f4),
        (&small_k, Algo::Direct, Algo::DirectOc),
        (&widening, Algo::Direct, Algo::DirectOc),
        (&big_k, Algo::Im2col, Algo::Im2col),
        (&pw, Algo::Gemm1x1, Algo::Gemm1x1),
        (&googlenet, Algo::DirectOc, Algo::DirectOc),
        (&dw, Algo::Depthwise, Algo::Depthwise),
        (&wav2vec_conv0, Algo::Depthwise, Algo::Im2col),
        (&res3_s2, Algo::Im2col, Algo::DirectOc),
        (&wav2vec_conv1, Algo::Im2col, Algo::Im2col),
    ] {
        let g = geom(spec);
        assert_eq!(convkit::plan::choose_algo_for(&g, Isa::Avx2), avx2);
        assert_eq!(convkit::plan::choose_algo_for(&g, Isa::Avx512), avx512);
    }
    // The candidate list leads with the heuristic's pick and never holds the reference.
    let c = tune::candidates(&geom(&big_k));
    assert_eq!(c[0], Algo::Im2col);
    assert!(!c.contains(&Algo::Reference) && c.contains(&Algo::Direct));
}

#[test]
fn cache_keys_change_with_everything_that_changes_the_answer() {
    let s = ConvSpec::new(&[1, 8, 10, 10], 8, &[3, 3]);
    let k = tune::cache_key(&s, Layout::Nchw, Isa::Portable, 1);
    assert!(
        k.contains(&format!(
            "v{}r{}|",
            env!("CARGO_PKG_VERSION"),
            tune::SCHEDULE_REVISION
        )),
        "crate version and schedule revision: {k}"
    );
    assert_eq!(
        k,
        tune::cache_key(
            &s.clone().with_name("other label"),
            Layout::Nchw,
            Isa::Portable,
            1
        )
    );
    assert_ne!(
        k,
        tune::cache_key(&s, Layout::Nchw, Isa::Portable, 2),
        "thread count"
    );
    assert_ne!(
        k,
        tune::cache_key(&s, Layout::Nhwc, Isa::Portable, 1),
        "layout"
    );
    if Isa::Avx2.is_available() {
        assert_ne!(k, tune::cache_key(&s, Layout::Nchw, Isa::Avx2, 1), "ISA");
    }
    assert_ne!(
        k,
        tune::cache_key(
            &s.clone().with_activation(convkit::Activation::Relu),
            Layout::Nchw,
            Isa::Portable,
            1
        ),
        "epilogue"
    );
    assert_ne!(
        k,
        tune::cache_key(
            &s.clone().with_stride(&[2, 2]),
            Layout::Nchw,
            Isa::Portable,
            1
        ),
        "geometry"
    );
}

/// One test for everything that touches the process-wide cache, so that parallel tests do
/// not race on it.
#[test]
fn measure_remember_save_load_and_reuse_without_measuring() {
    let dir = std::env::temp_dir().join(format!("convkit-tuner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = ConvSpec::new(&[1, 16, 20, 20], 16, &[3, 3]).with_padding(Padding::Same);
    let g = geom(&spec);
    let w = vec![0.01f32; g.weight_len()];
    let b = vec![0.0f32; 16];
    let opts = PlanOptions {
        threads: Some(1),
        tune: TuneMode::Measure { budget_ms: 5 },
        ..Default::default()
    };

    tune::clear_cache();
    let before = tune::measurement_count();
    let plan = Plan::new(&spec, &w, Some(&b), &opts).unwrap();
    assert_eq!(plan.choice().source, Source::Measured);
    assert!(
        tune::measurement_count() > before,
        "measuring mode must time candidates"
    );
    assert!(plan.choice().times_ms.len() >= 2, "{}", plan.explain());
    assert!(plan.explain().contains("measured"));
    let winner = plan.algo();

    // The same layer again: from the cache, no measurement.
    let n = tune::measurement_count();
    let again = Plan::new(&spec, &w, Some(&b), &opts).unwrap();
    assert_eq!(
        (again.choice().source, again.algo()),
        (Source::Wisdom, winner)
    );
    assert_eq!(tune::measurement_count(), n);

    // Round trip through a file.
    let path = dir.join("wisdom.json");
    tune::save_wisdom(&path).unwrap();
    tune::clear_cache();
    assert_eq!(tune::load_wisdom(&path).unwrap(), 1);
    let n = tune::measurement_count();
    let from_file = Plan::new(&spec, &w, Some(&b), &opts).unwrap();
    assert_eq!(
        (from_file.choice().source, from_file.algo()),
        (Source::Wisdom, winner)
    );
    assert_eq!(
        tune::measurement_count(),
        n,
        "a plan from wisdom performs zero measurements"
    );

    // A different thread count is a miss: it measures again.
    let two = PlanOptions {
        threads: Some(2),
        ..opts.clone()
    };
    assert_eq!(
        Plan::new(&spec, &w, Some(&b), &two)
            .unwrap()
            .choice()
            .source,
        Source::Measured
    );

    // Bad files are errors from load_wisdom (callers warn and go on), never panics, and
    // leave the cache as it was.
    let text = std::fs::read_to_string(&path).unwrap();
    for (name, bytes) in [
        ("truncated.json", text.as_bytes()[..text.len() / 2].to_vec()),
        ("garbage.json", b"\x00\xff not json".to_vec()),
        (
            "foreign.json",
            br#"{"format": "fftw-wisdom", "entries": {}}"#.to_vec(),
        ),
        (
            "noentries.json",
            br#"{"format": "convkit-wisdom"}"#.to_vec(),
        ),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        assert!(tune::load_wisdom(&p).is_err(), "{name} should be refused");
    }
    // Unknown algorithms inside a valid file are skipped, not fatal.
    let odd = dir.join("odd.json");
    std::fs::write(
        &odd,
        br#"{"format": "convkit-wisdom", "entries": {"k": {"algo": "quantum"}}}"#,
    )
    .unwrap();
    assert_eq!(tune::load_wisdom(&odd).unwrap(), 0);

    // Heuristic mode measures nothing.
    tune::clear_cache();
    let n = tune::measurement_count();
    let h = Plan::new(
        &spec,
        &w,
        Some(&b),
        &PlanOptions {
            threads: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(h.choice().source, Source::Heuristic);
    assert_eq!(tune::measurement_count(), n);

    // Concurrent planning shares the cache safely, and saving while others plan leaves a
    // valid file.
    std::thread::scope(|s| {
        for i in 0..4 {
            let (spec, w, b, opts, path) = (&spec, &w, &b, &opts, &path);
            s.spawn(move || {
                let p = Plan::new(spec, w, Some(b), opts).unwrap();
                assert!(p.algo().accepts(&geom(spec)));
                if i % 2 == 0 {
                    tune::save_wisdom(path).unwrap();
                }
            });
        }
    });
    assert!(tune::load_wisdom(&path).unwrap() >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A challenger that beats the heuristic's pick only while the pick's runs hit a slow burst
/// is timed against it again, and the pick keeps the layer; a challenger that is faster
/// throughout wins. (Scripted times, no real measurement: the budget of 0 ms gives the
/// minimum of 3 rounds after the warm-up.)
#[test]
fn measuring_rechecks_a_challenger_against_the_first_candidate() {
    let script = |burst_calls: usize| {
        let mut calls_a = 0;
        move |algo: Algo| -> Option<f64> {
            Some(match algo {
                Algo::Direct => {
                    calls_a += 1;
                    // Slow (1.3 ms) in a burst, 1.0 ms after it.
                    if calls_a <= burst_calls {
                        1.3
                    } else {
                        1.0
                    }
                }
                _ => 1.1,
            })
        }
    };
    let mode = TuneMode::Measure { budget_ms: 0 };
    let cands = [Algo::Direct, Algo::Im2col];
    // The warm-up and the 3 rounds (4 calls) fall in the burst; the recheck does not.
    let choice = tune::measure(&cands, &mode, script(4)).unwrap();
    assert_eq!(choice.algo, Algo::Direct, "times {:?}", choice.times_ms);
    let direct = choice
        .times_ms
        .iter()
        .find(|r| r.0 == Algo::Direct)
        .unwrap();
    assert_eq!(direct.1, 1.0, "the recheck's runs count");
    // Slow throughout: the challenger is really faster and wins.
    let choice = tune::measure(&cands, &mode, script(usize::MAX)).unwrap();
    assert_eq!(choice.algo, Algo::Im2col, "times {:?}", choice.times_ms);
}

/// In `Measure` mode a candidate whose warm-up is over 4x the fastest warm-up is not timed
/// again (its warm-up stands as its time), one whose best of two rounds is over 2x the
/// fastest median stops after the second round, and the rest run every round; `Exhaustive`
/// times every candidate in every round. (Scripted times; `Measure`'s budget of 0 gives the
/// warm-up and the minimum of 3 rounds.)
#[test]
fn measuring_drops_hopeless_candidates_early() {
    use std::collections::HashMap;
    let cands = [Algo::Direct, Algo::Im2col, Algo::DirectOc, Algo::Gemm1x1];
    let run = |mode: TuneMode| {
        let mut calls: HashMap<Algo, usize> = HashMap::new();
        let choice = tune::measure(&cands, &mode, |algo| {
            *calls.entry(algo).or_default() += 1;
            Some(match algo {
                Algo::Direct => 1.0,
                Algo::Im2col => 1.5,
                Algo::DirectOc => 2.5,
                _ => 5.0,
            })
        })
        .unwrap();
        (choice, calls)
    };
    let (choice, calls) = run(TuneMode::Measure { budget_ms: 0 });
    assert_eq!(choice.algo, Algo::Direct, "times {:?}", choice.times_ms);
    assert_eq!(calls[&Algo::Direct], 4, "warm-up and 3 rounds");
    assert_eq!(calls[&Algo::Im2col], 4, "1.5x: every round");
    assert_eq!(calls[&Algo::DirectOc], 3, "2.5x: warm-up and 2 rounds");
    assert_eq!(calls[&Algo::Gemm1x1], 1, "5x: the warm-up only");
    let gemm = choice.times_ms.iter().find(|r| r.0 == Algo::Gemm1x1);
    assert_eq!(gemm.map(|r| r.1), Some(5.0), "the warm-up's time is kept");
    let (choice, calls) = run(TuneMode::Exhaustive);
    assert_eq!(choice.algo, Algo::Direct);
    let every = calls[&Algo::Direct];
    assert!(
        every >= 4 && cands.iter().all(|a| calls[a] == every),
        "calls {calls:?}"
    );
}
