//! The naive attention in f64, materializing each head's `Tq × Tk` probabilities: the oracle
//! the fused kernels are tested against (and, in f64, the function finite differences check).
//! Same argument order and `cfg` as the fused kernels; inputs are f64 so that a test can
//! perturb them finely.

use super::MaskedConfig;

/// Head `h`'s probabilities `softmax(scale·q·kᵀ + mask)` (Tq, Tk), with zero rows where no key
/// is allowed, the row log-sum-exps (Tq; +∞ for such rows), and dropout's factors `Z` (Tq, Tk):
/// 1/(1 − p) where kept, 0 where dropped.
fn probabilities(
    h: usize,
    q: &[f64],
    k: &[f64],
    cfg: &MaskedConfig,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (tq, tk, e) = (cfg.tq, cfg.tk, cfg.e);
    let mut p = vec![0.0f64; tq * tk];
    let mut lse = vec![f64::INFINITY; tq];
    for i in 0..tq {
        let row = &mut p[i * tk..(i + 1) * tk];
        for (j, s) in row.iter_mut().enumerate() {
            let dot: f64 = (0..e)
                .map(|d| q[(h * tq + i) * e + d] * k[(h * tk + j) * e + d])
                .sum();
            *s = cfg.scale as f64 * dot + cfg.mask_value(h, i, j) as f64;
        }
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        row.iter_mut().for_each(|s| *s = (*s - m).exp());
        let l: f64 = row.iter().sum();
        row.iter_mut().for_each(|s| *s /= l);
        lse[i] = m + l.ln();
    }
    let keep_scale = 1.0 / (1.0 - cfg.dropout_p as f64);
    let z = (0..tq * tk)
        .map(|ij| {
            let kept = cfg.dropout_p == 0.0
                || crate::random::keep(cfg.seed, (h * tq * tk + ij) as u64, cfg.dropout_p);
            if kept {
                keep_scale
            } else {
                0.0
            }
        })
        .collect();
    (p, lse, z)
}

/// Reference forward: `out` (BH, Tq, Ev) and `lse` (BH, Tq) from q (BH, Tq, E), k (BH, Tk, E),
/// v (BH, Tk, Ev), as [`super::attention_forward`].
pub fn attention_forward_reference(
    out: &mut [f64],
    lse: &mut [f64],
    q: &[f64],
    k: &[f64],
    v: &[f64],
    cfg: &MaskedConfig,
) {
    let (tq, tk, ev) = (cfg.tq, cfg.tk, cfg.ev);
    for h in 0..cfg.bh {
        let (p, l, z) = probabilities(h, q, k, cfg);
        lse[h * tq..(h + 1) * tq].copy_from_slice(&l);
        for i in 0..tq {
            for c in 0..ev {
                out[(h * tq + i) * ev + c] = (0..tk)
                    .map(|j| p[i * tk + j] * z[i * tk + j] * v[(h * tk + j) * ev + c])
                    .sum();
            }
        }
    }
}

/// Reference backward: `dq`, `dk`, `dv` (shaped as q, k, v) from `dout` (BH, Tq, Ev), by the
/// textbook chain rule through the materialized probabilities:
/// `dV = (P∘Z)ᵀ dO`, `dP = (dO Vᵀ)∘Z`, `dS = P∘(dP − rowsum(P∘dP))`, `dQ = scale·dS K`,
/// `dK = scale·dSᵀ Q`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_reference(
    dq: &mut [f64],
    dk: &mut [f64],
    dv: &mut [f64],
    dout: &[f64],
    q: &[f64],
    k: &[f64],
    v: &[f64],
    cfg: &MaskedConfig,
) {
    let (tq, tk, e, ev) = (cfg.tq, cfg.tk, cfg.e, cfg.ev);
    let scale = cfg.scale as f64;
    for h in 0..cfg.bh {
        let (p, _, z) = probabilities(h, q, k, cfg);
        let dout_h = |i: usize, c: usize| dout[(h * tq + i) * ev + c];
        let mut ds = vec![0.0f64; tq * tk];
        for i in 0..tq {
            let dp: Vec<f64> = (0..tk)
                .map(|j| {
                    z[i * tk + j]
                        * (0..ev)
                            .map(|c| dout_h(i, c) * v[(h * tk + j) * ev + c])
                            .sum::<f64>()
                })
                .collect();
            let d: f64 = (0..tk).map(|j| p[i * tk + j] * dp[j]).sum();
            for j in 0..tk {
                ds[i * tk + j] = p[i * tk + j] * (dp[j] - d);
            }
        }
        for j in 0..tk {
            for c in 0..ev {
                dv[(h * tk + j) * ev + c] = (0..tq)
                    .map(|i| p[i * tk + j] * z[i * tk + j] * dout_h(i, c))
                    .sum();
            }
            for d in 0..e {
                dk[(h * tk + j) * e + d] = scale
                    * (0..tq)
                        .map(|i| ds[i * tk + j] * q[(h * tq + i) * e + d])
                        .sum::<f64>();
            }
        }
        for i in 0..tq {
            for d in 0..e {
                dq[(h * tq + i) * e + d] = scale
                    * (0..tk)
                        .map(|j| ds[i * tk + j] * k[(h * tk + j) * e + d])
                        .sum::<f64>();
            }
        }
    }
}
