//! 1-D convolution (cross-correlation, as PyTorch's `conv1d`) with stride, zero padding (left
//! and right apart, so causal padding is `(dilation·(K − 1), 0)`), dilation and groups:
//! x (N, C_in, L), W (C_out, C_in / groups, K), b (C_out,) → (N, C_out, L_out) with
//! `L_out = (L + pad_l + pad_r − dilation·(K − 1) − 1) / stride + 1`.
//!
//! im2col + GEMM: for each sample and group the input windows are unfolded into a
//! `(C_in/groups · K, L_out)` matrix, and `y = W_g · cols`. The backward unfolds again (rather
//! than keeping every sample's columns): `dW_g += G_g · colsᵀ`, `dcols = W_gᵀ · G_g` folded back
//! into dx, `db = Σ G`.

use crate::autograd::{Backward, Var};
use crate::cpu::gemm::{gemm, Epilogue, MatRef};
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Device, Tensor};

const OP: &str = "conv1d";

/// Stride, (left, right) zero padding, dilation and groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dConfig {
    pub stride: usize,
    pub padding: (usize, usize),
    pub dilation: usize,
    pub groups: usize,
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c_in: usize,
    l: usize,
    c_out: usize,
    k: usize,
    l_out: usize,
}

impl Dims {
    /// Input channels per group.
    fn cg(&self, cfg: &Conv1dConfig) -> usize {
        self.c_in / cfg.groups
    }
    /// Output channels per group.
    fn og(&self, cfg: &Conv1dConfig) -> usize {
        self.c_out / cfg.groups
    }
}

fn check(x: &Tensor, w: &Tensor, b: Option<&Tensor>, cfg: &Conv1dConfig) -> Result<Dims> {
    let dev = Device::common(
        OP,
        [Some(x), Some(w), b]
            .into_iter()
            .flatten()
            .map(Tensor::device),
    )?;
    if dev != Device::Cpu {
        return Err(TfmError::device(
            OP,
            "conv1d has no GPU kernel; run it on the CPU",
        ));
    }
    crate::ensure_value!(
        cfg.stride > 0 && cfg.dilation > 0 && cfg.groups > 0,
        OP,
        "stride, dilation and groups must be positive, got {cfg:?}"
    );
    crate::ensure_shape!(
        x.ndim() == 3 && w.ndim() == 3,
        OP,
        "input {} and weight {} must be (N, C_in, L) and (C_out, C_in / groups, K)",
        shape_str(x.shape()),
        shape_str(w.shape())
    );
    let (n, c_in, l) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let (c_out, cg, k) = (w.shape()[0], w.shape()[1], w.shape()[2]);
    let g = cfg.groups;
    crate::ensure_value!(
        c_in % g == 0 && c_out % g == 0,
        OP,
        "in_channels ({c_in}) and out_channels ({c_out}) must be divisible by groups ({g})"
    );
    crate::ensure_shape!(
        cg == c_in / g && k > 0,
        OP,
        "weight {} does not fit input {} with groups={g} (expected ({c_out}, {}, K ≥ 1))",
        shape_str(w.shape()),
        shape_str(x.shape()),
        c_in / g
    );
    if let Some(b) = b {
        crate::ensure_shape!(
            b.shape() == [c_out],
            OP,
            "bias must be ({c_out},), got {}",
            shape_str(b.shape())
        );
    }
    let span = cfg.dilation * (k - 1) + 1;
    let padded = l + cfg.padding.0 + cfg.padding.1;
    crate::ensure_shape!(
        padded >= span,
        OP,
        "input length {l} (padded {padded}) is shorter than the kernel's span {span}"
    );
    Ok(Dims {
        n,
        c_in,
        l,
        c_out,
        k,
        l_out: (padded - span) / cfg.stride + 1,
    })
}

/// The input position window `o`, tap `t` reads, if inside the (unpadded) input.
#[inline]
fn source(o: usize, t: usize, d: &Dims, cfg: &Conv1dConfig) -> Option<usize> {
    (o * cfg.stride + t * cfg.dilation)
        .checked_sub(cfg.padding.0)
        .filter(|&p| p < d.l)
}

/// Unfolds group `g` of sample `xs` (C_in, L) into `cols` (C_g·K, L_out).
fn im2col(xs: &[f32], g: usize, d: &Dims, cfg: &Conv1dConfig, cols: &mut [f32]) {
    let cg = d.cg(cfg);
    for c in 0..cg {
        let row_in = &xs[(g * cg + c) * d.l..][..d.l];
        for t in 0..d.k {
            let out = &mut cols[(c * d.k + t) * d.l_out..][..d.l_out];
            for (o, v) in out.iter_mut().enumerate() {
                *v = source(o, t, d, cfg).map_or(0.0, |p| row_in[p]);
            }
        }
    }
}

/// Adds `cols` (C_g·K, L_out) back into group `g` of `dxs` (C_in, L): the adjoint of [`im2col`].
fn col2im(cols: &[f32], g: usize, d: &Dims, cfg: &Conv1dConfig, dxs: &mut [f32]) {
    let cg = d.cg(cfg);
    for c in 0..cg {
        let row = &mut dxs[(g * cg + c) * d.l..][..d.l];
        for t in 0..d.k {
            let src = &cols[(c * d.k + t) * d.l_out..][..d.l_out];
            for (o, &v) in src.iter().enumerate() {
                if let Some(p) = source(o, t, d, cfg) {
                    row[p] += v;
                }
            }
        }
    }
}

fn forward_kernel(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    d: &Dims,
    cfg: &Conv1dConfig,
) -> Vec<f32> {
    let (cg, og) = (d.cg(cfg), d.og(cfg));
    let ck = cg * d.k;
    let mut y = crate::cpu::alloc::output(d.n * d.c_out * d.l_out);
    let mut cols = vec![0.0f32; ck * d.l_out];
    for s in 0..d.n {
        let xs = &x[s * d.c_in * d.l..][..d.c_in * d.l];
        for g in 0..cfg.groups {
            im2col(xs, g, d, cfg, &mut cols);
            let c = &mut y[(s * d.c_out + g * og) * d.l_out..][..og * d.l_out];
            gemm(
                1.0,
                MatRef::row_major(&w[g * og * ck..][..og * ck], og, ck),
                MatRef::row_major(&cols, ck, d.l_out),
                0.0,
                c,
                d.l_out,
                &Epilogue::default(),
                true,
            );
            if let Some(b) = b {
                for (row, &bv) in c.chunks_exact_mut(d.l_out).zip(&b[g * og..][..og]) {
                    row.iter_mut().for_each(|v| *v += bv);
                }
            }
        }
    }
    y
}

/// (dx, dW, db) from the output gradient `gy` (N, C_out, L_out).
fn backward_kernel(
    gy: &[f32],
    x: &[f32],
    w: &[f32],
    d: &Dims,
    cfg: &Conv1dConfig,
) -> [Vec<f32>; 3] {
    let (cg, og) = (d.cg(cfg), d.og(cfg));
    let ck = cg * d.k;
    let mut dx = crate::cpu::alloc::zeros(d.n * d.c_in * d.l);
    let mut dw = crate::cpu::alloc::zeros(d.c_out * ck);
    let mut db = vec![0.0f32; d.c_out];
    let mut cols = vec![0.0f32; ck * d.l_out];
    let mut dcols = vec![0.0f32; ck * d.l_out];
    for s in 0..d.n {
        let xs = &x[s * d.c_in * d.l..][..d.c_in * d.l];
        for g in 0..cfg.groups {
            let gg = &gy[(s * d.c_out + g * og) * d.l_out..][..og * d.l_out];
            let gm = MatRef::row_major(gg, og, d.l_out);
            im2col(xs, g, d, cfg, &mut cols);
            gemm(
                1.0,
                gm,
                MatRef::row_major(&cols, ck, d.l_out).t(),
                1.0,
                &mut dw[g * og * ck..][..og * ck],
                ck,
                &Epilogue::default(),
                true,
            );
            gemm(
                1.0,
                MatRef::row_major(&w[g * og * ck..][..og * ck], og, ck).t(),
                gm,
                0.0,
                &mut dcols,
                d.l_out,
                &Epilogue::default(),
                true,
            );
            col2im(
                &dcols,
                g,
                d,
                cfg,
                &mut dx[s * d.c_in * d.l..][..d.c_in * d.l],
            );
            for (o, row) in gg.chunks_exact(d.l_out.max(1)).enumerate().take(og) {
                db[g * og + o] += row.iter().sum::<f32>();
            }
        }
    }
    [dx, dw, db]
}

struct Conv1dBackward {
    d: Dims,
    cfg: Conv1dConfig,
    x: Tensor,
    w: Tensor,
    has_bias: bool,
}

impl Backward for Conv1dBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let [dx, dw, db] = backward_kernel(
            g.cpu(OP)?.data(),
            self.x.cpu(OP)?.data(),
            self.w.cpu(OP)?.data(),
            &self.d,
            &self.cfg,
        );
        let mut grads = vec![
            Some(Tensor::new(dx, self.x.shape())?),
            Some(Tensor::new(dw, self.w.shape())?),
        ];
        if self.has_bias {
            grads.push(Some(Tensor::new(db, &[self.d.c_out])?));
        }
        Ok(grads)
    }
}

/// The convolution on `Var`s: x (N, C_in, L), W (C_out, C_in / groups, K), b (C_out,).
pub fn conv1d(x: &Var, w: &Var, b: Option<&Var>, cfg: &Conv1dConfig) -> Result<Var> {
    let (xv, wv, bv) = (x.value(), w.value(), b.map(Var::value));
    let d = check(&xv, &wv, bv.as_ref(), cfg)?;
    let y = forward_kernel(
        xv.cpu(OP)?.data(),
        wv.cpu(OP)?.data(),
        Tensor::cpu_opt(OP, bv.as_ref())?,
        &d,
        cfg,
    );
    let y = Tensor::new(y, &[d.n, d.c_out, d.l_out])?;
    let mut inputs = vec![x.clone(), w.clone()];
    inputs.extend(b.cloned());
    Ok(Var::from_op(
        y,
        inputs,
        Conv1dBackward {
            d,
            cfg: *cfg,
            x: xv,
            w: wv,
            has_bias: b.is_some(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::*;

    /// The direct convolution in f64.
    fn reference(x: &[f64], w: &[f64], b: &[f64], d: &Dims, cfg: &Conv1dConfig) -> Vec<f64> {
        let (cg, og) = (d.cg(cfg), d.og(cfg));
        let mut y = vec![0.0; d.n * d.c_out * d.l_out];
        for s in 0..d.n {
            for oc in 0..d.c_out {
                let g = oc / og;
                for o in 0..d.l_out {
                    let mut acc = b[oc];
                    for c in 0..cg {
                        for t in 0..d.k {
                            let p = (o * cfg.stride + t * cfg.dilation) as isize
                                - cfg.padding.0 as isize;
                            if p >= 0 && (p as usize) < d.l {
                                acc += w[(oc * cg + c) * d.k + t]
                                    * x[(s * d.c_in + g * cg + c) * d.l + p as usize];
                            }
                        }
                    }
                    y[(s * d.c_out + oc) * d.l_out + o] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn forward_and_backward_match_the_direct_convolution() {
        // (n, c_in, l, c_out, k, stride, padding, dilation, groups)
        let cases = [
            (1, 1, 1, 1, 1, 1, (0, 0), 1, 1),
            (2, 3, 17, 5, 3, 1, (1, 1), 1, 1),
            (3, 4, 17, 6, 3, 2, (2, 0), 2, 2),
            (1, 6, 9, 3, 2, 3, (0, 3), 1, 3),
            (2, 2, 5, 4, 5, 1, (4, 0), 1, 1),
        ];
        for (n_case, &(n, c_in, l, c_out, k, stride, padding, dilation, groups)) in
            cases.iter().enumerate()
        {
            let cfg = Conv1dConfig {
                stride,
                padding,
                dilation,
                groups,
            };
            let shapes = [vec![n, c_in, l], vec![c_out, c_in / groups, k], vec![c_out]];
            let data: Vec<Vec<f32>> = shapes
                .iter()
                .enumerate()
                .map(|(a, s)| rand_vec((n_case * 10 + a) as u64, s.iter().product(), -1.0, 1.0))
                .collect();
            let vars: Vec<Var> = data
                .iter()
                .zip(&shapes)
                .map(|(v, s)| leaf(v.clone(), s))
                .collect();
            let y = conv1d(&vars[0], &vars[1], Some(&vars[2]), &cfg).unwrap();
            let d = check(&vars[0].value(), &vars[1].value(), None, &cfg).unwrap();
            let p: Vec<Vec<f64>> = data.iter().map(|v| to_f64(v)).collect();
            let want = reference(&p[0], &p[1], &p[2], &d, &cfg);
            assert_close(
                &format!("case {n_case}"),
                y.value().data(),
                &want,
                1e-5,
                1e-5,
            );
            let wv = rand_vec(77, want.len(), -1.0, 1.0);
            let got = grads(&y, &wv, &vars.iter().collect::<Vec<_>>());
            let w64 = to_f64(&wv);
            for a in 0..3 {
                let fd = finite_diff(&p[a], 1e-6, |v| {
                    let mut pp = p.clone();
                    pp[a] = v.to_vec();
                    dot(&w64, &reference(&pp[0], &pp[1], &pp[2], &d, &cfg))
                });
                assert_close(
                    &format!("case {n_case} input {a}"),
                    &got[a],
                    &fd,
                    1e-4,
                    1e-4,
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = leaf(vec![0.0; 6], &[1, 2, 3]);
        let cfg = Conv1dConfig {
            stride: 1,
            padding: (0, 0),
            dilation: 1,
            groups: 1,
        };
        assert!(
            conv1d(&x, &leaf(vec![0.0; 8], &[1, 2, 4]), None, &cfg).is_err(),
            "kernel longer than input"
        );
        assert!(
            conv1d(&x, &leaf(vec![0.0; 3], &[1, 3, 1]), None, &cfg).is_err(),
            "channels"
        );
        let grouped = Conv1dConfig { groups: 3, ..cfg };
        assert!(
            conv1d(&x, &leaf(vec![0.0; 3], &[3, 1, 1]), None, &grouped).is_err(),
            "groups"
        );
        let zero = Conv1dConfig { stride: 0, ..cfg };
        assert!(
            conv1d(&x, &leaf(vec![0.0; 2], &[1, 2, 1]), None, &zero).is_err(),
            "stride 0"
        );
    }
}
