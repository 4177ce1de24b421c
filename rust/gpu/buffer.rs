//! Storage buffers of 4-byte elements (f32, or u32/i32 for ids and targets) on the GPU, with
//! upload and download.
//!
//! A buffer holds `len` elements but is never smaller than one element: wgpu refuses to bind
//! an empty buffer, so a zero-length buffer is allocated with 4 bytes and `len` 0.

use super::context::{gpu, Gpu};
use crate::error::{Result, TfmError};
use bytemuck::Pod;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

const OP: &str = "gpu buffer";

pub struct GpuBuffer {
    pub(crate) buffer: wgpu::Buffer,
    len: usize,
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Bytes for `len` 4-byte elements, checked against the device's limits.
fn byte_size(g: &Gpu, len: usize) -> Result<u64> {
    let bytes = (len.max(1) as u64).saturating_mul(4);
    let limit = g
        .limits
        .max_buffer_size
        .min(g.limits.max_storage_buffer_binding_size);
    if bytes > limit {
        return Err(TfmError::device(
            OP,
            format!(
                "{len} elements ({bytes} bytes) exceed this GPU's buffer limit of {limit} bytes"
            ),
        ));
    }
    Ok(bytes)
}

impl GpuBuffer {
    /// A buffer holding a copy of `data` (f32, u32 or i32).
    pub fn from_slice<T: Pod>(data: &[T]) -> Result<Self> {
        assert_eq!(
            std::mem::size_of::<T>(),
            4,
            "GpuBuffer holds 4-byte elements"
        );
        let g = gpu()?;
        byte_size(g, data.len())?;
        let zero = [0u8; 4];
        let contents: &[u8] = if data.is_empty() {
            &zero
        } else {
            bytemuck::cast_slice(data)
        };
        let buffer = g.checked(OP, || {
            Ok(g.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("tfm_rs"),
                    contents,
                    usage: USAGE,
                }))
        })?;
        Ok(GpuBuffer {
            buffer,
            len: data.len(),
        })
    }

    /// A buffer of `len` zeros (wgpu zero-fills new buffers).
    pub fn zeros(len: usize) -> Result<Self> {
        let g = gpu()?;
        let size = byte_size(g, len)?;
        let buffer = g.checked(OP, || {
            Ok(g.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tfm_rs"),
                size,
                usage: USAGE,
                mapped_at_creation: false,
            }))
        })?;
        Ok(GpuBuffer { buffer, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies all of `src` into the start of this buffer, on the device.
    pub fn copy_from(&self, src: &GpuBuffer) -> Result<()> {
        if src.len > self.len {
            return Err(TfmError::shape(
                OP,
                format!(
                    "cannot copy {} values into a buffer of {}",
                    src.len, self.len
                ),
            ));
        }
        if src.len == 0 {
            return Ok(());
        }
        let g = gpu()?;
        g.checked(OP, || {
            let mut enc = g.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&src.buffer, 0, &self.buffer, 0, src.len as u64 * 4);
            g.queue.submit([enc.finish()]);
            Ok(())
        })
    }

    /// Copies the buffer back to the host (waits for the work submitted before).
    pub fn to_vec<T: Pod>(&self) -> Result<Vec<T>> {
        assert_eq!(
            std::mem::size_of::<T>(),
            4,
            "GpuBuffer holds 4-byte elements"
        );
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let g = gpu()?;
        let size = self.len as u64 * 4;
        let staging = g.checked(OP, || {
            let staging = g.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tfm_rs download"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = g.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&self.buffer, 0, &staging, 0, size);
            g.queue.submit([enc.finish()]);
            Ok(staging)
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        // wgpu runs a map callback in whichever thread polls: when threads share the device,
        // another thread's poll can take ours and run it just after our own poll returned, so
        // the result may arrive a moment late. Poll and wait again, up to a deadline.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mapped = loop {
            g.wait(OP)?;
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => return Err(TfmError::device(OP, "the download did not complete")),
            }
        };
        if let Err(e) = mapped {
            return Err(TfmError::device(
                OP,
                format!("mapping for download failed: {e}"),
            ));
        }
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| TfmError::device(OP, format!("reading the mapped buffer failed: {e}")))?;
        let out = bytemuck::pod_collect_to_vec::<u8, T>(&view);
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

/// Uploads `data` (f32).
pub fn upload(data: &[f32]) -> Result<GpuBuffer> {
    GpuBuffer::from_slice(data)
}

/// Downloads a buffer of f32.
pub fn download(buf: &GpuBuffer) -> Result<Vec<f32>> {
    buf.to_vec::<f32>()
}
