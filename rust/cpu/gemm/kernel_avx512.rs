//! AVX-512 micro-kernel: a 14×32 tile of row-major `C`, two zmm per row.
//!
//! Each step `p` loads one 32-wide row of the packed `B` panel (2 zmm) and broadcasts the 14
//! `A` values (`vbroadcastss` from memory: a load-port µop, no shuffle port), for 28 independent
//! FMAs. That keeps 28 accumulators + 2 `B` registers + 1 broadcast of the 32 zmm, and 16 loads
//! per 28 FMAs stays within the load ports while both FMA ports are busy. (BLIS's Skylake-X /
//! Zen 4 32×12 column-major kernel is the same shape transposed.)

use super::driver::{tile_for_rows, MicroKernel};
use std::arch::x86_64::*;

pub(super) struct Avx512;

const MR: usize = 14;
const NR: usize = 32;
/// How many k-steps ahead to prefetch packed B (measured: 16 ≥ 8 > none).
pub(super) const B_PREFETCH_STEPS: usize = 16;

impl MicroKernel for Avx512 {
    const AVX512: bool = true;
    const FUSED: bool = true;
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 512;
    const MC: usize = 14 * 24;
    // 4 MiB of packed B: measured ≥ 1024 (which repacks A twice as often) at 2048³ and on
    // 2048×512×2048, on 1 and 2 threads.
    const NC: usize = 2048;

    unsafe fn tile(
        rows: usize,
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: forwarded from the trait contract (AVX-512F is present, pointers are valid).
        unsafe {
            tile_for_rows!(
                tile,
                rows,
                [14 13 12 11 10 9 8 7 6 5 4 3 2 1],
                (k, a, b, c, ldc, alpha, beta)
            )
        }
    }
}

/// The first `R` rows of the tile (a partial row panel, e.g. 16 rows cut as 8 + 8): each row's
/// arithmetic is the same for every `R`.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY (whole body): the caller guarantees k*MR floats at `a`, k*NR at `b`, and the R×NR
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
        // them during the first R steps, one row per step, so that 28 likely misses are not
        // queued in one burst ahead of the first A/B loads (a design choice; the measured
        // difference from a burst was within noise).
        let head = k.min(R);
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

/// The AVX-512 body of [`super::pack::transpose`] (see there): 16 columns × 16 depths per
/// register transpose, masked at the edges.
///
/// # Safety
/// The CPU must have AVX-512F; `src` must hold `(wt-1)*cs + kc` floats and `dst` `kc*width`,
/// with `wt <= width`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_panel(
    src: &[f32],
    cs: usize,
    kc: usize,
    wt: usize,
    width: usize,
    dst: &mut [f32],
) {
    let mask = crate::cpu::simd::lanes16;
    for pb in (0..kc).step_by(16) {
        let len = 16.min(kc - pb);
        for j0 in (0..wt).step_by(16) {
            let gw = 16.min(wt - j0);
            let mut rows = [_mm512_setzero_ps(); 16];
            for (j, row) in rows.iter_mut().enumerate().take(gw) {
                // SAFETY: column j0+j's depths pb..pb+len lie inside `src` (see above); masked
                // lanes are not read.
                *row = unsafe {
                    _mm512_maskz_loadu_ps(mask(len), src.as_ptr().add((j0 + j) * cs + pb))
                };
            }
            let cols = transpose16(rows);
            for (q, col) in cols.iter().enumerate().take(len) {
                // SAFETY: row pb+q < kc of `dst`, columns j0..j0+gw <= width; masked lanes are
                // not written.
                unsafe {
                    _mm512_mask_storeu_ps(
                        dst.as_mut_ptr().add((pb + q) * width + j0),
                        mask(gw),
                        *col,
                    )
                };
            }
        }
    }
}

/// The transpose of a 16×16 block held as 16 rows: `out[j]` lane `i` is `rows[i]` lane `j`.
/// Pairs of rows interleave by 32 then 64 bits within each 128-bit lane, which leaves each
/// 128-bit lane holding four rows of one column; two 128-bit shuffles gather those.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(rows: [__m512; 16]) -> [__m512; 16] {
    let z = _mm512_setzero_ps();
    // a[2i], a[2i+1]: rows 2i, 2i+1 interleaved (low / high pairs of each 128-bit lane).
    let mut a = [z; 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // b[4k+c], 128-bit lane L: rows 4k..4k+4 of column 4L+c.
    let (pd, ps) = (_mm512_castps_pd, _mm512_castpd_ps);
    let mut b = [z; 16];
    for k in 0..4 {
        let (x0, x1, x2, x3) = (
            pd(a[4 * k]),
            pd(a[4 * k + 1]),
            pd(a[4 * k + 2]),
            pd(a[4 * k + 3]),
        );
        b[4 * k] = ps(_mm512_unpacklo_pd(x0, x2));
        b[4 * k + 1] = ps(_mm512_unpackhi_pd(x0, x2));
        b[4 * k + 2] = ps(_mm512_unpacklo_pd(x1, x3));
        b[4 * k + 3] = ps(_mm512_unpackhi_pd(x1, x3));
    }
    let mut out = [z; 16];
    for c in 0..4 {
        // Lanes 0,1 / 2,3 of the blocks for rows 0..8 and 8..16, then every other lane.
        let lo01 = _mm512_shuffle_f32x4::<0x44>(b[c], b[4 + c]);
        let hi01 = _mm512_shuffle_f32x4::<0xEE>(b[c], b[4 + c]);
        let lo23 = _mm512_shuffle_f32x4::<0x44>(b[8 + c], b[12 + c]);
        let hi23 = _mm512_shuffle_f32x4::<0xEE>(b[8 + c], b[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(lo01, lo23);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(lo01, lo23);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(hi01, hi23);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(hi01, hi23);
    }
    out
}
