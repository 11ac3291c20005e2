//! Kernel-level and pass-level benchmarks, throughput in FLOPs (or tiles):
//!
//! - `ukernel/{name}`: every GEMM microkernel of every tier this CPU runs, one MR x NR tile
//!   with k = 256 and both panels in L1 (the kernel's own ceiling);
//! - `winograd/{variant}/{input|output}`: the transforms of one channel over 8x56 tiles
//!   (throughput in tiles);
//! - `backward/{layer}/{data|weights}`: the gradients on a few suite layers, one thread;
//! - `quick/{layer}`: four suite layers with the heuristic's algorithm, a few seconds in all:
//!   the regression check to run before merging, against a saved baseline:
//!   `cargo bench --bench kernels -- quick --save-baseline main` on main, then
//!   `cargo bench --bench kernels -- quick --baseline main` on the change.

use convkit::arch::winograd::{VLayout, Variant, WinoInput, WinoOutput, LANES};
use convkit::arch::{available_isas, run_gemm_tile, BPanel, GemmBias, SharedMut};
use convkit::backward::{backward_data_into, backward_weights_into, DataWeights};
use convkit::init::Rng;
use convkit::{Geometry, Plan, PlanOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.uniform_in(-1.0, 1.0) as f32).collect()
}

fn suite_layer(name: &str) -> convkit::ConvSpec {
    convkit::spec::parse_suite(include_str!("layers.json"))
        .expect("the suite parses")
        .into_iter()
        .find(|s| s.name.as_deref() == Some(name))
        .expect("a suite layer")
}

fn bench_ukernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("ukernel");
    g.sample_size(20).measurement_time(Duration::from_secs(1));
    let k = 256;
    for isa in available_isas() {
        for uk in isa.kernels().expect("available").gemm {
            let a = fill(k * uk.mr, 1);
            let b = fill(k * uk.nr, 2);
            let mut cbuf = vec![0f32; uk.mr * uk.nr];
            g.throughput(Throughput::Elements((2 * k * uk.mr * uk.nr) as u64));
            g.bench_function(BenchmarkId::from_parameter(uk.name), |bch| {
                bch.iter(|| {
                    let shared = SharedMut::new(&mut cbuf);
                    run_gemm_tile(
                        uk,
                        k,
                        black_box(&a),
                        BPanel::Packed(black_box(&b)),
                        &shared,
                        0,
                        uk.nr,
                        uk.mr,
                        uk.nr,
                        false,
                        true,
                        GemmBias::None,
                        (f32::NEG_INFINITY, f32::INFINITY),
                    )
                })
            });
        }
    }
    g.finish();
}

fn bench_winograd(c: &mut Criterion) {
    let mut g = c.benchmark_group("winograd");
    g.sample_size(20).measurement_time(Duration::from_secs(1));
    let kernels = convkit::arch::best_isa().kernels().expect("best tier");
    for v in [Variant::F2, Variant::F4, Variant::F6] {
        let (m, a) = (v.m(), v.alpha());
        let (tiles_w, tiles_h) = (56, 8);
        let (pw, ph) = (tiles_w * m + 2, tiles_h * m + 2);
        let plane = fill(pw * ph, 3);
        let n = tiles_w * tiles_h;
        let ld = n.div_ceil(LANES) * LANES;
        let mut vbuf = vec![0f32; a * a * ld];
        let mm = fill(a * a * ld, 4);
        let mut y = vec![0f32; tiles_h * m * tiles_w * m];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new(format!("{v:?}"), "input"), |bch| {
            bch.iter(|| {
                let out = convkit::arch::SharedMut::new(&mut vbuf);
                (kernels.winograd.input)(&mut WinoInput {
                    variant: v,
                    two_d: true,
                    plane: black_box(&plane),
                    pw,
                    tiles_w,
                    t0: 0,
                    n,
                    phase_tiles: usize::MAX,
                    phase_stride: 0,
                    out: &out,
                    layout: VLayout::rows(0, ld),
                })
            })
        });
        g.bench_function(BenchmarkId::new(format!("{v:?}"), "output"), |bch| {
            bch.iter(|| {
                (kernels.winograd.output)(&mut WinoOutput {
                    variant: v,
                    two_d: true,
                    m: black_box(&mm),
                    ld,
                    tiles_w,
                    tile_row0: 0,
                    t0: 0,
                    n,
                    phase_tiles: usize::MAX,
                    phase_stride: 0,
                    out: &mut y,
                    ow: tiles_w * m,
                    r0: 0,
                    r1: tiles_h * m,
                    bias: 0.1,
                    accumulate: false,
                    clamp: (0.0, f32::INFINITY),
                    activation: None,
                })
            })
        });
    }
    g.finish();
}

fn bench_backward(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool");
    let kernels = convkit::arch::best_isa().kernels().expect("best tier");
    for name in ["resnet50.res3.3x3", "resnet50.res4.3x3", "vgg16.conv5_3"] {
        let spec = suite_layer(name);
        let g = Geometry::new(&spec).expect("valid");
        let (x, w, dz) = (
            fill(g.input_len(), 5),
            fill(g.weight_len(), 6),
            fill(g.conv_output_len(), 7),
        );
        let data = DataWeights::new(&g, kernels, &w).expect("weights fit");
        let (mut dx, mut dw) = (vec![0f32; g.input_len()], vec![0f32; g.weight_len()]);
        let mut group = c.benchmark_group(format!("backward/{name}"));
        group
            .sample_size(10)
            .throughput(Throughput::Elements(g.flops()));
        group.bench_function("data", |bch| {
            bch.iter(|| {
                pool.install(|| backward_data_into(&data, black_box(&dz), &mut dx))
                    .expect("lengths match")
            })
        });
        group.bench_function("weights", |bch| {
            bch.iter(|| {
                pool.install(|| backward_weights_into(&g, kernels, black_box(&x), &dz, &mut dw))
                    .expect("lengths match")
            })
        });
        group.finish();
    }
}

fn bench_quick(c: &mut Criterion) {
    let mut group = c.benchmark_group("quick");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for name in [
        "resnet50.res4.3x3",
        "resnet50.res4.1x1",
        "mobilenetv2.dw112",
        "googlenet.inc3a.5x5",
    ] {
        let spec = suite_layer(name);
        let g = Geometry::new(&spec).expect("valid");
        let (x, w) = (fill(g.input_len(), 8), fill(g.weight_len(), 9));
        let b = g.epilogue.bias.then(|| fill(g.out_channels, 10));
        let r = g.epilogue.residual.then(|| fill(g.conv_output_len(), 11));
        let opts = PlanOptions {
            threads: Some(1),
            ..Default::default()
        };
        let plan = Plan::new(&spec, &w, b.as_deref(), &opts).expect("plan");
        let mut y = vec![0f32; g.output_len()];
        group.throughput(Throughput::Elements(g.flops()));
        group.bench_function(BenchmarkId::from_parameter(name), |bch| {
            bch.iter(|| plan.run(black_box(&x), r.as_deref(), &mut y).expect("run"))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_ukernels,
    bench_winograd,
    bench_backward,
    bench_quick
);
criterion_main!(benches);
