//! [`CpuTensor`]: f32 values in host memory with a shape — what the CPU kernels read and write.
//! Only [`Tensor::place`](super::Tensor::place) and [`Tensor::cpu`](super::Tensor::cpu) hand
//! one out, so host values are never asked of a GPU tensor.

use crate::error::{Result, TfmError};
use crate::shape::{numel, shape_str};
use std::sync::Arc;

/// A shape and its values: `numel(shape)` floats from `offset` in a buffer that other tensors
/// may share (a contiguous slice of a tensor is a view of its buffer, not a copy). Shared
/// values are never written: [`CpuTensor::data_mut`] copies them first.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    shape: Vec<usize>,
    data: Arc<HostBuf>,
    offset: usize,
    len: usize,
}

/// Host values, recycled on drop.
#[derive(Debug)]
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
            len: data.len(),
            data: Arc::new(HostBuf(data)),
            offset: 0,
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
        &self.data.0[self.offset..self.offset + self.len]
    }

    /// Mutable values; copies them first if another tensor shares them.
    pub fn data_mut(&mut self) -> &mut [f32] {
        if Arc::get_mut(&mut self.data).is_none() {
            *self = Self::from_parts(self.copied(), &self.shape);
        }
        let (offset, len) = (self.offset, self.len);
        let own = Arc::get_mut(&mut self.data).expect("unshared after the copy");
        &mut own.0[offset..offset + len]
    }

    /// The values, moved out (copied if another tensor shares them or they are part of a
    /// larger buffer).
    pub fn into_vec(mut self) -> Vec<f32> {
        let whole = self.offset == 0 && self.len == self.data.0.len();
        match Arc::get_mut(&mut self.data) {
            Some(own) if whole => std::mem::take(&mut own.0),
            _ => self.copied(),
        }
    }

    /// A copy of the values, in a buffer from the op-output pool.
    fn copied(&self) -> Vec<f32> {
        pooled_copy(self.data())
    }

    /// The same values under `shape`, which the caller checked has as many elements.
    pub(super) fn with_shape(&self, shape: &[usize]) -> CpuTensor {
        CpuTensor {
            shape: shape.to_vec(),
            ..self.clone()
        }
    }

    /// The `numel(shape)` values from `offset` on, as a tensor of `shape`: a view sharing this
    /// one's buffer when it is at least half of that buffer, else a copy, so that a small part
    /// never keeps a large buffer alive. Panics if the values do not lie inside this tensor
    /// (callers check the view first).
    pub fn part(&self, offset: usize, shape: &[usize]) -> CpuTensor {
        let len = numel(shape);
        assert!(
            offset + len <= self.len,
            "values {offset}..{} of a tensor of {}",
            offset + len,
            self.len
        );
        if 2 * len < self.data.0.len() {
            return Self::from_parts(pooled_copy(&self.data()[offset..offset + len]), shape);
        }
        CpuTensor {
            shape: shape.to_vec(),
            data: Arc::clone(&self.data),
            offset: self.offset + offset,
            len,
        }
    }
}

/// `values` copied into a buffer from the op-output pool.
fn pooled_copy(values: &[f32]) -> Vec<f32> {
    let mut v = crate::cpu::alloc::output(values.len());
    v.copy_from_slice(values);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(n: usize) -> CpuTensor {
        CpuTensor::new((0..n).map(|v| v as f32).collect(), &[n]).unwrap()
    }

    #[test]
    fn a_large_part_is_a_view_and_writes_to_either_side_copy_first() {
        let whole = iota(10);
        let mut part = whole.part(3, &[2, 3]);
        assert_eq!(part.shape(), &[2, 3]);
        assert_eq!(part.data(), &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert!(
            Arc::ptr_eq(&part.data, &whole.data),
            "6 of 10 values: a view"
        );
        // A part of a part, and the same values under another shape.
        let inner = part.part(1, &[4]);
        assert_eq!(inner.data(), &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(inner.with_shape(&[2, 2]).data(), inner.data());
        part.data_mut()[0] = -1.0;
        assert_eq!(part.data(), &[-1.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(whole.data()[3], 3.0, "the shared buffer is not written");
        assert_eq!(inner.data()[0], 4.0);
        assert_eq!(inner.clone().into_vec(), vec![4.0, 5.0, 6.0, 7.0]);
        let mut whole = whole;
        drop(inner);
        whole.data_mut()[9] = 90.0;
        assert_eq!(whole.data()[9], 90.0);
    }

    #[test]
    fn a_small_part_is_a_copy_and_an_unshared_part_moves_out_its_values() {
        let whole = iota(10);
        let small = whole.part(8, &[2]);
        assert_eq!(small.data(), &[8.0, 9.0]);
        assert!(
            !Arc::ptr_eq(&small.data, &whole.data),
            "2 of 10 values: a copy"
        );
        let head = iota(10).part(0, &[7]);
        assert_eq!(
            head.into_vec(),
            (0..7).map(|v| v as f32).collect::<Vec<_>>()
        );
        let empty = iota(4).part(4, &[0]);
        assert!(empty.data().is_empty());
    }
}
