//! AVX2+FMA micro-kernel: a 6×16 tile of row-major `C`, two ymm per row.
//!
//! 12 accumulators + 2 `B` registers + 1 broadcast fill 15 of the 16 ymm registers; each step
//! does 12 FMAs for 2 loads and 6 broadcasts (the classic Haswell shape, BLIS's 6×16).

use super::driver::{tile_for_rows, MicroKernel};
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
        rows: usize,
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: forwarded from the trait contract (AVX2 and FMA are present, pointers valid).
        unsafe { tile_for_rows!(tile, rows, [6 5 4 3 2 1], (k, a, b, c, ldc, alpha, beta)) }
    }
}

/// The first `R` rows of the tile; each row's arithmetic is the same for every `R`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY (whole body): the caller guarantees k*MR floats at `a`, k*NR at `b`, and the R×NR
    // tile at `c` with stride `ldc`.
    unsafe {
        for r in 0..R {
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

/// [`super::pack::transpose`] with AVX: whole 8 × 8 blocks (8 columns, 8 depths) through a
/// register transpose, the ragged edges (fewer than 8 columns or depths left) one element at a
/// time. Packing `Bᵀ` of a linear layer goes through here on every call, so on a CPU without
/// AVX-512 the element-by-element scatter made products with few rows (decoding) run at a
/// fraction of the memory bandwidth.
///
/// # Safety
/// The CPU must have AVX; `src` must hold `(wt-1)*cs + kc` floats and `dst` `kc*width`, with
/// `wt <= width`.
#[target_feature(enable = "avx")]
pub(super) unsafe fn transpose_panel(
    src: &[f32],
    cs: usize,
    kc: usize,
    wt: usize,
    width: usize,
    dst: &mut [f32],
) {
    let (kb, jb) = (kc / 8 * 8, wt / 8 * 8);
    for pb in (0..kb).step_by(8) {
        for j0 in (0..jb).step_by(8) {
            // SAFETY: columns j0..j0+8 ≤ wt, depths pb..pb+8 ≤ kc lie inside `src`.
            let rows: [__m256; 8] = std::array::from_fn(|j| unsafe {
                _mm256_loadu_ps(src.as_ptr().add((j0 + j) * cs + pb))
            });
            for (q, col) in transpose8(rows).iter().enumerate() {
                // SAFETY: row pb+q < kc of `dst`, columns j0..j0+8 ≤ wt ≤ width.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add((pb + q) * width + j0), *col) };
            }
        }
    }
    for p in 0..kc {
        let from = if p < kb { jb } else { 0 };
        for j in from..wt {
            dst[p * width + j] = src[j * cs + p];
        }
    }
}

/// The transpose of an 8×8 block held as 8 rows: `out[j]` lane `i` is `rows[i]` lane `j`. Pairs
/// of rows interleave by 32 bits, pairs of those by 64 bits (each 128-bit lane then holds four
/// rows of one column), and the 128-bit halves of rows 0..4 and 4..8 join.
#[target_feature(enable = "avx")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // s[4h + d]: depths d and d + 4 of rows 4h..4h+4 (t[4h], t[4h+2] hold depths 0,1 | 4,5;
    // t[4h+1], t[4h+3] depths 2,3 | 6,7).
    let s: [__m256; 8] = std::array::from_fn(|i| {
        let (h, d) = (i / 4, i % 4);
        let (a, b) = (t[4 * h + d / 2], t[4 * h + d / 2 + 2]);
        if d % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xEE>(a, b)
        }
    });
    std::array::from_fn(|d| {
        if d < 4 {
            _mm256_permute2f128_ps::<0x20>(s[d], s[4 + d])
        } else {
            _mm256_permute2f128_ps::<0x31>(s[d - 4], s[d])
        }
    })
}
