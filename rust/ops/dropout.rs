//! Inverted dropout: in training, each element is zeroed with probability `p` and the kept ones
//! are scaled by `1/(1 − p)`, so the expectation is unchanged; outside training it is the
//! identity.
//!
//! Forward: `x (any shape)` → same shape. The keep mask of element `i` is
//! `random::keep(seed, i, p)` with one fresh seed per call, so it depends neither on the thread
//! count nor on scheduling, and the backward regenerates it from the seed: nothing else is
//! saved, and no mask is stored.

use super::rows::{for_each_row, rows_mut};
use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::ensure_value;
use crate::error::Result;
use crate::random::{keep_group_bits, keep_threshold, kept, next_seed, KEEP_GROUP};
use crate::tensor::{Placed, Tensor};

/// Elements per parallel task, a multiple of `KEEP_GROUP`; masks are indexed by the absolute
/// element index, so the split does not affect the result.
const CHUNK: usize = 1 << 12;

simd_kernel! {
    /// Elements `base .. base + o.len()` of [`dropout_apply`] (`base` a multiple of
    /// `KEEP_GROUP`, `v` and `o` equally long): the chunk's 16-bit draws into a buffer first (a
    /// plain loop of 64-bit hashes), then the mask applied as one branch-free, vectorized map.
    fn apply_chunk(o: &mut [f32], v: &[f32], base: usize, seed: u64, threshold: u32, scale: f32) {
        let mut draws = [0u16; CHUNK];
        let draws = &mut draws[..o.len().next_multiple_of(KEEP_GROUP)];
        let g0 = (base / KEEP_GROUP) as u64;
        for (g, d) in draws.chunks_exact_mut(KEEP_GROUP).enumerate() {
            let h = keep_group_bits(seed, g0 + g as u64);
            for (k, d) in d.iter_mut().enumerate() {
                *d = (h >> (16 * k)) as u16;
            }
        }
        for ((o, &x), &r) in o.iter_mut().zip(v).zip(&*draws) {
            *o = x * if kept(r as u32, threshold) { scale } else { 0.0 };
        }
    }
}

/// Forward and backward kernel (dropout is linear, so both are the same map):
/// `out_i = v_i · (keep(seed, i, p) ? 1/(1 − p) : 0)` for `v (n,)` → `(n,)`. Multiplying by 0
/// rather than writing 0 keeps NaN and ±inf inputs visible as NaN, as PyTorch does.
///
/// `p` is f64, like the Python float it comes from: the scale `1/(1 − p)` is computed in f64
/// and rounded once (for p = 0.9, 10.0 rather than f32's 9.999998). The keep decision uses `p`
/// on `random::keep`'s 2⁻¹⁶ grid.
pub fn dropout_apply(v: &[f32], seed: u64, p: f64) -> Vec<f32> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let threshold = keep_threshold(p as f32);
    let mut out = crate::cpu::alloc::output(v.len());
    let rows = v.len().div_ceil(CHUNK);
    for_each_row(rows_mut(&mut out, rows, CHUNK), CHUNK, |c, o| {
        let base = c * CHUNK;
        apply_chunk(o, &v[base..][..o.len()], base, seed, threshold, scale);
    });
    out
}

struct DropoutBackward {
    seed: u64,
    p: f64,
}

impl Backward for DropoutBackward {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(dropout_tensor(g, self.seed, self.p)?)])
    }
}

/// [`dropout_apply`] on `v`'s device (forward and backward alike).
fn dropout_tensor(v: &Tensor, seed: u64, p: f64) -> Result<Tensor> {
    match Tensor::place("dropout", [v])? {
        Placed::Cpu([v]) => Tensor::new(dropout_apply(v.data(), seed, p), v.shape()),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([v]) => Ok(crate::gpu::ops::dropout::apply_tensor(v, seed, p)?.into()),
    }
}

/// Dropout with drop probability `p ∈ [0, 1]` (checked even when not training, as PyTorch
/// does). Outside training, or with `p == 0`, returns `x` itself; `p == 1` gives zeros.
pub fn dropout(x: &Var, p: f64, training: bool) -> Result<Var> {
    ensure_value!(
        (0.0..=1.0).contains(&p),
        "dropout",
        "dropout probability has to be between 0 and 1, but got {p}"
    );
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let seed = next_seed();
    let xv = x.value();
    let y = dropout_tensor(&xv, seed, p)?;
    Ok(Var::from_op(
        y,
        vec![x.clone()],
        DropoutBackward { seed, p },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;
    use crate::random::keep;

    /// f64 reference: the mask and scale written out per element.
    fn reference(x: &[f64], seed: u64, p: f64) -> Vec<f64> {
        let scale = 1.0 / (1.0 - p);
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                if keep(seed, i as u64, p as f32) {
                    v * scale
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Kernel forward vs the reference (1e-6 relative: one f32 multiply by a rounded scale), and
    /// its use as the backward vs finite differences of the reference (exact up to rounding:
    /// the map is linear; 1e-4).
    #[test]
    fn kernel_matches_reference_on_odd_sizes() {
        for (k, &n) in [1usize, 3, 17, 127, 17 * 127].iter().enumerate() {
            let x = rand_vec(k as u64, n, -2.0, 2.0);
            let x64 = to_f64(&x);
            for p in [0.1f64, 0.5, 0.9] {
                let seed = 77 + k as u64;
                assert_close(
                    "forward",
                    &dropout_apply(&x, seed, p),
                    &reference(&x64, seed, p),
                    1e-6,
                    0.0,
                );
                let g = rand_vec(k as u64 + 9, n, -1.0, 1.0);
                let g64 = to_f64(&g);
                let fd = finite_diff(&x64, 1e-3, |v| dot(&g64, &reference(v, seed, p)));
                assert_close("backward", &dropout_apply(&g, seed, p), &fd, 1e-4, 1e-6);
            }
        }
    }

    #[test]
    fn backward_reuses_the_forward_mask() {
        let n = 1000;
        let x = leaf(rand_vec(1, n, 0.5, 1.5), &[10, 100]);
        let y = dropout(&x, 0.3, true).unwrap();
        let yv = y.value().data().to_vec();
        let kept = yv.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.7).abs() < 0.06, "kept {kept}");
        let gx = &grads(&y, &vec![1.0; n], &[&x])[0];
        let scale = (1.0 / 0.7f64) as f32;
        for (i, (&y, &g)) in yv.iter().zip(gx).enumerate() {
            assert_eq!(g, if y != 0.0 { scale } else { 0.0 }, "element {i}");
        }
        // Each call draws a new seed.
        let again = dropout(&x, 0.3, true).unwrap().value();
        assert_ne!(again.data(), &yv[..]);
    }

    #[test]
    fn p_zero_p_one_and_eval_mode() {
        let x = leaf(vec![1.0, -2.0, 3.0], &[3]);
        for (p, training) in [(0.0, true), (0.5, false), (1.0, false)] {
            let y = dropout(&x, p, training).unwrap();
            assert_eq!(y.value().data(), &[1.0, -2.0, 3.0]);
        }
        let y = dropout(&x, 1.0, true).unwrap();
        assert_eq!(y.value().data(), &[0.0, 0.0, 0.0]);
        assert_eq!(grads(&y, &[1.0, 1.0, 1.0], &[&x])[0], vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn mask_does_not_depend_on_thread_count() {
        let x = rand_vec(3, 100_003, -1.0, 1.0);
        let one = with_threads(1, || dropout_apply(&x, 99, 0.25));
        let two = with_threads(2, || dropout_apply(&x, 99, 0.25));
        assert_eq!(one, two);
    }

    #[test]
    fn errors_and_empty_inputs() {
        let x = leaf(vec![1.0], &[1]);
        for p in [-0.1, 1.1, f64::NAN] {
            assert_eq!(dropout(&x, p, false).err().unwrap().kind, ErrorKind::Value);
        }
        let e = leaf(vec![], &[0, 5]);
        let y = dropout(&e, 0.5, true).unwrap();
        assert_eq!(y.shape(), vec![0, 5]);
        assert!(grads(&y, &[], &[&e])[0].is_empty());
    }
}
