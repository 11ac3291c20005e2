//! The one error type of the library. Every message names the field, file or tensor at fault,
//! so that the `convkit` tool can print it as a single `error: ...` line.

use std::fmt;

/// Everything that can go wrong in convkit. No public function panics on user input: it
/// returns one of these instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The layer spec is malformed or describes an impossible layer.
    #[error("spec field `{field}`: {msg}")]
    Spec {
        /// Path of the offending field, e.g. `stride[1]` or `pool.size`.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The JSON text could not be parsed into a spec.
    #[error("{0}")]
    Json(String),
    /// A size computation overflowed or a buffer would exceed what can be addressed.
    #[error("size overflow: {0}")]
    Overflow(String),
    /// A tensor handed to the library has the wrong length, shape or layout.
    #[error("tensor `{name}`: {msg}")]
    Tensor {
        /// `input`, `weight`, `bias`, `residual` or `output`.
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A `.npy` file is unreadable or does not match what the spec asks for.
    #[error("file {path}: {msg}")]
    File {
        /// The file's path as given.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// An algorithm name that convkit does not know.
    #[error("unknown algorithm `{0}` (known: direct, im2col, gemm1x1, depthwise, grouped, winograd_f2x3, winograd_f4x3, winograd_f6x3, dilated_f2x3, dilated_f4x3, dilated_f6x3, direct_oc, reference, auto)")]
    UnknownAlgorithm(String),
    /// A known algorithm that cannot run this layer.
    #[error("algorithm `{algo}` does not accept this layer: {why}")]
    AlgorithmRejects {
        /// The algorithm's name.
        algo: String,
        /// Why it refuses the layer.
        why: String,
    },
    /// An ISA name that is unknown or that this CPU cannot run.
    #[error("{0}")]
    Isa(String),
    /// A request that would exceed the plan's memory budget.
    #[error("memory budget exceeded: {0}")]
    Budget(String),
    /// Any other invalid argument (thread count, option value, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn spec(field: impl fmt::Display, msg: impl fmt::Display) -> Self {
        Error::Spec {
            field: field.to_string(),
            msg: msg.to_string(),
        }
    }
    pub(crate) fn tensor(name: impl fmt::Display, msg: impl fmt::Display) -> Self {
        Error::Tensor {
            name: name.to_string(),
            msg: msg.to_string(),
        }
    }
    pub(crate) fn file(path: impl fmt::Display, msg: impl fmt::Display) -> Self {
        Error::File {
            path: path.to_string(),
            msg: msg.to_string(),
        }
    }
    pub(crate) fn overflow(what: impl fmt::Display) -> Self {
        Error::Overflow(what.to_string())
    }
}

/// Checked product of sizes, naming `what` on overflow.
pub(crate) fn checked_product(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| Error::overflow(format!("{what}: product of {dims:?} overflows")))
    })
}

/// Checks that `elements` f32 values can be allocated (byte size fits in `isize`).
pub(crate) fn checked_f32_bytes(elements: usize, what: &str) -> Result<usize> {
    elements
        .checked_mul(4)
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            Error::overflow(format!(
                "{what}: {elements} f32 values do not fit in memory"
            ))
        })
}
