//! `matmul` on the GPU with the semantics of [`crate::ops::matmul`] (1-D promotion, broadcast
//! batch dimensions), on tensors: one batched GEMM for the forward and one per operand for the
//! backward. An operand without batch dimensions is shared by every product of the batch; one
//! whose batch dimensions broadcast is first expanded ([`crate::ops::broadcast::broadcast_to`]),
//! and its gradient summed back ([`crate::ops::broadcast::sum_to`]).

use super::gemm::{gemm, GemmShape};
use crate::error::Result;
use crate::ops::broadcast::{broadcast_to, sum_to};
use crate::ops::matmul::Plan;
use crate::tensor::{numel, Tensor};

const OP: &str = "matmul";

/// `x` as a stack `(batch…, rows, cols)` expanded to `out_batch`, and whether it has one matrix
/// per product (`false`: no batch dimensions, one matrix shared by all).
fn operand(
    x: &Tensor,
    batch: &[usize],
    out_batch: &[usize],
    rows: usize,
    cols: usize,
) -> Result<(Tensor, bool)> {
    if batch.is_empty() {
        return Ok((x.reshape(&[rows, cols])?, false));
    }
    let x = x.reshape(&[batch, &[rows, cols]].concat())?;
    Ok((
        broadcast_to(OP, &x, &[out_batch, &[rows, cols]].concat())?,
        true,
    ))
}

/// `a · b` for the plan `p` of their shapes.
pub(crate) fn forward(a: &Tensor, b: &Tensor, p: &Plan) -> Result<Tensor> {
    let batch = numel(&p.out_batch);
    let out = Tensor::gpu_zeros(&p.out_shape)?;
    let (a, batched_a) = operand(a, &p.a_batch, &p.out_batch, p.m, p.k)?;
    let (b, batched_b) = operand(b, &p.b_batch, &p.out_batch, p.k, p.n)?;
    // Without batch dimensions on b, all rows of a form one product.
    let s = if batched_b {
        GemmShape {
            batch,
            batched_a,
            batched_b,
            ..GemmShape::new(p.m, p.k, p.n)
        }
    } else {
        GemmShape::new(batch * p.m, p.k, p.n)
    };
    gemm(out.buffer(OP)?, a.buffer(OP)?, b.buffer(OP)?, &s, 1.0, 0.0)?;
    Ok(out)
}

/// `(dA, dB)` from the output gradient `g`: `dA = G·Bᵀ`, `dB = Aᵀ·G`, each summed over the
/// batch dimensions its operand was broadcast along.
pub(crate) fn backward(g: &Tensor, a: &Tensor, b: &Tensor, p: &Plan) -> Result<(Tensor, Tensor)> {
    let batch = numel(&p.out_batch);
    let (m, k, n) = (p.m, p.k, p.n);
    let (av, batched_a) = operand(a, &p.a_batch, &p.out_batch, m, k)?;
    let (bv, batched_b) = operand(b, &p.b_batch, &p.out_batch, k, n)?;
    let full = |rows, cols| Tensor::gpu_zeros(&[&p.out_batch[..], &[rows, cols]].concat());
    // dA (out_batch, m, k) = G (out_batch, m, n) · Bᵀ.
    let ga = full(m, k)?;
    let s = GemmShape {
        batch,
        trans_b: true,
        batched_b,
        ..GemmShape::new(m, n, k)
    };
    gemm(ga.buffer(OP)?, g.buffer(OP)?, bv.buffer(OP)?, &s, 1.0, 0.0)?;
    let ga = sum_to(&ga, &[&p.a_batch[..], &[m, k]].concat())?.reshape(a.shape())?;
    // dB (out_batch, k, n) = Aᵀ · G; for a shared b, one product over all rows.
    let gb = if batched_b {
        let gb = full(k, n)?;
        let s = GemmShape {
            batch,
            trans_a: true,
            batched_a,
            ..GemmShape::new(k, m, n)
        };
        gemm(gb.buffer(OP)?, av.buffer(OP)?, g.buffer(OP)?, &s, 1.0, 0.0)?;
        sum_to(&gb, &[&p.b_batch[..], &[k, n]].concat())?
    } else {
        let gb = Tensor::gpu_zeros(&[k, n])?;
        let s = GemmShape {
            trans_a: true,
            ..GemmShape::new(k, batch * m, n)
        };
        gemm(gb.buffer(OP)?, av.buffer(OP)?, g.buffer(OP)?, &s, 1.0, 0.0)?;
        gb
    };
    Ok((ga, gb.reshape(b.shape())?))
}
