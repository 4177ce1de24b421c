//! Mixed precision on the autograd graph (the `Precision` descriptor is in `desc`).
//!
//! The products that take a [`Precision`] (linear, matmul, attention) carry it from the call
//! to their GEMMs, forward and backward; this module holds what they share: the check that the
//! device can run it, and the bf16 cast of an input for kernels that have no bf16 form (the
//! fused attention computes in f32 on bf16-rounded q, k, v).

use crate::autograd::{Backward, Var};
pub use crate::cpu::gemm_bf16::precision_note;
pub use crate::desc::Precision;
use crate::error::{Result, TfmError};
use crate::tensor::{Device, Tensor};

/// Errors unless `precision` runs on `device`: bf16 is implemented on the CPU only.
pub fn check_device(op: &'static str, precision: Precision, device: Device) -> Result<()> {
    if precision == Precision::Bf16 && device != Device::Cpu {
        return Err(TfmError::device(
            op,
            "bf16 mixed precision runs on the CPU only; use float32 on the GPU",
        ));
    }
    Ok(())
}

/// The cast's backward: the gradient passes through (the cast is the identity up to rounding,
/// as PyTorch's autocast casts are).
struct CastBackward;

impl Backward for CastBackward {
    fn name(&self) -> &'static str {
        "autocast"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone())])
    }
}

/// `x` rounded to `precision` (float32: `x` itself), differentiable with a pass-through
/// gradient.
pub fn cast(op: &'static str, x: &Var, precision: Precision) -> Result<Var> {
    check_device(op, precision, x.device())?;
    match precision {
        Precision::F32 => Ok(x.clone()),
        Precision::Bf16 => {
            let v = x.value();
            let rounded = Tensor::new(
                crate::cpu::gemm_bf16::round_slice(v.cpu(op)?.data()),
                v.shape(),
            )?;
            Ok(Var::from_op(rounded, vec![x.clone()], CastBackward))
        }
    }
}
