//! Dense, contiguous, row-major f32 storage with a shape. Nothing else: no autograd (see
//! `autograd`), no math (see `ops`). Storage is shared copy-on-write through an `Arc`, so
//! reshapes and saved-for-backward copies are free; when the last tensor sharing it is dropped,
//! the buffer goes back to `cpu::alloc` for the next op's output.

mod shape;

pub use shape::{broadcast_shapes, contiguous_strides, normalize_dim, numel, shape_str};

use crate::error::{Result, TfmError};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
}

/// A tensor's buffer, recycled on drop.
#[derive(Clone, Debug)]
struct Storage(Vec<f32>);

impl Drop for Storage {
    fn drop(&mut self) {
        crate::cpu::alloc::recycle(std::mem::take(&mut self.0));
    }
}

impl Tensor {
    /// A tensor owning `data`, which must hold exactly `shape.iter().product()` values.
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n = numel(shape);
        if n != data.len() {
            return Err(TfmError::shape(
                "tensor",
                format!(
                    "{} values cannot fill shape {}",
                    data.len(),
                    shape_str(shape)
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data: Arc::new(Storage(data)),
        })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, 0.0)
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        let mut data = crate::cpu::alloc::output(numel(shape));
        data.fill(value);
        Tensor {
            shape: shape.to_vec(),
            data: Arc::new(Storage(data)),
        }
    }

    pub fn scalar(value: f32) -> Self {
        Tensor {
            shape: vec![],
            data: Arc::new(Storage(vec![value])),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.data.0.len()
    }

    pub fn data(&self) -> &[f32] {
        &self.data.0
    }

    /// Mutable access; copies the storage first if another tensor shares it.
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).0.as_mut_slice()
    }

    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.data) {
            Ok(mut own) => std::mem::take(&mut own.0),
            Err(shared) => shared.0.clone(),
        }
    }

    /// The same storage under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(TfmError::shape(
                "reshape",
                format!(
                    "cannot reshape {} into {}",
                    shape_str(&self.shape),
                    shape_str(shape)
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data: Arc::clone(&self.data),
        })
    }

    /// Size of the last dimension and the number of rows before it (1 for a scalar).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        let rows = numel(&self.shape[..self.ndim().saturating_sub(1)]);
        (rows, cols)
    }
}
