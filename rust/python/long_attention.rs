//! Bindings of the attention kinds that are not masks: linear attention (with its recurrent
//! decoding state) and LSH attention. Python wrappers with docstrings are in
//! `tfm_rs.functional`.

use super::convert::{tensor_from_py, tensor_to_numpy, var_from_py};
use super::runtime::run;
use super::tensor::PyTensor;
use crate::autograd::Var;
use crate::error::TfmError;
use crate::ops::linear_attention::{self as linear, FeatureMap, LinearAttentionState};
use crate::ops::lsh_attention::{self as lsh, LshConfig};
use crate::tensor::{shape_str, Tensor};
use pyo3::prelude::*;

#[pyfunction]
#[pyo3(signature = (query, key, value, causal = false, feature_map = "elu", key_padding_mask = None))]
fn linear_attention(
    py: Python<'_>,
    query: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    causal: bool,
    feature_map: &str,
    key_padding_mask: Option<Vec<bool>>,
) -> PyResult<PyTensor> {
    const OP: &str = "linear_attention";
    let map = FeatureMap::parse(feature_map)?;
    let (q, k, v) = (
        var_from_py(query, OP)?,
        var_from_py(key, OP)?,
        var_from_py(value, OP)?,
    );
    let out = run(py, || {
        linear::linear_attention(&q, &k, &v, causal, map, key_padding_mask)
    })?;
    Ok(PyTensor::wrap(out))
}

#[pyfunction]
#[pyo3(signature = (qk, v, n_hashes = 4, bucket_size = 64, causal = false, seed = 0, key_padding_mask = None))]
#[allow(clippy::too_many_arguments)]
fn lsh_attention(
    py: Python<'_>,
    qk: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    n_hashes: usize,
    bucket_size: usize,
    causal: bool,
    seed: u64,
    key_padding_mask: Option<Vec<bool>>,
) -> PyResult<PyTensor> {
    const OP: &str = "lsh_attention";
    let (x, v) = (var_from_py(qk, OP)?, var_from_py(v, OP)?);
    let cfg = LshConfig {
        n_hashes,
        bucket_size,
        causal,
        seed,
    };
    let out = run(py, || lsh::lsh_attention(&x, &v, &cfg, key_padding_mask))?;
    Ok(PyTensor::wrap(out))
}

/// The recurrent state of causal linear attention: feed one token at a time with `step`.
#[pyclass(name = "LinearAttentionState", module = "tfm_rs._core")]
struct PyLinearAttentionState {
    feature_map: FeatureMap,
    /// The leading dimensions of the first step, and the state they fixed.
    state: Option<(Vec<usize>, LinearAttentionState)>,
}

#[pymethods]
impl PyLinearAttentionState {
    #[new]
    #[pyo3(signature = (feature_map = "elu"))]
    fn new(feature_map: &str) -> PyResult<Self> {
        Ok(PyLinearAttentionState {
            feature_map: FeatureMap::parse(feature_map)?,
            state: None,
        })
    }

    /// Absorbs one token — query, key (..., E), value (..., Ev) — and returns its output
    /// (..., Ev). The first call fixes the leading dimensions and widths.
    fn step(
        &mut self,
        py: Python<'_>,
        query: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<PyTensor> {
        const OP: &str = "LinearAttentionState.step";
        let (q, k, v) = (
            tensor_from_py(query, OP)?.to_host()?,
            tensor_from_py(key, OP)?.to_host()?,
            tensor_from_py(value, OP)?.to_host()?,
        );
        let (qs, vs) = (q.shape().to_vec(), v.shape().to_vec());
        let fits = !qs.is_empty()
            && k.shape() == qs.as_slice()
            && vs.len() == qs.len()
            && vs[..vs.len() - 1] == qs[..qs.len() - 1];
        if !fits {
            return Err(TfmError::shape(OP, format!("expected query, key (..., E) and value (..., Ev) with equal leading dimensions; got {}, {}, {}", shape_str(&qs), shape_str(k.shape()), shape_str(&vs))).into());
        }
        let batch = qs[..qs.len() - 1].to_vec();
        let (e, ev) = (qs[qs.len() - 1], vs[vs.len() - 1]);
        let map = self.feature_map;
        let (lead, state) = self.state.get_or_insert_with(|| {
            let bh = batch.iter().product();
            (batch.clone(), LinearAttentionState::new(bh, e, ev, map))
        });
        if *lead != batch {
            return Err(TfmError::shape(
                OP,
                format!(
                    "this state holds leading dimensions {}; got {}",
                    shape_str(lead),
                    shape_str(&batch)
                ),
            )
            .into());
        }
        let out = run(py, || {
            state.step(q.cpu(OP)?.data(), k.cpu(OP)?.data(), v.cpu(OP)?.data())
        })?;
        let t = Tensor::new(out, vs.as_slice())?;
        Ok(PyTensor::wrap(Var::constant(t)))
    }

    /// `(S, z)` as NumPy arrays, S (..., E, Ev) = Σ φ(k) vᵀ and z (..., E) = Σ φ(k); None
    /// before the first step.
    fn state<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        let Some((lead, state)) = &self.state else {
            return Ok(None);
        };
        let (s, z) = (state.s().to_vec(), state.z().to_vec());
        let e = z.len() / lead.iter().product::<usize>().max(1);
        let ev = if e == 0 { 0 } else { s.len() / z.len() };
        let sh = |extra: &[usize]| lead.iter().chain(extra).copied().collect::<Vec<_>>();
        Ok(Some((
            tensor_to_numpy(py, Tensor::new(s, &sh(&[e, ev]))?)?,
            tensor_to_numpy(py, Tensor::new(z, &sh(&[e]))?)?,
        )))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(linear_attention, m)?)?;
    m.add_function(wrap_pyfunction!(lsh_attention, m)?)?;
    m.add_class::<PyLinearAttentionState>()?;
    Ok(())
}
