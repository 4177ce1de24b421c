//! Attention that materializes its weights, for inspection (attention maps, `need_weights`):
//! the semantics of the fused `scaled_dot_product_attention`, composed of differentiable ops.
//! q (…, L, E), k (…, S, E), v (…, S, Ev) → out (…, L, Ev) and weights (…, L, S), the
//! probabilities after masking and before dropout. Costs O(L·S) memory per head.

use super::{check_arguments, Checked};
use crate::autograd::Var;
use crate::error::Result;
use crate::ops::{dropout, elementwise, matmul, shape, softmax};
use crate::tensor::Tensor;

const OP: &str = "attention_with_weights";

/// 0 where query `i` may see key `j` (j ≤ i), −∞ elsewhere: (L, S).
fn causal_mask(l: usize, s: usize) -> Tensor {
    let data = (0..l)
        .flat_map(|i| (0..s).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::new(data, &[l, s]).expect("sized to (l, s)")
}

pub fn attention_with_weights(
    q: &Var,
    k: &Var,
    v: &Var,
    attn_mask: Option<&Tensor>,
    dropout_p: f32,
    is_causal: bool,
    scale: Option<f32>,
) -> Result<(Var, Var)> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let Checked {
        dims: [l, s, _, _],
        scale,
        ..
    } = check_arguments(OP, [&qs, &ks, &vs], attn_mask, dropout_p, is_causal, scale)?;
    let scores = matmul::matmul(q, &shape::transpose(k, -2, -1)?)?;
    let scores = elementwise::mul(&scores, &Var::constant(Tensor::scalar(scale)))?;
    let causal = is_causal.then(|| causal_mask(l, s));
    let weights = softmax::softmax(&scores, causal.as_ref().or(attn_mask))?;
    let dropped = dropout::dropout(&weights, dropout_p as f64, dropout_p > 0.0)?;
    Ok((matmul::matmul(&dropped, v)?, weights))
}
