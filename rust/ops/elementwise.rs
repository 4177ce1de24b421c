//! Elementwise arithmetic with NumPy broadcasting.
//!
//! Binary: `add, sub, mul, div` — `out = f(a, b)` over `broadcast(a.shape, b.shape)`; backward
//! sums each operand's gradient back to its own shape. `mul`/`div` save both operands.
//! Unary: `neg, exp, log, sqrt, tanh, pow(x, p)` — `exp`, `sqrt`, `tanh` save their output,
//! `log` and `pow` their input.

use super::broadcast::{map1, map2, sum_to};
use crate::autograd::{Backward, Var};
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// Forward kernel: `f(a, b)` with broadcasting.
pub fn binary_forward(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match op {
        BinaryOp::Add => map2(op.name(), a, b, |x, y| x + y),
        BinaryOp::Sub => map2(op.name(), a, b, |x, y| x - y),
        BinaryOp::Mul => map2(op.name(), a, b, |x, y| x * y),
        BinaryOp::Div => map2(op.name(), a, b, |x, y| x / y),
    }
}

/// Backward kernel: gradients of `a` and `b` given the output gradient `g`.
pub fn binary_backward(
    op: BinaryOp,
    g: &Tensor,
    a: &Tensor,
    b: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (ga, gb) = match op {
        BinaryOp::Add => (g.clone(), g.clone()),
        BinaryOp::Sub => (g.clone(), map1(g, |v| -v)),
        BinaryOp::Mul => (
            map2("mul", g, b, |g, y| g * y)?,
            map2("mul", g, a, |g, x| g * x)?,
        ),
        BinaryOp::Div => {
            let ga = map2("div", g, b, |g, y| g / y)?;
            // d(a/b)/db = -a/b² = -(g/b)·(a/b), computed from g/b to avoid squaring b.
            let a_over_b = map2("div", a, b, |x, y| x / y)?;
            (ga.clone(), map2("div", &ga, &a_over_b, |u, q| -u * q)?)
        }
    };
    Ok((sum_to(&ga, a.shape()), sum_to(&gb, b.shape())))
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
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let (ga, gb) = binary_backward(self.op, g, &self.a, &self.b)?;
        Ok(vec![Some(ga), Some(gb)])
    }
}

pub fn binary(op: BinaryOp, a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = binary_forward(op, &av, &bv)?;
    Ok(Var::from_op(
        out,
        vec![a.clone(), b.clone()],
        BinaryBackward { op, a: av, b: bv },
    ))
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

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Pow(f32),
}

impl UnaryOp {
    fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Pow(_) => "pow",
        }
    }
}

pub fn unary_forward(op: UnaryOp, x: &Tensor) -> Tensor {
    match op {
        UnaryOp::Neg => map1(x, |v| -v),
        UnaryOp::Exp => map1(x, f32::exp),
        UnaryOp::Log => map1(x, f32::ln),
        UnaryOp::Sqrt => map1(x, f32::sqrt),
        UnaryOp::Tanh => map1(x, f32::tanh),
        UnaryOp::Pow(p) => map1(x, |v| v.powf(p)),
    }
}

/// `x` is the input and `y` the output of the forward.
pub fn unary_backward(op: UnaryOp, g: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    match op {
        UnaryOp::Neg => Ok(map1(g, |v| -v)),
        UnaryOp::Exp => map2("exp", g, y, |g, y| g * y),
        UnaryOp::Log => map2("log", g, x, |g, x| g / x),
        UnaryOp::Sqrt => map2("sqrt", g, y, |g, y| g * 0.5 / y),
        UnaryOp::Tanh => map2("tanh", g, y, |g, y| g * (1.0 - y * y)),
        UnaryOp::Pow(p) => map2("pow", g, x, |g, x| g * p * x.powf(p - 1.0)),
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
    let y = unary_forward(op, &xv);
    Ok(Var::from_op(
        y.clone(),
        vec![x.clone()],
        UnaryBackward { op, x: xv, y },
    ))
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
