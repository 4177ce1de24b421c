//! Packing: copies a block of a strided operand into the contiguous, tile-padded layout the
//! micro-kernels stream through.
//!
//! One routine serves both operands. A `B` panel holds, for each `p < kc`, the `NR` values
//! `B[p0+p, j0..j0+NR]`; an `A` panel holds, for each `p`, the `MR` values `A[i0..i0+MR, p0+p]`,
//! which is the same thing for the view `Aᵀ`. Columns past the matrix edge are written as zeros
//! so the micro-kernel can always run a full tile (the padding lanes never reach `C`).

use super::MatRef;

/// Depth of one transposing step: all `width` columns advance together by this many elements, so
/// their reads stream side by side and the written block (`16×width` floats) stays in L1.
const TRANSPOSE_STEP: usize = 16;

/// Packs `src[p0..p0+kc, j0..j0+w]` into `ceil(w / width)` consecutive panels of `kc*width`
/// floats, panel `t` holding `dst[t*kc*width + p*width + j] = src[p0+p, j0+t*width+j]` and zeros
/// past column `w`. `dst.len()` must be exactly `ceil(w / width) * kc * width`.
///
/// The fast paths cover every transpose combination a caller passes:
/// - `cs == 1` (rows contiguous): walk whole rows across all panels. Going panel by panel instead
///   would read 128 bytes from each of `kc` rows a page apart, which the hardware prefetcher
///   cannot follow; that made packing 2048×2048 `B` ~3× slower than its memory stream.
/// - `rs == 1` (columns contiguous): per panel, stream each column and scatter it at stride
///   `width` (the panel, `kc*width*4` bytes, stays in L1 meanwhile); with `avx512` (the caller's
///   kernel runs on AVX-512), 16 columns × 16 depths at a time through a register transpose,
///   which makes this path (a row-major `A`, or `Bᵀ` of a linear layer) ~3× faster.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack(
    src: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    w: usize,
    width: usize,
    dst: &mut [f32],
    avx512: bool,
) {
    let panel = kc * width;
    assert_eq!(
        dst.len(),
        w.div_ceil(width) * panel,
        "pack: destination size"
    );
    debug_assert!(p0 + kc <= src.rows && j0 + w <= src.cols);
    if w == 0 || kc == 0 {
        return;
    }
    if !w.is_multiple_of(width) {
        // Only the last panel's padding lanes need zeroing; zeroing that panel is one memset.
        let last = dst.len() - panel;
        dst[last..].fill(0.0);
    }
    let base = p0 * src.rs + j0 * src.cs;
    if src.cs == 1 {
        for p in 0..kc {
            let row = &src.data[base + p * src.rs..][..w];
            for (t, seg) in row.chunks(width).enumerate() {
                dst[t * panel + p * width..][..seg.len()].copy_from_slice(seg);
            }
        }
        return;
    }
    for (t, dst) in dst.chunks_exact_mut(panel).enumerate() {
        let jt = t * width;
        let wt = width.min(w - jt);
        let base = base + jt * src.cs;
        #[cfg(target_arch = "x86_64")]
        if src.rs == 1 && avx512 {
            // SAFETY: the caller's kernel runs on AVX-512, so the CPU has it; every column
            // j < wt of the view holds kc elements from `base` at stride 1 (validated view), and
            // `dst` is this panel, kc rows of `width`.
            unsafe {
                super::kernel_avx512::transpose_panel(&src.data[base..], src.cs, kc, wt, width, dst)
            };
            continue;
        }
        if src.rs == 1 {
            for pb in (0..kc).step_by(TRANSPOSE_STEP) {
                let len = TRANSPOSE_STEP.min(kc - pb);
                for j in 0..wt {
                    let col = &src.data[base + j * src.cs + pb..][..len];
                    for (q, &v) in col.iter().enumerate() {
                        // SAFETY: pb+q < kc and j < wt <= width, so the index is < dst.len().
                        unsafe { *dst.get_unchecked_mut((pb + q) * width + j) = v };
                    }
                }
            }
        } else {
            for (p, row) in dst.chunks_exact_mut(width).enumerate() {
                for (j, out) in row[..wt].iter_mut().enumerate() {
                    // SAFETY: the view was validated by `gemm` (every (i, j) inside it indexes
                    // inside `data`), and p0+p < rows, j0+jt+j < cols.
                    *out = unsafe { *src.data.get_unchecked(base + p * src.rs + j * src.cs) };
                }
            }
        }
    }
}
