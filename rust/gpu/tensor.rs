//! [`GpuTensor`]: f32 values on the GPU with a shape — what the GPU kernels take and return.
//! `crate::tensor::Tensor` holds one of these for its GPU values, so the tensor type sits above
//! this backend and the backend never names it.

use super::buffer::GpuBuffer;
use crate::error::{Result, TfmError};
use crate::shape::{numel, shape_str};
use std::sync::Arc;

/// A shape and a shared GPU buffer of exactly its number of values (copy-on-write through the
/// `Arc`, as host tensors).
#[derive(Clone)]
pub struct GpuTensor {
    shape: Vec<usize>,
    buffer: Arc<GpuBuffer>,
}

impl GpuTensor {
    /// A tensor over `buffer`, which must hold exactly the shape's number of values.
    pub fn new(buffer: GpuBuffer, shape: &[usize]) -> Result<Self> {
        if buffer.len() != numel(shape) {
            return Err(TfmError::shape(
                "tensor",
                format!(
                    "a GPU buffer of {} values cannot fill shape {}",
                    buffer.len(),
                    shape_str(shape)
                ),
            ));
        }
        Ok(GpuTensor {
            shape: shape.to_vec(),
            buffer: Arc::new(buffer),
        })
    }

    /// Zeros of `shape`.
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::new(GpuBuffer::zeros(numel(shape))?, shape)
    }

    /// An upload of host `data` of `shape`.
    pub fn from_host(data: &[f32], shape: &[usize]) -> Result<Self> {
        Self::new(GpuBuffer::from_slice(data)?, shape)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Size of the last dimension and the number of rows before it (1 for a scalar).
    pub fn rows_cols(&self) -> (usize, usize) {
        crate::shape::rows_cols(&self.shape)
    }

    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
    }

    /// The buffer for an in-place update: first copied on the device if another tensor shares
    /// it.
    pub fn buffer_mut(&mut self) -> Result<&GpuBuffer> {
        if Arc::get_mut(&mut self.buffer).is_none() {
            let copy = GpuBuffer::zeros(self.buffer.len())?;
            copy.copy_from(&self.buffer)?;
            self.buffer = Arc::new(copy);
        }
        Ok(&self.buffer)
    }

    /// The same buffer under `shape`, which the caller checked has as many elements.
    pub fn with_shape(&self, shape: &[usize]) -> GpuTensor {
        GpuTensor {
            shape: shape.to_vec(),
            buffer: self.buffer.clone(),
        }
    }

    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.buffer.to_vec()
    }
}
