//! Conversions between Python objects and core types. Arrays of any layout (Fortran order,
//! negative strides, read-only, non-contiguous) are copied into contiguous storage in logical
//! order; nothing is reinterpreted. Floating arrays other than float32 are cast explicitly;
//! integer and boolean arrays are refused where floats are expected, and vice versa.

use super::runtime::run;
use super::tensor::PyTensor;
use crate::autograd::Var;
use crate::error::TfmError;
use crate::tensor::{CpuTensor, Tensor};
use numpy::ndarray::{s, ArrayView2, ArrayViewD, Axis, Ix2, IxDyn};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
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

/// Arrays at least this large (in elements) are copied without the GIL.
const DETACH_MIN: usize = 1 << 16;

/// `arr` as a C-contiguous array of `T` (dtype name `dtype`): itself when it already is one,
/// else NumPy's converted copy, which casts and reorders in one pass of C.
fn c_contiguous<'py, T: numpy::Element>(
    arr: &Bound<'py, PyUntypedArray>,
    dtype: &str,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    if let Ok(a) = arr.cast::<PyArrayDyn<T>>() {
        if a.is_c_contiguous() {
            return Ok(a.clone());
        }
    }
    // `asarray` rather than `ascontiguousarray`, which turns a 0-d array into a 1-d one.
    let kwargs = pyo3::types::PyDict::new(arr.py());
    kwargs.set_item("dtype", dtype)?;
    kwargs.set_item("order", "C")?;
    Ok(numpy(arr.py())?
        .getattr("asarray")?
        .call((arr,), Some(&kwargs))?
        .cast_into::<PyArrayDyn<T>>()?)
}

/// The values of a C-contiguous array, copied in one `memcpy` into `dst(len)`; without the GIL
/// when large, since nothing Python is touched.
fn copy_values<T: numpy::Element + Copy + Send + Sync>(
    arr: &Bound<'_, PyArrayDyn<T>>,
    op: &'static str,
    dst: impl FnOnce(usize) -> Vec<T> + Send,
) -> PyResult<Vec<T>> {
    let ro = arr
        .try_readonly()
        .map_err(|e| TfmError::value(op, e.to_string()))?;
    let src = ro
        .as_slice()
        .map_err(|e| TfmError::internal(op, e.to_string()))?;
    let copy = move || {
        let mut out = dst(src.len());
        out.copy_from_slice(src);
        out
    };
    Ok(if src.len() >= DETACH_MIN {
        arr.py().detach(copy)
    } else {
        copy()
    })
}

/// Copies `src` (any strides, negative ones included) into `dst` in row-major order, cast to
/// f32. The last two dimensions go in 32×32 tiles, so a transposed array is read and written a
/// cache line at a time instead of one element per line.
fn gather<T: Copy>(src: ArrayViewD<'_, T>, dst: &mut [f32], cast: impl Fn(T) -> f32 + Copy) {
    if dst.is_empty() {
        return;
    }
    match src.ndim() {
        0 => dst[0] = cast(src[IxDyn(&[])]),
        1 => match src.as_slice() {
            Some(row) => cast_into(row, dst, cast),
            None => {
                for (o, &x) in dst.iter_mut().zip(src.iter()) {
                    *o = cast(x);
                }
            }
        },
        2 => gather_2d(src.into_dimensionality::<Ix2>().expect("2-d"), dst, cast),
        _ => {
            let inner = dst.len() / src.len_of(Axis(0));
            for (sub, out) in src.outer_iter().zip(dst.chunks_mut(inner)) {
                gather(sub, out, cast);
            }
        }
    }
}

/// `dst[i] = cast(src[i])`, as one vectorizable loop.
fn cast_into<T: Copy>(src: &[T], dst: &mut [f32], cast: impl Fn(T) -> f32) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = cast(x);
    }
}

fn gather_2d<T: Copy>(src: ArrayView2<'_, T>, dst: &mut [f32], cast: impl Fn(T) -> f32 + Copy) {
    const TILE: usize = 32;
    let (rows, cols) = src.dim();
    if src.row(0).as_slice().is_some() {
        // Rows are contiguous (C order, or rows picked from it): a straight pass per row.
        for (row, out) in src.rows().into_iter().zip(dst.chunks_mut(cols)) {
            cast_into(row.to_slice().expect("rows share strides"), out, cast);
        }
        return;
    }
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            let tile = src.slice(s![r0..(r0 + TILE).min(rows), c0..(c0 + TILE).min(cols)]);
            for (i, row) in tile.rows().into_iter().enumerate() {
                let out = &mut dst[(r0 + i) * cols + c0..][..row.len()];
                for (o, &x) in out.iter_mut().zip(row.iter()) {
                    *o = cast(x);
                }
            }
        }
    }
}

/// A tensor holding a copy of `arr`'s values, from a float array of any float dtype and layout.
/// Float32 and float64 arrays are copied (and cast) here, without the GIL when large; other
/// float dtypes (float16, longdouble) are converted by NumPy first.
fn copy_f32(arr: &Bound<'_, PyUntypedArray>, op: &'static str) -> PyResult<Tensor> {
    let shape = arr.shape().to_vec();
    // Pooled storage: a fresh buffer would page-fault (and be zeroed by the kernel) on every
    // conversion, which made the copy run at a sixth of memory speed.
    let output = crate::cpu::alloc::output;
    let data = if let Ok(a) = arr.cast::<PyArrayDyn<f32>>() {
        if a.is_c_contiguous() {
            copy_values(a, op, output)?
        } else {
            gather_values(a, op, |x| x)?
        }
    } else if let Ok(a) = arr.cast::<PyArrayDyn<f64>>() {
        gather_values(a, op, |x| x as f32)?
    } else {
        copy_values(&c_contiguous::<f32>(arr, "float32")?, op, output)?
    };
    Ok(Tensor::new(data, &shape)?)
}

/// [`gather`] into pooled storage, without the GIL when large.
fn gather_values<T: numpy::Element + Copy + Sync>(
    arr: &Bound<'_, PyArrayDyn<T>>,
    op: &'static str,
    cast: impl Fn(T) -> f32 + Copy + Send,
) -> PyResult<Vec<f32>> {
    let ro = arr
        .try_readonly()
        .map_err(|e| TfmError::value(op, e.to_string()))?;
    let view = ro.as_array();
    let copy = move || {
        let mut out = crate::cpu::alloc::output(view.len());
        gather(view, &mut out, cast);
        out
    };
    Ok(if arr.len() >= DETACH_MIN {
        arr.py().detach(copy)
    } else {
        copy()
    })
}

/// A float tensor from a Tensor, a NumPy array, a Python number or a (nested) list.
pub fn tensor_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<Tensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.borrow().var.value());
    }
    let py = obj.py();
    if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        if arr.cast::<PyArrayDyn<f32>>().is_ok() {
            return copy_f32(arr, op);
        }
        let (kind, name) = dtype_of(arr)?;
        if kind == 'f' {
            return copy_f32(arr, op);
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
        return copy_f32(arr.cast::<PyUntypedArray>()?, op);
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
    let arr = c_contiguous::<i64>(&arr, "int64")?;
    let ids = copy_values(&arr, op, |n| vec![0; n])?;
    Ok((ids, arr.shape().to_vec()))
}

/// [`tensor_from_py`] brought to the host (a GPU tensor's values are downloaded, through
/// [`run`]), for bindings that run host code on their inputs: the decoder.
pub fn host_tensor_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<CpuTensor> {
    let t = tensor_from_py(obj, op)?;
    run(obj.py(), move || t.to_host()?.into_cpu(op))
}

/// A condition (`where`, `masked_fill`): a tensor, or any array-like of booleans or numbers,
/// as a float tensor that is nonzero where the condition holds.
pub fn condition_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<Tensor> {
    if obj.cast::<PyTensor>().is_ok() {
        return tensor_from_py(obj, op);
    }
    let arr = numpy(obj.py())?.call_method1("asarray", (obj,))?;
    let (kind, name) = dtype_of(arr.cast::<PyUntypedArray>()?)?;
    if !matches!(kind, 'b' | 'i' | 'u' | 'f') {
        return Err(TfmError::dtype(
            op,
            format!("a condition must be boolean or numeric, got dtype {name}"),
        )
        .into());
    }
    tensor_from_py(&arr.call_method1("astype", ("float32",))?, op)
}

/// Indices (int64) as a NumPy array of `shape`: this library's integer tensors are NumPy arrays.
pub fn indices_to_numpy<'py>(
    py: Python<'py>,
    ids: Vec<i64>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    Ok(numpy::PyArray1::from_vec(py, ids)
        .reshape(shape.to_vec())?
        .into_any())
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
