//! Reductions over dimensions: sums, means, maxima and minima. Forward: `(…) → (…)` with the
//! reduced dimensions removed (or kept as size 1 with `keepdim`); an empty `dims` reduces over
//! all of them. Sums and means: backward broadcasts the gradient back over the reduced
//! dimensions; nothing is saved but the shape. Maxima and minima (NaN is the extreme where
//! present, as in PyTorch): `max`/`min` over one dimension also give the index of the first
//! extreme and send the gradient there; `amax`/`amin` save the input and split the gradient
//! evenly among the positions holding the extreme, as PyTorch's.

use super::broadcast::{broadcast_to, gather, sum_to};
use super::elementwise::{self, scale};
use super::rows::{for_each_row, rows_mut};
use super::shape::permute_forward;
use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::shape::contiguous_strides;
use crate::tensor::{normalize_dim, numel, Tensor};

/// Which dimensions of an `nd`-dimensional tensor `dims` reduces (all when empty).
fn reduced_dims(op: &'static str, nd: usize, dims: &[isize]) -> Result<Vec<bool>> {
    let mut reduce = vec![dims.is_empty(); nd];
    for &d in dims {
        reduce[normalize_dim(op, d, nd)?] = true;
    }
    Ok(reduce)
}

/// The kept-dimensions shape and the output shape for reducing `shape` over `dims`.
fn reduced_shapes(
    op: &'static str,
    shape: &[usize],
    dims: &[isize],
    keepdim: bool,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let reduce = reduced_dims(op, shape.len(), dims)?;
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

/// The variance over `dims` (all when empty), `Σ (x − mean)² / max(0, N − correction)` with
/// Bessel's `correction` (PyTorch's default 1): composed of differentiable ops, so its gradient
/// is theirs, `2(x − mean) / (N − correction)`. With `N ≤ correction` it is NaN (or inf), as in
/// PyTorch.
pub fn var(x: &Var, dims: &[isize], correction: f64, keepdim: bool) -> Result<Var> {
    let (kept, _) = reduced_shapes("var", &x.shape(), dims, keepdim)?;
    let n = x.value().numel() / numel(&kept).max(1);
    let centred = elementwise::sub(x, &reduce("var", x, dims, true, true)?)?;
    let squares = sum(&elementwise::mul(&centred, &centred)?, dims, keepdim)?;
    let denom = (n as f64 - correction).max(0.0) as f32;
    elementwise::div(&squares, &Var::constant(Tensor::scalar(denom)))
}

/// The standard deviation, `√var` (see [`var`]).
pub fn std(x: &Var, dims: &[isize], correction: f64, keepdim: bool) -> Result<Var> {
    elementwise::unary(
        elementwise::UnaryOp::Sqrt,
        &var(x, dims, correction, keepdim)?,
    )
}

/// Which extreme a max/min reduction takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extreme {
    Max,
    Min,
}

impl Extreme {
    fn name(self, all: bool) -> &'static str {
        match (self, all) {
            (Extreme::Max, false) => "max",
            (Extreme::Min, false) => "min",
            (Extreme::Max, true) => "amax",
            (Extreme::Min, true) => "amin",
        }
    }
}

simd_kernel! {
    /// The largest (`max`) or smallest value of a non-empty row, and whether it holds a NaN:
    /// 16 running extremes, so that the loop vectorizes.
    fn row_extreme(row: &[f32], max: bool) -> (f32, bool) {
        let mut acc = [row[0]; 16];
        let mut nan = [false; 16];
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder();
        for chunk in chunks {
            for ((a, n), &v) in acc.iter_mut().zip(&mut nan).zip(chunk) {
                *a = if (v > *a) == max && v != *a { v } else { *a };
                *n |= v.is_nan();
            }
        }
        let mut best = row[0];
        for &v in acc.iter().chain(tail) {
            if (v > best) == max && v != best && !v.is_nan() {
                best = v;
            }
        }
        (best, nan.iter().any(|&n| n) || tail.iter().any(|v| v.is_nan()))
    }
}

/// The value and index of the first extreme of a non-empty row; a NaN is the extreme.
fn first_extreme(row: &[f32], which: Extreme) -> (f32, usize) {
    let (best, nan) = row_extreme(row, which == Extreme::Max);
    let at = if nan {
        row.iter().position(|v| v.is_nan())
    } else {
        row.iter().position(|&v| v == best)
    };
    let at = at.expect("the extreme is in the row");
    (row[at], at)
}

/// How a reduction sees its input as rows `(outer, r)`: the kept dimensions first (in order),
/// then the reduced ones.
struct Rows {
    /// The permutation back to the input's order; `None` when the rows are the input as it is.
    inverse: Option<Vec<usize>>,
    permuted_shape: Vec<usize>,
    /// The output's shape (reduced dimensions as 1 with `keepdim`, else removed).
    out_shape: Vec<usize>,
    r: usize,
}

impl Rows {
    /// The layout and `x` laid out as its rows (a copy only when the reduced dimensions are not
    /// already the trailing ones).
    fn new(op: &'static str, x: &Tensor, dims: &[isize], keepdim: bool) -> Result<(Rows, Tensor)> {
        let shape = x.shape();
        let reduce = reduced_dims(op, shape.len(), dims)?;
        let (_, out_shape) = reduced_shapes(op, shape, dims, keepdim)?;
        let perm: Vec<usize> = (0..shape.len())
            .filter(|&d| !reduce[d])
            .chain((0..shape.len()).filter(|&d| reduce[d]))
            .collect();
        let r: usize = (0..shape.len())
            .filter(|&d| reduce[d])
            .map(|d| shape[d])
            .product();
        if r == 0 {
            return Err(TfmError::value(
                op,
                format!("cannot reduce over no elements (input of shape {shape:?})"),
            ));
        }
        let permuted_shape: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
        let (data, inverse) = if perm.iter().enumerate().all(|(i, &d)| i == d) {
            (x.clone(), None)
        } else {
            let strides = contiguous_strides(shape);
            let view: Vec<usize> = perm.iter().map(|&d| strides[d]).collect();
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            (gather(x, 0, &permuted_shape, &view)?, Some(inverse))
        };
        let rows = Rows {
            inverse,
            permuted_shape,
            out_shape,
            r,
        };
        Ok((rows, data))
    }

    fn outer(&self) -> usize {
        numel(&self.permuted_shape) / self.r
    }

    /// Each row's first extreme in `data` (laid out as these rows): values and indices.
    fn extremes(
        &self,
        op: &'static str,
        data: &Tensor,
        which: Extreme,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let (outer, r) = (self.outer(), self.r);
        let data = data.cpu(op)?.data();
        let mut values = vec![0.0f32; outer];
        let mut index = vec![0usize; outer];
        let items: Vec<_> = values.iter_mut().zip(index.iter_mut()).collect();
        for_each_row(items, r, |o, (v, i)| {
            (*v, *i) = first_extreme(&data[o * r..][..r], which);
        });
        Ok((values, index))
    }

    /// The input's gradient from `f(row, r, gradient row)`, which fills a zeroed row.
    fn scatter_back(&self, f: impl Fn(usize, usize, &mut [f32]) + Sync) -> Result<Tensor> {
        let (outer, r) = (self.outer(), self.r);
        let mut g = vec![0.0f32; outer * r];
        for_each_row(rows_mut(&mut g, outer, r), r, |o, row| f(o, r, row));
        let g = Tensor::new(g, &self.permuted_shape)?;
        match &self.inverse {
            None => Ok(g),
            Some(inverse) => permute_forward(&g, inverse),
        }
    }
}

/// Where a max/min reduction's gradient goes.
enum Route {
    /// To each row's first extreme.
    Index(Vec<usize>),
    /// Evenly among the positions of each row of `rows` (the input as rows) equal to its
    /// extreme in `values` (NaN equals NaN here).
    Ties { rows: Tensor, values: Vec<f32> },
}

struct ExtremeBackward {
    name: &'static str,
    rows: Rows,
    route: Route,
}

impl Backward for ExtremeBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let g = g.cpu(self.name)?.data();
        let gx = match &self.route {
            Route::Index(index) => self.rows.scatter_back(|o, _, row| row[index[o]] = g[o])?,
            Route::Ties { rows, values } => {
                let x = rows.cpu(self.name)?.data();
                self.rows.scatter_back(|o, r, row| {
                    let v = values[o];
                    let xr = &x[o * r..][..r];
                    let tie = |a: f32| a == v || (a.is_nan() && v.is_nan());
                    let share = g[o] / xr.iter().filter(|&&a| tie(a)).count() as f32;
                    for (gj, &a) in row.iter_mut().zip(xr) {
                        if tie(a) {
                            *gj = share;
                        }
                    }
                })?
            }
        };
        Ok(vec![Some(gx)])
    }
}

/// `max`/`min` over `dim` (`torch.max(x, dim)`): the values and, for each, the index along
/// `dim` of the first extreme, as int64 with the values' shape.
pub fn extreme_dim(
    x: &Var,
    dim: isize,
    keepdim: bool,
    which: Extreme,
) -> Result<(Var, Vec<i64>, Vec<usize>)> {
    let name = which.name(false);
    let (rows, data) = Rows::new(name, &x.value(), &[dim], keepdim)?;
    let (values, index) = rows.extremes(name, &data, which)?;
    let shape = rows.out_shape.clone();
    let ids = index.iter().map(|&i| i as i64).collect();
    let out = Tensor::new(values, &shape)?;
    let route = Route::Index(index);
    let y = Var::from_op(out, vec![x.clone()], ExtremeBackward { name, rows, route });
    Ok((y, ids, shape))
}

/// `amax`/`amin` over `dims` (all when empty; `torch.max(x)` is the latter).
pub fn extreme(x: &Var, dims: &[isize], keepdim: bool, which: Extreme) -> Result<Var> {
    let name = which.name(true);
    let (rows, data) = Rows::new(name, &x.value(), dims, keepdim)?;
    let (values, _) = rows.extremes(name, &data, which)?;
    let out = Tensor::new(values.clone(), &rows.out_shape)?;
    let route = Route::Ties { rows: data, values };
    Ok(Var::from_op(
        out,
        vec![x.clone()],
        ExtremeBackward { name, rows, route },
    ))
}

/// `argmax`/`argmin` over `dim`, or over the flattened tensor when `None` (then `keepdim`
/// keeps every dimension as 1): int64 indices and their shape.
pub fn arg_extreme(
    x: &Tensor,
    dim: Option<isize>,
    keepdim: bool,
    which: Extreme,
) -> Result<(Vec<i64>, Vec<usize>)> {
    let name = match which {
        Extreme::Max => "argmax",
        Extreme::Min => "argmin",
    };
    let dims: Vec<isize> = dim.into_iter().collect();
    let (rows, data) = Rows::new(name, x, &dims, keepdim)?;
    let (_, index) = rows.extremes(name, &data, which)?;
    Ok((index.iter().map(|&i| i as i64).collect(), rows.out_shape))
}
