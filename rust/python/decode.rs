//! Decoding bindings: `DecoderWeights` (built once per call from a model's tensors, sharing
//! their storage), `Decoder` (one step at a time with a KV cache, for tests and custom
//! searches), `Search` (a generation that can be stepped, for streaming) and `generate`
//! (a whole generation in one call). `tfm_rs.decode` builds the arguments from models.

use super::convert::{host_tensor_from_py, tensor_to_numpy};
use super::quantization::PyQuantizedWeight;
use super::runtime::run_pooled;
use crate::decode::{self, DecoderWeights, Hypothesis, Memory, NormKind, SearchConfig};
use crate::error::TfmError;
use crate::ops::activation::ActivationKind;
use crate::tensor::{CpuTensor, Tensor};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

const OP: &str = "decode";

fn item<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?
        .ok_or_else(|| TfmError::value(OP, format!("decoder spec is missing {key:?}")).into())
}

/// A weight or the encoder's memory on the host: the decoder runs on the CPU, so the values of
/// a model moved to the GPU are downloaded here.
fn host_tensor(obj: &Bound<'_, PyAny>) -> PyResult<CpuTensor> {
    host_tensor_from_py(obj, OP)
}

fn opt_tensor(obj: &Bound<'_, PyAny>) -> PyResult<Option<CpuTensor>> {
    if obj.is_none() {
        Ok(None)
    } else {
        Ok(Some(host_tensor(obj)?))
    }
}

/// `(weight, bias or None)` → a linear layer; the weight a tensor or a `QuantizedWeight`.
fn linear(obj: &Bound<'_, PyAny>) -> PyResult<decode::Linear> {
    let (w, b): (Bound<PyAny>, Bound<PyAny>) = obj.extract()?;
    let weight = match w.cast::<PyQuantizedWeight>() {
        Ok(q) => decode::Weight::Int8(Arc::clone(&q.get().inner)),
        Err(_) => decode::Weight::F32(host_tensor(&w)?),
    };
    Ok(decode::Linear {
        weight,
        bias: opt_tensor(&b)?,
    })
}

/// `(weight or None, bias or None)` → LayerNorm parameters.
fn norm(obj: &Bound<'_, PyAny>) -> PyResult<decode::Norm> {
    let (w, b): (Bound<PyAny>, Bound<PyAny>) = obj.extract()?;
    Ok(decode::Norm {
        weight: opt_tensor(&w)?,
        bias: opt_tensor(&b)?,
    })
}

fn optional<T>(
    obj: Bound<'_, PyAny>,
    f: impl Fn(&Bound<'_, PyAny>) -> PyResult<T>,
) -> PyResult<Option<T>> {
    if obj.is_none() {
        Ok(None)
    } else {
        f(&obj).map(Some)
    }
}

/// `{"inv_freq", "max_len", "kv_heads"}` → the Llama parts of a decoder.
fn llama_parts(d: &Bound<'_, PyDict>) -> PyResult<decode::LlamaParts> {
    Ok(decode::LlamaParts {
        inv_freq: item(d, "inv_freq")?.extract()?,
        max_len: item(d, "max_len")?.extract()?,
        kv_heads: item(d, "kv_heads")?.extract()?,
    })
}

/// The weights of a decoder stack, shared (not copied) with the tensors they came from.
#[pyclass(name = "DecoderWeights", module = "tfm_rs._core", frozen)]
pub struct PyDecoderWeights {
    inner: Arc<DecoderWeights>,
}

#[pymethods]
impl PyDecoderWeights {
    /// DecoderWeights(spec): `spec` is a dict with `head_dim`, `norm_first`, `activation`
    /// ("relu", "gelu", "gelu_tanh", "silu"), `eps`, `norm` ("layer", "rms", or "affine": `x·weight + bias`, an eval-mode batch norm folded), `embed`, `embed_scale`, `positions`, `layers`
    /// (dicts of `attention` (optional: "dense", "linear" (a recurrent state) or `("window", left,
    /// global)` (a rolling cache)), `self_heads`, `cross_heads` (head counts, which may differ per layer after
    /// pruning), `self_in`, `self_out`, `cross_in`, `cross_out`, `ff1`, `ff2` as `(weight,
    /// bias)` and `norm_self`, `norm_cross`, `norm_ff` as `(weight, bias)`; the cross entries
    /// None without cross-attention), `final_norm` (or None) and `head` `(weight, bias)`.
    /// `positions` is None for a Llama-family decoder, which instead has `llama`: a dict of
    /// `inv_freq` (the rotary frequencies, `head_dim/2` floats), `max_len` and `kv_heads`; its
    /// `self_in` stacks q, k, v (`H·dh + 2·H_kv·dh` rows) and `ff1` gate and up (SwiGLU).
    #[new]
    fn new(spec: &Bound<'_, PyDict>) -> PyResult<Self> {
        let activation = match item(spec, "activation")?.extract::<String>()?.as_str() {
            "relu" => ActivationKind::Relu,
            "gelu" => ActivationKind::Gelu,
            "gelu_tanh" => ActivationKind::GeluTanh,
            "silu" => ActivationKind::Silu,
            other => {
                return Err(TfmError::value(
                    OP,
                    format!("activation must be relu, gelu, gelu_tanh or silu, got {other:?}"),
                )
                .into())
            }
        };
        let mut layers = Vec::new();
        for layer in item(spec, "layers")?.try_iter()? {
            let l = layer?;
            let l = l.cast::<PyDict>()?;
            let cross_in = optional(item(l, "cross_in")?, linear)?;
            let cross_out = optional(item(l, "cross_out")?, linear)?;
            let cross_heads: Option<usize> = item(l, "cross_heads")?.extract()?;
            // `attention`: absent (Llama's spec) or "dense", "linear", or ("window", left, global).
            let attention = match l.get_item("attention")? {
                None => decode::SelfAttention::Dense,
                Some(a) => match a.extract::<(String, usize, usize)>() {
                    Ok((kind, left, global)) if kind == "window" => {
                        decode::SelfAttention::Window(decode::Window { left, global })
                    }
                    _ => match a.extract::<String>()?.as_str() {
                        "dense" => decode::SelfAttention::Dense,
                        "linear" => decode::SelfAttention::Linear,
                        other => {
                            return Err(TfmError::value(
                                OP,
                                format!("unknown self-attention {other:?}; expected \"dense\", \"linear\" or (\"window\", left, global)"),
                            )
                            .into())
                        }
                    },
                },
            };
            layers.push(decode::Layer {
                attention,
                self_heads: item(l, "self_heads")?.extract()?,
                cross_heads: cross_heads.unwrap_or(0),
                self_in: linear(&item(l, "self_in")?)?,
                self_out: linear(&item(l, "self_out")?)?,
                cross: cross_in.zip(cross_out),
                norm_self: norm(&item(l, "norm_self")?)?,
                norm_cross: optional(item(l, "norm_cross")?, norm)?,
                norm_ff: norm(&item(l, "norm_ff")?)?,
                ff1: linear(&item(l, "ff1")?)?,
                ff2: linear(&item(l, "ff2")?)?,
            });
        }
        let w = DecoderWeights {
            head_dim: item(spec, "head_dim")?.extract()?,
            norm_first: item(spec, "norm_first")?.extract()?,
            activation,
            eps: item(spec, "eps")?.extract()?,
            norm: match item(spec, "norm")?.extract::<String>()?.as_str() {
                "layer" => NormKind::Layer,
                "rms" => NormKind::Rms,
                "affine" => NormKind::Affine,
                other => {
                    return Err(TfmError::value(
                        OP,
                        format!("norm must be layer, rms or affine, got {other:?}"),
                    )
                    .into())
                }
            },
            embed: host_tensor(&item(spec, "embed")?)?,
            embed_scale: item(spec, "embed_scale")?.extract()?,
            positions: optional(item(spec, "positions")?, host_tensor)?,
            layers,
            final_norm: optional(item(spec, "final_norm")?, norm)?,
            head: linear(&item(spec, "head")?)?,
            llama: match spec.get_item("llama")? {
                Some(l) if !l.is_none() => Some(llama_parts(l.cast::<PyDict>()?)?),
                _ => None,
            },
        };
        w.validate()?;
        Ok(PyDecoderWeights { inner: Arc::new(w) })
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab()
    }

    #[getter]
    fn max_len(&self) -> usize {
        self.inner.max_len()
    }
}

/// The encoder output `(B, S, d)` and its padding mask `(B, S)` (True = pad) → cross-attention
/// keys and values for every layer.
fn memory(
    py: Python<'_>,
    w: &Arc<DecoderWeights>,
    memory: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Arc<Memory>>> {
    let Some(memory) = memory.filter(|m| !m.is_none()) else {
        return Ok(None);
    };
    let mem = host_tensor(memory)?;
    let &[b, s, _] = mem.shape() else {
        return Err(TfmError::shape(
            OP,
            format!(
                "memory must be (batch, src_len, d_model), got {:?}",
                mem.shape()
            ),
        )
        .into());
    };
    let pad: Vec<bool> = match mask.filter(|m| !m.is_none()) {
        None => vec![false; b * s],
        Some(m) => {
            let arr = py.import("numpy")?.call_method1("asarray", (m, "bool"))?;
            let arr = arr.cast::<PyUntypedArray>()?;
            if arr.shape() != [b, s] {
                return Err(TfmError::shape(
                    OP,
                    format!(
                        "memory_key_padding_mask must be ({b}, {s}), got {:?}",
                        arr.shape()
                    ),
                )
                .into());
            }
            let arr = arr.cast::<PyArrayDyn<bool>>()?;
            let ro = arr
                .try_readonly()
                .map_err(|e| TfmError::value(OP, e.to_string()))?;
            ro.as_array().iter().copied().collect()
        }
    };
    let w = Arc::clone(w);
    Ok(Some(Arc::new(run_pooled(py, move || {
        Memory::new(&w, mem.data(), &pad, b, s)
    })?)))
}

/// Step-by-step decoding with a key/value cache.
#[pyclass(name = "Decoder", module = "tfm_rs._core")]
pub struct PyDecoder {
    inner: decode::Decoder,
}

#[pymethods]
impl PyDecoder {
    /// Decoder(weights, rows, memory=None, memory_key_padding_mask=None, sources=None): `rows`
    /// empty sequences; with memory, row `i` attends to source `sources[i]` (default `i`).
    #[new]
    #[pyo3(signature = (weights, rows, memory = None, memory_key_padding_mask = None, sources = None))]
    fn new(
        py: Python<'_>,
        weights: &PyDecoderWeights,
        rows: usize,
        memory: Option<&Bound<'_, PyAny>>,
        memory_key_padding_mask: Option<&Bound<'_, PyAny>>,
        sources: Option<Vec<usize>>,
    ) -> PyResult<Self> {
        let mem = self::memory(py, &weights.inner, memory, memory_key_padding_mask)?;
        let sources = sources.unwrap_or_else(|| {
            if mem.is_some() {
                (0..rows).collect()
            } else {
                vec![0; rows]
            }
        });
        if sources.len() != rows {
            return Err(
                TfmError::shape(OP, format!("{} sources for {rows} rows", sources.len())).into(),
            );
        }
        Ok(PyDecoder {
            inner: decode::Decoder::new(Arc::clone(&weights.inner), mem, &sources)?,
        })
    }

    /// feed(tokens): appends `tokens[r]` (a list of ids) to each row and returns the logits
    /// after each row's last new token, a float32 array `(rows, vocab)`.
    fn feed<'py>(&mut self, py: Python<'py>, tokens: Vec<Vec<u32>>) -> PyResult<Bound<'py, PyAny>> {
        let (rows, v) = (self.inner.num_rows(), self.inner.weights().vocab());
        let inner = &mut self.inner;
        let logits = run_pooled(py, move || inner.feed(&tokens))?;
        tensor_to_numpy(py, Tensor::new(logits, &[rows, v])?)
    }

    /// reorder(parents): row `i` becomes a copy of old row `parents[i]`.
    fn reorder(&mut self, parents: Vec<usize>) -> PyResult<()> {
        Ok(self.inner.reorder(&parents)?)
    }

    #[getter]
    fn num_rows(&self) -> usize {
        self.inner.num_rows()
    }
}

/// The search settings, as the dict `tfm_rs.decode` builds.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Config {
    num_beams: usize,
    num_return_sequences: usize,
    length_penalty: f64,
    do_sample: bool,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    no_repeat_ngram_size: usize,
    eos_token_id: Option<u32>,
    suppress_tokens: Vec<u32>,
    /// None draws one from tfm_rs's generator (so `manual_seed` makes sampling repeatable).
    seed: Option<u64>,
}

impl From<Config> for SearchConfig {
    fn from(c: Config) -> Self {
        SearchConfig {
            num_beams: c.num_beams,
            num_return_sequences: c.num_return_sequences,
            length_penalty: c.length_penalty,
            do_sample: c.do_sample,
            temperature: c.temperature,
            top_k: c.top_k,
            top_p: c.top_p,
            repetition_penalty: c.repetition_penalty,
            no_repeat_ngram_size: c.no_repeat_ngram_size,
            eos: c.eos_token_id,
            suppress: c.suppress_tokens,
            seed: c.seed.unwrap_or_else(crate::random::next_seed),
        }
    }
}

type PyHypothesis = (Vec<u32>, f64, f64);

fn hypotheses(results: Vec<Vec<Hypothesis>>) -> Vec<Vec<PyHypothesis>> {
    results
        .into_iter()
        .map(|hs| {
            hs.into_iter()
                .map(|h| (h.tokens, h.log_prob, h.score))
                .collect()
        })
        .collect()
}

fn start(
    py: Python<'_>,
    weights: &PyDecoderWeights,
    prompts: Vec<Vec<u32>>,
    max_new: Vec<usize>,
    config: Config,
    memory: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<decode::Search> {
    let mem = self::memory(py, &weights.inner, memory, mask)?;
    let w = Arc::clone(&weights.inner);
    run_pooled(py, move || {
        decode::Search::new(w, mem, prompts, max_new, config.into())
    })
}

/// A generation that advances one token per `step()` (streaming).
#[pyclass(name = "Search", module = "tfm_rs._core")]
pub struct PySearch {
    inner: Option<decode::Search>,
}

#[pymethods]
impl PySearch {
    /// Search(weights, prompts, max_new, config, memory=None, memory_key_padding_mask=None).
    #[new]
    #[pyo3(signature = (weights, prompts, max_new, config, memory = None, memory_key_padding_mask = None))]
    fn new(
        py: Python<'_>,
        weights: &PyDecoderWeights,
        prompts: Vec<Vec<u32>>,
        max_new: Vec<usize>,
        config: Config,
        memory: Option<&Bound<'_, PyAny>>,
        memory_key_padding_mask: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(PySearch {
            inner: Some(start(
                py,
                weights,
                prompts,
                max_new,
                config,
                memory,
                memory_key_padding_mask,
            )?),
        })
    }

    /// One step: a list of `(input, sample, token)` chosen now (empty for beam search), or
    /// None when the search is over.
    fn step(&mut self, py: Python<'_>) -> PyResult<Option<Vec<(usize, usize, u32)>>> {
        let search = self
            .inner
            .as_mut()
            .ok_or_else(|| TfmError::value("generate", "this search has already been finished"))?;
        run_pooled(py, move || search.step())
    }

    /// The results per input, as lists of `(tokens, log_prob, score)`; ends the search.
    fn finish(&mut self) -> PyResult<Vec<Vec<PyHypothesis>>> {
        let search = self
            .inner
            .take()
            .ok_or_else(|| TfmError::value("generate", "this search has already been finished"))?;
        Ok(hypotheses(search.finish()))
    }
}

/// generate(weights, prompts, max_new, config, memory=None, memory_key_padding_mask=None):
/// a whole search in Rust; per input, a list of `(tokens, log_prob, score)`.
#[pyfunction]
#[pyo3(signature = (weights, prompts, max_new, config, memory = None, memory_key_padding_mask = None))]
fn generate(
    py: Python<'_>,
    weights: &PyDecoderWeights,
    prompts: Vec<Vec<u32>>,
    max_new: Vec<usize>,
    config: Config,
    memory: Option<&Bound<'_, PyAny>>,
    memory_key_padding_mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<Vec<PyHypothesis>>> {
    let search = start(
        py,
        weights,
        prompts,
        max_new,
        config,
        memory,
        memory_key_padding_mask,
    )?;
    Ok(hypotheses(run_pooled(py, move || search.run())?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDecoderWeights>()?;
    m.add_class::<PyDecoder>()?;
    m.add_class::<PySearch>()?;
    m.add_function(wrap_pyfunction!(generate, m)?)?;
    Ok(())
}
