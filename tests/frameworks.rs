//! The framework entry point (`convkit::api`): strided views in and out, against the
//! reference on contiguous NCHW.

use convkit::api::{conv, ConvOp, ConvParams, View, ViewMut};
use convkit::init::Rng;
use convkit::reference::{self, Operands};
use convkit::{ConvSpec, Geometry, Padding};

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.uniform_in(-1.0, 1.0) as f32).collect()
}

/// Reference output (NCHW) of a plain conv.
fn want(
    shape: &[usize],
    cout: usize,
    kernel: &[usize],
    p: &ConvParams,
    x: &[f32],
    w: &[f32],
    b: &[f32],
) -> Vec<f32> {
    let spec = ConvSpec::new(shape, cout, kernel)
        .with_stride(&p.stride)
        .with_dilation(&p.dilation)
        .with_padding(Padding::Explicit(p.padding.clone()))
        .with_groups(p.groups);
    let g = Geometry::new(&spec).unwrap();
    reference::forward(
        &g,
        &Operands {
            input: x,
            weight: w,
            bias: Some(b),
            residual: None,
        },
    )
    .unwrap()
}

#[test]
fn strided_views_in_and_out_match_the_reference() {
    // [N, C, H, W] = [2, 4, 7, 6], Cout 6, groups 2, stride 2, asymmetric padding.
    let (n, c, h, wd, cout) = (2, 4, 7, 6, 6);
    let mut p = ConvParams::new(2);
    p.stride = vec![2, 1];
    p.padding = vec![(1, 0), (2, 1)];
    p.groups = 2;
    let x = rand(n * c * h * wd, 1);
    let w = rand(cout * 2 * 9, 2);
    let b = rand(cout, 3);
    let expect = want(&[n, c, h, wd], cout, &[3, 3], &p, &x, &w, &b);
    let op = ConvOp::new(&[n, c, h, wd], cout, &[3, 3], &w, Some(&b), &p).unwrap();
    let os = op.output_shape().to_vec();
    let (oh, ow) = (os[2], os[3]);
    // The same input as NHWC, placed at an offset inside a larger buffer.
    let pad = 5;
    let mut nhwc = vec![f32::NAN; pad + x.len()];
    for i in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..wd {
                    nhwc[pad + ((i * h + y) * wd + xx) * c + ch] =
                        x[((i * c + ch) * h + y) * wd + xx];
                }
            }
        }
    }
    let shape = [n, c, h, wd];
    let in_strides = [h * wd * c, 1, wd * c, c];
    for out_kind in 0..3 {
        let mut buf = vec![f32::NAN; 3 + expect.len()];
        let (off, strides) = match out_kind {
            0 => (0, vec![cout * oh * ow, oh * ow, ow, 1]), // NCHW
            1 => (3, vec![oh * ow * cout, 1, ow * cout, cout]), // NHWC at an offset
            _ => (0, vec![oh * ow * cout, oh * ow, 1, oh]), // W and H swapped in memory
        };
        {
            let input = View::new(&nhwc, pad, &shape, &in_strides).unwrap();
            let mut out = ViewMut::new(&mut buf, off, &os, &strides).unwrap();
            op.run(&input, &mut out).unwrap();
        }
        for i in 0..n {
            for co in 0..cout {
                for y in 0..oh {
                    for xx in 0..ow {
                        let got = buf[off
                            + i * strides[0]
                            + co * strides[1]
                            + y * strides[2]
                            + xx * strides[3]];
                        let e = expect[((i * cout + co) * oh + y) * ow + xx];
                        assert!(
                            (got - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "layout {out_kind}: {got} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn one_shot_conv_in_1d_and_errors() {
    let mut p = ConvParams::new(1);
    p.padding = vec![(2, 2)];
    p.dilation = vec![2];
    let x = rand(3 * 11, 4);
    let w = rand(5 * 3 * 3, 5);
    let b = rand(5, 6);
    let expect = want(&[1, 3, 11], 5, &[3], &p, &x, &w, &b);
    let mut y = vec![0f32; expect.len()];
    let ol = expect.len() / 5;
    conv(
        &View::new(&x, 0, &[1, 3, 11], &[33, 11, 1]).unwrap(),
        &w,
        Some(&b),
        &p,
        &mut ViewMut::contiguous(&mut y, &[1, 5, ol]).unwrap(),
    )
    .unwrap();
    for (a, e) in y.iter().zip(&expect) {
        assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()));
    }
    // A view past its buffer, a wrong output shape, a non-square 2-D kernel.
    assert!(View::new(&x, 1, &[1, 3, 11], &[33, 11, 1]).is_err());
    assert!(ViewMut::contiguous(&mut y, &[1, 5, ol + 1]).is_err());
    let mut z = vec![0f32; 5 * (ol + 1)];
    let err = conv(
        &View::new(&x, 0, &[1, 3, 11], &[33, 11, 1]).unwrap(),
        &w,
        Some(&b),
        &p,
        &mut ViewMut::contiguous(&mut z, &[1, 5, ol + 1]).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
    let x2 = rand(2 * 16, 7);
    let mut o2 = vec![0f32; 2 * 3 * 2];
    let err = conv(
        &View::new(&x2, 0, &[1, 2, 4, 4], &[32, 16, 4, 1]).unwrap(),
        &rand(2 * 2 * 6, 8),
        None,
        &ConvParams::new(2),
        &mut ViewMut::contiguous(&mut o2, &[1, 2, 3, 2]).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("square"), "{err}");
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_views_any_memory_order() {
    use convkit::api::ndarray_api::conv_nd;
    use ndarray::{s, ArrayD, IxDyn};
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 3, 6, 5]), rand(90, 9)).unwrap();
    let w = ArrayD::from_shape_vec(IxDyn(&[4, 3, 3, 3]), rand(108, 10)).unwrap();
    let mut p = ConvParams::new(2);
    p.padding = vec![(1, 1), (1, 1)];
    let base = conv_nd(x.view(), w.view(), None, &p).unwrap();
    // A reversed view (negative strides) of a reversed copy is the same tensor.
    let rev = x.slice(s![.., .., ..;-1, ..]).to_owned();
    let back = rev.slice(s![.., .., ..;-1, ..]);
    let again = conv_nd(back.into_dyn(), w.view(), None, &p).unwrap();
    assert_eq!(base, again);
    let want = want(
        &[1, 3, 6, 5],
        4,
        &[3, 3],
        &p,
        x.as_slice().unwrap(),
        w.as_slice().unwrap(),
        &[0.0; 4],
    );
    for (a, e) in base.iter().zip(&want) {
        assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()));
    }
}
