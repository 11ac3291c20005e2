//! # convkit
//!
//! SIMD-optimized CPU convolution: direct, im2col + packed GEMM, 1x1 as GEMM, depthwise and
//! Winograd, 2-D and 1-D, with bias, residual, activation and pooling fused into the output
//! pass. Kernels are chosen at run time from CPU detection (AVX-512, AVX2+FMA, NEON, or the
//! portable `wide` path) and can be pinned with `CONVKIT_ISA`.
//!
//! ```
//! use convkit::{ConvSpec, Padding, Activation, Geometry, reference};
//! let spec = ConvSpec::new(&[1, 1, 3, 3], 1, &[2, 2]).with_bias(false).with_activation(Activation::Relu);
//! let g = Geometry::new(&spec).unwrap();
//! let x = [1., 1., 0., 1., 0., 1., 0., 1., 1.];
//! let w = [1., -1., -1., 1.];
//! let ops = reference::Operands { input: &x, weight: &w, bias: None, residual: None };
//! let y = reference::forward(&g, &ops).unwrap();
//! assert_eq!(y, vec![0., 2., 2., 0.]);
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod algo;
pub mod api;
pub mod arch;
pub mod backward;
pub mod capi;
pub mod epilogue;
pub mod error;
pub mod gemm;
pub mod geometry;
pub mod init;
pub mod kernels;
pub mod npy;
pub mod par;
pub mod plan;
pub mod reference;
pub mod spec;
pub mod sysinfo;
pub mod tensor;
pub mod tune;

/// The README's Rust examples, compiled and run as doctests (so the front page stays true).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use algo::Algo;
pub use arch::Isa;
pub use epilogue::{Activation, Epilogue, Pool, PoolWindow};
pub use error::{Error, Result};
pub use geometry::Geometry;
pub use plan::{PhaseProfile, Plan, PlanOptions};
pub use spec::{ConvSpec, Padding};
pub use tensor::Layout;
