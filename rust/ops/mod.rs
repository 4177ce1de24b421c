//! The ops: each file holds one op's forward and backward kernels (on slices or tensors, with
//! shapes in the doc comments), its autograd wiring (a function on `Var`s and a `Backward` impl
//! holding what the forward saved), a naive reference where the kernel is not itself naive,
//! and its tests.
//!
//! Device dispatch: an op asks [`Tensor::place`](crate::tensor::Tensor::place) for its
//! operands and matches the answer: `Placed::Cpu` hands its CPU kernel `CpuTensor`s (host values
//! and nothing else), `Placed::Gpu` hands the op's kernel in `crate::gpu::ops` `GpuTensor`s, and
//! operands on two devices are a `Device` error naming the op. Neither kernel can be handed the
//! other device's values, so nothing checks devices twice or panics on a wrong one. An op with
//! no GPU kernel yet reads its operands with [`Tensor::cpu`](crate::tensor::Tensor::cpu), a
//! `Device` error naming the op for a GPU tensor. GPU paths that compose other ops (linear and
//! matmul: GEMMs plus `broadcast_to` / `sum_to`) live in the op's file, on `Tensor`s.
//!
//! Each op has exactly one `Backward`, shared by both devices: what it saves is a `Tensor`
//! (either device) or, where the saved statistics differ in kind (LayerNorm's f64 row statistics
//! on the host, `GpuTensor`s on the GPU; cross entropy's and attention's log-sum-exp), an enum
//! with a host and a GPU variant. Op kinds and configurations that both backends name live in
//! [`crate::desc`].

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
pub mod select;
pub mod shape;
pub mod softmax;
#[cfg(test)]
pub(crate) mod test_support;
