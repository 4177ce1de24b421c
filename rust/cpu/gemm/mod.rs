//! General matrix multiply, `C ← act(α·A·B + β·C + bias)`, for row-major `C` and any-strided `A`,
//! `B` — so `A·B`, `A·Bᵀ` and `Aᵀ·B` need no materialized transpose (pass `MatRef::t`).
//!
//! PLACEHOLDER: this is the naive reference; the packed, cache-blocked SIMD implementation
//! replaces `gemm`'s body while keeping its contract.

mod reference;

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
    let _ = parallel;
    gemm_reference(alpha, a, b, beta, c, ldc, epilogue);
}
