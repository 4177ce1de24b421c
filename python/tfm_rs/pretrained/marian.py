"""Marian checkpoints in Hugging Face's layout (``MarianMTModel``) ↔
:class:`tfm_rs.models.Seq2SeqTransformer`.

Both are the post-LN Transformer of Vaswani et al.: token embeddings scaled by ``√d_model``
(``scale_embedding``), fixed sinusoidal positions, no embedding LayerNorm, no final LayerNorm,
LayerNorm ε = 1e-5 (Marian's is fixed). Name mapping (``{E}`` = ``model.encoder.layers.{i}``,
``{D}`` = ``model.decoder.layers.{i}``; our side under ``transformer.``)::

    model.shared                            src_embed (= tgt_embed = generator, share_embeddings)
    model.encoder / decoder.embed_tokens    src_embed / tgt_embed  (share_encoder_decoder_embeddings=false)
    lm_head / final_logits_bias             generator.weight / .bias  (tie_word_embeddings=false)
    {E}.self_attn.{q,k,v}_proj  (stacked)   encoder.layers.{i}.self_attn.in_proj_*
    {E}.self_attn.out_proj                  encoder.layers.{i}.self_attn.out_proj
    {E}.self_attn_layer_norm / fc1 / fc2 / final_layer_norm    norm1 / linear1 / linear2 / norm2
    {D}.self_attn.* / self_attn_layer_norm                     decoder.layers.{i}.self_attn.* / norm1
    {D}.encoder_attn.* / encoder_attn_layer_norm               multihead_attn.* / norm2
    {D}.fc1 / fc2 / final_layer_norm                           linear1 / linear2 / norm3

The two sinusoidal tables hold the same values in a different order: ours interleaves
(``sin`` at even features, ``cos`` at odd ones), Marian's puts every ``sin`` first, then every
``cos``. Every operation on the residual stream (LayerNorm, the projections into and out of it,
the embeddings) commutes with a fixed permutation of its features, so the weights are converted
by permuting their ``d_model`` axes: the model computes the same logits, and its hidden states
are Marian's with the features in our order (:func:`marian_order`).

opus-mt's conventions load: ``swish`` is SiLU, ``decoder_start_token_id == pad_token_id``
makes the model's ``bos_id`` its ``pad_id`` (the first decoder position is then a token), and
the SentencePiece files that stand in for ``tokenizer.json`` are the model's tokenizer
(:mod:`tfm_rs.pretrained.marian_tokenizer`).
Refused (with :class:`UnsupportedConfigError`): ``scale_embedding=false``, different encoder and
decoder head counts or feed-forward widths, an activation we lack, shared embeddings with an
untied ``lm_head``, and a tied ``lm_head`` with a non-zero ``final_logits_bias``. Saving refuses pre-LN
models, other norms, reduced embeddings or layers (:func:`check_standard`), and ``layer_norm_eps``
other than 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np

from tfm_rs.nn.positional import sinusoidal_table
from tfm_rs.pretrained.errors import UnsupportedConfigError, WeightsMismatchError
from tfm_rs.pretrained.hf import (
    HF_ACTIVATIONS,
    TFM_ACTIVATIONS,
    Rule,
    TensorIndex,
    check_standard,
    checkpoint_dir,
    config_value,
    dropout_value,
    expect_shapes,
    hf_tensors,
    linear_rules,
    load_tokenizer,
    load_weights,
    read_config,
    write_checkpoint,
)
from tfm_rs.pretrained.marian_tokenizer import MarianTokenizer, load_marian_tokenizer

__all__ = ["load_marian", "marian_order", "marian_rules", "save_marian"]

OWNER = "Seq2SeqTransformer.from_pretrained"
SAVER = "Seq2SeqTransformer.save_pretrained"
LAYER_NORM_EPS = 1e-5  # Marian's nn.LayerNorm default, not configurable there
# No tensor holds the sinusoidal tables, so nothing in the checkpoint bounds their length; this
# does (the published Marian models have 512).
MAX_POSITIONS = 1 << 16
_POSITIONS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")
# Flags of older Marian configurations (BART-style options) and the value Marian's model has.
_FIXED = {"normalize_before": False, "normalize_embedding": False, "add_final_layer_norm": False,
          "static_position_embeddings": True, "add_bias_logits": False}
# The axis of each of our tensors that lies in the residual stream (None: none does).
_RESIDUAL_AXIS = {"in_proj_weight": 1, "in_proj_bias": None, "out_proj.weight": 0, "out_proj.bias": 0,
                  "linear1.weight": 1, "linear1.bias": None, "linear2.weight": 0, "linear2.bias": 0,
                  "embed.weight": 1, "generator.weight": 1, "generator.bias": None}


def marian_order(d_model: int) -> np.ndarray:
    """Marian's feature ``k`` is our feature ``marian_order(d)[k]``: our even features (the
    ``sin`` ones) first, then the odd ones (``cos``)."""
    return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


def _attention(hf: str, ours: str) -> List[Rule]:
    qkv = [f"{hf}.{n}_proj" for n in ("q", "k", "v")]
    return [Rule(f"{ours}.in_proj_weight", tuple(f"{n}.weight" for n in qkv), "concat"),
            Rule(f"{ours}.in_proj_bias", tuple(f"{n}.bias" for n in qkv), "concat"),
            *linear_rules(f"{hf}.out_proj", f"{ours}.out_proj")]


def marian_rules(enc_layers: int, dec_layers: int, shared: bool, tied: bool) -> List[Rule]:
    if shared:
        rules = [Rule("src_embed.weight", ("model.shared.weight",))]
    else:
        rules = [Rule("src_embed.weight", ("model.encoder.embed_tokens.weight",)),
                 Rule("tgt_embed.weight", ("model.decoder.embed_tokens.weight",))]
    if not tied:
        rules += [Rule("generator.weight", ("lm_head.weight",)),
                  Rule("generator.bias", ("final_logits_bias",), "row")]
    for i in range(enc_layers):
        hf, ours = f"model.encoder.layers.{i}", f"transformer.encoder.layers.{i}"
        rules += [*_attention(f"{hf}.self_attn", f"{ours}.self_attn"),
                  *linear_rules(f"{hf}.self_attn_layer_norm", f"{ours}.norm1"),
                  *linear_rules(f"{hf}.fc1", f"{ours}.linear1"), *linear_rules(f"{hf}.fc2", f"{ours}.linear2"),
                  *linear_rules(f"{hf}.final_layer_norm", f"{ours}.norm2")]
    for i in range(dec_layers):
        hf, ours = f"model.decoder.layers.{i}", f"transformer.decoder.layers.{i}"
        rules += [*_attention(f"{hf}.self_attn", f"{ours}.self_attn"),
                  *linear_rules(f"{hf}.self_attn_layer_norm", f"{ours}.norm1"),
                  *_attention(f"{hf}.encoder_attn", f"{ours}.multihead_attn"),
                  *linear_rules(f"{hf}.encoder_attn_layer_norm", f"{ours}.norm2"),
                  *linear_rules(f"{hf}.fc1", f"{ours}.linear1"), *linear_rules(f"{hf}.fc2", f"{ours}.linear2"),
                  *linear_rules(f"{hf}.final_layer_norm", f"{ours}.norm3")]
    return rules


def _residual_axis(name: str) -> Any:
    if ".norm" in name:
        return 0
    for suffix, axis in _RESIDUAL_AXIS.items():
        if name.endswith(suffix):
            return axis
    raise UnsupportedConfigError(f"{SAVER}: no Marian equivalent of the tensor {name}")


def _reorder(state: Mapping[str, Any], order: np.ndarray) -> Dict[str, np.ndarray]:
    """``state`` with the residual-stream axis of every tensor indexed by ``order``."""
    out = {}
    for name, value in state.items():
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)
        axis = _residual_axis(name)
        out[name] = array if axis is None else np.ascontiguousarray(np.take(array, order, axis=axis))
    return out


def _token(c: Mapping[str, Any], key: str, vocab: int) -> int:
    value = c.get(key)
    if isinstance(value, list) and value:  # several end tokens: the first is the usual one
        value = value[0]
    return config_value({key: value}, key, int, choices=range(vocab), owner=OWNER)


def marian_kwargs(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Seq2SeqTransformer's arguments from a MarianConfig; what it does not implement is refused."""
    c = dict(config)
    if c.get("model_type") != "marian":
        raise UnsupportedConfigError(f"{OWNER}: model_type {c.get('model_type')!r} is not 'marian'")
    act = config_value(c, "activation_function", str, "gelu", choices=tuple(HF_ACTIVATIONS), owner=OWNER)
    if not config_value(c, "scale_embedding", bool, False, owner=OWNER):
        raise UnsupportedConfigError(f"{OWNER}: config scale_embedding=false is not supported (tfm_rs scales "
                                     "token embeddings by sqrt(d_model))")
    for flag, want in _FIXED.items():
        if flag in c and c[flag] is not None and bool(c[flag]) != want:
            raise UnsupportedConfigError(f"{OWNER}: config {flag}={c[flag]!r} is not supported")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if config_value(c, a, int, owner=OWNER) != config_value(c, b, int, owner=OWNER):
            raise UnsupportedConfigError(f"{OWNER}: config {a}={c[a]} differs from {b}={c[b]}; tfm_rs's "
                                         "Seq2SeqTransformer has one value for both")
    shared = config_value(c, "share_encoder_decoder_embeddings", bool, True, owner=OWNER)
    tied = config_value(c, "tie_word_embeddings", bool, True, owner=OWNER)
    if shared and not tied:
        raise UnsupportedConfigError(f"{OWNER}: config share_encoder_decoder_embeddings=true with "
                                     "tie_word_embeddings=false is not supported (share_embeddings ties the output "
                                     "projection too)")
    src_vocab = config_value(c, "vocab_size", int, owner=OWNER)
    tgt_vocab = src_vocab if shared else config_value(c, "decoder_vocab_size", int, src_vocab, owner=OWNER)
    pad, eos = _token(c, "pad_token_id", tgt_vocab), _token(c, "eos_token_id", tgt_vocab)
    start = _token(c, "decoder_start_token_id", tgt_vocab)
    return dict(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab,
                d_model=config_value(c, "d_model", int, owner=OWNER), nhead=c["encoder_attention_heads"],
                num_encoder_layers=config_value(c, "encoder_layers", int, owner=OWNER),
                num_decoder_layers=config_value(c, "decoder_layers", int, owner=OWNER),
                dim_feedforward=c["encoder_ffn_dim"], dropout=dropout_value(c, "dropout", OWNER), norm_first=False,
                max_len=config_value(c, "max_position_embeddings", int, choices=range(1, MAX_POSITIONS + 1),
                                     owner=OWNER), pad_id=pad, bos_id=start,
                eos_id=eos, share_embeddings=shared, activation=HF_ACTIVATIONS[act], layer_norm_eps=LAYER_NORM_EPS,
                tie_output=tied)


def _check_fixed_tensors(index: TensorIndex, kwargs: Mapping[str, Any]) -> None:
    """Position tables stored in the checkpoint must be Marian's sinusoids, and a bias of a tied
    output layer (which tfm_rs's has not) must be zero: else these weights are another model."""
    names = set(index.names())
    d = kwargs["d_model"]
    table = sinusoidal_table(kwargs["max_len"], d)[:, marian_order(d)]
    for name in _POSITIONS:
        if name in names and (tuple(index.shape(name)) != table.shape
                              or not np.allclose(index.get(name), table, atol=1e-5)):
            raise WeightsMismatchError(f"{OWNER}: {name} is not Marian's sinusoidal table "
                                       f"(shape {tuple(index.shape(name))}, expected {table.shape})")
    bias = "final_logits_bias"
    if kwargs["tie_output"] and bias in names and tuple(index.shape(bias)) != (1, kwargs["tgt_vocab_size"]):
        raise WeightsMismatchError(f"{OWNER}: {bias}: shape {tuple(index.shape(bias))} in the checkpoint, "
                                   f"{(1, kwargs['tgt_vocab_size'])} expected")
    if kwargs["tie_output"] and bias in names and np.any(index.get(bias)):
        raise UnsupportedConfigError(f"{OWNER}: final_logits_bias is not zero, but a tied lm_head "
                                     "(tie_word_embeddings=true) has no bias in tfm_rs")


def load_marian(cls: Any, path: Any) -> Any:
    """A ``cls`` (:class:`~tfm_rs.models.Seq2SeqTransformer`) with the weights and tokenizer of
    the ``MarianMTModel`` checkpoint directory ``path``, in eval mode."""
    d = checkpoint_dir(path)
    config = read_config(d)
    index = TensorIndex(d)  # headers validated (and pickles refused) before the configuration
    kwargs = marian_kwargs(config)
    width, ff = kwargs["d_model"], kwargs["dim_feedforward"]
    shared, tied = kwargs["share_embeddings"], kwargs["tie_output"]
    embeds = ({"model.shared.weight": (kwargs["src_vocab_size"], width)} if shared else
              {"model.encoder.embed_tokens.weight": (kwargs["src_vocab_size"], width),
               "model.decoder.embed_tokens.weight": (kwargs["tgt_vocab_size"], width)})
    # The first and last layer of each stack: a configuration claiming more layers or wider ones
    # than the weights hold is refused before the model is built.
    layers = {f"model.{stack}.layers.{i}.{fc}.weight": shape
              for stack in ("encoder", "decoder") for i in (0, kwargs[f"num_{stack}_layers"] - 1)
              for fc, shape in (("fc1", (ff, width)), ("fc2", (width, ff)))}
    expect_shapes(index, {**embeds, **layers}, OWNER)
    _check_fixed_tensors(index, kwargs)
    model = cls(**kwargs)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    copies = ({"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"} if shared else set()) | (
        {"lm_head.weight", "final_logits_bias"} if tied else set())
    state = load_weights(index, marian_rules(kwargs["num_encoder_layers"], kwargs["num_decoder_layers"], shared, tied),
                         shapes, OWNER, ignore=lambda n: n in copies or n in _POSITIONS)
    model.load_state_dict(_reorder(state, np.argsort(marian_order(width))), strict=False)
    model.tokenizer = load_tokenizer(d, max_length=kwargs["max_len"])
    if model.tokenizer is None:  # opus-mt ships SentencePiece files instead
        model.tokenizer = load_marian_tokenizer(d)
    return model.eval()


def save_marian(model: Any, path: Any) -> Path:
    """Writes ``model`` as a ``MarianMTModel`` checkpoint directory that ``transformers`` loads
    (and CTranslate2's ``TransformersConverter`` converts)."""
    c = model.config
    check_standard(c, SAVER, "MarianMTModel")
    problems = [f"{key}={c[key]!r} (Marian has {want!r})" for key, want in
                (("norm_first", False), ("share_layers", False), ("layer_norm_eps", LAYER_NORM_EPS))
                if c[key] != want]
    if c["activation"] not in TFM_ACTIVATIONS:
        problems.append(f"activation={c['activation']!r}")
    if problems:
        raise UnsupportedConfigError(f"{SAVER}: transformers' MarianMTModel has no equivalent of "
                                     f"{', '.join(problems)}")
    shared, tied = c["share_embeddings"], c["tie_output"]
    tokenizer = getattr(model, "tokenizer", None)
    skip = ("tgt_embed.weight",) * shared + ("generator.weight",) * tied
    state = {k: v for k, v in model.state_dict().items() if k not in skip}
    rules = marian_rules(c["num_encoder_layers"], c["num_decoder_layers"], shared, tied)
    tensors = hf_tensors(_reorder(state, marian_order(c["d_model"])), rules, SAVER)
    if tied:
        tensors["final_logits_bias"] = np.zeros((1, c["tgt_vocab_size"]), np.float32)
    sentencepiece = isinstance(tokenizer, MarianTokenizer)  # opus-mt's files, which it writes itself
    as_json = None if sentencepiece else tokenizer
    d = write_checkpoint(path, {
        "architectures": ["MarianMTModel"], "model_type": "marian", "vocab_size": c["src_vocab_size"],
        "decoder_vocab_size": c["tgt_vocab_size"], "d_model": c["d_model"], "encoder_layers": c["num_encoder_layers"],
        "decoder_layers": c["num_decoder_layers"], "encoder_attention_heads": c["nhead"],
        "decoder_attention_heads": c["nhead"], "encoder_ffn_dim": c["dim_feedforward"],
        "decoder_ffn_dim": c["dim_feedforward"], "activation_function": TFM_ACTIVATIONS[c["activation"]],
        "max_position_embeddings": c["max_len"], "scale_embedding": True, "share_encoder_decoder_embeddings": shared,
        "tie_word_embeddings": tied, "dropout": c["dropout"], "attention_dropout": c["dropout"],
        "activation_dropout": c["dropout"], "pad_token_id": c["pad_id"], "eos_token_id": c["eos_id"],
        "decoder_start_token_id": c["bos_id"], "bos_token_id": c["bos_id"], "forced_eos_token_id": None,
        "is_encoder_decoder": True}, tensors, as_json, _tokenizer_config(as_json, c))
    if sentencepiece:
        tokenizer.save(d)
    return checkpoint_dir(d)


def _tokenizer_config(tokenizer: Any, c: Mapping[str, Any]) -> Any:
    """``AutoTokenizer`` would read a Marian directory with Marian's sentencepiece tokenizer; this
    points it at ``tokenizer.json`` instead, with the model's special tokens by name."""
    if tokenizer is None:
        return None
    name = tokenizer.id_to_token
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": c["max_len"],
           "pad_token": name(c["pad_id"]), "bos_token": name(c["bos_id"]), "eos_token": name(c["eos_id"])}
    if tokenizer.token_to_id("<unk>") is not None:
        out["unk_token"] = "<unk>"
    return out

