//! Op output buffers, recycled.
//!
//! A training step allocates the same large activations and gradients every step (the logits
//! and their gradient alone are ~100 MB at a 3000-token batch and an 8000-word vocabulary). A
//! fresh buffer that size is a new mmap: every 4 KiB page faults and is zeroed by the kernel on
//! first write, and a mid-sized one reused by malloc is zeroed again by `calloc`. Together
//! that was ~8% of a Multi30k training step. So tensors hand their storage back here when they
//! are dropped ([`recycle`]), and ops take their outputs from here:
//! - [`output`] when the op writes every element (a GEMM with β = 0, an elementwise map): the
//!   contents are whatever a previous tensor left (initialized `f32`s, so reading them is
//!   defined behaviour, merely meaningless);
//! - [`zeros`] when the op accumulates into its output or leaves parts of it untouched.
//!
//! Only buffers of at least [`POOL_MIN`] floats are kept, at most [`POOL_MAX_BYTES`] in all,
//! oldest dropped first. Their capacities are rounded up to size classes (eight per power of
//! two, so at most 12.5% unused), because batches of varying length ask for slightly different
//! sizes each step and a buffer must be at least the size asked for. Fresh large buffers are
//! advised onto transparent huge pages (Linux), so they fault in 2 MiB at a time.
//!
//! The pool's lock is held across `fork` (see `cpu::fork`), so a child never inherits it locked
//! by a thread that does not exist there.

use super::fork;
use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard, Once};

/// Smallest buffer (in floats) worth keeping: below this malloc reuses memory cheaply itself.
pub const POOL_MIN: usize = 64 * 1024;
/// Most bytes the pool holds unless `TFM_RS_POOL_MB` says otherwise (0 turns it off). A
/// Multi30k training step at 3000 tokens frees ~1.2 GB of activations and gradients; a cap below
/// that evicts the step's largest buffers (the logits, freed first) before the next step reuses
/// them.
pub const POOL_MAX_BYTES: usize = 2 << 30;
/// Buffers of at least this many bytes get the huge-page advice.
pub const HUGE_MIN: usize = 16 << 20;

struct Pool {
    /// Oldest first. A vector's length is how much of its capacity has been initialized.
    free: Vec<Vec<f32>>,
    bytes: usize,
    max_bytes: usize,
}

impl Pool {
    /// The smallest pooled buffer holding `n` floats, if one is at most twice that.
    fn take(&mut self, n: usize) -> Option<Vec<f32>> {
        let (i, _) = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| (n..=2 * n).contains(&v.capacity()))
            .min_by_key(|(_, v)| v.capacity())?;
        let v = self.free.swap_remove(i);
        self.bytes -= v.capacity() * 4;
        Some(v)
    }

    /// Keeps `v`; returns what no longer fits, oldest first.
    fn put(&mut self, v: Vec<f32>) -> Vec<Vec<f32>> {
        let bytes = v.capacity() * 4;
        if bytes > self.max_bytes {
            return vec![v];
        }
        self.bytes += bytes;
        self.free.push(v);
        let mut evicted = Vec::new();
        while self.bytes > self.max_bytes {
            let old = self.free.remove(0);
            self.bytes -= old.capacity() * 4;
            evicted.push(old);
        }
        evicted
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
    max_bytes: usize::MAX,
});

static FORK_HANDLERS: Once = Once::new();

thread_local! {
    /// The pool's lock, held by the forking thread from `prepare` until `parent`/`child`.
    static HELD: RefCell<Option<MutexGuard<'static, Pool>>> = const { RefCell::new(None) };
}

extern "C" fn prepare_fork() {
    let guard = lock();
    HELD.with(|h| *h.borrow_mut() = Some(guard));
}

extern "C" fn after_fork() {
    HELD.with(|h| drop(h.borrow_mut().take()));
}

fn lock() -> MutexGuard<'static, Pool> {
    // The pool holds no invariant a panic could break halfway: use it even if poisoned.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool() -> MutexGuard<'static, Pool> {
    FORK_HANDLERS
        .call_once(|| fork::on_fork(Some(prepare_fork), Some(after_fork), Some(after_fork)));
    let mut p = lock();
    if p.max_bytes == usize::MAX {
        p.max_bytes = std::env::var("TFM_RS_POOL_MB")
            .ok()
            .and_then(|mb| mb.trim().parse::<usize>().ok())
            .map_or(POOL_MAX_BYTES, |mb| mb.saturating_mul(1 << 20));
    }
    p
}

/// A pooled buffer with room for `n` floats, if one fits, as it was given back: its length is
/// how much of it holds (stale) values.
fn recycled(n: usize) -> Option<Vec<f32>> {
    (n >= POOL_MIN).then(|| pool().take(n)).flatten()
}

/// A buffer of `n` floats whose contents are unspecified: the caller must write every element
/// before the buffer is read or becomes a tensor. Of a pooled buffer, only the part never
/// initialized is written here: keeping every pooled buffer initialized to its capacity cost a
/// memset of up to half of it per reuse.
pub fn output(n: usize) -> Vec<f32> {
    match recycled(n) {
        Some(mut v) => {
            v.resize(n, 0.0);
            v
        }
        None => fresh(n),
    }
}

/// `n` zeros (each written once).
pub fn zeros(n: usize) -> Vec<f32> {
    match recycled(n) {
        Some(mut v) => {
            v.clear();
            v.resize(n, 0.0);
            v
        }
        None => fresh(n),
    }
}

/// Gives a tensor's storage back for reuse (or to the allocator if it is small or the pool is
/// full).
pub fn recycle(v: Vec<f32>) {
    if v.capacity() < POOL_MIN {
        return;
    }
    let evicted = pool().put(v);
    // Freed outside the lock: returning a large mapping to the kernel takes a while.
    drop(evicted);
}

/// Drops every pooled buffer, giving the memory back to the allocator.
pub fn release() {
    let free = {
        let mut p = pool();
        p.bytes = 0;
        std::mem::take(&mut p.free)
    };
    drop(free);
}

#[cfg(target_os = "linux")]
extern "C" {
    fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
}

#[cfg(target_os = "linux")]
const MADV_HUGEPAGE: i32 = 14;

/// The capacity allocated for `n` floats: `n` rounded up to the next of eight steps per power
/// of two, from [`POOL_MIN`] on.
fn size_class(n: usize) -> usize {
    if n < POOL_MIN {
        return n;
    }
    let step = (1usize << n.ilog2()) / 8;
    n.next_multiple_of(step)
}

/// `n` zeros (fresh pages from `calloc` are zero without a pass over them) in a buffer of
/// [`size_class`]`(n)`, advised onto transparent huge pages when large.
fn fresh(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; size_class(n)];
    v.truncate(n);
    #[cfg(target_os = "linux")]
    if v.capacity() * 4 >= HUGE_MIN {
        const HUGE: usize = 2 << 20;
        let start = v.as_mut_ptr() as usize;
        let end = start + v.capacity() * 4;
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside `v`'s allocation; MADV_HUGEPAGE only changes how
            // the kernel backs those pages (their contents stay zero), and failure is harmless.
            unsafe {
                madvise(lo as *mut core::ffi::c_void, hi - lo, MADV_HUGEPAGE);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(max_bytes: usize) -> Pool {
        Pool {
            free: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    #[test]
    fn zeros_are_zero_at_every_size_even_after_dirty_buffers_were_recycled() {
        for n in [0, 1, 1000, POOL_MIN, HUGE_MIN / 4 + 12345, 3 << 20] {
            recycle(vec![f32::NAN; n + n / 3]);
            let v = zeros(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0), "n = {n}");
            assert_eq!(output(n).len(), n);
        }
    }

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        assert_eq!(size_class(POOL_MIN - 1), POOL_MIN - 1);
        assert_eq!(size_class(POOL_MIN), POOL_MIN);
        assert_eq!(size_class(POOL_MIN + 1), POOL_MIN + POOL_MIN / 8);
        for i in 0..1000 {
            let n = POOL_MIN + (crate::random::mix(i) % (1 << 28)) as usize;
            let c = size_class(n);
            assert!(c >= n && c - n <= n / 8, "{n} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
        assert!(fresh(POOL_MIN + 1).capacity() >= size_class(POOL_MIN + 1));
    }

    #[test]
    fn take_is_best_fit_within_twice_the_request() {
        let mut p = local(usize::MAX);
        let _ = p.put(vec![1.0; 100]);
        let _ = p.put(vec![2.0; 400]);
        assert_eq!(p.bytes, 500 * 4);
        assert!(
            p.take(199).is_none(),
            "100 is too small, 400 more than twice 199"
        );
        assert_eq!(p.take(100).map(|v| v[0]), Some(1.0));
        assert_eq!(p.take(300).map(|v| v[0]), Some(2.0));
        assert_eq!(p.bytes, 0);
        assert!(p.take(1).is_none());
    }

    #[test]
    fn put_stays_under_the_cap_dropping_the_oldest() {
        let mut p = local(3 * 100 * 4);
        for i in 0..4 {
            let evicted = p.put(vec![i as f32; 100]);
            let expect: &[f32] = if i == 3 { &[0.0] } else { &[] };
            assert_eq!(evicted.iter().map(|v| v[0]).collect::<Vec<_>>(), expect);
        }
        assert_eq!(p.bytes, 3 * 100 * 4);
        let mut kept: Vec<f32> = std::iter::from_fn(|| p.take(100)).map(|v| v[0]).collect();
        kept.sort_by(f32::total_cmp);
        assert_eq!(kept, [1.0, 2.0, 3.0]);
        // A buffer bigger than the whole cap is not kept at all.
        assert_eq!(p.put(vec![9.0; 301]).len(), 1);
        assert_eq!(p.bytes, 0);
    }
}
