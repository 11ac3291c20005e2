//! x86_64 tiers: AVX2+FMA and AVX-512F.
pub mod avx2;
pub mod avx512;
