//! Where a tensor's values live: host memory or (feature `wgpu`) a GPU buffer, and the check
//! every op makes that its operands agree.

use crate::error::{Result, TfmError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// The process's one wgpu device (`crate::gpu::context`). Only the `wgpu` build creates
    /// tensors here.
    Gpu,
}

impl Device {
    /// The name `Tensor.device` reports and `Tensor.to` accepts: "cpu" or "gpu".
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }

    /// Parses a device name: "cpu", or "gpu" / "wgpu" (PyTorch's "cuda" is refused with a hint,
    /// since this backend is not CUDA).
    pub fn parse(op: &'static str, name: &str) -> Result<Device> {
        match name.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" | "wgpu" | "gpu:0" | "wgpu:0" => Ok(Device::Gpu),
            "cuda" | "mps" => Err(TfmError::value(
                op,
                format!("device {name:?}: tfm_rs reaches GPUs through wgpu; use \"gpu\""),
            )),
            _ => Err(TfmError::value(
                op,
                format!("unknown device {name:?}; expected \"cpu\" or \"gpu\""),
            )),
        }
    }

    /// The one device of `devices`, or an error naming `op` and two that differ (as PyTorch's
    /// "Expected all tensors to be on the same device").
    pub fn common(op: &'static str, devices: impl IntoIterator<Item = Device>) -> Result<Device> {
        let mut it = devices.into_iter();
        let first = it.next().unwrap_or(Device::Cpu);
        match it.find(|&d| d != first) {
            None => Ok(first),
            Some(other) => Err(TfmError::device(
                op,
                format!(
                    "expected all tensors to be on the same device, but found tensors on {} and {}; move them with .to(\"{}\")",
                    first.name(),
                    other.name(),
                    other.name()
                ),
            )),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn names_parse_and_mixing_is_an_error_naming_both() {
        assert_eq!(Device::parse("t", "GPU").unwrap(), Device::Gpu);
        assert_eq!(Device::parse("t", "wgpu").unwrap(), Device::Gpu);
        assert_eq!(Device::parse("t", "cpu").unwrap(), Device::Cpu);
        assert_eq!(
            Device::parse("t", "cuda").unwrap_err().kind,
            ErrorKind::Value
        );
        assert_eq!(
            Device::parse("t", "tpu").unwrap_err().kind,
            ErrorKind::Value
        );
        assert_eq!(Device::common("t", []).unwrap(), Device::Cpu);
        let err = Device::common("linear", [Device::Gpu, Device::Gpu, Device::Cpu]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Device);
        assert!(err.to_string().starts_with("linear: "), "{err}");
        assert!(err.msg.contains("gpu and cpu"), "{err}");
    }
}
