//! GELU (erf and tanh forms) and ReLU: scalar functions and derivatives, and the op.
//!
//! Forward: `x (any shape)` → same shape; saves the input. Backward: `dx = g ∘ act'(x)` with
//! the exact derivatives (erf form: `Φ(x) + x·φ(x)`).

use super::broadcast::{map1, map2};
use super::rows::{exp_fast, for_each_row, rows_mut};
use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::Result;
use crate::tensor::Tensor;

pub use crate::desc::ActivationKind;

// The scalar functions are `#[inline(always)]` and branch-free (libm's `erff`/`tanhf` are
// calls that no loop can vectorize), so that the `map1`/`map2` kernels compile them into 16-
// or 8-lane SIMD code for the active instruction set.

const K: f32 = 0.797_884_6; // √(2/π)
const C: f32 = 0.044715;
const INV_SQRT_2PI: f32 = 0.398_942_3; // 1/√(2π)

/// `Φ(x)`, the standard normal CDF, to a few f32 ulps relative on both tails:
/// `Φ(−|x|) = ½·erfc(|x|/√2)` with Numerical Recipes' `erfcc` (Chebyshev fit,
/// `erfc(z) = t·exp(−z² + P(t))`, `t = 1/(1 + z/2)`, fractional error < 1.2e-7 for z ≥ 0) on
/// `exp_fast`, and `Φ(x) = 1 − Φ(−x)` for x ≥ 0. NaN gives NaN.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -0.822_152_23 + t * 0.170_872_77;
    let p = 1.488_515_9 + t * p;
    let p = -1.135_204 + t * p;
    let p = 0.278_868_07 + t * p;
    let p = -0.186_288_06 + t * p;
    let p = 0.096_784_18 + t * p;
    let p = 0.374_091_96 + t * p;
    let p = 1.000_023_7 + t * p;
    let p = -1.265_512_2 + t * p;
    let lower = 0.5 * t * exp_fast(p - z * z);
    if x < 0.0 {
        lower
    } else {
        1.0 - lower
    }
}

/// `1/(1 + e^{−v})`, exact limits 0 and 1 at the tails.
#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-v))
}

/// `x · Φ(x)` with the exact normal CDF (PyTorch's `approximate='none'`).
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// `0.5·x·(1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)`, computed as `x·σ(2u)` (the same
/// value: `½(1 + tanh u) = σ(2u)`), which keeps full relative precision on the negative tail.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    x * sigmoid(2.0 * K * (x + C * x * x * x))
}

/// The error function, to f32 precision (|error| < 2e-7).
#[inline]
pub fn erf(x: f32) -> f32 {
    libm::erff(x)
}

/// d/dx of [`gelu_erf`]: `Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_erf_grad(x: f32) -> f32 {
    normal_cdf(x) + x * INV_SQRT_2PI * exp_fast(-0.5 * x * x)
}

/// d/dx of [`gelu_tanh`]: `0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)` with
/// `t = tanh(u)`; with `s = σ(2u)`, `0.5·(1 + t) = s` and `1 − t² = 4·s·(1 − s)`.
#[inline(always)]
pub fn gelu_tanh_grad(x: f32) -> f32 {
    let s = sigmoid(2.0 * K * (x + C * x * x * x));
    s + 2.0 * x * s * (1.0 - s) * K * (1.0 + 3.0 * C * x * x)
}

impl ActivationKind {
    /// The activation of one value. ReLU keeps NaN (written as `x ≤ 0 → 0`), as PyTorch does.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            ActivationKind::Relu => {
                if x <= 0.0 {
                    0.0
                } else {
                    x
                }
            }
            ActivationKind::Gelu => gelu_erf(x),
            ActivationKind::GeluTanh => gelu_tanh(x),
        }
    }

    /// The derivative at `x`; ReLU's is taken as 0 at 0, as in PyTorch.
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            ActivationKind::Relu => (x > 0.0) as u8 as f32,
            ActivationKind::Gelu => gelu_erf_grad(x),
            ActivationKind::GeluTanh => gelu_tanh_grad(x),
        }
    }
}

/// Forward kernel: `x (any shape)` → `act(x)` (same shape).
/// One `map1` instantiation per kind, so that each vectorized loop holds no `match`.
pub fn activation_forward(kind: ActivationKind, x: &Tensor) -> Tensor {
    match kind {
        ActivationKind::Relu => map1(x, |v| ActivationKind::Relu.apply(v)),
        ActivationKind::Gelu => map1(x, gelu_erf),
        ActivationKind::GeluTanh => map1(x, gelu_tanh),
    }
}

/// Backward kernel: `g` and the saved input `x` (same shape) → `g ∘ act'(x)`.
pub fn activation_backward(kind: ActivationKind, g: &Tensor, x: &Tensor) -> Result<Tensor> {
    on_device!(g.device(),
        gpu: return crate::gpu::ops::activation::backward_tensor(kind, g, x),
        cpu: (),
    );
    if g.shape() != x.shape() {
        return map2(kind.name(), g, x, |g, x| g * kind.derivative(x));
    }
    let (gd, xd, n) = (g.data(), x.data(), x.numel());
    let mut out = crate::cpu::alloc::output(n);
    for_each_row(
        rows_mut(&mut out, n.div_ceil(CHUNK), CHUNK),
        CHUNK,
        |c, o| {
            let (g, x) = (&gd[c * CHUNK..][..o.len()], &xd[c * CHUNK..][..o.len()]);
            grad_chunk(o, g, x, kind)
        },
    );
    Tensor::new(out, x.shape())
}

/// Elements per task of the backward; elementwise, so the split never changes results.
const CHUNK: usize = 1 << 13;

simd_kernel! {
    /// `o = g ∘ act'(x)` over equally long slices. Its own kernel rather than a `map2`
    /// closure: the GELU derivatives are big enough that LLVM kept the closure out of line
    /// (profiled: scalar code, 15× slower than the forward).
    fn grad_chunk(o: &mut [f32], g: &[f32], x: &[f32], kind: ActivationKind) {
        match kind {
            ActivationKind::Relu => {
                for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
                    *o = g * ActivationKind::Relu.derivative(x);
                }
            }
            ActivationKind::Gelu => {
                for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
                    *o = g * gelu_erf_grad(x);
                }
            }
            ActivationKind::GeluTanh => {
                for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
                    *o = g * gelu_tanh_grad(x);
                }
            }
        }
    }
}

/// Saves the input: GELU's derivative needs it, and ReLU's sign is the same as the input's.
struct ActivationBackward {
    kind: ActivationKind,
    x: Tensor,
}

impl Backward for ActivationBackward {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(activation_backward(self.kind, g, &self.x)?)])
    }
}

pub fn activation(kind: ActivationKind, x: &Var) -> Result<Var> {
    let xv = x.value();
    let y = on_device!(xv.device(),
        gpu: crate::gpu::ops::activation::forward_tensor(kind, &xv)?,
        cpu: activation_forward(kind, &xv),
    );
    Ok(Var::from_op(
        y,
        vec![x.clone()],
        ActivationBackward { kind, x: xv },
    ))
}

pub fn relu(x: &Var) -> Result<Var> {
    activation(ActivationKind::Relu, x)
}

/// GELU: the exact erf form, or with `approximate_tanh` PyTorch's tanh approximation.
pub fn gelu(x: &Var, approximate_tanh: bool) -> Result<Var> {
    activation(
        if approximate_tanh {
            ActivationKind::GeluTanh
        } else {
            ActivationKind::Gelu
        },
        x,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::*;

    const KINDS: [ActivationKind; 3] = [
        ActivationKind::Relu,
        ActivationKind::Gelu,
        ActivationKind::GeluTanh,
    ];

    /// f64 references straight from the definitions.
    fn reference(kind: ActivationKind, x: f64) -> f64 {
        match kind {
            ActivationKind::Relu => x.max(0.0),
            ActivationKind::Gelu => 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())),
            ActivationKind::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
            }
        }
    }

    fn reference_grad(kind: ActivationKind, x: f64) -> f64 {
        match kind {
            ActivationKind::Relu => (x > 0.0) as u8 as f64,
            ActivationKind::Gelu => {
                0.5 * (1.0 + libm::erf(x / 2f64.sqrt()))
                    + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
            }
            ActivationKind::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let t = (k * (x + 0.044715 * x.powi(3))).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            }
        }
    }

    /// Forward 1e-5 relative (+1e-6 absolute, for GELU's tiny negative tail); gradients vs the
    /// analytic f64 derivative and vs central differences (h = 1e-4) at 1e-4. Data avoids
    /// |x| < 0.01, where ReLU's kink would spoil the differences.
    #[test]
    fn matches_reference_on_odd_shapes() {
        for (i, shape) in [
            vec![1],
            vec![3],
            vec![17],
            vec![127],
            vec![3, 17],
            vec![17, 127],
        ]
        .iter()
        .enumerate()
        {
            let n: usize = shape.iter().product();
            let xd: Vec<f32> = rand_vec(i as u64, n, -6.0, 6.0)
                .into_iter()
                .map(|v| if v.abs() < 0.01 { v + 0.1 } else { v })
                .collect();
            let x64 = to_f64(&xd);
            let g = rand_vec(50 + i as u64, n, -1.0, 1.0);
            let g64 = to_f64(&g);
            for kind in KINDS {
                let x = leaf(xd.clone(), shape);
                let y = activation(kind, &x).unwrap();
                let want: Vec<f64> = x64.iter().map(|&v| reference(kind, v)).collect();
                assert_close(kind.name(), y.value().data(), &want, 1e-5, 1e-6);
                let gx = &grads(&y, &g, &[&x])[0];
                let analytic: Vec<f64> = x64
                    .iter()
                    .zip(&g64)
                    .map(|(&v, g)| g * reference_grad(kind, v))
                    .collect();
                assert_close("backward vs analytic", gx, &analytic, 1e-4, 1e-6);
                let fd = finite_diff(&x64, 1e-4, |p| {
                    dot(
                        &g64,
                        &p.iter().map(|&v| reference(kind, v)).collect::<Vec<_>>(),
                    )
                });
                assert_close("backward vs finite differences", gx, &fd, 1e-4, 1e-6);
            }
        }
    }

    #[test]
    fn special_values() {
        let x = leaf(vec![0.0, -0.0, f32::NAN, 1e4, -1e4], &[5]);
        let y = relu(&x).unwrap().value();
        assert_eq!(&y.data()[..2], &[0.0, 0.0]);
        assert!(y.data()[2].is_nan());
        assert_eq!(&y.data()[3..], &[1e4, 0.0]);
        assert_eq!(ActivationKind::Relu.derivative(0.0), 0.0);
        for kind in [ActivationKind::Gelu, ActivationKind::GeluTanh] {
            let y = activation_forward(kind, &Tensor::new(vec![1e4, -1e4], &[2]).unwrap());
            assert_eq!(y.data(), &[1e4, 0.0], "{}", kind.name());
            assert_eq!([kind.derivative(1e4), kind.derivative(-1e4)], [1.0, 0.0]);
        }
    }

    #[test]
    fn large_and_empty_inputs() {
        let n = 40_000;
        let x = Tensor::new(rand_vec(9, n, -4.0, 4.0), &[n]).unwrap();
        for kind in KINDS {
            let y = activation_forward(kind, &x);
            let want: Vec<f64> = x
                .data()
                .iter()
                .map(|&v| reference(kind, v as f64))
                .collect();
            assert_close(kind.name(), y.data(), &want, 1e-5, 1e-6);
        }
        let e = leaf(vec![], &[0, 3]);
        let y = gelu(&e, false).unwrap();
        assert_eq!(y.shape(), vec![0, 3]);
        assert!(grads(&y, &[], &[&e])[0].is_empty());
    }
}
