//! Conversions between Python objects and core types. Arrays of any layout (Fortran order,
//! negative strides, read-only, non-contiguous) are copied into contiguous storage in logical
//! order; nothing is reinterpreted. Floating arrays other than float32 are cast explicitly;
//! integer and boolean arrays are refused where floats are expected, and vice versa.

use super::runtime::run;
use super::tensor::PyTensor;
use crate::autograd::Var;
use crate::error::TfmError;
use crate::tensor::Tensor;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

fn numpy(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("numpy")
}

/// The array's dtype kind character ('f', 'i', 'u', 'b', …) and name.
fn dtype_of(arr: &Bound<'_, PyUntypedArray>) -> PyResult<(char, String)> {
    let dtype = arr.getattr("dtype")?;
    Ok((
        dtype.getattr("kind")?.extract()?,
        dtype.getattr("name")?.extract()?,
    ))
}

fn copy_f32(arr: &Bound<'_, PyArrayDyn<f32>>) -> PyResult<Tensor> {
    let ro = arr
        .try_readonly()
        .map_err(|e| TfmError::value("tensor", e.to_string()))?;
    let view = ro.as_array();
    let data = match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    };
    Ok(Tensor::new(data, view.shape())?)
}

/// A float tensor from a Tensor, a NumPy array, a Python number or a (nested) list.
pub fn tensor_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<Tensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.borrow().var.value());
    }
    if let Ok(arr) = obj.cast::<PyArrayDyn<f32>>() {
        return copy_f32(arr);
    }
    let py = obj.py();
    if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        let (kind, name) = dtype_of(arr)?;
        if kind == 'f' {
            let cast = arr.call_method1("astype", ("float32",))?;
            return copy_f32(cast.cast::<PyArrayDyn<f32>>()?);
        }
        return Err(TfmError::dtype(op, format!("expected a floating-point array, got dtype {name}; convert it explicitly, e.g. arr.astype(np.float32)")).into());
    }
    if obj.hasattr("dtype")? || obj.hasattr("__array__")? {
        // NumPy scalars and other array-likes: let NumPy say what they are.
        let arr = numpy(py)?.call_method1("asarray", (obj,))?;
        if arr.cast::<PyUntypedArray>().is_ok() {
            return tensor_from_py(&arr, op);
        }
    }
    if obj.is_instance_of::<PyBool>() {
        return Err(TfmError::dtype(op, "expected a number or an array, got a bool").into());
    }
    if obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>() {
        return Ok(Tensor::scalar(obj.extract::<f64>()? as f32));
    }
    if obj.is_instance_of::<pyo3::types::PyList>() || obj.is_instance_of::<pyo3::types::PyTuple>() {
        let arr = numpy(py)?
            .call_method1("asarray", (obj, "float32"))
            .map_err(|e| {
                TfmError::dtype(
                    op,
                    format!("cannot make a float32 tensor from this list: {e}"),
                )
            })?;
        return copy_f32(arr.cast::<PyArrayDyn<f32>>()?);
    }
    let type_name = obj.get_type().name()?;
    Err(TfmError::dtype(
        op,
        format!("expected a Tensor, a NumPy array or a number, got {type_name}"),
    )
    .into())
}

/// The autograd variable behind a Tensor, or a constant for any other array-like.
pub fn var_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<Var> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.borrow().var.clone());
    }
    Ok(Var::constant(tensor_from_py(obj, op)?))
}

/// Integer ids (token ids, class targets) and their shape.
pub fn ids_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<(Vec<i64>, Vec<usize>)> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        let shape = t.borrow().var.shape();
        return Err(TfmError::dtype(
            op,
            format!("ids must be an integer array, got a float32 Tensor of shape {shape:?}"),
        )
        .into());
    }
    let py = obj.py();
    let arr = match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => numpy(py)?
            .call_method1("asarray", (obj,))?
            .cast_into::<PyUntypedArray>()?,
    };
    let (kind, name) = dtype_of(&arr)?;
    if kind != 'i' && kind != 'u' {
        return Err(TfmError::dtype(op, format!("ids must be integers, got dtype {name}")).into());
    }
    let arr = if name == "int64" {
        arr.into_any()
    } else {
        arr.call_method1("astype", ("int64",))?
    };
    let arr = arr.cast::<PyArrayDyn<i64>>()?;
    let ro = arr
        .try_readonly()
        .map_err(|e| TfmError::value(op, e.to_string()))?;
    let view = ro.as_array();
    Ok((view.iter().copied().collect(), view.shape().to_vec()))
}

/// [`tensor_from_py`] brought to the host (a GPU tensor's values are downloaded, through
/// [`run`]), for bindings that run host code on their inputs: the decoder.
pub fn host_tensor_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<Tensor> {
    let t = tensor_from_py(obj, op)?;
    run(obj.py(), move || t.to_host())
}

/// An attention or softmax mask as an additive float tensor. Boolean masks follow PyTorch's
/// `scaled_dot_product_attention`: `True` takes part (adds 0), `False` is masked (adds −∞).
pub fn mask_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<Tensor> {
    if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        let (kind, _) = dtype_of(arr)?;
        if kind == 'b' {
            let additive =
                numpy(obj.py())?.call_method1("where", (arr, 0.0f32, f32::NEG_INFINITY))?;
            return tensor_from_py(&additive, op);
        }
    }
    tensor_from_py(obj, op)
}

/// A NumPy float32 array holding a copy of `t` (downloaded from the GPU if it is there).
pub fn tensor_to_numpy<'py>(py: Python<'py>, t: Tensor) -> PyResult<Bound<'py, PyAny>> {
    let shape = t.shape().to_vec();
    let flat = numpy::PyArray1::from_vec(py, run(py, move || t.into_host_vec())?);
    Ok(flat.reshape(shape)?.into_any())
}
