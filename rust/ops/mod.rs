//! The ops: each file holds one op's forward and backward kernels (on slices or tensors, with
//! shapes in the doc comments), its autograd wiring (a function on `Var`s and a `Backward` impl
//! holding what the forward saved), a naive reference where the kernel is not itself naive,
//! and its tests.

pub mod activation;
pub mod attention;
pub mod broadcast;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod reduce;
pub mod rows;
pub mod shape;
pub mod softmax;
#[cfg(test)]
pub(crate) mod test_support;
