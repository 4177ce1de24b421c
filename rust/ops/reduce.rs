//! Sums and means over dimensions. Forward: `(…) → (…)` with the reduced dimensions removed
//! (or kept as size 1 with `keepdim`); an empty `dims` reduces over all of them. Backward
//! broadcasts the gradient back over the reduced dimensions; nothing is saved but the shape.

use super::broadcast::{broadcast_to, sum_to};
use super::elementwise::scale;
use crate::autograd::{Backward, Var};
use crate::error::Result;
use crate::tensor::{normalize_dim, numel, Tensor};

/// The kept-dimensions shape and the output shape for reducing `shape` over `dims`.
fn reduced_shapes(
    op: &'static str,
    shape: &[usize],
    dims: &[isize],
    keepdim: bool,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut reduce = vec![dims.is_empty(); shape.len()];
    for &d in dims {
        reduce[normalize_dim(op, d, shape.len())?] = true;
    }
    let kept: Vec<usize> = shape
        .iter()
        .zip(&reduce)
        .map(|(&s, &r)| if r { 1 } else { s })
        .collect();
    let out = if keepdim {
        kept.clone()
    } else {
        shape
            .iter()
            .zip(&reduce)
            .filter(|(_, &r)| !r)
            .map(|(&s, _)| s)
            .collect()
    };
    Ok((kept, out))
}

struct SumBackward {
    input_shape: Vec<usize>,
    kept_shape: Vec<usize>,
    scale: f32,
}

impl Backward for SumBackward {
    fn name(&self) -> &'static str {
        if self.scale == 1.0 {
            "sum"
        } else {
            "mean"
        }
    }
    /// The mean's 1/count scales the reduced gradient before it is broadcast: a pass over
    /// the kept shape, not over the input's.
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let g = if self.scale == 1.0 {
            g.clone()
        } else {
            scale(g, self.scale)?
        };
        let gx = broadcast_to(
            self.name(),
            &g.reshape(&self.kept_shape)?,
            &self.input_shape,
        )?;
        Ok(vec![Some(gx)])
    }
}

fn reduce(op: &'static str, x: &Var, dims: &[isize], keepdim: bool, mean: bool) -> Result<Var> {
    let xv = x.value();
    let (kept, out_shape) = reduced_shapes(op, xv.shape(), dims, keepdim)?;
    let count = if numel(&kept) == 0 {
        0
    } else {
        xv.numel() / numel(&kept)
    };
    // The mean of nothing is NaN, as in NumPy and PyTorch.
    let scale = if mean { 1.0 / count as f32 } else { 1.0 };
    let mut out = sum_to(&xv, &kept)?;
    if mean {
        out = self::scale(&out, scale)?;
    }
    let out = out.reshape(&out_shape)?;
    Ok(Var::from_op(
        out,
        vec![x.clone()],
        SumBackward {
            input_shape: xv.shape().to_vec(),
            kept_shape: kept,
            scale,
        },
    ))
}

pub fn sum(x: &Var, dims: &[isize], keepdim: bool) -> Result<Var> {
    reduce("sum", x, dims, keepdim, false)
}

pub fn mean(x: &Var, dims: &[isize], keepdim: bool) -> Result<Var> {
    reduce("mean", x, dims, keepdim, true)
}
