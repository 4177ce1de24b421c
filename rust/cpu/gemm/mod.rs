//! General matrix multiply, `C ← act(α·A·B + β·C + bias)`, for row-major `C` and any-strided `A`,
//! `B` — so `A·B`, `A·Bᵀ` and `Aᵀ·B` need no materialized transpose (pass `MatRef::t`).
//!
//! The fast path is BLIS-style: `B` is packed into `KC×NR` column panels, `A` into `MR×KC` row
//! panels (both zero-padded to full tiles), and a register-blocked micro-kernel computes one
//! `MR×NR` tile of `C` per call. `driver.rs` holds the blocking and threading, shared by every
//! instruction set; each `kernel_*.rs` only supplies a micro-kernel and its block sizes:
//! AVX-512 14×32, AVX2+FMA 6×16, portable 4×16. Matrix–vector shapes (`m == 1` or `n == 1`)
//! skip packing (`gemv.rs`). `tests.rs` checks every path the CPU supports against
//! `gemm_reference`, and holds an ignored timing harness (`gemm_timing`).

mod driver;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
// AVX-512 intrinsics and `target_feature(enable = "avx512f")` are stable since Rust 1.89, above
// the crate's declared rust-version (1.85): this module needs that bump in Cargo.toml.
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod kernel_avx512;
mod kernel_generic;
mod pack;
mod reference;
#[cfg(test)]
mod tests;

use crate::cpu::features::{active_isa, Isa};
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
    fn validate(&self, name: &str) {
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
    b.validate("B");
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
    if parallel && split_rows(isa, alpha, a, b, beta, c, ldc, epilogue) {
        return;
    }
    if gemv::applies(&problem) {
        // SAFETY: checked by `applies`; the views and `c` were validated above.
        unsafe { gemv::run(&problem, c, parallel) };
        return;
    }
    match isa {
        // SAFETY (both arms): `is_supported` was asserted above, so the CPU has the features the
        // kernel was compiled for; the views and `c` were validated above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { driver::run::<kernel_avx512::Avx512>(&problem, c, parallel) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { driver::run::<kernel_avx2::Avx2>(&problem, c, parallel) },
        // SAFETY: the portable kernel needs no CPU feature; the views were validated above.
        _ => unsafe { driver::run::<kernel_generic::Generic>(&problem, c, parallel) },
    }
}

/// Rows per thread below which splitting `C` into row bands does not pay.
const BAND_MIN_ROWS: usize = 128;

/// Runs a large product as one serial GEMM per thread on a band of `C`'s rows (and `A`'s), so
/// the threads never synchronize inside the call except once, after packing all of `B` together
/// (see `driver::run_bands`). Returns false, doing nothing, where the problem is too small, is a
/// matrix–vector product, or there is one thread.
#[allow(clippy::too_many_arguments)]
fn split_rows(
    isa: Isa,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
) -> bool {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let threads = rayon::current_num_threads();
    let problem = driver::Problem {
        alpha,
        a,
        b,
        beta,
        ldc,
        epilogue: *epilogue,
    };
    if threads < 2
        || m < threads * BAND_MIN_ROWS
        || m * n * k < driver::PARALLEL_MIN_MACS
        || gemv::applies(&problem)
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
        Isa::Avx512 => unsafe { driver::run_bands::<kernel_avx512::Avx512>(&problem, bands) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { driver::run_bands::<kernel_avx2::Avx2>(&problem, bands) },
        _ => unsafe { driver::run_bands::<kernel_generic::Generic>(&problem, bands) },
    }
    true
}
