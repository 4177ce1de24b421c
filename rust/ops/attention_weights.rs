//! Attention that materializes its weights, for inspection (attention maps, `need_weights`):
//! the semantics of the fused `scaled_dot_product_attention`, composed of differentiable ops.
//! q (…, L, E), k (…, S, E), v (…, S, Ev) → out (…, L, Ev) and weights (…, L, S), the
//! probabilities after masking and before dropout. Costs O(L·S) memory per head.

use super::{dropout, elementwise, matmul, shape, softmax};
use crate::autograd::Var;
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Tensor};

const OP: &str = "attention_with_weights";

fn check(q: &[usize], k: &[usize], v: &[usize]) -> Result<()> {
    let ok = q.len() >= 2
        && q.len() == k.len()
        && k.len() == v.len()
        && q[..q.len() - 2] == k[..k.len() - 2]
        && k[..k.len() - 2] == v[..v.len() - 2]
        && q[q.len() - 1] == k[k.len() - 1]
        && k[k.len() - 2] == v[v.len() - 2];
    if !ok {
        return Err(TfmError::shape(
            OP,
            format!("query {}, key {} and value {} must be (…, L, E), (…, S, E) and (…, S, Ev) with equal leading dimensions", shape_str(q), shape_str(k), shape_str(v)),
        ));
    }
    Ok(())
}

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
    check(&qs, &ks, &vs)?;
    if is_causal && attn_mask.is_some() {
        return Err(TfmError::value(
            OP,
            "give either attn_mask or is_causal=True, not both (as in PyTorch)",
        ));
    }
    if !(0.0..1.0).contains(&dropout_p) {
        return Err(TfmError::value(
            OP,
            format!("dropout_p must be in [0, 1), got {dropout_p}"),
        ));
    }
    let (l, s, e) = (qs[qs.len() - 2], ks[ks.len() - 2], qs[qs.len() - 1]);
    let scale = scale.unwrap_or(1.0 / (e as f32).sqrt());
    let scores = matmul::matmul(q, &shape::transpose(k, -2, -1)?)?;
    let scores = elementwise::mul(&scores, &Var::constant(Tensor::scalar(scale)))?;
    let causal = is_causal.then(|| causal_mask(l, s));
    let weights = softmax::softmax(&scores, causal.as_ref().or(attn_mask))?;
    let dropped = dropout::dropout(&weights, dropout_p as f64, dropout_p > 0.0)?;
    Ok((matmul::matmul(&dropped, v)?, weights))
}
