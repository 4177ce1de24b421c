//! The weights one decoding step reads: a stack of Transformer decoder layers (the
//! encoder-decoder's decoder, or a GPT's causal blocks) with its embeddings and output head.
//! Tensors are shared with the model's parameters (`Arc` storage), never copied.
//!
//! Layouts are PyTorch's: a `Linear` weight is `(out, in)`; attention projections stack
//! q, k, v as `in_proj (3a, d)` with `out_proj (d, a)`, where the attention width `a` is the
//! layer's head count times the model's head width: `d` unless heads were pruned away, and a
//! pruned layer's matrices are physically smaller, so it decodes faster.

use super::llama::LlamaParts;
use crate::error::{Result, TfmError};
use crate::ops::activation::ActivationKind;
use crate::ops::quantized_linear::QuantizedWeight;
use crate::tensor::{shape_str, CpuTensor};
use std::sync::Arc;

const OP: &str = "decode";

/// `y = x·Wᵀ + b` with `W (out, in)`, `b (out,)`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<CpuTensor>,
}

/// A linear layer's matrix: float32, or int8 with per-channel scales (a quantized model's),
/// which the decoder multiplies with the integer GEMM.
#[derive(Clone, Debug)]
pub enum Weight {
    F32(CpuTensor),
    Int8(Arc<QuantizedWeight>),
}

impl Weight {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Weight::F32(t) => t.shape().to_vec(),
            Weight::Int8(q) => vec![q.shape().0, q.shape().1],
        }
    }
}

impl Linear {
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
}

/// What every norm of a decoder computes on a row `x` (after adding the residual).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm: `(x − mean) / √(var + eps) · weight + bias`.
    Layer,
    /// RMSNorm: `x / √(mean(x²) + eps) · weight` (its norms have no bias).
    Rms,
    /// `x · weight + bias` per channel: an eval-mode batch norm, whose running statistics and
    /// eps are folded into `weight` and `bias` by the caller (the statistics do not depend on
    /// the row, so nothing is left to compute from it).
    Affine,
}

/// A norm's parameters, each `(d,)` when present.
#[derive(Clone, Debug)]
pub struct Norm {
    pub weight: Option<CpuTensor>,
    pub bias: Option<CpuTensor>,
}

/// A causal sliding window with global tokens: position `p` attends the first `global` positions
/// and positions `p − left ..= p` (a full forward's `sliding_window(left) | global_tokens(range(
/// global))` under the causal mask). The decoder keeps only those keys and values: a rolling
/// cache of at most `global + left + 1` positions per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub left: usize,
    pub global: usize,
}

/// A layer's causal self-attention: dense (a cache of every position), a sliding window (a
/// rolling cache), or linear attention (a recurrent state of fixed size, "Transformers are
/// RNNs": φ(k)vᵀ and φ(k) summed, φ = elu + 1, as `ops::linear_attention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfAttention {
    Dense,
    Window(Window),
    Linear,
}

impl SelfAttention {
    pub fn window(self) -> Option<Window> {
        match self {
            SelfAttention::Window(w) => Some(w),
            _ => None,
        }
    }
}

/// One block. `cross` (encoder-decoder attention, q/k/v stacked in `(3a, d)`) and its
/// `norm_cross` are present together, only in an encoder-decoder's decoder. `self_heads` and
/// `cross_heads` count the heads each attention keeps (`cross_heads` is 0 without
/// cross-attention).
#[derive(Clone, Debug)]
pub struct Layer {
    /// What the self-attention computes over the positions so far.
    pub attention: SelfAttention,
    pub self_heads: usize,
    pub self_in: Linear,
    pub self_out: Linear,
    pub cross_heads: usize,
    pub cross: Option<(Linear, Linear)>,
    pub norm_self: Norm,
    pub norm_cross: Option<Norm>,
    pub norm_ff: Norm,
    pub ff1: Linear,
    pub ff2: Linear,
}

/// The whole decoder: `x₀ = embed[token]·embed_scale + positions[pos]`, the layers (post-LN
/// `x = LN(x + f(x))`, or pre-LN `x = x + f(LN(x))`), `final_norm`, then `head` to logits.
#[derive(Clone, Debug)]
pub struct DecoderWeights {
    /// The width of one attention head (every layer's; pruning removes heads, not columns).
    pub head_dim: usize,
    pub norm_first: bool,
    pub activation: ActivationKind,
    /// The norms' epsilon (unused by [`NormKind::Affine`]).
    pub eps: f32,
    pub norm: NormKind,
    /// `(V_in, d)`.
    pub embed: CpuTensor,
    pub embed_scale: f32,
    /// `(max_len, d)`: one row per position; `None` exactly when `llama` gives rotary positions.
    pub positions: Option<CpuTensor>,
    pub layers: Vec<Layer>,
    pub final_norm: Option<Norm>,
    /// `(V, d)` (often the same storage as `embed`).
    pub head: Linear,
    /// Rotary positions, grouped-query attention and SwiGLU (`activation` is then unused).
    pub llama: Option<LlamaParts>,
}

impl DecoderWeights {
    pub fn d_model(&self) -> usize {
        self.embed.shape().get(1).copied().unwrap_or(0)
    }

    /// The longest sequence the model can process: the position table's rows.
    pub fn max_len(&self) -> usize {
        match (&self.positions, &self.llama) {
            (Some(p), _) => p.shape()[0],
            (None, Some(l)) => l.max_len,
            (None, None) => 0,
        }
    }

    /// Key/value heads of a self-attention with `heads` query heads.
    pub fn kv_heads(&self, heads: usize) -> usize {
        self.llama.as_ref().map_or(heads, |l| l.kv_heads)
    }

    /// Input token ids must be below this.
    pub fn input_vocab(&self) -> usize {
        self.embed.shape()[0]
    }

    /// Logits per step.
    pub fn vocab(&self) -> usize {
        self.head.out_features()
    }

    pub fn has_cross(&self) -> bool {
        self.layers.iter().any(|l| l.cross.is_some())
    }

    /// Checks every shape against `d_model` and each other, so that the decoding kernels may
    /// index without further checks.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, t: &CpuTensor, want: String| {
            TfmError::shape(
                OP,
                format!("{what} has shape {}, expected {want}", shape_str(t.shape())),
            )
        };
        if self.embed.ndim() != 2 || self.embed.shape()[0] == 0 || self.embed.shape()[1] == 0 {
            return Err(bad("the embedding", &self.embed, "(vocab, d_model)".into()));
        }
        let d = self.d_model();
        if self.head_dim == 0 {
            return Err(TfmError::value(OP, "head_dim must be positive"));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(TfmError::value(
                OP,
                format!("layer_norm_eps must be positive, got {}", self.eps),
            ));
        }
        match (&self.positions, &self.llama) {
            (Some(p), None) => {
                if p.ndim() != 2 || p.shape()[1] != d || p.shape()[0] == 0 {
                    return Err(bad("the position table", p, format!("(max_len, {d})")));
                }
            }
            (None, Some(l)) => self.validate_llama(l)?,
            _ => {
                return Err(TfmError::value(
                    OP,
                    "a decoder has either a position table or rotary positions (llama), not both or neither",
                ))
            }
        }
        let linear = |what: String, l: &Linear, out: Option<usize>, inp: usize| -> Result<usize> {
            let s = l.weight.shape();
            if s.len() != 2 || s[1] != inp || out.is_some_and(|o| o != s[0]) || s[0] == 0 {
                let want = format!("({}, {inp})", out.map_or("out".into(), |o| o.to_string()));
                return Err(TfmError::shape(
                    OP,
                    format!("{what}.weight has shape {}, expected {want}", shape_str(&s)),
                ));
            }
            if let Some(b) = &l.bias {
                if b.shape() != [s[0]] {
                    return Err(bad(&format!("{what}.bias"), b, format!("({},)", s[0])));
                }
            }
            Ok(s[0])
        };
        let affine = self.norm == NormKind::Affine;
        let norm = |what: String, n: &Norm| -> Result<()> {
            if affine && (n.weight.is_none() || n.bias.is_none()) {
                return Err(TfmError::value(
                    OP,
                    format!("{what}: an affine norm needs a weight and a bias"),
                ));
            }
            for (t, part) in [(&n.weight, "weight"), (&n.bias, "bias")] {
                if let Some(t) = t {
                    if t.shape() != [d] {
                        return Err(bad(&format!("{what}.{part}"), t, format!("({d},)")));
                    }
                }
            }
            Ok(())
        };
        if self.layers.is_empty() {
            return Err(TfmError::value(OP, "the decoder has no layers"));
        }
        if self.llama.is_some()
            && self
                .layers
                .iter()
                .any(|l| l.attention == SelfAttention::Linear)
        {
            return Err(TfmError::value(
                OP,
                "linear-attention layers decode with one key/value head per query head; this decoder groups them (llama)",
            ));
        }
        // The attention width of `heads` heads, checked so that no product overflows.
        let width = |what: String, heads: usize| -> Result<usize> {
            match heads.checked_mul(self.head_dim) {
                Some(a) if heads > 0 && a.checked_mul(3).is_some() => Ok(a),
                _ => Err(TfmError::value(
                    OP,
                    format!(
                        "{what} has {heads} heads of width {}: expected at least one head",
                        self.head_dim
                    ),
                )),
            }
        };
        for (i, l) in self.layers.iter().enumerate() {
            let what = format!(
                "layer {i} self-attention ({} heads of width {})",
                l.self_heads, self.head_dim
            );
            let a = width(what.clone(), l.self_heads)?;
            let kv = self.kv_heads(l.self_heads) * self.head_dim;
            linear(format!("{what} in_proj"), &l.self_in, Some(a + 2 * kv), d)?;
            linear(format!("{what} out_proj"), &l.self_out, Some(d), a)?;
            norm(format!("layer {i} self-attention norm"), &l.norm_self)?;
            match (&l.cross, &l.norm_cross) {
                (Some((qkv, out)), Some(n)) => {
                    let what = format!(
                        "layer {i} cross-attention ({} heads of width {})",
                        l.cross_heads, self.head_dim
                    );
                    let a = width(what.clone(), l.cross_heads)?;
                    linear(format!("{what} in_proj"), qkv, Some(3 * a), d)?;
                    linear(format!("{what} out_proj"), out, Some(d), a)?;
                    norm(format!("layer {i} cross-attention norm"), n)?;
                }
                (None, None) if l.cross_heads == 0 => {}
                (None, None) => {
                    return Err(TfmError::value(
                        OP,
                        format!(
                            "layer {i} has no cross-attention but {} cross-attention heads",
                            l.cross_heads
                        ),
                    ))
                }
                _ => {
                    return Err(TfmError::value(
                        OP,
                        format!("layer {i}: cross-attention and its norm come together"),
                    ))
                }
            }
            norm(format!("layer {i} feed-forward norm"), &l.norm_ff)?;
            let ff = linear(format!("layer {i} linear1"), &l.ff1, None, d)?;
            let ff = match &self.llama {
                Some(_) if ff % 2 == 1 => {
                    return Err(TfmError::shape(
                        OP,
                        format!("layer {i} linear1 stacks gate and up, so needs an even number of rows, got {ff}"),
                    ))
                }
                Some(_) => ff / 2,
                None => ff,
            };
            linear(format!("layer {i} linear2"), &l.ff2, Some(d), ff)?;
        }
        if self.layers.iter().any(|l| l.cross.is_some())
            != self.layers.iter().all(|l| l.cross.is_some())
        {
            return Err(TfmError::value(
                OP,
                "either every layer has cross-attention or none has",
            ));
        }
        if let Some(n) = &self.final_norm {
            norm("the final norm".into(), n)?;
        }
        linear("the output head".into(), &self.head, None, d)?;
        Ok(())
    }

    fn validate_llama(&self, l: &LlamaParts) -> Result<()> {
        if self.head_dim % 2 == 1 || l.inv_freq.len() != self.head_dim / 2 {
            return Err(TfmError::shape(
                OP,
                format!(
                    "rotary positions need an even head_dim and head_dim/2 frequencies, got head_dim={} and {}",
                    self.head_dim,
                    l.inv_freq.len()
                ),
            ));
        }
        if l.inv_freq.iter().any(|f| !f.is_finite()) || l.max_len == 0 {
            return Err(TfmError::value(
                OP,
                "rotary frequencies must be finite and max_len positive",
            ));
        }
        if l.kv_heads == 0 {
            return Err(TfmError::value(OP, "kv_heads must be positive"));
        }
        if let Some((i, layer)) = (self.layers.iter().enumerate())
            .find(|(_, layer)| layer.self_heads % l.kv_heads != 0 || layer.cross.is_some())
        {
            return Err(TfmError::value(
                OP,
                format!(
                    "layer {i}: a llama layer has no cross-attention and a multiple of kv_heads={} heads, got {}",
                    l.kv_heads, layer.self_heads
                ),
            ));
        }
        Ok(())
    }
}
