//! Matrix–vector products (`m == 1` or `n == 1`, e.g. one decoding step through a linear layer),
//! and skinny products with a few rows (`m ≤ SKINNY_ROWS`: a few beams or sentences per step).
//!
//! The blocked path would compute a full `MR`-row tile for one row and pack all of `B` to use it
//! once: the packing alone costs as much as the product. Here each element of the matrix is read
//! exactly once, straight from its own layout, so the cost is the memory stream.
//!
//! Every case is `y_i[j] ← α·Σ_p x_i[p]·M[p, j] + β·y_i[j]` with `M` a `k×len` view: for rows
//! of `A` (`m ≤ SKINNY_ROWS`), `x_i` is `A`'s row `i` and `M = B`; for `n == 1`, `x_0` is `B`'s
//! column and `M = Aᵀ`. Each `y_i[j]` is summed in the same order whatever the number of rows,
//! so a row's result does not depend on which other rows share the call.

use super::driver::{apply_epilogue, CPtr, Problem, PARALLEL_MIN_MACS};
use crate::cpu::simd::simd_kernel;
use rayon::prelude::*;

/// Output columns per work unit: one unit's accumulators (1 KiB) stay in L1 while `k` rows of
/// `M` stream past.
const CHUNK: usize = 256;
/// Independent partial sums in a dot product, so the loop vectorizes without reassociation.
const LANES: usize = 16;
/// Up to this many rows, reading `B` in place beats packing it (measured on an 8000×256 `B`, the
/// output layer of a decoding step: 2 rows 0.8 ms against 1.6 ms packed, 4 rows 1.1 ms against
/// 1.6 ms; from 8 rows packing wins).
pub(super) const SKINNY_ROWS: usize = 4;

/// Whether `gemv` can take this problem: few rows or a single column, and a matrix view that
/// is contiguous along one of its axes (anything else goes through packing). `k == 0` is left
/// to the driver: empty views are not bounds-checked, so their strides must not be used.
pub(super) fn applies(p: &Problem) -> bool {
    let (m, n, k) = (p.a.rows, p.b.cols, p.a.cols);
    let rows_form = m <= SKINNY_ROWS && (m == 1 || n > 1);
    let mat = if rows_form { p.b } else { p.a.t() };
    (rows_form || n == 1) && k > 0 && (mat.cs == 1 || mat.rs == 1)
}

/// # Safety
/// `applies(p)` must hold, and `c` must be `gemm`'s validated `C`.
pub(super) unsafe fn run(p: &Problem, c: &mut [f32], parallel: bool) {
    let (m, n, k) = (p.a.rows, p.b.cols, p.a.cols);
    let rows_form = m <= SKINNY_ROWS && (m == 1 || n > 1);
    // Outputs: y_i[j] at C[i, j] (rows form) or C[j, 0] (column form).
    let (vectors, mat, y_row, y_col) = if rows_form {
        (p.a.t(), p.b, p.ldc, 1)
    } else {
        (p.b, p.a.t(), 0, p.ldc)
    };
    // The x_i as contiguous vectors (copied once) so every inner loop is unit-stride.
    let r = vectors.cols;
    let xs: Vec<f32> = (0..r)
        .flat_map(|i| (0..k).map(move |q| vectors.at(q, i)))
        .collect();
    let len = mat.cols;
    let y = CPtr(c.as_mut_ptr());
    let unit = |u: usize| {
        let y = &y; // the whole Send/Sync wrapper, not just its raw-pointer field
        let j0 = u * CHUNK;
        let w = CHUNK.min(len - j0);
        let mut buf = [0.0f32; SKINNY_ROWS * CHUNK];
        let vals = &mut buf[..r * w];
        if mat.cs == 1 {
            axpy_columns(&xs, k, mat.data, mat.rs, j0, vals);
        } else {
            dot_columns(&xs, k, mat.data, mat.cs, j0, vals);
        }
        for (i, row) in vals.chunks_exact(w).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                // SAFETY: output (i, j0+j) lies in C (validated by `gemm`); units own disjoint j.
                let out = unsafe { &mut *y.0.add(i * y_row + (j0 + j) * y_col) };
                let old = if p.beta == 0.0 { 0.0 } else { p.beta * *out };
                *out = p.alpha * v + old;
                // The bias is per output column: column j in the rows form, column 0 for n == 1.
                let bias_col = if rows_form { j0 + j } else { 0 };
                apply_epilogue(&p.epilogue, std::slice::from_mut(out), bias_col);
            }
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
