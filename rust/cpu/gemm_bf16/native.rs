//! The AVX-512 BF16 path: operands packed as bf16 pairs along `k`, a 14×32 `vdpbf16ps`
//! micro-kernel accumulating in f32.
//!
//! `vdpbf16ps acc, a, b` adds `a[2i]·b[2i] + a[2i+1]·b[2i+1]` to f32 lane `i`. So a packed `B`
//! panel holds, for each pair of depths `(2q, 2q+1)`, 32 dwords (one per column, the even depth
//! in the low half), and a packed `A` panel holds 14 such dwords (one per row), each broadcast
//! to a whole zmm. One k-pair step is then 2 loads of `B`, 14 broadcasts of `A` and 28
//! `vdpbf16ps`: the f32 kernel's shape (`gemm/kernel_avx512.rs`) covering two depths per step.
//!
//! Blocking: all of `B` is packed up front by every thread together (half the bytes of f32),
//! in `KC`-deep slices of `NR`-wide panels, so each panel of a slice (32 KiB) stays in L1 while
//! the `MC×KC` block of `A` (172 KiB) streams from L2. Work items are (row block, run of column
//! panels), shared out with rayon; each packs its own `A` block. Every element is summed over
//! the same pairs and slices in the same order whatever the threading.

use super::bf16_bits;
use crate::cpu::gemm::{apply_epilogue, transpose16, Epilogue, MatRef};
use crate::cpu::pool::{self, SendPtr};
use crate::cpu::simd::lanes16 as lanes;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::Cell;

const MR: usize = 14;
const NR: usize = 32;
/// Depth of one slice (even). A `B` panel of a slice is `KC/2 × NR` dwords = 32 KiB.
const KC: usize = 512;
/// Rows of a work item's `A` block.
const MC: usize = MR * 12;
/// Below this many multiply-adds a call stays on one thread (as the f32 GEMM's threshold).
const PARALLEL_MIN_MACS: usize = 128 * 128 * 128;

thread_local! {
    static PACK_A: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a buffer of at least `len` dwords borrowed from a thread-local (moved out, so a
/// nested call on this thread in a rayon join allocates its own rather than aliasing).
pub(super) fn with_buffer<R>(
    key: &'static std::thread::LocalKey<Cell<Vec<u32>>>,
    len: usize,
    f: impl FnOnce(&mut [u32]) -> R,
) -> R {
    let mut vec = key.take();
    if vec.len() < len {
        vec.resize(len, 0);
    }
    let r = f(&mut vec[..len]);
    key.set(vec);
    r
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

/// The word permutation that interleaves two 16-word halves: word `2i` from word `i`, word
/// `2i + 1` from word `16 + i`.
#[target_feature(enable = "avx512f")]
#[inline]
fn interleave_index() -> __m512i {
    let idx: [u16; 32] = std::array::from_fn(|w| (w / 2 + 16 * (w % 2)) as u16);
    // SAFETY: 64 bytes read from a 64-byte array.
    unsafe { _mm512_loadu_si512(idx.as_ptr() as *const _) }
}

/// [`pair`] on 16 lanes, rounding in hardware (`vcvtne2ps2bf16`: to nearest even, as
/// `bf16_bits`, except that f32 subnormals become 0 and a NaN keeps fewer payload bits; the
/// kernels' `vdpbf16ps` reads bf16 subnormals as 0 anyway, so the products are the same). One
/// conversion gives `lo`'s 16 halves then `hi`'s; a word permutation interleaves them.
#[inline(always)]
unsafe fn pairs(lo: __m512, hi: __m512, interleave: __m512i) -> __m512i {
    // SAFETY: the caller runs with AVX-512 F, BW and BF16.
    unsafe {
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_permutexvar_epi16(interleave, both)
    }
}

/// Packs `src[p0..p0+kc, j0..j0+w]` as bf16 pairs into `ceil(w/width)` panels of
/// `depth·width` dwords (`depth ≥ ceil(kc/2)` pairs): `dst[t·depth·width + q·width + j]` holds
/// rows `p0+2q` (low half) and `p0+2q+1` (high half; 0 past `kc`) of column `j0 + t·width + j`,
/// and zeros past column `w` and past pair `ceil(kc/2)`. Fast loops for rows contiguous
/// (`cs == 1`) and columns contiguous (`rs == 1`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_pairs(
    src: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    w: usize,
    width: usize,
    depth: usize,
    dst: &mut [u32],
) {
    let kp = kc.div_ceil(2);
    let panel = depth * width;
    assert!(depth >= kp, "pack_pairs: depth {depth} < {kp} pairs");
    assert_eq!(dst.len(), w.div_ceil(width) * panel, "pack_pairs: size");
    if !w.is_multiple_of(width) {
        let last = dst.len() - panel;
        dst[last..].fill(0);
    }
    if depth > kp {
        for d in dst.chunks_exact_mut(panel) {
            d[kp * width..].fill(0);
        }
    }
    let (data, rs, cs) = (src.data, src.rs, src.cs);
    let base = p0 * rs + j0 * cs;
    if cs == 1 {
        let interleave = interleave_index();
        for q in 0..kp {
            let r0 = &data[base + 2 * q * rs..][..w];
            let r1 = (2 * q + 1 < kc).then(|| &data[base + (2 * q + 1) * rs..][..w]);
            for (t, d) in dst.chunks_exact_mut(panel).enumerate() {
                let jt = t * width;
                let wt = width.min(w - jt);
                let d = &mut d[q * width..][..wt];
                for c in (0..wt).step_by(16) {
                    let m = lanes(wt - c);
                    // SAFETY: the masked lanes lie inside `r0`, `r1` and `d` (lengths ≥ wt).
                    unsafe {
                        let lo = _mm512_maskz_loadu_ps(m, r0[jt + c..].as_ptr());
                        let hi = match r1 {
                            Some(r1) => _mm512_maskz_loadu_ps(m, r1[jt + c..].as_ptr()),
                            None => _mm512_setzero_ps(),
                        };
                        let v = pairs(lo, hi, interleave);
                        _mm512_mask_storeu_epi32(d[c..].as_mut_ptr() as *mut _, m, v);
                    }
                }
            }
        }
        return;
    }
    if rs == 1 {
        // Each column's depths are contiguous: 16 columns × 32 depths are rounded into 16
        // registers of 16 pairs (one instruction per column), and a 16×16 dword transpose turns
        // them into 16 rows of the panel.
        for (t, d) in dst.chunks_exact_mut(panel).enumerate() {
            let jt = t * width;
            let wt = width.min(w - jt);
            for jg in (0..wt).step_by(16) {
                let nj = 16.min(wt - jg);
                for q0 in (0..kp).step_by(16) {
                    let at = 2 * q0;
                    let mut cols = [_mm512_setzero_ps(); 16];
                    for (j, v) in cols.iter_mut().enumerate().take(nj) {
                        let col = &data[base + (jt + jg + j) * cs..][..kc];
                        // SAFETY: the masked lanes lie inside `col` (kc floats).
                        *v = unsafe {
                            let lo = _mm512_maskz_loadu_ps(lanes(kc - at), col[at..].as_ptr());
                            let hi = _mm512_maskz_loadu_ps(
                                lanes(kc.saturating_sub(at + 16)),
                                col[(at + 16).min(kc)..].as_ptr(),
                            );
                            std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(hi, lo))
                        };
                    }
                    for (q, row) in transpose16(cols).iter().enumerate().take(kp - q0) {
                        let d = &mut d[(q0 + q) * width + jg..][..nj];
                        // SAFETY: the masked lanes lie inside `d`.
                        unsafe {
                            _mm512_mask_storeu_ps(d.as_mut_ptr() as *mut f32, lanes(nj), *row)
                        };
                    }
                }
            }
        }
        return;
    }
    for (t, d) in dst.chunks_exact_mut(panel).enumerate() {
        let jt = t * width;
        for j in 0..width.min(w - jt) {
            let col = base + (jt + j) * cs;
            for q in 0..kp {
                let hi = if 2 * q + 1 < kc {
                    data[col + (2 * q + 1) * rs]
                } else {
                    0.0
                };
                d[q * width + j] = pair(data[col + 2 * q * rs], hi);
            }
        }
    }
}

/// `C[0..mr, 0..nr] ← α·Σ_q A·B + β·C` (β = 0: `C` not read) over `kp` packed pairs.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 present; `a` readable for `kp·MR` dwords, `b` for `kp·NR`; the
/// `mr × nr` tile at `c` (stride `ldc`) writable, and readable when `β != 0`; `mr ≤ MR`,
/// `nr ≤ NR`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    (mr, nr): (usize, usize),
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY (whole body): the caller's contract above.
    unsafe {
        // The output is usually not in cache (a fresh activation): ask for its lines now, so
        // the stores after the loop do not each wait for memory.
        for r in 0..mr {
            let row = c.add(r * ldc);
            _mm_prefetch::<_MM_HINT_ET0>(row as *const i8);
            _mm_prefetch::<_MM_HINT_ET0>(row.add(nr - 1) as *const i8);
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kp {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(NR * 8) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(NR * 8 + 16) as *const i8);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const __m512i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        // The epilogue reads the sums from memory: borrowing `acc` there (run-time row count)
        // made LLVM keep the accumulators in a stack array, zeroed by a `memset` call and
        // reloaded around the loop on every tile.
        let mut sums = [[0.0f32; NR]; MR];
        for (s, acc) in sums.iter_mut().zip(&acc) {
            _mm512_storeu_ps(s.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(s.as_mut_ptr().add(16), acc[1]);
        }
        let alpha = _mm512_set1_ps(alpha);
        let beta_v = _mm512_set1_ps(beta);
        for c0 in [0usize, 16] {
            if c0 >= nr {
                break;
            }
            let mask = lanes(nr - c0);
            for (r, sum) in sums.iter().enumerate().take(mr) {
                let p = c.add(r * ldc + c0);
                let acc = _mm512_loadu_ps(sum.as_ptr().add(c0));
                let v = if beta == 0.0 {
                    _mm512_mul_ps(acc, alpha)
                } else {
                    let old = _mm512_maskz_loadu_ps(mask, p);
                    _mm512_fmadd_ps(acc, alpha, _mm512_mul_ps(old, beta_v))
                };
                _mm512_mask_storeu_ps(p, mask, v);
            }
        }
    }
}

/// The product on this path; the caller has checked that the CPU has AVX-512 BF16 and the
/// views and `c` (`super::validate`), and that no dimension is 0.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let threads = if parallel && m * n * k >= PARALLEL_MIN_MACS {
        pool::threads().max(1)
    } else {
        1
    };
    // Equal even slices (k = 600 → 2×300, not 512 + 88: every slice re-reads C).
    let kc_max = k.div_ceil(k.div_ceil(KC)).next_multiple_of(2);
    let panels = n.div_ceil(NR);
    let kp_all = k.div_ceil(2);
    // The packing and the products enter the thread pool once, together.
    pool::parallel_if(threads > 1, || {
        with_buffer(&PACK_B, panels * NR * kp_all, |packed_b| {
            pack_b(&b, kc_max, panels, packed_b, threads);
            let packed_b = &*packed_b;
            // Row blocks, then runs of panels until there is work for every thread.
            let mc = MC.min(m.div_ceil(MR) * MR);
            let row_blocks = m.div_ceil(mc);
            let groups = (2 * threads).div_ceil(row_blocks).clamp(1, panels);
            let run = panels.div_ceil(groups);
            let items = row_blocks * panels.div_ceil(run);
            let c_ptr = SendPtr(c.as_mut_ptr());
            let a_t = a.t();
            let work = |item: usize| {
                let (ib, g) = (item % row_blocks, item / row_blocks);
                let ic = ib * mc;
                let rows = mc.min(m - ic);
                let (t0, t1) = (g * run, ((g + 1) * run).min(panels));
                let row_panels = rows.div_ceil(MR);
                with_buffer(&PACK_A, row_panels * MR * kc_max.div_ceil(2), |a_buf| {
                    for pc in (0..k).step_by(kc_max) {
                        let kc = kc_max.min(k - pc);
                        let kp = kc.div_ceil(2);
                        let a_pack = &mut a_buf[..row_panels * MR * kp];
                        // SAFETY: the caller checked AVX-512 (BF16 implies F/BW/VL on every CPU
                        // that has it).
                        unsafe { pack_pairs(&a_t, pc, kc, ic, rows, MR, kp, a_pack) };
                        let slice = &packed_b[panels * NR * (pc / 2)..];
                        let step_beta = if pc == 0 { beta } else { 1.0 };
                        for t in t0..t1 {
                            let bp = &slice[t * NR * kp..][..NR * kp];
                            let nr = NR.min(n - t * NR);
                            for (r, ap) in a_pack.chunks_exact(MR * kp).enumerate() {
                                let mr = MR.min(rows - r * MR);
                                // SAFETY: the panels hold kp pairs; the tile lies inside the
                                // validated C and belongs to this item alone.
                                unsafe {
                                    tile(
                                        kp,
                                        ap.as_ptr(),
                                        bp.as_ptr(),
                                        c_ptr.at((ic + r * MR) * ldc + t * NR),
                                        ldc,
                                        (mr, nr),
                                        alpha,
                                        step_beta,
                                    )
                                };
                            }
                        }
                    }
                });
                if epilogue.bias.is_some() || epilogue.activation != Default::default() {
                    let (j0, j1) = (t0 * NR, (t1 * NR).min(n));
                    for i in ic..ic + rows {
                        // SAFETY: row i, columns j0..j1 belong to this item and lie inside `c`.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(c_ptr.at(i * ldc + j0), j1 - j0)
                        };
                        apply_epilogue(epilogue, row, j0);
                    }
                }
            };
            if threads > 1 {
                (0..items).into_par_iter().for_each(work);
            } else {
                (0..items).for_each(work);
            }
        })
    });
}

/// Packs all of `b` in `kc_max`-deep slices of `panels` panels (slice at `pc` starts at dword
/// `panels·NR·pc/2`), the threads sharing the panels of each slice.
fn pack_b(b: &MatRef, kc_max: usize, panels: usize, dst: &mut [u32], threads: usize) {
    let k = b.rows;
    for pc in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - pc);
        let kp = kc.div_ceil(2);
        let slice = &mut dst[panels * NR * (pc / 2)..][..panels * NR * kp];
        let group = panels.div_ceil(threads);
        let pack_group = |(g, d): (usize, &mut [u32])| {
            let j0 = g * group * NR;
            let w = (group * NR).min(b.cols - j0);
            // SAFETY: the caller checked AVX-512.
            unsafe { pack_pairs(b, pc, kc, j0, w, NR, kp, d) };
        };
        if threads > 1 {
            slice
                .par_chunks_mut(group * NR * kp)
                .enumerate()
                .for_each(pack_group);
        } else {
            pack_group((0, slice));
        }
    }
}
