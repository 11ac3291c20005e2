//! Reliability: NaN and Inf propagate as in the reference on every algorithm and tier; no
//! algorithm reads past the caller's input or writes past its output (guard pages: an overrun
//! faults natively, AVX-512 included, where valgrind cannot look); denormal weights are
//! flushed at pack time.

use convkit::init::Rng;
use convkit::reference::{self, Operands};
use convkit::{algo, Activation, ConvSpec, Geometry, Padding, Plan, PlanOptions, Pool, PoolWindow};

fn specs() -> Vec<ConvSpec> {
    let maxpool = Pool::Max(PoolWindow {
        size: vec![2, 2],
        stride: vec![2, 2],
        padding: vec![(0, 0); 2],
    });
    vec![
        ConvSpec::new(&[1, 5, 9, 10], 7, &[3, 3])
            .with_padding(Padding::Same)
            .with_activation(Activation::Relu)
            .with_pool(Some(maxpool)),
        ConvSpec::new(&[1, 6, 8, 8], 6, &[3, 3])
            .with_groups(6)
            .with_padding(Padding::Symmetric(vec![1, 1]))
            .with_activation(Activation::Gelu),
        ConvSpec::new(&[1, 8, 6, 6], 5, &[1, 1]).with_activation(Activation::Sigmoid),
        ConvSpec::new(&[1, 3, 30], 4, &[5])
            .with_stride(&[2])
            .with_activation(Activation::Silu)
            .with_pool(Some(Pool::GlobalMax)),
    ]
}

#[test]
fn nan_and_inf_propagate_as_in_the_reference() {
    for (i, spec) in specs().into_iter().enumerate() {
        let g = Geometry::new(&spec).unwrap();
        let mut rng = Rng::new(i as u64);
        let mut x: Vec<f32> = (0..g.input_len())
            .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
            .collect();
        let w: Vec<f32> = (0..g.weight_len())
            .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
            .collect();
        let b = vec![0.1f32; g.out_channels];
        x[g.input_len() / 3] = f32::NAN;
        x[g.input_len() / 2 + 1] = f32::INFINITY;
        let ops = Operands {
            input: &x,
            weight: &w,
            bias: Some(&b),
            residual: None,
        };
        let want = reference::forward_f64(&g, &ops).unwrap();
        assert!(
            want.iter().any(|v| v.is_nan()),
            "case {i}: the NaN must reach the output"
        );
        for isa in convkit::arch::available_isas() {
            for al in algo::accepting(&g) {
                let opts = PlanOptions {
                    algo: Some(al.name().into()),
                    isa: Some(isa.name().into()),
                    ..Default::default()
                };
                let plan = Plan::new(&spec, &w, Some(&b), &opts).unwrap();
                let mut y = vec![0f32; g.output_len()];
                plan.run(&x, None, &mut y).unwrap();
                let winograd = al.name().starts_with("winograd");
                for (k, (&got, &r)) in y.iter().zip(&want).enumerate() {
                    if winograd {
                        // Winograd mixes a tile's inputs: every non-finite reference output
                        // is non-finite, and a finite one may be NaN when its tile holds a
                        // non-finite input (`winograd_confines_non_finite_inputs_to_their_tiles`
                        // checks that bound).
                        assert!(
                            r.is_finite() || !got.is_finite(),
                            "case {i}, {} on {}: element {k} is {got}, reference {r}",
                            al.name(),
                            isa.name()
                        );
                        if !got.is_finite() {
                            continue;
                        }
                    } else {
                        let same_class = got.is_nan() == r.is_nan()
                            && (got.is_infinite() == r.is_infinite())
                            && (!got.is_infinite()
                                || got.is_sign_positive() == r.is_sign_positive());
                        assert!(
                            same_class,
                            "case {i}, {} on {}: element {k} is {got}, reference {r}",
                            al.name(),
                            isa.name()
                        );
                    }
                    if r.is_finite() {
                        assert!(
                            (got as f64 - r).abs() <= 1e-3 * r.abs().max(1.0),
                            "case {i}, {}: {got} vs {r}",
                            al.name()
                        );
                    }
                }
            }
        }
    }
}

/// A non-finite input spoils only the Winograd tiles whose input window holds it: an output
/// in tile (tr, tc) (m x m outputs) reads padded rows tr*m .. tr*m + m + 1 and the same
/// columns; every output whose window is clean matches the reference.
#[test]
fn winograd_confines_non_finite_inputs_to_their_tiles() {
    for (variant, m) in [
        ("winograd_f2x3", 2),
        ("winograd_f4x3", 4),
        ("winograd_f6x3", 6),
    ] {
        for spec in [
            ConvSpec::new(&[1, 3, 17, 19], 4, &[3, 3]).with_padding(Padding::Same),
            ConvSpec::new(&[1, 3, 40], 4, &[3]).with_padding(Padding::Symmetric(vec![2])),
        ] {
            let g = Geometry::new(&spec).unwrap();
            let two_d = g.spatial_rank == 2;
            let mut rng = Rng::new(3);
            let mut x: Vec<f32> = (0..g.input_len())
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            let w: Vec<f32> = (0..g.weight_len())
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            let b = vec![0.0f32; g.out_channels];
            // One NaN in channel 1 at input (y, x) = (7, 9) (1-D: position 9).
            let (iy, ix) = if two_d { (7, 9) } else { (0, 9) };
            x[g.input_area() + iy * g.input[1] + ix] = f32::NAN;
            let ops = Operands {
                input: &x,
                weight: &w,
                bias: Some(&b),
                residual: None,
            };
            let want = reference::forward_f64(&g, &ops).unwrap();
            let s = reference::magnitude(&g, &ops).unwrap();
            for isa in convkit::arch::available_isas() {
                let opts = PlanOptions {
                    algo: Some(variant.into()),
                    isa: Some(isa.name().into()),
                    ..Default::default()
                };
                let plan = Plan::new(&spec, &w, Some(&b), &opts).unwrap();
                let mut y = vec![0f32; g.output_len()];
                plan.run(&x, None, &mut y).unwrap();
                let [oh, ow] = g.conv_out;
                let (py, px) = (iy + g.pad_before[0], ix + g.pad_before[1]);
                let mh = if two_d { m } else { 1 };
                let mut spoiled = 0;
                for co in 0..g.out_channels {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (ty, tx) = (oy / mh * mh, ox / m * m);
                            let hit_rows = if two_d {
                                py >= ty && py < ty + m + 2
                            } else {
                                true
                            };
                            let hit = hit_rows && px >= tx && px < tx + m + 2;
                            let k = (co * oh + oy) * ow + ox;
                            if hit {
                                spoiled += 1;
                                continue;
                            }
                            let err = (y[k] as f64 - want[k]).abs() / s.max(1e-30);
                            assert!(
                                err <= 1e-3,
                                "{variant} on {}: output ({co},{oy},{ox}) = {} outside the NaN's tiles, reference {}",
                                isa.name(),
                                y[k],
                                want[k]
                            );
                        }
                    }
                }
                assert!(spoiled > 0 && y.iter().any(|v| v.is_nan()));
            }
        }
    }
}

/// A buffer of `len` floats whose last float ends exactly at a page that faults on access.
#[cfg(unix)]
struct Guarded {
    base: *mut libc::c_void,
    total: usize,
    offset: usize,
    len: usize,
}

#[cfg(unix)]
impl Guarded {
    fn new(len: usize) -> Guarded {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * 4).div_ceil(page) * page;
        let total = bytes + page;
        // SAFETY: an anonymous private mapping; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: the last page lies inside the mapping just made.
        let rc = unsafe {
            libc::mprotect(
                (base as *mut u8).add(bytes) as *mut libc::c_void,
                page,
                libc::PROT_NONE,
            )
        };
        assert_eq!(rc, 0);
        Guarded {
            base,
            total,
            offset: bytes - len * 4,
            len,
        }
    }
    fn slice(&mut self) -> &mut [f32] {
        // SAFETY: offset..offset + 4 len lies in the readable part of the mapping, 4-aligned
        // (bytes and page are multiples of 4), and self is borrowed mutably.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.base as *mut u8).add(self.offset) as *mut f32,
                self.len,
            )
        }
    }
}

#[cfg(unix)]
impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in new.
        unsafe { libc::munmap(self.base, self.total) };
    }
}

#[cfg(unix)]
#[test]
fn no_algorithm_reads_or_writes_past_the_callers_buffers() {
    let extra = vec![
        ConvSpec::new(&[1, 16, 12, 12], 13, &[3, 3])
            .with_padding(Padding::Same)
            .with_residual(true),
        ConvSpec::new(&[2, 4, 7, 9], 6, &[2, 3])
            .with_stride(&[2, 2])
            .with_dilation(&[1, 2])
            .with_padding(Padding::Explicit(vec![(1, 0), (0, 2)])),
        ConvSpec::new(&[1, 20, 40], 12, &[1]),
    ];
    for spec in specs().into_iter().chain(extra) {
        let g = Geometry::new(&spec).unwrap();
        let w = vec![0.25f32; g.weight_len()];
        let b = spec.bias.then(|| vec![0.5f32; g.out_channels]);
        let mut x = Guarded::new(g.input_len());
        x.slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 7) as f32 * 0.1);
        let mut r = spec.residual.then(|| Guarded::new(g.conv_output_len()));
        if let Some(r) = r.as_mut() {
            r.slice().fill(1.0);
        }
        for isa in convkit::arch::available_isas() {
            for al in algo::accepting(&g) {
                let opts = PlanOptions {
                    algo: Some(al.name().into()),
                    isa: Some(isa.name().into()),
                    threads: Some(2),
                    ..Default::default()
                };
                let plan = Plan::new(&spec, &w, b.as_deref(), &opts).unwrap();
                let mut y = Guarded::new(g.output_len());
                let res = r.as_mut().map(|r| &*r.slice());
                plan.run(x.slice(), res, y.slice()).unwrap();
                assert!(
                    y.slice().iter().all(|v| v.is_finite()),
                    "{} on {}",
                    al.name(),
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn denormal_weights_are_flushed_at_pack_time_within_tolerance() {
    let spec = ConvSpec::new(&[1, 8, 10, 10], 8, &[3, 3])
        .with_padding(Padding::Same)
        .with_bias(false);
    let g = Geometry::new(&spec).unwrap();
    let mut w = vec![1e-39f32; g.weight_len()]; // denormal
    w[0] = 1.0;
    let x = vec![1.0f32; g.input_len()];
    let ops = Operands {
        input: &x,
        weight: &w,
        bias: None,
        residual: None,
    };
    let want = reference::forward_f64(&g, &ops).unwrap();
    let s = reference::magnitude(&g, &ops).unwrap();
    for al in algo::accepting(&g) {
        let plan = Plan::new(
            &spec,
            &w,
            None,
            &PlanOptions {
                algo: Some(al.name().into()),
                ..Default::default()
            },
        )
        .unwrap();
        let mut y = vec![0f32; g.output_len()];
        plan.run(&x, None, &mut y).unwrap();
        let c = reference::compare(&y, &want, s);
        assert!(
            c.normalized_err <= 1e-4,
            "{}: {:e}",
            al.name(),
            c.normalized_err
        );
        // Flushed: with the one normal weight at tap 0 of filter 0, every output of the other
        // filters is exactly 0 (the reference's 1e-39 sums are not).
        if al != convkit::Algo::Reference {
            let plane = g.conv_output_len() / g.out_channels;
            assert!(
                y[plane..].iter().all(|&v| v == 0.0),
                "{}: denormal weights were not flushed",
                al.name()
            );
        }
    }
    assert_eq!(convkit::gemm::flush_denormal(1e-39), 0.0);
    assert_eq!(convkit::gemm::flush_denormal(-2.5), -2.5);
}

#[test]
fn nested_in_a_callers_rayon_pool_without_deadlock() {
    use rayon::prelude::*;
    let spec = ConvSpec::new(&[1, 16, 20, 20], 16, &[3, 3]).with_padding(Padding::Same);
    let g = Geometry::new(&spec).unwrap();
    let w = vec![0.1f32; g.weight_len()];
    let b = vec![0.0f32; 16];
    let x = vec![1.0f32; g.input_len()];
    let shared = Plan::new(&spec, &w, Some(&b), &PlanOptions::default()).unwrap();
    let private = Plan::new(
        &spec,
        &w,
        Some(&b),
        &PlanOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let mut want = vec![0f32; g.output_len()];
    shared.run(&x, None, &mut want).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let outs: Vec<Vec<f32>> = pool.install(|| {
        (0..12)
            .into_par_iter()
            .map(|i| {
                let plan = if i % 2 == 0 { &shared } else { &private };
                let mut y = vec![0f32; g.output_len()];
                plan.run(&x, None, &mut y).unwrap();
                y
            })
            .collect()
    });
    for y in outs {
        assert_eq!(y, want, "nested runs must give the sequential result");
    }
}

#[test]
fn large_dynamic_range_stays_within_tolerance() {
    // Inputs spanning 1e-6 .. 1e6 and weights 1e-3 .. 1e3 in one layer.
    let spec = ConvSpec::new(&[1, 12, 9, 9], 10, &[3, 3]).with_padding(Padding::Same);
    let g = Geometry::new(&spec).unwrap();
    let mut rng = Rng::new(5);
    let mut mag = |lo: f64, hi: f64| {
        let e = rng.uniform_in(lo, hi);
        let s = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        (s * 10f64.powf(e)) as f32
    };
    let x: Vec<f32> = (0..g.input_len()).map(|_| mag(-6.0, 6.0)).collect();
    let w: Vec<f32> = (0..g.weight_len()).map(|_| mag(-3.0, 3.0)).collect();
    let b = vec![1e4f32; 10];
    let ops = Operands {
        input: &x,
        weight: &w,
        bias: Some(&b),
        residual: None,
    };
    let want = reference::forward_f64(&g, &ops).unwrap();
    let s = reference::magnitude(&g, &ops).unwrap();
    for isa in convkit::arch::available_isas() {
        for al in algo::accepting(&g) {
            let opts = PlanOptions {
                algo: Some(al.name().into()),
                isa: Some(isa.name().into()),
                ..Default::default()
            };
            let plan = Plan::new(&spec, &w, Some(&b), &opts).unwrap();
            let mut y = vec![0f32; g.output_len()];
            plan.run(&x, None, &mut y).unwrap();
            let c = reference::compare(&y, &want, s);
            assert!(
                c.normalized_err <= 1e-4,
                "{} on {}: {:e} x S",
                al.name(),
                isa.name(),
                c.normalized_err
            );
        }
    }
}
