//! Which SIMD path the kernels take. Detected once at first use; the environment variable
//! `TFM_RS_ISA` (`avx512`, `avx2`, `generic`) or `set_isa` forces a path so that tests can run
//! every path the machine supports against the portable one.

use crate::error::{Result, TfmError};
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, no explicit SIMD.
    Generic = 1,
    /// AVX2 with FMA (x86-64 since Haswell / Zen 1).
    Avx2 = 2,
    /// AVX-512 Foundation (Skylake-X, Ice Lake, Sapphire Rapids, Zen 4/5).
    Avx512 = 3,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Result<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "generic" | "portable" | "fallback" => Ok(Isa::Generic),
            "avx2" | "avx2+fma" => Ok(Isa::Avx2),
            "avx512" | "avx512f" | "avx-512" => Ok(Isa::Avx512),
            other => Err(TfmError::value(
                "set_isa",
                format!("unknown instruction set '{other}'; expected one of avx512, avx2, generic"),
            )),
        }
    }

    /// Whether this machine can execute the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            3 => Isa::Avx512,
            2 => Isa::Avx2,
            _ => Isa::Generic,
        }
    }
}

/// 0 = not yet decided.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

fn best_supported() -> Isa {
    Isa::ALL
        .into_iter()
        .find(|isa| isa.is_supported())
        .unwrap_or(Isa::Generic)
}

/// The path in use: the one forced by `set_isa` or `TFM_RS_ISA`, else the best the CPU supports.
/// An unknown or unsupported `TFM_RS_ISA` falls back to detection (reported by `cpu_features`).
pub fn active_isa() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let isa = std::env::var("TFM_RS_ISA")
                .ok()
                .and_then(|name| Isa::from_name(&name).ok())
                .filter(|isa| isa.is_supported())
                .unwrap_or_else(best_supported);
            ACTIVE.store(isa as u8, Ordering::Relaxed);
            isa
        }
        v => Isa::from_u8(v),
    }
}

/// Forces a path for every later kernel call; errors if the CPU cannot run it.
pub fn set_isa(isa: Isa) -> Result<()> {
    if !isa.is_supported() {
        return Err(TfmError::value(
            "set_isa",
            format!("this CPU cannot run the {} path", isa.name()),
        ));
    }
    ACTIVE.store(isa as u8, Ordering::Relaxed);
    Ok(())
}
