//! AVX2+FMA micro-kernel: a 6×16 tile of row-major `C`, two ymm per row.
//!
//! 12 accumulators + 2 `B` registers + 1 broadcast fill 15 of the 16 ymm registers; each step
//! does 12 FMAs for 2 loads and 6 broadcasts (the classic Haswell shape, BLIS's 6×16).

use super::driver::MicroKernel;
use std::arch::x86_64::*;

pub(super) struct Avx2;

const MR: usize = 6;
const NR: usize = 16;

impl MicroKernel for Avx2 {
    const FUSED: bool = true;
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 512;
    const MC: usize = 6 * 24;
    const NC: usize = 1024;

    unsafe fn tile(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: forwarded from the trait contract (AVX2 and FMA are present, pointers valid).
        unsafe { tile(k, a, b, c, ldc, alpha, beta) }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // SAFETY (whole body): the caller guarantees k*MR floats at `a`, k*NR at `b`, and the MR×NR
    // tile at `c` with stride `ldc`.
    unsafe {
        for r in 0..MR {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..k {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        let alpha = _mm256_set1_ps(alpha);
        if beta == 0.0 {
            for (r, acc) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                _mm256_storeu_ps(cr, _mm256_mul_ps(acc[0], alpha));
                _mm256_storeu_ps(cr.add(8), _mm256_mul_ps(acc[1], alpha));
            }
        } else {
            let beta = _mm256_set1_ps(beta);
            for (r, acc) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                let c0 = _mm256_mul_ps(_mm256_loadu_ps(cr), beta);
                let c1 = _mm256_mul_ps(_mm256_loadu_ps(cr.add(8)), beta);
                _mm256_storeu_ps(cr, _mm256_fmadd_ps(acc[0], alpha, c0));
                _mm256_storeu_ps(cr.add(8), _mm256_fmadd_ps(acc[1], alpha, c1));
            }
        }
    }
}
