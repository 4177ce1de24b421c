//! The blocked GEMM driver, shared by every instruction set through [`MicroKernel`].
//!
//! Loop nest (BLIS-like): `jc` over `NC`-wide column blocks → `pc` over `KC`-deep slices (pack
//! the `KC×NC` block of `B` once, shared by all threads) → `ic` over `MC`-tall row blocks (each
//! work item packs its own `MC×KC` block of `A`) → `ir` over `MR`-tall panels → `jr` over
//! `NR`-wide panels → the micro-kernel, or `jr` outside `ir` for small `C` blocks (see
//! `L1_PANEL_BYTES`). `KC` is large (512) because every k-slice after the first re-reads and
//! re-writes `C`; on Sapphire Rapids 512 beat 256 and 384 by ~10% at 2048³.
//!
//! Threads (`parallel`): the `B` block is packed cooperatively, then the `(ic, jr-run)` work
//! items are shared out with rayon, each packing its own `A` block into a thread-local buffer.

use super::pack::pack;
use super::reference::apply_activation;
use super::thin::{panels_per_tile, tile_panels};
use super::{Epilogue, MatRef};
use crate::cpu::pool::{self, SendPtr};
use rayon::prelude::*;
use std::cell::Cell;
use std::thread::LocalKey;

/// A register-blocked micro-kernel plus the cache block sizes tuned for it.
pub(super) trait MicroKernel {
    /// Whether the kernel runs on AVX-512, so that packing may use it too.
    const AVX512: bool = false;
    /// Whether `tile` accumulates with fused multiply-adds (one rounding per step), which
    /// `thin::tile_panels` must match.
    const FUSED: bool;
    /// Rows of the `C` tile (values broadcast from packed `A`).
    const MR: usize;
    /// Columns of the `C` tile (vector loads from packed `B`).
    const NR: usize;
    /// Most depth of one packed slice (each slice re-reads C, so deeper is cheaper as long as
    /// a micro-panel still fits L1).
    const KC: usize;
    /// Upper bound on the rows of a packed `A` block: the unit of work shared among threads.
    const MC: usize;
    /// Columns of a packed `B` block (`KC×NC`, shared by the threads). Each `jc` block repacks
    /// all of `A`, so wider is cheaper as long as the block streams well from L2/L3.
    const NC: usize;

    /// `c[i*ldc + j] ← α·Σ_p a[p*MR + i]·b[p*NR + j] + β·c[i*ldc + j]` for `i < rows`, `j < NR`
    /// (`1 ≤ rows ≤ MR`; a row's arithmetic does not depend on `rows`); with `β == 0` the old `c`
    /// is not read.
    ///
    /// # Safety
    /// `a` must be readable for `k*MR` floats, `b` for `k*NR`, every `c[i*ldc + j]` above must be
    /// writable (and readable when `β != 0`), and the CPU must support the kernel's features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        rows: usize,
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    );
}

/// `$tile::<R>$args` for the run-time row count `$rows`, one arm per count listed (a kernel's
/// `MR` down to 1): a kernel's partial tiles are const-generic instances of its full tile.
macro_rules! tile_for_rows {
    ($tile:ident, $rows:expr, [$($r:literal)*], $args:tt) => {
        match $rows {
            $($r => $tile::<$r> $args,)*
            rows => unreachable!("a tile of {rows} rows"),
        }
    };
}
pub(super) use tile_for_rows;

/// Everything about one call except `C` itself.
pub(super) struct Problem<'a> {
    pub alpha: f32,
    pub a: MatRef<'a>,
    pub b: MatRef<'a>,
    pub beta: f32,
    pub ldc: usize,
    pub epilogue: Epilogue<'a>,
}

/// Below this many multiply-adds a call stays on one thread: the two fork/joins of a parallel
/// step cost more than the second core saves. Measured (AVX-512, 2 threads vs 1): 96³ 66 vs
/// 106 GFLOP/s, 128³ 94 vs 115, 160³ 150 vs 131, 192³ 169 vs 134.
pub const PARALLEL_MIN_MACS: usize = 144 * 144 * 144;

/// Macro-kernel loop order. Keeping the `B` micro-panel in L1 (classic BLIS, `jr` outside `ir`)
/// streams the narrower `A` panels from L2, but walks `C` tile by tile *down* the rows, each tile
/// on new pages; keeping the `A` micro-panel in L1 (`ir` outside `jr`) walks `C` along its rows,
/// which the prefetchers follow. So `B` stays in L1 only when its panel fits in
/// `L1_PANEL_BYTES` (of 48 KiB L1d on Sapphire Rapids, 32 KiB on most others) and the item's `C`
/// block fits in `L2_C_BYTES` (half a 2 MiB L2). Measured on AVX-512 (GFLOP/s, B-in-L1 vs
/// A-in-L1): 2048×256×2048 156-165 vs 164-167; kc = 512 (64 KiB B panel) A-in-L1 3-6% faster at
/// 1024-2048³; 256³ no difference beyond noise. AVX2 (6×16, 32 KiB B panel at kc 512): 1024³
/// 88 vs 75 with B in L1.
const L1_PANEL_BYTES: usize = 32 * 1024;
const L2_C_BYTES: usize = 1024 * 1024;
/// Packed `B` bytes an `A`-in-L1 macro-kernel streams per pass over its row panels: with the
/// `A` block (`MC×KC`, 688 KiB on AVX-512) it fits a 2 MiB L2, so `B` comes from L3 once per
/// pass instead of once per `A` micro-panel.
const L2_B_BYTES: usize = 1024 * 1024;

/// The largest `MR×NR` of any kernel (edge tiles go through a stack buffer this big).
const MAX_TILE: usize = 14 * 32;

/// Runs the whole product.
///
/// # Safety
/// `K::tile` must be runnable on this CPU; `p.a`, `p.b` must be validated views with
/// `a.cols == b.rows`, and `c` must hold the `m×n` matrix at stride `ldc` (all checked by `gemm`).
pub(super) unsafe fn run<K: MicroKernel>(p: &Problem, c: &mut [f32], parallel: bool) {
    // SAFETY: forwarded.
    unsafe { run_with::<K>(p, c, parallel, None) }
}

/// [`run`] with all of `B` already packed by [`pack_b_whole`] (`p.b` is then only its shape).
///
/// # Safety
/// As [`run`]; `packed` holds [`packed_b_len`] floats packed for this `K` and `B`'s shape.
pub(super) unsafe fn run_packed<K: MicroKernel>(
    p: &Problem,
    c: &mut [f32],
    parallel: bool,
    packed: &[f32],
) {
    // SAFETY: forwarded.
    unsafe { run_with::<K>(p, c, parallel, Some(packed)) }
}

/// Equal k-slices (e.g. k = 600 → 2×300, not 512 + 88): every slice but the first re-reads and
/// re-writes C, so a thin tail slice costs almost as much C traffic as a full one.
fn kc_slice<K: MicroKernel>(k: usize) -> usize {
    k.div_ceil(k.div_ceil(K::KC))
}

/// Packs the `B` block `(jc, pc)` (`kc` deep, `nc` wide) into `dst`, each of `threads` packing a
/// contiguous run of panels (whole-row reads, see pack.rs).
fn pack_b_block<K: MicroKernel>(
    b: &MatRef,
    (jc, nc): (usize, usize),
    (pc, kc): (usize, usize),
    dst: &mut [f32],
    threads: usize,
) {
    let group = nc.div_ceil(K::NR).div_ceil(threads) * K::NR;
    let pack_group = |(g, dst): (usize, &mut [f32])| {
        let j0 = jc + g * group;
        pack(
            b,
            pc,
            kc,
            j0,
            group.min(jc + nc - j0),
            K::NR,
            dst,
            K::AVX512,
        );
    };
    if threads > 1 {
        dst.par_chunks_mut(group * kc)
            .enumerate()
            .for_each(pack_group);
    } else {
        pack_group((0, dst));
    }
}

/// Where block `(jc, pc)` of a whole packed `B` starts: blocks of all of `B`'s columns before
/// `jc` (`jc·k` floats, as `NC` is a whole number of panels), then this column block's slices
/// before `pc`.
fn packed_b_offset<K: MicroKernel>(jc: usize, pc: usize, panels: usize, k: usize) -> usize {
    const { assert!(K::NC.is_multiple_of(K::NR)) };
    jc * k + panels * K::NR * pc
}

/// The `(column block, k-slice)` blocks of all of a `k×n` `B`, in packing order.
fn b_blocks<K: MicroKernel>(
    k: usize,
    n: usize,
) -> impl Iterator<Item = ((usize, usize), (usize, usize))> + Clone {
    let kc_max = kc_slice::<K>(k);
    (0..n).step_by(K::NC).flat_map(move |jc| {
        let nc = K::NC.min(n - jc);
        (0..k)
            .step_by(kc_max)
            .map(move |pc| ((jc, nc), (pc, kc_max.min(k - pc))))
    })
}

/// Floats in all of a `k×n` `B` packed for `K` (see [`packed_b_offset`]).
pub(super) fn packed_b_len<K: MicroKernel>(k: usize, n: usize) -> usize {
    b_blocks::<K>(k, n)
        .map(|((_, nc), (_, kc))| nc.div_ceil(K::NR) * K::NR * kc)
        .sum()
}

/// Packs all of `b` into `dst` ([`packed_b_len`] floats), `threads` sharing each block.
pub(super) fn pack_b_whole<K: MicroKernel>(b: &MatRef, dst: &mut [f32], threads: usize) {
    let k = b.rows;
    for ((jc, nc), (pc, kc)) in b_blocks::<K>(k, b.cols) {
        let panels = nc.div_ceil(K::NR);
        let dst = &mut dst[packed_b_offset::<K>(jc, pc, panels, k)..][..panels * K::NR * kc];
        pack_b_block::<K>(b, (jc, nc), (pc, kc), dst, threads);
    }
}

/// Runs one band of rows per thread (`bands`: each band's `A` rows and its rows of `C`), all
/// sharing one copy of `B` packed up front by all the threads together (or packed by the caller
/// beforehand, `packed`). The bands then never synchronize; packing `B` once instead of once
/// per band saves a `k×n` copy per extra thread (at 2048³ on 2 threads, 16 MiB of the 32 MiB
/// each thread streamed before its first FMA).
///
/// # Safety
/// As [`run`], for `p` and for each band's view and `C` rows (the same `ldc`); `packed` as in
/// [`run_packed`].
pub(super) unsafe fn run_bands<K: MicroKernel>(
    p: &Problem,
    bands: Vec<(MatRef, &mut [f32])>,
    packed: Option<&[f32]>,
) {
    let (n, k) = (p.b.cols, p.a.cols);
    let mut b_buf = Buffer::take(
        &PACK_B,
        if packed.is_some() {
            0
        } else {
            packed_b_len::<K>(k, n)
        },
    );
    let packed = match packed {
        Some(packed) => packed,
        None => {
            let dst = b_buf.slice();
            pack_b_whole::<K>(&p.b, dst, pool::threads().max(1));
            &*dst
        }
    };
    bands.into_par_iter().for_each(|(a, c)| {
        let band = Problem { a, ..*p };
        // SAFETY: each band is a validated part of the caller's problem.
        unsafe { run_with::<K>(&band, c, false, Some(packed)) };
    });
}

/// [`run`], taking `B` already packed whole (laid out as [`packed_b_offset`] says) when given.
unsafe fn run_with<K: MicroKernel>(
    p: &Problem,
    c: &mut [f32],
    parallel: bool,
    packed_b: Option<&[f32]>,
) {
    let (m, n, k) = (p.a.rows, p.b.cols, p.a.cols);
    if k == 0 {
        scale_only(p, c, m, n);
        return;
    }
    let threads = if parallel && m * n * k >= PARALLEL_MIN_MACS {
        pool::threads().max(1)
    } else {
        1
    };
    if m <= FEW_ROW_PANELS * K::MR {
        // SAFETY: forwarded.
        unsafe { run_few_rows::<K>(p, c, threads, packed_b) };
        return;
    }
    let c_ptr = SendPtr(c.as_mut_ptr());
    let kc_max = kc_slice::<K>(k);
    let b_len = if packed_b.is_some() {
        0
    } else {
        kc_max * n.min(K::NC).div_ceil(K::NR) * K::NR
    };
    let mut b_buf = Buffer::take(&PACK_B, b_len);
    let a_t = p.a.t();

    for jc in (0..n).step_by(K::NC) {
        let nc = K::NC.min(n - jc);
        let panels = nc.div_ceil(K::NR);
        for pc in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - pc);
            let len = panels * K::NR * kc;
            let b_pack: &[f32] = match packed_b {
                Some(all) => &all[packed_b_offset::<K>(jc, pc, panels, k)..][..len],
                None => {
                    let dst = &mut b_buf.slice()[..len];
                    pack_b_block::<K>(&p.b, (jc, nc), (pc, kc), dst, threads);
                    dst
                }
            };

            let step = Step {
                kc,
                beta: if pc == 0 { p.beta } else { 1.0 },
                last: pc + kc == k,
                jc,
                nc,
            };
            let plan = Plan::new::<K>(m, panels, threads);
            let work = |item: usize| {
                let (ic, mc, jr) = plan.item(item, m, panels);
                let mut a_buf = Buffer::take(&PACK_A, mc.div_ceil(K::MR) * K::MR * kc);
                let a_pack = a_buf.slice();
                pack_a::<K>(&a_t, pc, kc, ic, mc, a_pack);
                // SAFETY: this item owns rows ic..ic+mc × panels `jr` of the column block.
                unsafe { macro_kernel::<K>(p, &step, a_pack, b_pack, ic, mc, jr, c_ptr) };
            };
            if threads > 1 {
                (0..plan.items()).into_par_iter().for_each(work);
            } else {
                (0..plan.items()).for_each(work);
            }
        }
    }
}

/// Packed `B` per work item of [`run_few_rows`]: a run of panels that stays in L2 from its
/// packing to its use.
const ROW_PANEL_B_BYTES: usize = 128 * 1024;

/// Products of at most this many row panels take [`run_few_rows`].
const FEW_ROW_PANELS: usize = 4;

/// `C` of at most [`FEW_ROW_PANELS`] row panels (a decoding step, a few beams, a small batch
/// through a linear layer): every packed `B` block is used by so few `A` panels that instead of
/// wide blocks packed by all threads together (written out to memory and read back) and row
/// blocks shared among threads (16 rows on 2 threads were a 14-row and a 2-row item), each work
/// item packs a narrow run of `B`'s columns and multiplies all the rows with it while it is still
/// in cache, and the items are shared out with a single fork-join. The per-element arithmetic is
/// the blocked path's (same k-slices, same kernels), so a row gets the same bits here as in a
/// taller product.
///
/// With `B` packed beforehand (`packed_b`), the items read their columns from it instead.
///
/// # Safety
/// As [`run_with`], with `m ≤ FEW_ROW_PANELS·K::MR`.
unsafe fn run_few_rows<K: MicroKernel>(
    p: &Problem,
    c: &mut [f32],
    threads: usize,
    packed_b: Option<&[f32]>,
) {
    let (m, n, k) = (p.a.rows, p.b.cols, p.a.cols);
    let kc_max = kc_slice::<K>(k);
    // All of A, packed once: each k-slice's row panels, one slice after another.
    let panel_floats = m.div_ceil(K::MR) * K::MR;
    let mut a_buf = Buffer::take(&PACK_A, panel_floats * k);
    let a_pack = a_buf.slice();
    let a_t = p.a.t();
    for pc in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - pc);
        pack_a::<K>(
            &a_t,
            pc,
            kc,
            0,
            m,
            &mut a_pack[panel_floats * pc..][..panel_floats * kc],
        );
    }
    let a_pack = &*a_pack;
    let width = (ROW_PANEL_B_BYTES / (kc_max * K::NR * std::mem::size_of::<f32>()))
        .clamp(1, K::NC / K::NR)
        * K::NR;
    // Items never straddle one of B's NC-column blocks (the layout of a packed B).
    let items: Vec<usize> = (0..n)
        .step_by(K::NC)
        .flat_map(|jb| (jb..n.min(jb + K::NC)).step_by(width))
        .collect();
    let c_ptr = SendPtr(c.as_mut_ptr());
    let work = |&jc: &usize| {
        let jb = jc - jc % K::NC;
        let nc = width.min(n.min(jb + K::NC) - jc);
        let panels = nc.div_ceil(K::NR);
        let block_panels = K::NC.min(n - jb).div_ceil(K::NR);
        let len = if packed_b.is_some() {
            0
        } else {
            panels * K::NR * kc_max
        };
        let mut b_buf = Buffer::take(&PACK_B, len);
        for pc in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - pc);
            let b_pack: &[f32] = match packed_b {
                Some(all) => {
                    let block = packed_b_offset::<K>(jb, pc, block_panels, k);
                    &all[block + (jc - jb) * kc..][..panels * K::NR * kc]
                }
                None => {
                    let dst = &mut b_buf.slice()[..panels * K::NR * kc];
                    pack(&p.b, pc, kc, jc, nc, K::NR, dst, K::AVX512);
                    dst
                }
            };
            let step = Step {
                kc,
                beta: if pc == 0 { p.beta } else { 1.0 },
                last: pc + kc == k,
                jc,
                nc,
            };
            let a = &a_pack[panel_floats * pc..][..panel_floats * kc];
            // SAFETY: this item owns columns jc..jc+nc of every row.
            unsafe { macro_kernel::<K>(p, &step, a, b_pack, 0, m, 0..panels, c_ptr) };
        }
    };
    if threads > 1 {
        items.par_iter().for_each(work);
    } else {
        items.iter().for_each(work);
    }
}

/// The parts of the loop state the macro-kernel needs for one `(jc, pc)` step.
struct Step {
    kc: usize,
    /// `β` for this k-slice: the caller's on the first slice, 1 afterwards (accumulate).
    beta: f32,
    /// Whether this is the final k-slice, after which bias and activation are applied.
    last: bool,
    jc: usize,
    nc: usize,
}

/// Target work items per thread in a parallel step (each costs one `A` block pack).
const ITEMS_PER_THREAD: usize = 4;

/// How one `(jc, pc)` step is cut into work items: `n_ic` row blocks of `mc` rows, each split
/// into `n_jr` runs of `NR`-panels. Items are a multiple of the thread count where possible, so
/// with 2 threads both finish together.
struct Plan {
    mc: usize,
    n_ic: usize,
    n_jr: usize,
    jr_len: usize,
}

impl Plan {
    fn new<K: MicroKernel>(m: usize, panels: usize, threads: usize) -> Plan {
        let row_panels = m.div_ceil(K::MR);
        let mut n_ic = m.div_ceil(K::MC);
        if threads > 1 {
            // Several items per thread, so that when a core is briefly taken by another process
            // the other threads pick up its share (rayon steals whole items); but not below
            // MC/2 rows each, as every item packs its own A block.
            let wanted = (ITEMS_PER_THREAD * threads).min(m / (K::MC / 2));
            n_ic = n_ic.max(wanted).next_multiple_of(threads).min(row_panels);
        }
        let mc = m.div_ceil(n_ic).next_multiple_of(K::MR);
        let n_ic = m.div_ceil(mc);
        // Too few row blocks to share evenly (small m): split the column panels too.
        let n_jr = if n_ic % threads == 0 {
            1
        } else {
            threads.min(panels)
        };
        let jr_len = panels.div_ceil(n_jr);
        Plan {
            mc,
            n_ic,
            n_jr: panels.div_ceil(jr_len),
            jr_len,
        }
    }

    fn items(&self) -> usize {
        self.n_ic * self.n_jr
    }

    /// `(first row, rows, panel range)` of item `i`.
    fn item(&self, i: usize, m: usize, panels: usize) -> (usize, usize, std::ops::Range<usize>) {
        let (ib, jb) = (i / self.n_jr, i % self.n_jr);
        let ic = ib * self.mc;
        let jr0 = jb * self.jr_len;
        (
            ic,
            self.mc.min(m - ic),
            jr0..(jr0 + self.jr_len).min(panels),
        )
    }
}

/// How a block of `mc` rows is cut into row panels of at most `MR`: as evenly as possible
/// (heights differing by at most one), so that 16 rows run as two tiles of 8 rather than a full
/// tile of 14 and a thin one of 2, whose few FMA chains per B load ran at under half the speed.
/// A multiple of `MR` gives the usual full panels.
#[derive(Clone, Copy)]
struct RowPanels {
    count: usize,
    height: usize,
    /// The first `taller` panels hold `height + 1` rows.
    taller: usize,
}

impl RowPanels {
    fn new(mc: usize, mr: usize) -> RowPanels {
        let count = mc.div_ceil(mr).max(1);
        RowPanels {
            count,
            height: mc / count,
            taller: mc % count,
        }
    }

    /// `(first row, rows)` of panel `ip`.
    fn get(&self, ip: usize) -> (usize, usize) {
        (
            ip * self.height + ip.min(self.taller),
            self.height + usize::from(ip < self.taller),
        )
    }
}

/// Packs rows `ic..ic+mc`, depths `pc..pc+kc` of `A` (given as `a_t = Aᵀ`) into `MR`-wide
/// panels laid out as [`RowPanels`] cuts them (panel `ip` at `ip·MR·kc`).
fn pack_a<K: MicroKernel>(
    a_t: &MatRef,
    pc: usize,
    kc: usize,
    ic: usize,
    mc: usize,
    dst: &mut [f32],
) {
    let panels = RowPanels::new(mc, K::MR);
    if panels.height == K::MR || panels.count == 1 {
        return pack(a_t, pc, kc, ic, mc, K::MR, dst, K::AVX512);
    }
    for (ip, dst) in dst.chunks_exact_mut(K::MR * kc).enumerate() {
        let (start, rows) = panels.get(ip);
        pack(a_t, pc, kc, ic + start, rows, K::MR, dst, K::AVX512);
    }
}

/// Runs the micro-kernel over rows `ic..ic+mc` and the `jr` panels of the current column block.
///
/// # Safety
/// No other thread may write these tiles concurrently; `c` is `gemm`'s validated `C`.
#[allow(clippy::too_many_arguments)]
unsafe fn macro_kernel<K: MicroKernel>(
    p: &Problem,
    s: &Step,
    a_pack: &[f32],
    b_pack: &[f32],
    ic: usize,
    mc: usize,
    jr: std::ops::Range<usize>,
    c: SendPtr<f32>,
) {
    let (mr, nr, kc, ldc) = (K::MR, K::NR, s.kc, p.ldc);
    let row_panels = RowPanels::new(mc, mr);
    let tile = |ip: usize, jp: usize| {
        let (start, rows) = row_panels.get(ip);
        let (i, j) = (ic + start, s.jc + jp * nr);
        let cols = nr.min(s.jc + s.nc - j);
        let a = a_pack[ip * mr * kc..][..mr * kc].as_ptr();
        let b = b_pack[jp * nr * kc..][..nr * kc].as_ptr();
        // (i, j) is inside the m×n matrix validated by `gemm`.
        let ct = c.at(i * ldc + j);
        if cols == nr {
            // SAFETY: the tile's rows lie inside C; a/b hold kc*MR / kc*NR packed floats.
            unsafe { K::tile(rows, kc, a, b, ct, ldc, p.alpha, s.beta) };
        } else {
            // Edge tile: compute the full-width tile into a stack buffer, copy the valid part.
            let mut tmp = [0.0f32; MAX_TILE];
            debug_assert!(mr * nr <= MAX_TILE);
            for r in (0..rows).filter(|_| s.beta != 0.0) {
                // SAFETY: row i+r < m and columns j..j+cols < n lie inside C.
                let src = unsafe { std::slice::from_raw_parts(ct.add(r * ldc), cols) };
                tmp[r * nr..][..cols].copy_from_slice(src);
            }
            // SAFETY: tmp holds MR×NR floats at stride NR.
            unsafe { K::tile(rows, kc, a, b, tmp.as_mut_ptr(), nr, p.alpha, s.beta) };
            for r in 0..rows {
                // SAFETY: as above.
                let dst = unsafe { std::slice::from_raw_parts_mut(ct.add(r * ldc), cols) };
                dst.copy_from_slice(&tmp[r * nr..][..cols]);
            }
        }
    };
    let f32s = std::mem::size_of::<f32>();
    let c_block = mc * jr.len() * nr * f32s;
    let group = panels_per_tile(mc);
    if mc < mr && group > 1 {
        // One or two rows (a decoding step's product): thin tiles over several B panels at a
        // time where they are full, as one panel of so few rows is too few FMA chains.
        let mut jp = jr.start;
        while jp < jr.end {
            let j = s.jc + jp * nr;
            if jp + group > jr.end || j + group * nr > s.jc + s.nc {
                tile(0, jp);
                jp += 1;
                continue;
            }
            let (a, b) = (a_pack.as_ptr(), b_pack[jp * nr * kc..].as_ptr());
            // SAFETY: rows ic..ic+mc and columns j..j+group·nr lie inside C (full panels); a/b
            // hold the packed operands of these rows and panels.
            unsafe { tile_panels::<K>(mc, kc, a, b, c.at(ic * ldc + j), ldc, p.alpha, s.beta) };
            jp += group;
        }
    } else if kc * nr * f32s <= L1_PANEL_BYTES && c_block <= L2_C_BYTES {
        // Keep the B micro-panel in L1 across the ir loop and stream A (see `L1_PANEL_BYTES`).
        for jp in jr.clone() {
            (0..row_panels.count).for_each(|ip| tile(ip, jp));
        }
    } else {
        // Keep the A micro-panel in L1 and walk C along its rows, over runs of B panels that
        // stay in L2 while every A micro-panel of the block passes them.
        let run = (L2_B_BYTES / (kc * nr * f32s)).max(1);
        for j0 in jr.clone().step_by(run) {
            let panels = j0..(j0 + run).min(jr.end);
            for ip in 0..row_panels.count {
                panels.clone().for_each(|jp| tile(ip, jp));
            }
        }
    }
    // The epilogue runs once the item's tiles are all stored: reading a tile's rows back right
    // after its vector stores stalled on store forwarding (a bias on a k = 256 product cost 6%).
    if s.last && !p.epilogue.is_noop() {
        let j0 = s.jc + jr.start * nr;
        let cols = (s.jc + jr.end * nr).min(s.jc + s.nc) - j0;
        for i in ic..ic + mc {
            // SAFETY: rows ic..ic+mc and columns j0..j0+cols lie inside C; this item owns them.
            let row = unsafe { std::slice::from_raw_parts_mut(c.at(i * ldc + j0), cols) };
            apply_epilogue(&p.epilogue, row, j0);
        }
    }
}

/// Bias and activation on a run of one output row starting at column `j`.
pub(crate) fn apply_epilogue(ep: &Epilogue, row: &mut [f32], j: usize) {
    if let Some(bias) = ep.bias {
        for (v, b) in row.iter_mut().zip(&bias[j..]) {
            *v += b;
        }
    }
    if ep.activation != super::Activation::Identity {
        for v in row.iter_mut() {
            *v = apply_activation(ep.activation, *v);
        }
    }
}

/// `k == 0`: the product is empty, so `C ← act(β·C + bias)`.
fn scale_only(p: &Problem, c: &mut [f32], m: usize, n: usize) {
    for i in 0..m {
        let row = &mut c[i * p.ldc..][..n];
        for v in row.iter_mut() {
            *v = if p.beta == 0.0 { 0.0 } else { p.beta * *v };
        }
        apply_epilogue(&p.epilogue, row, 0);
    }
}

thread_local! {
    static PACK_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A packing buffer borrowed from a thread-local, so repeated calls do not allocate. It is moved
/// out of the cell (not borrowed) because rayon may run a nested `gemm` on this thread while we
/// wait in a join; that call then just finds an empty cell and allocates its own.
struct Buffer {
    key: &'static LocalKey<Cell<Vec<f32>>>,
    vec: Vec<f32>,
    len: usize,
}

/// Packed panels start on a cache line so the kernels' vector loads never split one.
const ALIGN_FLOATS: usize = 64 / std::mem::size_of::<f32>();

impl Buffer {
    fn take(key: &'static LocalKey<Cell<Vec<f32>>>, len: usize) -> Buffer {
        let mut vec = key.take();
        if vec.len() < len + ALIGN_FLOATS {
            vec.resize(len + ALIGN_FLOATS, 0.0);
        }
        Buffer { key, vec, len }
    }

    fn slice(&mut self) -> &mut [f32] {
        let off = self.vec.as_ptr().align_offset(64).min(ALIGN_FLOATS);
        &mut self.vec[off..off + self.len]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.key.set(std::mem::take(&mut self.vec));
    }
}
