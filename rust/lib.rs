//! tfm_rs: the Transformer of "Attention Is All You Need" on a Rust core.
//!
//! Modules, from the bottom of the import order up (each names only modules above it in this
//! list; a test at the end of this file checks it):
//!
//! - [`error`]: the one error type, [`TfmError`].
//! - [`random`]: counter-based random numbers (dropout masks independent of thread count).
//! - [`desc`]: device-neutral op descriptors (op kinds, loss, optimizer and attention
//!   configurations) that the CPU kernels, the GPU kernels and the ops all name.
//! - [`shape`]: shape arithmetic (element counts, strides, broadcasting) for both backends.
//! - [`cpu`]: instruction-set detection, the packed SIMD GEMM, the scalar math the kernels
//!   inline, the thread pool.
//! - `gpu` (feature `wgpu`): the GPU backend: `GpuTensor` (a GPU buffer with a shape) and the
//!   ops as WGSL compute shaders through wgpu, taking and returning `GpuTensor`s.
//! - [`tensor`]: [`tensor::Tensor`], values with a shape on one device: a
//!   [`tensor::CpuTensor`] or a `GpuTensor`. [`tensor::Tensor::place`] is the one device
//!   dispatch: it hands an op all-CPU or all-GPU operands, or a `Device` error naming the op.
//! - [`autograd`]: `Var`, the graph, and the backward pass.
//! - [`ops`]: one file per op: its CPU kernels (on `CpuTensor`s and slices), its reference
//!   and tests, the differentiable function and its one `Backward`; GPU operands go to the
//!   `gpu` kernel of the op, and an op without one refuses GPU tensors with a `Device` error.
//! - [`optim`]: Adam/AdamW and SGD updates, matching `torch.optim` step for step, on either
//!   device.
//! - [`decode`]: greedy, beam and sampling search with a key/value cache, on host weights.
//! - `python` (feature `python`): the PyO3 bindings, the only code that knows about Python;
//!   they only convert, and every call into Rust goes through one door that catches panics.
//!
//! Adding an op: `CONTRIBUTING.md` at the repository root.
//!
//! ```
//! use tfm_rs::{autograd::{backward, Var}, ops, tensor::Tensor};
//! let x = Var::leaf(Tensor::new(vec![1.0, -2.0, 3.0], &[3]).unwrap(), true);
//! let y = ops::reduce::sum(&ops::elementwise::mul(&x, &x).unwrap(), &[], false).unwrap();
//! backward(&y, None, false).unwrap();
//! assert_eq!(x.grad().unwrap().to_vec().unwrap(), [2.0, -4.0, 6.0]);
//! ```

pub mod autograd;
pub mod cpu;
pub mod decode;
pub mod desc;
pub mod error;
#[cfg(feature = "wgpu")]
pub mod gpu;
pub mod ops;
pub mod optim;
pub mod random;
pub mod shape;
pub mod tensor;

#[cfg(feature = "python")]
mod python;

pub use error::{ErrorKind, Result, TfmError};

#[cfg(test)]
mod import_order {
    use std::path::Path;

    /// The source files under `dir`, recursively.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable source tree") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The code of a file without its comments and its `#[cfg(test)]` part (tests compare the
    /// GPU kernels with the CPU ops, which is the one place the backend may name them).
    fn code(text: &str) -> String {
        text.lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The paths a piece of code names below `crate::`, grouped imports (`crate::{a, b::c}`)
    /// split into their heads.
    fn crate_paths(code: &str) -> Vec<String> {
        let mut heads = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                heads.extend(
                    group
                        .split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty()),
                );
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                heads.push(rest[..end].to_string());
            }
        }
        heads
    }

    #[test]
    fn the_scan_sees_plain_and_grouped_imports_but_not_comments_or_tests() {
        let src = "use crate::ops::x;\nuse crate::{\n    error::E,\n    autograd::Var,\n};\n\
                   //! [`crate::decode`]\nlet a = 1; // crate::tensor\n#[cfg(test)]\nuse crate::random;";
        assert_eq!(
            crate_paths(&code(src)),
            ["ops::x", "error::E", "autograd::Var"]
        );
    }

    /// The import order of the module list above, bottom first: each module names only modules
    /// before it, so no two modules import each other (`CONTRIBUTING.md`). The GPU backend sits
    /// below the tensor type, which holds its tensors; the CPU kernels' scalar math sits in
    /// `cpu`, below the ops and the GEMM epilogue that both apply it.
    const LAYERS: [&str; 12] = [
        "error", "random", "desc", "shape", "cpu", "gpu", "tensor", "autograd", "ops", "optim",
        "decode", "python",
    ];

    #[test]
    fn modules_import_only_modules_below_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rust");
        let mut files = Vec::new();
        sources(&root, &mut files);
        assert!(
            files.len() > 50,
            "found only {} sources under {root:?}",
            files.len()
        );
        let mut offenders = Vec::new();
        for file in files {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "tests.rs" || name.ends_with("_tests.rs") || name == "test_support.rs" {
                continue;
            }
            let rel = file.strip_prefix(&root).expect("under rust/");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|c| c.trim_end_matches(".rs"))
                .unwrap_or("");
            let Some(level) = LAYERS.iter().position(|m| *m == top) else {
                continue; // lib.rs
            };
            let text = std::fs::read_to_string(&file).expect("readable source");
            for head in crate_paths(&code(&text)) {
                let module = head.split("::").next().unwrap_or("");
                if LAYERS[level..].contains(&module) && module != top {
                    offenders.push(format!("{}: crate::{head:.40}", rel.display()));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "modules import modules above them: {offenders:#?}"
        );
    }
}
