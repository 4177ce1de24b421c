//! Portable micro-kernel: plain Rust on fixed-size arrays, which LLVM vectorizes with whatever
//! the baseline target offers (SSE2 on x86-64, NEON on aarch64). 4×16 accumulators are 16
//! 128-bit registers: half of NEON's 32; on x86-64 (all 16 of SSE2's) some spill, but x86-64
//! only lands here without AVX2 (pre-2013 CPUs) or when forced (`TFM_RS_ISA=generic`), so this
//! path is not tuned beyond that.
//! Measured 25–28 GFLOP/s single-threaded on the AVX-512 test machine.

use super::driver::MicroKernel;

pub(super) struct Generic;

const MR: usize = 4;
const NR: usize = 16;

impl MicroKernel for Generic {
    const FUSED: bool = false;
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const MC: usize = 4 * 32;
    const NC: usize = 1024;

    unsafe fn tile(
        rows: usize,
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: the caller guarantees k*MR floats at `a` and k*NR at `b`.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, k * MR),
                std::slice::from_raw_parts(b, k * NR),
            )
        };
        let mut acc = [[0.0f32; NR]; MR];
        let acc = &mut acc[..rows];
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (acc, &av) in acc.iter_mut().zip(ap) {
                for (x, &bv) in acc.iter_mut().zip(bp) {
                    *x += av * bv;
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees the rows×NR tile at `c` with stride `ldc`.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), NR) };
            for (out, &x) in row.iter_mut().zip(acc) {
                *out = if beta == 0.0 {
                    alpha * x
                } else {
                    alpha * x + beta * *out
                };
            }
        }
    }
}
