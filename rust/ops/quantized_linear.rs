//! `y = x·Wᵀ + b` with `W` in int8 ([`QuantizedWeight`]), for inference: `x` quantized per row
//! at run time, the product in [`crate::cpu::qgemm`]. No backward: a quantized layer is not
//! trained, and asking for a gradient through one is an error.

use crate::autograd::{is_grad_enabled, Var};
use crate::cpu::qgemm::{quantized_matmul, PackedQB, QIsa, QuantizedMatrix};
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Tensor};
use std::ops::Range;
use std::sync::{Arc, Mutex};

const OP: &str = "quantized_linear";

/// A packed row range of a weight, for one ISA path.
type Pack = (QIsa, Range<usize>, Arc<PackedQB>);

/// An int8 weight `(out, in)` with its per-output-channel scales, and its packed forms, made
/// on first use of each row range (all rows; or q alone, or k and v, of a stacked attention
/// projection) and kept: a layer is packed once however many calls and decoders use it.
pub struct QuantizedWeight {
    pub matrix: QuantizedMatrix,
    packs: Mutex<Vec<Pack>>,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedWeight({}, {})",
            self.matrix.rows, self.matrix.cols
        )
    }
}

impl QuantizedWeight {
    pub fn new(matrix: QuantizedMatrix) -> QuantizedWeight {
        QuantizedWeight {
            matrix,
            packs: Mutex::new(Vec::new()),
        }
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.matrix.rows, self.matrix.cols)
    }

    /// Output channels `rows` packed for the active path. Panics if `rows` is out of range.
    pub fn packed(&self, rows: Range<usize>) -> Arc<PackedQB> {
        let isa = QIsa::active();
        let mut packs = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, p)) = packs.iter().find(|(i, r, _)| *i == isa && *r == rows) {
            return Arc::clone(p);
        }
        let p = Arc::new(PackedQB::with_isa(isa, &self.matrix, rows.clone()));
        packs.push((isa, rows, Arc::clone(&p)));
        p
    }
}

/// `x (*, in)` times output channels `rows` of `w` (all when `None`), plus `bias (len,)`:
/// `(*, len)` where `len` is the number of channels.
pub fn quantized_linear(
    x: &Var,
    w: &QuantizedWeight,
    rows: Option<Range<usize>>,
    bias: Option<&Tensor>,
) -> Result<Var> {
    if is_grad_enabled() && x.requires_grad() {
        return Err(TfmError::autograd(
            OP,
            "a quantized (int8) layer is inference only: it has no gradient; run it under \
             no_grad, or train the float model and quantize it afterwards",
        ));
    }
    let (out, inp) = w.shape();
    let rows = rows.unwrap_or(0..out);
    if rows.start > rows.end || rows.end > out {
        return Err(TfmError::index(
            OP,
            format!("output channels {rows:?} of a weight with {out}"),
        ));
    }
    let x = x.value();
    if x.is_gpu() || bias.is_some_and(|b| b.is_gpu()) {
        return Err(TfmError::device(
            OP,
            "int8 layers run on the CPU only; move the model to the CPU before quantizing it",
        ));
    }
    let shape = x.shape().to_vec();
    if shape.last() != Some(&inp) {
        return Err(TfmError::shape(
            OP,
            format!(
                "input {} does not end in in_features={inp}",
                shape_str(&shape)
            ),
        ));
    }
    let bias = Tensor::cpu_opt(OP, bias)?;
    if let Some(b) = bias {
        if b.len() != rows.len() {
            return Err(TfmError::shape(
                OP,
                format!("bias has {} values for {} outputs", b.len(), rows.len()),
            ));
        }
    }
    let m = shape[..shape.len() - 1].iter().product();
    let y = quantized_matmul(x.cpu(OP)?.data(), m, &w.packed(rows.clone()), bias, true)?;
    let mut out_shape = shape;
    *out_shape.last_mut().expect("checked: at least one axis") = rows.len();
    Ok(Var::constant(Tensor::new(y, &out_shape)?))
}
