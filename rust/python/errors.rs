//! The Python exception hierarchy and the one conversion from `TfmError` to it.
//!
//! `TfmError(Exception)` is the base; each kind also subclasses the builtin a Python user would
//! catch (`ShapeError` is a `ValueError`, `DTypeError` a `TypeError`, …). The classes are made
//! with `type(name, bases, namespace)` because PyO3's exception macro allows one base only.

use crate::error::{ErrorKind, TfmError};
use pyo3::exceptions::{PyException, PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

struct Classes {
    base: Py<PyType>,
    by_kind: Vec<(ErrorKind, Py<PyType>)>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// (name, kind, builtin base, doc)
fn specs(py: Python<'_>) -> Vec<(&'static str, ErrorKind, Bound<'_, PyType>, &'static str)> {
    vec![
        (
            "ShapeError",
            ErrorKind::Shape,
            py.get_type::<PyValueError>(),
            "Shapes that do not fit together.",
        ),
        (
            "DTypeError",
            ErrorKind::DType,
            py.get_type::<PyTypeError>(),
            "An element type the op cannot take.",
        ),
        (
            "IndexOutOfRangeError",
            ErrorKind::Index,
            py.get_type::<PyIndexError>(),
            "An index or token id out of range.",
        ),
        (
            "InvalidArgumentError",
            ErrorKind::Value,
            py.get_type::<PyValueError>(),
            "An argument outside its domain.",
        ),
        (
            "NonFiniteError",
            ErrorKind::NonFinite,
            py.get_type::<PyValueError>(),
            "NaN or infinity where a finite number is required.",
        ),
        (
            "AutogradError",
            ErrorKind::Autograd,
            py.get_type::<PyRuntimeError>(),
            "Misuse of autograd, such as a second backward through a freed graph.",
        ),
        (
            "DeviceError",
            ErrorKind::Device,
            py.get_type::<PyRuntimeError>(),
            "No GPU to run on (no adapter, or tfm_rs built without its GPU backend), or the GPU failed.",
        ),
        (
            "InternalError",
            ErrorKind::Internal,
            py.get_type::<PyRuntimeError>(),
            "A bug inside tfm_rs; please report it.",
        ),
    ]
}

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Vec<Bound<'py, PyType>>,
    doc: &str,
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "tfm_rs")?;
    namespace.set_item("__doc__", doc)?;
    let class = py
        .get_type::<PyType>()
        .call1((name, PyTuple::new(py, bases)?, namespace))?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let base = make_class(
            py,
            "TfmError",
            vec![py.get_type::<PyException>()],
            "Base class of every error tfm_rs raises.",
        )?;
        let mut by_kind = Vec::new();
        for (name, kind, builtin, doc) in specs(py) {
            let class = make_class(py, name, vec![base.bind(py).clone(), builtin], doc)?;
            by_kind.push((kind, class));
        }
        Ok(Classes { base, by_kind })
    })
}

/// Adds `TfmError` and its subclasses to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let c = classes(py)?;
    m.add("TfmError", c.base.bind(py))?;
    for (_, class) in &c.by_kind {
        let name: String = class.bind(py).getattr("__name__")?.extract()?;
        m.add(name.as_str(), class.bind(py))?;
    }
    Ok(())
}

impl From<TfmError> for PyErr {
    fn from(e: TfmError) -> PyErr {
        Python::attach(|py| match classes(py) {
            Ok(c) => {
                let class = c
                    .by_kind
                    .iter()
                    .find(|(k, _)| *k == e.kind)
                    .map(|(_, class)| class)
                    .unwrap_or(&c.base);
                PyErr::from_type(class.bind(py).clone(), e.to_string())
            }
            Err(err) => err,
        })
    }
}
