//! `linear(x, W, b) = x·Wᵀ + b` with PyTorch's weight layout: x (…, in), W (out, in), b (out,)
//! → (…, out). The bias is added in the GEMM's epilogue. Backward saves x and W:
//! dx = G·W, dW = Gᵀ·x, db = 1ᵀ·G (all three as GEMMs over the flattened rows).

use super::autocast::{check_device, Precision};
use crate::autograd::{Backward, Var};
use crate::cpu::gemm::{Epilogue, MatRef};
use crate::cpu::gemm_bf16::gemm_as;
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Device, Placed, Tensor};

/// `(rows, in, out)` of a product whose operands fit and share a device.
pub(crate) fn check(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let (rows, inp) = x.rows_cols();
    let shape_error = || {
        TfmError::shape(
            "linear",
            format!(
                "input {} does not fit weight {}{} (expected weight (out_features, {inp}) and bias (out_features,))",
                shape_str(x.shape()),
                shape_str(w.shape()),
                b.map(|b| format!(" and bias {}", shape_str(b.shape()))).unwrap_or_default()
            ),
        )
    };
    if x.ndim() == 0 || w.ndim() != 2 || w.shape()[1] != inp {
        return Err(shape_error());
    }
    let out = w.shape()[0];
    if b.is_some_and(|b| b.shape() != [out]) {
        return Err(shape_error());
    }
    Device::common(
        "linear",
        [Some(x), Some(w), b]
            .into_iter()
            .flatten()
            .map(Tensor::device),
    )?;
    Ok((rows, inp, out))
}

/// Forward kernel: y (rows, out) = x (rows, in) · Wᵀ + b.
pub fn linear_forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_forward_as(x, w, b, Precision::F32)
}

/// [`linear_forward`] at `precision` (bf16: the product's inputs rounded, f32 accumulation;
/// the bias is added in f32).
pub fn linear_forward_as(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    precision: Precision,
) -> Result<Tensor> {
    let (rows, inp, out) = check(x, w, b)?;
    check_device("linear", precision, x.device())?;
    let (x, w) = match Tensor::place("linear", [x, w])? {
        Placed::Cpu([x, w]) => (x, w),
        #[cfg(feature = "wgpu")]
        Placed::Gpu(_) => return gpu::forward(x, w, b),
    };
    let b = b.map(|b| b.cpu("linear")).transpose()?;
    let mut y = crate::cpu::alloc::output(rows * out);
    if rows * out > 0 {
        let epi = Epilogue {
            bias: b.map(|b| b.data()),
            ..Default::default()
        };
        gemm_as(
            precision,
            1.0,
            MatRef::row_major(x.data(), rows, inp),
            MatRef::row_major(w.data(), out, inp).t(),
            0.0,
            &mut y,
            out,
            &epi,
            true,
        );
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("checked ndim ≥ 1") = out;
    Tensor::new(y, &shape)
}

/// Which gradients a backward computes; the others are skipped (each costs a GEMM).
#[derive(Clone, Copy, Debug)]
pub struct Needs {
    pub x: bool,
    pub w: bool,
    pub b: bool,
}

/// Backward kernel: (dx, dW, db) from the output gradient g (rows, out), each `None` unless
/// `needs` asks for it.
pub fn linear_backward(
    g: &Tensor,
    x: &Tensor,
    w: &Tensor,
    needs: Needs,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    linear_backward_as(g, x, w, needs, Precision::F32)
}

/// [`linear_backward`] at `precision`: dx and dW as bf16-input products; db, a reduction, is
/// summed in f32 at either precision.
pub fn linear_backward_as(
    g: &Tensor,
    x: &Tensor,
    w: &Tensor,
    needs: Needs,
    precision: Precision,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    check_device("linear", precision, g.device())?;
    let (g, x, w) = match Tensor::place("linear", [g, x, w])? {
        Placed::Cpu([g, x, w]) => (g, x, w),
        #[cfg(feature = "wgpu")]
        Placed::Gpu(_) => return gpu::backward(g, x, w, needs),
    };
    let (rows, inp) = x.rows_cols();
    let out = w.shape()[0];
    let gm = MatRef::row_major(g.data(), rows, out);
    // C (shape) = A·B through the GEMM (which writes zeros when there are no rows to sum over).
    let product_as = |precision, a: MatRef, b: MatRef, shape: &[usize]| {
        let mut c = crate::cpu::alloc::output(a.rows * b.cols);
        gemm_as(
            precision,
            1.0,
            a,
            b,
            0.0,
            &mut c,
            b.cols,
            &Epilogue::default(),
            true,
        );
        Tensor::new(c, shape)
    };
    let product = |a, b, shape: &[usize]| product_as(precision, a, b, shape);
    let dx = needs
        .x
        .then(|| product(gm, MatRef::row_major(w.data(), out, inp), x.shape()))
        .transpose()?;
    let dw = needs
        .w
        .then(|| product(gm.t(), MatRef::row_major(x.data(), rows, inp), w.shape()))
        .transpose()?;
    let ones = vec![1.0f32; if needs.b { rows } else { 0 }];
    let db = needs
        .b
        .then(|| {
            product_as(
                Precision::F32,
                MatRef::row_major(&ones, 1, rows),
                gm,
                &[out],
            )
        })
        .transpose()?;
    Ok((dx, dw, db))
}

struct LinearBackward {
    x: Tensor,
    w: Tensor,
    has_bias: bool,
    precision: Precision,
}

impl Backward for LinearBackward {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn backward(&self, g: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let needs = Needs {
            x: inputs[0].requires_grad(),
            w: inputs[1].requires_grad(),
            b: self.has_bias && inputs[2].requires_grad(),
        };
        let (dx, dw, db) = linear_backward_as(g, &self.x, &self.w, needs, self.precision)?;
        let mut grads = vec![dx, dw];
        if self.has_bias {
            grads.push(db);
        }
        Ok(grads)
    }
}

pub fn linear(x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
    linear_with(x, w, b, Precision::F32)
}

/// [`linear`] with its forward and backward products at `precision`.
pub fn linear_with(x: &Var, w: &Var, b: Option<&Var>, precision: Precision) -> Result<Var> {
    let (xv, wv, bv) = (x.value(), w.value(), b.map(Var::value));
    let y = linear_forward_as(&xv, &wv, bv.as_ref(), precision)?;
    let mut inputs = vec![x.clone(), w.clone()];
    inputs.extend(b.cloned());
    Ok(Var::from_op(
        y,
        inputs,
        LinearBackward {
            x: xv,
            w: wv,
            has_bias: b.is_some(),
            precision,
        },
    ))
}

/// The GPU wiring: the same products as GEMMs on GPU buffers
/// ([`crate::gpu::ops::gemm`]). The forward is one GEMM accumulating onto the bias broadcast to
/// every row (β = 1); the backward is dx = G·W and dW = Gᵀ·x (GEMMs over the flattened rows)
/// and db = Σ_rows G.
#[cfg(feature = "wgpu")]
mod gpu {
    use super::{check, Needs};
    use crate::error::Result;
    use crate::gpu::ops::gemm::GemmShape;
    use crate::ops::broadcast::{broadcast_to, sum_to};
    use crate::ops::matmul::gpu::gemm_tensors;
    use crate::tensor::Tensor;

    const OP: &str = "linear";

    /// y (…, out) = x·Wᵀ + b for GPU tensors.
    pub(super) fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
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
        gemm_tensors(OP, [&y, x, w], &s, beta)?;
        Ok(y)
    }

    /// (dx, dW, db) from the output gradient g (…, out), each `None` unless `needs` asks for it.
    pub(super) fn backward(
        g: &Tensor,
        x: &Tensor,
        w: &Tensor,
        needs: Needs,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, inp) = x.rows_cols();
        let out = w.shape()[0];
        let product = |a: &Tensor, b: &Tensor, s: GemmShape, shape: &[usize]| {
            let c = Tensor::gpu_zeros(shape)?;
            gemm_tensors(OP, [&c, a, b], &s, 0.0)?;
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
}
