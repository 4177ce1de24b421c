//! GEMM on the GPU: `C (batch, M, N) = α·op(A)·op(B) + β·C` with `op` the identity or the
//! transpose of each operand (`A·B`, `A·Bᵀ`, `Aᵀ·B`, `Aᵀ·Bᵀ`), batched, any sizes. The kernel
//! (`gemm.wgsl`) computes 128×128 tiles of C per workgroup from operand slices staged in
//! workgroup memory, 8×8 outputs per invocation.
//!
//! ```no_run
//! use tfm_rs::gpu::ops::gemm::{matmul, GemmShape};
//! let (a, b) = (vec![1.0f32; 6], vec![1.0f32; 12]);
//! let c = matmul(&a, &b, &GemmShape::new(2, 3, 4)).unwrap(); // (2, 3)·(3, 4)
//! assert_eq!(c, vec![3.0; 8]);
//! ```

use crate::ensure_shape;
use crate::error::Result;
use crate::gpu::buffer::{download, upload, GpuBuffer};
use crate::gpu::pipeline::{launch, shader, Arg};

const OP: &str = "gpu gemm";
shader!(GEMM, "gemm.wgsl");

/// Rows and columns of C per workgroup (`BM`, `BN` in the shader).
const TILE: usize = 128;

/// The sizes and layouts of one (batched) product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// A is stored (K, M) and used transposed.
    pub trans_a: bool,
    /// B is stored (N, K) and used transposed.
    pub trans_b: bool,
    /// Whether A (B) has one matrix per batch entry; `false` broadcasts one matrix to all.
    pub batched_a: bool,
    pub batched_b: bool,
}

impl GemmShape {
    /// One product `(m, k)·(k, n)`, no transposes.
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        GemmShape {
            batch: 1,
            m,
            k,
            n,
            trans_a: false,
            trans_b: false,
            batched_a: true,
            batched_b: true,
        }
    }

    fn len_a(&self) -> usize {
        self.m * self.k * if self.batched_a { self.batch } else { 1 }
    }
    fn len_b(&self) -> usize {
        self.k * self.n * if self.batched_b { self.batch } else { 1 }
    }
    fn len_c(&self) -> usize {
        self.batch * self.m * self.n
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    batch0: u32,
    _pad: u32,
}

/// Converts a size to the shaders' u32 indices, refusing what does not fit.
pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        crate::error::TfmError::value(
            op,
            format!("{what} = {v} exceeds the GPU's 32-bit indexing"),
        )
    })
}

/// `c ← α·op(a)·op(b) + β·c` on buffers: `a`, `b`, `c` hold `s`'s operands (see
/// [`GemmShape`]); with `β = 0`, `c` is not read.
pub fn gemm(
    c: &GpuBuffer,
    a: &GpuBuffer,
    b: &GpuBuffer,
    s: &GemmShape,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    ensure_shape!(
        a.len() == s.len_a() && b.len() == s.len_b() && c.len() == s.len_c(),
        OP,
        "buffers of {}, {}, {} values do not fit {s:?}",
        a.len(),
        b.len(),
        c.len()
    );
    if s.len_c() == 0 {
        return Ok(());
    }
    u32_of(OP, "the size of C", s.len_c())?;
    u32_of(OP, "the size of A", s.len_a())?;
    u32_of(OP, "the size of B", s.len_b())?;
    let groups_x = s.n.div_ceil(TILE) as u32;
    let groups_y = s.m.div_ceil(TILE) as u32;
    // Batches in chunks of at most 65 535 workgroups along z.
    let mut batch0 = 0;
    while batch0 < s.batch {
        let chunk = (s.batch - batch0).min(65_535);
        let params = Params {
            m: s.m as u32,
            n: s.n as u32,
            k: s.k as u32,
            trans_a: s.trans_a as u32,
            trans_b: s.trans_b as u32,
            stride_a: if s.batched_a { (s.m * s.k) as u32 } else { 0 },
            stride_b: if s.batched_b { (s.k * s.n) as u32 } else { 0 },
            stride_c: (s.m * s.n) as u32,
            alpha,
            beta,
            batch0: batch0 as u32,
            _pad: 0,
        };
        launch(
            OP,
            &GEMM,
            "gemm",
            &params,
            &[Arg::In(a), Arg::In(b), Arg::Out(c)],
            [groups_x, groups_y, chunk as u32],
        )?;
        batch0 += chunk;
    }
    Ok(())
}

/// `op(a)·op(b)` from host slices to a host vector (batch, M, N).
pub fn matmul(a: &[f32], b: &[f32], s: &GemmShape) -> Result<Vec<f32>> {
    let c = GpuBuffer::zeros(s.len_c())?;
    gemm(&c, &upload(a)?, &upload(b)?, s, 1.0, 0.0)?;
    download(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::{gemm_reference, MatRef};
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::test_support::rand_vec;

    fn check(s: GemmShape, seed: u64) {
        let a = rand_vec(seed, s.len_a(), -1.0, 1.0);
        let b = rand_vec(seed + 1, s.len_b(), -1.0, 1.0);
        let got = matmul(&a, &b, &s).unwrap();
        let mut want = vec![0.0f32; s.len_c()];
        for bi in 0..s.batch {
            let a0 = if s.batched_a { bi * s.m * s.k } else { 0 };
            let b0 = if s.batched_b { bi * s.k * s.n } else { 0 };
            let am = if s.trans_a {
                MatRef::row_major(&a[a0..a0 + s.m * s.k], s.k, s.m).t()
            } else {
                MatRef::row_major(&a[a0..a0 + s.m * s.k], s.m, s.k)
            };
            let bm = if s.trans_b {
                MatRef::row_major(&b[b0..b0 + s.k * s.n], s.n, s.k).t()
            } else {
                MatRef::row_major(&b[b0..b0 + s.k * s.n], s.k, s.n)
            };
            let c = &mut want[bi * s.m * s.n..(bi + 1) * s.m * s.n];
            gemm_reference(1.0, am, bm, 0.0, c, s.n, &Default::default());
        }
        assert_rel(&format!("{s:?}"), &got, &want, 1e-4);
    }

    #[test]
    fn gemm_matches_cpu_on_awkward_sizes_and_layouts() {
        if !require_gpu("gemm") {
            return;
        }
        let sizes = [
            (1, 1, 1),
            (3, 17, 5),
            (17, 3, 127),
            (127, 33, 1),
            (1, 127, 17),
            (130, 9, 129),
        ];
        for (i, &(m, k, n)) in sizes.iter().enumerate() {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let s = GemmShape {
                    trans_a: ta,
                    trans_b: tb,
                    ..GemmShape::new(m, k, n)
                };
                check(s, 10 * i as u64);
            }
        }
    }

    #[test]
    fn gemm_batched_and_broadcast() {
        if !require_gpu("gemm") {
            return;
        }
        for (batched_a, batched_b) in [(true, true), (true, false), (false, true)] {
            let s = GemmShape {
                batch: 3,
                batched_a,
                batched_b,
                trans_b: batched_a,
                ..GemmShape::new(17, 20, 9)
            };
            check(s, 7);
        }
    }

    #[test]
    fn gemm_alpha_beta_accumulate_and_reject_bad_lengths() {
        if !require_gpu("gemm") {
            return;
        }
        let s = GemmShape::new(3, 2, 2);
        let (a, b) = (vec![1.0f32; 6], vec![1.0f32; 4]);
        let c = upload(&[1.0; 6]).unwrap();
        gemm(&c, &upload(&a).unwrap(), &upload(&b).unwrap(), &s, 0.5, 2.0).unwrap();
        assert_eq!(download(&c).unwrap(), vec![3.0; 6]);
        let err = gemm(
            &c,
            &upload(&a[..5]).unwrap(),
            &upload(&b).unwrap(),
            &s,
            1.0,
            0.0,
        );
        assert_eq!(err.unwrap_err().kind, crate::error::ErrorKind::Shape);
    }
}
