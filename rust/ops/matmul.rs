//! `matmul` with `torch.matmul` semantics: 1-D operands are promoted (and the added dimension
//! removed), leading batch dimensions broadcast. Forward: `(…, m, k) · (…, k, n) → (…, m, n)`.
//! Backward: `dA = G·Bᵀ`, `dB = Aᵀ·G`, summed over batch dimensions the operand was broadcast
//! along. Saves both operands (shared storage, no copy).

use super::autocast::{check_device, Precision};
use super::broadcast::sum_to;
use crate::autograd::{Backward, Var};
use crate::cpu::gemm::{Epilogue, MatRef, PARALLEL_MIN_MACS};
use crate::cpu::gemm_bf16::gemm_as;
use crate::cpu::pool;
use crate::error::{Result, TfmError};
use crate::tensor::{
    broadcast_shapes, contiguous_strides, numel, shape_str, Device, Placed, Tensor,
};
use rayon::prelude::*;

/// One operand of a batched product: a stack of row-major matrices, read transposed if `trans`,
/// whose batch dimensions broadcast against the output's.
struct Operand<'a> {
    data: &'a [f32],
    batch_shape: &'a [usize],
    rows: usize,
    cols: usize,
    trans: bool,
}

impl Operand<'_> {
    /// Matrix `b` of the output batch (flat index over `out_batch`).
    fn matrix(&self, b: usize, out_batch: &[usize]) -> MatRef<'_> {
        let strides = contiguous_strides(self.batch_shape);
        let offset = out_batch.len() - self.batch_shape.len();
        let (mut rem, mut index) = (b, 0);
        for d in (0..out_batch.len()).rev() {
            let i = rem % out_batch[d];
            rem /= out_batch[d];
            if d >= offset && self.batch_shape[d - offset] != 1 {
                index += i * strides[d - offset];
            }
        }
        let size = self.rows * self.cols;
        let m = MatRef::row_major(
            &self.data[index * size..(index + 1) * size],
            self.rows,
            self.cols,
        );
        if self.trans {
            m.t()
        } else {
            m
        }
    }
}

/// `out[b] = op(A[b]) · op(B[b])` for every `b` in `out_batch`; `m × n` per product.
fn batched_product(
    out_batch: &[usize],
    a: &Operand,
    b: &Operand,
    (m, n): (usize, usize),
    precision: Precision,
) -> Vec<f32> {
    let count = numel(out_batch);
    let mut out = crate::cpu::alloc::output(count * m * n);
    if m * n == 0 {
        return out;
    }
    let one = |(i, c): (usize, &mut [f32])| {
        gemm_as(
            precision,
            1.0,
            a.matrix(i, out_batch),
            b.matrix(i, out_batch),
            0.0,
            c,
            n,
            &Epilogue::default(),
            count == 1,
        );
    };
    // Products are spread over the threads only when together they are as large as one product
    // worth splitting.
    let split = count > 1
        && count * m * n * a.matrix(0, out_batch).cols >= PARALLEL_MIN_MACS
        && pool::threads() > 1;
    if split {
        pool::parallel(|| out.par_chunks_mut(m * n).enumerate().for_each(one));
    } else {
        out.chunks_mut(m * n).enumerate().for_each(one);
    }
    out
}

/// Shapes after 1-D promotion: (batch, m, k) for `a`, (batch, k, n) for `b`.
pub(crate) struct Plan {
    pub a_batch: Vec<usize>,
    pub b_batch: Vec<usize>,
    pub out_batch: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub out_shape: Vec<usize>,
}

pub(crate) fn plan(a: &[usize], b: &[usize]) -> Result<Plan> {
    if a.is_empty() || b.is_empty() {
        return Err(TfmError::shape(
            "matmul",
            format!(
                "both operands need at least one dimension, got {} and {}",
                shape_str(a),
                shape_str(b)
            ),
        ));
    }
    let (m, k) = if a.len() == 1 {
        (1, a[0])
    } else {
        (a[a.len() - 2], a[a.len() - 1])
    };
    let (k2, n) = if b.len() == 1 {
        (b[0], 1)
    } else {
        (b[b.len() - 2], b[b.len() - 1])
    };
    if k != k2 {
        return Err(TfmError::shape(
            "matmul",
            format!(
                "shapes {} and {} cannot be multiplied ({k} ≠ {k2})",
                shape_str(a),
                shape_str(b)
            ),
        ));
    }
    let a_batch = a[..a.len().saturating_sub(2)].to_vec();
    let b_batch = b[..b.len().saturating_sub(2)].to_vec();
    let out_batch = broadcast_shapes("matmul", &a_batch, &b_batch)?;
    let mut out_shape = out_batch.clone();
    if a.len() > 1 {
        out_shape.push(m);
    }
    if b.len() > 1 {
        out_shape.push(n);
    }
    Ok(Plan {
        a_batch,
        b_batch,
        out_batch,
        m,
        k,
        n,
        out_shape,
    })
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
    precision: Precision,
}

impl Backward for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let p = plan(self.a.shape(), self.b.shape())?;
        let (g, a, b) = match Tensor::place("matmul", [g, &self.a, &self.b])? {
            Placed::Cpu([g, a, b]) => (g, a, b),
            #[cfg(feature = "wgpu")]
            Placed::Gpu(_) => {
                return gpu::backward(g, &self.a, &self.b, &p)
                    .map(|(ga, gb)| vec![Some(ga), Some(gb)])
            }
        };
        let (m, k, n) = (p.m, p.k, p.n);
        let go = Operand {
            data: g.data(),
            batch_shape: &p.out_batch,
            rows: m,
            cols: n,
            trans: false,
        };
        // dA (out_batch, m, k) = G · Bᵀ, then summed over the batch dims A was broadcast along.
        let bt = Operand {
            data: b.data(),
            batch_shape: &p.b_batch,
            rows: k,
            cols: n,
            trans: true,
        };
        let ga = batched_product(&p.out_batch, &go, &bt, (m, k), self.precision);
        let ga_shape: Vec<usize> = p.out_batch.iter().copied().chain([m, k]).collect();
        let ga = sum_to(
            &Tensor::new(ga, &ga_shape)?,
            &[&p.a_batch[..], &[m, k]].concat(),
        )?
        .reshape(a.shape())?;
        // dB (out_batch, k, n) = Aᵀ · G.
        let at = Operand {
            data: a.data(),
            batch_shape: &p.a_batch,
            rows: m,
            cols: k,
            trans: true,
        };
        let gb = batched_product(&p.out_batch, &at, &go, (k, n), self.precision);
        let gb_shape: Vec<usize> = p.out_batch.iter().copied().chain([k, n]).collect();
        let gb = sum_to(
            &Tensor::new(gb, &gb_shape)?,
            &[&p.b_batch[..], &[k, n]].concat(),
        )?
        .reshape(b.shape())?;
        Ok(vec![Some(ga), Some(gb)])
    }
}

/// Forward kernel on tensors, on the operands' device.
pub fn matmul_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_forward_as(a, b, Precision::F32)
}

/// [`matmul_forward`] at `precision`.
pub fn matmul_forward_as(a: &Tensor, b: &Tensor, precision: Precision) -> Result<Tensor> {
    let p = plan(a.shape(), b.shape())?;
    let device = Device::common("matmul", [a.device(), b.device()])?;
    check_device("matmul", precision, device)?;
    let (a, b) = match Tensor::place("matmul", [a, b])? {
        Placed::Cpu([a, b]) => (a, b),
        #[cfg(feature = "wgpu")]
        Placed::Gpu(_) => return gpu::forward(a, b, &p),
    };
    let (m, k, n) = (p.m, p.k, p.n);
    let out = if p.b_batch.is_empty() {
        // (…, m, k) · (k, n): one large product over all rows of A, threaded inside the GEMM.
        let rows = numel(&p.a_batch) * m;
        let mut out = crate::cpu::alloc::output(rows * n);
        if rows * n > 0 {
            let bm = MatRef::row_major(b.data(), k, n);
            gemm_as(
                precision,
                1.0,
                MatRef::row_major(a.data(), rows, k),
                bm,
                0.0,
                &mut out,
                n,
                &Epilogue::default(),
                true,
            );
        }
        out
    } else {
        let ao = Operand {
            data: a.data(),
            batch_shape: &p.a_batch,
            rows: m,
            cols: k,
            trans: false,
        };
        let bo = Operand {
            data: b.data(),
            batch_shape: &p.b_batch,
            rows: k,
            cols: n,
            trans: false,
        };
        batched_product(&p.out_batch, &ao, &bo, (m, n), precision)
    };
    Tensor::new(out, &p.out_shape)
}

pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    matmul_with(a, b, Precision::F32)
}

/// [`matmul`] with its forward and backward products at `precision`.
pub fn matmul_with(a: &Var, b: &Var, precision: Precision) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = matmul_forward_as(&av, &bv, precision)?;
    Ok(Var::from_op(
        out,
        vec![a.clone(), b.clone()],
        MatmulBackward {
            a: av,
            b: bv,
            precision,
        },
    ))
}

/// The GPU wiring: one batched GEMM on GPU buffers ([`crate::gpu::ops::gemm`]) for the forward
/// and one per operand for the backward. An operand without batch dimensions is shared by every
/// product of the batch; one whose batch dimensions broadcast is first expanded
/// ([`broadcast_to`](crate::ops::broadcast::broadcast_to)), and its gradient summed back
/// ([`sum_to`]).
#[cfg(feature = "wgpu")]
pub(super) mod gpu {
    use super::{sum_to, Plan};
    use crate::error::Result;
    use crate::gpu::ops::gemm::{gemm, GemmShape};
    use crate::ops::broadcast::broadcast_to;
    use crate::tensor::{numel, Tensor};

    const OP: &str = "matmul";

    /// `c ← a·b + β·c` by the GPU GEMM on tensors that GPU code composed (linear's and matmul's
    /// paths); a `Device` error naming `op` for a host tensor.
    pub(in crate::ops) fn gemm_tensors(
        op: &'static str,
        [c, a, b]: [&Tensor; 3],
        s: &GemmShape,
        beta: f32,
    ) -> Result<()> {
        gemm(
            c.gpu(op)?.buffer(),
            a.gpu(op)?.buffer(),
            b.gpu(op)?.buffer(),
            s,
            1.0,
            beta,
        )
    }

    /// `x` as a stack `(batch…, rows, cols)` expanded to `out_batch`, and whether it has one matrix
    /// per product (`false`: no batch dimensions, one matrix shared by all).
    fn operand(
        x: &Tensor,
        batch: &[usize],
        out_batch: &[usize],
        rows: usize,
        cols: usize,
    ) -> Result<(Tensor, bool)> {
        if batch.is_empty() {
            return Ok((x.reshape(&[rows, cols])?, false));
        }
        let x = x.reshape(&[batch, &[rows, cols]].concat())?;
        Ok((
            broadcast_to(OP, &x, &[out_batch, &[rows, cols]].concat())?,
            true,
        ))
    }

    /// `a · b` for the plan `p` of their shapes.
    pub(super) fn forward(a: &Tensor, b: &Tensor, p: &Plan) -> Result<Tensor> {
        let batch = numel(&p.out_batch);
        let out = Tensor::gpu_zeros(&p.out_shape)?;
        let (a, batched_a) = operand(a, &p.a_batch, &p.out_batch, p.m, p.k)?;
        let (b, batched_b) = operand(b, &p.b_batch, &p.out_batch, p.k, p.n)?;
        // Without batch dimensions on b, all rows of a form one product.
        let s = if batched_b {
            GemmShape {
                batch,
                batched_a,
                batched_b,
                ..GemmShape::new(p.m, p.k, p.n)
            }
        } else {
            GemmShape::new(batch * p.m, p.k, p.n)
        };
        gemm_tensors(OP, [&out, &a, &b], &s, 0.0)?;
        Ok(out)
    }

    /// `(dA, dB)` from the output gradient `g`: `dA = G·Bᵀ`, `dB = Aᵀ·G`, each summed over the
    /// batch dimensions its operand was broadcast along.
    pub(super) fn backward(
        g: &Tensor,
        a: &Tensor,
        b: &Tensor,
        p: &Plan,
    ) -> Result<(Tensor, Tensor)> {
        let batch = numel(&p.out_batch);
        let (m, k, n) = (p.m, p.k, p.n);
        let (av, batched_a) = operand(a, &p.a_batch, &p.out_batch, m, k)?;
        let (bv, batched_b) = operand(b, &p.b_batch, &p.out_batch, k, n)?;
        let full = |rows, cols| Tensor::gpu_zeros(&[&p.out_batch[..], &[rows, cols]].concat());
        // dA (out_batch, m, k) = G (out_batch, m, n) · Bᵀ.
        let ga = full(m, k)?;
        let s = GemmShape {
            batch,
            trans_b: true,
            batched_b,
            ..GemmShape::new(m, n, k)
        };
        gemm_tensors(OP, [&ga, g, &bv], &s, 0.0)?;
        let ga = sum_to(&ga, &[&p.a_batch[..], &[m, k]].concat())?.reshape(a.shape())?;
        // dB (out_batch, k, n) = Aᵀ · G; for a shared b, one product over all rows.
        let gb = if batched_b {
            let gb = full(k, n)?;
            let s = GemmShape {
                batch,
                trans_a: true,
                batched_a,
                ..GemmShape::new(k, m, n)
            };
            gemm_tensors(OP, [&gb, &av, g], &s, 0.0)?;
            sum_to(&gb, &[&p.b_batch[..], &[k, n]].concat())?
        } else {
            let gb = Tensor::gpu_zeros(&[k, n])?;
            let s = GemmShape {
                trans_a: true,
                ..GemmShape::new(k, batch * m, n)
            };
            gemm_tensors(OP, [&gb, &av, g], &s, 0.0)?;
            gb
        };
        Ok((ga, gb.reshape(b.shape())?))
    }
}
