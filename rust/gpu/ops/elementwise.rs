//! Elementwise arithmetic on the GPU, on tensors, with the semantics of
//! [`crate::ops::elementwise`]: [`binary`] over NumPy-broadcast operands, [`unary`] maps and
//! [`unary_backward`], and [`scale`] (`x·s`, for means and gradient scaling).

use super::gemm::u32_of;
use crate::desc::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid_elems, launch, shader, Arg};
use crate::gpu::GpuTensor;
use crate::shape::{broadcast_shapes, broadcast_strides, numel};

const OP: &str = "gpu elementwise";
shader!(ELEMENTWISE, "elementwise.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    kind: u32,
    s: f32,
}

/// `op(a, b)` over `broadcast(a.shape, b.shape)`.
pub fn binary(op: BinaryOp, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
    let name = op.name();
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let out = GpuTensor::zeros(&shape)?;
    let n = numel(&shape);
    if n == 0 {
        return Ok(out);
    }
    let meta: Vec<u32> = shape
        .iter()
        .chain(&broadcast_strides(a.shape(), &shape))
        .chain(&broadcast_strides(b.shape(), &shape))
        .map(|&v| u32_of(OP, "a size or stride", v))
        .collect::<Result<_>>()?;
    let p = Params {
        n: u32_of(OP, "the output's size", n)?,
        rank: shape.len() as u32,
        kind: match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
        },
        s: 0.0,
    };
    let (ab, bb) = (a.buffer(), b.buffer());
    let meta = GpuBuffer::from_slice(&meta)?;
    let args = [
        Arg::In(&meta),
        Arg::In(ab),
        Arg::In(bb),
        Arg::In(ab),
        Arg::Out(out.buffer()),
    ];
    launch(name, &ELEMENTWISE, "binary", &p, &args, grid_elems(n))?;
    Ok(out)
}

/// The shader's kind for `x·s` (its `default` case).
const SCALE: u32 = 10;

/// (kind, s) of a unary op in the shader's numbering.
fn unary_kind(op: UnaryOp) -> (u32, f32) {
    match op {
        UnaryOp::Neg => (0, 0.0),
        UnaryOp::Exp => (1, 0.0),
        UnaryOp::Log => (2, 0.0),
        UnaryOp::Sqrt => (3, 0.0),
        UnaryOp::Tanh => (4, 0.0),
        UnaryOp::Pow(s) => (5, s),
        UnaryOp::Sigmoid => (6, 0.0),
        UnaryOp::Abs => (7, 0.0),
        UnaryOp::Sin => (8, 0.0),
        UnaryOp::Cos => (9, 0.0),
    }
}

/// Runs `entry` with `(kind, s)` over `x`'s elements; `y` and `g` as the backward binds them.
fn launch_unary(
    entry: &'static str,
    (kind, s): (u32, f32),
    x: &GpuTensor,
    y: &GpuTensor,
    g: &GpuTensor,
) -> Result<GpuTensor> {
    let out = GpuTensor::zeros(x.shape())?;
    let n = x.numel();
    if n == 0 {
        return Ok(out);
    }
    let p = Params {
        n: u32_of(OP, "the size", n)?,
        rank: 0,
        kind,
        s,
    };
    let xb = x.buffer();
    let args = [
        Arg::In(xb),
        Arg::In(xb),
        Arg::In(y.buffer()),
        Arg::In(g.buffer()),
        Arg::Out(out.buffer()),
    ];
    launch(OP, &ELEMENTWISE, entry, &p, &args, grid_elems(n))?;
    Ok(out)
}

/// `op(x)` elementwise.
pub fn unary(op: UnaryOp, x: &GpuTensor) -> Result<GpuTensor> {
    launch_unary("unary", unary_kind(op), x, x, x)
}

/// `g · op'(x)` from the forward's input `x` and output `y`.
pub fn unary_backward(
    op: UnaryOp,
    g: &GpuTensor,
    x: &GpuTensor,
    y: &GpuTensor,
) -> Result<GpuTensor> {
    launch_unary("unary_backward", unary_kind(op), x, y, g)
}

/// `x · s` elementwise (the shader's default kind, past the unary ops' numbers).
pub fn scale(x: &GpuTensor, s: f32) -> Result<GpuTensor> {
    launch_unary("unary", (SCALE, s), x, x, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::elementwise::{binary_forward, unary_backward as cpu_backward};
    use crate::ops::test_support::rand_vec;
    use crate::tensor::Tensor;

    fn pair(seed: u64, shape: &[usize], lo: f32, hi: f32) -> (Tensor, GpuTensor) {
        let host = Tensor::new(rand_vec(seed, numel(shape), lo, hi), shape).unwrap();
        let dev = GpuTensor::from_host(host.data(), shape).unwrap();
        (host, dev)
    }

    #[test]
    fn binary_ops_broadcast_as_on_cpu() {
        if !require_gpu("elementwise binary") {
            return;
        }
        let shapes: [(&[usize], &[usize]); 5] = [
            (&[3, 17], &[17]),
            (&[127, 1, 3], &[5, 1]),
            (&[1], &[2, 3]),
            (&[], &[17]),
            (&[0, 3], &[3]),
        ];
        for (i, (sa, sb)) in shapes.into_iter().enumerate() {
            let (ha, da) = pair(i as u64, sa, -2.0, 2.0);
            let (hb, db) = pair(i as u64 + 9, sb, 0.5, 2.0);
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                let want = binary_forward(op, &ha, &hb).unwrap();
                let got = binary(op, &da, &db).unwrap();
                assert_eq!(got.shape(), want.shape());
                let what = format!("{op:?} {sa:?} {sb:?}");
                assert_rel(&what, &got.to_vec().unwrap(), want.data(), 1e-6);
            }
        }
    }

    #[test]
    fn unary_ops_and_gradients_match_cpu() {
        if !require_gpu("elementwise unary") {
            return;
        }
        for (i, n) in [1usize, 3, 17, 300].into_iter().enumerate() {
            let s = i as u64 * 3;
            // Positive inputs for log/sqrt/fractional powers; signed ones for the rest.
            let (hp, dp) = pair(s, &[n], 0.1, 3.0);
            let (hs, ds) = pair(s + 1, &[n], -30.0, 30.0);
            let (hg, dg) = pair(s + 2, &[n], -1.0, 1.0);
            let ops = [
                (UnaryOp::Neg, false),
                (UnaryOp::Exp, false),
                (UnaryOp::Log, true),
                (UnaryOp::Sqrt, true),
                (UnaryOp::Tanh, false),
                (UnaryOp::Pow(2.0), false),
                (UnaryOp::Pow(3.0), false),
                (UnaryOp::Pow(0.5), true),
                (UnaryOp::Sigmoid, false),
                (UnaryOp::Abs, false),
                (UnaryOp::Sin, false),
                (UnaryOp::Cos, false),
            ];
            for (op, positive) in ops {
                let (hx, dx) = if positive { (&hp, &dp) } else { (&hs, &ds) };
                // exp of ±30 stays finite in f32; the relative check covers its range.
                let want = crate::ops::elementwise::unary_forward(op, hx).unwrap();
                let got = unary(op, dx).unwrap();
                let what = format!("{op:?} n={n}");
                assert_rel(&what, &got.to_vec().unwrap(), want.data(), 2e-6);
                let want_g = cpu_backward(op, &hg, hx, &want).unwrap();
                let got_g = unary_backward(op, &dg, dx, &got).unwrap();
                assert_rel(&what, &got_g.to_vec().unwrap(), want_g.data(), 1e-5);
            }
            let got = scale(&ds, -0.25).unwrap().to_vec().unwrap();
            let want: Vec<f32> = hs.data().iter().map(|v| v * -0.25).collect();
            assert_eq!(got, want);
        }
    }
}
