//! The inner kernels of the fused attention, written once over a small SIMD trait and compiled
//! per instruction set: a register-blocked block product `C (+)= A·B` and the softmax's `2^x`.
//!
//! Why not `cpu::gemm` on the blocks: the blocks are small (64×64×64), alike every call and
//! already packed by the caller, so a general GEMM would repack its operands per call for no
//! gain: profiled at T = 512, these tile loops run at about 180 GFLOP/s on one core, the
//! two-FMA-port peak of the machine they were tuned on.
//!
//! Instantiation follows the `pulp` pattern: a kernel body is a generic `#[inline(always)]`
//! function over `S: Simd`; [`dispatch`] calls it from a `#[target_feature]` trampoline, so the
//! body and every helper inlined into it (the auto-vectorized row loops included) are compiled
//! for that instruction set, chosen at run time from `cpu::active_isa()`.

use crate::cpu::Isa;

/// Row granularity: every row count passed to [`block_matmul`] is a multiple of it (its tiles
/// are 6 rows high, with one band of 4 or 2 at the end).
pub(super) const MR: usize = 4;
/// Column padding: every column count passed to [`block_matmul`] is a multiple of it (the
/// widest vector, so it serves every instruction set).
pub(super) const LANES: usize = 16;

/// One SIMD register type and the handful of operations the block product needs.
///
/// # Safety
/// Implementations may use instructions the host lacks; their methods must be reached only
/// through [`dispatch`], which checks the instruction set first.
pub(super) unsafe trait Simd: Copy {
    /// f32 lanes per register; divides [`LANES`].
    const W: usize;
    /// Registers per micro-tile row (2 or 4): the tile is `MR × NV·W` accumulators.
    const NV: usize;
    /// Whether this is the AVX-512 instruction set (which has a register transpose).
    const AVX512: bool;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a·b + c`.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a·b + c` on one lane, fused where the instruction set has FMA; in a loop over lanes
    /// it vectorizes.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
    /// [`exp2`] of 16 lanes, or an evaluation as accurate that gives the same exact zeros.
    unsafe fn exp2_x16(x: [f32; 16]) -> [f32; 16];
}

/// `W` f32 lanes in an array, with `NV` of them per micro-tile row. Mostly no intrinsics: the
/// compiler maps the arrays onto the registers that the trampoline's target features allow
/// (xmm pairs, ymm, zmm) at no measured cost; only `exp2_x16` on AVX-512 uses instructions it
/// would not pick (`vrndscaleps`, `vscalefps`). `FMA` selects fused multiply-add, which must
/// not be asked for without the instruction (it would become a libm call per element).
#[derive(Clone, Copy)]
pub(super) struct Lanes<const W: usize, const NV: usize, const FMA: bool>;

/// Portable: two SSE registers' worth per vector, multiply then add.
pub(super) type Generic = Lanes<8, 2, false>;
/// 6×16 tiles: 12 ymm accumulators + 2 loads + 1 broadcast, 15 of the 16 registers.
#[cfg(target_arch = "x86_64")]
type Avx2 = Lanes<8, 2, true>;
/// 6×64 tiles: 24 zmm accumulators; 4 loads and 6 broadcasts per 24 FMAs, so the two FMA
/// ports, not the load ports, are the limit.
#[cfg(target_arch = "x86_64")]
type Avx512 = Lanes<16, 4, true>;

unsafe impl<const W: usize, const NV: usize, const FMA: bool> Simd for Lanes<W, NV, FMA> {
    const W: usize = W;
    const NV: usize = NV;
    const AVX512: bool = W == 16;
    type V = [f32; W];
    #[inline(always)]
    unsafe fn zero() -> [f32; W] {
        [0.0; W]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; W] {
        [x; W]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; W] {
        p.cast::<[f32; W]>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; W]) {
        p.cast::<[f32; W]>().write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn fmadd(a: [f32; W], b: [f32; W], c: [f32; W]) -> [f32; W] {
        if FMA {
            std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
        } else {
            std::array::from_fn(|i| a[i] * b[i] + c[i])
        }
    }
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        if FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
    #[inline(always)]
    unsafe fn exp2_x16(x: [f32; 16]) -> [f32; 16] {
        #[cfg(target_arch = "x86_64")]
        if W == 16 {
            // SAFETY: 16 lanes is the AVX-512 type, which `dispatch` runs on AVX-512 hosts only.
            return unsafe { exp2_avx512(x) };
        }
        // A `for` loop, not `x.map(..)`: `map` goes through a function LLVM declined to inline
        // into the trampoline, which then ran `exp2` without the trampoline's features (a libm
        // `fmaf` call per FMA on AVX2: attention 10× slower).
        let mut y = x;
        for v in &mut y {
            *v = exp2::<Self>(*v);
        }
        y
    }
}

/// [`exp2`] in ten AVX-512 instructions instead of about sixteen: the same reduction and
/// polynomial, with `vrndscaleps` for the rounding and `vscalefps` for the `2^n` factor, which
/// also gives ±∞ and NaN their results. The scaling is masked off where `x ≤ −126`, which
/// gives exact zeros there instead of subnormals (slow in later arithmetic).
///
/// # Safety
/// The CPU must have AVX-512F. Not a `#[target_feature]` function, so that it can be inlined
/// (with the intrinsics) into the AVX-512 trampoline of [`dispatch`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp2_avx512(x: [f32; 16]) -> [f32; 16] {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees AVX-512F; the loads and stores are of arrays of 16 floats.
    unsafe {
        let x = _mm512_loadu_ps(x.as_ptr());
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let f = _mm512_sub_ps(x, n);
        let mut p = _mm512_set1_ps(EXP2_POLY[0]);
        for &c in &EXP2_POLY[1..] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        let normal = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, _mm512_set1_ps(-126.0));
        let y = _mm512_maskz_scalef_ps(normal, p, n);
        let mut out = [0.0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), y);
        out
    }
}

/// A kernel body to run under the instruction set [`dispatch`] picks.
pub(super) trait Kernel {
    type Output;
    /// Implementations must be `#[inline(always)]` so that the body is compiled inside the
    /// trampoline, with its target features.
    fn run<S: Simd>(self) -> Self::Output;
}

/// Runs `kernel` with the SIMD type of `isa` (which the caller got from `active_isa()`, so the
/// host supports it).
pub(super) fn dispatch<K: Kernel>(isa: Isa, kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512<K: Kernel>(kernel: K) -> K::Output {
            kernel.run::<Avx512>()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<K: Kernel>(kernel: K) -> K::Output {
            kernel.run::<Avx2>()
        }
        match isa {
            // SAFETY: `active_isa` only reports instruction sets the host supports.
            Isa::Avx512 => return unsafe { avx512(kernel) },
            Isa::Avx2 => return unsafe { avx2(kernel) },
            Isa::Generic => {}
        }
    }
    let _ = isa;
    kernel.run::<Generic>()
}

/// A read-only operand of [`block_matmul`]: element `(i, p)` is `data[i * rs + p * cs]`.
#[derive(Clone, Copy)]
pub(super) struct Operand<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Operand<'a> {
    /// Rows of a row-major matrix with row stride `ld`, starting at row `row`.
    pub fn rows(data: &'a [f32], ld: usize, row: usize) -> Self {
        Operand {
            data: &data[row * ld..],
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with row stride `ld`.
    pub fn transposed(data: &'a [f32], ld: usize) -> Self {
        Operand {
            data,
            rs: 1,
            cs: ld,
        }
    }
}

/// `C (m×n, row stride ldc) ← A·B`, or `C += A·B` when `accumulate`; `A` is `m×k` (any
/// strides), `B` is `k×n` row-major with row stride `ldb`. `m` must be a multiple of [`MR`] and
/// `n` of [`LANES`]; `k` may be anything (0 gives zeros or leaves C as is).
///
/// Panics if a slice is too short for the shapes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn block_matmul<S: Simd>(
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        m % MR == 0 && n % LANES == 0,
        "block_matmul: m {m} or n {n} not padded"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "block_matmul: C too short");
    if k > 0 {
        assert!(
            (m - 1) * a.rs + (k - 1) * a.cs < a.data.len(),
            "block_matmul: A too short"
        );
        assert!((k - 1) * ldb + n <= b.len(), "block_matmul: B too short");
    }
    // Bands of 6 rows (24 accumulators on AVX-512, 12 on AVX2: each B load feeds 6 FMAs), and
    // one band of 4 or 2 for the rest (m is a multiple of 4).
    let mut i = 0;
    while i + 6 <= m {
        band::<S, 6>(i, (n, k), a, b, ldb, c, ldc, accumulate);
        i += 6;
    }
    match m - i {
        4 => band::<S, 4>(i, (n, k), a, b, ldb, c, ldc, accumulate),
        2 => band::<S, 2>(i, (n, k), a, b, ldb, c, ldc, accumulate),
        _ => {}
    }
}

/// Rows `i .. i + R` of [`block_matmul`], all columns.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn band<S: Simd, const R: usize>(
    i: usize,
    (n, k): (usize, usize),
    a: Operand,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let full = S::NV * S::W;
    let a_rows = &a.data[i * a.rs..];
    let mut j = 0;
    // One call written once for the three register widths below.
    macro_rules! tile_at {
        ($nv:literal, $j:expr) => {
            tile::<S, R, $nv>(
                k,
                a_rows,
                a.rs,
                a.cs,
                &b[$j..],
                ldb,
                &mut c[i * ldc + $j..],
                ldc,
                accumulate,
            )
        };
    }
    // SAFETY: `block_matmul`'s asserts bound every index the tiles touch: rows < m, columns < n,
    // depth < k; `dispatch` guarantees the instruction set.
    unsafe {
        while j + full <= n {
            // The arm is fixed per instruction set at compile time; only one survives.
            match S::NV {
                4 => tile_at!(4, j),
                _ => tile_at!(2, j),
            }
            j += full;
        }
        while j < n {
            tile_at!(1, j);
            j += S::W;
        }
    }
}

/// One `R × NV·W` tile of [`block_matmul`], accumulated in registers over the whole depth `k`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: Simd, const R: usize, const NV: usize>(
    k: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    let mut acc = [[S::zero(); NV]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = S::load(c.add(r * ldc + v * S::W));
            }
        }
    }
    for p in 0..k {
        let bp = b.add(p * ldb);
        let bv: [S::V; NV] = std::array::from_fn(|v| S::load(bp.add(v * S::W)));
        let ap = a.add(p * acs);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = S::splat(*ap.add(r * ars));
            for (x, &bx) in row.iter_mut().zip(&bv) {
                *x = S::fmadd(av, bx, *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            S::store(c.add(r * ldc + v * S::W), x);
        }
    }
}

/// `2^f` on `[−½, ½]` to 1.6 ulp (relative minimax fit), highest degree first.
const EXP2_POLY: [f32; 7] = [
    1.534_581_2e-4,
    1.339_993_1e-3,
    9.618_489e-3,
    5.550_328_6e-2,
    2.402_264_6e-1,
    std::f32::consts::LN_2,
    1.0,
];

/// `2^x` to about 1.6 ulp, branch-free so that loops over it vectorize: `2^n · 2^f` with
/// `n = round(x)` (by the 1.5·2²³ rounding trick) and `2^f`, `|f| ≤ ½`, by a degree-6 minimax
/// polynomial. Scores are kept in base 2 (`log₂e` is folded into the query scale) so that the
/// softmax needs no range reduction by `ln 2`. At or below −127 (−∞ included) it returns exactly
/// 0, which masked scores rely on; NaN gives NaN.
#[inline(always)]
pub(super) fn exp2<S: Simd>(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    let fma = S::mul_add;
    // Written as selects rather than `clamp` so that NaN passes through.
    let xc = if x < -127.0 { -127.0 } else { x };
    let xc = if xc > 127.0 { 127.0 } else { xc };
    let t = xc + MAGIC;
    let f = xc - (t - MAGIC);
    let p = EXP2_POLY[1..]
        .iter()
        .fold(EXP2_POLY[0], |p, &c| fma(p, f, c));
    // The low mantissa bits of `t` hold n; n + 127 in the exponent field is 2^n, and n = −127
    // gives the bits of 0.0.
    let n = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// `2^(x − m)` of 16 lanes (`x` and `m` of 16 values each).
#[inline(always)]
pub(super) fn exp2_sub<S: Simd>(x: &[f32], m: &[f32]) -> [f32; 16] {
    let mut d = [0.0f32; 16];
    for ((d, &x), &m) in d.iter_mut().zip(&x[..16]).zip(&m[..16]) {
        *d = x - m;
    }
    // SAFETY: `S` is the instruction set `dispatch` checked.
    unsafe { S::exp2_x16(d) }
}

/// Pulls the inputs of the task likely to run next on this thread toward L2, one part per
/// block step of the current task, so that their cache misses overlap this task's arithmetic
/// instead of stalling the next task's packing (measured: a head's backward runs ~8% faster
/// when its inputs are already cached). "Next" is the next task in the list: rayon hands each
/// thread contiguous runs of it.
#[derive(Clone, Copy)]
pub(super) struct Prefetch<'a, const N: usize> {
    pub data: [&'a [f32]; N],
    /// The number of steps over which the current task spreads the prefetches.
    pub steps: usize,
}

impl<'a, const N: usize> Prefetch<'a, N> {
    /// The blocks of `spans` (sorted, disjoint, within `0..count`) of a loop whose block `b`
    /// is step `base + b`. Each visited block prefetches the steps since the last visited one,
    /// and the end of the walk those left up to `base + count`: every step's part once,
    /// however many blocks a mask skips.
    pub fn walk(self, base: usize, count: usize, spans: &'a [(usize, usize)]) -> Walk<'a, N> {
        Walk {
            prefetch: self,
            spans: spans.iter(),
            current: 0..0,
            base,
            done: 0,
            count,
        }
    }

    /// Prefetches parts `steps` (of `self.steps`) of every slice.
    #[inline(always)]
    pub fn parts(&self, steps: std::ops::Range<usize>) {
        const LINE: usize = 16; // f32 per 64-byte cache line
        for d in self.data {
            let lines = d.len().div_ceil(LINE);
            let (lo, hi) = (
                lines * steps.start / self.steps.max(1),
                lines * steps.end / self.steps.max(1),
            );
            for line in lo..hi.min(lines) {
                let p = d[line * LINE..].as_ptr();
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch has no architectural effect; `p` is inside `d` anyway.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                    _mm_prefetch::<_MM_HINT_T1>(p.cast())
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = p;
            }
        }
    }
}

/// The iterator of [`Prefetch::walk`].
pub(super) struct Walk<'a, const N: usize> {
    prefetch: Prefetch<'a, N>,
    spans: std::slice::Iter<'a, (usize, usize)>,
    current: std::ops::Range<usize>,
    base: usize,
    /// Blocks `0..done` are prefetched.
    done: usize,
    count: usize,
}

impl<const N: usize> Iterator for Walk<'_, N> {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        loop {
            if let Some(b) = self.current.next() {
                self.prefetch_to(b + 1);
                return Some(b);
            }
            match self.spans.next() {
                Some(&(lo, hi)) => self.current = lo..hi,
                None => {
                    self.prefetch_to(self.count);
                    return None;
                }
            }
        }
    }
}

impl<const N: usize> Walk<'_, N> {
    #[inline(always)]
    fn prefetch_to(&mut self, block: usize) {
        let base = self.base;
        self.prefetch.parts(base + self.done..base + block);
        self.done = block;
    }
}

/// A buffer from this thread's reusable scratch memory, with unspecified contents (stale values
/// of an earlier task): every user writes what it reads. Each task of the forward and
/// backward takes one for its packed operands and blocks and carves it with [`Scratch::carve`];
/// reusing the memory spares every task the page faults of fresh allocations (about a tenth of
/// the time at T = 512). The memory (linear in T) stays with the thread for its next task.
pub(super) struct Scratch(Vec<f32>);

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Scratch {
    pub fn take(len: usize) -> Scratch {
        let mut buf = SCRATCH.with(|s| s.take());
        // Only growth is initialized: no memset of the whole buffer per task.
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch(buf)
    }

    /// Consecutive pieces of the given lengths.
    pub fn carve<const N: usize>(&mut self, lens: [usize; N]) -> [&mut [f32]; N] {
        let mut rest = &mut self.0[..lens.iter().sum()];
        lens.map(|n| {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            piece
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        SCRATCH.with(|s| {
            let kept = s.take();
            s.set(if kept.capacity() > buf.capacity() {
                kept
            } else {
                buf
            });
        });
    }
}

/// The first multiple of `to` at or above `x`.
pub(super) fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}
