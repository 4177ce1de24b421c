//! GELU (erf and tanh forms), ReLU and SiLU: scalar functions and derivatives, and the op.
//!
//! Forward: `x (any shape)` → same shape; saves the input. Backward: `dx = g ∘ act'(x)` with
//! the exact derivatives (erf form: `Φ(x) + x·φ(x)`).

use super::broadcast::{map1, map2};
use super::rows::{for_each_row, rows_mut};
use crate::autograd::{Backward, Var};
use crate::cpu::math;
use crate::cpu::simd::simd_kernel;
use crate::error::Result;
use crate::tensor::{CpuTensor, Placed, Tensor};

pub use crate::cpu::math::{
    erf, gelu_erf, gelu_erf_grad, gelu_tanh, gelu_tanh_grad, normal_cdf, silu_grad,
};
pub use crate::desc::ActivationKind;

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
            ActivationKind::Silu => math::silu(x),
        }
    }

    /// The derivative at `x`; ReLU's is taken as 0 at 0, as in PyTorch.
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            ActivationKind::Relu => (x > 0.0) as u8 as f32,
            ActivationKind::Gelu => gelu_erf_grad(x),
            ActivationKind::GeluTanh => gelu_tanh_grad(x),
            ActivationKind::Silu => silu_grad(x),
        }
    }
}

/// Forward: `x (any shape)` → `act(x)` (same shape), on `x`'s device.
pub fn activation_forward(kind: ActivationKind, x: &Tensor) -> Result<Tensor> {
    match Tensor::place(kind.name(), [x])? {
        Placed::Cpu([x]) => Ok(forward_host(kind, x)),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([x]) => Ok(crate::gpu::ops::activation::forward_tensor(kind, x)?.into()),
    }
}

/// One `map1` instantiation per kind, so that each vectorized loop holds no `match`.
fn forward_host(kind: ActivationKind, x: &CpuTensor) -> Tensor {
    match kind {
        ActivationKind::Relu => map1(x, |v| ActivationKind::Relu.apply(v)),
        ActivationKind::Gelu => map1(x, gelu_erf),
        ActivationKind::GeluTanh => map1(x, gelu_tanh),
        ActivationKind::Silu => map1(x, math::silu),
    }
}

/// Backward kernel: `g` and the saved input `x` (same shape) → `g ∘ act'(x)`.
pub fn activation_backward(kind: ActivationKind, g: &Tensor, x: &Tensor) -> Result<Tensor> {
    match Tensor::place(kind.name(), [g, x])? {
        Placed::Cpu([g, x]) => backward_host(kind, g, x),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([g, x]) => Ok(crate::gpu::ops::activation::backward_tensor(kind, g, x)?.into()),
    }
}

fn backward_host(kind: ActivationKind, g: &CpuTensor, x: &CpuTensor) -> Result<Tensor> {
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
            ActivationKind::Silu => {
                for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
                    *o = g * silu_grad(x);
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
    let y = activation_forward(kind, &xv)?;
    Ok(Var::from_op(
        y,
        vec![x.clone()],
        ActivationBackward { kind, x: xv },
    ))
}

pub fn relu(x: &Var) -> Result<Var> {
    activation(ActivationKind::Relu, x)
}

/// SiLU: `x·σ(x)`.
pub fn silu(x: &Var) -> Result<Var> {
    activation(ActivationKind::Silu, x)
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

    const KINDS: [ActivationKind; 4] = [
        ActivationKind::Relu,
        ActivationKind::Gelu,
        ActivationKind::GeluTanh,
        ActivationKind::Silu,
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
            ActivationKind::Silu => x / (1.0 + (-x).exp()),
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
            ActivationKind::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
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
            let y = activation_forward(kind, &Tensor::new(vec![1e4, -1e4], &[2]).unwrap()).unwrap();
            assert_eq!(y.data(), &[1e4, 0.0], "{}", kind.name());
            assert_eq!([kind.derivative(1e4), kind.derivative(-1e4)], [1.0, 0.0]);
        }
    }

    #[test]
    fn large_and_empty_inputs() {
        let n = 40_000;
        let x = Tensor::new(rand_vec(9, n, -4.0, 4.0), &[n]).unwrap();
        for kind in KINDS {
            let y = activation_forward(kind, &x).unwrap();
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
