//! AVX-512 VNNI: `vpdpbusd` adds four u8×s8 products into each i32 lane. A tile is up to 12
//! rows × 32 columns (24 accumulators); the row count is a const parameter so that the
//! accumulators stay in registers for any count (decoding multiplies 1 row).

use super::Tile;
use crate::cpu::simd::lanes16;
use std::arch::x86_64::*;

const NR: usize = 32;

/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `t` lies inside its buffers (`t.rows` ≤ 12).
pub(super) unsafe fn tile(t: &Tile) {
    match t.rows {
        1 => rows::<1>(t),
        2 => rows::<2>(t),
        3 => rows::<3>(t),
        4 => rows::<4>(t),
        5 => rows::<5>(t),
        6 => rows::<6>(t),
        7 => rows::<7>(t),
        8 => rows::<8>(t),
        9 => rows::<9>(t),
        10 => rows::<10>(t),
        11 => rows::<11>(t),
        12 => rows::<12>(t),
        r => unreachable!("a VNNI tile has at most 12 rows, got {r}"),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows<const R: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    let groups = t.kp / 4;
    for g in 0..groups {
        let b0 = _mm512_loadu_si512(t.b.add(g * 4 * NR) as *const _);
        let b1 = _mm512_loadu_si512(t.b.add(g * 4 * NR + 64) as *const _);
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_epi32((t.a.add(r * t.lda + 4 * g) as *const i32).read_unaligned());
            acc[0] = _mm512_dpbusd_epi32(acc[0], a, b0);
            acc[1] = _mm512_dpbusd_epi32(acc[1], a, b1);
        }
    }
    // The epilogue reads the sums from memory: indexing `acc` by the run-time half there made
    // LLVM keep all 24 accumulators on the stack, storing each one every step (half the speed).
    let mut sums = [[0i32; NR]; R];
    for (s, acc) in sums.iter_mut().zip(&acc) {
        _mm512_storeu_si512(s.as_mut_ptr() as *mut _, acc[0]);
        _mm512_storeu_si512(s.as_mut_ptr().add(16) as *mut _, acc[1]);
    }
    for c0 in [0usize, 16] {
        if c0 >= t.cols {
            break;
        }
        let mask = lanes16(t.cols - c0);
        let colsum = _mm512_loadu_si512(t.colsum.add(c0) as *const _);
        let w_scales = _mm512_loadu_ps(t.w_scales.add(c0));
        let bias = if t.bias.is_null() {
            None
        } else {
            Some(_mm512_maskz_loadu_ps(mask, t.bias.add(c0)))
        };
        for (r, sum) in sums.iter().enumerate() {
            let zero = _mm512_set1_epi32(*t.a_zeros.add(r));
            let acc = _mm512_loadu_si512(sum.as_ptr().add(c0) as *const _);
            let v = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zero, colsum));
            let at = r * t.ldc + c0;
            if t.is_f32() {
                let scale = _mm512_mul_ps(_mm512_set1_ps(*t.a_scales.add(r)), w_scales);
                let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale);
                if let Some(b) = bias {
                    y = _mm512_add_ps(y, b);
                }
                _mm512_mask_storeu_ps(t.out_f32.add(at), mask, y);
            } else {
                _mm512_mask_storeu_epi32(t.out_i32.add(at), mask, v);
            }
        }
    }
}

/// [`super::quantize_row`] with AVX-512, to the same bits: min and max are exact, the products
/// are the same f32 products, and `vcvtps2dq` rounds half to even like the scalar `rint`.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    let n = x.len().min(out.len());
    let mask = |i: usize| lanes16(n - i);
    // Masked-off lanes load as 0, which the range always includes.
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..n).step_by(16) {
        let v = _mm512_maskz_loadu_ps(mask(i), x.as_ptr().add(i));
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
    }
    let (scale, inv, zero) = super::row_params(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
    let (vinv, vzero) = (_mm512_set1_ps(inv), _mm512_set1_epi32(zero));
    let (lim_lo, lim_hi) = (_mm512_set1_ps(-512.0), _mm512_set1_ps(512.0));
    let (q_lo, q_hi) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
    for i in (0..n).step_by(16) {
        let m = mask(i);
        let y = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), vinv);
        let y = _mm512_min_ps(_mm512_max_ps(y, lim_lo), lim_hi);
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(y), vzero);
        let q = _mm512_min_epi32(_mm512_max_epi32(q, q_lo), q_hi);
        _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i) as *mut _, m, q);
    }
    (scale, zero)
}
