//! tfm_rs: the Transformer of "Attention Is All You Need" on a Rust core.
//!
//! Modules, from the bottom of the import order up:
//!
//! - [`error`]: the one error type, [`TfmError`].
//! - [`desc`]: device-neutral op descriptors (op kinds, loss and optimizer configurations) that
//!   the CPU kernels, the GPU kernels and the ops all name.
//! - [`cpu`]: instruction-set detection, the packed SIMD GEMM, the thread pool.
//! - `gpu` (feature `wgpu`): the same ops as WGSL compute shaders through wgpu, as
//!   buffer-level kernels (and tensor-level helpers the ops call for GPU values).
//! - [`tensor`]: f32 values with a shape, on the host or the GPU.
//! - [`random`]: counter-based random numbers (dropout masks independent of thread count).
//! - [`autograd`]: `Var`, the graph, and the backward pass.
//! - [`ops`]: one file per op: its CPU kernels, its reference and tests, the differentiable
//!   function and its one `Backward`, dispatching GPU values to `gpu`.
//! - [`optim`]: Adam/AdamW and SGD updates, matching `torch.optim` step for step, on either
//!   device.
//! - [`decode`]: greedy, beam and sampling search with a key/value cache.
//! - `python` (feature `python`): the PyO3 bindings, the only code that knows about Python;
//!   they only convert, and every call into Rust goes through one door that catches panics.
//!
//! Adding an op: `CONTRIBUTING.md` at the repository root.
//!
//! ```
//! use tfm_rs::{autograd::{backward, Var}, ops, tensor::Tensor};
//! let x = Var::leaf(Tensor::new(vec![1.0, -2.0, 3.0], &[3]).unwrap(), true);
//! let y = ops::reduce::sum(&ops::elementwise::mul(&x, &x).unwrap(), &[], false).unwrap();
//! backward(&y, None, false).unwrap();
//! assert_eq!(x.grad().unwrap().data(), &[2.0, -4.0, 6.0]);
//! ```

pub mod autograd;
pub mod cpu;
pub mod decode;
pub mod desc;
pub mod error;
#[cfg(feature = "wgpu")]
pub mod gpu;
pub mod ops;
pub mod optim;
pub mod random;
pub mod tensor;

#[cfg(feature = "python")]
mod python;

pub use error::{ErrorKind, Result, TfmError};
