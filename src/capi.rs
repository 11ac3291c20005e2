//! The C ABI: an opaque plan handle with the lifecycle of XNNPACK and oneDNN (create, query,
//! run, destroy), status codes, and a thread-local message for the last error. No panic
//! crosses the boundary (`catch_unwind`), null pointers and bad lengths are errors, and
//! `convkit_plan_destroy(NULL)` does nothing. The header is `include/convkit.h`.

use crate::plan::{Plan, PlanOptions};
use crate::spec::ConvSpec;
use crate::tensor::Layout;
use crate::tune::TuneMode;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Status codes returned by every function.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConvkitStatus {
    /// Success.
    Ok = 0,
    /// A null pointer, a bad length or an invalid option.
    InvalidArgument = 1,
    /// The layer spec is malformed or describes an impossible layer.
    InvalidSpec = 2,
    /// The algorithm or ISA cannot run this layer here.
    Unsupported = 3,
    /// The plan would exceed its memory budget.
    OutOfMemory = 4,
    /// An internal error (a caught panic): please report it.
    Internal = 5,
}

/// An opaque plan.
pub struct ConvkitPlan {
    plan: Plan,
}

/// The tuner mode of plans created through the C ABI (`convkit_tuner_set_mode`).
static TUNE_MODE: std::sync::Mutex<TuneMode> = std::sync::Mutex::new(TuneMode::Heuristic);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &crate::Error) -> ConvkitStatus {
    use crate::Error::*;
    match e {
        Spec { .. } | Json(_) | Overflow(_) => ConvkitStatus::InvalidSpec,
        UnknownAlgorithm(_) | AlgorithmRejects { .. } | Isa(_) => ConvkitStatus::Unsupported,
        Budget(_) => ConvkitStatus::OutOfMemory,
        Tensor { .. } | File { .. } | InvalidArgument(_) => ConvkitStatus::InvalidArgument,
    }
}

/// Runs `f`, turning errors and panics into a status with the message saved.
fn guard(f: impl FnOnce() -> Result<(), (ConvkitStatus, String)>) -> ConvkitStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ConvkitStatus::Ok,
        Ok(Err((status, msg))) => {
            set_error(&msg);
            status
        }
        Err(_) => {
            set_error("internal error (a panic was caught at the C boundary)");
            ConvkitStatus::Internal
        }
    }
}

fn lib_err(e: crate::Error) -> (ConvkitStatus, String) {
    (status_of(&e), e.to_string())
}

fn arg_err(msg: &str) -> (ConvkitStatus, String) {
    (ConvkitStatus::InvalidArgument, msg.to_string())
}

/// Reads `len` floats at `ptr`, or `None` for a null pointer with length 0.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable floats.
unsafe fn floats<'a>(
    ptr: *const f32,
    len: usize,
    name: &str,
) -> Result<Option<&'a [f32]>, (ConvkitStatus, String)> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(None)
        } else {
            Err(arg_err(&format!("{name} is NULL but its length is {len}")))
        };
    }
    if ptr.align_offset(std::mem::align_of::<f32>()) != 0 {
        return Err(arg_err(&format!("{name} is not aligned to 4 bytes")));
    }
    // SAFETY: non-null, aligned, and the caller vouches for `len` readable floats.
    Ok(Some(unsafe { std::slice::from_raw_parts(ptr, len) }))
}

/// The library version, e.g. "0.1.0" (static storage).
#[unsafe(no_mangle)]
pub extern "C" fn convkit_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The message of the last failed call on this thread ("" if none); valid until the next
/// failing call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn convkit_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Creates a plan from a layer spec in JSON (SPEC.md section 1) and OIHW weights.
/// `bias` may be NULL (with `bias_len` 0) when the spec has `"bias": false`.
/// `algo` may be NULL or "auto"; `layout` is 0 for NCHW, 1 for NHWC; `threads` 0 uses all
/// cores. On success `*out` holds the plan, to be freed with `convkit_plan_destroy`.
///
/// # Safety
/// `spec_json` and a non-null `algo` are NUL-terminated strings; `weight` and a non-null
/// `bias` point to the given number of floats; `out` is a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_plan_create_json(
    spec_json: *const c_char,
    weight: *const f32,
    weight_len: usize,
    bias: *const f32,
    bias_len: usize,
    algo: *const c_char,
    layout: u32,
    threads: usize,
    out: *mut *mut ConvkitPlan,
) -> ConvkitStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: checked non-null; the caller provides a writable pointer.
        unsafe { *out = std::ptr::null_mut() };
        if spec_json.is_null() {
            return Err(arg_err("spec_json is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by the contract.
        let text = unsafe { CStr::from_ptr(spec_json) }
            .to_str()
            .map_err(|_| arg_err("spec_json is not UTF-8"))?;
        let spec = ConvSpec::from_json(text).map_err(lib_err)?;
        // SAFETY: the contract of this function.
        unsafe {
            create(
                &spec, weight, weight_len, bias, bias_len, algo, layout, threads, out,
            )
        }
    })
}

/// The part of plan creation both entry points share.
///
/// # Safety
/// As for `convkit_plan_create_json` (`out` checked non-null by the caller).
#[allow(clippy::too_many_arguments)]
unsafe fn create(
    spec: &ConvSpec,
    weight: *const f32,
    weight_len: usize,
    bias: *const f32,
    bias_len: usize,
    algo: *const c_char,
    layout: u32,
    threads: usize,
    out: *mut *mut ConvkitPlan,
) -> Result<(), (ConvkitStatus, String)> {
    // SAFETY: the contract of this function.
    let w = unsafe { floats(weight, weight_len, "weight") }?
        .ok_or_else(|| arg_err("weight is NULL"))?;
    // SAFETY: as above.
    let b = unsafe { floats(bias, bias_len, "bias") }?;
    let algo = if algo.is_null() {
        None
    } else {
        // SAFETY: non-null and NUL-terminated by the contract.
        Some(
            unsafe { CStr::from_ptr(algo) }
                .to_str()
                .map_err(|_| arg_err("algo is not UTF-8"))?
                .to_string(),
        )
    };
    let opts = PlanOptions {
        algo,
        layout: layout_of(layout)?,
        threads: (threads > 0).then_some(threads),
        tune: TUNE_MODE.lock().map(|m| m.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let plan = Plan::new(spec, w, b, &opts).map_err(lib_err)?;
    // SAFETY: checked non-null by the caller.
    unsafe { *out = Box::into_raw(Box::new(ConvkitPlan { plan })) };
    Ok(())
}

/// The layout a C caller names: 0 NCHW (NCL), 1 NHWC (NLC).
fn layout_of(layout: u32) -> Result<Layout, (ConvkitStatus, String)> {
    match layout {
        0 => Ok(Layout::Nchw),
        1 => Ok(Layout::Nhwc),
        other => Err(arg_err(&format!(
            "layout {other} is neither 0 (NCHW) nor 1 (NHWC)"
        ))),
    }
}

/// Activations of [`ConvkitLayer`] (its `activation` field).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConvkitActivation {
    /// No activation.
    None = 0,
    /// max(x, 0).
    Relu = 1,
    /// clamp(x, 0, 6).
    Relu6 = 2,
    /// 1 / (1 + e^-x).
    Sigmoid = 3,
    /// tanh(x).
    Tanh = 4,
    /// x Phi(x), the erf form.
    Gelu = 5,
    /// The tanh approximation of gelu.
    GeluTanh = 6,
    /// x sigmoid(x).
    Silu = 7,
    /// x < 0 ? alpha x : x, alpha in `activation_alpha`.
    LeakyRelu = 8,
    /// clamp(x, clamp_min, clamp_max).
    Clamp = 9,
}

/// Pools of [`ConvkitLayer`] (its `pool` field).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConvkitPool {
    /// No pool.
    None = 0,
    /// Max over each window (padding cells ignored).
    Max = 1,
    /// Average over each window (`count_include_pad` chooses the divisor).
    Avg = 2,
    /// Max over the whole plane.
    GlobalMax = 3,
    /// Average over the whole plane.
    GlobalAvg = 4,
}

/// A layer described field by field (the C form of SPEC.md section 1). Arrays hold one value
/// per spatial dim, the first `spatial_rank` used (1-D: `input` is `[N, C, L]`, and only
/// `kernel[0]`, `stride[0]`, ... are read). Enum fields are `uint32_t` so that any value a
/// C caller passes is defined: an unknown one is an error.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ConvkitLayer {
    /// 1 or 2.
    pub spatial_rank: u32,
    /// `[N, C, H, W]`, or `[N, C, L]` in 1-D.
    pub input: [usize; 4],
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size.
    pub kernel: [usize; 2],
    /// Stride (>= 1).
    pub stride: [usize; 2],
    /// Dilation (>= 1).
    pub dilation: [usize; 2],
    /// Padding before (top, left).
    pub pad_before: [usize; 2],
    /// Padding after (bottom, right).
    pub pad_after: [usize; 2],
    /// Groups (divides C and out_channels).
    pub groups: usize,
    /// 1 when a bias is added.
    pub bias: u32,
    /// 1 when a residual of the conv output shape is added before the activation.
    pub residual: u32,
    /// A `ConvkitActivation`.
    pub activation: u32,
    /// The leaky relu slope.
    pub activation_alpha: f32,
    /// The clamp's lower bound.
    pub clamp_min: f32,
    /// The clamp's upper bound.
    pub clamp_max: f32,
    /// A `ConvkitPool`.
    pub pool: u32,
    /// Pool window.
    pub pool_size: [usize; 2],
    /// Pool stride (0 means the window size).
    pub pool_stride: [usize; 2],
    /// Pool padding before.
    pub pool_pad_before: [usize; 2],
    /// Pool padding after.
    pub pool_pad_after: [usize; 2],
    /// 1 when average pooling divides by the whole window, padding included.
    pub count_include_pad: u32,
}

/// The layer as a spec, or why not.
fn layer_spec(l: &ConvkitLayer) -> Result<ConvSpec, (ConvkitStatus, String)> {
    use crate::epilogue::{Activation, Pool, PoolWindow};
    let r = match l.spatial_rank {
        1 => 1,
        2 => 2,
        other => return Err(arg_err(&format!("spatial_rank {other} is neither 1 nor 2"))),
    };
    let activation = match l.activation {
        0 => Activation::None,
        1 => Activation::Relu,
        2 => Activation::Relu6,
        3 => Activation::Sigmoid,
        4 => Activation::Tanh,
        5 => Activation::Gelu,
        6 => Activation::GeluTanh,
        7 => Activation::Silu,
        8 => Activation::LeakyRelu {
            alpha: l.activation_alpha,
        },
        9 => Activation::Clamp {
            min: l.clamp_min,
            max: l.clamp_max,
        },
        other => {
            return Err(arg_err(&format!(
                "activation {other} is not a ConvkitActivation"
            )))
        }
    };
    let window = || PoolWindow {
        size: l.pool_size[..r].to_vec(),
        stride: (0..r)
            .map(|d| {
                if l.pool_stride[d] == 0 {
                    l.pool_size[d]
                } else {
                    l.pool_stride[d]
                }
            })
            .collect(),
        padding: (0..r)
            .map(|d| (l.pool_pad_before[d], l.pool_pad_after[d]))
            .collect(),
    };
    let pool = match l.pool {
        0 => None,
        1 => Some(Pool::Max(window())),
        2 => Some(Pool::Avg {
            window: window(),
            count_include_pad: l.count_include_pad != 0,
        }),
        3 => Some(Pool::GlobalMax),
        4 => Some(Pool::GlobalAvg),
        other => return Err(arg_err(&format!("pool {other} is not a ConvkitPool"))),
    };
    Ok(
        ConvSpec::new(&l.input[..r + 2], l.out_channels, &l.kernel[..r])
            .with_stride(&l.stride[..r])
            .with_dilation(&l.dilation[..r])
            .with_padding(crate::spec::Padding::Explicit(
                (0..r).map(|d| (l.pad_before[d], l.pad_after[d])).collect(),
            ))
            .with_groups(l.groups)
            .with_bias(l.bias != 0)
            .with_residual(l.residual != 0)
            .with_activation(activation)
            .with_pool(pool),
    )
}

/// Creates a plan from a [`ConvkitLayer`]; otherwise as `convkit_plan_create_json`.
///
/// # Safety
/// `layer` points to a `ConvkitLayer`; the rest as for `convkit_plan_create_json`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn convkit_plan_create(
    layer: *const ConvkitLayer,
    weight: *const f32,
    weight_len: usize,
    bias: *const f32,
    bias_len: usize,
    algo: *const c_char,
    layout: u32,
    threads: usize,
    out: *mut *mut ConvkitPlan,
) -> ConvkitStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: checked non-null; the caller provides a writable pointer.
        unsafe { *out = std::ptr::null_mut() };
        if layer.is_null() {
            return Err(arg_err("layer is NULL"));
        }
        // SAFETY: non-null; points to a ConvkitLayer by the contract (plain data, any bits
        // valid: the enum fields are integers).
        let spec = layer_spec(unsafe { &*layer })?;
        // SAFETY: the contract of this function.
        unsafe {
            create(
                &spec, weight, weight_len, bias, bias_len, algo, layout, threads, out,
            )
        }
    })
}

/// The name of the algorithm a plan runs (static storage), e.g. "winograd_f4x3"; NULL for a
/// NULL plan.
///
/// # Safety
/// `plan` is NULL or a live plan.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_plan_algo(plan: *const ConvkitPlan) -> *const c_char {
    if plan.is_null() {
        return std::ptr::null();
    }
    // SAFETY: a live plan by the contract.
    let name = unsafe { (*plan).plan.algo().name() };
    ALGO_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(std::ptr::null(), |(_, c)| c.as_ptr() as *const c_char)
}

/// The algorithm names with their NUL terminators (static C strings).
const ALGO_NAMES: [(&str, &str); 13] = [
    ("direct", "direct\0"),
    ("direct_oc", "direct_oc\0"),
    ("im2col", "im2col\0"),
    ("gemm1x1", "gemm1x1\0"),
    ("depthwise", "depthwise\0"),
    ("grouped", "grouped\0"),
    ("winograd_f2x3", "winograd_f2x3\0"),
    ("winograd_f4x3", "winograd_f4x3\0"),
    ("winograd_f6x3", "winograd_f6x3\0"),
    ("dilated_f2x3", "dilated_f2x3\0"),
    ("dilated_f4x3", "dilated_f4x3\0"),
    ("dilated_f6x3", "dilated_f6x3\0"),
    ("reference", "reference\0"),
];

/// How plans created afterwards through this ABI choose with `algo` NULL or "auto":
/// `mode` 0 = heuristic (no measurement), 1 = measure (time the candidates within
/// `budget_ms`), 2 = exhaustive. The cache and loaded wisdom are used first in every mode.
#[unsafe(no_mangle)]
pub extern "C" fn convkit_tuner_set_mode(mode: u32, budget_ms: u32) -> ConvkitStatus {
    guard(|| {
        let m = match mode {
            0 => TuneMode::Heuristic,
            1 => TuneMode::Measure {
                budget_ms: budget_ms as u64,
            },
            2 => TuneMode::Exhaustive,
            other => return Err(arg_err(&format!("tuner mode {other} is not 0, 1 or 2"))),
        };
        *TUNE_MODE
            .lock()
            .map_err(|_| arg_err("tuner mode lock poisoned"))? = m;
        Ok(())
    })
}

/// Writes the tuner's cache as wisdom JSON into `buf` (NUL-terminated) and its length
/// (without the NUL) into `*len`. With `buf` NULL only the length is written; a buffer of
/// `capacity <= *len` bytes is an error (`*len` still tells the size needed).
///
/// # Safety
/// `len` is writable; a non-null `buf` has `capacity` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_wisdom_export(
    buf: *mut c_char,
    capacity: usize,
    len: *mut usize,
) -> ConvkitStatus {
    guard(|| {
        if len.is_null() {
            return Err(arg_err("len is NULL"));
        }
        let text = crate::tune::export_wisdom();
        // SAFETY: non-null and writable by the contract.
        unsafe { *len = text.len() };
        if buf.is_null() {
            return Ok(());
        }
        if capacity <= text.len() {
            return Err(arg_err(&format!(
                "buffer of {capacity} bytes is too small: the wisdom needs {}",
                text.len() + 1
            )));
        }
        // SAFETY: `buf` has `capacity > text.len()` writable bytes by the contract.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            *buf.add(text.len()) = 0;
        }
        Ok(())
    })
}

/// Loads wisdom JSON text (as `convkit_wisdom_export` writes) into the tuner's cache; writes
/// the number of entries into `*entries` (may be NULL). Bad text is an error and changes
/// nothing.
///
/// # Safety
/// `json` is a NUL-terminated string; `entries` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_wisdom_import(
    json: *const c_char,
    entries: *mut usize,
) -> ConvkitStatus {
    guard(|| {
        if json.is_null() {
            return Err(arg_err("json is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by the contract.
        let text = unsafe { CStr::from_ptr(json) }
            .to_str()
            .map_err(|_| arg_err("json is not UTF-8"))?;
        let n = crate::tune::import_wisdom(text).map_err(lib_err)?;
        if !entries.is_null() {
            // SAFETY: non-null and writable by the contract.
            unsafe { *entries = n };
        }
        Ok(())
    })
}

/// Writes the number of floats of the plan's output into `*len`.
///
/// # Safety
/// `plan` is NULL or a live plan; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_plan_output_len(
    plan: *const ConvkitPlan,
    len: *mut usize,
) -> ConvkitStatus {
    guard(|| {
        if plan.is_null() || len.is_null() {
            return Err(arg_err("plan or len is NULL"));
        }
        // SAFETY: non-null; a live plan and a writable pointer by the contract.
        unsafe { *len = (*plan).plan.geometry().output_len() };
        Ok(())
    })
}

/// Writes the plan's per-run scratch in bytes into `*bytes` (owned by the plan's threads).
///
/// # Safety
/// As for `convkit_plan_output_len`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_plan_scratch_size(
    plan: *const ConvkitPlan,
    bytes: *mut usize,
) -> ConvkitStatus {
    guard(|| {
        if plan.is_null() || bytes.is_null() {
            return Err(arg_err("plan or bytes is NULL"));
        }
        // SAFETY: non-null; a live plan and a writable pointer by the contract.
        unsafe { *bytes = (*plan).plan.scratch_bytes() };
        Ok(())
    })
}

/// Runs the plan. `residual` may be NULL (with length 0) when the spec has none. Lengths are
/// checked against the layer; on error `output` is left untouched.
///
/// # Safety
/// `plan` is a live plan; the pointers point to the given numbers of floats; `output` does
/// not overlap the inputs. A plan may run from several threads at once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_plan_run(
    plan: *const ConvkitPlan,
    input: *const f32,
    input_len: usize,
    residual: *const f32,
    residual_len: usize,
    output: *mut f32,
    output_len: usize,
) -> ConvkitStatus {
    guard(|| {
        if plan.is_null() {
            return Err(arg_err("plan is NULL"));
        }
        // SAFETY: the contract of this function.
        let x = unsafe { floats(input, input_len, "input") }?
            .ok_or_else(|| arg_err("input is NULL"))?;
        // SAFETY: as above.
        let r = unsafe { floats(residual, residual_len, "residual") }?;
        if output.is_null() {
            return Err(arg_err("output is NULL"));
        }
        if output.align_offset(std::mem::align_of::<f32>()) != 0 {
            return Err(arg_err("output is not aligned to 4 bytes"));
        }
        // SAFETY: non-null, aligned, `output_len` writable floats not overlapping the inputs.
        let y = unsafe { std::slice::from_raw_parts_mut(output, output_len) };
        // SAFETY: a live plan by the contract.
        let p = unsafe { &(*plan).plan };
        p.run(x, r, y).map_err(lib_err)
    })
}

/// Frees a plan; NULL is ignored.
///
/// # Safety
/// `plan` is NULL or a plan from `convkit_plan_create_json` not yet destroyed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_plan_destroy(plan: *mut ConvkitPlan) {
    if !plan.is_null() {
        // SAFETY: created by Box::into_raw in convkit_plan_create_json, destroyed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(plan) })));
    }
}

/// An opaque gradient plan ([`crate::backward::ConvGrad`]): one convolution's geometry and
/// its weights packed for the data gradient, for frameworks that run their own activations
/// and pools and need the convolution's backward pass (`convkit_grad_data`,
/// `convkit_grad_weight`, `convkit_grad_bias`).
pub struct ConvkitGrad {
    grad: crate::backward::ConvGrad,
}

/// The part of gradient-plan creation both entry points share.
///
/// # Safety
/// `weight` points to `weight_len` floats; `out` is checked non-null by the caller.
unsafe fn create_grad(
    spec: &ConvSpec,
    weight: *const f32,
    weight_len: usize,
    layout: u32,
    threads: usize,
    out: *mut *mut ConvkitGrad,
) -> Result<(), (ConvkitStatus, String)> {
    // SAFETY: the contract of this function.
    let w = unsafe { required_floats(weight, weight_len, "weight") }?;
    let opts = PlanOptions {
        layout: layout_of(layout)?,
        threads: (threads > 0).then_some(threads),
        ..Default::default()
    };
    let grad = crate::backward::ConvGrad::new(spec, w, &opts).map_err(lib_err)?;
    // SAFETY: checked non-null by the caller.
    unsafe { *out = Box::into_raw(Box::new(ConvkitGrad { grad })) };
    Ok(())
}

/// Creates a gradient plan from a layer spec in JSON (SPEC.md section 1) and its OIHW
/// weights. The spec describes the convolution alone: an activation, pool or residual is an
/// error (`"bias"` is allowed and changes nothing: the bias gradient is
/// `convkit_grad_bias`). `layout` is 0 for NCHW, 1 for NHWC (the activations and their
/// gradients; weights are OIHW); `threads` 0 uses all cores. On success `*out` holds the
/// plan, to be freed with `convkit_grad_destroy`.
///
/// # Safety
/// `spec_json` is a NUL-terminated string; `weight` points to `weight_len` floats; `out` is
/// a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_grad_create_json(
    spec_json: *const c_char,
    weight: *const f32,
    weight_len: usize,
    layout: u32,
    threads: usize,
    out: *mut *mut ConvkitGrad,
) -> ConvkitStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: checked non-null; the caller provides a writable pointer.
        unsafe { *out = std::ptr::null_mut() };
        if spec_json.is_null() {
            return Err(arg_err("spec_json is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by the contract.
        let text = unsafe { CStr::from_ptr(spec_json) }
            .to_str()
            .map_err(|_| arg_err("spec_json is not UTF-8"))?;
        let spec = ConvSpec::from_json(text).map_err(lib_err)?;
        // SAFETY: the contract of this function.
        unsafe { create_grad(&spec, weight, weight_len, layout, threads, out) }
    })
}

/// Creates a gradient plan from a [`ConvkitLayer`] (its activation `None`, pool `None`,
/// residual 0); otherwise as `convkit_grad_create_json`.
///
/// # Safety
/// `layer` points to a `ConvkitLayer`; the rest as for `convkit_grad_create_json`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_grad_create(
    layer: *const ConvkitLayer,
    weight: *const f32,
    weight_len: usize,
    layout: u32,
    threads: usize,
    out: *mut *mut ConvkitGrad,
) -> ConvkitStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: checked non-null; the caller provides a writable pointer.
        unsafe { *out = std::ptr::null_mut() };
        if layer.is_null() {
            return Err(arg_err("layer is NULL"));
        }
        // SAFETY: non-null; points to a ConvkitLayer by the contract (plain data, any bits
        // valid: the enum fields are integers).
        let spec = layer_spec(unsafe { &*layer })?;
        // SAFETY: the contract of this function.
        unsafe { create_grad(&spec, weight, weight_len, layout, threads, out) }
    })
}

/// Replaces a gradient plan's weights (after an optimizer step) and packs them again. On
/// error the plan keeps its previous weights.
///
/// # Safety
/// `grad` is a live gradient plan that no other thread uses during the call; `weight`
/// points to `weight_len` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_grad_set_weight(
    grad: *mut ConvkitGrad,
    weight: *const f32,
    weight_len: usize,
) -> ConvkitStatus {
    guard(|| {
        if grad.is_null() {
            return Err(arg_err("grad is NULL"));
        }
        // SAFETY: a live gradient plan used by this thread alone, by the contract.
        let g = unsafe { &mut (*grad).grad };
        // SAFETY: the contract of this function.
        let w = unsafe { required_floats(weight, weight_len, "weight") }?;
        g.set_weight(w).map_err(lib_err)
    })
}

/// A writable output of `len` floats at `ptr`, or why not.
///
/// # Safety
/// A non-null `ptr` points to `len` writable floats that nothing else accesses during the
/// call.
unsafe fn floats_mut<'a>(
    ptr: *mut f32,
    len: usize,
    name: &str,
) -> Result<&'a mut [f32], (ConvkitStatus, String)> {
    if ptr.is_null() {
        return Err(arg_err(&format!("{name} is NULL")));
    }
    if ptr.align_offset(std::mem::align_of::<f32>()) != 0 {
        return Err(arg_err(&format!("{name} is not aligned to 4 bytes")));
    }
    // SAFETY: non-null, aligned, and the caller vouches for `len` writable floats used by
    // this call alone.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// The gradient plan behind `grad`, or an error for NULL.
///
/// # Safety
/// `grad` is NULL or a live gradient plan that outlives `'a`.
unsafe fn live_grad<'a>(
    grad: *const ConvkitGrad,
) -> Result<&'a crate::backward::ConvGrad, (ConvkitStatus, String)> {
    if grad.is_null() {
        return Err(arg_err("grad is NULL"));
    }
    // SAFETY: non-null, so a live gradient plan by the contract.
    Ok(unsafe { &(*grad).grad })
}

/// `len` floats at `ptr`, which must not be NULL.
///
/// # Safety
/// As for [`floats`].
unsafe fn required_floats<'a>(
    ptr: *const f32,
    len: usize,
    name: &str,
) -> Result<&'a [f32], (ConvkitStatus, String)> {
    // SAFETY: the contract of this function.
    unsafe { floats(ptr, len, name) }?.ok_or_else(|| arg_err(&format!("{name} is NULL")))
}

/// The gradient w.r.t. the input: `dx` (input shape, overwritten) from `dz`, the gradient
/// w.r.t. the convolution's output (conv-output shape), for the whole batch, in the plan's
/// layout. Lengths are checked; on error `dx` is left untouched. Bitwise identical whatever
/// the thread count.
///
/// # Safety
/// `grad` is a live gradient plan; the pointers point to the given numbers of floats; `dx`
/// does not overlap `dz`. A plan may serve several threads at once (but not during
/// `convkit_grad_set_weight`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_grad_data(
    grad: *const ConvkitGrad,
    dz: *const f32,
    dz_len: usize,
    dx: *mut f32,
    dx_len: usize,
) -> ConvkitStatus {
    guard(|| {
        // SAFETY: the contract of this function.
        let g = unsafe { live_grad(grad) }?;
        // SAFETY: the contract of this function.
        let dz = unsafe { required_floats(dz, dz_len, "dz") }?;
        // SAFETY: the contract of this function.
        let dx = unsafe { floats_mut(dx, dx_len, "dx") }?;
        g.data(dz, dx).map_err(lib_err)
    })
}

/// The gradient w.r.t. the weights: `dw` (OIHW, overwritten) from the input `x` and `dz`
/// (conv-output shape), summed over the batch in batch order. Lengths are checked; on error
/// `dw` is left untouched. Bitwise identical whatever the thread count.
///
/// # Safety
/// As for `convkit_grad_data`; `dw` overlaps neither `x` nor `dz`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_grad_weight(
    grad: *const ConvkitGrad,
    x: *const f32,
    x_len: usize,
    dz: *const f32,
    dz_len: usize,
    dw: *mut f32,
    dw_len: usize,
) -> ConvkitStatus {
    guard(|| {
        // SAFETY: the contract of this function.
        let g = unsafe { live_grad(grad) }?;
        // SAFETY: the contract of this function.
        let x = unsafe { required_floats(x, x_len, "x") }?;
        // SAFETY: the contract of this function.
        let dz = unsafe { required_floats(dz, dz_len, "dz") }?;
        // SAFETY: the contract of this function.
        let dw = unsafe { floats_mut(dw, dw_len, "dw") }?;
        g.weight(x, dz, dw).map_err(lib_err)
    })
}

/// The gradient w.r.t. the bias: `db` (Cout floats, overwritten) from `dz` (conv-output
/// shape), summed over the batch and the pixels in f64. Lengths are checked; on error `db`
/// is left untouched.
///
/// # Safety
/// As for `convkit_grad_data`; `db` does not overlap `dz`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_grad_bias(
    grad: *const ConvkitGrad,
    dz: *const f32,
    dz_len: usize,
    db: *mut f32,
    db_len: usize,
) -> ConvkitStatus {
    guard(|| {
        // SAFETY: the contract of this function.
        let g = unsafe { live_grad(grad) }?;
        // SAFETY: the contract of this function.
        let dz = unsafe { required_floats(dz, dz_len, "dz") }?;
        // SAFETY: the contract of this function.
        let db = unsafe { floats_mut(db, db_len, "db") }?;
        g.bias(dz, db).map_err(lib_err)
    })
}

/// Frees a gradient plan; NULL is ignored.
///
/// # Safety
/// `grad` is NULL or a plan from `convkit_grad_create_json` or `convkit_grad_create` not
/// yet destroyed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_grad_destroy(grad: *mut ConvkitGrad) {
    if !grad.is_null() {
        // SAFETY: created by Box::into_raw in create_grad, destroyed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(grad) })));
    }
}

/// Loads a wisdom file into the tuner's cache; writes the number of entries to `*entries`
/// (may be NULL). A bad file is an error and changes nothing.
///
/// # Safety
/// `path` is a NUL-terminated string; `entries` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_wisdom_load(
    path: *const c_char,
    entries: *mut usize,
) -> ConvkitStatus {
    guard(|| {
        if path.is_null() {
            return Err(arg_err("path is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by the contract.
        let p = unsafe { CStr::from_ptr(path) }
            .to_str()
            .map_err(|_| arg_err("path is not UTF-8"))?;
        let n = crate::tune::load_wisdom(std::path::Path::new(p)).map_err(lib_err)?;
        if !entries.is_null() {
            // SAFETY: non-null and writable by the contract.
            unsafe { *entries = n };
        }
        Ok(())
    })
}

/// Saves the tuner's cache to a wisdom file (atomically).
///
/// # Safety
/// `path` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn convkit_wisdom_save(path: *const c_char) -> ConvkitStatus {
    guard(|| {
        if path.is_null() {
            return Err(arg_err("path is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by the contract.
        let p = unsafe { CStr::from_ptr(path) }
            .to_str()
            .map_err(|_| arg_err("path is not UTF-8"))?;
        crate::tune::save_wisdom(std::path::Path::new(p)).map_err(lib_err)
    })
}

#[cfg(test)]
mod tests {
    /// `convkit_plan_algo` answers from ALGO_NAMES: every algorithm must be there, each
    /// C string its name and one NUL.
    #[test]
    fn every_algorithm_has_its_c_name() {
        for algo in crate::algo::ALL_ALGOS {
            let found = super::ALGO_NAMES.iter().find(|(n, _)| *n == algo.name());
            let (_, c) = found.unwrap_or_else(|| panic!("{} has no C name", algo.name()));
            assert_eq!(*c, format!("{}\0", algo.name()));
        }
        assert_eq!(super::ALGO_NAMES.len(), crate::algo::ALL_ALGOS.len());
    }
}
