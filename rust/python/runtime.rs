//! Running Rust work from Python, and the process-wide settings.
//!
//! `run` (one op) and `run_pooled` (many) are the doors every binding goes through: they release
//! the GIL and turn errors — and any panic, which would otherwise surface as an
//! uncatchable-looking `PanicException` — into `TfmError`s; `run_pooled` also enters the tfm_rs
//! thread pool with the caller's grad mode.

use crate::autograd::{self, is_grad_enabled, GradMode};
use crate::cpu::{self, pool, Isa};
use crate::error::{Result, TfmError};
use crate::random;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (please report it): {text}")
}

/// `f` with any panic turned into a `TfmError`.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(TfmError::internal("tfm_rs", panic_message(p))))
}

/// Runs `f` without the GIL on this thread; its parallel parts enter the thread pool
/// themselves (`pool::parallel`), so a small op costs a call rather than a round trip to a
/// worker thread.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> PyResult<T> {
    py.detach(move || guarded(f)).map_err(PyErr::from)
}

/// [`run`] for a call made of many ops (decoding steps): it enters the thread pool once, with
/// this thread's grad mode, rather than at every op's parallel part.
pub fn run_pooled<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> PyResult<T> {
    let grad = is_grad_enabled();
    let result = py.detach(move || {
        pool::install(move || {
            let _mode = GradMode::set(grad);
            guarded(f)
        })
        .and_then(|r| r)
    });
    result.map_err(PyErr::from)
}

/// Sets the number of threads tfm_rs ops use (like `torch.set_num_threads`).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    Ok(pool::set_num_threads(n)?)
}

/// The number of threads tfm_rs ops use.
#[pyfunction]
fn get_num_threads() -> usize {
    pool::num_threads()
}

/// Seeds tfm_rs's random number generator (dropout masks), like `torch.manual_seed`.
#[pyfunction]
fn manual_seed(seed: u64) {
    random::manual_seed(seed);
}

/// The state of tfm_rs's random number generator (an int), like `torch.get_rng_state`.
#[pyfunction]
fn get_rng_state() -> u64 {
    random::state()
}

/// Restores a state returned by `get_rng_state`.
#[pyfunction]
fn set_rng_state(state: u64) {
    random::set_state(state);
}

/// Turns graph recording on or off for this thread; returns the previous mode.
#[pyfunction]
fn set_grad_enabled(enabled: bool) -> bool {
    autograd::set_grad_enabled(enabled)
}

#[pyfunction(name = "is_grad_enabled")]
fn py_is_grad_enabled() -> bool {
    is_grad_enabled()
}

/// Which SIMD path the kernels use and which the CPU supports.
#[pyfunction]
fn cpu_features(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("isa", cpu::active_isa().name())?;
    let supported: Vec<&str> = Isa::ALL
        .iter()
        .filter(|i| i.is_supported())
        .map(|i| i.name())
        .collect();
    d.set_item("supported", supported)?;
    d.set_item("int8", cpu::qgemm::QIsa::active().name())?;
    d.set_item("arch", std::env::consts::ARCH)?;
    d.set_item("num_threads", pool::num_threads())?;
    d.set_item("forced_by_env", std::env::var("TFM_RS_ISA").ok())?;
    Ok(d)
}

/// Forces a SIMD path ("avx512", "avx2" or "generic"); raises if the CPU cannot run it.
#[pyfunction]
fn set_isa(name: &str) -> PyResult<()> {
    Ok(cpu::set_isa(Isa::from_name(name)?)?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(manual_seed, m)?)?;
    m.add_function(wrap_pyfunction!(get_rng_state, m)?)?;
    m.add_function(wrap_pyfunction!(set_rng_state, m)?)?;
    m.add_function(wrap_pyfunction!(set_grad_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(py_is_grad_enabled, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_features, m)?)?;
    m.add_function(wrap_pyfunction!(set_isa, m)?)?;
    Ok(())
}
