//! The entry point for framework backends: what a framework hands its convolution kernel
//! (tensor views with strides and an offset, OIHW weights, per-dimension stride, padding and
//! dilation, groups, an optional bias), with the result written into the caller's buffer,
//! itself a strided view. Layouts are strides: NCHW is `[C*H*W, H*W, W, 1]`, NHWC is
//! `[H*W*C, 1, W*C, C]`, and any other non-negative strides (a slice of a batch, a
//! transposed view) work too.
//!
//! ```
//! use convkit::api::{conv, ConvParams, View, ViewMut};
//! // One 3x3 image of ones in NHWC (strides of an NHWC buffer), one 2x2 filter of ones.
//! let x = vec![1.0f32; 9];
//! let input = View::new(&x, 0, &[1, 1, 3, 3], &[9, 1, 3, 1]).unwrap();
//! let mut y = vec![0.0f32; 4];
//! let mut output = ViewMut::contiguous(&mut y, &[1, 1, 2, 2]).unwrap();
//! conv(&input, &[1.0; 4], None, &ConvParams::new(2), &mut output).unwrap();
//! assert_eq!(y, vec![4.0; 4]);
//! ```
//!
//! For repeated calls with the same weights, [`ConvOp`] plans once (algorithm chosen, weights
//! packed) and runs many times.

use crate::error::{Error, Result};
use crate::plan::{Plan, PlanOptions};
use crate::spec::{ConvSpec, Padding};

/// A read-only strided tensor: element `[i0, i1, ..]` is `data[offset + sum ik * strides[k]]`.
#[derive(Copy, Clone, Debug)]
pub struct View<'a> {
    data: &'a [f32],
    offset: usize,
    shape: &'a [usize],
    strides: &'a [usize],
}

/// A writable strided tensor (the elements it addresses must not overlap).
#[derive(Debug)]
pub struct ViewMut<'a> {
    data: &'a mut [f32],
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Checks that every element a view addresses lies in `len` floats; returns the count.
fn check_view(len: usize, offset: usize, shape: &[usize], strides: &[usize]) -> Result<usize> {
    if shape.len() != strides.len() {
        return Err(Error::InvalidArgument(format!(
            "shape has {} dims, strides {}",
            shape.len(),
            strides.len()
        )));
    }
    let ovf = || Error::overflow("tensor view extent");
    let mut last = offset;
    let mut count = 1usize;
    for (&d, &s) in shape.iter().zip(strides) {
        count = count.checked_mul(d).ok_or_else(ovf)?;
        if d > 0 {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|v| v.checked_add(last))
                .ok_or_else(ovf)?;
        }
    }
    if count > 0 && last >= len {
        return Err(Error::InvalidArgument(format!(
            "the view reaches element {last} of a buffer of {len}"
        )));
    }
    Ok(count)
}

/// Strides of a contiguous row-major tensor of `shape`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

impl<'a> View<'a> {
    /// A view of `data` from `offset` with `shape` (`[N, C, H, W]` or `[N, C, L]`) and
    /// `strides` in elements; errors when it would read outside `data`.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        shape: &'a [usize],
        strides: &'a [usize],
    ) -> Result<Self> {
        check_view(data.len(), offset, shape, strides)?;
        Ok(View {
            data,
            offset,
            shape,
            strides,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.shape
    }

    fn is_contiguous(&self) -> bool {
        self.strides == contiguous_strides(self.shape).as_slice()
    }

    /// The elements in row-major order of the shape (NCHW), borrowed when already so.
    fn to_contiguous(self) -> std::borrow::Cow<'a, [f32]> {
        let n: usize = self.shape.iter().product();
        if self.is_contiguous() {
            return std::borrow::Cow::Borrowed(&self.data[self.offset..self.offset + n]);
        }
        let mut out = Vec::with_capacity(n);
        gather(self.data, self.offset, self.shape, self.strides, &mut out);
        std::borrow::Cow::Owned(out)
    }
}

fn gather(data: &[f32], base: usize, shape: &[usize], strides: &[usize], out: &mut Vec<f32>) {
    match shape.len() {
        0 => out.push(data[base]),
        1 => out.extend((0..shape[0]).map(|i| data[base + i * strides[0]])),
        _ => {
            for i in 0..shape[0] {
                gather(data, base + i * strides[0], &shape[1..], &strides[1..], out);
            }
        }
    }
}

fn scatter(data: &mut [f32], base: usize, shape: &[usize], strides: &[usize], src: &mut &[f32]) {
    match shape.len() {
        0 => {
            data[base] = src[0];
            *src = &src[1..];
        }
        _ => {
            for i in 0..shape[0] {
                scatter(data, base + i * strides[0], &shape[1..], &strides[1..], src);
            }
        }
    }
}

impl<'a> ViewMut<'a> {
    /// A writable view; errors when it would reach outside `data`.
    pub fn new(
        data: &'a mut [f32],
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> Result<Self> {
        check_view(data.len(), offset, shape, strides)?;
        Ok(ViewMut {
            data,
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        })
    }

    /// A contiguous row-major view of all of `data` with `shape`.
    pub fn contiguous(data: &'a mut [f32], shape: &[usize]) -> Result<Self> {
        let strides = contiguous_strides(shape);
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::InvalidArgument(format!(
                "shape {shape:?} holds {n} elements, the buffer {}",
                data.len()
            )));
        }
        ViewMut::new(data, 0, shape, &strides)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// Stride, padding, dilation and groups of a convolution, per spatial dimension.
#[derive(Clone, Debug)]
pub struct ConvParams {
    /// Stride per spatial dim.
    pub stride: Vec<usize>,
    /// (before, after) padding per spatial dim.
    pub padding: Vec<(usize, usize)>,
    /// Dilation per spatial dim.
    pub dilation: Vec<usize>,
    /// Groups.
    pub groups: usize,
    /// Plan options (algorithm, ISA, threads); the layout field is ignored (strides say it).
    pub options: PlanOptions,
}

impl ConvParams {
    /// Stride 1, no padding, dilation 1, one group, for `spatial_rank` (1 or 2) dims.
    pub fn new(spatial_rank: usize) -> Self {
        ConvParams {
            stride: vec![1; spatial_rank],
            padding: vec![(0, 0); spatial_rank],
            dilation: vec![1; spatial_rank],
            groups: 1,
            options: PlanOptions::default(),
        }
    }
}

/// A convolution planned for one input shape and one set of weights: run it on many inputs.
///
/// ```
/// use convkit::api::{ConvOp, ConvParams, View, ViewMut};
/// let mut p = ConvParams::new(1);
/// p.padding = vec![(1, 1)];
/// // Input [1, 1, 4], kernel [1, 1, 3] = [1, 2, 1], bias 10.
/// let op = ConvOp::new(&[1, 1, 4], 1, &[3], &[1.0, 2.0, 1.0], Some(&[10.0]), &p).unwrap();
/// let x = [1.0f32, 0.0, 0.0, 1.0];
/// let mut y = [0.0f32; 4];
/// op.run(&View::new(&x, 0, &[1, 1, 4], &[4, 4, 1]).unwrap(),
///        &mut ViewMut::contiguous(&mut y, &[1, 1, 4]).unwrap()).unwrap();
/// assert_eq!(y, [12.0, 11.0, 11.0, 12.0]);
/// ```
#[derive(Debug)]
pub struct ConvOp {
    plan: Plan,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
}

impl ConvOp {
    /// Plans a convolution of inputs of `input_shape` (`[N, C, H, W]` or `[N, C, L]`) into
    /// `out_channels`, with `kernel` sizes, contiguous OIHW `weight` and an optional bias.
    pub fn new(
        input_shape: &[usize],
        out_channels: usize,
        kernel: &[usize],
        weight: &[f32],
        bias: Option<&[f32]>,
        params: &ConvParams,
    ) -> Result<Self> {
        let spec = ConvSpec::new(input_shape, out_channels, kernel)
            .with_stride(&params.stride)
            .with_dilation(&params.dilation)
            .with_padding(Padding::Explicit(params.padding.clone()))
            .with_groups(params.groups)
            .with_bias(bias.is_some());
        let opts = PlanOptions {
            layout: crate::Layout::Nchw,
            ..params.options.clone()
        };
        let plan = Plan::new(&spec, weight, bias, &opts)?;
        let output_shape = plan.geometry().output_shape();
        Ok(ConvOp {
            plan,
            input_shape: input_shape.to_vec(),
            output_shape,
        })
    }

    /// The output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// The plan (algorithm, ISA, explanation of the choice).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs on `input` (of the planned shape, any strides) into `output` (any strides).
    pub fn run(&self, input: &View, output: &mut ViewMut) -> Result<()> {
        if input.shape != self.input_shape.as_slice() {
            return Err(Error::tensor(
                "input",
                format!(
                    "has shape {:?}, the op was planned for {:?}",
                    input.shape, self.input_shape
                ),
            ));
        }
        if output.shape != self.output_shape {
            return Err(Error::tensor(
                "output",
                format!(
                    "has shape {:?}, the convolution gives {:?}",
                    output.shape, self.output_shape
                ),
            ));
        }
        let x = input.to_contiguous();
        let out_contiguous = output.strides == contiguous_strides(&output.shape);
        if out_contiguous {
            let n: usize = output.shape.iter().product();
            let o = output.offset;
            return self.plan.run(&x, None, &mut output.data[o..o + n]);
        }
        let mut y = vec![0f32; self.plan.geometry().output_len()];
        self.plan.run(&x, None, &mut y)?;
        let mut src: &[f32] = &y;
        scatter(
            output.data,
            output.offset,
            &output.shape,
            &output.strides,
            &mut src,
        );
        Ok(())
    }
}

/// One-shot convolution: plans (see [`ConvOp`]) and runs. The kernel size is read from the
/// weight's length with the output's channel count: weights are contiguous OIHW of
/// `[Cout, C / groups, K...]` with square (or, in 1-D, any) kernels inferred as
/// `weight.len() / (Cout * C / groups)` taps; use [`ConvOp`] for non-square kernels.
pub fn conv(
    input: &View,
    weight: &[f32],
    bias: Option<&[f32]>,
    params: &ConvParams,
    output: &mut ViewMut,
) -> Result<()> {
    let rank = input.shape.len().saturating_sub(2);
    if !(1..=2).contains(&rank) || output.shape.len() != rank + 2 {
        return Err(Error::InvalidArgument(
            "input and output must both be [N, C, H, W] or [N, C, L]".into(),
        ));
    }
    let (c, cout) = (input.shape[1], output.shape[1]);
    let per = cout
        .checked_mul(c / params.groups.max(1))
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::InvalidArgument("zero channels".into()))?;
    let taps = weight.len() / per;
    let kernel = if rank == 1 {
        vec![taps]
    } else {
        let k = (taps as f64).sqrt().round() as usize;
        if k * k != taps {
            return Err(Error::tensor(
                "weight",
                format!("holds {taps} taps per filter, not a square kernel: use ConvOp"),
            ));
        }
        vec![k, k]
    };
    ConvOp::new(input.shape, cout, &kernel, weight, bias, params)?.run(input, output)
}

/// `ndarray` entry points (feature `ndarray`).
#[cfg(feature = "ndarray")]
pub mod ndarray_api {
    use super::*;
    use ndarray::{ArrayD, ArrayViewD, IxDyn};

    /// Convolves an `ndarray` view (`[N, C, H, W]` or `[N, C, L]`, any non-negative strides)
    /// with OIHW weights (`[Cout, C / groups, KH, KW]`), returning a new array.
    ///
    /// ```
    /// # #[cfg(feature = "ndarray")] {
    /// use convkit::api::{ConvParams, ndarray_api::conv_nd};
    /// let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[1, 2, 4, 4]));
    /// let w = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[3, 2, 3, 3]));
    /// let y = conv_nd(x.view(), w.view(), None, &ConvParams::new(2)).unwrap();
    /// assert_eq!(y.shape(), &[1, 3, 2, 2]);
    /// assert!(y.iter().all(|&v| v == 18.0));
    /// # }
    /// ```
    pub fn conv_nd(
        input: ArrayViewD<f32>,
        weight: ArrayViewD<f32>,
        bias: Option<&[f32]>,
        params: &ConvParams,
    ) -> Result<ArrayD<f32>> {
        // Any memory order (negative strides included) is copied to standard layout only
        // when it is not already.
        let x = input.as_standard_layout();
        let w = weight.as_standard_layout();
        let (xs, ws) = (
            x.as_slice().expect("standard layout"),
            w.as_slice().expect("standard layout"),
        );
        let (shape, wshape) = (input.shape().to_vec(), weight.shape().to_vec());
        if wshape.len() != shape.len() || shape.len() < 3 {
            return Err(Error::tensor(
                "weight",
                "must have the input's rank, [Cout, C / groups, K..]",
            ));
        }
        let op = ConvOp::new(&shape, wshape[0], &wshape[2..], ws, bias, params)?;
        let oshape = op.output_shape().to_vec();
        let mut out = ArrayD::<f32>::zeros(IxDyn(&oshape));
        let strides = contiguous_strides(&shape);
        let view = View::new(xs, 0, &shape, &strides)?;
        let slice = out.as_slice_mut().expect("a fresh array is contiguous");
        op.run(&view, &mut ViewMut::contiguous(slice, &oshape)?)?;
        Ok(out)
    }
}
