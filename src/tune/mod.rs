//! The autotuner: which algorithm runs a layer, by heuristic or by measurement, remembered in
//! an in-memory cache and a human-readable wisdom file.
//!
//! Modes: [`TuneMode::Heuristic`] (no measurement, `plan::choose_algo`),
//! [`TuneMode::Measure`] (time each candidate after a warm-up, in rounds, keep the median of
//! its runs, drop a candidate whose warm-up is 4x behind the fastest, or whose best of its
//! first two runs is 2x behind),
//! [`TuneMode::Exhaustive`] (time every candidate fully). A forced algorithm bypasses the tuner. Candidates come from one ordered
//! list, best guess first; `reference` is never a candidate.
//!
//! The cache key holds everything that changes the answer: the layer (its spec as canonical
//! JSON, name excluded: geometry and epilogue), the layout, the ISA tier, the thread count,
//! the crate version with the [`SCHEDULE_REVISION`] and a checksum of the candidate set (a new
//! algorithm or GEMM tile invalidates old entries). `CONVKIT_WISDOM=path` loads that file at first use and saves new entries to it;
//! a corrupt, truncated or foreign file is ignored with a warning, never an error.

use crate::algo::{accepting, Algo};
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::spec::ConvSpec;
use crate::tensor::Layout;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// How `auto` decides.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum TuneMode {
    /// The decision function, no measurement.
    #[default]
    Heuristic,
    /// Time the candidates within about `budget_ms` each, stopping hopeless ones early.
    Measure {
        /// Time per candidate, in milliseconds.
        budget_ms: u64,
    },
    /// Time every candidate fully.
    Exhaustive,
}

/// Where a choice came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The caller named the algorithm.
    Forced,
    /// The heuristic.
    Heuristic,
    /// Measured now.
    Measured,
    /// Found in the cache or the wisdom file.
    Wisdom,
}

impl Source {
    /// `forced`, `heuristic`, `measured` or `wisdom` (SPEC's `choice` values).
    pub fn name(self) -> &'static str {
        match self {
            Source::Forced => "forced",
            Source::Heuristic => "heuristic",
            Source::Measured => "measured",
            Source::Wisdom => "wisdom",
        }
    }
}

/// A decision with its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The algorithm chosen.
    pub algo: Algo,
    /// Where the decision came from.
    pub source: Source,
    /// Fastest run in milliseconds of each timed candidate (empty for heuristic/forced).
    pub times_ms: Vec<(Algo, f64)>,
}

impl Choice {
    /// The fastest timed candidate other than the winner, with its time.
    pub fn runner_up(&self) -> Option<(Algo, f64)> {
        self.times_ms
            .iter()
            .filter(|(a, _)| *a != self.algo)
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
    /// A readable account: candidates, times, winner and source.
    pub fn explain(&self) -> String {
        let mut s = format!("{} ({})", self.algo.name(), self.source.name());
        if !self.times_ms.is_empty() {
            let t: Vec<String> = self
                .times_ms
                .iter()
                .map(|(a, ms)| format!("{} {:.3} ms", a.name(), ms))
                .collect();
            s.push_str(&format!("; timed: {}", t.join(", ")));
        }
        s
    }
}

/// The candidates for `g`, best guess first (the heuristic's pick leads).
pub fn candidates(g: &Geometry) -> Vec<Algo> {
    let first = crate::plan::choose_algo(g);
    let mut v = vec![first];
    v.extend(
        accepting(g)
            .into_iter()
            .filter(|a| *a != first && *a != Algo::Reference),
    );
    v
}

/// FNV-1a over the names of every algorithm convkit knows and of the tier's GEMM tiles: a new
/// algorithm or tile (a tile a layer may take, as the 7x48 that NHWC 1x1 layers of 49 pixels
/// took when it came) invalidates the entries tuned without it. The tiles go in table order,
/// so AVX-512's two tables (by [`crate::arch::Avx512Datapath`], with the same tiles in another
/// order) key apart.
fn checksum(algos: &[Algo], isa: crate::arch::Isa) -> u64 {
    let tiles = isa.kernels().map(|t| t.gemm).unwrap_or(&[]);
    let names = algos
        .iter()
        .map(|a| a.name())
        .chain(tiles.iter().map(|k| k.name));
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for name in names {
        for b in name.bytes().chain([b',']) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The revision of how the algorithms run: bumped when a change moves their speeds against
/// each other without adding a candidate (a new way to share a layer among threads, a faster
/// kernel of one algorithm), so that wisdom tuned before it is measured again. 2: Winograd in
/// parts of tile rows per thread and batches in parts of whole images; 3: the AVX-512 3x3
/// depthwise planes kernel (both session 18); 4: AVX-512's K blocks from L2 on AMD Zen 5
/// ([`crate::gemm::KcRule`], session 25); 5: `direct_oc`'s 7-pixel tile and channel shares
/// for images of few tiles (session 26).
pub const SCHEDULE_REVISION: u32 = 5;

/// The cache key of a decision (see the module docs for what it holds).
pub fn cache_key(spec: &ConvSpec, layout: Layout, isa: crate::arch::Isa, threads: usize) -> String {
    let mut v = spec.to_json();
    if let Some(o) = v.as_object_mut() {
        o.remove("name");
    }
    format!(
        "{}|{}|{}|t{}|v{}r{}|c{:016x}",
        v,
        layout.name(),
        isa.name(),
        threads,
        env!("CARGO_PKG_VERSION"),
        SCHEDULE_REVISION,
        checksum(&crate::algo::ALL_ALGOS, isa)
    )
}

#[derive(Default)]
struct Cache {
    entries: BTreeMap<String, Choice>,
    wisdom_loaded: bool,
}

fn cache() -> &'static Mutex<Cache> {
    static C: OnceLock<Mutex<Cache>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Cache::default()))
}

static MEASUREMENTS: AtomicUsize = AtomicUsize::new(0);

/// How many candidate timings this process has run (a plan from wisdom adds none).
pub fn measurement_count() -> usize {
    MEASUREMENTS.load(Ordering::Relaxed)
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    // A panic while holding the lock leaves plain data; keep using it.
    cache().lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets every cached decision (tests and benchmarks).
pub fn clear_cache() {
    let mut c = lock();
    c.entries.clear();
    c.wisdom_loaded = true;
}

fn env_wisdom() -> Option<String> {
    std::env::var("CONVKIT_WISDOM")
        .ok()
        .filter(|s| !s.is_empty())
}

fn ensure_env_wisdom_loaded() {
    let path = {
        let mut c = lock();
        if c.wisdom_loaded {
            return;
        }
        c.wisdom_loaded = true;
        env_wisdom()
    };
    if let Some(p) = path {
        if std::path::Path::new(&p).exists() {
            if let Err(e) = load_wisdom(std::path::Path::new(&p)) {
                eprintln!("warning: CONVKIT_WISDOM {p} ignored: {e}");
            }
        }
    }
}

/// Looks up a cached decision.
pub fn lookup(key: &str) -> Option<Choice> {
    ensure_env_wisdom_loaded();
    lock().entries.get(key).cloned().map(|mut c| {
        c.source = Source::Wisdom;
        c
    })
}

/// Records a decision (and saves it to `CONVKIT_WISDOM` when set).
pub fn remember(key: String, choice: Choice) {
    lock().entries.insert(key, choice);
    if let Some(p) = env_wisdom() {
        if let Err(e) = save_wisdom(std::path::Path::new(&p)) {
            eprintln!("warning: cannot save wisdom to {p}: {e}");
        }
    }
}

/// Times each candidate with `time(algo) -> Option<ms of one run>` and returns the choice.
/// Every candidate gets a warm-up run; then the candidates run in rounds, one run each per
/// round (A B C A B C ...), at least 3 rounds and at most 50, until the budget (per
/// candidate) is spent; each candidate's time is the median of its runs (each of which the
/// caller may take as the best of a few back to back). The fastest run alone let a candidate
/// whose times spread wide win on one lucky run: resnet50.res3.3x3's F(6,3) timed 0.61-0.79
/// ms at best in tuning, below F(4,3)'s 0.69-0.85, where its steady median is 0.93 against
/// F(4,3)'s 0.88 (the tuner chose it in about half the runs). In `Measure` mode a candidate
/// whose warm-up took over `WARM_DROP_FACTOR` times the fastest warm-up is not timed in
/// rounds (the warm-up stands as its time), and one whose best of two timed runs is over
/// `DROP_FACTOR` times the fastest median is dropped after the second round. The first
/// candidate keeps the layer unless another is more than 5% faster, and such a challenger is
/// timed against it for `RECHECK_ROUNDS` more alternating rounds before it wins.
///
/// Rounds, not one candidate after the other: this host's interference comes in bursts of
/// seconds, and measured one after the other a candidate could spend its whole budget inside
/// one (the suite's tuning once chose im2col for googlenet.inc3a.5x5, 1.2-1.5x slower than
/// direct in paired runs). In rounds a burst hits every candidate alike.
pub fn measure(
    cands: &[Algo],
    mode: &TuneMode,
    mut time: impl FnMut(Algo) -> Option<f64>,
) -> Result<Choice> {
    let budget = match mode {
        TuneMode::Measure { budget_ms } => *budget_ms as f64,
        _ => 200.0,
    };
    // Warm-up: also finds the candidates that cannot be planned or run (not a choice).
    // `results` keeps every candidate's time (the median of its runs in `runs`); `active`
    // those still being timed.
    let mut results: Vec<(Algo, f64)> = Vec::new();
    let mut warm: Vec<f64> = Vec::new();
    for &a in cands {
        MEASUREMENTS.fetch_add(1, Ordering::Relaxed);
        if let Some(ms) = time(a) {
            results.push((a, f64::INFINITY));
            warm.push(ms);
        }
    }
    // Candidates whose warm-up run was WARM_DROP_FACTOR x the fastest warm-up's are not timed
    // further (`Measure` mode); their warm-up stands as their time.
    let fastest_warm = warm.iter().copied().fold(f64::INFINITY, f64::min);
    let mut active = vec![true; results.len()];
    if matches!(mode, TuneMode::Measure { .. }) {
        for ((r, on), &ms) in results.iter_mut().zip(active.iter_mut()).zip(&warm) {
            if ms > WARM_DROP_FACTOR * fastest_warm {
                *on = false;
                r.1 = ms;
            }
        }
    }
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); results.len()];
    let start = Instant::now();
    // The budget is per candidate timed in rounds (not per candidate dropped at the warm-up).
    let total_budget = budget * active.iter().filter(|&&on| on).count() as f64;
    let mut rounds = 0;
    while active.iter().any(|&on| on)
        && (rounds < 3 || (start.elapsed().as_secs_f64() * 1e3 < total_budget && rounds < 50))
    {
        for ((r, on), times) in results
            .iter_mut()
            .zip(active.iter_mut())
            .zip(runs.iter_mut())
        {
            if *on {
                match time(r.0) {
                    Some(ms) => {
                        times.push(ms);
                        r.1 = median(times);
                    }
                    None => *on = false,
                }
            }
        }
        // After two rounds, candidates whose best run is over DROP_FACTOR x the fastest
        // median stop.
        // The best of two, not one run: a single run inside a burst had dropped
        // resnet50.res5.3x3's F(2,3) from the two-thread tuning, which then chose im2col,
        // 1.8x slower (in 1 of 3 tunings).
        if rounds == 1 && matches!(mode, TuneMode::Measure { .. }) {
            let fastest = results.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
            for (times, on) in runs.iter().zip(active.iter_mut()) {
                let best = times.iter().copied().fold(f64::INFINITY, f64::min);
                *on &= best <= DROP_FACTOR * fastest;
            }
        }
        rounds += 1;
    }
    // A candidate that failed in every timed run has no time: not a choice.
    let (mut results, mut runs): (Vec<_>, Vec<_>) = results
        .into_iter()
        .zip(runs)
        .filter(|(r, _)| r.1.is_finite())
        .unzip();
    let mut winner = pick_winner(&results)?;
    // A challenger that beat the first candidate (the heuristic's pick) is timed against it
    // again, the two alternating for RECHECK_ROUNDS more rounds (their medians updated): a
    // quiet moment that fell on the challenger alone had chosen it (the suite's
    // tuning picked F(6,3) for resnet50.res3.3x3.b8, 1.09x slower than F(4,3) in the timing
    // after it, and F(4,3) for res2.3x3, 1.04x).
    if results.first().is_some_and(|f| f.0 != winner) {
        let challenger = results.iter().position(|r| r.0 == winner).unwrap_or(0);
        for _ in 0..RECHECK_ROUNDS {
            for i in [0, challenger] {
                if let Some(ms) = time(results[i].0) {
                    runs[i].push(ms);
                    results[i].1 = median(&runs[i]);
                }
            }
        }
        winner = pick_winner(&results)?;
    }
    Ok(Choice {
        algo: winner,
        source: Source::Measured,
        times_ms: results,
    })
}

/// Runs `run` (which returns the ms of one run) back to back, at least `least` times, until
/// a run is no more than 5% faster than the best before it, at most `max` times, and returns
/// the best: a plan's time
/// once it has settled, as it runs in use. The tuner times candidates this way, and
/// `convkit bench` warms plans this way when it times several side by side: right after
/// other plans' runs, a plan's weights and scratch had left the caches, and one run timed the
/// candidates with the largest weights (Winograd's, 37-65 MB on vgg16.conv5_3) at 2-4x their
/// steady time (the two-thread tuning chose im2col for deeplab.dilated3x3, 1.56x slower than
/// F(6,3)). One untimed run before the timed one still left vgg16.conv5_3's F(4,3) at
/// 1.8-2.3x: one pass over its weights did not bring them back into L3 to stay. The tuner
/// takes at least three: two, with the 5% rule alone, left resnet50.res5.3x3's F(2,3) (17 MB
/// of weights) at 2.8-3.1 ms in a third of its two-thread rounds against 0.6-0.7 steady, and
/// 1 tuning in 6 chose im2col (1.8x slower); with three, 6 of 6 chose F(2,3).
pub fn settled<E>(
    least: usize,
    max: usize,
    mut run: impl FnMut() -> std::result::Result<f64, E>,
) -> std::result::Result<f64, E> {
    let mut best = f64::INFINITY;
    for i in 0..max.max(least).max(1) {
        let ms = run()?;
        let improved = ms < 0.95 * best;
        best = best.min(ms);
        if !improved && i + 1 >= least {
            break;
        }
    }
    Ok(best)
}

/// The lower median of `times` (not empty).
fn median(times: &[f64]) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    t[(t.len() - 1) / 2]
}

/// How far behind the fastest median a candidate's best of two rounds may be and still be
/// timed (its time can then only lose: a challenger must be 5% faster). At 3x the VGG
/// layers' direct, `direct_oc` and im2col (2.0-2.6x Winograd's time on AMD Zen 3, 80-100 ms
/// a run there) ran every round, and the suite's one-thread tuning took 28-29.7 s against
/// issue 6's 30. This host's bursts slowed single runs by up to 1.45x.
const DROP_FACTOR: f64 = 2.0;

/// How far behind the fastest warm-up a candidate's warm-up may be and still be timed in
/// rounds: its weights and scratch were cold, so by more than [`DROP_FACTOR`]. With the
/// warm-up's time thrown away, candidates 3-100x behind (Winograd on mobilenetv2.dw7,
/// `direct_oc` on vgg16.conv4_3 at 140 ms a run on AMD Zen 3) ran two full rounds.
const WARM_DROP_FACTOR: f64 = 4.0;

/// Extra alternating rounds of [`measure`] when a challenger beats the first candidate.
const RECHECK_ROUNDS: usize = 3;

/// The choice among timed candidates: the first (the heuristic's pick) unless another is more
/// than 5% faster. On this noisy host near-ties flipped with the noise: choosing the fastest
/// outright was within 5% of the best forced time on 21-23 of 27 layers, the heuristic alone
/// within 15% on 26.
fn pick_winner(results: &[(Algo, f64)]) -> Result<Algo> {
    let fastest = results
        .iter()
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .copied()
        .ok_or_else(|| {
            Error::InvalidArgument("no candidate algorithm could run this layer".into())
        })?;
    Ok(match results.first() {
        Some(&(first, t)) if t <= 1.05 * fastest.1 => first,
        _ => fastest.0,
    })
}

/// The wisdom file as JSON.
fn wisdom_json(entries: &BTreeMap<String, Choice>) -> Value {
    let e: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(k, c)| {
            let times: serde_json::Map<String, Value> = c
                .times_ms
                .iter()
                .map(|(a, ms)| (a.name().to_string(), json!(ms)))
                .collect();
            (k.clone(), json!({"algo": c.algo.name(), "times_ms": times}))
        })
        .collect();
    json!({"format": "convkit-wisdom", "version": 1, "convkit": env!("CARGO_PKG_VERSION"), "entries": e})
}

/// Writes every cached decision to `path` atomically (temporary file, then rename), so a
/// concurrent reader or writer never sees a partial file.
pub fn save_wisdom(path: &std::path::Path) -> Result<()> {
    let text = export_wisdom();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir.display(), e))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{:?}",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::file(path.display(), e)
        })
}

/// Loads `path` into the cache; returns how many entries were taken. Entries of another
/// convkit version or with unknown algorithms are skipped (their keys would not match
/// anyway); a file that is not valid wisdom is an error and loads nothing.
pub fn load_wisdom(path: &std::path::Path) -> Result<usize> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path.display(), e))?;
    import_wisdom_from(&text, &path.display().to_string())
}

/// Every cached decision as wisdom JSON (what [`save_wisdom`] writes).
pub fn export_wisdom() -> String {
    let c = lock();
    serde_json::to_string_pretty(&wisdom_json(&c.entries)).unwrap_or_default()
}

/// Loads wisdom JSON text into the cache, as [`load_wisdom`] does a file.
pub fn import_wisdom(text: &str) -> Result<usize> {
    import_wisdom_from(text, "wisdom text")
}

fn import_wisdom_from(text: &str, origin: &str) -> Result<usize> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| Error::file(origin, format!("not JSON: {e}")))?;
    if v.get("format").and_then(Value::as_str) != Some("convkit-wisdom") {
        return Err(Error::file(origin, "not a convkit wisdom file"));
    }
    let entries = v
        .get("entries")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::file(origin, "no `entries` object"))?;
    let mut parsed = Vec::new();
    for (k, e) in entries {
        let Some(algo) = e
            .get("algo")
            .and_then(Value::as_str)
            .and_then(|n| Algo::parse(n).ok())
        else {
            continue;
        };
        let times = e
            .get("times_ms")
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .filter_map(|(n, ms)| Some((Algo::parse(n).ok()?, ms.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        parsed.push((
            k.clone(),
            Choice {
                algo,
                source: Source::Wisdom,
                times_ms: times,
            },
        ));
    }
    let n = parsed.len();
    let mut c = lock();
    c.entries.extend(parsed);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Isa;

    /// The candidate checksum covers the tier's GEMM tiles as well as the algorithms: the
    /// portable and AVX2 tables hold different tiles (any CPU can read both tables).
    #[test]
    fn candidate_checksum_covers_the_gemm_tiles() {
        let algos = &crate::algo::ALL_ALGOS;
        let portable = crate::arch::portable::TABLE.gemm;
        assert!(!portable.is_empty());
        assert_ne!(
            checksum(algos, Isa::Portable),
            checksum(&algos[..algos.len() - 1], Isa::Portable),
            "the algorithms"
        );
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.is_available() {
            assert_ne!(
                checksum(algos, Isa::Portable),
                checksum(algos, Isa::Avx2),
                "the tiles"
            );
        }
    }
}
