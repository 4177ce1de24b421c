//! CPU machinery: instruction-set detection (once, overridable), the packed SIMD GEMM, the
//! thread pool every op runs in, and what keeps that state usable across `fork`.

pub mod alloc;
pub mod features;
pub mod fork;
pub mod gemm;
pub mod gemm_bf16;
pub mod math;
pub mod pool;
pub mod qgemm;
pub mod simd;

pub use features::{active_isa, set_isa, Isa};
pub use gemm::{gemm, Activation, Epilogue, MatRef};
