//! The process's one GPU: instance, adapter, device and queue, created on first use.
//!
//! Adapter choice: a high-performance adapter first, which on a machine with a real GPU is the
//! discrete one and otherwise whatever exists (wgpu ranks CPU adapters such as Mesa's lavapipe
//! last, but still offers them); then, if that finds nothing, a second request with
//! `force_fallback_adapter`. The device asks for the adapter's own limits, so that large buffers
//! and the 16 KiB attention tiles fit wherever the hardware allows them.
//!
//! Errors: nothing here panics into the caller. Device creation failures become
//! `ErrorKind::Device`; so do validation, out-of-memory and internal errors of any GPU call,
//! caught by error scopes around each call ([`Gpu::checked`]), and errors reported outside any
//! scope, which the device's uncaptured-error handler records (wgpu's default handler panics)
//! and the next checked call returns. A lost device is recorded the same way.
//!
//! `TFM_RS_GPU=0` (or `off`) hides the GPU, for testing the no-adapter path on a machine with one.
//!
//! A child made by `fork` after the GPU was first asked for gets a `Device` error instead: the
//! device (and the driver threads behind it) belong to the parent, and a half-made one would
//! block the child forever.

use super::pipeline::PipelineCache;
use crate::error::{Result, TfmError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

const OP: &str = "gpu";

/// What `gpu_info()` reports about the adapter in use.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub name: String,
    /// "vulkan", "metal", "dx12", …
    pub backend: String,
    /// "discrete", "integrated", "cpu" (a software rasterizer such as lavapipe), …
    pub device_type: String,
    pub driver: String,
}

pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) pipelines: PipelineCache,
    info: GpuInfo,
    /// The first error reported outside an error scope, or a device loss, since the last check.
    uncaptured: Arc<Mutex<Option<String>>>,
}

static GPU: OnceLock<Result<Gpu>> = OnceLock::new();
/// Whether this process is a `fork` child of one that had asked for the GPU.
static FORKED: AtomicBool = AtomicBool::new(false);
static FORK_HANDLER: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

/// The GPU, created on the first call; the same error on every call when there is none.
pub fn gpu() -> Result<&'static Gpu> {
    FORK_HANDLER.call_once(|| {
        crate::cpu::fork::on_fork(None, None, Some(after_fork_in_child));
    });
    if FORKED.load(Ordering::Relaxed) {
        return Err(TfmError::device(
            OP,
            "this process was forked from one that had used the GPU, and a forked child cannot \
             use its parent's GPU device; start workers with the 'spawn' or 'forkserver' method",
        ));
    }
    GPU.get_or_init(|| {
        catch_unwind(create).unwrap_or_else(|_| {
            Err(TfmError::device(
                OP,
                "the GPU driver panicked while the device was created",
            ))
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Whether a GPU adapter and device could be created.
pub fn is_available() -> bool {
    gpu().is_ok()
}

/// The adapter in use, or the reason there is none.
pub fn info() -> Result<GpuInfo> {
    gpu().map(|g| g.info.clone())
}

fn disabled_by_env() -> bool {
    std::env::var("TFM_RS_GPU")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "0" | "off" | "false" | "no"
            )
        })
        .unwrap_or(false)
}

fn create() -> Result<Gpu> {
    if disabled_by_env() {
        return Err(TfmError::device(OP, "the GPU is disabled by TFM_RS_GPU"));
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(request_adapter(&instance))?;
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("tfm_rs"),
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| TfmError::device(OP, format!("the adapter refused a device: {e}")))?;
    let uncaptured = Arc::new(Mutex::new(None::<String>));
    let slot = Arc::clone(&uncaptured);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| record(&slot, e.to_string())));
    let slot = Arc::clone(&uncaptured);
    device.set_device_lost_callback(move |reason, msg| {
        record(&slot, format!("device lost ({reason:?}): {msg}"))
    });
    let a = adapter.get_info();
    let info = GpuInfo {
        name: a.name.clone(),
        backend: a.backend.to_str().to_string(),
        device_type: match a.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        }
        .to_string(),
        driver: format!("{} {}", a.driver, a.driver_info).trim().to_string(),
    };
    Ok(Gpu {
        device,
        queue,
        limits,
        pipelines: PipelineCache::default(),
        info,
        uncaptured,
    })
}

fn record(slot: &Mutex<Option<String>>, msg: String) {
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert(msg);
    }
}

async fn request_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let options = |fallback| wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: fallback,
        compatible_surface: None,
        ..Default::default()
    };
    match instance.request_adapter(&options(false)).await {
        Ok(a) => Ok(a),
        Err(first) => instance.request_adapter(&options(true)).await.map_err(|e| {
            TfmError::device(
                OP,
                format!(
                    "no GPU adapter found ({first}; software fallback: {e}); on Linux without a GPU, \
                     Mesa's lavapipe provides one (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1)"
                ),
            )
        }),
    }
}

impl Gpu {
    /// Runs `f` (which records and submits GPU work) inside error scopes for validation,
    /// out-of-memory and internal errors, catching panics too; any of these, or an error
    /// reported since the last call, becomes a `Device` error naming `op`.
    pub(crate) fn checked<T>(&self, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let scopes = [
            self.device.push_error_scope(wgpu::ErrorFilter::Validation),
            self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            self.device.push_error_scope(wgpu::ErrorFilter::Internal),
        ];
        let out = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let text = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(TfmError::device(
                op,
                format!("the GPU call panicked: {text}"),
            ))
        });
        // Scopes pop in reverse order of their pushes.
        let mut scope_error = None;
        for scope in scopes.into_iter().rev() {
            if let Some(e) = pollster::block_on(scope.pop()) {
                scope_error.get_or_insert(e.to_string());
            }
        }
        let reported = self.uncaptured.lock().ok().and_then(|mut s| s.take());
        match scope_error.or(reported) {
            Some(msg) => Err(TfmError::device(op, msg)),
            None => out,
        }
    }

    /// Blocks until the queue has finished the work submitted so far.
    pub(crate) fn wait(&self, op: &'static str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| TfmError::device(op, format!("waiting for the GPU failed: {e}")))
    }
}
