//! Choosing tokens from the decoder's logits: greedy, sampling (temperature, top-k, top-p) and
//! beam search with the GNMT length penalty, plus the history-based logit processors
//! (repetition penalty, no-repeat-n-gram). [`Search`] is a state machine so that a caller can
//! stream tokens step by step; [`Search::run`] drives it to the end without leaving Rust.
//!
//! Scores are sums of log-probabilities of the processed distribution (after repetition
//! penalty and n-gram blocking, before temperature). Beam hypotheses are ranked and reported
//! by `log_prob / lp(len)` with `lp(len) = ((5 + len) / 6)^α` (Wu et al., 2016), `len`
//! counting the generated tokens including the EOS.

use super::decoder::{Decoder, Memory};
use super::weights::DecoderWeights;
use crate::cpu::pool;
use crate::error::{Result, TfmError};
use crate::ops::softmax::softmax_row_in_place;
use crate::random::{mix, uniform};
use rayon::prelude::*;
use std::cmp::Ordering;
use std::sync::Arc;

const OP: &str = "generate";

/// How to search. `num_beams > 1` is beam search; otherwise `do_sample` picks sampling over
/// greedy.
#[derive(Clone, Debug)]
pub struct SearchConfig {
    pub num_beams: usize,
    /// Hypotheses returned per input (≤ `num_beams` for beam search; independent samples when
    /// sampling; 1 for greedy).
    pub num_return_sequences: usize,
    /// GNMT's α.
    pub length_penalty: f64,
    pub do_sample: bool,
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// CTRL's penalty on tokens already in the sequence (1 = none).
    pub repetition_penalty: f32,
    /// Forbid repeating any n-gram of this size (0 = off).
    pub no_repeat_ngram_size: usize,
    pub eos: Option<u32>,
    /// Tokens never generated (their probability is 0), such as the padding id.
    pub suppress: Vec<u32>,
    /// Sampling seed; sequence `i`'s draws depend only on `(seed, i, step)`.
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            num_beams: 1,
            num_return_sequences: 1,
            length_penalty: 0.0,
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos: None,
            suppress: Vec::new(),
            seed: 0,
        }
    }
}

impl SearchConfig {
    fn validate(&self, vocab: usize) -> Result<()> {
        let fail = |m: String| Err(TfmError::value(OP, m));
        if self.num_beams == 0 {
            return fail("num_beams must be at least 1, got 0".into());
        }
        if self.num_return_sequences == 0 {
            return fail("num_return_sequences must be at least 1, got 0".into());
        }
        if self.num_beams > 1 {
            if self.do_sample {
                return fail("beam search with sampling is not supported: set do_sample=False or num_beams=1".into());
            }
            if self.num_return_sequences > self.num_beams {
                return fail(format!(
                    "num_return_sequences ({}) cannot exceed num_beams ({})",
                    self.num_return_sequences, self.num_beams
                ));
            }
        } else if !self.do_sample && self.num_return_sequences > 1 {
            return fail("greedy search returns one sequence per input: use do_sample=True or num_beams > 1 for more".into());
        }
        if !self.length_penalty.is_finite() {
            return fail(format!(
                "length_penalty must be finite, got {}",
                self.length_penalty
            ));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return fail(format!(
                "temperature must be a positive number, got {} (for deterministic output use do_sample=False)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return fail(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return fail(format!(
                "repetition_penalty must be positive, got {}",
                self.repetition_penalty
            ));
        }
        let named = self.eos.iter().map(|&e| ("eos_token_id", e));
        for (name, t) in named.chain(self.suppress.iter().map(|&t| ("suppress_tokens", t))) {
            if t as usize >= vocab {
                return Err(TfmError::index(
                    OP,
                    format!("{name} {t} is outside the vocabulary [0, {vocab})"),
                ));
            }
        }
        Ok(())
    }

    fn length_penalty(&self, len: usize) -> f64 {
        ((5.0 + len as f64) / 6.0).powf(self.length_penalty)
    }
}

/// A finished sequence: the generated tokens (ending in EOS if one was produced; the prompt is
/// not included), their total log-probability, and the score it was ranked by (`log_prob`
/// divided by the length penalty for beam search, `log_prob` otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    pub log_prob: f64,
    pub score: f64,
}

/// Suppresses `cfg.suppress`, applies the repetition penalty and n-gram blocking for a sequence with `history` (prompt
/// and generated tokens), then turns the logits into log-probabilities, in place. A row whose
/// every token is blocked becomes all −inf.
pub(super) fn log_probs(z: &mut [f32], history: &[u32], cfg: &SearchConfig) {
    for &t in &cfg.suppress {
        z[t as usize] = f32::NEG_INFINITY;
    }
    if cfg.repetition_penalty != 1.0 {
        let mut seen = vec![false; z.len()];
        for &t in history {
            let t = t as usize;
            if t < z.len() && !std::mem::replace(&mut seen[t], true) {
                let v = z[t];
                z[t] = if v < 0.0 {
                    v * cfg.repetition_penalty
                } else {
                    v / cfg.repetition_penalty
                };
            }
        }
    }
    let n = cfg.no_repeat_ngram_size;
    if n > 0 && history.len() >= n {
        let prefix = &history[history.len() + 1 - n..];
        for start in 0..=history.len() - n {
            if &history[start..start + n - 1] == prefix {
                if let Some(v) = z.get_mut(history[start + n - 1] as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    softmax_row_in_place(z, true);
}

/// The index of the largest finite entry (the first of equals), if any.
fn argmax(lp: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in lp.iter().enumerate() {
        if v > f32::NEG_INFINITY && best.is_none_or(|b| v > lp[b]) {
            best = Some(i);
        }
    }
    best
}

/// Finite entries as `(index, value)`, most likely first (ties: lower index first).
fn ranked(lp: &[f32], keep: Option<usize>) -> Vec<(usize, f32)> {
    if let Some(k) = keep.filter(|&k| k > 0 && k <= TOP_SCAN) {
        return top_k(lp, k);
    }
    let mut c: Vec<(usize, f32)> = lp
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| *v > f32::NEG_INFINITY)
        .collect();
    let order = |a: &(usize, f32), b: &(usize, f32)| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    };
    if let Some(k) = keep.filter(|&k| k > 0 && k < c.len()) {
        c.select_nth_unstable_by(k - 1, order);
        c.truncate(k);
    }
    c.sort_unstable_by(order);
    c
}

/// Up to this many entries, [`ranked`] keeps a sorted list while it scans (one pass, no copy of
/// the vocabulary); beyond, it selects and sorts a copy.
const TOP_SCAN: usize = 64;

/// The `k` largest finite entries of `lp` in [`ranked`]'s order: scanned in index order, an entry
/// equal to one already kept goes after it, so ties keep the lower index first.
fn top_k(lp: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in lp.iter().enumerate() {
        // NaN passes neither test, as it fails `ranked`'s finiteness filter.
        let above_last = best.len() < k || v > best[k - 1].1;
        if !(v.is_finite() || v == f32::INFINITY) || !above_last {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i, v));
        best.truncate(k);
    }
    best
}

/// Draws a token from `softmax(lp / T)` restricted by top-k then top-p, with `u ∈ [0, 1)`.
fn sample(lp: &[f32], cfg: &SearchConfig, u: f32) -> Option<usize> {
    let c = ranked(lp, Some(cfg.top_k));
    let top = c.first()?.1;
    let w: Vec<f64> = c
        .iter()
        .map(|&(_, v)| (((v - top) / cfg.temperature) as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut keep = w.len();
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, &wi) in w.iter().enumerate() {
            acc += wi;
            if acc >= cfg.top_p as f64 * total {
                keep = i + 1;
                break;
            }
        }
    }
    let kept: f64 = w[..keep].iter().sum();
    let target = u as f64 * kept;
    let mut acc = 0.0;
    for (i, &wi) in w[..keep].iter().enumerate() {
        acc += wi;
        if target < acc {
            return Some(c[i].0);
        }
    }
    Some(c[keep - 1].0)
}

/// One live sequence (one decoder row).
#[derive(Clone, Debug)]
struct Live {
    input: usize,
    /// Which of the input's `num_return_sequences` samples this is (sampling only).
    sample: usize,
    history: Vec<u32>,
    prompt_len: usize,
    log_prob: f64,
}

impl Live {
    fn generated(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }
}

/// A generation in progress over a batch of inputs.
pub struct Search {
    decoder: Decoder,
    cfg: SearchConfig,
    live: Vec<Live>,
    /// What each row feeds at the next step: its prompt first, then its last token.
    pending: Vec<Vec<u32>>,
    max_new: Vec<usize>,
    /// Per input: the finished hypotheses (beam search: the pool until the input is done).
    finished: Vec<Vec<Hypothesis>>,
    steps: usize,
}

impl Search {
    /// Starts a search over `prompts` (one per input; the encoder-decoder's is `[BOS]`), at
    /// most `max_new[i]` new tokens for input `i`, with `memory` for an encoder-decoder (input
    /// `i` attends to source `i`).
    pub fn new(
        weights: Arc<DecoderWeights>,
        memory: Option<Arc<Memory>>,
        prompts: Vec<Vec<u32>>,
        max_new: Vec<usize>,
        cfg: SearchConfig,
    ) -> Result<Search> {
        cfg.validate(weights.vocab())?;
        if prompts.len() != max_new.len() {
            return Err(TfmError::shape(
                OP,
                format!(
                    "{} prompts but {} length limits",
                    prompts.len(),
                    max_new.len()
                ),
            ));
        }
        if let Some(m) = &memory {
            if m.num_sources() != prompts.len() {
                return Err(TfmError::shape(
                    OP,
                    format!(
                        "{} prompts for {} source sentences",
                        prompts.len(),
                        m.num_sources()
                    ),
                ));
            }
        }
        for (i, (p, &m)) in prompts.iter().zip(&max_new).enumerate() {
            if p.is_empty() {
                return Err(TfmError::value(
                    OP,
                    format!("prompt {i} is empty: it needs at least one token"),
                ));
            }
            if let Some(&t) = p.iter().find(|&&t| t as usize >= weights.input_vocab()) {
                return Err(TfmError::index(
                    OP,
                    format!(
                        "prompt {i} holds token id {t}, outside the vocabulary [0, {})",
                        weights.input_vocab()
                    ),
                ));
            }
            // The last new token is never fed back, so P + N − 1 positions are needed.
            if p.len() > weights.max_len() || (m > 0 && p.len() + m - 1 > weights.max_len()) {
                return Err(TfmError::value(
                    OP,
                    format!(
                        "prompt {i} has {} tokens; with {m} new tokens it needs {} positions, but the model has max_len={}",
                        p.len(),
                        p.len() + m.saturating_sub(1),
                        weights.max_len()
                    ),
                ));
            }
        }
        let copies = if cfg.do_sample {
            cfg.num_return_sequences
        } else {
            1
        };
        let mut live = Vec::new();
        let mut finished = vec![Vec::new(); prompts.len()];
        for (input, p) in prompts.iter().enumerate() {
            if max_new[input] == 0 {
                let empty = Hypothesis {
                    tokens: vec![],
                    log_prob: 0.0,
                    score: 0.0,
                };
                finished[input] = vec![empty; cfg.num_return_sequences];
                continue;
            }
            for sample in 0..copies {
                live.push(Live {
                    input,
                    sample,
                    history: p.clone(),
                    prompt_len: p.len(),
                    log_prob: 0.0,
                });
            }
        }
        if cfg.num_beams == 1 {
            for (input, f) in finished.iter_mut().enumerate() {
                if max_new[input] > 0 {
                    // Slots filled as each sequence finishes, so results keep sample order.
                    let slot = Hypothesis {
                        tokens: vec![],
                        log_prob: f64::NAN,
                        score: f64::NAN,
                    };
                    *f = vec![slot; copies];
                }
            }
        }
        let sources: Vec<usize> = live.iter().map(|l| l.input).collect();
        let decoder = Decoder::new(weights, memory, &sources)?;
        let pending = live.iter().map(|l| l.history.clone()).collect();
        Ok(Search {
            decoder,
            cfg,
            live,
            pending,
            max_new,
            finished,
            steps: 0,
        })
    }

    /// Advances every live sequence by one token. Returns `None` once the search is over;
    /// otherwise the `(input, sample, token)` choices of this step (greedy and sampling; beam
    /// search returns none, since no token is final before the search ends).
    pub fn step(&mut self) -> Result<Option<Vec<(usize, usize, u32)>>> {
        if self.live.is_empty() {
            return Ok(None);
        }
        let mut lp = self.decoder.feed(&self.pending)?;
        let v = self.decoder.weights().vocab();
        let cfg = &self.cfg;
        let live = &self.live;
        pool::parallel(|| {
            lp.par_chunks_mut(v)
                .zip(live)
                .for_each(|(z, l)| log_probs(z, &l.history, cfg))
        });
        self.steps += 1;
        if self.cfg.num_beams > 1 {
            self.beam_step(&lp, v)?;
            Ok(Some(Vec::new()))
        } else {
            self.token_step(&lp, v).map(Some)
        }
    }

    fn token_step(&mut self, lp: &[f32], v: usize) -> Result<Vec<(usize, usize, u32)>> {
        let (cfg, steps) = (&self.cfg, self.steps as u64);
        let live = &self.live;
        let choices: Vec<Option<usize>> = pool::parallel(|| {
            lp.par_chunks(v)
                .zip(live)
                .map(|(row, l)| {
                    if cfg.do_sample {
                        let seq = (l.input * cfg.num_return_sequences + l.sample) as u64;
                        let seed = mix(cfg.seed ^ mix(seq.wrapping_add(1)));
                        sample(row, cfg, uniform(seed, steps))
                    } else {
                        argmax(row)
                    }
                })
                .collect()
        });
        let mut emitted = Vec::new();
        let mut keep = Vec::new();
        for (r, choice) in choices.into_iter().enumerate() {
            let l = &mut self.live[r];
            let mut ended = true;
            if let Some(t) = choice {
                l.log_prob += lp[r * v + t] as f64;
                l.history.push(t as u32);
                emitted.push((l.input, l.sample, t as u32));
                ended =
                    self.cfg.eos == Some(t as u32) || l.generated().len() >= self.max_new[l.input];
            }
            if ended {
                let h = Hypothesis {
                    tokens: l.generated().to_vec(),
                    log_prob: l.log_prob,
                    score: l.log_prob,
                };
                self.finished[l.input][l.sample] = h;
            } else {
                keep.push(r);
            }
        }
        self.retain(&keep)?;
        Ok(emitted)
    }

    /// Keeps rows `parents` (in that order) as the new live set; each feeds its last token.
    fn retain(&mut self, parents: &[usize]) -> Result<()> {
        self.decoder.reorder(parents)?;
        self.live = parents.iter().map(|&p| self.live[p].clone()).collect();
        self.pending = self
            .live
            .iter()
            .map(|l| vec![*l.history.last().expect("a live row has tokens")])
            .collect();
        Ok(())
    }

    fn beam_step(&mut self, lp: &[f32], v: usize) -> Result<()> {
        let k = self.cfg.num_beams;
        let n = self.cfg.num_return_sequences;
        let eos = self.cfg.eos;
        let mut parents = Vec::new();
        let mut next: Vec<Live> = Vec::new();
        // Each row's 2k best continuations, rows in parallel (they are independent).
        let tops: Vec<Vec<(usize, f32)>> = pool::parallel(|| {
            lp.par_chunks(v)
                .map(|row| ranked(row, Some(2 * k)))
                .collect()
        });
        // Rows are grouped by input, in input order.
        let mut start = 0;
        while start < self.live.len() {
            let input = self.live[start].input;
            let end = start
                + self.live[start..]
                    .iter()
                    .take_while(|l| l.input == input)
                    .count();
            // The 2k best continuations of the group: enough to find k that do not end.
            let mut cand: Vec<(f64, usize, usize)> = Vec::new();
            for (r, top) in tops.iter().enumerate().take(end).skip(start) {
                for &(t, l) in top {
                    cand.push((self.live[r].log_prob + l as f64, r, t));
                }
            }
            cand.sort_by(|a, b| {
                b.0.partial_cmp(&a.0)
                    .unwrap_or(Ordering::Equal)
                    .then((a.1, a.2).cmp(&(b.1, b.2)))
            });
            cand.truncate(2 * k);
            let len = self.live[start].generated().len() + 1;
            let mut beams = Vec::new();
            for (rank, &(score, r, t)) in cand.iter().enumerate() {
                if beams.len() == k {
                    break;
                }
                if eos == Some(t as u32) {
                    // An EOS outside the top k would displace a better hypothesis; skip it.
                    if rank < k {
                        let mut tokens = self.live[r].generated().to_vec();
                        tokens.push(t as u32);
                        let score_lp = score / self.cfg.length_penalty(len);
                        self.finished[input].push(Hypothesis {
                            tokens,
                            log_prob: score,
                            score: score_lp,
                        });
                    }
                } else {
                    beams.push((score, r, t));
                }
            }
            let max_new = self.max_new[input];
            let pool = &mut self.finished[input];
            let done = if beams.is_empty() {
                true
            } else if len >= max_new {
                for &(score, r, t) in &beams {
                    let mut tokens = self.live[r].generated().to_vec();
                    tokens.push(t as u32);
                    pool.push(Hypothesis {
                        tokens,
                        log_prob: score,
                        score: score / self.cfg.length_penalty(len),
                    });
                }
                true
            } else if pool.len() >= n {
                pool.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal));
                // The best any live beam can still reach: its log-probability only falls, and
                // over the lengths it may end at, len + 1 ..= max_new, the penalty divides it
                // least (α ≥ 0: at max_new) or most (α < 0: at len + 1).
                let best = beams[0].0;
                let at = if self.cfg.length_penalty >= 0.0 {
                    max_new
                } else {
                    len + 1
                };
                best / self.cfg.length_penalty(at) <= pool[n - 1].score
            } else {
                false
            };
            if done {
                pool.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal));
                pool.truncate(n);
            } else {
                for (score, r, t) in beams {
                    let mut l = self.live[r].clone();
                    l.history.push(t as u32);
                    l.log_prob = score;
                    parents.push(r);
                    next.push(l);
                }
            }
            start = end;
        }
        self.decoder.reorder(&parents)?;
        self.pending = next
            .iter()
            .map(|l| vec![*l.history.last().expect("a beam has tokens")])
            .collect();
        self.live = next;
        Ok(())
    }

    /// Runs the search to the end.
    pub fn run(mut self) -> Result<Vec<Vec<Hypothesis>>> {
        while self.step()?.is_some() {}
        Ok(self.finish())
    }

    /// The hypotheses per input, best first for beam search, in sample order when sampling.
    /// Only meaningful once [`Search::step`] has returned `None`.
    pub fn finish(self) -> Vec<Vec<Hypothesis>> {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::rand_vec;

    /// The one-pass top-k equals the sorted list's first k, ties (many equal values), −∞ and NaN
    /// included, for k below, at and above the number of finite entries.
    #[test]
    fn top_k_equals_the_sorted_prefix() {
        for (seed, n) in [(1u64, 1usize), (2, 3), (3, 17), (4, 127), (5, 8000)] {
            let mut lp: Vec<f32> = rand_vec(seed, n, -4.0, 0.0)
                .into_iter()
                .map(|v| (v * 4.0).round() / 4.0)
                .collect();
            for i in (0..n).step_by(5) {
                lp[i] = f32::NEG_INFINITY;
            }
            for i in (2..n).step_by(11) {
                lp[i] = f32::NAN;
            }
            let sorted = ranked(&lp, None);
            for k in [1, 2, 8, 64] {
                let want = &sorted[..k.min(sorted.len())];
                assert_eq!(top_k(&lp, k), want, "n={n} k={k}");
            }
        }
    }
}
