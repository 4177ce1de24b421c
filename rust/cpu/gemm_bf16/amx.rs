//! The AMX path: `tdpbf16ps` on 16×16 f32 tiles (Sapphire Rapids and later).
//!
//! On this machine's Sapphire Rapids-class cores `vdpbf16ps` costs about four FMAs (measured:
//! half the f32 GEMM's GFLOP/s), so AVX-512 BF16 alone makes bf16 slower, not faster; AMX is
//! what turns bf16 into speed. One `tdpbf16ps` multiplies a 16×32 bf16 tile of `A` by a 32×16
//! tile of `B` (stored as 16 rows of column pairs, the packing of `native.rs` at width 16) into
//! 16×16 f32 accumulators.
//!
//! `B` is packed once up front in `KC`-deep slices of 16-column panels. Each work item (a block
//! of rows × a run of column blocks) packs its rows of `A` per slice as bf16 pairs, row-major
//! (`A` tiles load straight from it). A 32×32 block of `C` lives in the four tile registers
//! tmm0–3 over one slice (tmm4–5: `A`, tmm6–7: `B`), then goes through a stack buffer that
//! adds it to `C` with α, β, the edges and (after the last slice) the epilogue.
//!
//! Linux gives a process the AMX register state only on request (`arch_prctl`,
//! `ARCH_REQ_XCOMP_PERM`); [`available`] asks once and reports whether it was granted.

use super::native::{pack_pairs, with_buffer};
use crate::cpu::gemm::{apply_epilogue, Epilogue, MatRef};
use crate::cpu::pool::{self, SendPtr};
use rayon::prelude::*;
use std::arch::asm;
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows of a work item's `A` block (a multiple of the 32-row tile block).
const MB: usize = 256;
/// Depth of one k-slice (a multiple of 32). A slice of the item's `A` rows (`MB×KC` bf16,
/// 256 KiB) stays in L2 and a 32-row block of it (32 KiB) in L1 while the item's `B` column
/// blocks (32 KiB each) stream past; with all of `k` at once, k = 8000 (the output layer's
/// dX) made every block stream both operands from L3.
const KC: usize = 512;
/// Packed `B` per run of column blocks that an item's rows sweep together (per slice): it
/// and the item's `A` slice (`MB×KC` bf16, 256 KiB) stay in a 2 MiB L2, so `B` comes from L3
/// once per item instead of once per 32-row block (2048³ ran at ~80 GFLOP/s that way).
const CHUNK_B_BYTES: usize = 512 * 1024;
/// Below this many multiply-adds a call stays on one thread.
const PARALLEL_MIN_MACS: usize = 128 * 128 * 128;

thread_local! {
    static PACK_A: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Whether the CPU has AMX-TILE and AMX-BF16 and the OS lets this process use them.
pub(super) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0 && request_tile_state()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: arch_prctl only changes this process's permitted register state; it reads no
    // memory of ours. The syscall instruction clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Palette 1 with tmm0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// `out (32×32 f32, row stride 32) = Σ A·B` over `kpp` pairs (a multiple of 16): `a` holds
/// 32 rows of `kpp` pairs (row stride `kpp`), `b0`/`b1` two 16-column panels of `kpp` rows of
/// 16 pairs.
///
/// # Safety
/// The tiles are configured ([`CONFIG`]); the pointers are readable for those sizes.
unsafe fn block(kpp: usize, a: *const u32, b0: *const u32, b1: *const u32, out: &mut [f32; 1024]) {
    let a_stride = kpp * 4;
    // SAFETY (whole body): the caller's contract; each load reads 16 rows of 64 bytes.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for q in (0..kpp).step_by(16) {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(q),
                a1 = in(reg) a.add(16 * kpp + q),
                b0 = in(reg) b0.add(16 * q),
                b1 = in(reg) b1.add(16 * q),
                sa = in(reg) a_stride,
                sb = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        let o = out.as_mut_ptr();
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) o,
            c1 = in(reg) o.add(16),
            c2 = in(reg) o.add(16 * 32),
            c3 = in(reg) o.add(16 * 32 + 16),
            s = in(reg) 128usize,
            options(nostack),
        );
    }
}

/// The product on this path; the caller has checked that AMX is [`available`], the views and
/// `c` (`super::validate`), and that no dimension is 0.
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
    // Equal slices of whole 32-deep tile steps; every slice but the last is full, so slice
    // `pc` starts at pair `pc/2` of every panel's run.
    let kc_max = k.div_ceil(k.div_ceil(KC)).next_multiple_of(32);
    let pairs = |kc: usize| kc.div_ceil(32) * 16;
    let slices: Vec<(usize, usize)> = (0..k)
        .step_by(kc_max)
        .map(|pc| (pc, kc_max.min(k - pc)))
        .collect();
    let kpp_all: usize = slices.iter().map(|&(_, kc)| pairs(kc)).sum();
    let panels = n.div_ceil(32) * 2;
    let blocks_n = panels / 2;
    // The packing and the products enter the thread pool once, together.
    pool::parallel_if(threads > 1, || {
        with_buffer(&PACK_B, panels * 16 * kpp_all, |packed_b| {
            for &(pc, kc) in &slices {
                let kps = pairs(kc);
                let slice = &mut packed_b[panels * 16 * (pc / 2)..][..panels * 16 * kps];
                let pack_panel = |(t, d): (usize, &mut [u32])| {
                    let j0 = (16 * t).min(n);
                    let w = 16.min(n - j0);
                    if w == 0 {
                        d.fill(0);
                    } else {
                        // SAFETY: AMX implies AVX-512 (checked by the caller).
                        unsafe { pack_pairs(&b, pc, kc, j0, w, 16, kps, d) };
                    }
                };
                if threads > 1 {
                    slice
                        .par_chunks_mut(16 * kps)
                        .enumerate()
                        .for_each(pack_panel);
                } else {
                    slice.chunks_mut(16 * kps).enumerate().for_each(pack_panel);
                }
            }
            let packed_b = &*packed_b;
            let mb = MB.min(m.div_ceil(32) * 32);
            let row_blocks = m.div_ceil(mb);
            let groups = (2 * threads).div_ceil(row_blocks).clamp(1, blocks_n);
            let run = blocks_n.div_ceil(groups);
            let items = row_blocks * blocks_n.div_ceil(run);
            let c_ptr = SendPtr(c.as_mut_ptr());
            let a_t = a.t();
            let work = |item: usize| {
                let (ib, g) = (item % row_blocks, item / row_blocks);
                let ic = ib * mb;
                let rows = mb.min(m - ic);
                let padded = rows.div_ceil(32) * 32;
                let (s0, s1) = (g * run, ((g + 1) * run).min(blocks_n));
                with_buffer(&PACK_A, padded * pairs(kc_max), |a_buf| {
                    let mut out = [0f32; 1024];
                    // SAFETY: AMX is available (the caller); the tile configuration is this
                    // thread's and released below.
                    unsafe {
                        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly))
                    };
                    for &(pc, kc) in &slices {
                        let kps = pairs(kc);
                        let a_pack = &mut a_buf[..padded * kps];
                        // Row i of A is column i of Aᵀ: one panel of width 1 per row.
                        // SAFETY: as above.
                        unsafe {
                            pack_pairs(&a_t, pc, kc, ic, rows, 1, kps, &mut a_pack[..rows * kps])
                        };
                        a_pack[rows * kps..].fill(0);
                        let a_pack = &*a_pack;
                        let b_slice = &packed_b[panels * 16 * (pc / 2)..];
                        let (step_beta, last) = (if pc == 0 { beta } else { 1.0 }, pc + kc == k);
                        // Runs of column blocks whose slice of B (CHUNK_B_BYTES) stays in L2
                        // while all of the item's rows pass over it.
                        let chunk = (CHUNK_B_BYTES / (128 * kps)).max(1);
                        for c0 in (s0..s1).step_by(chunk) {
                            for r0 in (0..rows).step_by(32) {
                                let a_rows = a_pack[r0 * kps..].as_ptr();
                                for s in c0..(c0 + chunk).min(s1) {
                                    let b0 = b_slice[2 * s * 16 * kps..].as_ptr();
                                    let b1 = b_slice[(2 * s + 1) * 16 * kps..].as_ptr();
                                    // SAFETY: 32 rows of kps pairs from r0 (padded), two panels of kps.
                                    unsafe { block(kps, a_rows, b0, b1, &mut out) };
                                    let (i0, j0) = (ic + r0, 32 * s);
                                    let (h, w) = (32.min(ic + rows - i0), 32.min(n - j0));
                                    for (i, acc) in out.chunks_exact(32).take(h).enumerate() {
                                        // SAFETY: row i0+i, columns j0..j0+w lie inside the validated C
                                        // and belong to this item alone.
                                        let row = unsafe {
                                            std::slice::from_raw_parts_mut(
                                                c_ptr.at((i0 + i) * ldc + j0),
                                                w,
                                            )
                                        };
                                        if step_beta == 0.0 {
                                            for (y, &v) in row.iter_mut().zip(acc) {
                                                *y = alpha * v;
                                            }
                                        } else {
                                            for (y, &v) in row.iter_mut().zip(acc) {
                                                *y = alpha.mul_add(v, step_beta * *y);
                                            }
                                        }
                                        if last {
                                            apply_epilogue(epilogue, row, j0);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    // SAFETY: releases this thread's tile state.
                    unsafe { asm!("tilerelease", options(nostack, nomem)) };
                });
            };
            if threads > 1 {
                (0..items).into_par_iter().for_each(work);
            } else {
                (0..items).for_each(work);
            }
        })
    });
}
