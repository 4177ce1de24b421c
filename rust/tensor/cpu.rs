//! [`CpuTensor`]: f32 values in host memory with a shape — what the CPU kernels read and write.
//! Only [`Tensor::place`](super::Tensor::place) and [`Tensor::cpu`](super::Tensor::cpu) hand
//! one out, so host values are never asked of a GPU tensor.

use crate::error::{Result, TfmError};
use crate::shape::{numel, shape_str};
use std::sync::Arc;

/// A shape and shared host values of exactly its number of elements.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    shape: Vec<usize>,
    data: Arc<HostBuf>,
}

/// Host values, recycled on drop.
#[derive(Clone, Debug)]
struct HostBuf(Vec<f32>);

impl Drop for HostBuf {
    fn drop(&mut self) {
        crate::cpu::alloc::recycle(std::mem::take(&mut self.0));
    }
}

impl CpuTensor {
    /// A tensor owning `data`, which must hold exactly the shape's number of values.
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        if numel(shape) != data.len() {
            return Err(TfmError::shape(
                "tensor",
                format!(
                    "{} values cannot fill shape {}",
                    data.len(),
                    shape_str(shape)
                ),
            ));
        }
        Ok(Self::from_parts(data, shape))
    }

    /// [`CpuTensor::new`] where the caller made `data` of the shape's size.
    pub(super) fn from_parts(data: Vec<f32>, shape: &[usize]) -> Self {
        debug_assert_eq!(numel(shape), data.len());
        CpuTensor {
            shape: shape.to_vec(),
            data: Arc::new(HostBuf(data)),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Size of the last dimension and the number of rows before it (1 for a scalar).
    pub fn rows_cols(&self) -> (usize, usize) {
        crate::shape::rows_cols(&self.shape)
    }

    pub fn data(&self) -> &[f32] {
        &self.data.0
    }

    /// Mutable values; copies them first if another tensor shares them.
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).0.as_mut_slice()
    }

    /// The values, moved out (copied if another tensor shares them).
    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.data) {
            Ok(mut own) => std::mem::take(&mut own.0),
            Err(shared) => shared.0.clone(),
        }
    }

    /// The same values under `shape`, which the caller checked has as many elements.
    pub(super) fn with_shape(&self, shape: &[usize]) -> CpuTensor {
        CpuTensor {
            shape: shape.to_vec(),
            data: self.data.clone(),
        }
    }
}
