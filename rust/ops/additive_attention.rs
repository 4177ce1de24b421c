//! The scores of additive (Bahdanau) attention, `s[b, i, j] = Σ_h v_h · tanh(q[b, i, h] +
//! k[b, j, h])`, from the projected queries q (B, Tq, H) and keys k (B, Tk, H) and the vector
//! v (H,) → (B, Tq, Tk). The projections `W·query` and `U·key` before it are ordinary linear
//! layers, and the masked softmax and the weighted sum of the values after it ordinary ops.
//!
//! The (B, Tq, Tk, H) tensor of `tanh` values is never stored: the forward loops over (i, j)
//! with the H-vectors in cache, and the backward recomputes each `tanh` — once per row of
//! queries for dq and dv, once per row of keys for dk, so that every output row belongs to one
//! thread and sums run in a fixed order (results do not depend on the thread count):
//!
//! ```text
//! dq[b, i] = Σ_j g[b, i, j] · v ∘ (1 − t²),  dk[b, j] = Σ_i g[b, i, j] · v ∘ (1 − t²),
//! dv = Σ_{b, i, j} g[b, i, j] · t,           t = tanh(q[b, i] + k[b, j])
//! ```

use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::ops::rows::{for_each_row, lane_sum, rows_mut, tanh_fast};
use crate::tensor::{shape_str, Device, Tensor};

const OP: &str = "additive_attention";

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
}

fn check(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    let dev = Device::common(OP, [q.device(), k.device(), v.device()])?;
    if dev != Device::Cpu {
        return Err(TfmError::device(
            OP,
            "additive attention has no GPU kernel; run it on the CPU",
        ));
    }
    let fits = q.ndim() == 3
        && k.ndim() == 3
        && q.shape()[0] == k.shape()[0]
        && q.shape()[2] == k.shape()[2]
        && v.shape() == [q.shape()[2]];
    crate::ensure_shape!(
        fits,
        OP,
        "projected query {}, key {} and v {} do not fit (expected (B, Tq, H), (B, Tk, H) and (H,))",
        shape_str(q.shape()),
        shape_str(k.shape()),
        shape_str(v.shape())
    );
    Ok(Dims {
        b: q.shape()[0],
        tq: q.shape()[1],
        tk: k.shape()[1],
        h: q.shape()[2],
    })
}

simd_kernel! {
    /// Scores of one query row against `keys` (Tk rows of h): `out[j] = Σ v ∘ tanh(q + k_j)`.
    fn score_row(q: &[f32], keys: &[f32], v: &[f32], out: &mut [f32], buf: &mut [f32]) {
        let h = q.len();
        for (j, o) in out.iter_mut().enumerate() {
            let k = &keys[j * h..][..h];
            for c in 0..h {
                buf[c] = v[c] * tanh_fast(q[c] + k[c]);
            }
            *o = lane_sum(buf) as f32;
        }
    }
}

simd_kernel! {
    /// The gradient of one row `a` (h) from the rows `others` it met (n rows of h) with
    /// weights `g` (n): `da = Σ_j g_j · v ∘ (1 − t_j²)`; with `dv` given, also
    /// `dv += Σ_j g_j · t_j` (each sum in j order).
    fn grad_row(a: &[f32], others: &[f32], stride: usize, g: &[f32], v: &[f32], da: &mut [f32], dv: &mut [f32]) {
        let h = a.len();
        let with_dv = !dv.is_empty();
        for (j, &gj) in g.iter().enumerate() {
            let o = &others[j * stride..][..h];
            for c in 0..h {
                let t = tanh_fast(a[c] + o[c]);
                da[c] += gj * v[c] * (1.0 - t * t);
                if with_dv {
                    dv[c] += gj * t;
                }
            }
        }
    }
}

/// Forward kernel: the (B, Tq, Tk) scores.
fn forward_kernel(d: Dims, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let Dims { b, tq, tk, h } = d;
    let mut s = crate::cpu::alloc::output(b * tq * tk);
    for_each_row(rows_mut(&mut s, b * tq, tk), tk * h, |row, out| {
        let keys = &k[row / tq.max(1) * tk * h..][..tk * h];
        let mut buf = vec![0.0f32; h];
        score_row(&q[row * h..][..h], keys, v, out, &mut buf);
    });
    s
}

/// Backward kernel: (dq, dk, dv) from the scores' gradient `g` (B, Tq, Tk).
fn backward_kernel(d: Dims, g: &[f32], q: &[f32], k: &[f32], v: &[f32]) -> [Vec<f32>; 3] {
    let Dims { b, tq, tk, h } = d;
    let mut dq = crate::cpu::alloc::zeros(b * tq * h);
    let mut dv_rows = crate::cpu::alloc::zeros(b * tq * h);
    let items: Vec<_> = rows_mut(&mut dq, b * tq, h)
        .into_iter()
        .zip(rows_mut(&mut dv_rows, b * tq, h))
        .collect();
    for_each_row(items, tk * h, |row, (dqr, dvr)| {
        let keys = &k[row / tq * tk * h..][..tk * h];
        grad_row(
            &q[row * h..][..h],
            keys,
            h,
            &g[row * tk..][..tk],
            v,
            dqr,
            dvr,
        );
    });
    let mut dk = crate::cpu::alloc::zeros(b * tk * h);
    for_each_row(rows_mut(&mut dk, b * tk, h), tq * h, |row, dkr| {
        let (bi, j) = (row / tk, row % tk);
        // g[b, :, j] as a column: gather it, and the queries of sample b.
        let gcol: Vec<f32> = (0..tq).map(|i| g[(bi * tq + i) * tk + j]).collect();
        let queries = &q[bi * tq * h..][..tq * h];
        grad_row(&k[row * h..][..h], queries, h, &gcol, v, dkr, &mut []);
    });
    let mut dv = vec![0.0f32; h];
    for r in dv_rows.chunks_exact(h.max(1)).take(b * tq) {
        for (a, &x) in dv.iter_mut().zip(r) {
            *a += x;
        }
    }
    crate::cpu::alloc::recycle(dv_rows);
    [dq, dk, dv]
}

struct AdditiveBackward {
    d: Dims,
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl Backward for AdditiveBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let [dq, dk, dv] = backward_kernel(
            self.d,
            g.cpu(OP)?.data(),
            self.q.cpu(OP)?.data(),
            self.k.cpu(OP)?.data(),
            self.v.cpu(OP)?.data(),
        );
        Ok(vec![
            Some(Tensor::new(dq, self.q.shape())?),
            Some(Tensor::new(dk, self.k.shape())?),
            Some(Tensor::new(dv, self.v.shape())?),
        ])
    }
}

/// The additive-attention scores on `Var`s: q (B, Tq, H), k (B, Tk, H), v (H,) → (B, Tq, Tk).
pub fn additive_scores(q: &Var, k: &Var, v: &Var) -> Result<Var> {
    let (qv, kv, vv) = (q.value(), k.value(), v.value());
    let d = check(&qv, &kv, &vv)?;
    let s = forward_kernel(
        d,
        qv.cpu(OP)?.data(),
        kv.cpu(OP)?.data(),
        vv.cpu(OP)?.data(),
    );
    let s = Tensor::new(s, &[d.b, d.tq, d.tk])?;
    Ok(Var::from_op(
        s,
        vec![q.clone(), k.clone(), v.clone()],
        AdditiveBackward {
            d,
            q: qv,
            k: kv,
            v: vv,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::*;

    /// The scores by the naive (b, i, j, h) loop in f64.
    fn reference(d: Dims, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
        let Dims { b, tq, tk, h } = d;
        let mut s = vec![0.0; b * tq * tk];
        for bi in 0..b {
            for i in 0..tq {
                for j in 0..tk {
                    s[(bi * tq + i) * tk + j] = (0..h)
                        .map(|c| {
                            v[c] * (q[(bi * tq + i) * h + c] + k[(bi * tk + j) * h + c]).tanh()
                        })
                        .sum();
                }
            }
        }
        s
    }

    fn shapes(d: Dims) -> [Vec<usize>; 3] {
        [vec![d.b, d.tq, d.h], vec![d.b, d.tk, d.h], vec![d.h]]
    }

    #[test]
    fn forward_and_backward_match_f64_references() {
        let dims = [(1, 1, 1, 1), (2, 3, 17, 5), (3, 17, 3, 33), (1, 2, 127, 17)];
        for (n, &(b, tq, tk, h)) in dims.iter().enumerate() {
            let d = Dims { b, tq, tk, h };
            let data: Vec<Vec<f32>> = shapes(d)
                .iter()
                .enumerate()
                .map(|(a, s)| rand_vec((10 * n + a) as u64, s.iter().product(), -1.5, 1.5))
                .collect();
            let vars: Vec<Var> = data
                .iter()
                .zip(shapes(d))
                .map(|(x, s)| leaf(x.clone(), &s))
                .collect();
            let y = additive_scores(&vars[0], &vars[1], &vars[2]).unwrap();
            let p: Vec<Vec<f64>> = data.iter().map(|x| to_f64(x)).collect();
            let want = reference(d, &p[0], &p[1], &p[2]);
            assert_close(&format!("case {n}"), y.value().data(), &want, 1e-5, 1e-5);
            let w = rand_vec(99, want.len(), -1.0, 1.0);
            let got = grads(&y, &w, &vars.iter().collect::<Vec<_>>());
            let w64 = to_f64(&w);
            for a in 0..3 {
                let fd = finite_diff(&p[a], 1e-6, |x| {
                    let mut pp = p.clone();
                    pp[a] = x.to_vec();
                    dot(&w64, &reference(d, &pp[0], &pp[1], &pp[2]))
                });
                assert_close(&format!("case {n} input {a}"), &got[a], &fd, 1e-4, 1e-4);
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let d = Dims {
            b: 3,
            tq: 40,
            tk: 37,
            h: 64,
        };
        let data: Vec<Vec<f32>> = shapes(d)
            .iter()
            .enumerate()
            .map(|(a, s)| rand_vec(a as u64, s.iter().product(), -1.0, 1.0))
            .collect();
        let run = || {
            let vars: Vec<Var> = data
                .iter()
                .zip(shapes(d))
                .map(|(x, s)| leaf(x.clone(), &s))
                .collect();
            let y = additive_scores(&vars[0], &vars[1], &vars[2]).unwrap();
            let w = rand_vec(5, y.value().numel(), -1.0, 1.0);
            let mut out = vec![y.value().data().to_vec()];
            out.extend(grads(&y, &w, &vars.iter().collect::<Vec<_>>()));
            out
        };
        assert_eq!(with_threads(1, run), with_threads(2, run));
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let q = leaf(vec![0.0; 6], &[1, 2, 3]);
        let k = leaf(vec![0.0; 8], &[1, 2, 4]);
        let v = leaf(vec![0.0; 3], &[3]);
        assert!(additive_scores(&q, &k, &v).is_err());
        assert!(additive_scores(&q, &q, &k).is_err());
    }
}
