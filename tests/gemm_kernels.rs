//! Every GEMM microkernel of every tier this CPU runs, over the edge grid, against an f64
//! reference, with canaries around the C tile; then whole GEMMs over awkward shapes, and
//! bitwise determinism across thread counts.

use convkit::arch::{
    available_isas, run_gemm_column_in_place, run_gemm_tile, run_oc_tile, BPanel, GemmBias,
    OffsetTable, SharedMut, ALL_ISAS,
};
use convkit::gemm::{sgemm, Blocking, GemmEpilogue};
use convkit::init::Rng;

const CANARY: f32 = -7.77e33;

fn rand_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
}

#[test]
fn tiers_not_available_are_reported_not_silently_skipped() {
    for isa in ALL_ISAS {
        if !isa.is_available() {
            eprintln!(
                "NOTE: tier {} is not available on this CPU; its kernels are not run here",
                isa.name()
            );
            assert!(isa.kernels().is_err());
        }
    }
    assert!(available_isas().contains(&convkit::Isa::Portable));
}

#[test]
fn every_microkernel_over_the_edge_grid() {
    let mut rng = Rng::new(1);
    let mut checked = 0;
    for isa in available_isas() {
        for uk in isa.kernels().unwrap().gemm {
            for &k in &[0usize, 1, 2, 3, 8, 17, 256] {
                for m in [1, uk.mr / 2 + 1, uk.mr] {
                    for n in [1, uk.nr / 2 + 1, uk.nr - 1, uk.nr] {
                        for (bias_kind, load_c, finish, clamp) in [
                            (0, false, true, (f32::NEG_INFINITY, f32::INFINITY)),
                            (1, true, true, (0.0, f32::INFINITY)),
                            (2, false, true, (-0.5, 0.25)),
                            (0, true, false, (0.0, 0.0)),
                        ] {
                            let a = rand_vec(&mut rng, k * uk.mr);
                            let b = rand_vec(&mut rng, k * uk.nr);
                            let bias = rand_vec(&mut rng, uk.mr.max(uk.nr));
                            let rsc = uk.nr + 5; // strided C
                            let rows = uk.mr + 2;
                            let mut c = vec![CANARY; rows * rsc + 3];
                            let c0: Vec<f32> = rand_vec(&mut rng, c.len());
                            let off = rsc + 1; // one canary row and column before the tile
                            for i in 0..m {
                                for j in 0..n {
                                    c[off + i * rsc + j] = c0[off + i * rsc + j];
                                }
                            }
                            let gb = match bias_kind {
                                1 => GemmBias::Row(&bias),
                                2 => GemmBias::Col(&bias),
                                _ => GemmBias::None,
                            };
                            // The same tile through indirect B: rows scattered in reverse order
                            // with gaps must give bitwise the same result as the packed panel.
                            let gap = uk.nr + 3;
                            let mut scattered = vec![f32::NAN; 1 + k * gap + uk.nr];
                            let mut offs = Vec::with_capacity(k);
                            for p in 0..k {
                                let o = (k - 1 - p) * gap;
                                scattered[1 + o..1 + o + uk.nr]
                                    .copy_from_slice(&b[p * uk.nr..(p + 1) * uk.nr]);
                                offs.push(o);
                            }
                            let table = OffsetTable::new(offs);
                            let mut c_ind = c.clone();
                            // And through A read in place: rows `a_rs` apart with NaN between
                            // them, the buffer ending at row m - 1's last element.
                            let a_rs = k + 3;
                            let mut a_rows = vec![f32::NAN; 2 + (m - 1) * a_rs + k];
                            for i in 0..m {
                                for p in 0..k {
                                    a_rows[2 + i * a_rs + p] = a[p * uk.mr + i];
                                }
                            }
                            let mut c_rows = c.clone();
                            {
                                let sc = SharedMut::new(&mut c_rows);
                                // Prefetching (here B itself) changes nothing.
                                run_gemm_column_in_place(
                                    uk, k, &a_rows, 2, a_rs, &b, &b, &sc, off, rsc, m, n, load_c,
                                    finish, gb, clamp,
                                );
                            }
                            {
                                let sc = SharedMut::new(&mut c);
                                run_gemm_tile(
                                    uk,
                                    k,
                                    &a,
                                    BPanel::Packed(&b),
                                    &sc,
                                    off,
                                    rsc,
                                    m,
                                    n,
                                    load_c,
                                    finish,
                                    gb,
                                    clamp,
                                );
                                let sc = SharedMut::new(&mut c_ind);
                                let ind = BPanel::Indirect {
                                    x: &scattered,
                                    base: 1,
                                    offsets: &table,
                                };
                                run_gemm_tile(
                                    uk, k, &a, ind, &sc, off, rsc, m, n, load_c, finish, gb, clamp,
                                );
                            }
                            assert!(
                                c.iter()
                                    .zip(&c_ind)
                                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{}: indirect B differs from packed B (k={k} m={m} n={n})",
                                uk.name
                            );
                            assert!(
                                c.iter()
                                    .zip(&c_rows)
                                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{}: A in place differs from packed A (k={k} m={m} n={n})",
                                uk.name
                            );
                            for idx in 0..c.len() {
                                let (i, j) = (
                                    (idx as isize - off as isize).div_euclid(rsc as isize),
                                    (idx as isize - off as isize).rem_euclid(rsc as isize),
                                );
                                let inside = i >= 0 && (i as usize) < m && (j as usize) < n;
                                if !inside {
                                    assert_eq!(
                                        c[idx].to_bits(),
                                        CANARY.to_bits(),
                                        "{} wrote outside the tile at {idx} (k={k} m={m} n={n})",
                                        uk.name
                                    );
                                    continue;
                                }
                                let (i, j) = (i as usize, j as usize);
                                let mut want: f64 = (0..k)
                                    .map(|p| a[p * uk.mr + i] as f64 * b[p * uk.nr + j] as f64)
                                    .sum();
                                if load_c {
                                    want += c0[idx] as f64;
                                }
                                if finish {
                                    want += match bias_kind {
                                        1 => bias[i] as f64,
                                        2 => bias[j] as f64,
                                        _ => 0.0,
                                    };
                                    want = want.clamp(clamp.0 as f64, clamp.1 as f64);
                                }
                                let tol = 1e-5 * (k as f64 + 2.0);
                                assert!(
                                    (c[idx] as f64 - want).abs() <= tol,
                                    "{}: k={k} m={m} n={n} at ({i},{j}): {} vs {want}",
                                    uk.name,
                                    c[idx]
                                );
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 0);
}

fn gemm_ref(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p] as f64;
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j] as f64;
            }
        }
    }
    c
}

#[test]
fn whole_gemms_over_awkward_shapes_on_every_tier() {
    let mut rng = Rng::new(2);
    let shapes = [
        (1, 1, 1),
        (0, 5, 3),
        (5, 0, 3),
        (7, 13, 0),
        (13, 1, 29),
        (1, 97, 31),
        (61, 67, 71),
        (300, 7, 5),
        (3, 300, 600),
        (40, 130, 257),
        // One K block and few A panels: B is read in place, the partial last panel packed.
        (10, 45, 50),
        (24, 160, 64),
        (17, 33, 3),
    ];
    for isa in available_isas() {
        for uk in isa.kernels().unwrap().gemm {
            let mut bl = Blocking::derive(uk, convkit::sysinfo::caches());
            bl.kc = 64; // force several K blocks on small shapes
            bl.nc = 2 * uk.nr;
            bl.mc = 2 * uk.mr;
            for &(m, n, k) in &shapes {
                let a = rand_vec(&mut rng, m * k);
                let b = rand_vec(&mut rng, k * n);
                let bias = rand_vec(&mut rng, m);
                let mut c = vec![0f32; m * n];
                let epi = GemmEpilogue {
                    bias: GemmBias::Row(&bias),
                    clamp: (-1.0, 1.0),
                    accumulate: false,
                    activation: None,
                };
                sgemm(uk, &bl, m, n, k, &a, &b, &mut c, epi, true);
                let want = gemm_ref(m, n, k, &a, &b);
                for i in 0..m {
                    for j in 0..n {
                        let w = (want[i * n + j] + bias[i] as f64).clamp(-1.0, 1.0);
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - w).abs() <= 1e-5 * (k as f64 + 1.0),
                            "{} {m}x{n}x{k} at ({i},{j}): {got} vs {w}",
                            uk.name
                        );
                    }
                }
            }
        }
    }
}

/// The GEMM with A read in place (an NHWC 1x1 layer's pixels): runs of rows at a stride with
/// NaN between rows and between runs, several K blocks and row chunks, a partial last panel
/// of columns, a column bias, accumulation into C and a clamp; against the f64 reference on
/// every kernel of every tier, and bitwise the same on 1, 2 and 3 threads.
#[test]
fn gemm_with_a_in_place_over_awkward_shapes_on_every_tier() {
    use convkit::gemm::{gemm_a_in_place, PackedB, RowsA};
    let mut rng = Rng::new(4);
    // (runs, rows a run, n, k)
    let shapes = [
        (1, 1, 1, 1),
        (1, 13, 1, 29),
        (3, 7, 97, 31),
        (1, 61, 67, 71),
        (4, 17, 33, 3),
        (2, 50, 130, 257),
        (1, 9, 20, 0),
        // B past a quarter of a 2 MiB L2: the tiles prefetch the next panel.
        (1, 20, 520, 260),
    ];
    let pools: Vec<_> = [1, 2, 3]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .collect();
    for isa in available_isas() {
        for uk in isa.kernels().unwrap().gemm {
            let mut bl = Blocking::derive(uk, convkit::sysinfo::caches());
            bl.kc = 64; // several K blocks on small shapes
            bl.mc = 2 * uk.mr; // several row chunks
            for &(segments, seg_len, n, k) in &shapes {
                let (offset, rs) = (3, k + 2);
                let seg_stride = seg_len * rs + 5;
                let m = segments * seg_len;
                let mut data =
                    vec![f32::NAN; offset + (segments - 1) * seg_stride + (seg_len - 1) * rs + k];
                let a = rand_vec(&mut rng, m * k);
                for i in 0..m {
                    let row = offset + (i / seg_len) * seg_stride + (i % seg_len) * rs;
                    data[row..row + k].copy_from_slice(&a[i * k..(i + 1) * k]);
                }
                let b = rand_vec(&mut rng, k * n);
                let packed = PackedB::pack(k, n, uk.nr, &bl, |p, j| b[p * n + j]);
                let bias = rand_vec(&mut rng, n);
                let c0 = rand_vec(&mut rng, m * n);
                let rows = RowsA {
                    data: &data,
                    offset,
                    rs,
                    seg_len,
                    segments,
                    seg_stride,
                };
                let outs: Vec<Vec<f32>> = pools
                    .iter()
                    .map(|pool| {
                        let mut c = c0.clone();
                        let shared = SharedMut::new(&mut c);
                        let epi = GemmEpilogue {
                            bias: GemmBias::Col(&bias),
                            clamp: (-1.5, 1.5),
                            accumulate: true,
                            activation: None,
                        };
                        pool.install(|| {
                            gemm_a_in_place(uk, &bl, &rows, &packed, &shared, 0, n, epi, true)
                        });
                        c
                    })
                    .collect();
                let want = gemm_ref(m, n, k, &a, &b);
                let mut worst = 0f64;
                for i in 0..m {
                    for j in 0..n {
                        let w = (want[i * n + j] + c0[i * n + j] as f64 + bias[j] as f64)
                            .clamp(-1.5, 1.5);
                        let err = (outs[0][i * n + j] as f64 - w).abs();
                        assert!(
                            err <= 1e-5 * (k as f64 + 2.0),
                            "{} runs {segments} x {seg_len}, n {n}, k {k} at ({i},{j}): {} vs {w}",
                            uk.name,
                            outs[0][i * n + j]
                        );
                        worst = worst.max(err);
                    }
                }
                assert!(
                    bitwise_equal(&outs),
                    "{}: A in place differs across thread counts ({m} x {n} x {k})",
                    uk.name
                );
                eprintln!("{} {m}x{n}x{k}: worst error {worst:.2e}", uk.name);
            }
        }
    }
}

#[test]
fn gemm_is_bitwise_identical_across_thread_counts() {
    let mut rng = Rng::new(3);
    let (m, n, k) = (70, 530, 600);
    let a = rand_vec(&mut rng, m * k);
    let b = rand_vec(&mut rng, k * n);
    for isa in available_isas() {
        let uk = isa.kernels().unwrap().gemm_default();
        let bl = Blocking::derive(uk, convkit::sysinfo::caches());
        let outs = sgemm_on_1_2_3_threads(uk, &bl, (m, n, k), &a, &b, GemmEpilogue::default());
        assert!(bitwise_equal(&outs), "{}", uk.name);
    }
}

/// `sgemm` (parallel) of `a` by `b` on private pools of 1, 2 and 3 threads: the three C.
fn sgemm_on_1_2_3_threads(
    uk: &convkit::kernels::GemmUkernel,
    bl: &Blocking,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    epi: GemmEpilogue,
) -> Vec<Vec<f32>> {
    [1, 2, 3]
        .iter()
        .map(|&threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = vec![0f32; m * n];
            pool.install(|| sgemm(uk, bl, m, n, k, a, b, &mut c, epi, true));
            c
        })
        .collect()
}

/// Whether all of `outs` hold the same bits.
fn bitwise_equal(outs: &[Vec<f32>]) -> bool {
    outs.windows(2).all(|w| {
        w[0].iter()
            .zip(&w[1])
            .all(|(x, y)| x.to_bits() == y.to_bits())
    })
}

/// Every `direct_oc` tile kernel of every tier (the default, the wide and the 7-pixel one), in both
/// output layouts (planar, channel by channel; pixel-major, a channels-last band), against
/// an f64 reference: every pixel count 1..=mr (slots past m repeat a pixel), channel counts
/// filling 1..=panels panels fully and partly, k of 1, 5 and 37 taps, with and without bias
/// and accumulation into C, and a clamp; canaries around every stored element.
#[test]
fn oc_tiles_of_every_kernel_in_both_layouts() {
    use convkit::kernels::{OC_MR_MAX, OC_NR};
    let mut rng = Rng::new(11);
    for isa in available_isas() {
        let table = isa.kernels().unwrap();
        for uk in std::iter::once(table.conv_oc)
            .chain(table.conv_oc_wide)
            .chain(table.conv_oc_seven)
        {
            for k in [1usize, 5, 37] {
                let img = rand_vec(&mut rng, 400);
                // Tap offsets anywhere in the first 300 floats; pixel bases in 0..100.
                let offsets =
                    OffsetTable::new((0..k).map(|p| (p * 7919 + 13) % 300).collect::<Vec<_>>());
                for panels in 1..=uk.panels {
                    let w = rand_vec(&mut rng, panels * k * OC_NR);
                    for n in [(panels - 1) * OC_NR + 1, panels * OC_NR - 3, panels * OC_NR] {
                        for m in 1..=uk.mr {
                            for (load_c, with_bias, pixel_major) in [
                                (false, true, false),
                                (true, false, false),
                                (false, true, true),
                                (true, true, true),
                                (false, false, true),
                            ] {
                                let mut bases = [0usize; OC_MR_MAX];
                                for (i, b) in bases.iter_mut().enumerate() {
                                    *b = (i.min(m - 1) * 11 + 3) % 100;
                                }
                                let bias = rand_vec(&mut rng, n);
                                // Output: pixel-major rows of n at stride n + 2, or channel
                                // rows of m at stride m + 3; canaries elsewhere.
                                let (rows, cols, stride) = if pixel_major {
                                    (m, n, n + 2)
                                } else {
                                    (n, m, m + 3)
                                };
                                let len = 2 + rows * stride;
                                let mut c = vec![CANARY; len];
                                let start = rand_vec(&mut rng, len);
                                for r in 0..rows {
                                    for q in 0..cols {
                                        c[1 + r * stride + q] = start[1 + r * stride + q];
                                    }
                                }
                                let before = c.clone();
                                let (lo, hi) = (-0.9f32, 0.8f32);
                                let shared = SharedMut::new(&mut c);
                                run_oc_tile(
                                    &uk,
                                    &img,
                                    &bases,
                                    &offsets,
                                    &w,
                                    panels,
                                    &shared,
                                    1,
                                    stride,
                                    pixel_major,
                                    m,
                                    n,
                                    load_c,
                                    with_bias.then_some(&bias[..]),
                                    (lo, hi),
                                );
                                let mut worst = 0f64;
                                for (at, (&got, &was)) in c.iter().zip(&before).enumerate() {
                                    let inside = at >= 1
                                        && (at - 1) / stride < rows
                                        && (at - 1) % stride < cols;
                                    if !inside {
                                        assert_eq!(
                                            got.to_bits(),
                                            was.to_bits(),
                                            "{} wrote {at}",
                                            uk.name
                                        );
                                        continue;
                                    }
                                    let (r, q) = ((at - 1) / stride, (at - 1) % stride);
                                    let (i, j) = if pixel_major { (r, q) } else { (q, r) };
                                    let (panel, lane) = (j / OC_NR, j % OC_NR);
                                    let mut want = 0f64;
                                    for (p, &o) in offsets.offsets().iter().enumerate() {
                                        want += img[bases[i] + o] as f64
                                            * w[panel * k * OC_NR + p * OC_NR + lane] as f64;
                                    }
                                    if load_c {
                                        want += was as f64;
                                    }
                                    if with_bias {
                                        want += bias[j] as f64;
                                    }
                                    want = want.clamp(lo as f64, hi as f64);
                                    worst = worst.max((got as f64 - want).abs());
                                }
                                assert!(
                                    worst <= 1e-4 * (k as f64 + 1.0),
                                    "{}: k {k}, m {m}, n {n}, load_c {load_c}, bias {with_bias}, pixel-major {pixel_major}: worst error {worst:e}",
                                    uk.name
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The strided gather of every tier: every length 0..40 (whole vector blocks and tails),
/// strides 1..5, sources exactly as long as the reads; nothing past `dst` is written.
#[test]
fn strided_gather_on_every_tier() {
    let mut rng = Rng::new(7);
    for isa in convkit::arch::available_isas() {
        let gather = isa.kernels().unwrap().gather;
        for stride in 1..=5 {
            for (n, slack) in (0..40).flat_map(|n| [(n, 0), (n, 40)]) {
                // Exactly the floats read, or more after them (the vector paths read ahead).
                let len = if n == 0 {
                    0
                } else {
                    (n - 1) * stride + 1 + slack
                };
                let src = rand_vec(&mut rng, len);
                let mut dst = vec![f32::NAN; n + 3];
                gather(&mut dst[..n], &src, stride);
                for t in 0..n {
                    assert_eq!(
                        dst[t].to_bits(),
                        src[t * stride].to_bits(),
                        "{}: stride {stride}, n {n}, t {t}",
                        isa.name()
                    );
                }
                assert!(
                    dst[n..].iter().all(|v| v.is_nan()),
                    "{}: wrote past dst",
                    isa.name()
                );
            }
        }
    }
}

/// The transpose of every tier (the channels-last pool's pooled rows into planes): shapes
/// with and without whole 8x8 blocks, output rows packed or further apart than a row;
/// every element lands at `dst[j * stride + i]`, and nothing between the output rows or
/// past them is written.
#[test]
fn transpose_on_every_tier() {
    let mut rng = Rng::new(9);
    for isa in convkit::arch::available_isas() {
        let transpose = isa.kernels().unwrap().transpose;
        for (rows, cols) in [
            (0, 5),
            (5, 0),
            (1, 1),
            (8, 8),
            (27, 64),
            (56, 64),
            (9, 17),
            (16, 3),
        ] {
            for gap in [0, 5] {
                let stride = rows + gap;
                let src = rand_vec(&mut rng, rows * cols);
                let mut dst = vec![f32::NAN; cols * stride + 3];
                transpose(&src, rows, cols, &mut dst, stride);
                for (at, v) in dst.iter().enumerate() {
                    let (j, i) = (at / stride.max(1), at % stride.max(1));
                    if j < cols && i < rows {
                        assert_eq!(
                            v.to_bits(),
                            src[i * cols + j].to_bits(),
                            "{}: {rows} x {cols}, element ({i}, {j})",
                            isa.name()
                        );
                    } else {
                        assert!(v.is_nan(), "{}: {rows} x {cols} wrote {at}", isa.name());
                    }
                }
            }
        }
    }
}

/// The depthwise channel-block interleave on every tier: `dst[p * 8 + c] = src[c * stride +
/// p]` exactly, zero lanes past a partial block's channels, for lengths around every tier's
/// block widths (8 and 16 pixels), `src` exactly long enough, nothing written past `dst`.
#[test]
fn dw_interleave_on_every_tier() {
    const CB: usize = 8;
    let mut rng = Rng::new(9);
    for isa in convkit::arch::available_isas() {
        let interleave = isa.kernels().unwrap().dwconv.interleave;
        for n in (0usize..50).chain([63, 64, 65, 112]) {
            for nc in [1, 3, 7, 8] {
                let stride = n + (n % 5);
                let src = rand_vec(&mut rng, (nc - 1) * stride + n);
                let mut buf = vec![f32::NAN; n * CB + 5];
                interleave(&src, nc, stride, &mut buf[..n * CB]);
                for (at, v) in buf.iter().enumerate() {
                    let (p, c) = (at / CB, at % CB);
                    if p >= n {
                        assert!(
                            v.is_nan(),
                            "{}: n {n}, {nc} channels wrote {at}",
                            isa.name()
                        );
                    } else if c >= nc {
                        assert_eq!(
                            *v,
                            0.0,
                            "{}: n {n}, {nc} channels, lane {c} of pixel {p}",
                            isa.name()
                        );
                    } else {
                        assert_eq!(
                            v.to_bits(),
                            src[c * stride + p].to_bits(),
                            "{}: n {n}, {nc} channels, pixel {p} channel {c}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

/// The two-phase deinterleave of the stride-2 phase split, on every tier: both streams
/// exact, for uneven lengths, with `src` exactly long enough or longer, nothing written past
/// either output.
#[test]
fn deinterleave2_on_every_tier() {
    let mut rng = Rng::new(8);
    for isa in convkit::arch::available_isas() {
        let deinterleave = isa.kernels().unwrap().deinterleave2;
        for n in 0usize..40 {
            for (ne, no, slack) in [
                (n, n, 0),
                (n, n, 17),
                (n + 1, n, 0),
                (n, n.saturating_sub(1), 0),
            ] {
                let len = (2 * ne).saturating_sub(1).max(2 * no) + slack;
                let src = rand_vec(&mut rng, len);
                let mut even = vec![f32::NAN; ne + 3];
                let mut odd = vec![f32::NAN; no + 3];
                deinterleave(&mut even[..ne], &mut odd[..no], &src);
                for t in 0..ne {
                    assert_eq!(
                        even[t].to_bits(),
                        src[2 * t].to_bits(),
                        "{}: even {t} of {ne}",
                        isa.name()
                    );
                }
                for t in 0..no {
                    assert_eq!(
                        odd[t].to_bits(),
                        src[2 * t + 1].to_bits(),
                        "{}: odd {t} of {no}",
                        isa.name()
                    );
                }
                assert!(
                    even[ne..].iter().chain(&odd[no..]).all(|v| v.is_nan()),
                    "{}: wrote past an output",
                    isa.name()
                );
            }
        }
    }
}

/// `run_gemm_column` (LOOP 1 of the GEMM and of direct) must write exactly what one
/// `run_gemm_tile` per MR panel writes: bitwise, with a short last panel, a row or column
/// bias, packed or indirect B, strided C, and nothing outside the column touched. Narrow
/// columns (n up to 5, half a panel, and a vector short of a panel plus 1 to 5) over many
/// tiles take the tier's narrow kernel where it has one
/// (several tiles side by side), which must give the tile kernel's bits.
#[test]
fn a_column_of_tiles_matches_tile_by_tile_calls() {
    use convkit::arch::run_gemm_column;
    let mut rng = Rng::new(5);
    for isa in available_isas() {
        for uk in isa.kernels().unwrap().gemm {
            let mut cases = vec![
                (17usize, 3 * uk.mr - 1, uk.nr),
                (64, 2 * uk.mr + 1, uk.nr - 3),
                (5, 1, 1),
            ];
            // 11 tiles, the last short: a group of 8 side by side and the other 3 as one
            // group. Half a panel and one more: AVX-512's narrow edge takes up to 16 of 32
            // columns.
            for n in [1, 2, 3, 4, 5, uk.nr / 2, uk.nr / 2 + 1] {
                cases.push((33, 11 * uk.mr - 2, n));
            }
            // One column over 4, 13, 14 and 15 tiles: rests of 4 to 7 after groups of 8
            // (each twice: packed and indirect B alternate with the case's index).
            for tiles in [4, 4, 13, 13, 14, 14, 15, 15] {
                cases.push((9, tiles * uk.mr - 1, 1));
            }
            // AVX-512's partial panels: whole vectors and an edge of 1 to 4 columns past
            // them (lane-major), or of 5 (one more vector).
            if uk.nr > 16 {
                for n in [uk.nr - 15, uk.nr - 14, uk.nr - 12, uk.nr - 11, 17, 20, 21] {
                    cases.push((33, 11 * uk.mr - 2, n));
                }
            }
            for (case, &(k, rows, n)) in cases.iter().enumerate() {
                let tiles = rows.div_ceil(uk.mr);
                let a = rand_vec(&mut rng, tiles * k * uk.mr);
                let b = rand_vec(&mut rng, k * uk.nr);
                // Indirect B: row p at a scattered offset of an image.
                let image = rand_vec(&mut rng, k * uk.nr * 3);
                let offsets =
                    OffsetTable::new((0..k).map(|p| (p * 7 % k) * 3 * uk.nr + 5).collect());
                let row_bias = rand_vec(&mut rng, rows);
                let col_bias = rand_vec(&mut rng, n);
                let rsc = uk.nr + 7;
                let off = rsc + 2;
                let len = (rows + 2) * rsc;
                let c0 = rand_vec(&mut rng, len);
                let indirect = case % 2 == 1;
                let b_panel = || {
                    if indirect {
                        BPanel::Indirect {
                            x: &image,
                            base: 1,
                            offsets: &offsets,
                        }
                    } else {
                        BPanel::Packed(&b)
                    }
                };
                for (load_c, row) in [(false, true), (true, true), (false, false)] {
                    let bias_at = |i0: usize| {
                        if row {
                            GemmBias::Row(&row_bias[i0..])
                        } else {
                            GemmBias::Col(&col_bias)
                        }
                    };
                    let mut by_column = c0.clone();
                    run_gemm_column(
                        uk,
                        k,
                        &a,
                        b_panel(),
                        &SharedMut::new(&mut by_column),
                        off,
                        rsc,
                        rows,
                        n,
                        load_c,
                        true,
                        bias_at(0),
                        (-0.75, 0.75),
                    );
                    let mut by_tile = c0.clone();
                    for t in 0..tiles {
                        let i0 = t * uk.mr;
                        run_gemm_tile(
                            uk,
                            k,
                            &a[t * k * uk.mr..],
                            b_panel(),
                            &SharedMut::new(&mut by_tile),
                            off + i0 * rsc,
                            rsc,
                            uk.mr.min(rows - i0),
                            n,
                            load_c,
                            true,
                            bias_at(i0),
                            (-0.75, 0.75),
                        );
                    }
                    let differ = by_column
                        .iter()
                        .zip(&by_tile)
                        .position(|(x, y)| x.to_bits() != y.to_bits());
                    assert_eq!(
                        differ, None,
                        "{}: k {k}, {rows} rows x {n}, indirect {indirect}, row bias {row}, \
                         load {load_c}: column and tile-by-tile results differ",
                        uk.name
                    );
                    // Outside the column C is untouched.
                    for (idx, (&v, &v0)) in by_column.iter().zip(&c0).enumerate() {
                        let inside =
                            idx >= off && (idx - off) / rsc < rows && (idx - off) % rsc < n;
                        if !inside {
                            assert_eq!(
                                v.to_bits(),
                                v0.to_bits(),
                                "{}: wrote outside at {idx}",
                                uk.name
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A depthwise kernel's output against its f64 reference: where `inside(i)`, element `i`
/// within 1e-5 (relative past 1) of `sum(i)` (bias and taps) plus the residual, clamped;
/// elsewhere still the canary. Panics naming `what` and the element, and the worst error.
fn check_depthwise_output(
    what: &str,
    out: &[f32],
    inside: impl Fn(usize) -> bool,
    residual: Option<&[f32]>,
    clamp: (f32, f32),
    sum: impl Fn(usize) -> f64,
) {
    let mut worst = 0f64;
    for (i, &v) in out.iter().enumerate() {
        if !inside(i) {
            assert_eq!(v, CANARY, "{what}: wrote outside the output at {i}");
            continue;
        }
        let want =
            (sum(i) + residual.map_or(0.0, |r| r[i] as f64)).clamp(clamp.0 as f64, clamp.1 as f64);
        let err = (v as f64 - want).abs();
        worst = worst.max(err);
        assert!(
            err <= 1e-5 * (1.0 + want.abs()),
            "{what}: output {i} is {v}, want {want}"
        );
    }
    assert!(worst < 1e-5, "{what}: worst error {worst:.2e}");
}

/// The direct-plane depthwise kernel of every tier that has one, against an f64 reference:
/// kernel sides 1 to 7 (the specialized 3x3, 5x5, 1x3, 1x5 and the general body), strides 1
/// and 2, every padding before the kernel allows, output sizes from "valid" to larger than
/// the input, bands of rows (a fused pool's) that start and end anywhere, planes with slack
/// between them, bias or none, a preloaded residual, a clamp. Canaries around and between
/// the output planes must survive; the worst element is reported.
#[test]
fn direct_depthwise_kernel_on_every_tier() {
    use convkit::arch::dwconv::DwDirect;
    let mut rng = Rng::new(10);
    let mut cases = 0;
    for isa in available_isas() {
        let Some((name, kernel)) = isa.kernels().unwrap().dwconv.direct else {
            continue;
        };
        for &(ih, iw) in &[
            (1, 1),
            (1, 9),
            (3, 5),
            (7, 7),
            (9, 17),
            (14, 14),
            (16, 33),
            (29, 40),
        ] {
            for (kh, kw) in [
                (1, 1),
                (1, 3),
                (1, 5),
                (2, 2),
                (3, 3),
                (5, 5),
                (4, 7),
                (7, 7),
                (3, 1),
            ] {
                for stride in [1usize, 2] {
                    // Paddings before: none, one, the largest the kernel allows; after: the
                    // rows and columns the case's output size implies.
                    for (pt, pl) in [(0, 0), (1.min(kh - 1), 1.min(kw - 1)), (kh - 1, kw - 1)] {
                        let extra = rng.next_u64() as usize % 3;
                        let (oh, ow) = (
                            (ih + pt + extra).saturating_sub(kh) / stride + 1,
                            (iw + pl + extra).saturating_sub(kw) / stride + 1,
                        );
                        let r0 = rng.next_u64() as usize % oh;
                        let r1 = r0 + 1 + rng.next_u64() as usize % (oh - r0);
                        let planes = 1 + rng.next_u64() as usize % 3;
                        let (area, band) = (ih * iw, (r1 - r0) * ow);
                        let (in_stride, out_stride) = (area + 3, band + 5);
                        let x = rand_vec(&mut rng, planes * in_stride);
                        let w = rand_vec(&mut rng, planes * kh * kw);
                        let bias = if extra == 1 {
                            Vec::new()
                        } else {
                            rand_vec(&mut rng, planes)
                        };
                        let accumulate = extra == 2;
                        let clamp = if extra == 0 {
                            (f32::NEG_INFINITY, f32::INFINITY)
                        } else {
                            (-0.9, 1.1)
                        };
                        let residual = rand_vec(&mut rng, planes * out_stride);
                        let mut out = vec![CANARY; planes * out_stride + 7];
                        for (i, o) in out.iter_mut().enumerate().take(planes * out_stride) {
                            if i % out_stride < band && accumulate {
                                *o = residual[i];
                            }
                        }
                        let mut job = DwDirect {
                            input: &x,
                            in_stride,
                            in_dims: [ih, iw],
                            weight: &w,
                            kernel: [kh, kw],
                            stride,
                            pad: [pt, pl],
                            rows: [r0, r1],
                            ow,
                            out: &mut out[..planes * out_stride],
                            out_stride,
                            planes,
                            bias: &bias,
                            accumulate,
                            clamp,
                        };
                        kernel(&mut job);
                        let what = format!(
                            "{name}: {ih}x{iw} input, {kh}x{kw} kernel, stride {stride}, pad ({pt}, {pl}), \
                             rows {r0}..{r1} of {oh} x {ow}, {planes} planes, bias {}, residual {accumulate}",
                            !bias.is_empty()
                        );
                        let residual = accumulate.then_some(&residual[..]);
                        check_depthwise_output(
                            &what,
                            &out,
                            |i| i / out_stride < planes && i % out_stride < band,
                            residual,
                            clamp,
                            |i| {
                                let (c, at) = (i / out_stride, i % out_stride);
                                let (oy, ox) = (r0 + at / ow, at % ow);
                                let mut sum = bias.get(c).map_or(0.0, |&b| b as f64);
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let (iy, ix) = (
                                            (oy * stride + ky) as isize - pt as isize,
                                            (ox * stride + kx) as isize - pl as isize,
                                        );
                                        if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < ih
                                            && (ix as usize) < iw
                                        {
                                            sum += w[c * kh * kw + ky * kw + kx] as f64
                                                * x[c * in_stride + iy as usize * iw + ix as usize]
                                                    as f64;
                                        }
                                    }
                                }
                                sum
                            },
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    eprintln!("{cases} direct depthwise cases");
}

/// The channels-last depthwise kernel of every tier that has one, against an f64 reference:
/// kernel sides 1 to 7 (the constant-shape 3x3 and 5x5 at strides 1 and 2, and the run-time
/// body for the rest), strides 1 and 2 in each direction, dilation 1 and 2, every padding
/// before the kernel allows, channel counts around the 16-lane vector (1, 5, 16, 19, 33),
/// rows of 8-pixel steps and their tails, bands of output rows, bias or none, a preloaded
/// residual, a clamp. Canaries after the output must survive; the worst element is
/// reported.
#[test]
fn channels_last_depthwise_kernel_on_every_tier() {
    use convkit::arch::dwconv::{DwNhwc, NHWC_LANES};
    let mut rng = Rng::new(11);
    let mut cases = 0;
    for isa in available_isas() {
        let Some((name, kernel)) = isa.kernels().unwrap().dwconv.channels_last else {
            continue;
        };
        for &(ih, iw) in &[(1, 1), (3, 9), (7, 7), (9, 16), (12, 17)] {
            for (kh, kw) in [(1, 1), (1, 3), (3, 3), (5, 5), (2, 4), (7, 7)] {
                for (sh, sw) in [(1, 1), (2, 2), (1, 2)] {
                    for dil in [1usize, 2] {
                        let c = [1, 5, 16, 19, 33][rng.next_u64() as usize % 5];
                        let (pt, pl) = (rng.next_u64() as usize % kh, rng.next_u64() as usize % kw);
                        let extra = rng.next_u64() as usize % 3;
                        let (eh, ew) = ((kh - 1) * dil + 1, (kw - 1) * dil + 1);
                        let (oh, ow) = (
                            (ih + pt + extra).saturating_sub(eh) / sh + 1,
                            (iw + pl + extra).saturating_sub(ew) / sw + 1,
                        );
                        let r0 = rng.next_u64() as usize % oh;
                        let r1 = r0 + 1 + rng.next_u64() as usize % (oh - r0);
                        let band = (r1 - r0) * ow * c;
                        let x = rand_vec(&mut rng, ih * iw * c);
                        let w = rand_vec(&mut rng, c * kh * kw);
                        // [C / 16][KH * KW][16], zero past the last channel.
                        let blocks = c.div_ceil(NHWC_LANES);
                        let mut packed = vec![0f32; blocks * kh * kw * NHWC_LANES];
                        for ch in 0..c {
                            for t in 0..kh * kw {
                                packed[((ch / NHWC_LANES) * kh * kw + t) * NHWC_LANES
                                    + ch % NHWC_LANES] = w[ch * kh * kw + t];
                            }
                        }
                        let bias = if extra == 1 {
                            Vec::new()
                        } else {
                            rand_vec(&mut rng, c)
                        };
                        let accumulate = extra == 2;
                        let clamp = if extra == 0 {
                            (f32::NEG_INFINITY, f32::INFINITY)
                        } else {
                            (-0.9, 1.1)
                        };
                        let residual = rand_vec(&mut rng, band);
                        let mut out = vec![CANARY; band + 9];
                        if accumulate {
                            out[..band].copy_from_slice(&residual);
                        }
                        let mut job = DwNhwc {
                            input: &x,
                            in_dims: [ih, iw],
                            channels: c,
                            weight: &packed,
                            kernel: [kh, kw],
                            stride: [sh, sw],
                            dilation: [dil, dil],
                            pad: [pt, pl],
                            rows: [r0, r1],
                            ow,
                            out: &mut out[..band],
                            bias: &bias,
                            accumulate,
                            clamp,
                        };
                        kernel(&mut job);
                        let what = format!(
                            "{name}: {ih}x{iw}x{c} input, {kh}x{kw} kernel, stride ({sh}, {sw}), \
                             dilation {dil}, pad ({pt}, {pl}), rows {r0}..{r1} of {oh} x {ow}, \
                             bias {}, residual {accumulate}",
                            !bias.is_empty()
                        );
                        let residual = accumulate.then_some(&residual[..]);
                        check_depthwise_output(
                            &what,
                            &out,
                            |i| i < band,
                            residual,
                            clamp,
                            |i| {
                                let (px, ch) = (i / c, i % c);
                                let (oy, ox) = (r0 + px / ow, px % ow);
                                let mut sum = bias.get(ch).map_or(0.0, |&b| b as f64);
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy = (oy * sh + ky * dil) as isize - pt as isize;
                                        let ix = (ox * sw + kx * dil) as isize - pl as isize;
                                        if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < ih
                                            && (ix as usize) < iw
                                        {
                                            sum += w[ch * kh * kw + ky * kw + kx] as f64
                                                * x[(iy as usize * iw + ix as usize) * c + ch]
                                                    as f64;
                                        }
                                    }
                                }
                                sum
                            },
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    eprintln!("{cases} channels-last depthwise cases");
}

/// The rule that packs B one panel at a time (few rows of A, a packed B block past half of
/// L2), on the shapes it was measured on, for a 1 MiB L2 and AVX-512's AMD blocking (KC up
/// to 1024, NC 1024, NR 32, 14-row tiles).
#[test]
fn panelwise_packing_rule_on_the_measured_shapes() {
    let l2 = 1 << 20;
    let bytes = |m: usize, kc: usize, nc: usize| (m.div_ceil(14) * 14 * kc * 4, kc * nc * 4);
    // resnet50.res2.3x3's im2col (64 x 3136 x 576): A 161 KB, B block 2.3 MB.
    let (a, b) = bytes(64, 576, 1024);
    assert!(convkit::gemm::panelwise_rule(a, b, l2));
    // mobilenetv2.pw56 (144 x 3136 x 24): the B block (96 KB) fits L2.
    let (a, b) = bytes(144, 24, 1024);
    assert!(!convkit::gemm::panelwise_rule(a, b, l2));
    // vgg16.conv3_3's im2col (256 x 3136 x 2304, K blocks of 768): A (786 KB) too large.
    let (a, b) = bytes(256, 768, 1024);
    assert!(!convkit::gemm::panelwise_rule(a, b, l2));
}

/// A GEMM that this machine packs panel by panel (few rows, two deep K blocks over wide
/// column blocks): against the f64 reference with a row bias and a clamp, on the default
/// kernel of every tier, and bitwise the same on 1, 2 and 3 threads.
#[test]
fn gemm_packed_panel_by_panel() {
    let mut rng = Rng::new(21);
    let (m, n, k) = (20, 1100, 700);
    let a = rand_vec(&mut rng, m * k);
    let b = rand_vec(&mut rng, k * n);
    let bias = rand_vec(&mut rng, m);
    let l2 = convkit::sysinfo::caches().l2;
    for isa in available_isas() {
        let uk = isa.kernels().unwrap().gemm_default();
        let mut bl = Blocking::derive(uk, convkit::sysinfo::caches());
        bl.kc = 352;
        bl.nc = 1024usize.div_ceil(uk.nr) * uk.nr;
        let a_block = m.div_ceil(uk.mr) * uk.mr * bl.kc * 4;
        let b_block = bl.kc * bl.nc * 4;
        if !convkit::gemm::panelwise_rule(a_block, b_block, l2) {
            // An L2 over 2.8 MB packs this B block whole; the reference check still holds.
            eprintln!("{}: L2 {l2} packs this shape whole", uk.name);
        }
        let epi = GemmEpilogue {
            bias: GemmBias::Row(&bias),
            clamp: (-2.0, 2.0),
            accumulate: false,
            activation: None,
        };
        let outs = sgemm_on_1_2_3_threads(uk, &bl, (m, n, k), &a, &b, epi);
        let want = gemm_ref(m, n, k, &a, &b);
        let mut worst = (0.0f64, 0, 0);
        for i in 0..m {
            for j in 0..n {
                let w = (want[i * n + j] + bias[i] as f64).clamp(-2.0, 2.0);
                let err = (outs[0][i * n + j] as f64 - w).abs();
                if err > worst.0 {
                    worst = (err, i, j);
                }
            }
        }
        assert!(
            worst.0 <= 1e-5 * (k as f64 + 1.0),
            "{}: worst error {} at ({}, {})",
            uk.name,
            worst.0,
            worst.1,
            worst.2
        );
        assert!(
            bitwise_equal(&outs),
            "{}: results differ across thread counts",
            uk.name
        );
    }
}
