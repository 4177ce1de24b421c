//! The thread pool that ops' parallel parts run in. rayon's global pool cannot be resized, so
//! tfm_rs keeps its own and rebuilds it on `set_num_threads`. An op runs on its caller's thread
//! and enters the pool with [`parallel`] for its parallel parts; a call made of many ops (a
//! decoding, a backward pass through large values) enters it once for all of them.
//!
//! A child made by `fork` (multiprocessing's default start method on Linux, DataLoader-style
//! worker pools) inherits the pool but not its worker threads: a job sent to it would wait
//! forever. The fork handlers below (see `cpu::fork`) hold the pool's lock across the fork and,
//! in the child, set the dead pool aside and remember its size, so the child's first op builds
//! a fresh pool with as many threads, as PyTorch does.

use super::fork;
use crate::error::{Result, TfmError};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once, RwLock, RwLockWriteGuard};

type Slot = Option<Arc<rayon::ThreadPool>>;

static POOL: RwLock<Slot> = RwLock::new(None);
/// The size of the next pool built on first use: 0 for the default, else the size of the pool
/// that a fork left behind in this (child) process.
static NEXT_THREADS: AtomicUsize = AtomicUsize::new(0);
static FORK_HANDLERS: Once = Once::new();

thread_local! {
    /// The pool's lock, held by the forking thread from `prepare` until `parent`/`child`.
    static HELD: RefCell<Option<RwLockWriteGuard<'static, Slot>>> = const { RefCell::new(None) };
}

extern "C" fn prepare_fork() {
    let guard = POOL.write().unwrap_or_else(|e| e.into_inner());
    HELD.with(|h| *h.borrow_mut() = Some(guard));
}

extern "C" fn after_fork_in_parent() {
    HELD.with(|h| drop(h.borrow_mut().take()));
}

extern "C" fn after_fork_in_child() {
    HELD.with(|h| {
        if let Some(mut slot) = h.borrow_mut().take() {
            if let Some(dead) = slot.take() {
                NEXT_THREADS.store(dead.current_num_threads(), Ordering::Relaxed);
                // Dropping it would signal worker threads that do not exist here, through locks
                // they may have held at the fork; its memory is the parent's copy, left as is.
                std::mem::forget(dead);
            }
        }
    });
}

fn default_threads() -> usize {
    std::env::var("TFM_RS_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn build(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    FORK_HANDLERS.call_once(|| {
        fork::on_fork(
            Some(prepare_fork),
            Some(after_fork_in_parent),
            Some(after_fork_in_child),
        )
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tfm-rs-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| TfmError::internal("set_num_threads", e.to_string()))
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(Arc::clone(p));
    }
    let mut guard = POOL.write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let threads = match NEXT_THREADS.load(Ordering::Relaxed) {
            0 => default_threads(),
            n => n,
        };
        *guard = Some(build(threads)?);
    }
    Ok(Arc::clone(guard.as_ref().expect("pool was just built")))
}

/// Work at least this large (in elements) is split across threads; below it, thread hand-off
/// costs more than it saves.
pub const PAR_MIN: usize = 1 << 15;

/// Runs `f` inside the tfm_rs pool, so rayon work it spawns uses `num_threads()` threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    Ok(pool()?.install(f))
}

/// Runs `f`, whose rayon parallel iterators then run on [`threads`] threads: on this thread
/// when it is already a pool's worker (work nested in a parallel op, or a test's own pool), else
/// handed to the tfm_rs pool. Ops run on the caller's thread and enter the pool only here, for
/// their parallel parts: the hand-off to a sleeping worker and back costs ~17 µs (Zen 4 guest),
/// forty times a small op's whole cost. Were the pool impossible to build, `f` runs here and
/// its parallel parts fall to rayon's global pool.
pub fn parallel<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    match pool() {
        Ok(p) => p.install(f),
        Err(_) => f(),
    }
}

/// [`parallel`] when `cond` (typically: the work is large enough and [`threads`] > 1), else
/// `f` right here. `f` must then use sequential iterators only: a parallel one outside any pool
/// would run on rayon's global pool.
pub fn parallel_if<R: Send>(cond: bool, f: impl FnOnce() -> R + Send) -> R {
    if cond {
        parallel(f)
    } else {
        f()
    }
}

/// `f(item)` for every item: across the pool when there are several items and threads, else
/// in order on this thread.
pub fn for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    if items.len() > 1 && threads() > 1 {
        parallel(|| items.into_par_iter().for_each(f));
    } else {
        items.into_iter().for_each(f);
    }
}

/// The number of threads [`parallel`] work runs on: the current pool's inside one, else the
/// tfm_rs pool's.
pub fn threads() -> usize {
    if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        num_threads()
    }
}

pub fn num_threads() -> usize {
    pool().map(|p| p.current_num_threads()).unwrap_or(1)
}

pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Err(TfmError::value(
            "set_num_threads",
            "the number of threads must be at least 1",
        ));
    }
    let new = build(threads)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(new);
    Ok(())
}

/// A raw pointer the pool's tasks may share, for outputs they write in disjoint parts (each
/// element from one task), which `&mut` cannot express across a parallel iterator.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: users write disjoint parts, each from one thread, and the buffer outlives the tasks
// (rayon joins before the owner continues).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, so that closures capture the wrapper and not its raw field.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }

    /// Element `offset` (not dereferenced here, so no bounds to promise yet).
    pub(crate) fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }

    /// Elements `offset..offset + len` as a slice.
    ///
    /// # Safety
    /// The range lies inside the buffer, and no other task reads or writes it meanwhile.
    pub(crate) unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_tfm_rs_worker() -> bool {
        std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tfm-rs-"))
    }

    #[test]
    fn parallel_work_runs_in_the_pool_it_is_called_from_else_in_tfm_rs_pool() {
        // From a thread outside any pool: handed to the tfm_rs pool.
        assert!(!on_tfm_rs_worker());
        assert!(parallel(on_tfm_rs_worker));
        assert_eq!(parallel(rayon::current_num_threads), num_threads());
        assert_eq!(threads(), num_threads());
        // From a worker of another pool (a test's own): right there, at that pool's size.
        let own = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        own.install(|| {
            let here = std::thread::current().id();
            assert_eq!(parallel(|| std::thread::current().id()), here);
            assert_eq!(threads(), 3);
            assert!(!parallel_if(false, on_tfm_rs_worker));
        });
        assert!(!parallel_if(false, on_tfm_rs_worker));
    }

    #[test]
    fn for_each_visits_every_item_once() {
        for n in [0, 1, 3, 17] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each((0..n).collect(), |i: usize| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }
}
