//! Matrix–vector products (`m == 1` or `n == 1`, e.g. one decoding step through a linear layer).
//!
//! The blocked path would compute a full `MR`-row tile for one row and pack all of `B` to use it
//! once: the packing alone costs as much as the product. Here each element of the matrix is read
//! exactly once, straight from its own layout, so the cost is the memory stream.
//!
//! Both cases are `y[j] ← α·Σ_p x[p]·M[p, j] + β·y[j]` with `M` a `k×len` view: for `m == 1`,
//! `x` is `A`'s row and `M = B`; for `n == 1`, `x` is `B`'s column and `M = Aᵀ`.

use super::driver::{apply_epilogue, CPtr, Problem, PARALLEL_MIN_MACS};
use super::MatRef;
use rayon::prelude::*;

/// Output columns per work unit: one unit's accumulators (1 KiB) stay in L1 while `k` rows of
/// `M` stream past.
const CHUNK: usize = 256;
/// Independent partial sums in a dot product, so the loop vectorizes without reassociation.
const LANES: usize = 16;

/// Whether `gemv` can take this problem: a vector on one side, and a matrix view that is
/// contiguous along one of its axes (anything else goes through packing). `k == 0` is left to
/// the driver: empty views are not bounds-checked, so their strides must not be used.
pub(super) fn applies(p: &Problem) -> bool {
    let (m, n, k) = (p.a.rows, p.b.cols, p.a.cols);
    let mat = if m == 1 { p.b } else { p.a.t() };
    (m == 1 || n == 1) && k > 0 && (mat.cs == 1 || mat.rs == 1)
}

/// # Safety
/// `applies(p)` must hold, and `c` must be `gemm`'s validated `C`.
pub(super) unsafe fn run(p: &Problem, c: &mut [f32], parallel: bool) {
    let (m, n, k) = (p.a.rows, p.b.cols, p.a.cols);
    // For m == 1 the outputs are C's row (stride 1); for n == 1 its column (stride ldc).
    let (x, mat, y_stride) = if m == 1 {
        (p.a.t(), p.b, 1)
    } else {
        (p.b, p.a.t(), p.ldc)
    };
    // x as a contiguous vector (k floats, copied once) so every inner loop is unit-stride.
    let x: Vec<f32> = (0..k).map(|i| x.at(i, 0)).collect();
    let len = mat.cols;
    let y = CPtr(c.as_mut_ptr());
    let unit = |u: usize| {
        let y = &y; // the whole Send/Sync wrapper, not just its raw-pointer field
        let j0 = u * CHUNK;
        let w = CHUNK.min(len - j0);
        let mut acc = [0.0f32; CHUNK];
        if mat.cs == 1 {
            axpy_rows(&x, &mat, j0, &mut acc[..w]);
        } else {
            for (j, out) in acc[..w].iter_mut().enumerate() {
                let col = &mat.data[(j0 + j) * mat.cs..][..k];
                *out = dot(&x, col);
            }
        }
        for (j, &v) in acc[..w].iter().enumerate() {
            // SAFETY: output j0+j < len lies in C (validated by `gemm`); units own disjoint j.
            let out = unsafe { &mut *y.0.add((j0 + j) * y_stride) };
            let old = if p.beta == 0.0 { 0.0 } else { p.beta * *out };
            *out = p.alpha * v + old;
            // The bias is per output column: column j for a row vector, column 0 for n == 1.
            let bias_col = if m == 1 { j0 + j } else { 0 };
            apply_epilogue(&p.epilogue, std::slice::from_mut(out), bias_col);
        }
    };
    let units = len.div_ceil(CHUNK);
    if parallel && units > 1 && m * n * k >= PARALLEL_MIN_MACS {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
}

/// `acc[j] += Σ_p x[p]·M[p, j0 + j]` for a matrix with contiguous rows.
fn axpy_rows(x: &[f32], mat: &MatRef, j0: usize, acc: &mut [f32]) {
    for (p, &xp) in x.iter().enumerate() {
        let row = &mat.data[p * mat.rs + j0..][..acc.len()];
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += xp * v;
        }
    }
}

fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for ((a, &u), &v) in acc.iter_mut().zip(xs).zip(ys) {
            *a += u * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}
