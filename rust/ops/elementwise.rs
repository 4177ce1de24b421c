//! Elementwise arithmetic with NumPy broadcasting.
//!
//! Binary: `add, sub, mul, div` — `out = f(a, b)` over `broadcast(a.shape, b.shape)`; backward
//! sums each operand's gradient back to its own shape. `mul`/`div` save both operands.
//! Unary: `neg, exp, log, sqrt, tanh, pow(x, p), sigmoid, abs, sin, cos` — `exp`, `sqrt`,
//! `tanh`, `sigmoid` save their output, `log`, `pow`, `abs`, `sin`, `cos` their input.

use super::broadcast::{map1, map2, sum_to};
use crate::autograd::{Backward, Var};
use crate::cpu::math::{sin_cos, SIN_COS_REDUCED};
use crate::cpu::simd::simd_kernel;
use crate::error::Result;
use crate::tensor::{CpuTensor, Device, Placed, Tensor};

pub use crate::desc::{BinaryOp, UnaryOp};

/// Forward kernel: `f(a, b)` with broadcasting, on the operands' device.
pub fn binary_forward(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match Tensor::place(op.name(), [a, b])? {
        Placed::Cpu([a, b]) => binary_host(op, a, b),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([a, b]) => Ok(crate::gpu::ops::elementwise::binary(op, a, b)?.into()),
    }
}

fn binary_host(op: BinaryOp, a: &CpuTensor, b: &CpuTensor) -> Result<Tensor> {
    match op {
        BinaryOp::Add => map2(op.name(), a, b, |x, y| x + y),
        BinaryOp::Sub => map2(op.name(), a, b, |x, y| x - y),
        BinaryOp::Mul => map2(op.name(), a, b, |x, y| x * y),
        BinaryOp::Div => map2(op.name(), a, b, |x, y| x / y),
    }
}

/// Backward kernel: gradients of `a` and `b` given the output gradient `g`; each only if
/// `needs` asks for it (a constant operand, such as a scale factor, needs none).
pub fn binary_backward(
    op: BinaryOp,
    g: &Tensor,
    a: &Tensor,
    b: &Tensor,
    needs: [bool; 2],
) -> Result<[Option<Tensor>; 2]> {
    let ga = || -> Result<Tensor> {
        match op {
            BinaryOp::Add | BinaryOp::Sub => Ok(g.clone()),
            BinaryOp::Mul => binary_forward(BinaryOp::Mul, g, b),
            BinaryOp::Div => binary_forward(BinaryOp::Div, g, b),
        }
    };
    let gb = || -> Result<Tensor> {
        match op {
            BinaryOp::Add => Ok(g.clone()),
            BinaryOp::Sub => unary_forward(UnaryOp::Neg, g),
            BinaryOp::Mul => binary_forward(BinaryOp::Mul, g, a),
            // d(a/b)/db = -a/b² = (-(g/b))·(a/b), computed without squaring b.
            BinaryOp::Div => binary_forward(
                BinaryOp::Mul,
                &unary_forward(UnaryOp::Neg, &binary_forward(BinaryOp::Div, g, b)?)?,
                &binary_forward(BinaryOp::Div, a, b)?,
            ),
        }
    };
    let ga = match needs[0] {
        true => Some(sum_to(&ga()?, a.shape())?),
        false => None,
    };
    let gb = match needs[1] {
        true => Some(sum_to(&gb()?, b.shape())?),
        false => None,
    };
    Ok([ga, gb])
}

struct BinaryBackward {
    op: BinaryOp,
    a: Tensor,
    b: Tensor,
}

impl Backward for BinaryBackward {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn backward(&self, g: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let needs = [inputs[0].requires_grad(), inputs[1].requires_grad()];
        Ok(binary_backward(self.op, g, &self.a, &self.b, needs)?.into())
    }
}

/// `op(a, b)` in the graph. A 0-d constant (a Python number) on the host meets a GPU operand on
/// the GPU, as PyTorch lets CPU scalars meet CUDA tensors.
pub fn binary(op: BinaryOp, a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let (da, db) = (av.device(), bv.device());
    let (av, bv) = (scalar_to(a, av, db)?, scalar_to(b, bv, da)?);
    let out = binary_forward(op, &av, &bv)?;
    Ok(Var::from_op(
        out,
        vec![a.clone(), b.clone()],
        BinaryBackward { op, a: av, b: bv },
    ))
}

/// `value` (of constant `var`) moved to `device` if it is a 0-d host constant.
fn scalar_to(var: &Var, value: Tensor, device: Device) -> Result<Tensor> {
    if value.ndim() == 0 && !var.requires_grad() && value.device() != device {
        value.to_device(device)
    } else {
        Ok(value)
    }
}

pub fn add(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Add, a, b)
}
pub fn sub(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Sub, a, b)
}
pub fn mul(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Mul, a, b)
}
pub fn div(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Div, a, b)
}

/// `op(x)` elementwise, on `x`'s device.
pub fn unary_forward(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    match Tensor::place(op.name(), [x])? {
        Placed::Cpu([x]) => unary_host(op, x),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([x]) => Ok(crate::gpu::ops::elementwise::unary(op, x)?.into()),
    }
}

fn unary_host(op: UnaryOp, x: &CpuTensor) -> Result<Tensor> {
    Ok(match op {
        UnaryOp::Neg => map1(x, |v| -v),
        UnaryOp::Exp => map1(x, f32::exp),
        UnaryOp::Log => map1(x, f32::ln),
        UnaryOp::Sqrt => map1(x, f32::sqrt),
        UnaryOp::Tanh => map1(x, f32::tanh),
        UnaryOp::Pow(p) => map1(x, |v| v.powf(p)),
        UnaryOp::Sigmoid => map1(x, crate::cpu::math::sigmoid),
        UnaryOp::Abs => map1(x, f32::abs),
        UnaryOp::Sin => return trig(x, false),
        UnaryOp::Cos => return trig(x, true),
    })
}

/// `x` is the input and `y` the output of the forward.
pub fn unary_backward(op: UnaryOp, g: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    match Tensor::place(op.name(), [g, x, y])? {
        Placed::Cpu([g, x, y]) => unary_backward_host(op, g, x, y),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([g, x, y]) => {
            Ok(crate::gpu::ops::elementwise::unary_backward(op, g, x, y)?.into())
        }
    }
}

fn unary_backward_host(op: UnaryOp, g: &CpuTensor, x: &CpuTensor, y: &CpuTensor) -> Result<Tensor> {
    match op {
        UnaryOp::Neg => Ok(map1(g, |v| -v)),
        UnaryOp::Exp => map2("exp", g, y, |g, y| g * y),
        UnaryOp::Log => map2("log", g, x, |g, x| g / x),
        UnaryOp::Sqrt => map2("sqrt", g, y, |g, y| g * 0.5 / y),
        UnaryOp::Tanh => map2("tanh", g, y, |g, y| g * (1.0 - y * y)),
        UnaryOp::Pow(p) => map2("pow", g, x, |g, x| g * p * x.powf(p - 1.0)),
        UnaryOp::Sigmoid => map2("sigmoid", g, y, |g, y| g * y * (1.0 - y)),
        // PyTorch's sgn(x): 0 at 0 (a subgradient), NaN where x is NaN.
        UnaryOp::Abs => map2("abs", g, x, |g, x| g * sign(x)),
        UnaryOp::Sin => map2("sin", g, trig(x, true)?.cpu("sin")?, |g, c| g * c),
        UnaryOp::Cos => map2("cos", g, trig(x, false)?.cpu("cos")?, |g, s| -(g * s)),
    }
}

/// `sin x` or (`cos`) `cos x`: vectorized ([`sin_cos`]) where its reduction is exact, libm's
/// beyond (a second pass, taken only when some |x| is that large, or NaN).
fn trig(x: &CpuTensor, cos: bool) -> Result<Tensor> {
    let pick = move |(s, c): (f32, f32)| if cos { c } else { s };
    let y = map1(x, move |v| pick(sin_cos(v)));
    if !any_beyond(x.data(), SIN_COS_REDUCED) {
        return Ok(y);
    }
    map2("sin", y.cpu("sin")?, x, move |y, v| {
        if v.abs() <= SIN_COS_REDUCED {
            y
        } else {
            pick((v.sin(), v.cos()))
        }
    })
}

simd_kernel! {
    /// Whether some `|x| > limit` (NaN is not), without an early exit, so that it vectorizes.
    fn any_beyond(x: &[f32], limit: f32) -> bool {
        x.iter().fold(false, |any, v| any | (v.abs() > limit))
    }
}

/// −1, 0 or 1 by the sign of `x`, NaN for NaN (unlike `f32::signum`, which gives ±1 at ±0).
fn sign(x: f32) -> f32 {
    if x == 0.0 || x.is_nan() {
        x * 0.0
    } else {
        x.signum()
    }
}

struct UnaryBackward {
    op: UnaryOp,
    x: Tensor,
    y: Tensor,
}

impl Backward for UnaryBackward {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(unary_backward(self.op, g, &self.x, &self.y)?)])
    }
}

pub fn unary(op: UnaryOp, x: &Var) -> Result<Var> {
    let xv = x.value();
    let y = unary_forward(op, &xv)?;
    Ok(Var::from_op(
        y.clone(),
        vec![x.clone()],
        UnaryBackward { op, x: xv, y },
    ))
}

/// `x·s` elementwise, on `x`'s device (means, gradient scaling).
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    match Tensor::place("scale", [x])? {
        Placed::Cpu([x]) => Ok(map1(x, |v| v * s)),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([x]) => Ok(crate::gpu::ops::elementwise::scale(x, s)?.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::backward;
    use crate::ops::reduce::sum;

    #[test]
    fn div_backward_matches_calculus() {
        let a = Var::leaf(Tensor::new(vec![1.0, 2.0], &[2]).unwrap(), true);
        let b = Var::leaf(Tensor::new(vec![4.0], &[1]).unwrap(), true);
        let y = sum(&div(&a, &b).unwrap(), &[], false).unwrap();
        backward(&y, None, false).unwrap();
        assert_eq!(a.grad().unwrap().data(), &[0.25, 0.25]);
        // d/db (1/b + 2/b) = -3/b² = -3/16
        assert!((b.grad().unwrap().data()[0] + 3.0 / 16.0).abs() < 1e-7);
    }
}
