"""BERT checkpoints in Hugging Face's layout (``BertModel``, ``BertForMaskedLM``, … with or
without the ``bert.`` prefix) ↔ :class:`tfm_rs.models.BertEncoder`.

Name mapping (``{p}`` = ``bert.`` or nothing, ``{i}`` = layer)::

    {p}embeddings.word_embeddings / position_embeddings / token_type_embeddings   tok/pos/type_embed
    {p}embeddings.LayerNorm                                                       emb_norm
    {p}encoder.layer.{i}.attention.self.{query,key,value}   (rows stacked)        layers.{i}.self_attn.in_proj_*
    {p}encoder.layer.{i}.attention.output.dense / .LayerNorm                      self_attn.out_proj / norm1
    {p}encoder.layer.{i}.intermediate.dense / output.dense / output.LayerNorm     linear1 / linear2 / norm2
    {p}pooler.dense                                                               pooler (if present)
    cls.predictions.transform.dense / .LayerNorm      mlm_dense / mlm_norm
    cls.predictions.bias                              mlm_decoder.bias

``position_ids`` buffers and the decoder copy of the tied embedding are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from tfm_rs.pretrained.errors import UnsupportedConfigError
from tfm_rs.pretrained.hf import (
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

__all__ = ["bert_config", "bert_rules", "load_bert", "open_bert", "save_bert"]

OWNER = "BertEncoder.from_pretrained"


def bert_rules(num_layers: int, prefix: str, pooler: bool, mlm: bool = True) -> List[Rule]:
    p = prefix
    rules = [Rule("tok_embed.weight", (f"{p}embeddings.word_embeddings.weight",)),
             Rule("pos_embed.weight", (f"{p}embeddings.position_embeddings.weight",)),
             Rule("type_embed.weight", (f"{p}embeddings.token_type_embeddings.weight",)),
             *linear_rules(f"{p}embeddings.LayerNorm", "emb_norm")]
    for i in range(num_layers):
        hf, ours = f"{p}encoder.layer.{i}", f"layers.{i}"
        qkv = [f"{hf}.attention.self.{n}" for n in ("query", "key", "value")]
        rules += [Rule(f"{ours}.self_attn.in_proj_weight", tuple(f"{n}.weight" for n in qkv), "concat"),
                  Rule(f"{ours}.self_attn.in_proj_bias", tuple(f"{n}.bias" for n in qkv), "concat"),
                  *linear_rules(f"{hf}.attention.output.dense", f"{ours}.self_attn.out_proj"),
                  *linear_rules(f"{hf}.attention.output.LayerNorm", f"{ours}.norm1"),
                  *linear_rules(f"{hf}.intermediate.dense", f"{ours}.linear1"),
                  *linear_rules(f"{hf}.output.dense", f"{ours}.linear2"),
                  *linear_rules(f"{hf}.output.LayerNorm", f"{ours}.norm2")]
    if pooler:
        rules += linear_rules(f"{p}pooler.dense", "pooler")
    if mlm:
        rules += [*linear_rules("cls.predictions.transform.dense", "mlm_dense"),
                  *linear_rules("cls.predictions.transform.LayerNorm", "mlm_norm"),
                  Rule("mlm_decoder.bias", ("cls.predictions.bias",))]
    return rules


def _model_kwargs(config: Dict[str, Any], tokenizer: Any, owner: str) -> Dict[str, Any]:
    """BertEncoder's arguments from a BertConfig; what it does not implement is refused."""
    c = dict(config)
    model_type = c.get("model_type", "bert")
    if model_type != "bert":
        raise UnsupportedConfigError(f"{owner}: model_type {model_type!r} is not 'bert'")
    config_value(c, "hidden_act", str, "gelu", choices=("gelu",), owner=owner)
    config_value(c, "position_embedding_type", str, "absolute", choices=("absolute",), owner=owner)
    for flag in ("is_decoder", "add_cross_attention"):
        if c.get(flag):
            raise UnsupportedConfigError(f"{owner}: config {flag}=true is not supported (an encoder only)")
    vocab = config_value(c, "vocab_size", int, owner=owner)
    pad = 0 if c.get("pad_token_id") is None else config_value(c, "pad_token_id", int, choices=range(vocab),
                                                                 owner=owner)
    mask_id = tokenizer.token_to_id("[MASK]") if tokenizer is not None else None
    if mask_id is None or not 0 <= mask_id < vocab:
        mask_id = pad
    return dict(vocab_size=vocab, d_model=config_value(c, "hidden_size", int, owner=owner),
                nhead=config_value(c, "num_attention_heads", int, owner=owner),
                num_layers=config_value(c, "num_hidden_layers", int, owner=owner),
                dim_feedforward=config_value(c, "intermediate_size", int, owner=owner),
                max_len=config_value(c, "max_position_embeddings", int, owner=owner),
                type_vocab_size=config_value(c, "type_vocab_size", int, 2, owner=owner),
                pad_id=pad, mask_id=mask_id,
                dropout=dropout_value(c, "hidden_dropout_prob", owner),
                layer_norm_eps=config_value(c, "layer_norm_eps", float, 1e-12, owner=owner))


def open_bert(path: Any, owner: str) -> Tuple[Path, Dict[str, Any], TensorIndex, str, Dict[str, Any], Any]:
    """``(directory, config, tensors, prefix, BertEncoder arguments, tokenizer)`` of a BERT
    checkpoint directory, its configuration and main shapes checked before any tensor is read."""
    d = checkpoint_dir(path)
    config = read_config(d)
    index = TensorIndex(d)  # headers validated before anything is built
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in set(index.names()) else ""
    kwargs = _model_kwargs(config, None, owner)
    tokenizer = load_tokenizer(d, max_length=kwargs["max_len"])
    kwargs = _model_kwargs(config, tokenizer, owner)
    width, ff, last = kwargs["d_model"], kwargs["dim_feedforward"], kwargs["num_layers"] - 1
    expect_shapes(index, {f"{prefix}embeddings.word_embeddings.weight": (kwargs["vocab_size"], width),
                          f"{prefix}embeddings.position_embeddings.weight": (kwargs["max_len"], width),
                          f"{prefix}embeddings.token_type_embeddings.weight": (kwargs["type_vocab_size"], width),
                          f"{prefix}encoder.layer.0.intermediate.dense.weight": (ff, width),
                          f"{prefix}encoder.layer.{last}.output.dense.weight": (width, ff)}, owner)
    return d, config, index, prefix, kwargs, tokenizer


def load_bert(cls: Any, path: Any, strict: bool = True) -> Any:
    """A ``cls`` (:class:`~tfm_rs.models.BertEncoder`) with the weights and tokenizer of the
    checkpoint directory ``path``, in eval mode. The masked-LM head is loaded when the checkpoint
    has one (``BertForMaskedLM``), else left initialized; the pooler likewise (``BertModel``).
    ``strict=False`` ignores tensors of other heads (e.g. ``classifier.*``)."""
    d, config, index, prefix, kwargs, tokenizer = open_bert(path, OWNER)
    pooler = f"{prefix}pooler.dense.weight" in set(index.names())
    model = cls(**kwargs, pooler=pooler)
    rules = bert_rules(kwargs["num_layers"], prefix, pooler)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    skipped = ("position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    state = load_weights(index, rules, shapes, OWNER,
                         ignore=lambda n: n.endswith(skipped) or not strict,
                         optional=lambda t: t.startswith("mlm_"))
    model.load_state_dict(state, strict=False)
    model.tokenizer = tokenizer
    return model.eval()


def save_bert(model: Any, path: Any) -> Path:
    """Writes ``model`` as a ``BertForMaskedLM`` checkpoint directory (``config.json``,
    ``model.safetensors``, and ``tokenizer.json`` when the model carries a tokenizer); a model
    with an option BERT lacks (another norm, a factorized embedding, …) is refused first."""
    c = model.config
    check_standard(c, "BertEncoder.save_pretrained", "BertForMaskedLM")
    tensors = hf_tensors(model.state_dict(), bert_rules(c["num_layers"], "bert.", bool(c.get("pooler"))),
                         "BertEncoder.save_pretrained", skip=("mlm_decoder.weight",))
    d = write_checkpoint(path, {"architectures": ["BertForMaskedLM"], **bert_config(c)}, tensors,
                         getattr(model, "tokenizer", None))
    return checkpoint_dir(d)


def bert_config(c: Dict[str, Any]) -> Dict[str, Any]:
    """The ``BertConfig`` entries of a :class:`~tfm_rs.models.BertEncoder` configuration."""
    return {"model_type": "bert", "vocab_size": c["vocab_size"], "hidden_size": c["d_model"],
            "num_hidden_layers": c["num_layers"], "num_attention_heads": c["nhead"],
            "intermediate_size": c["dim_feedforward"], "hidden_act": "gelu", "hidden_dropout_prob": c["dropout"],
            "attention_probs_dropout_prob": c["dropout"], "max_position_embeddings": c["max_len"],
            "type_vocab_size": c["type_vocab_size"], "layer_norm_eps": c["layer_norm_eps"],
            "pad_token_id": c["pad_id"], "position_embedding_type": "absolute", "initializer_range": 0.02,
            "tie_word_embeddings": True}
