//! Run-time instruction-set dispatch for the row-wise kernels (softmax, LayerNorm, cross
//! entropy, dropout, activations, optimizers, broadcast maps).
//!
//! The crate is built for baseline x86-64 (SSE2), so a plain loop only ever auto-vectorizes
//! to 4 lanes. `simd_kernel!` compiles one kernel body three times: inside a
//! `#[target_feature(enable = "avx512f,avx2,fma")]` trampoline, an `avx2,fma` one and the
//! baseline, and picks the trampoline per call from [`current_isa`]. The body is an
//! `#[inline(always)]` function, so it and every `#[inline(always)]` helper it calls (e.g.
//! `ops::rows::exp_fast`) are compiled inside the trampoline with its features: the loops in
//! it vectorize to 16 (AVX-512) or 8 (AVX2) lanes. This is the `kernels.rs` pattern of the
//! attention, minus its explicit `Simd` trait: the row kernels need no intrinsics, only
//! the wider auto-vectorization.
//!
//! Results are bit-identical across the paths: Rust never contracts `a·b + c` into an FMA
//! and never reassociates float sums, so the wide paths run the same arithmetic in the same
//! order; only `f32::mul_add` would differ, and the row kernels do not use it.

use super::features::{active_isa, Isa};
use std::cell::Cell;

thread_local! {
    /// A per-thread override of the global instruction set, set by [`with_isa`].
    static OVERRIDE: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The instruction set the row kernels take on this thread: [`with_isa`]'s override, else
/// the global `active_isa()`.
#[inline]
pub fn current_isa() -> Isa {
    OVERRIDE.with(Cell::get).unwrap_or_else(active_isa)
}

/// Runs `f` with the row kernels on the calling thread forced to `isa` (which must be
/// supported; unsupported ones fall back to the global choice). Per thread, unlike
/// `cpu::set_isa`, so tests comparing paths do not change what concurrently running tests
/// compute; run `f` on one thread (e.g. a one-thread pool) to cover every row.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    let isa = isa.is_supported().then_some(isa);
    let before = OVERRIDE.with(|o| o.replace(isa));
    // Restored on unwind too, so a failing assertion inside `f` does not leak the override.
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// Defines `fn name(args) -> R { body }` that runs `body` compiled for the current
/// instruction set (see the module doc). Arguments must be plain identifiers; types may be
/// references, slices, `impl Fn…` (the closure is then inlined into each path) and so on.
/// Keep bodies to whole rows or chunks: the dispatch costs a thread-local read and a call.
macro_rules! simd_kernel {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::cpu::simd::current_isa() {
                    // SAFETY: `current_isa` only reports instruction sets the host supports.
                    $crate::cpu::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::Isa::Generic => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;

/// The mask of the first `min(n, 16)` lanes of a 16-lane vector (an AVX-512 `__mmask16`): the
/// tail of a row that does not fill a register.
#[inline(always)]
pub fn lanes16(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// Runs `f(isa)` under every instruction set the host supports, each on a one-thread pool
/// with [`with_isa`] set, printing a line for each one skipped.
#[cfg(test)]
pub(crate) fn for_each_isa(mut f: impl FnMut(Isa) + Send) {
    for isa in Isa::ALL {
        if !isa.is_supported() {
            eprintln!("skipping the {} path: this CPU cannot run it", isa.name());
            continue;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| with_isa(isa, || f(isa)));
    }
}
