//! convkit as the conv2d of [candle](https://github.com/huggingface/candle): a layer that
//! plans convkit once per input shape (algorithm chosen, weights packed) and runs as a
//! candle `CustomOp1` on the input tensor, reading candle's storage through its strides and
//! offset (no copy for contiguous inputs).
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let w = Tensor::randn(0f32, 1.0, (8, 3, 3, 3), &dev)?;
//! let conv = convkit_candle::Conv2d::new(w, None, convkit_candle::Conv2dConfig { padding: 1, ..Default::default() })?;
//! let x = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &dev)?;
//! let y = conv.forward(&x)?; // [1, 8, 32, 32], on convkit's kernels
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use convkit::api::{ConvOp, ConvParams, View, ViewMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Stride, padding, dilation and groups, as candle's `conv2d` takes them.
#[derive(Copy, Clone, Debug)]
pub struct Conv2dConfig {
    /// Symmetric padding.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// Groups.
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig {
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
        }
    }
}

/// A 2-D convolution layer on convkit: the weights (`[Cout, C / groups, KH, KW]`, f32) and an
/// optional bias; one convkit plan per input shape, made on first use and kept.
pub struct Conv2d {
    weight: Vec<f32>,
    wdims: Vec<usize>,
    bias: Option<Vec<f32>>,
    cfg: Conv2dConfig,
    plans: Mutex<HashMap<Vec<usize>, Arc<ConvOp>>>,
}

fn err(e: convkit::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("convkit: {e}"))
}

impl Conv2d {
    /// A layer with `weight` (`[Cout, C / groups, KH, KW]`) and `bias` (`[Cout]`).
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Result<Self> {
        let wdims = weight.dims().to_vec();
        if wdims.len() != 4 {
            candle_core::bail!("conv2d weight must be [Cout, C/groups, KH, KW], got {wdims:?}");
        }
        Ok(Conv2d {
            weight: weight.flatten_all()?.to_vec1::<f32>()?,
            wdims,
            bias: bias.map(|b| b.to_vec1::<f32>()).transpose()?,
            cfg,
            plans: Mutex::new(HashMap::new()),
        })
    }

    fn plan_for(&self, dims: &[usize]) -> Result<Arc<ConvOp>> {
        let mut plans = self.plans.lock().expect("plan cache lock");
        if let Some(p) = plans.get(dims) {
            return Ok(p.clone());
        }
        let c = self.cfg;
        let mut params = ConvParams::new(2);
        params.stride = vec![c.stride; 2];
        params.padding = vec![(c.padding, c.padding); 2];
        params.dilation = vec![c.dilation; 2];
        params.groups = c.groups;
        let op = ConvOp::new(
            dims,
            self.wdims[0],
            &self.wdims[2..],
            &self.weight,
            self.bias.as_deref(),
            &params,
        )
        .map_err(err)?;
        let op = Arc::new(op);
        plans.insert(dims.to_vec(), op.clone());
        Ok(op)
    }

    /// The algorithm convkit runs for inputs of `dims` (plans if needed).
    pub fn algorithm(&self, dims: &[usize]) -> Result<&'static str> {
        Ok(self.plan_for(dims)?.plan().algo().name())
    }

    /// `x` (`[N, C, H, W]`, f32, CPU, any strides) convolved: `[N, Cout, OH, OW]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let op = self.plan_for(x.dims())?;
        x.apply_op1_no_bwd(&Planned(op))
    }
}

/// The custom op: one planned convolution.
struct Planned(Arc<ConvOp>);

impl CustomOp1 for Planned {
    fn name(&self) -> &'static str {
        "convkit-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("convkit-conv2d takes f32 tensors");
        };
        let view =
            View::new(data, layout.start_offset(), layout.dims(), layout.stride()).map_err(err)?;
        let oshape = self.0.output_shape().to_vec();
        let mut out = vec![0f32; oshape.iter().product()];
        self.0
            .run(
                &view,
                &mut ViewMut::contiguous(&mut out, &oshape).map_err(err)?,
            )
            .map_err(err)?;
        Ok((CpuStorage::F32(out), Shape::from(oshape)))
    }
}
