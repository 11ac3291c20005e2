//! Convolution benchmarks over the suite: ids `conv/{layer}/{algo}`, throughput in FLOPs
//! (the suite's count), one thread, weights packed outside the timing.
//!
//! `cargo bench --bench conv` (filter: `cargo bench --bench conv -- vgg16`).

use convkit::init::Rng;
use convkit::{algo, Algo, Geometry, Plan, PlanOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

fn bench_conv(c: &mut Criterion) {
    let layers = convkit::spec::parse_suite(include_str!("layers.json")).expect("the suite parses");
    for spec in layers {
        let g = Geometry::new(&spec).expect("suite layers are valid");
        let name = spec.name.clone().unwrap_or_default();
        let mut rng = Rng::new(1);
        let mut fill = |n: usize| {
            (0..n)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect::<Vec<f32>>()
        };
        let (x, w) = (fill(g.input_len()), fill(g.weight_len()));
        let b = g.epilogue.bias.then(|| fill(g.out_channels));
        let r = g.epilogue.residual.then(|| fill(g.conv_output_len()));
        let mut y = vec![0f32; g.output_len()];
        let mut group = c.benchmark_group(format!("conv/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(g.flops()));
        for al in algo::accepting(&g)
            .into_iter()
            .filter(|a| *a != Algo::Reference)
        {
            let opts = PlanOptions {
                algo: Some(al.name().into()),
                threads: Some(1),
                ..Default::default()
            };
            let plan = Plan::new(&spec, &w, b.as_deref(), &opts).expect("plan");
            group.bench_function(BenchmarkId::from_parameter(al.name()), |bch| {
                bch.iter(|| plan.run(black_box(&x), r.as_deref(), &mut y).expect("run"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
