//! Compute pipelines, created once per (shader, entry point) and reused, and [`launch`], the one
//! call every op's host code makes.
//!
//! The binding convention every shader follows: `@group(0) @binding(0)` is a uniform struct of
//! the kernel's parameters, and bindings 1, 2, … are the storage buffers in the order of the
//! launch's `args`, `var<storage, read>` for [`Arg::In`] and `var<storage, read_write>` for
//! [`Arg::Out`]. The bind-group layout is derived from that list, so a shader and its host
//! agree by construction or fail validation (a `Device` error naming the op).
//!
//! Every shader is compiled with `common.wgsl` (and its variant's constants) in front of it (shared constants, the grid
//! index, workgroup reductions, the counter-based RNG).

use super::buffer::GpuBuffer;
use super::context::gpu;
use crate::error::{Result, TfmError};
use bytemuck::Pod;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Invocations per workgroup of the row and elementwise kernels (`WG` in `common.wgsl`).
pub const WG: u32 = 256;
/// The most workgroups one dispatch dimension may have (WebGPU's minimum limit).
const MAX_GROUPS: u32 = 65_535;

/// A WGSL source file and the name pipelines built from it go by; `defines`, compiled in front
/// of the source, specializes it (constants a variant sets, such as a tile size).
pub struct Shader {
    pub name: &'static str,
    pub defines: &'static str,
    pub source: &'static str,
}

/// Declares a [`Shader`] from a `.wgsl` file beside the current source file.
macro_rules! shader {
    ($name:ident, $file:literal) => {
        const $name: $crate::gpu::pipeline::Shader = $crate::gpu::pipeline::Shader {
            name: $file,
            defines: "",
            source: include_str!($file),
        };
    };
    ($name:ident, $file:literal, $variant:literal, $defines:literal) => {
        const $name: $crate::gpu::pipeline::Shader = $crate::gpu::pipeline::Shader {
            name: concat!($file, " ", $variant),
            defines: $defines,
            source: include_str!($file),
        };
    };
}
pub(crate) use shader;

/// A storage buffer bound to a kernel.
pub enum Arg<'a> {
    In(&'a GpuBuffer),
    Out(&'a GpuBuffer),
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// (shader name, entry point, read-only flags of the storage bindings).
type PipelineKey = (&'static str, &'static str, Vec<bool>);

/// Pipelines by [`PipelineKey`], and shader modules by shader name.
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
}

const COMMON: &str = include_str!("common.wgsl");

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl PipelineCache {
    /// The pipeline for `entry` of `shader` with storage bindings of the given read-only flags,
    /// compiled on first use. A shader or pipeline that fails validation is reported (with
    /// naga's message) and not cached, so every later call reports the same cause.
    fn get(
        &self,
        device: &wgpu::Device,
        shader: &Shader,
        entry: &'static str,
        read_only: Vec<bool>,
    ) -> Result<Arc<Pipeline>> {
        let key = (shader.name, entry, read_only);
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pipelines.get(&key) {
            return Ok(Arc::clone(p));
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let module = match modules.get(shader.name) {
            Some(m) => Arc::clone(m),
            None => Arc::new(device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(
                    format!("{COMMON}\n{}\n{}", shader.defines, shader.source).into(),
                ),
            })),
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        entries.extend(
            key.2
                .iter()
                .enumerate()
                .map(|(i, &ro)| storage_entry(i as u32 + 1, ro)),
        );
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(entry),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(TfmError::device(
                "gpu pipeline",
                format!("{} ({entry}) does not compile: {e}", shader.name),
            ));
        }
        modules.entry(shader.name).or_insert(module);
        let p = Arc::new(Pipeline { pipeline, layout });
        pipelines.insert(key, Arc::clone(&p));
        Ok(p)
    }
}

/// Workgroup counts for `n` workgroups along one logical axis, folded into x and y so that
/// neither passes the dispatch limit; shaders recover the index as `wg.x + wg.y · nwg.x`
/// (`group_index` in `common.wgsl`) and skip the tail past `n`.
pub fn grid(n: usize) -> [u32; 3] {
    let n = n.max(1);
    let x = n.min(MAX_GROUPS as usize);
    [x as u32, n.div_ceil(x) as u32, 1]
}

/// Workgroups for `n` elements at [`WG`] per workgroup.
pub fn grid_elems(n: usize) -> [u32; 3] {
    grid(n.div_ceil(WG as usize))
}

/// Runs entry point `entry` of `shader` once over `groups` workgroups with `params` as the
/// uniform (binding 0) and `args` as bindings 1…; submits and returns without waiting (the
/// queue keeps launches in order; downloads wait). Errors of any step are `Device` errors
/// naming `op`.
pub fn launch<P: Pod>(
    op: &'static str,
    shader: &Shader,
    entry: &'static str,
    params: &P,
    args: &[Arg],
    groups: [u32; 3],
) -> Result<()> {
    let g = gpu()?;
    if groups.contains(&0) {
        return Ok(());
    }
    g.checked(op, || {
        let read_only = args.iter().map(|a| matches!(a, Arg::In(_))).collect();
        let p = g.pipelines.get(&g.device, shader, entry, read_only)?;
        // Uniform structs are padded to 16 bytes on the WGSL side.
        let mut bytes = bytemuck::bytes_of(params).to_vec();
        bytes.resize(bytes.len().next_multiple_of(16), 0);
        let uniform = g
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(args.iter().enumerate().map(|(i, a)| {
            let (Arg::In(b) | Arg::Out(b)) = a;
            wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.buffer.as_entire_binding(),
            }
        }));
        let bind = g.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &p.layout,
            entries: &entries,
        });
        let mut enc = g
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(entry) });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes: None,
            });
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        g.queue.submit([enc.finish()]);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::gpu::tests::require_gpu;

    shader!(ACTIVATION, "ops/activation.wgsl");

    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Params {
        n: u32,
        kind: u32,
    }

    #[test]
    fn validation_errors_become_device_errors_and_leave_the_device_usable() {
        if !require_gpu("pipeline errors") {
            return;
        }
        let x = GpuBuffer::from_slice(&[-1.0f32, 2.0]).unwrap();
        let y = GpuBuffer::zeros(2).unwrap();
        let p = Params { n: 2, kind: 0 };
        // The shader's output binding is read_write; binding it read-only fails validation.
        let bad = [Arg::In(&x), Arg::In(&x), Arg::In(&y)];
        let err = launch("test", &ACTIVATION, "forward", &p, &bad, [1, 1, 1]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Device, "{err}");
        // A buffer bound writable twice in one dispatch is a usage conflict.
        let clash = [Arg::In(&x), Arg::In(&x), Arg::Out(&x)];
        let err = launch("test", &ACTIVATION, "forward", &p, &clash, [1, 1, 1]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Device, "{err}");
        let good = [Arg::In(&x), Arg::In(&x), Arg::Out(&y)];
        launch("test", &ACTIVATION, "forward", &p, &good, [1, 1, 1]).unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 2.0]);
    }

    #[test]
    fn oversized_buffers_are_device_errors() {
        if !require_gpu("buffer limits") {
            return;
        }
        let err = GpuBuffer::zeros(usize::MAX / 8).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Device, "{err}");
    }
}
