//! GEMM benchmarks: square sizes and the suite's im2col shapes (M = Cout, K = Cin*KH*KW,
//! N = OH*OW), per tier and microkernel, throughput in FLOPs. With `--features bench-peers`
//! the `matrixmultiply` and `gemm` crates run side by side in the same run.
//!
//! `cargo bench --bench gemm` (add `--features bench-peers` for the peers).

use convkit::arch::{available_isas, SharedMut};
use convkit::gemm::{gemm_packed, Blocking, GemmEpilogue, PackedA, StridedB};
use convkit::kernels::GemmUkernel;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

fn shapes() -> Vec<(String, usize, usize, usize)> {
    let mut v: Vec<(String, usize, usize, usize)> = [256, 512, 1024, 2048]
        .iter()
        .map(|&s| (format!("sq{s}"), s, s, s))
        .collect();
    v.push(("vgg16.conv3_3".into(), 256, 3136, 2304));
    v.push(("resnet50.res2.3x3".into(), 64, 3136, 576));
    v.push(("resnet50.res4.1x1".into(), 256, 196, 1024));
    v.push(("wav2vec2.conv1".into(), 512, 1599, 1536));
    v
}

/// `out = A B` with A prepacked and B (row-major, `n` columns) packed inside the call, as in
/// a plan; in parallel on the current pool when `parallel`.
fn run_packed(
    uk: &GemmUkernel,
    bl: &Blocking,
    pa: &PackedA,
    b: &[f32],
    n: usize,
    out: &mut [f32],
    parallel: bool,
) {
    let src = StridedB {
        data: black_box(b),
        rs: n,
        cs: 1,
    };
    let sc = SharedMut::new(out);
    gemm_packed(
        uk,
        bl,
        pa,
        &src,
        n,
        &sc,
        0,
        n,
        GemmEpilogue::default(),
        parallel,
    );
}

fn bench_gemm(c: &mut Criterion) {
    for (label, m, n, k) in shapes() {
        let mut g = c.benchmark_group(format!("gemm/{label}"));
        g.sample_size(10);
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut out = vec![0f32; m * n];
        for isa in available_isas() {
            for uk in isa.kernels().expect("available").gemm {
                let bl = Blocking::derive(uk, convkit::sysinfo::caches());
                // Weights are prepacked as in a plan: A is packed outside the timing.
                let pa = PackedA::from_row_major(&a, m, k, k, uk.mr, &bl);
                g.bench_function(BenchmarkId::new(uk.name, "1t"), |bch| {
                    bch.iter(|| run_packed(uk, &bl, &pa, &b, n, &mut out, false))
                });
            }
        }
        // Two threads on the tier's default kernel for the large squares (issue target:
        // 2048 on 2 threads >= 1.85x one thread), in a private pool of 2.
        if m >= 1024 {
            let uk = convkit::arch::best_isa()
                .kernels()
                .expect("detected")
                .gemm_default();
            let bl = Blocking::derive(uk, convkit::sysinfo::caches());
            let pa = PackedA::from_row_major(&a, m, k, k, uk.mr, &bl);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("a pool of 2");
            g.bench_function(BenchmarkId::new(uk.name, "2t"), |bch| {
                bch.iter(|| pool.install(|| run_packed(uk, &bl, &pa, &b, n, &mut out, true)))
            });
        }
        #[cfg(feature = "bench-peers")]
        {
            g.bench_function(BenchmarkId::new("matrixmultiply", "1t"), |bch| {
                bch.iter(|| unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        k as isize,
                        1,
                        b.as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                })
            });
            g.bench_function(BenchmarkId::new("gemm-crate", "1t"), |bch| {
                bch.iter(|| unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
