//! The crate's one error type. Every variant names the op that failed and carries a message with
//! the shapes or values involved; `rust/python/errors.rs` maps each variant to one Python exception.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Shapes that do not fit together (Python: `ShapeError`, a `ValueError`).
    Shape,
    /// An element type the op cannot take (Python: `DTypeError`, a `TypeError`).
    DType,
    /// An index or token id out of range (Python: `IndexOutOfRangeError`, an `IndexError`).
    Index,
    /// An argument outside its domain (Python: `InvalidArgumentError`, a `ValueError`).
    Value,
    /// NaN or infinity where a finite number is required (Python: `NonFiniteError`, a `ValueError`).
    NonFinite,
    /// Misuse of autograd, such as backward through a freed graph (Python: `AutogradError`,
    /// a `RuntimeError`).
    Autograd,
    /// No GPU to run on (no adapter, or the crate built without the `wgpu` feature), or the
    /// GPU failed: device creation, a shader or buffer rejected by validation, out of device
    /// memory, a lost device (Python: `DeviceError`, a `RuntimeError`).
    Device,
    /// A bug inside tfm_rs, such as a caught panic (Python: `InternalError`, a `RuntimeError`).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TfmError {
    pub kind: ErrorKind,
    pub op: &'static str,
    pub msg: String,
}

pub type Result<T> = std::result::Result<T, TfmError>;

impl TfmError {
    pub fn new(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Self {
        TfmError {
            kind,
            op,
            msg: msg.into(),
        }
    }
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shape, op, msg)
    }
    pub fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::DType, op, msg)
    }
    pub fn index(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Index, op, msg)
    }
    pub fn value(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Value, op, msg)
    }
    pub fn non_finite(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::NonFinite, op, msg)
    }
    pub fn autograd(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Autograd, op, msg)
    }
    pub fn device(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Device, op, msg)
    }
    pub fn internal(op: &'static str, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, op, msg)
    }
}

impl fmt::Display for TfmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.msg)
    }
}

impl std::error::Error for TfmError {}

/// Returns early with a shape error unless `cond` holds.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::TfmError::shape($op, format!($($fmt)+)));
        }
    };
}

/// Returns early with an invalid-argument error unless `cond` holds.
#[macro_export]
macro_rules! ensure_value {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::TfmError::value($op, format!($($fmt)+)));
        }
    };
}
