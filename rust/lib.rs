//! tfm_rs: the Transformer of "Attention Is All You Need" on a Rust core.
//!
//! - [`tensor`]: contiguous f32 storage with a shape.
//! - [`cpu`]: instruction-set detection, the packed SIMD GEMM, the thread pool.
//! - [`ops`]: one file per op, each a forward/backward pair with its reference and tests.
//! - [`random`]: counter-based random numbers (dropout masks independent of thread count).
//! - [`autograd`]: `Var`, the graph, and the backward pass.
//! - [`decode`]: greedy, beam and sampling search with a key/value cache.
//! - [`optim`]: Adam/AdamW and SGD updates, matching `torch.optim` step for step.
//! - `gpu` (feature `wgpu`): the same ops as WGSL compute shaders through wgpu.
//! - `python` (feature `python`): the PyO3 bindings, the only code that knows about Python.
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
