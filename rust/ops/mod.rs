//! The ops: each file holds one op's forward and backward kernels (on slices or tensors, with
//! shapes in the doc comments), its autograd wiring (a function on `Var`s and a `Backward` impl
//! holding what the forward saved), a naive reference where the kernel is not itself naive,
//! and its tests.
//!
//! Device dispatch: an op checks that its operands share a device
//! ([`crate::tensor::Device::common`]) and runs GPU tensors through the kernels of
//! `crate::gpu::ops` (feature `wgpu`), so that CPU kernels only ever see host tensors. Where an
//! op's tensor-level kernels dispatch (elementwise, broadcast, reductions, shape ops), its
//! autograd wiring is shared by both devices as is. Each op has exactly one `Backward`, here:
//! ops whose backward saves device-specific state (LayerNorm statistics, cross entropy's and
//! attention's log-sum-exp) save it in an enum with a host and a GPU variant and call the
//! tensor-level GPU backward for the latter. Op kinds and configurations that both backends
//! name live in [`crate::desc`].

/// `$gpu` when `$device` is the GPU (feature `wgpu`), else `$cpu`; without the feature only
/// `$cpu` is compiled, as no GPU tensor can exist.
macro_rules! on_device {
    ($device:expr, gpu: $gpu:expr, cpu: $cpu:expr $(,)?) => {
        match $device {
            #[cfg(feature = "wgpu")]
            $crate::tensor::Device::Gpu => $gpu,
            _ => $cpu,
        }
    };
}

pub mod activation;
pub mod additive_attention;
pub mod attention;
pub mod autocast;
pub mod batch_norm;
pub mod broadcast;
pub mod conv1d;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
#[cfg(all(test, feature = "wgpu"))]
mod gpu_tests;
pub mod hash_embedding;
pub mod layer_norm;
pub mod linear;
pub mod linear_attention;
pub mod lsh_attention;
pub mod matmul;
pub mod quantized_linear;
pub mod reduce;
pub mod rnn;
pub mod rows;
pub mod shape;
pub mod softmax;
#[cfg(test)]
pub(crate) mod test_support;
