//! tfm_rs: the Transformer of "Attention Is All You Need" on a Rust core.
//!
//! Modules, from the bottom of the import order up:
//!
//! - [`error`]: the one error type, [`TfmError`].
//! - [`desc`]: device-neutral op descriptors (op kinds, loss, optimizer and attention
//!   configurations) that the CPU kernels, the GPU kernels and the ops all name.
//! - [`shape`]: shape arithmetic (element counts, strides, broadcasting) for both backends.
//! - [`cpu`]: instruction-set detection, the packed SIMD GEMM, the thread pool.
//! - `gpu` (feature `wgpu`): the same ops as WGSL compute shaders through wgpu, as
//!   buffer-level kernels (and tensor-level helpers the ops call for GPU values); it imports
//!   neither `ops` nor `autograd` (checked by a test at the end of this file).
//! - [`tensor`]: f32 values with a shape, on the host or the GPU.
//! - [`random`]: counter-based random numbers (dropout masks independent of thread count).
//! - [`autograd`]: `Var`, the graph, and the backward pass.
//! - [`ops`]: one file per op: its CPU kernels, its reference and tests, the differentiable
//!   function and its one `Backward`, dispatching GPU values to `gpu`.
//! - [`optim`]: Adam/AdamW and SGD updates, matching `torch.optim` step for step, on either
//!   device.
//! - [`decode`]: greedy, beam and sampling search with a key/value cache.
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
//! assert_eq!(x.grad().unwrap().data(), &[2.0, -4.0, 6.0]);
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

    /// `rust/gpu` is a backend below the ops and the autograd (`CONTRIBUTING.md`): it imports
    /// neither, so the arrows run ops → gpu only.
    #[test]
    fn gpu_imports_neither_ops_nor_autograd() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rust/gpu");
        let mut files = Vec::new();
        sources(&root, &mut files);
        assert!(files.len() > 5, "found only {files:?} under {root:?}");
        let mut offenders = Vec::new();
        for file in files {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("readable source");
            for head in crate_paths(&code(&text)) {
                if ["ops", "autograd"]
                    .iter()
                    .any(|m| head == *m || head.starts_with(&format!("{m}::")))
                {
                    offenders.push(format!("{}: crate::{head:.40}", file.display()));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "rust/gpu imports the ops or the autograd: {offenders:#?}"
        );
    }
}
