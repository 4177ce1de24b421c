//! Device-neutral op descriptors: the kinds, configurations and hyperparameters that the CPU
//! kernels, the GPU kernels and the differentiable ops all speak. This module sits below every
//! kernel in the import order (it imports nothing but the error type), so that neither backend
//! has to import the other, or the autograd ops, to name what it computes.
//!
//! The ops' modules re-export what they take (`ops::elementwise::BinaryOp`,
//! `optim::AdamConfig`, …), so callers keep their paths.

use crate::ensure_value;
use crate::error::{Result, TfmError};

/// The elementwise binary ops, with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// The elementwise unary ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Pow(f32),
    Sigmoid,
    Abs,
    Sin,
    Cos,
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Pow(_) => "pow",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Abs => "abs",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }
}

/// The pointwise activations, as one op with a per-kind scalar function and derivative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationKind {
    Relu,
    /// PyTorch's `approximate='none'`.
    Gelu,
    /// PyTorch's `approximate='tanh'`.
    GeluTanh,
    /// `x·σ(x)` (SiLU, "swish"): Marian's opus-mt and the Llama family's gate.
    Silu,
}

impl ActivationKind {
    pub fn name(self) -> &'static str {
        match self {
            ActivationKind::Relu => "relu",
            ActivationKind::Gelu => "gelu",
            ActivationKind::GeluTanh => "gelu_tanh",
            ActivationKind::Silu => "silu",
        }
    }
}

/// How a loss over positions is reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    None,
    Mean,
    Sum,
}

/// The loss settings shared by the kernels.
#[derive(Clone, Copy, Debug)]
pub struct LossConfig {
    pub ignore_index: i64,
    pub label_smoothing: f32,
}

impl LossConfig {
    /// The check both backends make on the per-row log-sum-exps `lse(i)` of `n` rows: a NaN
    /// (from a NaN or +inf logit), or −inf on a row that counts (`counted(i)`: its target is not
    /// ignored), is a non-finite error naming the first such row.
    pub fn check_lse(
        op: &'static str,
        n: usize,
        lse: impl Fn(usize) -> f64,
        counted: impl Fn(usize) -> bool,
    ) -> Result<()> {
        let bad = |&i: &usize| lse(i).is_nan() || (lse(i) == f64::NEG_INFINITY && counted(i));
        match (0..n).find(bad) {
            None => Ok(()),
            Some(i) => {
                let what = if lse(i).is_nan() {
                    "holds NaN or +inf"
                } else {
                    "is -inf everywhere"
                };
                Err(TfmError::non_finite(
                    op,
                    format!("row {i} of the logits {what}"),
                ))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay instead of Adam's L2 penalty.
    pub decoupled: bool,
    pub amsgrad: bool,
    pub maximize: bool,
}

impl AdamConfig {
    /// The checks of one step on either device: the hyperparameters, the step count (from 1,
    /// after this step's increment) and, with amsgrad, the presence of `max_exp_avg_sq`.
    pub fn check_step(&self, step: u64, has_max_exp_avg_sq: bool) -> Result<()> {
        self.validate()?;
        ensure_value!(
            step >= 1,
            "adam",
            "step counts from 1 (the count after this step's increment), got 0"
        );
        ensure_value!(
            !self.amsgrad || has_max_exp_avg_sq,
            "adam",
            "amsgrad needs the max_exp_avg_sq state"
        );
        Ok(())
    }

    /// The same range checks as PyTorch's constructor.
    fn validate(&self) -> Result<()> {
        ensure_value!(
            (0.0..).contains(&self.lr),
            "adam",
            "invalid learning rate: {}",
            self.lr
        );
        ensure_value!(
            (0.0..).contains(&self.eps),
            "adam",
            "invalid epsilon value: {}",
            self.eps
        );
        ensure_value!(
            (0.0..1.0).contains(&self.beta1),
            "adam",
            "invalid beta parameter at index 0: {}",
            self.beta1
        );
        ensure_value!(
            (0.0..1.0).contains(&self.beta2),
            "adam",
            "invalid beta parameter at index 1: {}",
            self.beta2
        );
        ensure_value!(
            (0.0..).contains(&self.weight_decay),
            "adam",
            "invalid weight_decay value: {}",
            self.weight_decay
        );
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub maximize: bool,
}

impl SgdConfig {
    /// The checks of one step on either device: the hyperparameters and, with momentum, the
    /// presence of the momentum buffer.
    pub fn check_step(&self, has_momentum_buffer: bool) -> Result<()> {
        self.validate()?;
        ensure_value!(
            self.momentum == 0.0 || has_momentum_buffer,
            "sgd",
            "momentum needs the momentum_buffer state"
        );
        Ok(())
    }

    /// The same checks as PyTorch's constructor.
    fn validate(&self) -> Result<()> {
        ensure_value!(
            (0.0..).contains(&self.lr),
            "sgd",
            "invalid learning rate: {}",
            self.lr
        );
        ensure_value!(
            (0.0..).contains(&self.momentum),
            "sgd",
            "invalid momentum value: {}",
            self.momentum
        );
        ensure_value!(
            (0.0..).contains(&self.weight_decay),
            "sgd",
            "invalid weight_decay value: {}",
            self.weight_decay
        );
        ensure_value!(
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            "sgd",
            "nesterov momentum requires a momentum and zero dampening"
        );
        Ok(())
    }
}

/// Where an additive attention mask keeps its values, read in place through broadcast strides:
/// the value for query `i`, key `j` of batch-head `h` is at
/// `head_offsets[h] + i·row_stride + j·col_stride` (a stride is 0 along a broadcast dimension).
/// The values themselves live on a device (host slices for the CPU kernels, a GPU buffer for the
/// GPU's); −∞ masks a score out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskLayout {
    /// One offset per batch-head, length BH.
    pub head_offsets: Vec<usize>,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// Sizes and options shared by the forward and backward kernels of both devices (the mask, if
/// any, travels beside it with its values).
#[derive(Clone, Copy, Debug)]
pub struct AttentionConfig {
    /// Batch × heads: the product of the leading dimensions.
    pub bh: usize,
    pub tq: usize,
    pub tk: usize,
    pub e: usize,
    pub ev: usize,
    pub scale: f32,
    /// Query `i` attends keys `j <= i` (top-left aligned, as PyTorch).
    pub is_causal: bool,
    /// Drop probability in [0, 1) on the attention probabilities.
    pub dropout_p: f32,
    /// Keys the dropout decisions: element `(h, i, j)` is kept iff
    /// `random::keep(seed, (h·Tq + i)·Tk + j, dropout_p)`.
    pub seed: u64,
}

/// The arithmetic of the matrix products (linear layers, matmul, attention): float32
/// throughout, or mixed precision — inputs rounded to bfloat16, products summed in float32,
/// everything else (norms, softmax, losses, reductions, weights and optimizer state) float32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `"float32"`/`"fp32"`/`"f32"`, or `"bf16"`/`"bfloat16"` (any case).
    pub fn from_name(name: &str) -> Result<Precision> {
        match name.trim().to_ascii_lowercase().as_str() {
            "float32" | "fp32" | "f32" | "float" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(crate::error::TfmError::value(
                "precision",
                format!("unknown precision '{other}'; expected one of float32, bf16"),
            )),
        }
    }
}
