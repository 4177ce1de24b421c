//! The bfloat16 GEMM of mixed-precision training: `C ← act(α·A·B + β·C + bias)` like
//! [`crate::cpu::gemm::gemm`] (same views, same epilogue, `C` in f32), but with `A` and `B`
//! rounded to bfloat16 (round to nearest even) and the products summed in f32.
//!
//! Two paths compute the same mathematical result, up to f32 summation order:
//! - [`Bf16Path::Native`]: AVX-512 BF16 (`vdpbf16ps`). The operands are rounded while they are
//!   packed into pairs of bf16 along `k` (`native.rs`), and each instruction does 32
//!   multiply-adds per zmm where the f32 kernel does 16.
//! - [`Bf16Path::Emulated`]: the rest of the machines. The operands are rounded into f32 copies
//!   (a bf16 value is exact in f32, and so is the product of two) and the float32 GEMM multiplies
//!   those. It is correct but slower than plain f32 (the extra copies), so the training code says
//!   so once when it falls back to it (see `precision_note`).
//!
//! The path follows the process-wide instruction set ([`active_isa`]): forcing `TFM_RS_ISA=avx2`
//! or `generic` also forces the emulation, so tests can compare the two paths on one machine.
//!
//! [`round_bf16`] rounds in software (NaN stays NaN, subnormals are kept); the native packing
//! rounds with `vcvtne2ps2bf16`, which differs only in turning f32 subnormals into 0 — and
//! `vdpbf16ps` treats bf16 subnormals (|x| < 2⁻¹²⁶) as zero anyway and flushes subnormal
//! results, which changes a result by at most ~1e-38 of the other factor.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod native;
#[cfg(test)]
mod tests;

use crate::cpu::features::{active_isa, Isa};
use crate::cpu::gemm::{gemm, gemm_with_isa, Epilogue, MatRef};
use crate::cpu::pool;
use crate::cpu::simd::simd_kernel;
pub use crate::desc::Precision;
use rayon::prelude::*;

/// The bf16 bits (upper half of the f32) nearest to `x`, ties to even; NaN stays a (quiet) NaN.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// How a bf16 product is computed on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// AMX tiles (`tdpbf16ps`, Sapphire Rapids and later).
    Amx,
    /// `vdpbf16ps` on AVX-512 BF16.
    Native,
    /// bf16-rounded f32 copies through the float32 GEMM of this instruction set.
    Emulated(Isa),
}

impl Bf16Path {
    /// Whether this machine can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Bf16Path::Amx => Bf16Path::Native.is_supported() && amx::available(),
            #[cfg(target_arch = "x86_64")]
            Bf16Path::Native => {
                Isa::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Path::Amx | Bf16Path::Native => false,
            Bf16Path::Emulated(isa) => isa.is_supported(),
        }
    }

    /// The path [`gemm_bf16`] takes while the AVX-512 path is in use: AMX where the CPU and the
    /// OS allow it, else `vdpbf16ps` where the CPU has AVX-512 BF16; otherwise the emulation on
    /// the active instruction set.
    pub fn active() -> Bf16Path {
        let isa = active_isa();
        if isa != Isa::Avx512 {
            return Bf16Path::Emulated(isa);
        }
        [Bf16Path::Amx, Bf16Path::Native]
            .into_iter()
            .find(|p| p.is_supported())
            .unwrap_or(Bf16Path::Emulated(isa))
    }

    pub fn name(self) -> String {
        match self {
            Bf16Path::Amx => "amx_bf16".to_string(),
            Bf16Path::Native => "avx512_bf16".to_string(),
            Bf16Path::Emulated(isa) => format!("emulated on {}", isa.name()),
        }
    }
}

/// One sentence for users about what `precision` costs here: `None` where it runs natively
/// (or is float32); else says that bf16 is emulated, exactly but more slowly than float32.
pub fn precision_note(precision: Precision) -> Option<String> {
    match (precision, Bf16Path::active()) {
        (Precision::Bf16, Bf16Path::Emulated(isa)) => Some(format!(
            "this CPU has no AVX-512 BF16 (or the {} path is forced): bf16 products are emulated \
             with float32 arithmetic on bf16-rounded inputs, which gives the bf16 results but runs \
             slower than float32",
            isa.name()
        )),
        _ => None,
    }
}

/// [`gemm`] at `precision`: float32, or bf16 inputs with f32 accumulation ([`gemm_bf16`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_as(
    precision: Precision,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    match precision {
        Precision::F32 => gemm(alpha, a, b, beta, c, ldc, epilogue, parallel),
        Precision::Bf16 => gemm_bf16(alpha, a, b, beta, c, ldc, epilogue, parallel),
    }
}

/// `C (m×n, row stride ldc) ← act(α·bf16(A)·bf16(B) + β·C + bias)` with f32 accumulation, on the
/// active path. Same contract as [`gemm`] (panics on views that do not fit).
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
    parallel: bool,
) {
    gemm_bf16_with(
        Bf16Path::active(),
        alpha,
        a,
        b,
        beta,
        c,
        ldc,
        epilogue,
        parallel,
    );
}

/// [`gemm_bf16`] on a chosen path, for tests and benchmarks. Panics if the CPU cannot run it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_with(
    path: Bf16Path,
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
        path.is_supported(),
        "gemm_bf16: this CPU cannot run the {} path",
        path.name()
    );
    let (m, n, k) = (a.rows, b.cols, a.cols);
    // Empty products and a mismatch go to the float32 GEMM: there is nothing to round, and it
    // checks and reports the shapes the same way.
    if m == 0 || n == 0 || k == 0 || a.cols != b.rows {
        gemm(alpha, a, b, beta, c, ldc, epilogue, parallel);
        return;
    }
    validate(&a, &b, c, ldc, epilogue);
    match path {
        #[cfg(target_arch = "x86_64")]
        Bf16Path::Amx => amx::gemm(alpha, a, b, beta, c, ldc, epilogue, parallel),
        #[cfg(target_arch = "x86_64")]
        Bf16Path::Native => native::gemm(alpha, a, b, beta, c, ldc, epilogue, parallel),
        #[cfg(not(target_arch = "x86_64"))]
        Bf16Path::Amx | Bf16Path::Native => unreachable!("is_supported is false off x86-64"),
        Bf16Path::Emulated(isa) => {
            let (a_data, b_data) = (rounded_span(&a), rounded_span(&b));
            let a = MatRef { data: &a_data, ..a };
            let b = MatRef { data: &b_data, ..b };
            gemm_with_isa(isa, alpha, a, b, beta, c, ldc, epilogue, parallel);
        }
    }
}

/// Panics unless the views fit their buffers and `C` (`m×n` at stride `ldc`) and the bias fit
/// theirs, so that the kernels may index without bounds checks (`m, n, k > 0`).
fn validate(a: &MatRef, b: &MatRef, c: &[f32], ldc: usize, epilogue: &Epilogue) {
    let (m, n) = (a.rows, b.cols);
    a.validate("A");
    b.validate("B");
    if let Some(bias) = epilogue.bias {
        assert_eq!(
            bias.len(),
            n,
            "gemm_bf16: bias has {} elements, expected n = {n}",
            bias.len()
        );
    }
    assert!(
        m == 1 || ldc >= n,
        "gemm_bf16: ldc = {ldc} is smaller than n = {n}"
    );
    let needed = (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n));
    assert!(
        needed.is_some_and(|needed| needed <= c.len()),
        "gemm_bf16: C ({m}x{n}, ldc {ldc}) does not fit in a buffer of {} elements",
        c.len()
    );
}

/// The part of `m.data` the view reaches, rounded to bf16 (same strides). Panics, as the GEMM
/// does, if the view does not fit its buffer.
fn rounded_span(m: &MatRef) -> Vec<f32> {
    let last = (m.rows - 1) * m.rs + (m.cols - 1) * m.cs;
    assert!(
        last < m.data.len(),
        "gemm_bf16: a {}x{} view with strides ({}, {}) exceeds its buffer of {} elements",
        m.rows,
        m.cols,
        m.rs,
        m.cs,
        m.data.len()
    );
    round_slice(&m.data[..=last])
}

/// `data` rounded to bf16, as f32 values (the input of an emulated product, or of a kernel that
/// has no bf16 form, such as the fused attention), in a buffer from the op-output pool.
pub fn round_slice(data: &[f32]) -> Vec<f32> {
    let mut out = crate::cpu::alloc::output(data.len());
    // Chunks of 64 Ki values in parallel: a q, k or v of a training batch is ~1M.
    const CHUNK: usize = 1 << 16;
    if data.len() > CHUNK && pool::threads() > 1 {
        pool::parallel(|| {
            out.par_chunks_mut(CHUNK)
                .zip(data.par_chunks(CHUNK))
                .for_each(|(o, d)| round_chunk(o, d))
        });
    } else {
        round_chunk(&mut out, data);
    }
    out
}

simd_kernel! {
    /// `o[i] = round_bf16(d[i])`, vectorized (the NaN test becomes a select).
    fn round_chunk(o: &mut [f32], d: &[f32]) {
        for (o, &x) in o.iter_mut().zip(d) {
            *o = round_bf16(x);
        }
    }
}
