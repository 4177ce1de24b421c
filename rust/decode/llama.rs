//! What a Llama-family decoder adds to the engine: rotary position embeddings (Hugging Face's
//! "rotate half" layout) instead of a position table, grouped-query attention (fewer key/value
//! heads than query heads; the cache keeps the key/value heads only) and a SwiGLU feed-forward.

/// The Llama parts of a [`super::DecoderWeights`]. With them, each layer's `self_in` stacks
/// q `(H·dh)`, k and v `(H_kv·dh each)`, and `ff1` stacks gate and up `(2f, d)`, `ff2` `(d, f)`.
#[derive(Clone, Debug)]
pub struct LlamaParts {
    /// `(dh/2,)` rotary inverse frequencies, any `rope_scaling` already applied by the caller;
    /// float64 as the model computes its angles, so the rotation has the same bits.
    pub inv_freq: Vec<f64>,
    /// The longest sequence (there is no position table to bound it).
    pub max_len: usize,
    /// Key/value heads of every layer; divides each layer's query heads.
    pub kv_heads: usize,
}

/// Rotates, in place, every head of `x` (heads of width `dh` side by side) by the angles of
/// position `p`: the pair `(i, i + dh/2)` turns by `p·inv_freq[i]`.
pub fn rotate(x: &mut [f32], dh: usize, p: usize, inv_freq: &[f64]) {
    let half = dh / 2;
    for (i, &f) in inv_freq.iter().enumerate() {
        let angle = p as f64 * f;
        let (cos, sin) = (angle.cos() as f32, angle.sin() as f32);
        for head in x.chunks_exact_mut(dh) {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = b * cos + a * sin;
        }
    }
}

/// `gate_up (n, 2f)` → `silu(gate)·up (n, f)`.
pub fn swiglu(gate_up: &[f32], f: usize) -> Vec<f32> {
    gate_up
        .chunks_exact(2 * f)
        .flat_map(|row| {
            let (gate, up) = row.split_at(f);
            gate.iter()
                .zip(up)
                .map(|(&g, &u)| g / ((-g).exp() + 1.0) * u)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_turns_each_half_pair_by_its_angle() {
        // Two heads of width 4: pairs (0, 2) and (1, 3) of each head.
        let x: Vec<f32> = (1..=8).map(|v| v as f32 * 0.37).collect();
        let inv_freq = [0.9, 0.013];
        let mut y = x.clone();
        rotate(&mut y, 4, 7, &inv_freq);
        for (head, (xh, yh)) in x.chunks(4).zip(y.chunks(4)).enumerate() {
            for (i, f) in inv_freq.iter().enumerate() {
                let (c, s) = ((7.0 * f).cos(), (7.0 * f).sin());
                let (a, b) = (xh[i] as f64, xh[i + 2] as f64);
                assert!((yh[i] as f64 - (a * c - b * s)).abs() < 1e-5, "head {head}");
                assert!(
                    (yh[i + 2] as f64 - (b * c + a * s)).abs() < 1e-5,
                    "head {head}"
                );
            }
        }
        let mut same = x.clone();
        rotate(&mut same, 4, 0, &inv_freq);
        assert_eq!(same, x);
    }

    #[test]
    fn swiglu_is_silu_of_the_gate_times_up() {
        let f = 3;
        let gate_up: Vec<f32> = (0..2 * 2 * f).map(|v| v as f32 * 0.7 - 4.0).collect();
        let y = swiglu(&gate_up, f);
        assert_eq!(y.len(), 2 * f);
        for (r, row) in gate_up.chunks(2 * f).enumerate() {
            for j in 0..f {
                let (g, u) = (row[j] as f64, row[f + j] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!((y[r * f + j] as f64 - want).abs() < 1e-5 * want.abs().max(1.0));
            }
        }
    }
}
