//! General matrix multiply, `C ← act(α·A·B + β·C + bias)`, for row-major `C` and any-strided `A`,
//! `B` — so `A·B`, `A·Bᵀ` and `Aᵀ·B` need no materialized transpose (pass `MatRef::t`).
//!
//! The fast path is BLIS-style: `B` is packed into `KC×NR` column panels, `A` into `MR×KC` row
//! panels (both zero-padded to full tiles), and a register-blocked micro-kernel computes one
//! `MR×NR` tile of `C` per call. `driver.rs` holds the blocking and threading, shared by every
//! instruction set; each `kernel_*.rs` only supplies a micro-kernel and its block sizes:
//! AVX-512 14×32, AVX2+FMA 6×16, portable 4×16. Products with one output column (`n == 1`)
//! skip packing (`gemv.rs`); products of at most four row panels pack `B` in narrow runs that
//! stay in cache, or read it packed beforehand ([`PackedB`], a decoder's weights).
//!
//! A row of `C` gets the same bits whatever the other rows: every path sums each element in
//! the micro-kernel's order with the same k-slices, partial row panels run the micro-kernel's own
//! code for fewer rows, and the one- and two-row tiles over several panels (`thin.rs`) repeat its
//! arithmetic. So a sequence decodes identically alone or in any batch.
//!
//! `tests.rs` checks every path the CPU supports against `gemm_reference`, and holds an
//! ignored timing harness (`gemm_timing`).

mod driver;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
// AVX-512 intrinsics and `target_feature(enable = "avx512f")` are stable since Rust 1.89, above
// the crate's declared rust-version (1.85): this module needs that bump in Cargo.toml.
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod kernel_avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) use kernel_avx512::transpose16;
mod kernel_generic;
mod pack;
mod reference;
#[cfg(test)]
mod tests;
mod thin;

use crate::cpu::features::{active_isa, Isa};
use crate::cpu::pool;
pub(crate) use driver::apply_epilogue;
pub use driver::PARALLEL_MIN_MACS;
pub(crate) use gemv::dot;
pub(crate) use pack::transpose;
pub use reference::gemm_reference;

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// Panics unless every element `(i, j)` of the view lies inside `data`, so that the packing
    /// routines may index without bounds checks.
    pub(crate) fn validate(&self, name: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1).checked_mul(self.rs).and_then(|r| {
            (self.cols - 1)
                .checked_mul(self.cs)
                .and_then(|c| r.checked_add(c))
        });
        match last {
            Some(last) if last < self.data.len() => {}
            _ => panic!(
                "gemm: {name} view {}x{} with strides ({}, {}) exceeds its buffer of {} elements",
                self.rows,
                self.cols,
                self.rs,
                self.cs,
                self.data.len()
            ),
        }
    }
}

/// Elementwise function applied to each output after bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Identity,
    Relu,
    /// GELU with the exact erf form.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// `x·σ(x)`.
    Silu,
}

impl From<crate::desc::ActivationKind> for Activation {
    fn from(kind: crate::desc::ActivationKind) -> Self {
        use crate::desc::ActivationKind as K;
        match kind {
            K::Relu => Activation::Relu,
            K::Gelu => Activation::Gelu,
            K::GeluTanh => Activation::GeluTanh,
            K::Silu => Activation::Silu,
        }
    }
}

impl Activation {
    /// The op's kind of this activation, `None` for the identity: code that applies the
    /// activation outside the GEMM's store (the integer GEMM, say) uses the op's scalar form.
    pub fn kind(self) -> Option<crate::desc::ActivationKind> {
        use crate::desc::ActivationKind as K;
        match self {
            Activation::Identity => None,
            Activation::Relu => Some(K::Relu),
            Activation::Gelu => Some(K::Gelu),
            Activation::GeluTanh => Some(K::GeluTanh),
            Activation::Silu => Some(K::Silu),
        }
    }
}

/// What happens to each output element after the product: `act(α·AB + β·C + bias[j])`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// One value per output column, length `n`.
    pub bias: Option<&'a [f32]>,
    pub activation: Activation,
}

impl Epilogue<'_> {
    fn is_noop(&self) -> bool {
        self.bias.is_none() && self.activation == Activation::Identity
    }
}

/// `C (m×n, row stride ldc) ← act(α·A·B + β·C + bias)`, `A` is `m×k`, `B` is `k×n`.
/// If `beta == 0`, `C` is not read (NaN in C does not propagate). `parallel` lets the call use
/// the current rayon pool; pass `false` from code that is already parallel over an outer loop.
///
/// Panics if the views or `c` are too small for the shapes (callers validate user input first).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    gemm_with_isa(active_isa(), alpha, a, b, beta, c, ldc, epilogue, parallel);
}

/// [`gemm`] on a chosen instruction-set path instead of the process-wide one, so tests and
/// benchmarks can compare every path. Panics if this CPU cannot run `isa`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with_isa(
    isa: Isa,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    b.validate("B");
    dispatch(isa, alpha, a, b, None, beta, c, ldc, epilogue, parallel);
}

/// A `k×n` right-hand side packed once for many products, such as a layer's weights for every
/// step of a decoding: [`gemm_packed`] then skips packing `B`, which dominates products with
/// few rows. Packed for the process-wide instruction set.
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    /// The packed panels; or, for a single column (`n == 1`, which [`gemm`] multiplies without
    /// packing), that column.
    data: Vec<f32>,
}

impl PackedB {
    /// Packs `b` (any strides), using the thread pool.
    pub fn new(b: MatRef) -> PackedB {
        b.validate("B");
        let isa = active_isa();
        let threads = pool::threads().max(1);
        let data = pool::parallel_if(threads > 1, || match isa {
            _ if b.cols == 1 => (0..b.rows).map(|q| b.at(q, 0)).collect(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => pack_whole::<kernel_avx512::Avx512>(&b, threads),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pack_whole::<kernel_avx2::Avx2>(&b, threads),
            _ => pack_whole::<kernel_generic::Generic>(&b, threads),
        });
        PackedB {
            isa,
            k: b.rows,
            n: b.cols,
            data,
        }
    }
}

impl Drop for PackedB {
    fn drop(&mut self) {
        crate::cpu::alloc::recycle(std::mem::take(&mut self.data));
    }
}

/// `b` packed whole into a recycled buffer: a recurrent layer packs its `W_hh` at every call,
/// and a fresh zeroed megabyte cost more than the packing (packing writes every element,
/// padding lanes included).
fn pack_whole<K: driver::MicroKernel>(b: &MatRef, threads: usize) -> Vec<f32> {
    let mut data = crate::cpu::alloc::output(driver::packed_b_len::<K>(b.rows, b.cols));
    driver::pack_b_whole::<K>(b, &mut data, threads);
    data
}

/// [`gemm`] with `B` packed beforehand: the same result, bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    alpha: f32,
    a: MatRef,
    b: &PackedB,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    if b.n == 1 {
        let column = MatRef::row_major(&b.data, b.k, 1);
        dispatch(
            b.isa, alpha, a, column, None, beta, c, ldc, epilogue, parallel,
        );
        return;
    }
    // Only B's shape is read from this view: the values come from `b.data`.
    let shape = MatRef {
        data: &[],
        rows: b.k,
        cols: b.n,
        rs: 0,
        cs: 0,
    };
    dispatch(
        b.isa,
        alpha,
        a,
        shape,
        Some(&b.data),
        beta,
        c,
        ldc,
        epilogue,
        parallel,
    );
}

/// Checks the shapes and runs the product on `isa`'s kernels; `packed`: `B` packed beforehand
/// (then `b` is only its shape, and has not been validated).
#[allow(clippy::too_many_arguments)]
fn dispatch(
    isa: Isa,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    packed: Option<&[f32]>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    assert!(
        isa.is_supported(),
        "gemm: this CPU cannot run the {} path",
        isa.name()
    );
    assert_eq!(
        a.cols, b.rows,
        "gemm: inner dimensions differ (A is {}x{}, B is {}x{})",
        a.rows, a.cols, b.rows, b.cols
    );
    let (m, n) = (a.rows, b.cols);
    a.validate("A");
    if let Some(bias) = epilogue.bias {
        assert_eq!(
            bias.len(),
            n,
            "gemm: bias has {} elements, expected n = {n}",
            bias.len()
        );
    }
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        m == 1 || ldc >= n,
        "gemm: ldc = {ldc} is smaller than n = {n}"
    );
    let needed = (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n));
    assert!(
        needed.is_some_and(|needed| needed <= c.len()),
        "gemm: C ({m}x{n}, ldc {ldc}) does not fit in a buffer of {} elements",
        c.len()
    );

    let problem = driver::Problem {
        alpha,
        a,
        b,
        beta,
        ldc,
        epilogue: *epilogue,
    };
    let parallel = parallel && m * n * a.cols >= driver::PARALLEL_MIN_MACS && pool::threads() > 1;
    pool::parallel_if(parallel, || run_on(isa, &problem, packed, c, parallel));
}

/// Runs a checked problem (see [`dispatch`]) on `isa`'s kernels, on this thread's rayon pool
/// when `parallel`.
fn run_on(
    isa: Isa,
    problem: &driver::Problem,
    packed: Option<&[f32]>,
    c: &mut [f32],
    parallel: bool,
) {
    if parallel && split_rows(isa, problem, c, packed) {
        return;
    }
    if packed.is_none() && gemv::applies(problem) {
        // SAFETY: checked by `applies`; the views and `c` were validated by `dispatch`.
        unsafe { gemv::run(problem, c, parallel) };
        return;
    }
    // SAFETY (every arm): `dispatch` asserted `is_supported`, so the CPU has the features the
    // kernel was compiled for; the views and `c` were validated by `dispatch`; a packed B was
    // packed for this instruction set and shape (`PackedB`).
    unsafe {
        match (isa, packed) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, None) => driver::run::<kernel_avx512::Avx512>(problem, c, parallel),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Some(b)) => {
                driver::run_packed::<kernel_avx512::Avx512>(problem, c, parallel, b)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, None) => driver::run::<kernel_avx2::Avx2>(problem, c, parallel),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Some(b)) => {
                driver::run_packed::<kernel_avx2::Avx2>(problem, c, parallel, b)
            }
            (_, None) => driver::run::<kernel_generic::Generic>(problem, c, parallel),
            (_, Some(b)) => driver::run_packed::<kernel_generic::Generic>(problem, c, parallel, b),
        }
    }
}

/// Rows per thread below which splitting `C` into row bands does not pay.
const BAND_MIN_ROWS: usize = 128;

/// Runs a large product as one serial GEMM per thread on a band of `C`'s rows (and `A`'s), so
/// the threads never synchronize inside the call except once, after packing all of `B` together
/// (see `driver::run_bands`). Returns false, doing nothing, where the problem is too small, is a
/// matrix–vector product, or there is one thread.
fn split_rows(isa: Isa, problem: &driver::Problem, c: &mut [f32], packed: Option<&[f32]>) -> bool {
    let (a, ldc) = (problem.a, problem.ldc);
    let (m, n, k) = (a.rows, problem.b.cols, a.cols);
    let threads = pool::threads();
    if threads < 2
        || m < threads * BAND_MIN_ROWS
        || m * n * k < driver::PARALLEL_MIN_MACS
        || (packed.is_none() && gemv::applies(problem))
    {
        return false;
    }
    let band = m.div_ceil(threads);
    let mut bands = Vec::with_capacity(threads);
    let mut rest = c;
    for r0 in (0..m).step_by(band) {
        let rows = band.min(m - r0);
        let take = if r0 + rows == m {
            rest.len()
        } else {
            rows * ldc
        };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
        rest = tail;
        let a_band = MatRef {
            data: &a.data[r0 * a.rs..],
            rows,
            ..a
        };
        bands.push((a_band, head));
    }
    match isa {
        // SAFETY (every arm): as in `gemm_with_isa`; the bands are disjoint rows of the
        // validated problem.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            driver::run_bands::<kernel_avx512::Avx512>(problem, bands, packed)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { driver::run_bands::<kernel_avx2::Avx2>(problem, bands, packed) },
        _ => unsafe { driver::run_bands::<kernel_generic::Generic>(problem, bands, packed) },
    }
    true
}
