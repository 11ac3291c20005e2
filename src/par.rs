//! Where a plan's parallel loops run, and the loops themselves.
//!
//! A plan of one thread runs on the calling thread. It used to run on a private rayon pool of
//! one worker, and every `run` handed the work to that worker and slept until it finished:
//! the caller's wake-up alone measured 9 us median back to back, and 37 us median (104 us
//! p90) once the worker had gone to sleep, against layers of 0.3-0.6 ms
//! (googlenet.inc3a.5x5, resnet50.res2.1x1a, mobilenetv2.pw56). onnxruntime with one
//! intra-op thread runs on the caller too.
//!
//! A plan of n > 1 threads runs as a `Team`: the calling thread and the helpers of a
//! private rayon pool of n. In a team loop the caller takes items itself beside n - 1
//! helpers, so a helper that wakes late costs no more than the items it would have taken,
//! and nobody sleeps between the caller's hand-off and its return (with the whole run
//! installed on the pool, the caller slept on a latch and was woken at the end, and the
//! first worker woke the next). After each loop the helpers spin for a while
//! ([`spin_time`], `CONVKIT_SPIN_US`, 200 us by default) instead of going to sleep, so that
//! the next loop of the run, or the next run, finds them awake: as onnxruntime's and
//! OpenMP's pools do. Work of many short loops (Winograd) runs with [`in_pool`] instead.
//! Paired on two threads against the rayon pool without spinning (Intel Xeon guest):
//! googlenet.inc3a.5x5 1.33x, resnet50.conv1 1.28x, resnet50.res2.1x1a 1.43x,
//! mobilenetv2.pw56 1.26x, dw56s2 1.79x, dw7 2.41x, res3.3x3s2 1.11x; Winograd 0.98-1.06x.
//! Without the spinning, the team lost to the pool on the small layers (0.49-0.73x).
//!
//! So the library's parallel loops go through the functions here: inside `Runner::run` of a
//! serial runner they are plain loops on the calling thread (a thread-local flag, restored on
//! exit, also on unwinding); in a team's run they are shared by the caller and the helpers
//! (and loops nested in them run serially); otherwise they are rayon loops on the current
//! pool.

use rayon::prelude::*;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
    static TEAM: RefCell<Option<Arc<Team>>> = const { RefCell::new(None) };
}

/// Whether the calling thread runs the library's parallel loops serially.
fn is_serial() -> bool {
    SERIAL.with(Cell::get)
}

/// Runs `f` with the library's parallel loops serial on this thread; the previous state comes
/// back afterwards, also when `f` unwinds.
fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// The team whose run the calling thread is in, if any (and not in a serial section).
fn current_team() -> Option<Arc<Team>> {
    TEAM.with(|t| t.borrow().clone())
}

/// How many threads the parallel loops of the current context use.
pub fn threads() -> usize {
    if is_serial() {
        1
    } else if let Some(team) = current_team() {
        team.threads
    } else {
        rayon::current_num_threads()
    }
}

/// Runs `f` on the current team's pool, all of its threads, the caller waiting; outside a
/// team (or inside a serial section), runs `f` here.
///
/// For work of many short parallel loops: each team loop ends on the scope's latch, whose
/// release costs the caller a futex call (a condvar's notify), 2-5 us in this guest, where
/// the pool's own workers meet by spinning. Winograd runs three loops a block, up to 24 a
/// run on resnet50.res2.3x3: paired on two threads, team loops 0.92-0.93x and the pool
/// 1.08-1.13x the speed of the rayon pool without spinning helpers (res2.3x3,
/// vgg16.conv1_2); the layers of one to three loops ran 1.2-2.7x faster as team loops.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match current_team() {
        Some(team) if !is_serial() => {
            team.generation.fetch_add(1, Ordering::AcqRel);
            let result = team.pool.install(f);
            team.linger(spin_time());
            result
        }
        _ => f(),
    }
}

/// How long a team's helpers spin for more work after each loop: `CONVKIT_SPIN_US`
/// microseconds (0: they go to sleep at once), 200 by default.
pub fn spin_time() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("CONVKIT_SPIN_US")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(200);
        Duration::from_micros(us)
    })
}

/// The calling thread and `threads - 1` helper threads (see the module comment), in a pool
/// of `threads` ([`in_pool`] runs work on all of them while the caller waits).
#[derive(Debug)]
pub(crate) struct Team {
    /// The helpers (one more than a team loop uses).
    pool: rayon::ThreadPool,
    /// Helpers plus the caller.
    threads: usize,
    /// Bumped at the start of every loop: spinning helpers stop when it changes.
    generation: Arc<AtomicU64>,
}

impl Team {
    /// The team of `threads`, shared by every plan of that thread count (started on first
    /// use, kept for the life of the process). A team per plan left the helpers of the
    /// layer just run spinning while the next layer's team worked: in tuning, where each
    /// candidate is a plan of its own, two threads' Winograd candidates timed 1.5-4x their
    /// steady speed, and the tuner chose im2col for deeplab.dilated3x3 (1.56x slower than
    /// F(6,3)). One pool per thread count is also what onnxruntime keeps per session.
    fn shared(threads: usize) -> Result<Arc<Self>> {
        static TEAMS: OnceLock<Mutex<Vec<Arc<Team>>>> = OnceLock::new();
        let teams = TEAMS.get_or_init(|| Mutex::new(Vec::new()));
        // A panic while the list was held cannot leave it inconsistent (push is the only
        // change), so a poisoned lock is still usable.
        let mut list = teams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = list.iter().find(|t| t.threads == threads) {
            return Ok(Arc::clone(t));
        }
        let team = Arc::new(Team::new(threads)?);
        list.push(Arc::clone(&team));
        Ok(team)
    }

    fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("convkit-helper-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
        Ok(Team {
            pool,
            threads,
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// `f(item)` for every item of `items`, shared by the caller and the helpers; loops
    /// inside `f` run serially. Returns when every item is done.
    ///
    /// Each thread starts on its own contiguous share of the items, in order, and a thread
    /// whose share is done takes items from the back of the largest share left. (Taking
    /// items one at a time from one queue interleaved the threads' items, and work that
    /// prefetches its next item's input then fetched it for the other core: resnet50.res2.3x3
    /// ran 1.5x slower on two threads than with rayon's halves.)
    fn for_each<I>(&self, items: I, f: impl Fn(I::Item) + Sync)
    where
        I: Iterator + Send,
        I::Item: Send,
    {
        // Each item sits in a mutex of its own that exactly one thread ever locks, without
        // contention.
        let slots: Vec<Mutex<Option<I::Item>>> = items.map(|x| Mutex::new(Some(x))).collect();
        let len = slots.len();
        let helpers = (self.threads - 1).min(len.saturating_sub(1));
        if helpers == 0 || len >= u32::MAX as usize {
            serial(|| {
                for slot in slots {
                    if let Some(item) = slot.into_inner().ok().flatten() {
                        f(item);
                    }
                }
            });
            return;
        }
        // Wake the spinning helpers: their spin loops end and they take the jobs below.
        self.generation.fetch_add(1, Ordering::AcqRel);
        let shares = helpers + 1;
        // Share k: items lo..hi, packed (lo << 32 | hi) in one atomic, so that a thread takes
        // its next item from the front, or one from the back of another share, with one
        // compare-exchange. (Behind one mutex the two threads collided, and a collision
        // parks a thread in the kernel: 0.9% of the samples, and the helper slept.)
        let pack = |lo: usize, hi: usize| ((lo as u64) << 32) | hi as u64;
        let unpack = |v: u64| ((v >> 32) as usize, (v & 0xffff_ffff) as usize);
        let bounds: Vec<AtomicU64> = (0..shares)
            .map(|k| AtomicU64::new(pack(k * len / shares, (k + 1) * len / shares)))
            .collect();
        let claim = |k: usize| -> Option<usize> {
            // Own share, from the front.
            let own = &bounds[k];
            let mut v = own.load(Ordering::Acquire);
            loop {
                let (lo, hi) = unpack(v);
                if lo >= hi {
                    break;
                }
                match own.compare_exchange_weak(
                    v,
                    pack(lo + 1, hi),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(lo),
                    Err(now) => v = now,
                }
            }
            // Another share's last item: the largest share left.
            loop {
                let (victim, v) = bounds
                    .iter()
                    .map(|b| b.load(Ordering::Acquire))
                    .enumerate()
                    .max_by_key(|&(_, v)| {
                        let (lo, hi) = unpack(v);
                        hi.saturating_sub(lo)
                    })?;
                let (lo, hi) = unpack(v);
                if lo >= hi {
                    return None;
                }
                if bounds[victim]
                    .compare_exchange(v, pack(lo, hi - 1), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Some(hi - 1);
                }
            }
        };
        let take = |k: usize| -> Option<I::Item> {
            let at = claim(k)?;
            slots[at].lock().ok().and_then(|mut slot| slot.take())
        };
        let work = |k: usize| {
            serial(|| {
                while let Some(item) = take(k) {
                    f(item);
                }
            })
        };
        let running = AtomicUsize::new(helpers);
        let spin = spin_time();
        self.pool.in_place_scope(|s| {
            for k in 1..shares {
                let (work, running) = (&work, &running);
                s.spawn(move |_| {
                    work(k);
                    running.fetch_sub(1, Ordering::Release);
                });
            }
            work(0);
            // The helpers are on their last items (or waking to find none): wait spinning
            // rather than asleep on the scope's latch, up to the spin time.
            let start = Instant::now();
            let mut polls = 0u32;
            while running.load(Ordering::Acquire) > 0 {
                std::hint::spin_loop();
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(256) && start.elapsed() >= spin {
                    break;
                }
            }
        });
        self.linger(spin);
    }

    /// Keeps each helper busy spinning for `spin` or until the next loop starts, so that it
    /// does not go to sleep between loops.
    fn linger(&self, spin: Duration) {
        if spin.is_zero() {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let deadline = Instant::now() + spin;
        for _ in 0..self.threads {
            let current = Arc::clone(&self.generation);
            self.pool.spawn(move || {
                // The generation every pause (the next loop's jobs wait on it), the clock
                // every 256.
                let mut polls = 0u32;
                while current.load(Ordering::Acquire) == generation {
                    std::hint::spin_loop();
                    polls = polls.wrapping_add(1);
                    if polls.is_multiple_of(256) && Instant::now() >= deadline {
                        break;
                    }
                }
            });
        }
    }
}

/// Where a plan runs: the caller's pool, the calling thread alone, or a team.
#[derive(Debug)]
pub(crate) enum Runner {
    /// `threads` not given: the caller's rayon pool (the global one outside any pool).
    Current,
    /// One thread: the calling thread, no pool and no handoff.
    Serial,
    /// The calling thread and helpers, this many in all.
    Team(Arc<Team>),
}

impl Runner {
    /// The runner for a plan's `threads` option.
    pub(crate) fn new(threads: Option<usize>) -> Result<Self> {
        match threads {
            Some(0) => Err(Error::InvalidArgument("threads must be >= 1".into())),
            Some(1) => Ok(Runner::Serial),
            Some(n) => Ok(Runner::Team(Team::shared(n)?)),
            None => Ok(Runner::Current),
        }
    }

    /// Runs `f` in this runner's context, on the calling thread.
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Runner::Current => f(),
            Runner::Serial => serial(f),
            Runner::Team(team) => {
                struct Restore(Option<Arc<Team>>);
                impl Drop for Restore {
                    fn drop(&mut self) {
                        let previous = self.0.take();
                        TEAM.with(|t| *t.borrow_mut() = previous);
                    }
                }
                let previous = TEAM.with(|t| t.borrow_mut().replace(Arc::clone(team)));
                let _restore = Restore(previous);
                f()
            }
        }
    }
}

/// `f(i)` for every `i` in `0..n`, in parallel unless serial.
pub fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    if is_serial() || n <= 1 {
        (0..n).for_each(f);
    } else if let Some(team) = current_team() {
        team.for_each(0..n, f);
    } else {
        (0..n).into_par_iter().for_each(f);
    }
}

/// `f(i, item)` for the items of `items`, in parallel unless serial.
pub fn for_each_item<T: Send>(items: Vec<T>, f: impl Fn(usize, T) + Sync + Send) {
    if is_serial() || items.len() <= 1 {
        items.into_iter().enumerate().for_each(|(i, x)| f(i, x));
    } else if let Some(team) = current_team() {
        team.for_each(items.into_iter().enumerate(), |(i, x)| f(i, x));
    } else {
        items.into_par_iter().enumerate().for_each(|(i, x)| f(i, x));
    }
}

/// Part `t`'s share of every `plane`-long chunk of `buf`: elements `cuts[t]..cuts[t + 1]` of
/// each chunk, chunk by chunk (`cuts` ascending from 0, at most `plane`). Threads given one
/// part each own their rows of every plane (in safe code: the slices are disjoint).
pub fn plane_parts<'a, T>(buf: &'a mut [T], plane: usize, cuts: &[usize]) -> Vec<Vec<&'a mut [T]>> {
    let parts = cuts.len().saturating_sub(1);
    let mut out: Vec<Vec<&'a mut [T]>> = (0..parts)
        .map(|_| Vec::with_capacity(buf.len() / plane.max(1)))
        .collect();
    for chunk in buf.chunks_exact_mut(plane.max(1)) {
        let mut rest = &mut chunk[cuts[0]..];
        for (t, part) in out.iter_mut().enumerate() {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(cuts[t + 1] - cuts[t]);
            part.push(mine);
            rest = tail;
        }
    }
    out
}

/// `f(i, part)` for the parts of work in `parts`, one per thread as a rule, in parallel
/// unless serial; the library's loops inside each call run serially.
pub fn for_each_part<T: Send>(parts: Vec<T>, f: impl Fn(usize, T) + Sync + Send) {
    for_each_item(parts, |i, part| serial(|| f(i, part)));
}

/// `f(i, chunk)` for the chunks of `size` elements of `s` (the last may be shorter).
pub fn for_each_chunk_mut<T: Send>(
    s: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let size = size.max(1);
    if is_serial() || s.len() <= size {
        s.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    } else if let Some(team) = current_team() {
        team.for_each(s.chunks_mut(size).enumerate(), |(i, c)| f(i, c));
    } else {
        s.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// `f(i, a_chunk, b_chunk)` over the chunks of `a` (`a_size` elements) and `b` (`b_size`)
/// side by side, as many as the shorter sequence has.
pub fn for_each_chunk_zip<T: Send, U: Sync>(
    a: &mut [T],
    a_size: usize,
    b: &[U],
    b_size: usize,
    f: impl Fn(usize, &mut [T], &[U]) + Sync + Send,
) {
    let (a_size, b_size) = (a_size.max(1), b_size.max(1));
    if is_serial() {
        a.chunks_mut(a_size)
            .zip(b.chunks(b_size))
            .enumerate()
            .for_each(|(i, (x, y))| f(i, x, y));
    } else if let Some(team) = current_team() {
        team.for_each(
            a.chunks_mut(a_size).zip(b.chunks(b_size)).enumerate(),
            |(i, (x, y))| f(i, x, y),
        );
    } else {
        a.par_chunks_mut(a_size)
            .zip(b.par_chunks(b_size))
            .enumerate()
            .for_each(|(i, (x, y))| f(i, x, y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn serial_runner_stays_on_the_calling_thread() {
        let runner = Runner::new(Some(1)).unwrap();
        let me = std::thread::current().id();
        let others = AtomicUsize::new(0);
        let sum = AtomicUsize::new(0);
        runner.run(|| {
            assert_eq!(threads(), 1);
            for_each_index(64, |i| {
                if std::thread::current().id() != me {
                    others.fetch_add(1, Ordering::Relaxed);
                }
                sum.fetch_add(i, Ordering::Relaxed);
            });
        });
        assert_eq!(others.load(Ordering::Relaxed), 0);
        assert_eq!(sum.load(Ordering::Relaxed), 64 * 63 / 2);
        // The flag is gone afterwards.
        assert!(!is_serial());
    }

    #[test]
    fn serial_flag_is_restored_after_a_panic() {
        let runner = Runner::new(Some(1)).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runner.run(|| panic!("inside"));
        }));
        assert!(r.is_err());
        assert!(!is_serial());
    }

    #[test]
    fn pool_runner_uses_its_threads_and_chunks_cover_everything() {
        let runner = Runner::new(Some(3)).unwrap();
        let mut a = vec![0usize; 100];
        let b: Vec<usize> = (0..100).collect();
        runner.run(|| {
            assert_eq!(threads(), 3);
            for_each_chunk_zip(&mut a, 7, &b, 7, |i, x, y| {
                for (d, s) in x.iter_mut().zip(y) {
                    *d = s + i;
                }
            });
        });
        assert!(a.iter().enumerate().all(|(j, &v)| v == j + j / 7));
        let mut c = vec![0usize; 10];
        runner.run(|| for_each_chunk_mut(&mut c, 3, |i, x| x.fill(i + 1)));
        assert_eq!(c, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
        assert!(Runner::new(Some(0)).is_err());
    }

    #[test]
    fn team_loops_visit_every_item_once_and_nest_serially() {
        for threads in [2, 3] {
            let runner = Runner::new(Some(threads)).unwrap();
            for n in [0usize, 1, 2, 3, 7, 64, 1000] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let nested = AtomicUsize::new(0);
                runner.run(|| {
                    assert_eq!(super::threads(), threads);
                    for_each_index(n, |i| {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                        // Loops inside an item run on the thread that took the item (a
                        // loop of one item runs inline, and what it nests keeps the team).
                        if n > 1 && super::threads() != 1 {
                            nested.fetch_add(1, Ordering::Relaxed);
                        }
                        let me = std::thread::current().id();
                        for_each_index(4, |_| {
                            if n > 1 && std::thread::current().id() != me {
                                nested.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    });
                });
                assert!(
                    seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {n} items: each item once"
                );
                assert_eq!(nested.load(Ordering::Relaxed), 0, "nested loops serial");
                let mut c = vec![0usize; n];
                let d: Vec<usize> = (0..n).collect();
                runner.run(|| {
                    for_each_chunk_zip(&mut c, 3, &d, 3, |i, x, y| {
                        for (a, b) in x.iter_mut().zip(y) {
                            *a += b + i;
                        }
                    })
                });
                assert!(c.iter().enumerate().all(|(j, &v)| v == j + j / 3));
                runner.run(|| for_each_chunk_mut(&mut c, 5, |i, x| x.fill(i)));
                assert!(c.iter().enumerate().all(|(j, &v)| v == j / 5));
            }
            // The team is only the run's: outside it, loops are the global pool's again.
            assert!(current_team().is_none());
        }
    }

    #[test]
    fn a_panic_in_a_team_loop_reaches_the_caller_and_the_team_still_works() {
        let runner = Runner::new(Some(2)).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runner.run(|| {
                for_each_index(100, |i| {
                    if i == 77 {
                        panic!("item 77");
                    }
                })
            })
        }));
        assert!(r.is_err());
        assert!(current_team().is_none() && !is_serial());
        let sum = AtomicUsize::new(0);
        runner.run(|| {
            for_each_index(100, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn in_pool_runs_on_the_teams_threads_and_elsewhere_here() {
        let runner = Runner::new(Some(3)).unwrap();
        let me = std::thread::current().id();
        let (elsewhere, threads) =
            runner.run(|| in_pool(|| (std::thread::current().id() != me, super::threads())));
        assert!(elsewhere, "in a team, in_pool runs on the pool");
        assert_eq!(threads, 3);
        let serial = Runner::new(Some(1)).unwrap();
        let here = serial.run(|| in_pool(|| std::thread::current().id() == me));
        assert!(here, "without a team, in_pool runs on the caller");
    }
}
