//! The C ABI: an opaque plan handle with the lifecycle of XNNPACK and oneDNN (create, query,
//! run, destroy), status codes, and a thread-local message for the last error. No panic
//! crosses the boundary (`catch_unwind`), null pointers and bad lengths are errors, and
//! `convkit_plan_destroy(NULL)` does nothing. The header is `include/convkit.h`.

use crate::plan::{Plan, PlanOptions};
use crate::spec::ConvSpec;
use crate::tensor::Layout;
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
        let layout = match layout {
            0 => Layout::Nchw,
            1 => Layout::Nhwc,
            other => {
                return Err(arg_err(&format!(
                    "layout {other} is neither 0 (NCHW) nor 1 (NHWC)"
                )))
            }
        };
        let opts = PlanOptions {
            algo,
            layout,
            threads: (threads > 0).then_some(threads),
            ..Default::default()
        };
        let plan = Plan::new(&spec, w, b, &opts).map_err(lib_err)?;
        // SAFETY: checked non-null above.
        unsafe { *out = Box::into_raw(Box::new(ConvkitPlan { plan })) };
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
