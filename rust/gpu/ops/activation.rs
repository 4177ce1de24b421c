//! GELU (erf and tanh forms) and ReLU on the GPU: `y = act(x)` and `dx = g ∘ act'(x)`, any
//! length, with the formulas of [`crate::ops::activation`].

use super::check_len;
use crate::desc::ActivationKind;
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid_elems, launch, shader, Arg};
use crate::gpu::GpuTensor;

const OP: &str = "gpu activation";
shader!(ACTIVATION, "activation.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    kind: u32,
}

fn params(kind: ActivationKind, n: usize) -> Result<Params> {
    Ok(Params {
        n: super::gemm::u32_of(OP, "the length", n)?,
        kind: match kind {
            ActivationKind::Relu => 0,
            ActivationKind::Gelu => 1,
            ActivationKind::GeluTanh => 2,
            ActivationKind::Silu => 3,
        },
    })
}

/// `y ← act(x)`; `y` and `x` of one length.
pub fn forward(kind: ActivationKind, y: &GpuBuffer, x: &GpuBuffer) -> Result<()> {
    check_len(OP, "y", y.len(), x.len())?;
    let p = params(kind, x.len())?;
    let args = [Arg::In(x), Arg::In(x), Arg::Out(y)];
    launch(OP, &ACTIVATION, "forward", &p, &args, grid_elems(x.len()))
}

/// `dx ← g ∘ act'(x)`; all of one length.
pub fn backward(kind: ActivationKind, dx: &GpuBuffer, g: &GpuBuffer, x: &GpuBuffer) -> Result<()> {
    check_len(OP, "g", g.len(), x.len())?;
    check_len(OP, "dx", dx.len(), x.len())?;
    let p = params(kind, x.len())?;
    let args = [Arg::In(x), Arg::In(g), Arg::Out(dx)];
    launch(OP, &ACTIVATION, "backward", &p, &args, grid_elems(x.len()))
}

/// [`forward`] on a GPU tensor.
pub fn forward_tensor(kind: ActivationKind, x: &GpuTensor) -> Result<GpuTensor> {
    let y = GpuTensor::zeros(x.shape())?;
    forward(kind, y.buffer(), x.buffer())?;
    Ok(y)
}

/// [`backward`] on GPU tensors of one shape.
pub fn backward_tensor(kind: ActivationKind, g: &GpuTensor, x: &GpuTensor) -> Result<GpuTensor> {
    let dx = GpuTensor::zeros(x.shape())?;
    backward(kind, dx.buffer(), g.buffer(), x.buffer())?;
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::buffer::{download, upload};
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::activation::{activation_backward, activation_forward};
    use crate::ops::test_support::rand_vec;
    use crate::tensor::Tensor;

    /// `forward` from and to the host.
    fn forward_host(kind: ActivationKind, x: &[f32]) -> Result<Vec<f32>> {
        let y = GpuBuffer::zeros(x.len())?;
        forward(kind, &y, &upload(x)?)?;
        download(&y)
    }

    /// `backward` from and to the host.
    fn backward_host(kind: ActivationKind, g: &[f32], x: &[f32]) -> Result<Vec<f32>> {
        let dx = GpuBuffer::zeros(x.len())?;
        backward(kind, &dx, &upload(g)?, &upload(x)?)?;
        download(&dx)
    }

    #[test]
    fn activations_match_cpu() {
        if !require_gpu("activation") {
            return;
        }
        for (i, n) in [1usize, 7, 257, 1000].into_iter().enumerate() {
            let x = rand_vec(i as u64, n, -6.0, 6.0);
            let g = rand_vec(i as u64 + 50, n, -1.0, 1.0);
            let xt = Tensor::new(x.clone(), &[n]).unwrap();
            let gt = Tensor::new(g.clone(), &[n]).unwrap();
            for kind in [
                ActivationKind::Relu,
                ActivationKind::Gelu,
                ActivationKind::GeluTanh,
                ActivationKind::Silu,
            ] {
                let want = activation_forward(kind, &xt).unwrap();
                assert_rel(
                    kind.name(),
                    &forward_host(kind, &x).unwrap(),
                    want.data(),
                    1e-4,
                );
                let want = activation_backward(kind, &gt, &xt).unwrap();
                let got = backward_host(kind, &g, &x).unwrap();
                assert_rel(kind.name(), &got, want.data(), 1e-4);
            }
        }
    }

    #[test]
    fn activation_rejects_mismatched_buffers() {
        if !require_gpu("activation") {
            return;
        }
        let (a, b) = (GpuBuffer::zeros(3).unwrap(), GpuBuffer::zeros(4).unwrap());
        let err = forward(ActivationKind::Relu, &a, &b).unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::Shape);
    }
}
