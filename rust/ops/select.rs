//! Comparisons and selections, with NumPy broadcasting. float32 is the only dtype, so a
//! comparison's result is a 0/1 float tensor and a condition is "nonzero".
//!
//! - `compare(kind, a, b)`: `a ⋈ b` as 1/0 (NaN compares false except for `!=`); no gradient.
//! - `where_(cond, x, y)`: `cond ≠ 0 ? x : y` over the broadcast shape. Saves the condition;
//!   the gradient goes to the operand each position took, summed to its shape.
//! - `clamp(x, min, max)`: `min(max(x, min), max)`, NaN stays NaN. Saves x; the gradient passes
//!   where `min < x < max` (0 at the bounds), as PyTorch's.
//! - `maximum(a, b)` / `minimum(a, b)`: NaN propagates. Save both operands; ties split the
//!   gradient in halves, as PyTorch's.
//!
//! No GPU kernels yet: GPU operands are a `Device` error naming the op.

use super::broadcast::{broadcast_strides, map1, map2, row_offset, sum_to};
use super::rows::{for_each_row, rows_mut};
use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::Result;
use crate::tensor::{broadcast_shapes, numel, Tensor};

/// An elementwise comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

fn indicator(holds: bool) -> f32 {
    if holds {
        1.0
    } else {
        0.0
    }
}

/// `a ⋈ b` elementwise as 1.0 / 0.0 over the broadcast shape.
pub fn compare(kind: Comparison, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "compare";
    let (a, b) = (a.cpu(OP)?, b.cpu(OP)?);
    // One closure per kind: a match inside the element loop would keep it from vectorizing.
    match kind {
        Comparison::Eq => map2(OP, a, b, |x, y| indicator(x == y)),
        Comparison::Ne => map2(OP, a, b, |x, y| indicator(x != y)),
        Comparison::Lt => map2(OP, a, b, |x, y| indicator(x < y)),
        Comparison::Le => map2(OP, a, b, |x, y| indicator(x <= y)),
        Comparison::Gt => map2(OP, a, b, |x, y| indicator(x > y)),
        Comparison::Ge => map2(OP, a, b, |x, y| indicator(x >= y)),
    }
}

simd_kernel! {
    /// `o = f(a, b, c)` over equally long slices (see `broadcast::map1_chunk`).
    fn map3_row(o: &mut [f32], abc: [&[f32]; 3], f: &impl Fn(f32, f32, f32) -> f32) {
        let [a, b, c] = abc;
        for (((o, &x), &y), &z) in o.iter_mut().zip(a).zip(b).zip(c) {
            *o = f(x, y, z);
        }
    }
}

/// Elements per parallel task of [`map3`].
const CHUNK: usize = 1 << 13;

/// `f(a, b, c)` elementwise over the broadcast shape of three host tensors, reading each
/// through its broadcast strides (a scalar or a mask broadcast over heads is never expanded).
fn map3(
    op: &'static str,
    ts: [&Tensor; 3],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    let shape = broadcast_shapes(op, ts[0].shape(), ts[1].shape())?;
    let shape = broadcast_shapes(op, &shape, ts[2].shape())?;
    let (a, b, c) = (
        ts[0].cpu(op)?.data(),
        ts[1].cpu(op)?.data(),
        ts[2].cpu(op)?.data(),
    );
    let n = numel(&shape);
    let inner = shape.last().copied().unwrap_or(1).max(1);
    if n == 0 {
        return Tensor::new(Vec::new(), &shape);
    }
    let strides = ts.map(|t| broadcast_strides(t.shape(), &shape));
    // Along the last dimension an operand is contiguous or broadcast (stride 1 or 0); a
    // broadcast one is spread into a row buffer, so that the row kernel reads three slices.
    let expand = |k: usize| strides[k].last().is_some_and(|&s| s == 0) && inner > 1;
    let mut out = crate::cpu::alloc::output(n);
    // Tasks of whole rows (of the last dimension), about CHUNK elements each.
    let per = CHUNK.div_ceil(inner).max(1);
    let rows = n / inner;
    for_each_row(
        rows_mut(&mut out, rows.div_ceil(per), per * inner),
        per * inner,
        |task, o| {
            let mut spread = [(); 3].map(|_| Vec::new());
            for (i, o) in o.chunks_mut(inner).enumerate() {
                let row = task * per + i;
                let data = [a, b, c];
                let at: [usize; 3] = std::array::from_fn(|k| row_offset(row, &shape, &strides[k]));
                for (k, buf) in spread.iter_mut().enumerate() {
                    if expand(k) {
                        buf.clear();
                        buf.resize(inner, data[k][at[k]]);
                    }
                }
                let operand: [&[f32]; 3] = std::array::from_fn(|k| {
                    if expand(k) {
                        &spread[k][..]
                    } else {
                        &data[k][at[k]..][..inner]
                    }
                });
                map3_row(o, operand, &f);
            }
        },
    );
    Tensor::new(out, &shape)
}

struct WhereBackward {
    cond: Tensor,
}

impl Backward for WhereBackward {
    fn name(&self) -> &'static str {
        "where"
    }
    fn backward(&self, g: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let zero = Tensor::scalar(0.0);
        let mut grads = Vec::with_capacity(2);
        for (k, taken) in [true, false].into_iter().enumerate() {
            grads.push(if inputs[k].requires_grad() {
                let routed = map3("where", [&self.cond, g, &zero], |c, g, z| {
                    if (c != 0.0) == taken {
                        g
                    } else {
                        z
                    }
                })?;
                Some(sum_to(&routed, &inputs[k].shape())?)
            } else {
                None
            });
        }
        Ok(grads)
    }
}

/// `value` where `mask ≠ 0`, else `x` (`Tensor.masked_fill`): [`where_`] with the mask required
/// to broadcast to `x`'s shape, which the result keeps.
pub fn masked_fill(x: &Var, mask: &Tensor, value: f32) -> Result<Var> {
    let shape = x.shape();
    crate::ensure_shape!(
        broadcast_shapes("masked_fill", mask.shape(), &shape)? == shape,
        "masked_fill",
        "mask of shape {:?} does not broadcast to the tensor's shape {shape:?}",
        mask.shape()
    );
    where_(mask, &Var::constant(Tensor::scalar(value)), x)
}

/// `cond ≠ 0 ? x : y` elementwise over the broadcast shape of the three (`torch.where`).
pub fn where_(cond: &Tensor, x: &Var, y: &Var) -> Result<Var> {
    const OP: &str = "where";
    let (xv, yv) = (x.value(), y.value());
    let out = map3(OP, [cond, &xv, &yv], |c, a, b| if c != 0.0 { a } else { b })?;
    Ok(Var::from_op(
        out,
        vec![x.clone(), y.clone()],
        WhereBackward { cond: cond.clone() },
    ))
}

struct ClampBackward {
    x: Tensor,
    lo: f32,
    hi: f32,
}

impl Backward for ClampBackward {
    fn name(&self) -> &'static str {
        "clamp"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let (lo, hi) = (self.lo, self.hi);
        let (g, x) = (g.cpu("clamp")?, self.x.cpu("clamp")?);
        let gx = map2("clamp", g, x, |g, x| if lo < x && x < hi { g } else { 0.0 })?;
        Ok(vec![Some(gx)])
    }
}

/// `min(max(x, min), max)` elementwise (`torch.clamp` with number bounds); a missing bound
/// does not apply. NaN inputs stay NaN; NaN bounds are refused.
pub fn clamp(x: &Var, min: Option<f32>, max: Option<f32>) -> Result<Var> {
    const OP: &str = "clamp";
    crate::ensure_value!(
        min.is_some() || max.is_some(),
        OP,
        "at least one of min and max must be given"
    );
    crate::ensure_value!(
        !min.is_some_and(f32::is_nan) && !max.is_some_and(f32::is_nan),
        OP,
        "bounds must not be NaN, got min={min:?}, max={max:?}"
    );
    let (lo, hi) = (
        min.unwrap_or(f32::NEG_INFINITY),
        max.unwrap_or(f32::INFINITY),
    );
    let xv = x.value();
    let out = map1(xv.cpu(OP)?, |v| {
        let v = if v < lo { lo } else { v };
        if v > hi {
            hi
        } else {
            v
        }
    });
    Ok(Var::from_op(
        out,
        vec![x.clone()],
        ClampBackward { x: xv, lo, hi },
    ))
}

struct ExtremumBackward {
    a: Tensor,
    b: Tensor,
    /// `maximum` (else `minimum`).
    max: bool,
}

/// The share of the gradient that goes to `a` when `a` meets `b`: 1 where `a` was taken, ½ on
/// ties, 0 where `b` was taken or either is NaN.
fn share(a: f32, b: f32, max: bool) -> f32 {
    if a == b {
        0.5
    } else if (a > b) == max && !a.is_nan() && !b.is_nan() {
        1.0
    } else {
        0.0
    }
}

impl Backward for ExtremumBackward {
    fn name(&self) -> &'static str {
        if self.max {
            "maximum"
        } else {
            "minimum"
        }
    }
    fn backward(&self, g: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let op = self.name();
        let max = self.max;
        let mut grads = Vec::with_capacity(2);
        for (k, (mine, other)) in [(&self.a, &self.b), (&self.b, &self.a)]
            .into_iter()
            .enumerate()
        {
            grads.push(if inputs[k].requires_grad() {
                let gk = map3(op, [g, mine, other], |g, m, o| g * share(m, o, max))?;
                Some(sum_to(&gk, mine.shape())?)
            } else {
                None
            });
        }
        Ok(grads)
    }
}

fn extremum(a: &Var, b: &Var, max: bool) -> Result<Var> {
    let op = if max { "maximum" } else { "minimum" };
    let (av, bv) = (a.value(), b.value());
    let out = map2(op, av.cpu(op)?, bv.cpu(op)?, |x, y| {
        if x.is_nan() || y.is_nan() {
            f32::NAN
        } else if (x >= y) == max {
            x
        } else {
            y
        }
    })?;
    Ok(Var::from_op(
        out,
        vec![a.clone(), b.clone()],
        ExtremumBackward { a: av, b: bv, max },
    ))
}

/// The elementwise maximum of `a` and `b` (`torch.maximum`).
pub fn maximum(a: &Var, b: &Var) -> Result<Var> {
    extremum(a, b, true)
}

/// The elementwise minimum of `a` and `b` (`torch.minimum`).
pub fn minimum(a: &Var, b: &Var) -> Result<Var> {
    extremum(a, b, false)
}
