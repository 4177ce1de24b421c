//! Dense, contiguous, row-major f32 storage with a shape. Nothing else: no autograd (see
//! `autograd`), no math (see `ops`). Storage is shared copy-on-write through an `Arc`, so
//! reshapes and saved-for-backward copies are free; when the last tensor sharing host values is
//! dropped, their buffer goes back to `cpu::alloc` for the next op's output.
//!
//! The storage lives on a [`Device`]: host memory, or (feature `wgpu`) a GPU buffer. Ops check
//! the devices of their operands first and run GPU tensors through `crate::gpu`; the host
//! accessors ([`Tensor::data`], [`Tensor::data_mut`], [`Tensor::into_vec`]) are for CPU
//! kernels only, behind that check, and treat a GPU tensor as a bug (a panic, which the bindings
//! report as `InternalError`). Code that can be handed a tensor on either device — the Python
//! bindings, the decoder — first brings it to the host with the fallible [`Tensor::to_host`],
//! [`Tensor::to_vec`] or [`Tensor::into_host_vec`] (a `Device` error if the download fails).
//! Making `data()` itself fallible would put a `?` on each of the ~170 CPU-kernel reads for a
//! condition the dispatch already rules out. [`Tensor::to_device`] moves values explicitly.

mod device;

pub use crate::shape::{broadcast_shapes, contiguous_strides, normalize_dim, numel, shape_str};
pub use device::Device;

use crate::error::{Result, TfmError};
#[cfg(feature = "wgpu")]
use crate::gpu::GpuBuffer;
use std::sync::Arc;

#[derive(Clone)]
enum Storage {
    Host(Arc<HostBuf>),
    #[cfg(feature = "wgpu")]
    Gpu(Arc<GpuBuffer>),
}

/// Host values, recycled on drop.
#[derive(Clone, Debug)]
struct HostBuf(Vec<f32>);

impl Drop for HostBuf {
    fn drop(&mut self) {
        crate::cpu::alloc::recycle(std::mem::take(&mut self.0));
    }
}

#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Tensor");
        s.field("shape", &self.shape);
        match &self.storage {
            Storage::Host(d) => s.field("data", &d.0),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => s.field("device", &"gpu"),
        };
        s.finish()
    }
}

/// The message of the invariant the host accessors rely on.
#[cfg(feature = "wgpu")]
const HOST_ONLY: &str =
    "a CPU kernel was handed a GPU tensor (ops must check devices first; please report it)";

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
            storage: Storage::Host(Arc::new(HostBuf(data))),
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
            storage: Storage::Host(Arc::new(HostBuf(data))),
        }
    }

    pub fn scalar(value: f32) -> Self {
        Self::full(&[], value)
    }

    /// [`Tensor::full`] on `device`.
    pub fn full_on(shape: &[usize], value: f32, device: Device) -> Result<Self> {
        Self::full(shape, value).to_device(device)
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

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Host(_) => Device::Cpu,
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => Device::Gpu,
        }
    }

    pub fn is_gpu(&self) -> bool {
        self.device() == Device::Gpu
    }

    /// The values of a host tensor. Only CPU kernels call this, after the op checked that its
    /// operands are on the CPU; a GPU tensor here is a bug in tfm_rs (reported as an
    /// `InternalError` by the bindings, which catch panics).
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Host(d) => &d.0,
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => panic!("{HOST_ONLY}"),
        }
    }

    /// Mutable access to a host tensor's values; copies the storage first if another tensor
    /// shares it. CPU kernels only, as [`Tensor::data`].
    pub fn data_mut(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::Host(d) => Arc::make_mut(d).0.as_mut_slice(),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => panic!("{HOST_ONLY}"),
        }
    }

    /// The values of a host tensor, moved out. CPU kernels only, as [`Tensor::data`].
    pub fn into_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::Host(d) => match Arc::try_unwrap(d) {
                Ok(mut own) => std::mem::take(&mut own.0),
                Err(shared) => shared.0.clone(),
            },
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => panic!("{HOST_ONLY}"),
        }
    }

    /// `self += g` for tensors of one shape: in place on the host (copying the storage first if
    /// it is shared), a new sum on the GPU. Operands on two devices are a `Device` error naming
    /// `add`, as every op's. Gradient accumulation goes through here.
    pub fn add_assign(&mut self, g: &Tensor) -> Result<()> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 15;
        match Device::common("add", [self.device(), g.device()])? {
            #[cfg(feature = "wgpu")]
            Device::Gpu => {
                *self = crate::gpu::ops::elementwise::binary(crate::desc::BinaryOp::Add, self, g)?;
            }
            _ => self
                .data_mut()
                .par_chunks_mut(CHUNK)
                .zip(g.data().par_chunks(CHUNK))
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, &b)| *a += b)),
        }
        Ok(())
    }

    /// The values as a host vector, moved out of a host tensor (no copy when unshared) or
    /// downloaded from a GPU one.
    pub fn into_host_vec(self) -> Result<Vec<f32>> {
        if self.is_gpu() {
            self.to_vec()
        } else {
            Ok(self.into_vec())
        }
    }

    /// The values as a host vector, downloading a GPU tensor.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Host(d) => Ok(d.0.to_vec()),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(b) => b.to_vec::<f32>(),
        }
    }

    /// This tensor on the host: itself if it is there, else a downloaded copy.
    pub fn to_host(&self) -> Result<Tensor> {
        self.to_device(Device::Cpu)
    }

    /// This tensor on `device`: itself (sharing storage) if it is there, else a copy. Moving to
    /// the GPU without the `wgpu` feature, or without an adapter, is a `Device` error.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        match device {
            Device::Cpu => Tensor::new(self.to_vec()?, &self.shape),
            #[cfg(feature = "wgpu")]
            Device::Gpu => Ok(Tensor::from_gpu(
                GpuBuffer::from_slice(self.data())?,
                &self.shape,
            )?),
            #[cfg(not(feature = "wgpu"))]
            Device::Gpu => Err(TfmError::device(
                "to",
                "tfm_rs was built without the GPU backend (cargo feature \"wgpu\")",
            )),
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
            storage: self.storage.clone(),
        })
    }

    /// Size of the last dimension and the number of rows before it (1 for a scalar).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        let rows = numel(&self.shape[..self.ndim().saturating_sub(1)]);
        (rows, cols)
    }
}

#[cfg(feature = "wgpu")]
impl Tensor {
    /// A GPU tensor over `buffer`, which must hold exactly the shape's number of values.
    pub fn from_gpu(buffer: GpuBuffer, shape: &[usize]) -> Result<Tensor> {
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
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Gpu(Arc::new(buffer)),
        })
    }

    /// A GPU tensor of zeros.
    pub fn gpu_zeros(shape: &[usize]) -> Result<Tensor> {
        Tensor::from_gpu(GpuBuffer::zeros(numel(shape))?, shape)
    }

    /// The GPU buffer of a GPU tensor; a `Device` error naming `op` for a host tensor.
    pub fn buffer(&self, op: &'static str) -> Result<&GpuBuffer> {
        match &self.storage {
            Storage::Gpu(b) => Ok(b),
            Storage::Host(_) => Err(TfmError::device(
                op,
                "expected a GPU tensor, got a CPU tensor",
            )),
        }
    }

    /// The GPU buffer for an in-place update: first copied on the device if another tensor
    /// shares it (copy-on-write, as [`Tensor::data_mut`]).
    pub fn buffer_mut(&mut self, op: &'static str) -> Result<&GpuBuffer> {
        let Storage::Gpu(b) = &mut self.storage else {
            return Err(TfmError::device(
                op,
                "expected a GPU tensor, got a CPU tensor",
            ));
        };
        if Arc::get_mut(b).is_none() {
            let copy = GpuBuffer::zeros(b.len())?;
            copy.copy_from(b)?;
            *b = Arc::new(copy);
        }
        Ok(b)
    }
}
