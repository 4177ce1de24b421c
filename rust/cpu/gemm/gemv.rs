//! Matrix–vector products with one output column (`n == 1`): `y[j] ← α·Σ_p x[p]·M[p, j] + β·y[j]`
//! with `x` `B`'s column and `M = Aᵀ`, each element of `A` read once, straight from its own
//! layout. Each output is one row of `C`, summed in the same order whatever `m` is.
//!
//! Products with few rows (`m == 1`, a few beams) do not come here: their rows must get the same
//! bits as in a taller product, so they take the blocked kernels' arithmetic (driver.rs,
//! `run_few_rows`).

use super::driver::{apply_epilogue, Problem, PARALLEL_MIN_MACS};
use crate::cpu::pool::SendPtr;
use crate::cpu::simd::simd_kernel;
use rayon::prelude::*;

/// Output columns per work unit: one unit's accumulators (1 KiB) stay in L1 while `k` rows of
/// `M` stream past.
const CHUNK: usize = 256;
/// Independent partial sums in a dot product, so the loop vectorizes without reassociation.
const LANES: usize = 16;
/// Whether `gemv` can take this problem: a single column, and `A` contiguous along one of its
/// axes (anything else goes through packing). `k == 0` is left to the driver: empty views are
/// not bounds-checked, so their strides must not be used.
pub(super) fn applies(p: &Problem) -> bool {
    let mat = p.a.t();
    p.b.cols == 1 && p.a.cols > 0 && (mat.cs == 1 || mat.rs == 1)
}

/// # Safety
/// `applies(p)` must hold, and `c` must be `gemm`'s validated `C`.
pub(super) unsafe fn run(p: &Problem, c: &mut [f32], parallel: bool) {
    let (m, n, k) = (p.a.rows, p.b.cols, p.a.cols);
    let mat = p.a.t();
    // x as a contiguous vector (copied once) so every inner loop is unit-stride.
    let xs: Vec<f32> = (0..k).map(|q| p.b.at(q, 0)).collect();
    let len = mat.cols;
    let y = SendPtr(c.as_mut_ptr());
    let unit = |u: usize| {
        let y = &y; // the whole Send/Sync wrapper, not just its raw-pointer field
        let j0 = u * CHUNK;
        let w = CHUNK.min(len - j0);
        let mut buf = [0.0f32; CHUNK];
        let vals = &mut buf[..w];
        if mat.cs == 1 {
            axpy_columns(&xs, k, mat.data, mat.rs, j0, vals);
        } else {
            dot_columns(&xs, k, mat.data, mat.cs, j0, vals);
        }
        for (j, &v) in vals.iter().enumerate() {
            // SAFETY: output (j0+j, 0) lies in C (validated by `gemm`); units own disjoint j.
            let out = unsafe { &mut *y.at((j0 + j) * p.ldc) };
            let old = if p.beta == 0.0 { 0.0 } else { p.beta * *out };
            *out = p.alpha * v + old;
            // The bias has one value, for C's only column.
            apply_epilogue(&p.epilogue, std::slice::from_mut(out), 0);
        }
    };
    let units = len.div_ceil(CHUNK);
    if parallel && units > 1 && m * n * k >= PARALLEL_MIN_MACS {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
}

simd_kernel! {
    /// `out[i·w + j] = Σ_p xs[i·k + p]·M[p, j0 + j]` for a matrix with contiguous rows
    /// (`M[p, j] = data[p·rs + j]`), `w = out.len() / (xs.len() / k)`.
    fn axpy_columns(xs: &[f32], k: usize, data: &[f32], rs: usize, j0: usize, out: &mut [f32]) {
        let w = out.len() / (xs.len() / k);
        for (x, acc) in xs.chunks_exact(k).zip(out.chunks_exact_mut(w)) {
            acc.fill(0.0);
            for (q, &xq) in x.iter().enumerate() {
                let row = &data[q * rs + j0..][..w];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += xq * v;
                }
            }
        }
    }
}

simd_kernel! {
    /// `out[i·w + j] = Σ_p xs[i·k + p]·M[p, j0 + j]` for a matrix with contiguous columns
    /// (`M[p, j] = data[j·cs + p]`). Row by row: the unit's columns stay in L2 for the next.
    fn dot_columns(xs: &[f32], k: usize, data: &[f32], cs: usize, j0: usize, out: &mut [f32]) {
        let w = out.len() / (xs.len() / k);
        for (x, row) in xs.chunks_exact(k).zip(out.chunks_exact_mut(w)) {
            for (j, o) in row.iter_mut().enumerate() {
                *o = dot(x, &data[(j0 + j) * cs..][..k]);
            }
        }
    }
}

/// `Σ x·y` in [`LANES`] partial sums, so the loop vectorizes without reassociation.
#[inline(always)]
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let mut tail = 0.0f32;
    for (u, v) in xc.remainder().iter().zip(yc.remainder()) {
        tail += u * v;
    }
    for (xs, ys) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] += xs[l] * ys[l];
        }
    }
    let mut total = 0.0f32;
    for &v in &acc {
        total += v;
    }
    total + tail
}
