//! `tfm_rs.Tensor`: a float32 tensor that records operations for autograd. Each method converts
//! its arguments and calls one op in `crate::ops` through `run`.

use super::convert::{
    condition_from_py, indices_to_numpy, tensor_from_py, tensor_to_numpy, var_from_py,
};
use super::runtime::run;
use crate::autograd::{backward, GradHook, Var};
use crate::error::TfmError;
use crate::ops::elementwise::{self, BinaryOp, UnaryOp};
use crate::ops::reduce::Extreme;
use crate::ops::select::Comparison;
use crate::ops::{activation, matmul, reduce, select, shape, softmax};
use crate::tensor::{normalize_dim, Device, Tensor};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyEllipsis, PyInt, PyNone, PySlice, PySliceMethods, PyTuple, PyWeakrefMethods,
    PyWeakrefReference,
};
use std::sync::{Arc, Mutex};

/// The Python exception a post-accumulate-grad hook raised, handed from the backward's worker
/// thread back to the `backward` call, which re-raises it as it was.
static HOOK_ERROR: Mutex<Option<PyErr>> = Mutex::new(None);

// `weakref`: a gradient hook refers to its tensor weakly, so registering one makes no cycle.
#[pyclass(name = "Tensor", module = "tfm_rs", frozen, subclass, weakref)]
pub struct PyTensor {
    pub var: Var,
}

impl PyTensor {
    pub fn wrap(var: Var) -> PyTensor {
        PyTensor { var }
    }
}

/// Dimension arguments given as `None`, an int, or a sequence of ints.
fn dims_arg(dim: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<isize>> {
    match dim {
        None => Ok(vec![]),
        Some(d) if d.is_none() => Ok(vec![]),
        Some(d) => match d.extract::<isize>() {
            Ok(one) => Ok(vec![one]),
            Err(_) => d.extract::<Vec<isize>>(),
        },
    }
}

/// Bessel's correction from PyTorch's two spellings, `unbiased` (legacy) or `correction`.
fn correction_arg(unbiased: Option<bool>, correction: Option<f64>) -> PyResult<f64> {
    match (unbiased, correction) {
        (Some(_), Some(_)) => {
            Err(TfmError::value("var", "give either unbiased or correction, not both").into())
        }
        (Some(u), None) => Ok(if u { 1.0 } else { 0.0 }),
        (None, c) => Ok(c.unwrap_or(1.0)),
    }
}

/// Shape arguments given either as separate ints or as one sequence: `reshape(2, 3)` or
/// `reshape((2, 3))`, as PyTorch accepts.
fn shape_args(args: &Bound<'_, PyTuple>) -> PyResult<Vec<isize>> {
    if args.len() == 1 {
        if let Ok(seq) = args.get_item(0)?.extract::<Vec<isize>>() {
            return Ok(seq);
        }
    }
    args.extract::<Vec<isize>>()
}

fn binary(
    py: Python<'_>,
    op: BinaryOp,
    a: Var,
    other: &Bound<'_, PyAny>,
    reflected: bool,
) -> PyResult<PyTensor> {
    let b = var_from_py(other, "tensor arithmetic")?;
    let (lhs, rhs) = if reflected { (b, a) } else { (a, b) };
    Ok(PyTensor::wrap(run(py, || {
        elementwise::binary(op, &lhs, &rhs)
    })?))
}

#[pymethods]
impl PyTensor {
    /// Tensor(data, requires_grad=False): a float32 tensor from an array-like (float64 is
    /// converted; integer arrays are refused).
    #[new]
    #[pyo3(signature = (data, requires_grad = false))]
    fn new(data: &Bound<'_, PyAny>, requires_grad: bool) -> PyResult<Self> {
        Ok(PyTensor::wrap(Var::leaf(
            tensor_from_py(data, "Tensor")?,
            requires_grad,
        )))
    }

    /// `None` tells NumPy to leave binary operators to the Tensor, so `ndarray + Tensor` calls
    /// `Tensor.__radd__` and stays in the graph instead of becoming an ndarray.
    #[classattr]
    #[allow(non_upper_case_globals)]
    const __array_ufunc__: Option<i32> = None;

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.var.shape())
    }

    #[getter]
    fn ndim(&self) -> usize {
        self.var.shape().len()
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        "float32"
    }

    /// Where the values live: "cpu" or "gpu".
    #[getter]
    fn device(&self) -> &'static str {
        self.var.device().name()
    }

    /// This tensor on `device` ("cpu", or "gpu" / "wgpu"): itself if it is already there,
    /// else a copy, which stays in the graph (gradients flow back to this tensor's device), as
    /// PyTorch's `Tensor.to`. Moving to the GPU without one is a `DeviceError`.
    fn to(&self, py: Python<'_>, device: &str) -> PyResult<PyTensor> {
        let device = Device::parse("to", device)?;
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, move || {
            shape::to_device(&x, device)
        })?))
    }

    /// `to("cpu")`.
    fn cpu(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.to(py, "cpu")
    }

    /// Moves a leaf's value, and its gradient, to `device` in place, keeping its identity (what
    /// `Module.to` does to parameters and buffers, like PyTorch's `param.data = …`).
    fn _move_(&self, py: Python<'_>, device: &str) -> PyResult<()> {
        let device = Device::parse("to", device)?;
        let var = self.var.clone();
        run(py, move || {
            if !var.is_leaf() {
                return Err(crate::error::TfmError::autograd(
                    "to",
                    "only leaf tensors (parameters, buffers) can be moved in place",
                ));
            }
            let grad = var.grad().map(|g| g.to_device(device)).transpose()?;
            var.set_value(var.value().to_device(device)?)?;
            var.set_grad(grad)
        })
    }

    /// size() → shape tuple; size(dim) → that dimension's size.
    #[pyo3(signature = (dim = None))]
    fn size<'py>(&self, py: Python<'py>, dim: Option<isize>) -> PyResult<Bound<'py, PyAny>> {
        let shape = self.var.shape();
        match dim {
            None => Ok(PyTuple::new(py, shape)?.into_any()),
            Some(d) => Ok(shape[normalize_dim("size", d, shape.len())?]
                .into_pyobject(py)?
                .into_any()),
        }
    }

    fn dim(&self) -> usize {
        self.ndim()
    }

    fn numel(&self) -> usize {
        self.var.shape().iter().product()
    }

    fn __len__(&self) -> PyResult<usize> {
        match self.var.shape().first() {
            Some(&n) => Ok(n),
            None => Err(pyo3::exceptions::PyTypeError::new_err(
                "len() of a 0-d tensor",
            )),
        }
    }

    #[getter]
    fn requires_grad(&self) -> bool {
        self.var.requires_grad()
    }

    #[setter(requires_grad)]
    fn set_requires_grad(&self, value: bool) -> PyResult<()> {
        Ok(self.var.set_requires_grad(value)?)
    }

    /// Sets requires_grad in place and returns self (leaves only).
    #[pyo3(signature = (requires_grad = true))]
    fn requires_grad_(slf: Bound<'_, Self>, requires_grad: bool) -> PyResult<Bound<'_, Self>> {
        slf.get().var.set_requires_grad(requires_grad)?;
        Ok(slf)
    }

    #[getter]
    fn is_leaf(&self) -> bool {
        self.var.is_leaf()
    }

    /// Name of the op that produced this tensor, or None for leaves.
    #[getter]
    fn grad_fn(&self) -> Option<&'static str> {
        self.var.grad_fn_name()
    }

    /// The accumulated gradient (a Tensor), or None.
    #[getter]
    fn grad(&self) -> Option<PyTensor> {
        self.var.grad().map(|g| PyTensor::wrap(Var::constant(g)))
    }

    #[setter(grad)]
    fn set_grad(&self, grad: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let g = match grad {
            Some(g) if !g.is_none() => Some(tensor_from_py(g, "grad")?),
            _ => None,
        };
        Ok(self.var.set_grad(g)?)
    }

    /// A copy of the values as a NumPy float32 array.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        tensor_to_numpy(py, self.var.value())
    }

    #[pyo3(signature = (dtype = None, copy = None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = copy;
        let arr = self.numpy(py)?;
        match dtype {
            Some(d) if !d.is_none() => arr.call_method1("astype", (d,)),
            _ => Ok(arr),
        }
    }

    fn tolist<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.numpy(py)?.call_method0("tolist")
    }

    /// The value of a one-element tensor as a Python float.
    fn item(&self, py: Python<'_>) -> PyResult<f32> {
        let var = self.var.clone();
        let v = run(py, move || var.value().to_host())?;
        if v.numel() != 1 {
            return Err(crate::error::TfmError::value(
                "item",
                format!(
                    "only one-element tensors can be converted to a number, got shape {:?}",
                    v.shape()
                ),
            )
            .into());
        }
        Ok(v.cpu("item")?.data()[0])
    }

    fn __float__(&self, py: Python<'_>) -> PyResult<f32> {
        self.item(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let arr = self.numpy(py)?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("separator", ", ")?;
        let body: String = py
            .import("numpy")?
            .getattr("array2string")?
            .call((arr,), Some(&kwargs))?
            .extract()?;
        let body = body.replace('\n', "\n       ");
        let suffix = match (self.var.grad_fn_name(), self.var.requires_grad()) {
            (Some(name), _) => format!(", grad_fn=<{name}>"),
            (None, true) => ", requires_grad=True".to_string(),
            _ => String::new(),
        };
        Ok(format!("tensor({body}{suffix})"))
    }

    /// Computes gradients of this tensor with respect to the graph's leaves (see PyTorch's
    /// `Tensor.backward`). `gradient` is required for non-scalar tensors.
    #[pyo3(signature = (gradient = None, retain_graph = false))]
    fn backward(
        &self,
        py: Python<'_>,
        gradient: Option<&Bound<'_, PyAny>>,
        retain_graph: bool,
    ) -> PyResult<()> {
        let g = match gradient {
            Some(g) if !g.is_none() => Some(tensor_from_py(g, "backward")?),
            _ => None,
        };
        let var = self.var.clone();
        let result = run(py, move || backward(&var, g, retain_graph));
        let hook_error = HOOK_ERROR.lock().unwrap_or_else(|e| e.into_inner()).take();
        match (result, hook_error) {
            (Err(_), Some(e)) => Err(e),
            (result, _) => result,
        }
    }

    /// Registers `hook(tensor)`, called by every backward that reaches this leaf right after its
    /// `.grad` has received all of that pass's contributions (PyTorch's name and timing). It runs
    /// on the backward's thread with the GIL taken only for the call; an exception it raises
    /// stops the backward and is re-raised by `backward()`. Returns a handle with `remove()`.
    fn register_post_accumulate_grad_hook(
        slf: Bound<'_, Self>,
        hook: Bound<'_, PyAny>,
    ) -> PyResult<RemovableHandle> {
        if !hook.is_callable() {
            return Err(crate::error::TfmError::value(
                "register_post_accumulate_grad_hook",
                "the hook must be callable",
            )
            .into());
        }
        let owner: Py<PyWeakrefReference> = PyWeakrefReference::new(&slf)?.unbind();
        let hook = hook.unbind();
        let core_hook: GradHook = Arc::new(move |var: &Var| {
            Python::attach(|py| {
                // The tensor object itself, as PyTorch passes it (a Parameter stays one).
                let tensor = match owner.bind(py).upgrade() {
                    Some(t) => t,
                    None => Bound::new(py, PyTensor::wrap(var.clone()))?.into_any(),
                };
                hook.bind(py).call1((tensor,)).map(|_| ())
            })
            .map_err(|e| {
                let msg = format!("a post-accumulate-grad hook raised: {e}");
                *HOOK_ERROR.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                crate::error::TfmError::autograd("backward", msg)
            })
        });
        let var = slf.get().var.clone();
        let id = var.register_post_accumulate_grad_hook(core_hook)?;
        Ok(RemovableHandle { var, id })
    }

    /// Copies `src`'s values into this tensor in place, onto this tensor's device (shapes must
    /// match; `src` broadcasts from a scalar). Not recorded in the graph, like PyTorch's
    /// `copy_` under `no_grad`.
    fn copy_<'py>(slf: Bound<'py, Self>, src: &Bound<'py, PyAny>) -> PyResult<Bound<'py, Self>> {
        let value = tensor_from_py(src, "copy_")?;
        let var = slf.get().var.clone();
        run(slf.py(), move || {
            let shape = var.shape();
            let value = if value.numel() == 1 && shape.iter().product::<usize>() != 1 {
                Tensor::full(&shape, value.to_vec()?[0])
            } else {
                value
            };
            var.set_value(value.to_device(var.device())?)
        })?;
        Ok(slf)
    }

    /// A new leaf with the same values, outside the graph.
    fn detach(&self) -> PyTensor {
        PyTensor::wrap(self.var.detach())
    }

    /// A copy that is a new leaf (does not require grad).
    fn clone(&self) -> PyTensor {
        PyTensor::wrap(Var::constant(self.var.value()))
    }

    fn __add__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Add, self.var.clone(), other, false)
    }
    fn __radd__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Add, self.var.clone(), other, true)
    }
    fn __sub__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Sub, self.var.clone(), other, false)
    }
    fn __rsub__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Sub, self.var.clone(), other, true)
    }
    fn __mul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Mul, self.var.clone(), other, false)
    }
    fn __rmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Mul, self.var.clone(), other, true)
    }
    fn __truediv__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Div, self.var.clone(), other, false)
    }
    fn __rtruediv__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        binary(py, BinaryOp::Div, self.var.clone(), other, true)
    }
    fn __matmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let b = var_from_py(other, "matmul")?;
        let a = self.var.clone();
        Ok(PyTensor::wrap(run(py, || matmul::matmul(&a, &b))?))
    }
    fn __rmatmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let a = var_from_py(other, "matmul")?;
        let b = self.var.clone();
        Ok(PyTensor::wrap(run(py, || matmul::matmul(&a, &b))?))
    }
    fn __neg__(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Neg)
    }
    fn __pow__(
        &self,
        py: Python<'_>,
        exponent: f32,
        modulo: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyTensor> {
        let _ = modulo;
        self.unary(py, UnaryOp::Pow(exponent))
    }
    fn exp(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Exp)
    }
    fn log(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Log)
    }
    fn sqrt(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Sqrt)
    }
    fn tanh(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Tanh)
    }
    fn sigmoid(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Sigmoid)
    }
    fn abs(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Abs)
    }
    fn sin(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Sin)
    }
    fn cos(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.unary(py, UnaryOp::Cos)
    }
    fn relu(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.apply(py, activation::relu)
    }
    /// Softmax along `dim` (as `Tensor.softmax`; `tfm_rs.functional.softmax` also takes a mask).
    #[pyo3(signature = (dim = -1))]
    fn softmax(&self, py: Python<'_>, dim: isize) -> PyResult<PyTensor> {
        self.apply(py, |x| {
            shape::along_dim("softmax", x, dim, None, softmax::softmax)
        })
    }
    #[pyo3(signature = (dim = -1))]
    fn log_softmax(&self, py: Python<'_>, dim: isize) -> PyResult<PyTensor> {
        self.apply(py, |x| {
            shape::along_dim("log_softmax", x, dim, None, softmax::log_softmax)
        })
    }

    /// Sum over `dim` (an int, a sequence, or None for all dimensions).
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn sum(
        &self,
        py: Python<'_>,
        dim: Option<&Bound<'_, PyAny>>,
        keepdim: bool,
    ) -> PyResult<PyTensor> {
        let dims = dims_arg(dim)?;
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || reduce::sum(&x, &dims, keepdim))?))
    }

    /// Mean over `dim` (an int, a sequence, or None for all dimensions).
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn mean(
        &self,
        py: Python<'_>,
        dim: Option<&Bound<'_, PyAny>>,
        keepdim: bool,
    ) -> PyResult<PyTensor> {
        let dims = dims_arg(dim)?;
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || {
            reduce::mean(&x, &dims, keepdim)
        })?))
    }

    /// The largest value (`dim=None`), or along `dim` the values and the index of each
    /// (`(values, indices)`, indices an int64 NumPy array); with a tensor, `maximum`.
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn max<'py>(
        &self,
        py: Python<'py>,
        dim: Option<&Bound<'py, PyAny>>,
        keepdim: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.extreme(py, dim, keepdim, Extreme::Max)
    }
    /// As [`max`](Self::max), the smallest.
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn min<'py>(
        &self,
        py: Python<'py>,
        dim: Option<&Bound<'py, PyAny>>,
        keepdim: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.extreme(py, dim, keepdim, Extreme::Min)
    }
    /// The largest value over `dim` (an int, a sequence, or None for all); ties share the
    /// gradient evenly.
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn amax(
        &self,
        py: Python<'_>,
        dim: Option<&Bound<'_, PyAny>>,
        keepdim: bool,
    ) -> PyResult<PyTensor> {
        let dims = dims_arg(dim)?;
        self.apply(py, |x| reduce::extreme(x, &dims, keepdim, Extreme::Max))
    }
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn amin(
        &self,
        py: Python<'_>,
        dim: Option<&Bound<'_, PyAny>>,
        keepdim: bool,
    ) -> PyResult<PyTensor> {
        let dims = dims_arg(dim)?;
        self.apply(py, |x| reduce::extreme(x, &dims, keepdim, Extreme::Min))
    }
    /// Index of the largest value along `dim` (of the flattened tensor when None), as an int64
    /// NumPy array.
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn argmax<'py>(
        &self,
        py: Python<'py>,
        dim: Option<isize>,
        keepdim: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.arg_extreme(py, dim, keepdim, Extreme::Max)
    }
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn argmin<'py>(
        &self,
        py: Python<'py>,
        dim: Option<isize>,
        keepdim: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.arg_extreme(py, dim, keepdim, Extreme::Min)
    }
    /// `min(max(self, min), max)`; the gradient passes where `min < self < max`, as PyTorch's.
    #[pyo3(signature = (min = None, max = None))]
    fn clamp(&self, py: Python<'_>, min: Option<f32>, max: Option<f32>) -> PyResult<PyTensor> {
        self.apply(py, |x| select::clamp(x, min, max))
    }
    /// Alias of [`clamp`](Self::clamp), as in PyTorch.
    #[pyo3(signature = (min = None, max = None))]
    fn clip(&self, py: Python<'_>, min: Option<f32>, max: Option<f32>) -> PyResult<PyTensor> {
        self.clamp(py, min, max)
    }
    fn clamp_min(&self, py: Python<'_>, min: f32) -> PyResult<PyTensor> {
        self.clamp(py, Some(min), None)
    }
    fn clamp_max(&self, py: Python<'_>, max: f32) -> PyResult<PyTensor> {
        self.clamp(py, None, Some(max))
    }
    fn maximum(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let b = var_from_py(other, "maximum")?;
        self.apply(py, |a| select::maximum(a, &b))
    }
    fn minimum(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let b = var_from_py(other, "minimum")?;
        self.apply(py, |a| select::minimum(a, &b))
    }
    /// `condition ? self : other` elementwise (`torch.where(condition, self, other)`).
    #[pyo3(name = "where")]
    fn where_(
        &self,
        py: Python<'_>,
        condition: &Bound<'_, PyAny>,
        other: &Bound<'_, PyAny>,
    ) -> PyResult<PyTensor> {
        let cond = condition_from_py(condition, "where")?;
        let y = var_from_py(other, "where")?;
        self.apply(py, |x| select::where_(&cond, x, &y))
    }
    /// `value` where `mask` holds, else `self`; the mask broadcasts to `self`'s shape.
    fn masked_fill(
        &self,
        py: Python<'_>,
        mask: &Bound<'_, PyAny>,
        value: f32,
    ) -> PyResult<PyTensor> {
        let mask = condition_from_py(mask, "masked_fill")?;
        self.apply(py, |x| select::masked_fill(x, &mask, value))
    }
    fn eq(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.compare(py, other, Comparison::Eq)
    }
    fn ne(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.compare(py, other, Comparison::Ne)
    }
    fn lt(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.compare(py, other, Comparison::Lt)
    }
    fn le(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.compare(py, other, Comparison::Le)
    }
    fn gt(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.compare(py, other, Comparison::Gt)
    }
    fn ge(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.compare(py, other, Comparison::Ge)
    }
    /// `==`, `<`, … elementwise, as 0/1 float tensors (there is no bool dtype); an operand that
    /// is not a number or array gives `NotImplemented`, so `t == None` is False as in PyTorch.
    fn __richcmp__(
        &self,
        py: Python<'_>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let Ok(b) = tensor_from_py(other, "compare") else {
            return Ok(py.NotImplemented());
        };
        let kind = match op {
            CompareOp::Eq => Comparison::Eq,
            CompareOp::Ne => Comparison::Ne,
            CompareOp::Lt => Comparison::Lt,
            CompareOp::Le => Comparison::Le,
            CompareOp::Gt => Comparison::Gt,
            CompareOp::Ge => Comparison::Ge,
        };
        Ok(Py::new(py, self.compare_with(py, b, kind)?)?.into_any())
    }
    /// By identity, as PyTorch's (`==` is elementwise, so it cannot define the hash).
    fn __hash__(slf: &Bound<'_, Self>) -> isize {
        slf.as_ptr() as isize
    }
    /// The truth of a one-element tensor; any other size is ambiguous, as in PyTorch.
    fn __bool__(&self, py: Python<'_>) -> PyResult<bool> {
        let n = self.var.value().numel();
        if n != 1 {
            return Err(TfmError::value(
                "bool",
                format!("the truth value of a tensor of {n} elements is ambiguous; reduce it first (.max(), .sum(), …)"),
            )
            .into());
        }
        Ok(self.item(py)? != 0.0)
    }
    /// This tensor (float32 is the only dtype), as `Tensor.float()` on a float32 tensor.
    fn float(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Variance over `dim` (an int, a sequence, or None for all), with PyTorch's `correction`
    /// (default 1; `unbiased=False` is `correction=0`).
    #[pyo3(signature = (dim = None, unbiased = None, keepdim = false, *, correction = None))]
    fn var(
        &self,
        py: Python<'_>,
        dim: Option<&Bound<'_, PyAny>>,
        unbiased: Option<bool>,
        keepdim: bool,
        correction: Option<f64>,
    ) -> PyResult<PyTensor> {
        let (dims, c) = (dims_arg(dim)?, correction_arg(unbiased, correction)?);
        self.apply(py, |x| reduce::var(x, &dims, c, keepdim))
    }
    /// Standard deviation, as [`var`](Self::var).
    #[pyo3(signature = (dim = None, unbiased = None, keepdim = false, *, correction = None))]
    fn std(
        &self,
        py: Python<'_>,
        dim: Option<&Bound<'_, PyAny>>,
        unbiased: Option<bool>,
        keepdim: bool,
        correction: Option<f64>,
    ) -> PyResult<PyTensor> {
        let (dims, c) = (dims_arg(dim)?, correction_arg(unbiased, correction)?);
        self.apply(py, |x| reduce::std(x, &dims, c, keepdim))
    }

    #[pyo3(signature = (*shape))]
    fn reshape(&self, py: Python<'_>, shape: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let shape = shape_args(shape)?;
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || shape::reshape(&x, &shape))?))
    }

    #[pyo3(signature = (*shape))]
    fn view(&self, py: Python<'_>, shape: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        self.reshape(py, shape)
    }

    fn flatten(&self, py: Python<'_>) -> PyResult<PyTensor> {
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || shape::reshape(&x, &[-1]))?))
    }

    fn transpose(&self, py: Python<'_>, dim0: isize, dim1: isize) -> PyResult<PyTensor> {
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || {
            shape::transpose(&x, dim0, dim1)
        })?))
    }

    /// The transpose of a 2-D tensor (`x.t()`); 0-D and 1-D tensors are returned as is.
    fn t(&self, py: Python<'_>) -> PyResult<PyTensor> {
        match self.var.shape().len() {
            0 | 1 => Ok(PyTensor::wrap(self.var.clone())),
            2 => self.transpose(py, 0, 1),
            n => Err(crate::error::TfmError::shape(
                "t",
                format!(
                    "t() expects a tensor with ≤ 2 dimensions, got {n}; use transpose(dim0, dim1)"
                ),
            )
            .into()),
        }
    }

    #[getter(T)]
    fn big_t(&self, py: Python<'_>) -> PyResult<PyTensor> {
        let n = self.var.shape().len() as isize;
        let dims: Vec<isize> = (0..n).rev().collect();
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || shape::permute(&x, &dims))?))
    }

    #[pyo3(signature = (*dims))]
    fn permute(&self, py: Python<'_>, dims: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let dims = shape_args(dims)?;
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || shape::permute(&x, &dims))?))
    }

    fn unsqueeze(&self, py: Python<'_>, dim: isize) -> PyResult<PyTensor> {
        let mut shape: Vec<isize> = self.var.shape().iter().map(|&d| d as isize).collect();
        let d = normalize_dim("unsqueeze", dim, shape.len() + 1)?;
        shape.insert(d, 1);
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || shape::reshape(&x, &shape))?))
    }

    /// Removes size-1 dimensions: all of them, or only `dim` if it has size 1.
    #[pyo3(signature = (dim = None))]
    fn squeeze(&self, py: Python<'_>, dim: Option<isize>) -> PyResult<PyTensor> {
        let old = self.var.shape();
        let keep: Vec<bool> = match dim {
            None => old.iter().map(|&s| s != 1).collect(),
            Some(d) => {
                let d = normalize_dim("squeeze", d, old.len())?;
                (0..old.len()).map(|i| i != d || old[i] != 1).collect()
            }
        };
        let shape: Vec<isize> = old
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(&s, _)| s as isize)
            .collect();
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || shape::reshape(&x, &shape))?))
    }

    /// Indexing with ints, slices (positive steps), `None` and `...`, as in PyTorch.
    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let items: Vec<Bound<'_, PyAny>> = match key.cast::<PyTuple>() {
            Ok(t) => t.iter().collect(),
            Err(_) => vec![key.clone()],
        };
        let in_shape = self.var.shape();
        let consumed = items
            .iter()
            .filter(|i| !i.is_instance_of::<PyNone>() && !i.is_instance_of::<PyEllipsis>())
            .count();
        if consumed > in_shape.len() {
            return Err(crate::error::TfmError::index(
                "getitem",
                format!("too many indices ({consumed}) for a tensor of shape {in_shape:?}"),
            )
            .into());
        }
        // (dim, start, stop, step) slices to apply, then the final shape.
        let mut slices = Vec::new();
        let mut out_shape: Vec<isize> = Vec::new();
        let mut d = 0usize;
        for item in &items {
            if item.is_instance_of::<PyNone>() {
                out_shape.push(1);
            } else if item.is_instance_of::<PyEllipsis>() {
                let skip = in_shape.len() - consumed;
                out_shape.extend(in_shape[d..d + skip].iter().map(|&s| s as isize));
                d += skip;
            } else if let Ok(s) = item.cast::<PySlice>() {
                let idx = s.indices(in_shape[d] as isize)?;
                if idx.step <= 0 {
                    return Err(crate::error::TfmError::value(
                        "getitem",
                        "slice steps must be positive",
                    )
                    .into());
                }
                let (len, step) = (idx.slicelength, idx.step as usize);
                let start = if len == 0 { 0 } else { idx.start as usize };
                let stop = if len == 0 {
                    0
                } else {
                    start + (len - 1) * step + 1
                };
                slices.push((d, start, stop, step));
                out_shape.push(idx.slicelength as isize);
                d += 1;
            } else if item.is_instance_of::<PyInt>() {
                let i: isize = item.extract()?;
                let size = in_shape[d] as isize;
                let j = if i < 0 { i + size } else { i };
                if j < 0 || j >= size {
                    return Err(crate::error::TfmError::index(
                        "getitem",
                        format!("index {i} is out of range for dimension {d} of size {size}"),
                    )
                    .into());
                }
                slices.push((d, j as usize, j as usize + 1, 1));
                d += 1;
            } else {
                let type_name = item.get_type().name()?;
                return Err(crate::error::TfmError::dtype(
                    "getitem",
                    format!("unsupported index of type {type_name}: use ints, slices, None or ..."),
                )
                .into());
            }
        }
        out_shape.extend(in_shape[d..].iter().map(|&s| s as isize));
        let x = self.var.clone();
        let y = run(py, move || {
            let mut y = x;
            for (dim, start, stop, step) in slices {
                y = shape::slice(&y, dim as isize, start, stop, step)?;
            }
            shape::reshape(&y, &out_shape)
        })?;
        Ok(PyTensor::wrap(y))
    }
}

impl PyTensor {
    fn compare(
        &self,
        py: Python<'_>,
        other: &Bound<'_, PyAny>,
        kind: Comparison,
    ) -> PyResult<PyTensor> {
        self.compare_with(py, tensor_from_py(other, "compare")?, kind)
    }

    fn compare_with(&self, py: Python<'_>, b: Tensor, kind: Comparison) -> PyResult<PyTensor> {
        let a = self.var.value();
        Ok(PyTensor::wrap(Var::constant(run(py, || {
            select::compare(kind, &a, &b)
        })?)))
    }

    fn extreme<'py>(
        &self,
        py: Python<'py>,
        dim: Option<&Bound<'py, PyAny>>,
        keepdim: bool,
        which: Extreme,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = self.var.clone();
        let Some(dim) = dim.filter(|d| !d.is_none()) else {
            let y = run(py, || reduce::extreme(&x, &[], keepdim, which))?;
            return Ok(Bound::new(py, PyTensor::wrap(y))?.into_any());
        };
        if dim.is_instance_of::<PyTensor>() {
            let b = var_from_py(dim, "maximum")?;
            return Ok(Bound::new(
                py,
                self.apply(py, |a| match which {
                    Extreme::Max => select::maximum(a, &b),
                    Extreme::Min => select::minimum(a, &b),
                })?,
            )?
            .into_any());
        }
        let d: isize = dim.extract()?;
        let (values, ids, shape) = run(py, || reduce::extreme_dim(&x, d, keepdim, which))?;
        let values = Bound::new(py, PyTensor::wrap(values))?.into_any();
        let indices = indices_to_numpy(py, ids, &shape)?;
        let name = match which {
            Extreme::Max => "max",
            Extreme::Min => "min",
        };
        values_indices(py, name)?.call1((values, indices))
    }

    fn arg_extreme<'py>(
        &self,
        py: Python<'py>,
        dim: Option<isize>,
        keepdim: bool,
        which: Extreme,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = self.var.value();
        let (ids, shape) = run(py, || reduce::arg_extreme(&x, dim, keepdim, which))?;
        indices_to_numpy(py, ids, &shape)
    }

    fn unary(&self, py: Python<'_>, op: UnaryOp) -> PyResult<PyTensor> {
        self.apply(py, |x| elementwise::unary(op, x))
    }

    /// `f(self)`, run without the GIL.
    fn apply(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Var) -> crate::error::Result<Var> + Send,
    ) -> PyResult<PyTensor> {
        let x = self.var.clone();
        Ok(PyTensor::wrap(run(py, || f(&x))?))
    }
}

/// PyTorch's `torch.return_types.max` / `min`: a named tuple `(values, indices)`.
fn values_indices<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyAny>> {
    static TYPES: PyOnceLock<[Py<PyAny>; 2]> = PyOnceLock::new();
    let types = TYPES.get_or_try_init(py, || -> PyResult<_> {
        let namedtuple = py.import("collections")?.getattr("namedtuple")?;
        let make = |n: &str| -> PyResult<Py<PyAny>> {
            let t = namedtuple.call1((n, ("values", "indices")))?;
            t.setattr("__module__", "tfm_rs.return_types")?;
            Ok(t.unbind())
        };
        Ok([make("max")?, make("min")?])
    })?;
    Ok(types[usize::from(name == "min")].bind(py).clone())
}

/// A tensor from data (like `torch.tensor`).
#[pyfunction]
#[pyo3(signature = (data, requires_grad = false))]
fn tensor(data: &Bound<'_, PyAny>, requires_grad: bool) -> PyResult<PyTensor> {
    PyTensor::new(data, requires_grad)
}

/// A tensor from a NumPy array. Unlike `torch.from_numpy` it copies (at memory speed, without
/// the GIL for large arrays; other float dtypes are cast to float32): a tensor's storage is an
/// owned, pooled, copy-on-write buffer, so it cannot share the array's memory, and writes to
/// either afterwards are not seen by the other.
#[pyfunction]
fn from_numpy(array: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    PyTensor::new(array, false)
}

/// Concatenates tensors along `dim` (like `torch.cat`).
#[pyfunction]
#[pyo3(signature = (tensors, dim = 0))]
fn cat(py: Python<'_>, tensors: Vec<Bound<'_, PyAny>>, dim: isize) -> PyResult<PyTensor> {
    let vars = tensors
        .iter()
        .map(|t| var_from_py(t, "cat"))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyTensor::wrap(run(py, || shape::cat(&vars, dim))?))
}

/// What `register_post_accumulate_grad_hook` returns: `remove()` unregisters the hook.
#[pyclass(name = "RemovableHandle", module = "tfm_rs", frozen)]
pub struct RemovableHandle {
    var: Var,
    id: u64,
}

#[pymethods]
impl RemovableHandle {
    fn remove(&self) {
        self.var.remove_hook(self.id);
    }

    #[getter]
    fn id(&self) -> u64 {
        self.id
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTensor>()?;
    m.add_class::<RemovableHandle>()?;
    m.add_function(wrap_pyfunction!(tensor, m)?)?;
    m.add_function(wrap_pyfunction!(from_numpy, m)?)?;
    m.add_function(wrap_pyfunction!(cat, m)?)?;
    Ok(())
}
