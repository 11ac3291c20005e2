//! Every size derived from a [`ConvSpec`], validated and computed with checked arithmetic.
//!
//! Internally a 1-D layer is a 2-D layer with height 1 (kernel 1, stride 1, no padding along
//! H), so every algorithm serves both; the public shapes keep the spec's rank.

use crate::epilogue::{Epilogue, Pool};
use crate::error::{checked_f32_bytes, checked_product, Error, Result};
use crate::spec::{ConvSpec, Padding};

/// A resolved pooling window along one spatial dim.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolDim {
    /// Window size.
    pub size: usize,
    /// Step.
    pub stride: usize,
    /// Padding before.
    pub pad_before: usize,
    /// Padding after.
    pub pad_after: usize,
}

/// The validated geometry of one layer. Sizes are per spatial dim as `[h, w]`; for 1-D
/// layers `h` is the unit dim.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// 1 or 2.
    pub spatial_rank: usize,
    /// N.
    pub batch: usize,
    /// C.
    pub in_channels: usize,
    /// Cout.
    pub out_channels: usize,
    /// Groups.
    pub groups: usize,
    /// C / groups.
    pub cin_per_group: usize,
    /// Cout / groups.
    pub cout_per_group: usize,
    /// Input spatial size [H, W].
    pub input: [usize; 2],
    /// Kernel [KH, KW].
    pub kernel: [usize; 2],
    /// Stride [SH, SW].
    pub stride: [usize; 2],
    /// Dilation [DH, DW].
    pub dilation: [usize; 2],
    /// Padding before [top, left].
    pub pad_before: [usize; 2],
    /// Padding after [bottom, right].
    pub pad_after: [usize; 2],
    /// Conv output spatial size [OH, OW].
    pub conv_out: [usize; 2],
    /// Windowed pool per dim, when the pool is max/avg.
    pub pool_dims: Option<[PoolDim; 2]>,
    /// Final output spatial size (after the pool) [PH, PW].
    pub output: [usize; 2],
    /// The epilogue.
    pub epilogue: Epilogue,
}

fn per_dim(v: &Option<Vec<usize>>, rank: usize, field: &str) -> Result<Vec<usize>> {
    match v {
        None => Ok(vec![1; rank]),
        Some(v) => {
            if v.len() != rank {
                return Err(Error::spec(
                    field,
                    format!("has {} values, the layer has {rank} spatial dims", v.len()),
                ));
            }
            for (i, &x) in v.iter().enumerate() {
                if x == 0 {
                    return Err(Error::spec(format!("{field}[{i}]"), "must be >= 1"));
                }
            }
            Ok(v.clone())
        }
    }
}

/// TensorFlow "same" padding for one dim: (before, after).
pub fn same_padding(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Result<(usize, usize)> {
    let ovf = || Error::overflow("\"same\" padding");
    // total = max((ceil(in/s) - 1) * s + (k - 1) * d + 1 - in, 0)
    let out = input.div_ceil(stride);
    let span = (out - 1)
        .checked_mul(stride)
        .and_then(|a| {
            (kernel - 1)
                .checked_mul(dilation)
                .and_then(|b| a.checked_add(b))
        })
        .and_then(|a| a.checked_add(1))
        .ok_or_else(ovf)?;
    let total = span.saturating_sub(input);
    Ok((total / 2, total - total / 2))
}

/// Conv output size of one dim: floor((in + pb + pa - d (k - 1) - 1) / s) + 1, or an error
/// when the dilated kernel does not fit in the padded input.
fn conv_out_dim(
    input: usize,
    pb: usize,
    pa: usize,
    k: usize,
    s: usize,
    d: usize,
    dim: &str,
) -> Result<usize> {
    let padded = input
        .checked_add(pb)
        .and_then(|x| x.checked_add(pa))
        .ok_or_else(|| Error::overflow(format!("padded input along {dim}")))?;
    let span = (k - 1)
        .checked_mul(d)
        .and_then(|x| x.checked_add(1))
        .ok_or_else(|| Error::overflow(format!("dilated kernel along {dim}")))?;
    if padded < span {
        return Err(Error::spec(
            "kernel",
            format!("the dilated kernel ({span}) is larger than the padded input ({padded}) along {dim}: the output would be empty"),
        ));
    }
    Ok((padded - span) / s + 1)
}

impl Geometry {
    /// Validates `spec` and derives every size. Errors name the field at fault.
    pub fn new(spec: &ConvSpec) -> Result<Self> {
        let rank = match spec.input.len() {
            4 => 2,
            3 => 1,
            n => {
                return Err(Error::spec(
                    "input",
                    format!("has {n} dims; expected [N, C, H, W] (2-D) or [N, C, L] (1-D)"),
                ))
            }
        };
        for (i, &d) in spec.input.iter().enumerate() {
            if d == 0 {
                return Err(Error::spec(format!("input[{i}]"), "must be >= 1"));
            }
        }
        if spec.kernel.len() != rank {
            return Err(Error::spec(
                "kernel",
                format!(
                    "has {} values, the input has {rank} spatial dims",
                    spec.kernel.len()
                ),
            ));
        }
        for (i, &k) in spec.kernel.iter().enumerate() {
            if k == 0 {
                return Err(Error::spec(format!("kernel[{i}]"), "must be >= 1"));
            }
        }
        if spec.out_channels == 0 {
            return Err(Error::spec("out_channels", "must be >= 1"));
        }
        let stride = per_dim(&spec.stride, rank, "stride")?;
        let dilation = per_dim(&spec.dilation, rank, "dilation")?;
        let (batch, cin) = (spec.input[0], spec.input[1]);
        let cout = spec.out_channels;
        let g = spec.groups;
        if g == 0 {
            return Err(Error::spec("groups", "must be >= 1"));
        }
        if !cin.is_multiple_of(g) {
            return Err(Error::spec(
                "groups",
                format!("{g} does not divide the input channels {cin}"),
            ));
        }
        if !cout.is_multiple_of(g) {
            return Err(Error::spec(
                "groups",
                format!("{g} does not divide out_channels {cout}"),
            ));
        }
        let spatial_in = &spec.input[2..];
        let pads: Vec<(usize, usize)> = match &spec.padding {
            Padding::Valid => vec![(0, 0); rank],
            Padding::Same => (0..rank)
                .map(|i| same_padding(spatial_in[i], spec.kernel[i], stride[i], dilation[i]))
                .collect::<Result<_>>()?,
            Padding::Symmetric(p) => {
                if p.len() != rank {
                    return Err(Error::spec(
                        "padding",
                        format!("has {} values, the layer has {rank} spatial dims", p.len()),
                    ));
                }
                p.iter().map(|&x| (x, x)).collect()
            }
            Padding::Explicit(p) => {
                if p.len() != rank {
                    return Err(Error::spec(
                        "padding",
                        format!("has {} pairs, the layer has {rank} spatial dims", p.len()),
                    ));
                }
                p.clone()
            }
        };
        // Lift to 2-D: a 1-D layer is H = 1.
        let lift = |v: &[usize], unit: usize| -> [usize; 2] {
            if rank == 2 {
                [v[0], v[1]]
            } else {
                [unit, v[0]]
            }
        };
        let input = lift(spatial_in, 1);
        let kernel = lift(&spec.kernel, 1);
        let stride = lift(&stride, 1);
        let dilation = lift(&dilation, 1);
        let pb: Vec<usize> = pads.iter().map(|p| p.0).collect();
        let pa: Vec<usize> = pads.iter().map(|p| p.1).collect();
        let pad_before = lift(&pb, 0);
        let pad_after = lift(&pa, 0);
        let names = if rank == 2 { ["H", "W"] } else { ["H", "L"] };
        let mut conv_out = [0; 2];
        for i in 0..2 {
            conv_out[i] = conv_out_dim(
                input[i],
                pad_before[i],
                pad_after[i],
                kernel[i],
                stride[i],
                dilation[i],
                names[i],
            )?;
        }

        let (pool_dims, output) = match &spec.pool {
            None => (None, conv_out),
            Some(Pool::GlobalMax) | Some(Pool::GlobalAvg) => (None, [1, 1]),
            Some(Pool::Max(w)) | Some(Pool::Avg { window: w, .. }) => {
                for (name, len) in [
                    ("size", w.size.len()),
                    ("stride", w.stride.len()),
                    ("padding", w.padding.len()),
                ] {
                    if len != rank {
                        return Err(Error::spec(
                            format!("pool.{name}"),
                            format!("has {len} values, the layer has {rank} spatial dims"),
                        ));
                    }
                }
                let size = lift(&w.size, 1);
                let pstride = lift(&w.stride, 1);
                let ppb: Vec<usize> = w.padding.iter().map(|p| p.0).collect();
                let ppa: Vec<usize> = w.padding.iter().map(|p| p.1).collect();
                let ppb = lift(&ppb, 0);
                let ppa = lift(&ppa, 0);
                let mut dims = [PoolDim {
                    size: 1,
                    stride: 1,
                    pad_before: 0,
                    pad_after: 0,
                }; 2];
                let mut out = [0; 2];
                for i in 0..2 {
                    let j = if rank == 2 { i } else { 0 };
                    if size[i] == 0 {
                        return Err(Error::spec(format!("pool.size[{j}]"), "must be >= 1"));
                    }
                    if pstride[i] == 0 {
                        return Err(Error::spec(format!("pool.stride[{j}]"), "must be >= 1"));
                    }
                    if ppb[i] >= size[i] || ppa[i] >= size[i] {
                        return Err(Error::spec(
                            format!("pool.padding[{j}]"),
                            format!("padding ({}, {}) must be smaller than the window {}: a window would hold only padding", ppb[i], ppa[i], size[i]),
                        ));
                    }
                    let padded = conv_out[i]
                        .checked_add(ppb[i])
                        .and_then(|x| x.checked_add(ppa[i]))
                        .ok_or_else(|| Error::overflow("pool padding"))?;
                    if padded < size[i] {
                        return Err(Error::spec(
                            format!("pool.size[{j}]"),
                            format!(
                                "window {} is larger than the padded conv output {} along {}",
                                size[i], padded, names[i]
                            ),
                        ));
                    }
                    out[i] = (padded - size[i]) / pstride[i] + 1;
                    // The last window starts at (out - 1) * s - pb; it must reach a real cell.
                    let last_start = (out[i] - 1) * pstride[i];
                    if last_start >= conv_out[i] + ppb[i] {
                        return Err(Error::spec(
                            format!("pool.padding[{j}]"),
                            "the last pool window would hold only padding",
                        ));
                    }
                    dims[i] = PoolDim {
                        size: size[i],
                        stride: pstride[i],
                        pad_before: ppb[i],
                        pad_after: ppa[i],
                    };
                }
                (Some(dims), out)
            }
        };

        let geom = Geometry {
            spatial_rank: rank,
            batch,
            in_channels: cin,
            out_channels: cout,
            groups: g,
            cin_per_group: cin / g,
            cout_per_group: cout / g,
            input,
            kernel,
            stride,
            dilation,
            pad_before,
            pad_after,
            conv_out,
            pool_dims,
            output,
            epilogue: spec.epilogue(),
        };
        // Every tensor must be addressable: refuse before anything is allocated.
        for (what, shape) in [
            ("input", geom.input_shape()),
            ("weight", geom.weight_shape()),
            ("conv output", geom.conv_output_shape()),
            ("output", geom.output_shape()),
        ] {
            let n = checked_product(&shape, what)?;
            checked_f32_bytes(n, what)?;
        }
        geom.flops_checked()?;
        Ok(geom)
    }

    fn public(&self, n: usize, c: usize, hw: [usize; 2]) -> Vec<usize> {
        if self.spatial_rank == 2 {
            vec![n, c, hw[0], hw[1]]
        } else {
            vec![n, c, hw[1]]
        }
    }

    /// Input shape in the spec's rank, NCHW / NCL order.
    pub fn input_shape(&self) -> Vec<usize> {
        self.public(self.batch, self.in_channels, self.input)
    }
    /// Weight shape `[Cout, C/g, KH, KW]` or `[Cout, C/g, K]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        self.public(self.out_channels, self.cin_per_group, self.kernel)
    }
    /// Bias shape `[Cout]`.
    pub fn bias_shape(&self) -> Vec<usize> {
        vec![self.out_channels]
    }
    /// The conv output shape (also the residual's).
    pub fn conv_output_shape(&self) -> Vec<usize> {
        self.public(self.batch, self.out_channels, self.conv_out)
    }
    /// The final output shape (after the pool).
    pub fn output_shape(&self) -> Vec<usize> {
        self.public(self.batch, self.out_channels, self.output)
    }
    /// Elements of the input (checked at construction).
    pub fn input_len(&self) -> usize {
        self.input_shape().iter().product()
    }
    /// Elements of the weights.
    pub fn weight_len(&self) -> usize {
        self.weight_shape().iter().product()
    }
    /// Elements of the conv output (and of the residual).
    pub fn conv_output_len(&self) -> usize {
        self.conv_output_shape().iter().product()
    }
    /// Elements of the final output.
    pub fn output_len(&self) -> usize {
        self.output_shape().iter().product()
    }
    /// KH * KW.
    pub fn kernel_area(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
    /// H * W of the input.
    pub fn input_area(&self) -> usize {
        self.input[0] * self.input[1]
    }
    /// OH * OW of the conv output.
    pub fn conv_out_area(&self) -> usize {
        self.conv_out[0] * self.conv_out[1]
    }

    fn flops_checked(&self) -> Result<u64> {
        let dims = [
            2u64,
            self.batch as u64,
            self.out_channels as u64,
            self.conv_out[0] as u64,
            self.conv_out[1] as u64,
            self.cin_per_group as u64,
            self.kernel[0] as u64,
            self.kernel[1] as u64,
        ];
        dims.iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::overflow("FLOP count"))
    }

    /// FLOPs of the convolution alone, as `bench/layers.json` counts them:
    /// 2 * N * Cout * prod(out) * (Cin / groups) * prod(kernel).
    pub fn flops(&self) -> u64 {
        self.flops_checked().unwrap_or(u64::MAX)
    }

    /// Whether the layer is depthwise: one input channel per group (groups == C), any channel
    /// multiplier (Cout = m * C).
    pub fn is_depthwise(&self) -> bool {
        self.cin_per_group == 1
    }

    /// Whether the kernel is 1x1 (or 1 in 1-D) with no padding and dilation 1.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.pad_before == [0, 0] && self.pad_after == [0, 0]
    }
}
