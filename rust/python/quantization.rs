//! Int8 inference bindings: `QuantizedWeight` (an int8 matrix with per-channel scales, packed on
//! first use) and `quantized_linear`. `tfm_rs.quantization` builds the modules on them.

use super::convert::{tensor_from_py, var_from_py};
use super::runtime::run;
use super::tensor::PyTensor;
use crate::cpu::qgemm::QuantizedMatrix;
use crate::error::TfmError;
use crate::ops::quantized_linear::{self as op, QuantizedWeight};
use crate::tensor::Tensor;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::sync::Arc;

const OP: &str = "quantized_linear";

/// An int8 weight `(out_features, in_features)` with one float32 scale per output feature.
#[pyclass(name = "QuantizedWeight", module = "tfm_rs._core", frozen)]
pub struct PyQuantizedWeight {
    pub inner: Arc<QuantizedWeight>,
}

#[pymethods]
impl PyQuantizedWeight {
    /// QuantizedWeight(int8, scales): `int8` an int8 array `(out, in)`, `scales` `(out,)`
    /// positive float32 (a checkpoint's values).
    #[new]
    fn new(
        py: Python<'_>,
        int8: PyReadonlyArrayDyn<'_, i8>,
        scales: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let shape = int8.shape().to_vec();
        if shape.len() != 2 {
            return Err(TfmError::shape(
                OP,
                format!("int8 weight must be 2-D (out, in), got {shape:?}"),
            )
            .into());
        }
        let data: Vec<i8> = int8.as_array().iter().copied().collect();
        let scales = tensor_from_py(scales, OP)?;
        let scales = scales.to_vec()?;
        let m = run(py, move || {
            QuantizedMatrix::from_parts(data, shape[0], shape[1], scales)
        })?;
        Ok(PyQuantizedWeight {
            inner: Arc::new(QuantizedWeight::new(m)),
        })
    }

    /// Quantizes a float weight `(out, in)` symmetrically per output feature.
    #[staticmethod]
    fn quantize(py: Python<'_>, weight: &Bound<'_, PyAny>) -> PyResult<Self> {
        let w: Tensor = tensor_from_py(weight, OP)?;
        if w.ndim() != 2 {
            return Err(TfmError::shape(
                OP,
                format!("weight must be 2-D (out, in), got {:?}", w.shape()),
            )
            .into());
        }
        let m = run(py, move || {
            let (rows, cols) = (w.shape()[0], w.shape()[1]);
            QuantizedMatrix::quantize(&w.to_vec()?, rows, cols)
        })?;
        Ok(PyQuantizedWeight {
            inner: Arc::new(QuantizedWeight::new(m)),
        })
    }

    /// `(out_features, in_features)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        self.inner.shape()
    }

    /// The int8 values, a NumPy array `(out, in)` (a copy).
    fn int8<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (r, c) = self.inner.shape();
        let flat = PyArray1::from_slice(py, &self.inner.matrix.data);
        Ok(flat.reshape([r, c])?.into_any())
    }

    /// The per-output-feature scales, a float32 NumPy array `(out,)` (a copy).
    fn scales<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_slice(py, &self.inner.matrix.scales)
    }

    /// `scales[j]·int8[j]` as a float32 NumPy array `(out, in)`.
    fn dequantize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (r, c) = self.inner.shape();
        let flat = PyArray1::from_vec(py, self.inner.matrix.dequantize());
        Ok(flat.reshape([r, c])?.into_any())
    }

    fn __repr__(&self) -> String {
        let (r, c) = self.inner.shape();
        format!("QuantizedWeight(out_features={r}, in_features={c}, dtype=int8)")
    }
}

/// quantized_linear(input, weight, bias=None, start=0, end=None): `input (*, in)` times output
/// features `start..end` of `weight` (a QuantizedWeight), plus `bias (end − start,)`.
#[pyfunction]
#[pyo3(signature = (input, weight, bias = None, start = 0, end = None))]
fn quantized_linear(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    weight: &PyQuantizedWeight,
    bias: Option<&Bound<'_, PyAny>>,
    start: usize,
    end: Option<usize>,
) -> PyResult<PyTensor> {
    let x = var_from_py(input, OP)?;
    let b = match bias {
        Some(b) if !b.is_none() => Some(var_from_py(b, OP)?.value()),
        _ => None,
    };
    let w = Arc::clone(&weight.inner);
    let rows = start..end.unwrap_or(w.shape().0);
    let y = run(py, move || {
        op::quantized_linear(&x, &w, Some(rows), b.as_ref())
    })?;
    Ok(PyTensor::wrap(y))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyQuantizedWeight>()?;
    m.add_function(wrap_pyfunction!(quantized_linear, m)?)?;
    Ok(())
}
