//! The naive oracle: plain loops over SPEC.md section 1, accumulating in f64. Every algorithm
//! is tested against it; frameworks may use it too. It favours obviousness over speed.

use crate::epilogue::{max_nan, Pool};
use crate::error::{Error, Result};
use crate::geometry::Geometry;

/// The operands of one layer, as flat NCHW / OIHW slices (NCL / OIL in 1-D).
#[derive(Copy, Clone, Debug)]
pub struct Operands<'a> {
    /// Input, `Geometry::input_shape()`.
    pub input: &'a [f32],
    /// Weights, `Geometry::weight_shape()`.
    pub weight: &'a [f32],
    /// Bias `[Cout]`, present exactly when the spec has a bias.
    pub bias: Option<&'a [f32]>,
    /// Residual of the conv output shape, present exactly when the spec has one.
    pub residual: Option<&'a [f32]>,
}

impl Operands<'_> {
    /// Checks every length and the presence of bias and residual against the geometry.
    pub fn check(&self, g: &Geometry) -> Result<()> {
        check_len("input", self.input.len(), g.input_len())?;
        check_len("weight", self.weight.len(), g.weight_len())?;
        check_optional("bias", g.epilogue.bias, self.bias, g.out_channels)?;
        check_optional(
            "residual",
            g.epilogue.residual,
            self.residual,
            g.conv_output_len(),
        )?;
        Ok(())
    }
}

/// Checks an optional tensor (`bias`, `residual`): present exactly when the spec has it, and
/// then of `want` elements.
pub(crate) fn check_optional(
    name: &str,
    in_spec: bool,
    given: Option<&[f32]>,
    want: usize,
) -> Result<()> {
    match (in_spec, given) {
        (true, None) => Err(Error::tensor(
            name,
            format!("the spec has a {name} but none was given"),
        )),
        (false, Some(_)) => Err(Error::tensor(
            name,
            format!("given, but the spec has \"{name}\": false"),
        )),
        (true, Some(t)) => check_len(name, t.len(), want),
        (false, None) => Ok(()),
    }
}

pub(crate) fn check_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::tensor(
            name,
            format!("has {got} elements, the layer needs {want}"),
        ));
    }
    Ok(())
}

/// Pre-activation values `conv(x, w) + bias + residual` in f64, conv-output shape (NCHW), and
/// alongside each its magnitude `sum |x w| + |bias| + |residual|` (SPEC section 4).
pub fn pre_activation(g: &Geometry, ops: &Operands) -> Result<(Vec<f64>, Vec<f64>)> {
    ops.check(g)?;
    let [ih, iw] = g.input;
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.conv_out;
    let (cpg, opg) = (g.cin_per_group, g.cout_per_group);
    let n_out = g.conv_output_len();
    let mut val = vec![0f64; n_out];
    let mut mag = vec![0f64; n_out];
    for n in 0..g.batch {
        for co in 0..g.out_channels {
            let grp = co / opg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut acc, mut abs) = (0f64, 0f64);
                    for ci in 0..cpg {
                        let c = grp * cpg + ci;
                        for ky in 0..kh {
                            let y = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.pad_before[0] as isize;
                            if y < 0 || y >= ih as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let x = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                    - g.pad_before[1] as isize;
                                if x < 0 || x >= iw as isize {
                                    continue;
                                }
                                let xv = ops.input
                                    [((n * g.in_channels + c) * ih + y as usize) * iw + x as usize]
                                    as f64;
                                let wv = ops.weight[((co * cpg + ci) * kh + ky) * kw + kx] as f64;
                                acc += xv * wv;
                                abs += (xv * wv).abs();
                            }
                        }
                    }
                    let o = ((n * g.out_channels + co) * oh + oy) * ow + ox;
                    if let Some(b) = ops.bias {
                        acc += b[co] as f64;
                        abs += (b[co] as f64).abs();
                    }
                    if let Some(r) = ops.residual {
                        acc += r[o] as f64;
                        abs += (r[o] as f64).abs();
                    }
                    val[o] = acc;
                    mag[o] = abs;
                }
            }
        }
    }
    Ok((val, mag))
}

/// The whole layer in f64: `pool(act(conv + bias + residual))`, output shape NCHW / NCL.
pub fn forward_f64(g: &Geometry, ops: &Operands) -> Result<Vec<f64>> {
    let (mut pre, _) = pre_activation(g, ops)?;
    let act = g.epilogue.activation;
    for v in pre.iter_mut() {
        *v = act.apply(*v);
    }
    Ok(pool_f64(g, &pre))
}

/// The whole layer, rounded to f32.
pub fn forward(g: &Geometry, ops: &Operands) -> Result<Vec<f32>> {
    Ok(forward_f64(g, ops)?.into_iter().map(|v| v as f32).collect())
}

/// S of SPEC section 4: the largest pre-activation magnitude over the conv output.
pub fn magnitude(g: &Geometry, ops: &Operands) -> Result<f64> {
    let (_, mag) = pre_activation(g, ops)?;
    Ok(mag.into_iter().fold(0.0, f64::max))
}

/// Applies the geometry's pool to an activated conv output (NCHW, f64).
pub fn pool_f64(g: &Geometry, act: &[f64]) -> Vec<f64> {
    let [oh, ow] = g.conv_out;
    let planes = g.batch * g.out_channels;
    match &g.epilogue.pool {
        None => act.to_vec(),
        Some(Pool::GlobalMax) => act
            .chunks(oh * ow)
            .map(|p| p.iter().copied().fold(f64::NEG_INFINITY, max_nan))
            .collect(),
        Some(Pool::GlobalAvg) => act
            .chunks(oh * ow)
            .map(|p| p.iter().sum::<f64>() / (oh * ow) as f64)
            .collect(),
        Some(pool) => {
            let dims = g.pool_dims.expect("windowed pool has dims");
            let is_max = matches!(pool, Pool::Max(_));
            let cip = matches!(
                pool,
                Pool::Avg {
                    count_include_pad: true,
                    ..
                }
            );
            let [ph, pw] = g.output;
            let mut out = Vec::with_capacity(planes * ph * pw);
            for plane in act.chunks(oh * ow) {
                for py in 0..ph {
                    for px in 0..pw {
                        let (mut m, mut sum, mut count) = (f64::NEG_INFINITY, 0f64, 0usize);
                        for wy in 0..dims[0].size {
                            let y =
                                (py * dims[0].stride + wy) as isize - dims[0].pad_before as isize;
                            if y < 0 || y >= oh as isize {
                                continue;
                            }
                            for wx in 0..dims[1].size {
                                let x = (px * dims[1].stride + wx) as isize
                                    - dims[1].pad_before as isize;
                                if x < 0 || x >= ow as isize {
                                    continue;
                                }
                                let v = plane[y as usize * ow + x as usize];
                                m = max_nan(m, v);
                                sum += v;
                                count += 1;
                            }
                        }
                        out.push(if is_max {
                            m
                        } else if cip {
                            sum / (dims[0].size * dims[1].size) as f64
                        } else {
                            sum / count as f64
                        });
                    }
                }
            }
            out
        }
    }
}

/// The outcome of comparing a result with the reference under SPEC's tolerance.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// max |y - y_ref|.
    pub max_abs_err: f64,
    /// Flat index of the worst element.
    pub worst_index: usize,
    /// y and y_ref there.
    pub worst_values: (f64, f64),
    /// S of SPEC section 4.
    pub magnitude: f64,
    /// max_abs_err / max(S, 1e-30).
    pub normalized_err: f64,
}

/// Compares `y` with `y_ref` and returns the worst element. NaN in exactly one of the two
/// counts as an infinite error; NaN in both, or equal infinities, as none.
pub fn compare(y: &[f32], y_ref: &[f64], magnitude: f64) -> Comparison {
    let mut c = Comparison {
        max_abs_err: 0.0,
        worst_index: 0,
        worst_values: (0.0, 0.0),
        magnitude,
        normalized_err: 0.0,
    };
    for (i, (&a, &b)) in y.iter().zip(y_ref).enumerate() {
        let a = a as f64;
        let err = if a.is_nan() && b.is_nan() || a == b {
            0.0
        } else if a.is_nan() || b.is_nan() {
            f64::INFINITY
        } else {
            (a - b).abs()
        };
        if err > c.max_abs_err || (err.is_nan() && !c.max_abs_err.is_nan()) {
            c.max_abs_err = err;
            c.worst_index = i;
            c.worst_values = (a, b);
        }
    }
    if y.len() != y_ref.len() {
        c.max_abs_err = f64::INFINITY;
    }
    c.normalized_err = c.max_abs_err / magnitude.max(1e-30);
    c
}

/// Describes a flat NCHW index as coordinates for failure messages.
pub fn coords(shape: &[usize], mut index: usize) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            c[i] = index % d;
            index /= d;
        }
    }
    c
}

/// Gradients of one layer in f64: the oracle of the backward pass.
#[derive(Clone, Debug)]
pub struct Gradients64 {
    /// dL/dx, input shape.
    pub input: Vec<f64>,
    /// dL/dw, weight shape.
    pub weight: Vec<f64>,
    /// dL/db, present when the spec has a bias.
    pub bias: Option<Vec<f64>>,
    /// dL/dresidual (conv-output shape), present when the spec has a residual.
    pub residual: Option<Vec<f64>>,
    /// The largest `sum |w dz|` over the terms of one input gradient (the S of SPEC section
    /// 4 for dL/dx).
    pub input_magnitude: f64,
    /// The largest `sum |x dz|` over the terms of one weight gradient.
    pub weight_magnitude: f64,
    /// The largest `sum |dz|` over the terms of one bias gradient.
    pub bias_magnitude: f64,
}

/// The window cell a max pool routes its gradient to: the first NaN in scan order (row-major
/// over the window) if there is one, else the first maximum. The fast backward pass follows
/// the same rule.
pub fn max_pool_pick<T: crate::epilogue::Real>(
    best: Option<(T, usize)>,
    v: T,
    at: usize,
) -> Option<(T, usize)> {
    match best {
        None => Some((v, at)),
        Some((b, _)) if b.is_nan() => best,
        Some((b, _)) if v.is_nan() || v > b => Some((v, at)),
        _ => best,
    }
}

/// Backpropagates `dy` (output shape) through the pool: the gradient w.r.t. the activated
/// conv output `act` (conv-output shape), in f64.
pub fn pool_backward_f64(g: &Geometry, act: &[f64], dy: &[f64]) -> Vec<f64> {
    let [oh, ow] = g.conv_out;
    let area = oh * ow;
    let mut da = vec![0f64; act.len()];
    match &g.epilogue.pool {
        None => da.copy_from_slice(dy),
        Some(Pool::GlobalMax) => {
            for (p, (plane, d)) in act.chunks(area).zip(da.chunks_mut(area)).enumerate() {
                let mut best = None;
                for (i, &v) in plane.iter().enumerate() {
                    best = max_pool_pick(best, v, i);
                }
                if let Some((_, i)) = best {
                    d[i] += dy[p];
                }
            }
        }
        Some(Pool::GlobalAvg) => {
            for (p, d) in da.chunks_mut(area).enumerate() {
                d.iter_mut().for_each(|v| *v = dy[p] / area as f64);
            }
        }
        Some(pool) => {
            let dims = g.pool_dims.expect("windowed pool has dims");
            let is_max = matches!(pool, Pool::Max(_));
            let cip = matches!(
                pool,
                Pool::Avg {
                    count_include_pad: true,
                    ..
                }
            );
            let [ph, pw] = g.output;
            for (p, (plane, d)) in act.chunks(area).zip(da.chunks_mut(area)).enumerate() {
                for py in 0..ph {
                    for px in 0..pw {
                        let mut cells = Vec::new();
                        for wy in 0..dims[0].size {
                            let y =
                                (py * dims[0].stride + wy) as isize - dims[0].pad_before as isize;
                            if y < 0 || y >= oh as isize {
                                continue;
                            }
                            for wx in 0..dims[1].size {
                                let x = (px * dims[1].stride + wx) as isize
                                    - dims[1].pad_before as isize;
                                if x < 0 || x >= ow as isize {
                                    continue;
                                }
                                cells.push(y as usize * ow + x as usize);
                            }
                        }
                        let grad = dy[(p * ph + py) * pw + px];
                        if is_max {
                            let mut best = None;
                            for &c in &cells {
                                best = max_pool_pick(best, plane[c], c);
                            }
                            if let Some((_, c)) = best {
                                d[c] += grad;
                            }
                        } else {
                            let count = if cip {
                                dims[0].size * dims[1].size
                            } else {
                                cells.len()
                            };
                            for &c in &cells {
                                d[c] += grad / count as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    da
}

/// The backward pass of the whole layer in f64 for the loss whose gradient w.r.t. the
/// layer's output is `grad_output` (output shape): through the pool, the activation (at the
/// pre-activation values), then the convolution (plain loops).
pub fn backward_f64(g: &Geometry, ops: &Operands, grad_output: &[f32]) -> Result<Gradients64> {
    check_len("grad_output", grad_output.len(), g.output_len())?;
    let (pre, _) = pre_activation(g, ops)?;
    let act = g.epilogue.activation;
    let activated: Vec<f64> = pre.iter().map(|&v| act.apply(v)).collect();
    let dy: Vec<f64> = grad_output.iter().map(|&v| v as f64).collect();
    let da = pool_backward_f64(g, &activated, &dy);
    let dz: Vec<f64> = da
        .iter()
        .zip(&pre)
        .map(|(&d, &z)| d * act.derivative(z))
        .collect();
    let [ih, iw] = g.input;
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.conv_out;
    let (cpg, opg) = (g.cin_per_group, g.cout_per_group);
    let mut dx = vec![0f64; g.input_len()];
    let mut dw = vec![0f64; g.weight_len()];
    let mut dx_mag = vec![0f64; g.input_len()];
    let mut dw_mag = vec![0f64; g.weight_len()];
    for n in 0..g.batch {
        for co in 0..g.out_channels {
            let grp = co / opg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let d = dz[((n * g.out_channels + co) * oh + oy) * ow + ox];
                    for ci in 0..cpg {
                        let c = grp * cpg + ci;
                        for ky in 0..kh {
                            let y = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.pad_before[0] as isize;
                            if y < 0 || y >= ih as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let x = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                    - g.pad_before[1] as isize;
                                if x < 0 || x >= iw as isize {
                                    continue;
                                }
                                let xi =
                                    ((n * g.in_channels + c) * ih + y as usize) * iw + x as usize;
                                let wi = ((co * cpg + ci) * kh + ky) * kw + kx;
                                dx[xi] += ops.weight[wi] as f64 * d;
                                dw[wi] += ops.input[xi] as f64 * d;
                                dx_mag[xi] += (ops.weight[wi] as f64 * d).abs();
                                dw_mag[wi] += (ops.input[xi] as f64 * d).abs();
                            }
                        }
                    }
                }
            }
        }
    }
    let area = oh * ow;
    let bias_magnitude = (0..g.out_channels)
        .map(|co| {
            (0..g.batch)
                .map(|n| {
                    dz[(n * g.out_channels + co) * area..(n * g.out_channels + co + 1) * area]
                        .iter()
                        .map(|v| v.abs())
                        .sum::<f64>()
                })
                .sum::<f64>()
        })
        .fold(0.0, f64::max);
    let bias = g.epilogue.bias.then(|| {
        (0..g.out_channels)
            .map(|co| {
                (0..g.batch)
                    .map(|n| {
                        dz[(n * g.out_channels + co) * area..(n * g.out_channels + co + 1) * area]
                            .iter()
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect()
    });
    Ok(Gradients64 {
        input: dx,
        weight: dw,
        bias,
        residual: g.epilogue.residual.then(|| dz.clone()),
        input_magnitude: dx_mag.into_iter().fold(0.0, f64::max),
        weight_magnitude: dw_mag.into_iter().fold(0.0, f64::max),
        bias_magnitude,
    })
}
