//! Packing: copies a block of a strided operand into the contiguous, tile-padded layout the
//! micro-kernels stream through.
//!
//! One routine serves both operands. A `B` panel holds, for each `p < kc`, the `NR` values
//! `B[p0+p, j0..j0+NR]`; an `A` panel holds, for each `p`, the `MR` values `A[i0..i0+MR, p0+p]`,
//! which is the same thing for the view `Aᵀ`. Columns past the matrix edge are written as zeros
//! so the micro-kernel can always run a full tile (the padding lanes never reach `C`).

use super::driver::MicroKernel;
use super::kernel_generic::Generic;
use super::MatRef;
#[cfg(target_arch = "x86_64")]
use super::{kernel_avx2::Avx2, kernel_avx512::Avx512};

/// The `cs == 1` case of [`pack`], for the block at `base`; `W` is `width` known at compile
/// time, or 0 for any other width. The whole segments and a row's partial last one are copied in
/// separate loops: in one loop LLVM merges the constant-size copy with the variable one back into
/// a `memcpy` call per segment.
fn pack_rows<const W: usize>(
    src: &MatRef,
    base: usize,
    kc: usize,
    w: usize,
    width: usize,
    dst: &mut [f32],
) {
    debug_assert!(W == 0 || W == width);
    let panel = kc * width;
    let whole = w.checked_div(W).unwrap_or(0);
    for p in 0..kc {
        let row = &src.data[base + p * src.rs..][..w];
        let (head, tail) = row.split_at(whole * W);
        for (t, seg) in head.chunks_exact(W.max(1)).enumerate() {
            let out: &mut [f32; W] = (&mut dst[t * panel + p * width..][..W])
                .try_into()
                .expect("W-float segment");
            *out = seg.try_into().expect("W-float segment");
        }
        for (t, seg) in tail.chunks(width).enumerate() {
            dst[(whole + t) * panel + p * width..][..seg.len()].copy_from_slice(seg);
        }
    }
}

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
        // The kernels' tile sides, as constants: a whole segment then becomes a few vector
        // moves instead of a `memcpy` call of 56 or 128 bytes, whose call overhead was most of
        // the cost (7% of an LSTM step at H = 256, packing the gate gradients for dW).
        macro_rules! by_width {
            ($($k:ty),*) => {
                match width {
                    $(
                        x if x == <$k>::MR => pack_rows::<{ <$k>::MR }>(src, base, kc, w, width, dst),
                        x if x == <$k>::NR => pack_rows::<{ <$k>::NR }>(src, base, kc, w, width, dst),
                    )*
                    _ => pack_rows::<0>(src, base, kc, w, width, dst),
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        by_width!(Avx512, Avx2, Generic);
        #[cfg(not(target_arch = "x86_64"))]
        by_width!(Generic);
        return;
    }
    for (t, dst) in dst.chunks_exact_mut(panel).enumerate() {
        let jt = t * width;
        let wt = width.min(w - jt);
        let base = base + jt * src.cs;
        if src.rs == 1 {
            transpose(&src.data[base..], src.cs, kc, wt, width, dst, avx512);
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

/// `dst[p*width + j] = src[j*cs + p]` for `p < kc`, `j < wt`: `wt` contiguous columns of depth
/// `kc`, `cs` apart, written as `kc` rows of `width ≥ wt` (lanes `wt..width` are left as they
/// are). With `avx512` (the caller checked the CPU has it), 16 columns × 16 depths at a time
/// through a register transpose; else, with AVX, 8 × 8 at a time; otherwise all columns advance
/// `TRANSPOSE_STEP` depths together.
///
/// Panics if `src` holds fewer than `(wt-1)*cs + kc` floats or `dst` fewer than `kc*width`.
pub(crate) fn transpose(
    src: &[f32],
    cs: usize,
    kc: usize,
    wt: usize,
    width: usize,
    dst: &mut [f32],
    avx512: bool,
) {
    if kc == 0 || wt == 0 {
        return;
    }
    assert!(
        wt <= width && (wt - 1) * cs + kc <= src.len() && kc * width <= dst.len(),
        "transpose: {wt} columns of {kc} at stride {cs} from {} into rows of {width} in {}",
        src.len(),
        dst.len()
    );
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: the caller checked AVX-512; the assert above bounds the reads and writes.
        unsafe { super::kernel_avx512::transpose_panel(src, cs, kc, wt, width, dst) };
        return;
    }
    // A copy gives the same values on any path, so the AVX one serves every kernel but AVX-512's.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX; the assert above bounds the reads and writes.
        unsafe { super::kernel_avx2::transpose_panel(src, cs, kc, wt, width, dst) };
        return;
    }
    let _ = avx512;
    for pb in (0..kc).step_by(TRANSPOSE_STEP) {
        let len = TRANSPOSE_STEP.min(kc - pb);
        for j in 0..wt {
            let col = &src[j * cs + pb..][..len];
            for (q, &v) in col.iter().enumerate() {
                // SAFETY: pb+q < kc and j < wt <= width, so the index is < kc*width <= dst.len().
                unsafe { *dst.get_unchecked_mut((pb + q) * width + j) = v };
            }
        }
    }
}
