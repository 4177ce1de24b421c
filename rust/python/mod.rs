//! The PyO3 bindings: the only code in the crate that knows about Python. Each file converts
//! arguments, calls the core through `runtime::run`, and converts results back.

mod batch_norm;
mod convert;
mod decode;
mod errors;
mod functional;
mod gpu;
mod hash_embedding;
mod long_attention;
mod optim;
mod quantization;
mod runtime;
mod sequence;
mod tensor;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    runtime::register(m)?;
    tensor::register(m)?;
    functional::register(m)?;
    optim::register(m)?;
    decode::register(m)?;
    gpu::register(m)?;
    long_attention::register(m)?;
    quantization::register(m)?;
    sequence::register(m)?;
    batch_norm::register(m)?;
    hash_embedding::register(m)?;
    Ok(())
}
