//! Packing: copies a block of a strided operand into the contiguous, tile-padded layout the
//! micro-kernels stream through.
//!
//! One routine serves both operands. A `B` panel holds, for each `p < kc`, the `NR` values
//! `B[p0+p, j0..j0+NR]`; an `A` panel holds, for each `p`, the `MR` values `A[i0..i0+MR, p0+p]`,
//! which is the same thing for the view `Aᵀ`. Columns past the matrix edge are written as zeros
//! so the micro-kernel can always run a full tile (the padding lanes never reach `C`).

use super::MatRef;

/// Packs `src[p0..p0+kc, j0..j0+w]` (`w <= width`) into `dst[p*width + j]`, zero-filling
/// `w <= j < width`. `dst.len()` must be at least `kc * width`.
///
/// The two fast paths cover every transpose combination a caller passes: `cs == 1` (the panel's
/// rows are contiguous: plain row copies) and `rs == 1` (its columns are contiguous: a streaming
/// read of each column, scattered at stride `width`).
pub(super) fn pack_panel(
    src: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    w: usize,
    width: usize,
    dst: &mut [f32],
) {
    assert!(
        w <= width && dst.len() >= kc * width,
        "pack_panel: destination too small"
    );
    debug_assert!(p0 + kc <= src.rows && j0 + w <= src.cols);
    let dst = &mut dst[..kc * width];
    if w == 0 || kc == 0 {
        dst.fill(0.0);
        return;
    }
    if w < width {
        // Only the padding lanes need zeroing, but zeroing all is one memset and simpler.
        dst.fill(0.0);
    }
    let base = p0 * src.rs + j0 * src.cs;
    if src.cs == 1 {
        for (p, row) in dst.chunks_exact_mut(width).enumerate() {
            let start = base + p * src.rs;
            row[..w].copy_from_slice(&src.data[start..start + w]);
        }
    } else if src.rs == 1 {
        for j in 0..w {
            let col = &src.data[base + j * src.cs..][..kc];
            for (p, &v) in col.iter().enumerate() {
                // SAFETY: p < kc and j < w <= width, so p*width + j < kc*width = dst.len().
                unsafe { *dst.get_unchecked_mut(p * width + j) = v };
            }
        }
    } else {
        for (p, row) in dst.chunks_exact_mut(width).enumerate() {
            for (j, out) in row[..w].iter_mut().enumerate() {
                // SAFETY: the view was validated by `gemm` (every (i, j) inside it indexes inside
                // `data`), and p0+p < rows, j0+j < cols.
                *out = unsafe { *src.data.get_unchecked(base + p * src.rs + j * src.cs) };
            }
        }
    }
}
