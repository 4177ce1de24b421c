//! One layer, one direction of an LSTM or a GRU over a whole sequence, with PyTorch's
//! equations, gate order and weight layout, as a single op (one `Backward` for the sequence).
//!
//! Shapes: x (T, B, I) time-major; initial state h0 (B, H) (and c0 (B, H) for the LSTM);
//! W_ih (G·H, I), W_hh (G·H, H), b_ih and b_hh (G·H,) with G = 4 gates (LSTM: i, f, g, o) or 3
//! (GRU: r, z, n). The result stacks the outputs and the final states: (T + 1, B, H) for the
//! GRU (`[y; h_n]`), (T + 2, B, H) for the LSTM (`[y; h_n; c_n]`), so that one op — and one
//! backward through time — serves all three; the Python layer slices them apart.
//!
//! ```text
//! LSTM: i, f, o = σ(·), g = tanh(·) of x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh (one block each)
//!       c' = f∘c + i∘g,  h' = o∘tanh(c')
//! GRU:  r, z = σ(·) as above,  n = tanh(x_n + r∘(h·W_hnᵀ + b_hn)),  h' = (1 − z)∘n + z∘h
//! ```
//!
//! The input projections of all steps are one GEMM; each step is one GEMM of the state against
//! `W_hhᵀ` packed once (the right-hand side the GEMM would otherwise repack every step) and
//! the fused gate arithmetic per sample. `lengths` (per sample, ≤ T) work as PyTorch's packed
//! sequences: a sample's steps past its length leave its state alone and output zeros, and the
//! reverse direction starts at each sample's last valid step. The backward runs the steps in
//! reverse, one packed `W_hh` GEMM per step, summing the bias gradients as it goes, and gets
//! dx, dW_ih and dW_hh as GEMMs over all steps at the end ([`linear_backward`]). The biases are
//! added in the step kernels, not as GEMM epilogues. With several threads and a batch of at
//! least 16, each thread takes a share of the samples through the whole time loop (both
//! directions of the pass), so a step costs no synchronization; a row's arithmetic is the same
//! whatever its share, so the results do not depend on the thread count (tested).

use crate::autograd::{Backward, Var};
use crate::cpu::gemm::{gemm, gemm_packed, Epilogue, MatRef, PackedB};
use crate::cpu::pool::{self, SendPtr};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::ops::linear::{linear_backward, Needs};
use crate::ops::rows::{axpy, for_each_row, rows_mut, sigmoid, tanh_fast as tanh};
use crate::tensor::{shape_str, Device, Tensor};

const OP: &str = "rnn";

/// The recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    Lstm,
    Gru,
}

impl Cell {
    /// Parses PyTorch's mode names, "LSTM" and "GRU".
    pub fn parse(name: &str) -> Result<Cell> {
        match name.to_ascii_uppercase().as_str() {
            "LSTM" => Ok(Cell::Lstm),
            "GRU" => Ok(Cell::Gru),
            _ => Err(TfmError::value(
                OP,
                format!("unknown recurrent cell {name:?}; expected \"LSTM\" or \"GRU\""),
            )),
        }
    }

    /// Gates per hidden unit.
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    /// State tensors: h (and c).
    pub fn states(self) -> usize {
        match self {
            Cell::Lstm => 2,
            Cell::Gru => 1,
        }
    }

    /// Values the backward needs per position and hidden unit: the four gates and the previous
    /// cell (LSTM); r, z, n and the recurrent n-projection `h·W_hnᵀ + b_hn` (GRU).
    fn saved(self) -> usize {
        match self {
            Cell::Lstm => 5,
            Cell::Gru => 4,
        }
    }
}

/// The sequence layout of one call: which cell, which direction, and per-sample lengths
/// (`None`: every sample is T long).
#[derive(Clone, Debug)]
pub struct RnnConfig {
    pub cell: Cell,
    pub reverse: bool,
    pub lengths: Option<Vec<usize>>,
}

/// The layer's parameters (biases optional, as PyTorch's `bias=False`).
pub struct RnnWeights<'a> {
    pub w_ih: &'a Var,
    pub w_hh: &'a Var,
    pub b_ih: Option<&'a Var>,
    pub b_hh: Option<&'a Var>,
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    /// Gate columns, gates · h.
    g: usize,
}

/// The time index each sample (of lengths `lens`) reads at sample-step `s`, or `None` for the
/// samples whose sequence has ended.
fn positions(lens: &[usize], s: usize, reverse: bool) -> Vec<Option<usize>> {
    lens.iter()
        .map(|&len| (s < len).then(|| if reverse { len - 1 - s } else { s }))
        .collect()
}

simd_kernel! {
    /// One LSTM step of one sample: gate pre-activations `xg + bias + hg` (4h; `bias` is
    /// b_ih + b_hh), the state h, c (h) updated in place; `saved` (5h) gets i, f, g, o and the
    /// previous c.
    fn lstm_step(xg: &[f32], bias: &[f32], hg: &[f32], h: &mut [f32], c: &mut [f32], saved: &mut [f32]) {
        let n = h.len();
        let (gates, c_prev) = saved.split_at_mut(4 * n);
        // One loop per gate block: a select between tanh and sigmoid inside one loop kept it
        // from vectorizing.
        for (block, out) in gates.chunks_exact_mut(n).enumerate() {
            let at = block * n;
            let (x, b, r) = (&xg[at..][..n], &bias[at..][..n], &hg[at..][..n]);
            if block == 2 {
                for j in 0..n {
                    out[j] = tanh(x[j] + b[j] + r[j]);
                }
            } else {
                for j in 0..n {
                    out[j] = sigmoid(x[j] + b[j] + r[j]);
                }
            }
        }
        let (i, rest) = gates.split_at(n);
        let (f, rest) = rest.split_at(n);
        let (g, o) = rest.split_at(n);
        for j in 0..n {
            c_prev[j] = c[j];
            let cn = f[j] * c[j] + i[j] * g[j];
            c[j] = cn;
            h[j] = o[j] * tanh(cn);
        }
    }
}

simd_kernel! {
    /// One GRU step of one sample (see the module doc), the biases added here; `saved` (4h)
    /// gets r, z, n and the recurrent n-projection `hg_n + b_hn`.
    fn gru_step(xg: &[f32], b_ih: &[f32], hg: &[f32], b_hh: &[f32], h: &mut [f32], saved: &mut [f32]) {
        let n = h.len();
        let (rz, rest) = saved.split_at_mut(2 * n);
        let (nn, hn) = rest.split_at_mut(n);
        for j in 0..2 * n {
            rz[j] = sigmoid((xg[j] + b_ih[j]) + (hg[j] + b_hh[j]));
        }
        let (r, z) = rz.split_at(n);
        for j in 0..n {
            let k = 2 * n + j;
            hn[j] = hg[k] + b_hh[k];
            nn[j] = tanh(xg[k] + b_ih[k] + r[j] * hn[j]);
            h[j] = (1.0 - z[j]) * nn[j] + z[j] * h[j];
        }
    }
}

simd_kernel! {
    /// Backward of [`lstm_step`] for one sample: the gradient of h' is `dh` (from the later
    /// steps, through W_hh) plus `gy` (the output's own); `dh` is left 0 (h' reaches h only
    /// through the gates), `dc` goes from the gradient of c' to that of c, `da` (4h) gets the
    /// gradient of the gate pre-activations and `sum` (4h) adds it (the bias gradient).
    fn lstm_step_back(saved: &[f32], gy: &[f32], dh: &mut [f32], dc: &mut [f32], da: &mut [f32], sum: &mut [f32]) {
        let n = dh.len();
        let (gates, c_prev) = saved.split_at(4 * n);
        let (i, rest) = gates.split_at(n);
        let (f, rest) = rest.split_at(n);
        let (g, o) = rest.split_at(n);
        let (dai, rest) = da.split_at_mut(n);
        let (daf, rest) = rest.split_at_mut(n);
        let (dag, dao) = rest.split_at_mut(n);
        for j in 0..n {
            let tc = tanh(f[j] * c_prev[j] + i[j] * g[j]);
            let d = dh[j] + gy[j];
            let dcn = dc[j] + d * o[j] * (1.0 - tc * tc);
            dao[j] = d * tc * o[j] * (1.0 - o[j]);
            dai[j] = dcn * g[j] * i[j] * (1.0 - i[j]);
            daf[j] = dcn * c_prev[j] * f[j] * (1.0 - f[j]);
            dag[j] = dcn * i[j] * (1.0 - g[j] * g[j]);
            dc[j] = dcn * f[j];
            dh[j] = 0.0;
        }
        for (s, &a) in sum.iter_mut().zip(&*da) {
            *s += a;
        }
    }
}

simd_kernel! {
    /// Backward of [`gru_step`] for one sample: the gradient of h' is `dh` (from the later
    /// steps, through W_hh) plus `gy` (the output's own); `dh` becomes its direct part z∘dh'
    /// (the rest comes through W_hh); `dx` (3h) gets the gradient of the input pre-activations
    /// and `dr` (3h) that of the recurrent projection (which differ in the n block by the
    /// factor r), and `sums` adds each (the bias gradients).
    fn gru_step_back(saved: &[f32], h_prev: &[f32], gy: &[f32], dh: &mut [f32], dx: &mut [f32], dr: &mut [f32], sums: [&mut [f32]; 2]) {
        let n = dh.len();
        let (r, rest) = saved.split_at(n);
        let (z, rest) = rest.split_at(n);
        let (nn, hn) = rest.split_at(n);
        for j in 0..n {
            let d = dh[j] + gy[j];
            let dan = d * (1.0 - z[j]) * (1.0 - nn[j] * nn[j]);
            let dar = dan * hn[j] * r[j] * (1.0 - r[j]);
            let daz = d * (h_prev[j] - nn[j]) * z[j] * (1.0 - z[j]);
            dx[j] = dar;
            dx[n + j] = daz;
            dx[2 * n + j] = dan;
            dr[j] = dar;
            dr[n + j] = daz;
            dr[2 * n + j] = dan * r[j];
            dh[j] = d * z[j];
        }
        for (sum, step) in sums.into_iter().zip([&*dx, &*dr]) {
            for (s, &a) in sum.iter_mut().zip(step) {
                *s += a;
            }
        }
    }
}

/// Checks shapes and devices; returns the dimensions.
fn check(
    cfg: &RnnConfig,
    x: &Tensor,
    state: &[Tensor],
    w: &[Tensor; 2],
    b: [Option<&Tensor>; 2],
) -> Result<Dims> {
    Device::common(
        OP,
        std::iter::once(x)
            .chain(state)
            .chain(w)
            .chain(b.into_iter().flatten())
            .map(Tensor::device),
    )?;
    if x.device() != Device::Cpu {
        return Err(TfmError::device(
            OP,
            "the recurrent layers have no GPU kernel; run them on the CPU",
        ));
    }
    crate::ensure_shape!(
        x.ndim() == 3,
        OP,
        "input must be (seq_len, batch, input_size), got {}",
        shape_str(x.shape())
    );
    let (t, bsz, i) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let gates = cfg.cell.gates();
    let (w_ih, w_hh) = (&w[0], &w[1]);
    crate::ensure_shape!(
        w_hh.ndim() == 2
            && w_hh.shape()[0] % gates == 0
            && w_hh.shape()[0] == gates * w_hh.shape()[1],
        OP,
        "weight_hh must be ({gates}·hidden_size, hidden_size), got {}",
        shape_str(w_hh.shape())
    );
    let h = w_hh.shape()[1];
    crate::ensure_value!(h > 0, OP, "hidden_size must be positive");
    crate::ensure_value!(i > 0, OP, "input_size must be positive");
    let g = gates * h;
    crate::ensure_shape!(
        w_ih.shape() == [g, i],
        OP,
        "input of size {i} does not fit weight_ih {} (expected ({g}, {i}))",
        shape_str(w_ih.shape())
    );
    for bias in b.into_iter().flatten() {
        crate::ensure_shape!(
            bias.shape() == [g],
            OP,
            "biases must be ({g},), got {}",
            shape_str(bias.shape())
        );
    }
    crate::ensure_shape!(
        state.len() == cfg.cell.states(),
        OP,
        "{:?} takes {} initial state tensors, got {}",
        cfg.cell,
        cfg.cell.states(),
        state.len()
    );
    for s in state {
        crate::ensure_shape!(
            s.shape() == [bsz, h],
            OP,
            "initial states must be (batch, hidden_size) = ({bsz}, {h}), got {}",
            shape_str(s.shape())
        );
    }
    if let Some(lens) = &cfg.lengths {
        crate::ensure_shape!(
            lens.len() == bsz,
            OP,
            "lengths has {} entries for a batch of {bsz}",
            lens.len()
        );
        crate::ensure_value!(
            lens.iter().all(|&l| l <= t),
            OP,
            "lengths must not exceed the sequence length {t}, got {lens:?}"
        );
    }
    Ok(Dims { t, b: bsz, i, h, g })
}

/// What the forward kernel saves for the backward.
struct Forward {
    /// (T, B, saved·H): see [`Cell::saved`].
    saved: Vec<f32>,
    /// (T, B, H): the state each position started from.
    h_prev: Vec<f32>,
}

fn lengths(cfg: &RnnConfig, d: Dims) -> Vec<usize> {
    cfg.lengths.clone().unwrap_or_else(|| vec![d.t; d.b])
}

/// A buffer of `n` floats holding rows per position (and final states): the loops write every
/// row of a sample's valid steps and no other, so it starts zeroed only when some sample is
/// shorter than T.
fn position_rows(cfg: &RnnConfig, d: Dims, n: usize) -> Vec<f32> {
    let ragged = cfg
        .lengths
        .as_ref()
        .is_some_and(|l| l.iter().any(|&len| len < d.t));
    if ragged {
        crate::cpu::alloc::zeros(n)
    } else {
        crate::cpu::alloc::output(n)
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_kernel(
    cfg: &RnnConfig,
    d: Dims,
    x: &[f32],
    state: &[&[f32]],
    w_ih: &[f32],
    w_hh: &[f32],
    b_ih: Option<&[f32]>,
    b_hh: Option<&[f32]>,
) -> (Vec<f32>, Forward) {
    let Dims { t, b, i, h, g } = d;
    let per = cfg.cell.saved() * h;
    let lens = lengths(cfg, d);
    // The biases are added in the step kernels, where the rows are in registers anyway, rather
    // than as a GEMM epilogue (a pass over the whole (T·B, G·H) input projection).
    let zeros = vec![0.0f32; g];
    let (b_ih, b_hh) = (b_ih.unwrap_or(&zeros), b_hh.unwrap_or(&zeros));
    // The LSTM's two biases meet its gates alike; the GRU's stay apart (b_hn sits inside r∘·).
    let summed: Vec<f32> = match cfg.cell {
        Cell::Lstm => b_ih.iter().zip(b_hh).map(|(a, b)| a + b).collect(),
        Cell::Gru => Vec::new(),
    };
    let mut xg = crate::cpu::alloc::output(t * b * g);
    if t * b > 0 {
        gemm(
            1.0,
            MatRef::row_major(x, t * b, i),
            MatRef::row_major(w_ih, g, i).t(),
            0.0,
            &mut xg,
            g,
            &Epilogue::default(),
            true,
        );
    }
    let w_hh_t = PackedB::new(MatRef::row_major(w_hh, g, h).t());
    let mut y = position_rows(cfg, d, (t + cfg.cell.states()) * b * h);
    // Rows past a sample's length are neither written nor read.
    let mut saved = crate::cpu::alloc::output(t * b * per);
    let mut h_prev = position_rows(cfg, d, t * b * h);
    let out = [
        SendPtr(y.as_mut_ptr()),
        SendPtr(saved.as_mut_ptr()),
        SendPtr(h_prev.as_mut_ptr()),
    ];
    for_each_chunk(b, |b0, nb, parallel| {
        let mut hs = state[0][b0 * h..][..nb * h].to_vec();
        let (mut cs, cw) = match cfg.cell {
            Cell::Lstm => (state[1][b0 * h..][..nb * h].to_vec(), h),
            Cell::Gru => (Vec::new(), 0),
        };
        let mut hg = vec![0.0f32; nb * g];
        // From a zero state (PyTorch's default) the first step's recurrent product is zero,
        // which `hg` already holds.
        let zero_start = hs.iter().all(|&v| v == 0.0);
        for s in 0..t {
            if s > 0 || !zero_start {
                gemm_packed(
                    1.0,
                    MatRef::row_major(&hs, nb, h),
                    &w_hh_t,
                    0.0,
                    &mut hg,
                    g,
                    &Epilogue::default(),
                    parallel,
                );
            }
            let pos = positions(&lens[b0..b0 + nb], s, cfg.reverse);
            for (bi, p) in pos.iter().enumerate() {
                if let Some(tt) = p {
                    // SAFETY: row (tt, b0 + bi) of h_prev belongs to this chunk alone.
                    unsafe { out[2].slice((tt * b + b0 + bi) * h, h) }
                        .copy_from_slice(&hs[bi * h..][..h]);
                }
            }
            let items: Vec<_> = rows_mut(&mut hs, nb, h)
                .into_iter()
                .zip(rows_mut(&mut cs, nb, cw))
                .zip(&pos)
                .enumerate()
                .filter_map(|(bi, ((hr, cr), p))| {
                    // SAFETY: row (tt, b0 + bi) of `saved` belongs to this chunk alone.
                    p.map(|tt| {
                        (bi, tt, hr, cr, unsafe {
                            out[1].slice((tt * b + b0 + bi) * per, per)
                        })
                    })
                })
                .collect();
            let hg = &hg;
            rows_in(items, g, parallel, |_, (bi, tt, hr, cr, sr)| {
                let xr = &xg[(tt * b + b0 + bi) * g..][..g];
                let hgr = &hg[bi * g..][..g];
                match cfg.cell {
                    Cell::Lstm => lstm_step(xr, &summed, hgr, hr, cr, sr),
                    Cell::Gru => gru_step(xr, b_ih, hgr, b_hh, hr, sr),
                }
            });
            for (bi, p) in pos.iter().enumerate() {
                if let Some(tt) = p {
                    let at = tt * b + b0 + bi;
                    // SAFETY: rows (tt, b0 + bi) belong to this chunk alone.
                    unsafe { out[0].slice(at * h, h) }.copy_from_slice(&hs[bi * h..][..h]);
                }
            }
        }
        // SAFETY: the final-state rows b0..b0+nb belong to this chunk alone.
        unsafe { out[0].slice((t * b + b0) * h, nb * h) }.copy_from_slice(&hs);
        if cfg.cell == Cell::Lstm {
            unsafe { out[0].slice(((t + 1) * b + b0) * h, nb * h) }.copy_from_slice(&cs);
        }
    });
    crate::cpu::alloc::recycle(xg);
    (y, Forward { saved, h_prev })
}

/// Runs `f(b0, nb, parallel)` over the batch: the samples' recurrences are independent, so with
/// several threads each takes a share of the batch (at least 8 samples) through the whole time
/// loop on one thread, rather than every thread joining every step's small GEMM (two
/// synchronizations a step). One chunk (`parallel` true) when that does not apply.
fn for_each_chunk(b: usize, f: impl Fn(usize, usize, bool) + Sync) {
    let chunks = pool::threads().min(b / 8).max(1);
    if chunks == 1 {
        return f(0, b, true);
    }
    let per = b.div_ceil(chunks);
    let starts = (0..b).step_by(per).collect();
    pool::for_each(starts, |b0| f(b0, per.min(b - b0), false));
}

/// [`for_each_row`] when `parallel`, else a plain loop (a chunk already has its own thread).
fn rows_in<T: Send>(
    items: Vec<T>,
    cost: usize,
    parallel: bool,
    f: impl Fn(usize, T) + Sync + Send,
) {
    if parallel {
        for_each_row(items, cost, f);
    } else {
        items
            .into_iter()
            .enumerate()
            .for_each(|(i, item)| f(i, item));
    }
}

/// Forward: the stacked `[y; h_n]` / `[y; h_n; c_n]` (see the module doc) and the backward's
/// saved values. `state` is `[h0]` (GRU) or `[h0, c0]` (LSTM).
fn forward(
    cfg: &RnnConfig,
    x: &Tensor,
    state: &[Tensor],
    w: &[Tensor; 2],
    b: [Option<&Tensor>; 2],
) -> Result<(Tensor, Forward, Dims)> {
    let d = check(cfg, x, state, w, b)?;
    let (y, f) = forward_kernel(
        cfg,
        d,
        x.cpu(OP)?.data(),
        &state
            .iter()
            .map(|s| Ok(s.cpu(OP)?.data()))
            .collect::<Result<Vec<_>>>()?,
        w[0].cpu(OP)?.data(),
        w[1].cpu(OP)?.data(),
        Tensor::cpu_opt(OP, b[0])?,
        Tensor::cpu_opt(OP, b[1])?,
    );
    let y = Tensor::new(y, &[d.t + cfg.cell.states(), d.b, d.h])?;
    Ok((y, f, d))
}

struct RnnBackward {
    cfg: RnnConfig,
    d: Dims,
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    /// (T·B, saved·H), see [`Forward`]; a tensor so that its buffer is recycled.
    saved: Tensor,
    /// (T·B, H), see [`Forward`].
    h_prev: Tensor,
    has_bias: [bool; 2],
}

/// Gradients of the gate pre-activations at every position, from the input side and from the
/// recurrent side (the same for the LSTM), of the initial states, and of the biases (the sums
/// of the two over positions).
struct Through {
    da_x: Vec<f32>,
    da_h: Option<Vec<f32>>,
    d_state: Vec<Vec<f32>>,
    db: [Vec<f32>; 2],
}

impl RnnBackward {
    /// dW_hh (G·H, H): the sum over positions of (gate gradient)ᵀ·(state the step started
    /// from). The rows of a zero initial state (the forward direction's first step from
    /// PyTorch's default state) add nothing and are left out of the product.
    fn recurrent_weight_grad(&self, da: &[f32]) -> Result<Tensor> {
        let Dims { t, b, h, g, .. } = self.d;
        let h_prev = self.h_prev.cpu(OP)?.data();
        let zero_start = !self.cfg.reverse
            && h_prev
                .get(..b * h)
                .is_some_and(|rows| rows.iter().all(|&v| v == 0.0));
        let skip = if zero_start { b } else { 0 };
        let rows = t * b - skip;
        let mut dw = crate::cpu::alloc::output(g * h);
        gemm(
            1.0,
            MatRef::row_major(&da[skip * g..], rows, g).t(),
            MatRef::row_major(&h_prev[skip * h..], rows, h),
            0.0,
            &mut dw,
            h,
            &Epilogue::default(),
            true,
        );
        Tensor::new(dw, &[g, h])
    }

    /// Backward through time: from the gradient of the stacked result to the gate gradients;
    /// the initial hidden state's gradient only when `need_dh0` (else `d_state[0]` is partial).
    fn through_time(&self, gy: &[f32], need_dh0: bool) -> Result<Through> {
        let Dims { t, b, h, g, .. } = self.d;
        let cell = self.cfg.cell;
        let per = cell.saved() * h;
        let lens = lengths(&self.cfg, self.d);
        let w_hh = PackedB::new(MatRef::row_major(self.w_hh.cpu(OP)?.data(), g, h));
        let gw = if cell == Cell::Gru { g } else { 0 };
        let cw = if cell == Cell::Lstm { h } else { 0 };
        let mut da_x = position_rows(&self.cfg, self.d, t * b * g);
        let mut da_h = (cell == Cell::Gru).then(|| position_rows(&self.cfg, self.d, t * b * g));
        let mut d_state = vec![vec![0.0f32; b * h]; cell.states()];
        // The bias gradients are summed per sample while the rows are in cache (rather than in
        // two more passes over da), then over the samples in order, so that they do not depend
        // on how the batch is split among threads.
        let mut per_sample = [vec![0.0f32; b * g], vec![0.0f32; b * gw]];
        let out = SendPtr(da_x.as_mut_ptr());
        let out_h = da_h.as_mut().map(|v| SendPtr(v.as_mut_ptr()));
        let d_out: Vec<SendPtr<f32>> = d_state
            .iter_mut()
            .chain(&mut per_sample)
            .map(|v| SendPtr(v.as_mut_ptr()))
            .collect();
        let (saved, h_prev) = (self.saved.cpu(OP)?.data(), self.h_prev.cpu(OP)?.data());
        for_each_chunk(b, |b0, nb, parallel| {
            let mut dh = gy[(t * b + b0) * h..][..nb * h].to_vec();
            let mut dc = match cell {
                Cell::Lstm => gy[((t + 1) * b + b0) * h..][..nb * h].to_vec(),
                Cell::Gru => Vec::new(),
            };
            // When every sample of the chunk runs all T steps, a step's gate gradients are rows
            // (tt, b0..b0+nb) of da, contiguous: the kernels write them there and the GEMM
            // reads them from there. Otherwise they go through step buffers, whose rows for a
            // sample stay 0 until its first valid step (the last one in time order) and are
            // overwritten whole at every step after (so they are zeroed once), and are copied.
            let direct = nb > 0 && lens[b0..b0 + nb].iter().all(|&l| l == t);
            let step_rows = |width: usize| vec![0.0f32; if direct { 0 } else { nb * width }];
            let (mut dx_step, mut dr_step) = (step_rows(g), step_rows(gw));
            let mut sums = [vec![0.0f32; nb * g], vec![0.0f32; nb * gw]];
            for s in (0..t).rev() {
                let pos = positions(&lens[b0..b0 + nb], s, self.cfg.reverse);
                let (dxs, drs): (&mut [f32], &mut [f32]) = if direct {
                    let at = (pos[0].expect("every sample runs all steps") * b + b0) * g;
                    // SAFETY: rows (tt, b0..b0+nb) of da belong to this chunk alone.
                    unsafe {
                        (
                            out.slice(at, nb * g),
                            out_h.map_or(&mut [][..], |o| o.slice(at, nb * gw)),
                        )
                    }
                } else {
                    (&mut dx_step, &mut dr_step)
                };
                let [sum_x, sum_h] = &mut sums;
                let items: Vec<_> = rows_mut(&mut dh, nb, h)
                    .into_iter()
                    .zip(rows_mut(&mut dc, nb, cw))
                    .zip(rows_mut(dxs, nb, g))
                    .zip(rows_mut(drs, nb, gw))
                    .zip(
                        rows_mut(sum_x, nb, g)
                            .into_iter()
                            .zip(rows_mut(sum_h, nb, gw)),
                    )
                    .zip(&pos)
                    .enumerate()
                    .filter_map(|(bi, (((((dhr, dcr), dxr), drr), sr), p))| {
                        p.map(|tt| (tt * b + b0 + bi, dhr, dcr, dxr, drr, sr))
                    })
                    .collect();
                rows_in(
                    items,
                    g,
                    parallel,
                    |_, (at, dhr, dcr, dxr, drr, (sx, sh))| {
                        let sv = &saved[at * per..][..per];
                        let gyr = &gy[at * h..][..h];
                        match cell {
                            Cell::Lstm => lstm_step_back(sv, gyr, dhr, dcr, dxr, sx),
                            Cell::Gru => gru_step_back(
                                sv,
                                &h_prev[at * h..][..h],
                                gyr,
                                dhr,
                                dxr,
                                drr,
                                [sx, sh],
                            ),
                        }
                    },
                );
                let rec_in: &[f32] = if cell == Cell::Gru { drs } else { dxs };
                // dh += (gate gradients)·W_hh: a finished sample's zero rows leave its dh as is.
                // After the first step it is only the initial state's gradient.
                if s > 0 || need_dh0 {
                    gemm_packed(
                        1.0,
                        MatRef::row_major(rec_in, nb, g),
                        &w_hh,
                        1.0,
                        &mut dh,
                        h,
                        &Epilogue::default(),
                        parallel,
                    );
                }
                if direct {
                    continue;
                }
                for (bi, p) in pos.iter().enumerate() {
                    if let Some(tt) = p {
                        let at = tt * b + b0 + bi;
                        // SAFETY: row (tt, b0 + bi) belongs to this chunk alone.
                        unsafe { out.slice(at * g, g) }.copy_from_slice(&dx_step[bi * g..][..g]);
                        if let Some(out_h) = out_h {
                            unsafe { out_h.slice(at * g, g) }
                                .copy_from_slice(&dr_step[bi * g..][..g]);
                        }
                    }
                }
            }
            // SAFETY: rows b0..b0+nb of the state gradients belong to this chunk alone.
            unsafe { d_out[0].slice(b0 * h, nb * h) }.copy_from_slice(&dh);
            if cell == Cell::Lstm {
                unsafe { d_out[1].slice(b0 * h, nb * h) }.copy_from_slice(&dc);
            }
            let sum_out = &d_out[cell.states()..];
            for ((out, sum), width) in sum_out.iter().zip(&sums).zip([g, gw]) {
                // SAFETY: as above, rows b0..b0+nb of the per-sample sums.
                unsafe { out.slice(b0 * width, nb * width) }.copy_from_slice(sum);
            }
        });
        let over_samples = |rows: &[f32], width: usize| {
            let mut total = vec![0.0f32; width];
            for row in rows.chunks_exact(width.max(1)) {
                axpy(&mut total, 1.0, row);
            }
            total
        };
        let db = [
            over_samples(&per_sample[0], g),
            over_samples(&per_sample[1], gw),
        ];
        Ok(Through {
            da_x,
            da_h,
            d_state,
            db,
        })
    }
}

impl Backward for RnnBackward {
    fn name(&self) -> &'static str {
        match self.cfg.cell {
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
        }
    }

    /// Inputs: x, the states, W_ih, W_hh, then the biases present.
    fn backward(&self, gy: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let Dims { t, b, h, g, .. } = self.d;
        let ns = self.cfg.cell.states();
        let needs = |k: usize| inputs[k].requires_grad();
        let through = self.through_time(gy.cpu(OP)?.data(), needs(1))?;
        let bias_at =
            |k: usize| self.has_bias[k] && needs(ns + 3 + usize::from(self.has_bias[0] && k == 1));
        let da_x = Tensor::new(through.da_x, &[t * b, g])?;
        let (dx, dw_ih, _) = linear_backward(
            &da_x,
            &self.x,
            &self.w_ih,
            Needs {
                x: needs(0),
                w: needs(ns + 1),
                b: false,
            },
        )?;
        let da_h = match &through.da_h {
            Some(v) => v,
            None => da_x.cpu(OP)?.data(),
        };
        let dw_hh = needs(ns + 2)
            .then(|| self.recurrent_weight_grad(da_h))
            .transpose()?;
        let mut grads = vec![dx];
        for (k, d) in through.d_state.into_iter().enumerate() {
            grads.push(needs(1 + k).then(|| Tensor::new(d, &[b, h])).transpose()?);
        }
        grads.extend([dw_ih, dw_hh]);
        // The LSTM's two biases meet the gates alike, so their gradients are one sum.
        let [db_x, db_h] = through.db;
        let db_h = if self.cfg.cell == Cell::Lstm {
            db_x.clone()
        } else {
            db_h
        };
        for (k, db) in [db_x, db_h].into_iter().enumerate() {
            if self.has_bias[k] {
                grads.push(bias_at(k).then(|| Tensor::new(db, &[g])).transpose()?);
            }
        }
        Ok(grads)
    }
}

/// The layer on `Var`s: x (T, B, I), `state` = `[h0]` (GRU) or `[h0, c0]` (LSTM), each
/// (B, H) → the stacked (T + states, B, H) described in the module doc.
pub fn rnn(cfg: &RnnConfig, x: &Var, state: &[Var], w: &RnnWeights) -> Result<Var> {
    let xv = x.value();
    let sv: Vec<Tensor> = state.iter().map(Var::value).collect();
    let wv = [w.w_ih.value(), w.w_hh.value()];
    let bv = [w.b_ih.map(Var::value), w.b_hh.map(Var::value)];
    // Its GEMMs and batch chunks enter the thread pool once, together.
    let (y, f, d) = pool::parallel_if(pool::threads() > 1, || {
        forward(cfg, &xv, &sv, &wv, [bv[0].as_ref(), bv[1].as_ref()])
    })?;
    let mut inputs = vec![x.clone()];
    inputs.extend(state.iter().cloned());
    inputs.extend([w.w_ih.clone(), w.w_hh.clone()]);
    inputs.extend(w.b_ih.cloned());
    inputs.extend(w.b_hh.cloned());
    let [w_ih, w_hh] = wv;
    Ok(Var::from_op(
        y,
        inputs,
        RnnBackward {
            cfg: cfg.clone(),
            d,
            x: xv,
            w_ih,
            w_hh,
            saved: Tensor::new(f.saved, &[d.t * d.b, cfg.cell.saved() * d.h])?,
            h_prev: Tensor::new(f.h_prev, &[d.t * d.b, d.h])?,
            has_bias: [w.b_ih.is_some(), w.b_hh.is_some()],
        },
    ))
}

#[cfg(test)]
mod tests;
