//! AVX2: `vpmaddwd` on 16-bit operands (activations widened once per product by `qgemm`,
//! weights stored widened) adds two products into each i32 lane; at most 2·255·128 per lane, so
//! nothing saturates. A tile is up to 6 rows × 16 columns: twelve accumulators, two weight
//! vectors and one broadcast pair fill fifteen of the sixteen registers.

use super::Tile;
use std::arch::x86_64::*;

const NR: usize = 16;

/// # Safety
/// The CPU has AVX2; `t` lies inside its buffers (`t.rows` ≤ 6), its activations are the
/// widened `i16` ones with `t.lda` counted in `i16`.
pub(super) unsafe fn tile(t: &Tile) {
    match t.rows {
        1 => rows::<1>(t),
        2 => rows::<2>(t),
        3 => rows::<3>(t),
        4 => rows::<4>(t),
        5 => rows::<5>(t),
        6 => rows::<6>(t),
        r => unreachable!("an AVX2 tile has at most 6 rows, got {r}"),
    }
}

/// The first `n` (≤ 8) lanes set, as `vpmaskmov` masks.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn lanes(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), idx)
}

#[target_feature(enable = "avx2")]
unsafe fn rows<const R: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let pairs = t.kp / 2;
    let b = t.b as *const i16;
    let a16 = t.a as *const i16;
    for g in 0..pairs {
        let b0 = _mm256_loadu_si256(b.add(g * 2 * NR) as *const _);
        let b1 = _mm256_loadu_si256(b.add(g * 2 * NR + 16) as *const _);
        for (r, acc) in acc.iter_mut().enumerate() {
            // One pair of activations, both halves of each lane: a single broadcast load.
            let pair = (a16.add(r * t.lda + 2 * g) as *const i32).read_unaligned();
            let a = _mm256_set1_epi32(pair);
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(a, b0));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(a, b1));
        }
    }
    // As in `kernel_vnni`: the epilogue reads the sums from memory, so that `acc` stays in
    // registers through the loop.
    let mut sums = [[0i32; NR]; R];
    for (s, acc) in sums.iter_mut().zip(&acc) {
        _mm256_storeu_si256(s.as_mut_ptr() as *mut _, acc[0]);
        _mm256_storeu_si256(s.as_mut_ptr().add(8) as *mut _, acc[1]);
    }
    for c0 in [0usize, 8] {
        if c0 >= t.cols {
            break;
        }
        let mask = lanes(t.cols - c0);
        let colsum = _mm256_loadu_si256(t.colsum.add(c0) as *const _);
        let w_scales = _mm256_loadu_ps(t.w_scales.add(c0));
        let bias = if t.bias.is_null() {
            None
        } else {
            Some(_mm256_maskload_ps(t.bias.add(c0), mask))
        };
        for (r, sum) in sums.iter().enumerate() {
            let zero = _mm256_set1_epi32(*t.a_zeros.add(r));
            let acc = _mm256_loadu_si256(sum.as_ptr().add(c0) as *const _);
            let v = _mm256_sub_epi32(acc, _mm256_mullo_epi32(zero, colsum));
            let at = r * t.ldc + c0;
            if t.is_f32() {
                let scale = _mm256_mul_ps(_mm256_set1_ps(*t.a_scales.add(r)), w_scales);
                let mut y = _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale);
                if let Some(b) = bias {
                    y = _mm256_add_ps(y, b);
                }
                _mm256_maskstore_ps(t.out_f32.add(at), mask, y);
            } else {
                _mm256_maskstore_epi32(t.out_i32.add(at), mask, v);
            }
        }
    }
}
