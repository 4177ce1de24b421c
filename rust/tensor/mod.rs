//! Dense, contiguous, row-major f32 values with a shape, on a [`Device`]: a [`CpuTensor`] in host
//! memory or (feature `wgpu`) a `crate::gpu::GpuTensor`. Nothing else: no autograd (see
//! `autograd`), no math (see `ops`). Values are shared copy-on-write through an `Arc`, so
//! reshapes and saved-for-backward copies are free; when the last tensor sharing host values is
//! dropped, their buffer goes back to `cpu::alloc` for the next op's output.
//!
//! A [`Tensor`] does not hand out its values directly. Kernels get them by device: an op that
//! runs on both devices asks [`Tensor::place`] for its operands, the one place that matches
//! devices, and gets either all-CPU or all-GPU views (a `Device` error naming the op on a mix);
//! an op with no GPU kernel yet asks [`Tensor::cpu`], a `Device` error naming the op for a GPU
//! tensor. So a CPU kernel cannot be handed GPU values, nor a GPU kernel host values, and
//! nothing panics on the wrong device. [`Tensor::to_vec`] and [`Tensor::to_device`] copy values
//! across explicitly.

mod cpu;
mod device;

pub use crate::shape::{broadcast_shapes, contiguous_strides, normalize_dim, numel, shape_str};
pub use cpu::CpuTensor;
pub use device::Device;

use crate::error::{Result, TfmError};
#[cfg(feature = "wgpu")]
use crate::gpu::GpuTensor;

#[derive(Clone)]
enum Storage {
    Cpu(CpuTensor),
    #[cfg(feature = "wgpu")]
    Gpu(GpuTensor),
}

/// Values on one device with a shape; see the module doc for how kernels reach them.
#[derive(Clone)]
pub struct Tensor {
    storage: Storage,
}

/// The operands of an op, all on one device, as that device's tensors ([`Tensor::place`]).
pub enum Placed<'a, const N: usize> {
    Cpu([&'a CpuTensor; N]),
    #[cfg(feature = "wgpu")]
    Gpu([&'a GpuTensor; N]),
}

/// [`Placed`] for a run-time number of operands ([`Tensor::place_all`]).
pub enum PlacedAll<'a> {
    Cpu(Vec<&'a CpuTensor>),
    #[cfg(feature = "wgpu")]
    Gpu(Vec<&'a GpuTensor>),
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Tensor");
        s.field("shape", &self.shape());
        match &self.storage {
            Storage::Cpu(t) => s.field("data", &t.data()),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => s.field("device", &"gpu"),
        };
        s.finish()
    }
}

impl From<CpuTensor> for Tensor {
    fn from(t: CpuTensor) -> Self {
        Tensor {
            storage: Storage::Cpu(t),
        }
    }
}

#[cfg(feature = "wgpu")]
impl From<GpuTensor> for Tensor {
    fn from(t: GpuTensor) -> Self {
        Tensor {
            storage: Storage::Gpu(t),
        }
    }
}

impl Tensor {
    /// A host tensor owning `data`, which must hold exactly `shape.iter().product()` values.
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        Ok(CpuTensor::new(data, shape)?.into())
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, 0.0)
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        let mut data = crate::cpu::alloc::output(numel(shape));
        data.fill(value);
        CpuTensor::from_parts(data, shape).into()
    }

    pub fn scalar(value: f32) -> Self {
        Self::full(&[], value)
    }

    /// [`Tensor::full`] on `device`.
    pub fn full_on(shape: &[usize], value: f32, device: Device) -> Result<Self> {
        Self::full(shape, value).to_device(device)
    }

    pub fn shape(&self) -> &[usize] {
        match &self.storage {
            Storage::Cpu(t) => t.shape(),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(t) => t.shape(),
        }
    }

    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    pub fn numel(&self) -> usize {
        numel(self.shape())
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => Device::Gpu,
        }
    }

    pub fn is_gpu(&self) -> bool {
        self.device() == Device::Gpu
    }

    /// The operands of `op` as tensors of their one device; a `Device` error naming `op` if
    /// they are on two (as PyTorch's "Expected all tensors to be on the same device"). The one
    /// place where ops learn where their values are.
    pub fn place<'a, const N: usize>(
        op: &'static str,
        tensors: [&'a Tensor; N],
    ) -> Result<Placed<'a, N>> {
        match Device::common(op, tensors.iter().map(|t| t.device()))? {
            #[cfg(feature = "wgpu")]
            Device::Gpu => Ok(Placed::Gpu(tensors.map(|t| match &t.storage {
                Storage::Gpu(g) => g,
                Storage::Cpu(_) => unreachable!("Device::common checked every device"),
            }))),
            _ => Ok(Placed::Cpu(tensors.map(|t| match &t.storage {
                Storage::Cpu(c) => c,
                #[cfg(feature = "wgpu")]
                Storage::Gpu(_) => unreachable!("Device::common checked every device"),
            }))),
        }
    }

    /// [`Tensor::place`] for a run-time number of operands.
    pub fn place_all<'a>(op: &'static str, tensors: &'a [Tensor]) -> Result<PlacedAll<'a>> {
        match Device::common(op, tensors.iter().map(Tensor::device))? {
            #[cfg(feature = "wgpu")]
            Device::Gpu => Ok(PlacedAll::Gpu(
                tensors
                    .iter()
                    .map(|t| match &t.storage {
                        Storage::Gpu(g) => g,
                        Storage::Cpu(_) => unreachable!("Device::common checked every device"),
                    })
                    .collect(),
            )),
            _ => Ok(PlacedAll::Cpu(
                tensors
                    .iter()
                    .map(|t| match &t.storage {
                        Storage::Cpu(c) => c,
                        #[cfg(feature = "wgpu")]
                        Storage::Gpu(_) => unreachable!("Device::common checked every device"),
                    })
                    .collect(),
            )),
        }
    }

    /// The host values of an op that has no GPU kernel (yet); for a GPU tensor, a `Device`
    /// error naming `op`.
    #[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
    pub fn cpu(&self, op: &'static str) -> Result<&CpuTensor> {
        match &self.storage {
            Storage::Cpu(t) => Ok(t),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => Err(no_gpu_kernel(op)),
        }
    }

    /// The host values of an optional operand, as [`Tensor::cpu`].
    pub fn cpu_opt<'a>(op: &'static str, t: Option<&'a Tensor>) -> Result<Option<&'a [f32]>> {
        Ok(t.map(|t| t.cpu(op)).transpose()?.map(CpuTensor::data))
    }

    /// [`Tensor::cpu`], moved out.
    #[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
    pub fn into_cpu(self, op: &'static str) -> Result<CpuTensor> {
        match self.storage {
            Storage::Cpu(t) => Ok(t),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => Err(no_gpu_kernel(op)),
        }
    }

    /// [`Tensor::cpu`] for an in-place update.
    #[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
    pub fn cpu_mut(&mut self, op: &'static str) -> Result<&mut CpuTensor> {
        match &mut self.storage {
            Storage::Cpu(t) => Ok(t),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(_) => Err(no_gpu_kernel(op)),
        }
    }

    /// A GPU tensor of zeros.
    #[cfg(feature = "wgpu")]
    pub fn gpu_zeros(shape: &[usize]) -> Result<Tensor> {
        Ok(GpuTensor::zeros(shape)?.into())
    }

    /// The GPU values of a tensor that GPU code composed from other ops (after a device check);
    /// a `Device` error naming `op` for a host tensor.
    #[cfg(feature = "wgpu")]
    pub fn gpu(&self, op: &'static str) -> Result<&GpuTensor> {
        match &self.storage {
            Storage::Gpu(t) => Ok(t),
            Storage::Cpu(_) => Err(TfmError::device(
                op,
                "expected a GPU tensor, got a CPU tensor",
            )),
        }
    }

    /// The GPU values for an in-place update (optimizer steps); a `Device` error naming `op`
    /// for a host tensor.
    #[cfg(feature = "wgpu")]
    pub fn gpu_mut(&mut self, op: &'static str) -> Result<&mut GpuTensor> {
        match &mut self.storage {
            Storage::Gpu(t) => Ok(t),
            Storage::Cpu(_) => Err(TfmError::device(
                op,
                "expected a GPU tensor, got a CPU tensor",
            )),
        }
    }

    /// `self += g` for tensors of one shape: in place on the host (copying the storage first if
    /// it is shared), a new sum on the GPU. Operands on two devices are a `Device` error naming
    /// `add`, as every op's. Gradient accumulation goes through here.
    pub fn add_assign(&mut self, g: &Tensor) -> Result<()> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 15;
        Device::common("add", [self.device(), g.device()])?;
        match (&mut self.storage, &g.storage) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                let (a, b) = (a.data_mut(), b.data());
                let add =
                    |(a, b): (&mut [f32], &[f32])| a.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
                if a.len() > CHUNK && crate::cpu::pool::threads() > 1 {
                    crate::cpu::pool::parallel(|| {
                        a.par_chunks_mut(CHUNK)
                            .zip(b.par_chunks(CHUNK))
                            .for_each(add)
                    });
                } else {
                    add((a, b));
                }
            }
            #[cfg(feature = "wgpu")]
            (Storage::Gpu(a), Storage::Gpu(b)) => {
                *a = crate::gpu::ops::elementwise::binary(crate::desc::BinaryOp::Add, a, b)?;
            }
            #[cfg(feature = "wgpu")]
            _ => unreachable!("Device::common checked both devices"),
        }
        Ok(())
    }

    /// The values as a host vector, moved out of a host tensor (no copy when unshared) or
    /// downloaded from a GPU one.
    pub fn into_host_vec(self) -> Result<Vec<f32>> {
        match self.storage {
            Storage::Cpu(t) => Ok(t.into_vec()),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(t) => t.to_vec(),
        }
    }

    /// The values as a host vector, downloading a GPU tensor.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(t) => Ok(t.data().to_vec()),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(t) => t.to_vec(),
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
        match (&self.storage, device) {
            #[cfg(feature = "wgpu")]
            (Storage::Cpu(t), Device::Gpu) => Ok(GpuTensor::from_host(t.data(), t.shape())?.into()),
            #[cfg(not(feature = "wgpu"))]
            (_, Device::Gpu) => Err(TfmError::device(
                "to",
                "tfm_rs was built without the GPU backend (cargo feature \"wgpu\")",
            )),
            _ => Tensor::new(self.to_vec()?, self.shape()),
        }
    }

    /// The same storage under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(TfmError::shape(
                "reshape",
                format!(
                    "cannot reshape {} into {}",
                    shape_str(self.shape()),
                    shape_str(shape)
                ),
            ));
        }
        Ok(match &self.storage {
            Storage::Cpu(t) => t.with_shape(shape).into(),
            #[cfg(feature = "wgpu")]
            Storage::Gpu(t) => t.with_shape(shape).into(),
        })
    }

    /// Size of the last dimension and the number of rows before it (1 for a scalar).
    pub fn rows_cols(&self) -> (usize, usize) {
        crate::shape::rows_cols(self.shape())
    }
}

/// The error of an op with no GPU kernel handed a GPU tensor.
#[cfg(feature = "wgpu")]
fn no_gpu_kernel(op: &'static str) -> TfmError {
    TfmError::device(
        op,
        "no GPU kernel yet; move its inputs to the CPU with .to(\"cpu\")",
    )
}

#[cfg(test)]
impl Tensor {
    /// The host values, for tests: a GPU tensor here is a mistake in the test.
    pub(crate) fn data(&self) -> &[f32] {
        self.cpu("test")
            .expect("a test read the host values of a GPU tensor")
            .data()
    }
}
