//! `linear(x, W, b) = x·Wᵀ + b` on the GPU, with the semantics of [`crate::ops::linear`]:
//! x (…, in), W (out, in), b (out,) → (…, out). The forward is one GEMM accumulating onto the
//! bias broadcast to every row (β = 1); the backward is dx = G·W and dW = Gᵀ·x (GEMMs over the
//! flattened rows) and db = Σ_rows G.

use super::gemm::{gemm, GemmShape};
use crate::error::Result;
use crate::ops::broadcast::{broadcast_to, sum_to};
use crate::ops::linear::{check, Needs};
use crate::tensor::Tensor;

const OP: &str = "linear";

/// y (…, out) = x·Wᵀ + b for GPU tensors.
pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (rows, inp, out) = check(x, w, b)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("checked ndim ≥ 1") = out;
    let (y, beta) = match b {
        Some(b) => (broadcast_to(OP, b, &[rows, out])?.reshape(&shape)?, 1.0),
        None => (Tensor::gpu_zeros(&shape)?, 0.0),
    };
    let s = GemmShape {
        trans_b: true,
        ..GemmShape::new(rows, inp, out)
    };
    gemm(y.buffer(OP)?, x.buffer(OP)?, w.buffer(OP)?, &s, 1.0, beta)?;
    Ok(y)
}

/// (dx, dW, db) from the output gradient g (…, out), each `None` unless `needs` asks for it.
pub fn backward(
    g: &Tensor,
    x: &Tensor,
    w: &Tensor,
    needs: Needs,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (rows, inp) = x.rows_cols();
    let out = w.shape()[0];
    let product = |a: &Tensor, b: &Tensor, s: GemmShape, shape: &[usize]| {
        let c = Tensor::gpu_zeros(shape)?;
        gemm(c.buffer(OP)?, a.buffer(OP)?, b.buffer(OP)?, &s, 1.0, 0.0)?;
        Ok::<_, crate::error::TfmError>(c)
    };
    // dx (rows, in) = G (rows, out) · W (out, in).
    let dx = needs
        .x
        .then(|| product(g, w, GemmShape::new(rows, out, inp), x.shape()))
        .transpose()?;
    // dW (out, in) = Gᵀ · x (rows, in), G stored (rows, out).
    let dw = needs
        .w
        .then(|| {
            let s = GemmShape {
                trans_a: true,
                ..GemmShape::new(out, rows, inp)
            };
            product(g, x, s, w.shape())
        })
        .transpose()?;
    let db = needs
        .b
        .then(|| sum_to(&g.reshape(&[rows, out])?, &[out]))
        .transpose()?;
    Ok((dx, dw, db))
}
