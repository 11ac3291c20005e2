//! x86_64 tiers: AVX2+FMA and AVX-512F.

/// `unroll!(i in [0, 1, ..] { body })`: the body once per listed index, `i` a constant in
/// each copy (so conditions on it fold away and array indices are fixed registers). Defined
/// before the tiers' modules, which use it.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {
        $( { #[allow(clippy::identity_op)] let $i: usize = $n; $body } )*
    };
}

pub mod avx2;
pub mod avx512;
