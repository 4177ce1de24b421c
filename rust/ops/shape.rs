//! Ops that move elements without arithmetic: `reshape`, `permute` (and `transpose`), `slice`
//! (start, stop, step along one dimension), and `cat`. Each saves only shapes and offsets; each
//! backward is the adjoint movement (reshape back, inverse permutation, scatter, split).

use super::broadcast::{broadcast_to, gather, scatter, scatter_add};
use crate::autograd::{Backward, Var};
use crate::error::{Result, TfmError};
use crate::tensor::{
    contiguous_strides, normalize_dim, numel, shape_str, CpuTensor, Device, PlacedAll, Tensor,
};

/// Resolves one `-1` in a requested shape against `n` elements.
pub fn infer_shape(op: &'static str, requested: &[isize], n: usize) -> Result<Vec<usize>> {
    let unknown: Vec<usize> = requested
        .iter()
        .enumerate()
        .filter(|(_, &d)| d == -1)
        .map(|(i, _)| i)
        .collect();
    if unknown.len() > 1 || requested.iter().any(|&d| d < -1) {
        return Err(TfmError::shape(
            op,
            format!("invalid shape {requested:?}: sizes must be ≥ 0, with at most one -1"),
        ));
    }
    let known: usize = requested
        .iter()
        .filter(|&&d| d != -1)
        .map(|&d| d as usize)
        .product();
    let mut shape: Vec<usize> = requested.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(&i) = unknown.first() {
        if known == 0 || !n.is_multiple_of(known) {
            return Err(TfmError::shape(
                op,
                format!("shape {requested:?} is invalid for {n} elements"),
            ));
        }
        shape[i] = n / known;
    }
    if numel(&shape) != n {
        return Err(TfmError::shape(
            op,
            format!("shape {requested:?} is invalid for {n} elements"),
        ));
    }
    Ok(shape)
}

struct ReshapeBackward {
    input_shape: Vec<usize>,
}

impl Backward for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.reshape(&self.input_shape)?)])
    }
}

/// `x` with another shape of as many elements; one size may be -1. Shares storage.
pub fn reshape(x: &Var, shape: &[isize]) -> Result<Var> {
    let xv = x.value();
    let shape = infer_shape("reshape", shape, xv.numel())?;
    let out = xv.reshape(&shape)?;
    Ok(Var::from_op(
        out,
        vec![x.clone()],
        ReshapeBackward {
            input_shape: xv.shape().to_vec(),
        },
    ))
}

/// Output dimension `i` is input dimension `perm[i]`.
pub(crate) fn permute_forward(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let strides = contiguous_strides(x.shape());
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let view_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    gather(x, 0, &out_shape, &view_strides)
}

struct PermuteBackward {
    inverse: Vec<usize>,
}

impl Backward for PermuteBackward {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(permute_forward(g, &self.inverse)?)])
    }
}

/// Reorders dimensions: output dimension `i` is input dimension `dims[i]` (negative allowed).
pub fn permute(x: &Var, dims: &[isize]) -> Result<Var> {
    let xv = x.value();
    let nd = xv.ndim();
    if dims.len() != nd {
        return Err(TfmError::shape(
            "permute",
            format!(
                "{} dims given for a tensor of shape {}",
                dims.len(),
                shape_str(xv.shape())
            ),
        ));
    }
    let mut perm = Vec::with_capacity(nd);
    for &d in dims {
        perm.push(normalize_dim("permute", d, nd)?);
    }
    let mut inverse = vec![usize::MAX; nd];
    for (i, &p) in perm.iter().enumerate() {
        if inverse[p] != usize::MAX {
            return Err(TfmError::value(
                "permute",
                format!("dims {dims:?} repeat dimension {p}"),
            ));
        }
        inverse[p] = i;
    }
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return reshape(
            x,
            &xv.shape().iter().map(|&d| d as isize).collect::<Vec<_>>(),
        );
    }
    let out = permute_forward(&xv, &perm)?;
    Ok(Var::from_op(
        out,
        vec![x.clone()],
        PermuteBackward { inverse },
    ))
}

/// Runs a last-axis op along `dim` by swapping `dim` with the last axis around it (the mask is
/// expanded to the input's shape first so that it swaps along).
pub fn along_dim(
    op: &'static str,
    x: &Var,
    dim: isize,
    mask: Option<Tensor>,
    f: impl Fn(&Var, Option<&Tensor>) -> Result<Var>,
) -> Result<Var> {
    let shape = x.shape();
    let nd = shape.len().max(1);
    let d = normalize_dim(op, dim, nd)?;
    if shape.is_empty() || d == nd - 1 {
        return f(x, mask.as_ref());
    }
    let last = nd as isize - 1;
    let swap = |v: &Var| transpose(v, d as isize, last);
    let mask = match mask {
        Some(m) => Some(swap(&Var::constant(broadcast_to(op, &m, &shape)?))?.value()),
        None => None,
    };
    swap(&f(&swap(x)?, mask.as_ref())?)
}

/// Swaps two dimensions.
pub fn transpose(x: &Var, dim0: isize, dim1: isize) -> Result<Var> {
    let nd = x.shape().len();
    let (a, b) = (
        normalize_dim("transpose", dim0, nd)?,
        normalize_dim("transpose", dim1, nd)?,
    );
    let mut perm: Vec<isize> = (0..nd as isize).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// The gradient goes back to the device the value came from.
struct ToDeviceBackward {
    from: Device,
}

impl Backward for ToDeviceBackward {
    fn name(&self) -> &'static str {
        "to"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.to_device(self.from)?)])
    }
}

/// `x` on `device` (`Tensor.to`): `x` itself if it is there, else a copy in the graph.
pub fn to_device(x: &Var, device: Device) -> Result<Var> {
    let xv = x.value();
    if xv.device() == device {
        return Ok(x.clone());
    }
    Ok(Var::from_op(
        xv.to_device(device)?,
        vec![x.clone()],
        ToDeviceBackward { from: xv.device() },
    ))
}

struct SliceBackward {
    input_shape: Vec<usize>,
    offset: usize,
    view_strides: Vec<usize>,
}

impl Backward for SliceBackward {
    fn name(&self) -> &'static str {
        "slice"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let gx = scatter(g, &self.input_shape, self.offset, &self.view_strides)?;
        Ok(vec![Some(gx)])
    }
    fn add_into(&self, g: &Tensor, acc: &mut Tensor) -> Result<bool> {
        scatter_add(acc, g, self.offset, &self.view_strides)
    }
}

/// Elements `start, start + step, …` (< `stop`) along `dim`, as Python's `x[start:stop:step]`.
/// `start`/`stop` are already clamped to `0..=size` by the caller (Python's slice rules); `step ≥ 1`.
pub fn slice(x: &Var, dim: isize, start: usize, stop: usize, step: usize) -> Result<Var> {
    let xv = x.value();
    let d = normalize_dim("slice", dim, xv.ndim())?;
    let size = xv.shape()[d];
    if step == 0 || start > size || stop > size {
        return Err(TfmError::index(
            "slice",
            format!("slice {start}:{stop}:{step} is invalid for dimension {d} of size {size}"),
        ));
    }
    let len = if stop > start {
        (stop - start).div_ceil(step)
    } else {
        0
    };
    let strides = contiguous_strides(xv.shape());
    let mut out_shape = xv.shape().to_vec();
    out_shape[d] = len;
    let mut view_strides = strides.clone();
    view_strides[d] *= step;
    let offset = if len == 0 { 0 } else { start * strides[d] };
    let out = gather(&xv, offset, &out_shape, &view_strides)?;
    Ok(Var::from_op(
        out,
        vec![x.clone()],
        SliceBackward {
            input_shape: xv.shape().to_vec(),
            offset,
            view_strides,
        },
    ))
}

struct CatBackward {
    dim: usize,
    sizes: Vec<usize>,
}

impl Backward for CatBackward {
    fn name(&self) -> &'static str {
        "cat"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let (_, inner) = outer_inner(g.shape(), self.dim);
        let strides = contiguous_strides(g.shape());
        let mut start = 0;
        let mut grads = Vec::with_capacity(self.sizes.len());
        for &size in &self.sizes {
            let mut shape = g.shape().to_vec();
            shape[self.dim] = size;
            grads.push(Some(gather(g, start * inner, &shape, &strides)?));
            start += size;
        }
        Ok(grads)
    }
}

fn outer_inner(shape: &[usize], dim: usize) -> (usize, usize) {
    (numel(&shape[..dim]), numel(&shape[dim + 1..]))
}

/// Concatenates along `dim`; all other dimensions must agree.
pub fn cat(xs: &[Var], dim: isize) -> Result<Var> {
    if xs.is_empty() {
        return Err(TfmError::value(
            "cat",
            "expected a non-empty list of tensors",
        ));
    }
    let values: Vec<Tensor> = xs.iter().map(Var::value).collect();
    let nd = values[0].ndim();
    let d = normalize_dim("cat", dim, nd)?;
    for v in &values {
        let agree = v.ndim() == nd
            && v.shape()
                .iter()
                .zip(values[0].shape())
                .enumerate()
                .all(|(i, (a, b))| i == d || a == b);
        if !agree {
            let shapes: Vec<String> = values.iter().map(|v| shape_str(v.shape())).collect();
            return Err(TfmError::shape(
                "cat",
                format!("shapes {} differ outside dimension {d}", shapes.join(", ")),
            ));
        }
    }
    let sizes: Vec<usize> = values.iter().map(|v| v.shape()[d]).collect();
    let mut out_shape = values[0].shape().to_vec();
    out_shape[d] = sizes.iter().sum();
    let out = match Tensor::place_all("cat", &values)? {
        PlacedAll::Cpu(values) => cat_host(&values, &sizes, &out_shape, d)?,
        #[cfg(feature = "wgpu")]
        PlacedAll::Gpu(values) => crate::gpu::ops::strided::cat(&values, &out_shape, d)?.into(),
    };
    Ok(Var::from_op(
        out,
        xs.to_vec(),
        CatBackward { dim: d, sizes },
    ))
}

fn cat_host(
    values: &[&CpuTensor],
    sizes: &[usize],
    out_shape: &[usize],
    d: usize,
) -> Result<Tensor> {
    let (outer, inner) = outer_inner(out_shape, d);
    let mut out = Vec::with_capacity(numel(out_shape));
    for o in 0..outer {
        for (v, &size) in values.iter().zip(sizes) {
            out.extend_from_slice(&v.data()[o * size * inner..(o + 1) * size * inner]);
        }
    }
    Tensor::new(out, out_shape)
}
