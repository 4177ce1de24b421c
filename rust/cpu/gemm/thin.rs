//! Tiles of one or two rows over several `B` panels at once (a decoding step's product for one
//! or two sequences): one panel of so few rows is too few independent FMA chains, so these cover
//! [`panels_per_tile`] panels, computed in exactly the micro-kernel's arithmetic so that a row of
//! `C` gets the same bits whether it was computed here or in a taller tile.
//!
//! What "the same arithmetic" is, per element: a single accumulator starting at 0, updated
//! `acc ← a_p·b_p + acc` for `p` ascending, with one rounding (FMA) on the AVX2 and AVX-512
//! kernels and two (multiply, then add) on the portable one; then `α·acc` when `β == 0`, else
//! `α·acc + β·c` (the AVX kernels fuse the `α` multiply into that add). `tests.rs` checks each
//! tile here against its micro-kernel bit for bit.

use super::driver::MicroKernel;

/// How many consecutive `B` panels one tile of `rows` rows should cover: each element is one
/// sequential FMA chain, so a single row of one panel (2 chains) waits on the FMA latency; four
/// panels give it 8 independent chains. From three rows on, one panel (the micro-kernel's own
/// `rows`-row tile) has enough.
pub(super) fn panels_per_tile(rows: usize) -> usize {
    match rows {
        1 => 4,
        2 => 2,
        _ => 1,
    }
}

/// The first `rows` rows (1 or 2) of `K::tile` (same contract, same bits) for the
/// [`panels_per_tile`] consecutive `B` panels: `b` holds them one after the other (`k·K::NR`
/// floats each) and `c` has that many `K::NR` columns.
///
/// # Safety
/// As `K::tile`: `a` holds `k·K::MR` floats (only the first `rows` of each `MR` are read), `b`
/// `panels·k·K::NR`, and `rows × panels·K::NR` elements of `c` at stride `ldc` are writable (and
/// readable when `β != 0`); the CPU has the kernel's features.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_panels<K: MicroKernel>(
    rows: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    let panels = panels_per_tile(rows);
    debug_assert!(panels > 1 && rows < K::MR);
    // SAFETY: the caller's contract covers these slices.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, k * K::MR),
            std::slice::from_raw_parts(b, panels * k * K::NR),
        )
    };
    let t = Thin {
        k,
        a,
        mr: K::MR,
        b,
        c,
        ldc,
        alpha,
        beta,
    };
    macro_rules! by_rows {
        ($f:ident, $nr:literal) => {
            // SAFETY (every arm): `$f` needs the features of the kernel it mirrors, which the
            // caller guarantees.
            match rows {
                1 => unsafe { $f::<1, 4, $nr>(&t) },
                _ => unsafe { $f::<2, 2, $nr>(&t) },
            }
        };
    }
    match (K::FUSED, K::AVX512, K::NR) {
        #[cfg(target_arch = "x86_64")]
        (true, true, 32) => by_rows!(fused_avx512, 32),
        #[cfg(target_arch = "x86_64")]
        (true, false, 16) => by_rows!(fused_avx2, 16),
        (false, false, 16) => by_rows!(unfused, 16),
        other => unreachable!("no thin tile for a kernel with (FUSED, AVX512, NR) = {other:?}"),
    }
}

/// One thin tile's operands (see [`tile_panels`]).
struct Thin<'a> {
    k: usize,
    a: &'a [f32],
    mr: usize,
    b: &'a [f32],
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
}

/// The portable kernel's arithmetic: multiply, then add (two roundings).
unsafe fn unfused<const R: usize, const P: usize, const NR: usize>(t: &Thin) {
    let mut acc = [[[0.0f32; NR]; R]; P];
    for (q, acc) in acc.iter_mut().enumerate() {
        let b = &t.b[q * t.k * NR..][..t.k * NR];
        for (ap, bp) in t.a.chunks_exact(t.mr).zip(b.chunks_exact(NR)) {
            for (acc, &av) in acc.iter_mut().zip(ap) {
                for (x, &bv) in acc.iter_mut().zip(bp) {
                    *x += av * bv;
                }
            }
        }
    }
    for (q, acc) in acc.iter().enumerate() {
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees row r < rows of the tile at stride ldc, P·NR wide.
            let row = unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.ldc + q * NR), NR) };
            for (out, &x) in row.iter_mut().zip(acc) {
                *out = if t.beta == 0.0 {
                    t.alpha * x
                } else {
                    t.alpha * x + t.beta * *out
                };
            }
        }
    }
}

/// The AVX kernels' arithmetic, `R` rows × `P` panels of two vectors of `NR / 2` lanes: written
/// with intrinsics because LLVM leaves the equivalent scalar `mul_add` loops unvectorized.
#[cfg(target_arch = "x86_64")]
macro_rules! fused_rows {
    ($name:ident, $features:literal, $v:ty, $lanes:literal, $zero:ident, $set1:ident, $load:ident,
     $store:ident, $fmadd:ident, $mul:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize, const P: usize, const NR: usize>(t: &Thin) {
            use std::arch::x86_64::*;
            const { assert!(NR == 2 * $lanes) };
            let mut acc: [[[$v; 2]; R]; P] = [[[$zero(); 2]; R]; P];
            // SAFETY (whole body): `tile_panels` checked the operand lengths; the caller
            // guarantees the output rows.
            unsafe {
                let (mut a, mut b) = (t.a.as_ptr(), t.b.as_ptr());
                let panel = t.k * NR;
                for _ in 0..t.k {
                    for (q, acc) in acc.iter_mut().enumerate() {
                        // As the full kernels: B streams from L2 (see kernel_avx512.rs).
                        let steps = super::kernel_avx512::B_PREFETCH_STEPS;
                        let ahead = b.wrapping_add(q * panel + NR * steps);
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add($lanes) as *const i8);
                        let b0 = $load(b.add(q * panel));
                        let b1 = $load(b.add(q * panel + $lanes));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let av = $set1(*a.add(r));
                            acc[0] = $fmadd(av, b0, acc[0]);
                            acc[1] = $fmadd(av, b1, acc[1]);
                        }
                    }
                    a = a.add(t.mr);
                    b = b.add(NR);
                }
                let alpha = $set1(t.alpha);
                for (q, acc) in acc.iter().enumerate() {
                    for (r, acc) in acc.iter().enumerate() {
                        let cr = t.c.add(r * t.ldc + q * NR);
                        if t.beta == 0.0 {
                            $store(cr, $mul(acc[0], alpha));
                            $store(cr.add($lanes), $mul(acc[1], alpha));
                        } else {
                            let beta = $set1(t.beta);
                            let c0 = $mul($load(cr), beta);
                            let c1 = $mul($load(cr.add($lanes)), beta);
                            $store(cr, $fmadd(acc[0], alpha, c0));
                            $store(cr.add($lanes), $fmadd(acc[1], alpha, c1));
                        }
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
fused_rows!(
    fused_avx512,
    "avx512f",
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_mul_ps
);
#[cfg(target_arch = "x86_64")]
fused_rows!(
    fused_avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps,
    _mm256_mul_ps
);
