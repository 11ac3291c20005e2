//! aarch64 tier: NEON.
pub mod neon;
