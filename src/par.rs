//! Where a plan's parallel loops run, and the loops themselves.
//!
//! A plan of one thread runs on the calling thread. It used to run on a private rayon pool of
//! one worker, and every `run` handed the work to that worker and slept until it finished:
//! the caller's wake-up alone measured 9 us median back to back, and 37 us median (104 us
//! p90) once the worker had gone to sleep, against layers of 0.3-0.6 ms
//! (googlenet.inc3a.5x5, resnet50.res2.1x1a, mobilenetv2.pw56). onnxruntime with one
//! intra-op thread runs on the caller too.
//!
//! So the library's parallel loops go through the functions here: inside [`Runner::run`] of a
//! serial runner they are plain loops on the calling thread (a thread-local flag, restored on
//! exit, also on unwinding); otherwise they are rayon loops on the current pool.

use rayon::prelude::*;
use std::cell::Cell;

use crate::error::{Error, Result};

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
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

/// How many threads the parallel loops of the current context use.
pub fn threads() -> usize {
    if is_serial() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Where a plan runs: the caller's pool, the calling thread alone, or a private pool.
#[derive(Debug)]
pub(crate) enum Runner {
    /// `threads` not given: the caller's rayon pool (the global one outside any pool).
    Current,
    /// One thread: the calling thread, no pool and no handoff.
    Serial,
    /// A private pool of this many threads.
    Pool(rayon::ThreadPool),
}

impl Runner {
    /// The runner for a plan's `threads` option.
    pub(crate) fn new(threads: Option<usize>) -> Result<Self> {
        match threads {
            Some(0) => Err(Error::InvalidArgument("threads must be >= 1".into())),
            Some(1) => Ok(Runner::Serial),
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map(Runner::Pool)
                .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}"))),
            None => Ok(Runner::Current),
        }
    }

    /// Runs `f` in this runner's context.
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Runner::Current => f(),
            Runner::Serial => serial(f),
            Runner::Pool(p) => p.install(f),
        }
    }
}

/// `f(i)` for every `i` in `0..n`, in parallel unless serial.
pub fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    if is_serial() || n <= 1 {
        (0..n).for_each(f);
    } else {
        (0..n).into_par_iter().for_each(f);
    }
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
}
