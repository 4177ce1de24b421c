//! Bindings of the GPU backend: `gpu_available()`, `gpu_info()` and, with the `wgpu` feature,
//! two private benchmark timers (`_gpu_time_matmul`, `_gpu_time_attention`) that time the
//! kernels alone on device-resident buffers. Tensors reach the GPU through `Tensor.to("gpu")`;
//! there is no NumPy-in/NumPy-out GPU API.

use pyo3::prelude::*;
#[cfg(feature = "wgpu")]
use pyo3::types::PyDict;

/// Whether a GPU adapter and device are available to tfm_rs (False when built without the
/// `wgpu` feature). The first call creates the device.
#[pyfunction]
fn gpu_available(py: Python<'_>) -> bool {
    #[cfg(feature = "wgpu")]
    {
        super::runtime::run(py, || Ok(crate::gpu::is_available())).unwrap_or(false)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = py;
        false
    }
}

/// The GPU adapter in use as a dict (name, backend, device_type, driver), or None when there
/// is none or tfm_rs was built without its GPU backend. `gpu_info(reason=True)` returns the
/// reason as a string instead of None.
#[pyfunction]
#[pyo3(signature = (reason = false))]
fn gpu_info(py: Python<'_>, reason: bool) -> PyResult<Option<Bound<'_, PyAny>>> {
    #[cfg(feature = "wgpu")]
    let info = super::runtime::run(py, || Ok(crate::gpu::info()))?;
    #[cfg(not(feature = "wgpu"))]
    let info: Result<(), String> =
        Err("tfm_rs was built without its GPU backend (cargo feature 'wgpu')".to_string());
    match info {
        #[cfg(feature = "wgpu")]
        Ok(i) => {
            let d = PyDict::new(py);
            d.set_item("name", i.name)?;
            d.set_item("backend", i.backend)?;
            d.set_item("device_type", i.device_type)?;
            d.set_item("driver", i.driver)?;
            Ok(Some(d.into_any()))
        }
        #[cfg(not(feature = "wgpu"))]
        Ok(()) => Ok(None),
        Err(e) if reason => Ok(Some(e.to_string().into_pyobject(py)?.into_any())),
        Err(_) => Ok(None),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gpu_available, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_info, m)?)?;
    #[cfg(feature = "wgpu")]
    {
        m.add_function(wrap_pyfunction!(timers::time_matmul, m)?)?;
        m.add_function(wrap_pyfunction!(timers::time_attention, m)?)?;
    }
    Ok(())
}

#[cfg(feature = "wgpu")]
mod timers {
    use super::super::runtime::run;
    use crate::gpu::ops as gpu_ops;
    use crate::ops::attention::AttentionConfig;
    use pyo3::prelude::*;

    /// Best seconds of `repeats` GEMMs `(batch, m, k)·(k, n)` (`trans_b`: B stored (n, k)) on
    /// device-resident buffers, each waited for (benchmarks; no host copies timed).
    #[pyfunction]
    #[pyo3(name = "_gpu_time_matmul", signature = (m, k, n, batch = 1, trans_b = false, repeats = 10))]
    pub fn time_matmul(
        py: Python<'_>,
        m: usize,
        k: usize,
        n: usize,
        batch: usize,
        trans_b: bool,
        repeats: usize,
    ) -> PyResult<f64> {
        let s = gpu_ops::gemm::GemmShape {
            batch,
            trans_b,
            ..gpu_ops::gemm::GemmShape::new(m, k, n)
        };
        run(py, || crate::gpu::timing::time_gemm(&s, repeats))
    }

    /// Best seconds of the attention forward (and backward, with `backward=True`) for
    /// `bh` batch-heads of `t` queries and keys of dimension `e`, on device-resident buffers.
    #[pyfunction]
    #[pyo3(name = "_gpu_time_attention", signature = (bh, t, e, is_causal = false, backward = false, repeats = 5))]
    pub fn time_attention(
        py: Python<'_>,
        bh: usize,
        t: usize,
        e: usize,
        is_causal: bool,
        backward: bool,
        repeats: usize,
    ) -> PyResult<f64> {
        let cfg = AttentionConfig {
            bh,
            tq: t,
            tk: t,
            e,
            ev: e,
            scale: 1.0 / (e as f32).sqrt(),
            is_causal,
            dropout_p: 0.0,
            seed: 0,
        };
        run(py, || {
            crate::gpu::timing::time_attention(&cfg, backward, repeats)
        })
    }
}
