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

/// The CPU's vendor string (CPUID leaf 0: EBX, EDX, ECX) and its family (leaf 1: the base
/// family, plus the extended family where the base is 0xF), as the vendors' manuals define
/// them: AMD Zen 4 reads `AuthenticAMD`, 0x19.
pub fn vendor_and_family() -> ([u8; 12], u32) {
    // SAFETY: CPUID exists on every x86_64 CPU; leaves 0 and 1 always answer. (Safe to call
    // in recent compilers; the block keeps the crate's rust-version building.)
    #[allow(unused_unsafe)]
    let (leaf0, leaf1) = unsafe {
        (
            core::arch::x86_64::__cpuid(0),
            core::arch::x86_64::__cpuid(1),
        )
    };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    let base = (leaf1.eax >> 8) & 0xF;
    let family = if base == 0xF {
        base + ((leaf1.eax >> 20) & 0xFF)
    } else {
        base
    };
    (vendor, family)
}
