//! The ops: each file holds one op's forward and backward kernels (on slices or tensors, with
//! shapes in the doc comments), its autograd wiring (a function on `Var`s and a `Backward` impl
//! holding what the forward saved), a naive reference where the kernel is not itself naive,
//! and its tests.

pub mod activation;
pub mod attention;
pub mod broadcast;
pub mod elementwise;
pub mod reduce;
