//! What the machine offers: cache sizes (read at run time; they drive the GEMM blocking),
//! core count, and the measured FMA peak every benchmark reports against.

use crate::arch::Isa;
use std::sync::OnceLock;
use std::time::Instant;

/// Data cache sizes in bytes, per core for L1/L2.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Caches {
    /// L1 data cache.
    pub l1d: usize,
    /// L2 cache.
    pub l2: usize,
    /// L3 cache (shared), 0 when absent.
    pub l3: usize,
}

impl Default for Caches {
    /// Conservative values (32 KiB / 512 KiB / 8 MiB) for systems that do not report theirs.
    fn default() -> Self {
        Caches {
            l1d: 32 << 10,
            l2: 512 << 10,
            l3: 8 << 20,
        }
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

/// The caches of CPU 0, from Linux sysfs; defaults elsewhere. Read once.
pub fn caches() -> Caches {
    static C: OnceLock<Caches> = OnceLock::new();
    *C.get_or_init(|| {
        let mut c = Caches::default();
        let mut found = Caches {
            l1d: 0,
            l2: 0,
            l3: 0,
        };
        for idx in 0..8 {
            let base = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}");
            let read = |f: &str| std::fs::read_to_string(format!("{base}/{f}")).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let Some(size) = parse_size(&size) else {
                continue;
            };
            match (level.trim(), kind.trim()) {
                ("1", "Data") | ("1", "Unified") => found.l1d = size,
                ("2", _) => found.l2 = size,
                ("3", _) => found.l3 = size,
                _ => {}
            }
        }
        if found.l1d > 0 {
            c.l1d = found.l1d;
        }
        if found.l2 > 0 {
            c.l2 = found.l2;
        }
        if found.l3 > 0 {
            c.l3 = found.l3;
        }
        c
    })
}

/// Logical cores.
pub fn cores() -> usize {
    num_cpus::get().max(1)
}

/// Measures the FMA peak of `isa` in GFLOP/s on `threads` threads at once: a register-only
/// loop of independent FMA chains per thread, best of a few repetitions. `None` when the
/// tier has no probe or the CPU lacks it.
pub fn measure_peak_gflops(isa: Isa, threads: usize) -> Option<f64> {
    let threads = threads.max(1);
    let (probe, flops_per_iter): (fn(u64) -> Option<f32>, f64) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (
            crate::arch::x86_64::avx512::fma_peak_probe,
            24.0 * 16.0 * 2.0,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (crate::arch::x86_64::avx2::fma_peak_probe, 12.0 * 8.0 * 2.0),
        _ => (crate::arch::portable::peak_probe, 8.0 * 8.0 * 2.0),
    };
    probe(1)?;
    let iters = 10_000_000u64;
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || probe(iters)))
                .collect();
            for h in hs {
                std::hint::black_box(h.join().ok());
            }
        });
        let secs = start.elapsed().as_secs_f64();
        best = best.max(iters as f64 * flops_per_iter * threads as f64 / secs / 1e9);
    }
    Some(best)
}

/// The single-thread peak of the default ISA, measured once per process (for reports).
pub fn peak_gflops_1t(isa: Isa) -> f64 {
    static P: OnceLock<Vec<(Isa, f64)>> = OnceLock::new();
    let table = P.get_or_init(|| {
        crate::arch::available_isas()
            .into_iter()
            .filter_map(|i| measure_peak_gflops(i, 1).map(|p| (i, p)))
            .collect()
    });
    table
        .iter()
        .find(|(i, _)| *i == isa)
        .map(|p| p.1)
        .unwrap_or(0.0)
}
