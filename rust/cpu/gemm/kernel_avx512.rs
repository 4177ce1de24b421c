//! AVX-512 micro-kernel: a 14×32 tile of row-major `C`, two zmm per row.
//!
//! Each step `p` loads one 32-wide row of the packed `B` panel (2 zmm) and broadcasts the 14
//! `A` values (`vbroadcastss` from memory: a load-port µop, no shuffle port), for 28 independent
//! FMAs. That keeps 28 accumulators + 2 `B` registers + 1 broadcast of the 32 zmm, and 16 loads
//! per 28 FMAs stays within the load ports while both FMA ports are busy. (BLIS's Skylake-X /
//! Zen 4 32×12 column-major kernel is the same shape transposed.)

use super::driver::MicroKernel;
use std::arch::x86_64::*;

pub(super) struct Avx512;

const MR: usize = 14;
const NR: usize = 32;
/// How many k-steps ahead to prefetch packed B (measured: 16 ≥ 8 > none).
const B_PREFETCH_STEPS: usize = 16;

impl MicroKernel for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 512;
    const MC: usize = 14 * 24;
    // 4 MiB of packed B: measured ≥ 1024 (which repacks A twice as often) at 2048³ and on
    // 2048×512×2048, on 1 and 2 threads.
    const NC: usize = 2048;

    unsafe fn tile(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: forwarded from the trait contract (AVX-512F is present, pointers are valid).
        unsafe { tile(k, a, b, c, ldc, alpha, beta) }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY (whole body): the caller guarantees k*MR floats at `a`, k*NR at `b`, and the MR×NR
    // tile at `c` with stride `ldc`.
    unsafe {
        let (mut a, mut b) = (a, b);
        macro_rules! step {
            () => {
                // The KC×32 B panel (64 KiB at KC = 512) outgrows L1 and streams from L2;
                // the hardware prefetcher alone leaves ~7% on the table at 2048³. (`wrapping_add`:
                // near the panel end the address is past the buffer, harmless for a prefetch.)
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(NR * B_PREFETCH_STEPS) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(NR * B_PREFETCH_STEPS + 16) as *const i8);
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(r));
                    acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                }
                a = a.add(MR);
                b = b.add(NR);
            };
        }
        // The tile's rows of C are scattered at stride ldc and needed only at the end: prefetch
        // them during the first MR steps, one row per step, so that 28 likely misses are not
        // queued in one burst ahead of the first A/B loads (a design choice; the measured
        // difference from a burst was within noise).
        let head = k.min(MR);
        for r in 0..head {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + 16) as *const i8);
            step!();
        }
        for _ in head..k {
            step!();
        }
        let alpha = _mm512_set1_ps(alpha);
        if beta == 0.0 {
            for (r, acc) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                _mm512_storeu_ps(cr, _mm512_mul_ps(acc[0], alpha));
                _mm512_storeu_ps(cr.add(16), _mm512_mul_ps(acc[1], alpha));
            }
        } else {
            let beta = _mm512_set1_ps(beta);
            for (r, acc) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                let c0 = _mm512_mul_ps(_mm512_loadu_ps(cr), beta);
                let c1 = _mm512_mul_ps(_mm512_loadu_ps(cr.add(16)), beta);
                _mm512_storeu_ps(cr, _mm512_fmadd_ps(acc[0], alpha, c0));
                _mm512_storeu_ps(cr.add(16), _mm512_fmadd_ps(acc[1], alpha, c1));
            }
        }
    }
}
