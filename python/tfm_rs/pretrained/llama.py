"""Llama-family checkpoints ↔ :class:`tfm_rs.models.Llama`: Hugging Face ``LlamaForCausalLM``
directories, and GGUF files (:mod:`tfm_rs.pretrained.gguf`).

The model's module names are Hugging Face's, so the mapping is the ``model.`` prefix
(``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``,
``model.layers.{i}.mlp.{gate,up,down}_proj``, ``model.layers.{i}.{input,post_attention}_layernorm``,
``model.norm``) and ``lm_head`` (absent when tied). ``rotary_emb.inv_freq`` buffers are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from tfm_rs.pretrained.errors import UnsupportedConfigError
from tfm_rs.pretrained.hf import (
    Rule,
    TensorIndex,
    checkpoint_dir,
    config_value,
    copy_tokenizer,
    expect_shapes,
    load_tokenizer,
    load_weights,
    read_config,
    save_weights,
    write_config,
)

__all__ = ["load_llama", "save_llama", "llama_rules", "llama_kwargs", "llama_shapes"]

OWNER = "Llama.from_pretrained"
ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_KEYS = {"linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def llama_rules(state_keys: List[str], tied: bool) -> List[Rule]:
    return [Rule(k, (k if k == "lm_head.weight" else f"model.{k}",)) for k in state_keys
            if not (tied and k == "lm_head.weight")]


def _rope(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``rope_theta`` and the scaling from either the ``rope_parameters`` of transformers ≥ 5 or
    the older ``rope_theta`` / ``rope_scaling`` keys."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or params
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise UnsupportedConfigError(f"{OWNER}: rope_parameters / rope_scaling must be objects")
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    config_value({"rope_theta": theta}, "rope_theta", float, owner=OWNER)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UnsupportedConfigError(f"{OWNER}: rope scaling type {kind!r} is not supported (supported: "
                                     f"{', '.join(ROPE_TYPES)})")
    out = {"rope_type": kind}
    for key in _ROPE_KEYS.get(kind, ()):
        out[key] = config_value(scaling, key, float, owner=OWNER)
    return dict(rope_theta=float(theta), rope_scaling=None if kind == "default" else out)


def llama_kwargs(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Llama's arguments from a LlamaConfig; what it does not implement is refused."""
    c = dict(config)
    model_type = c.get("model_type", "llama")
    if model_type not in ("llama", "mistral"):
        raise UnsupportedConfigError(f"{OWNER}: model_type {model_type!r} is not supported (llama, mistral)")
    config_value(c, "hidden_act", str, "silu", choices=("silu",), owner=OWNER)
    if c.get("sliding_window") is not None:
        raise UnsupportedConfigError(f"{OWNER}: sliding_window={c['sliding_window']} is not supported")
    d = config_value(c, "hidden_size", int, owner=OWNER)
    heads = config_value(c, "num_attention_heads", int, owner=OWNER)
    kv = config_value(c, "num_key_value_heads", int, heads, owner=OWNER)
    if heads % kv:
        raise UnsupportedConfigError(f"{OWNER}: num_attention_heads={heads} is not a multiple of "
                                     f"num_key_value_heads={kv}")
    vocab = config_value(c, "vocab_size", int, owner=OWNER)

    def token(key: str) -> Any:
        v = c.get(key)
        if isinstance(v, list):  # Llama 3 lists several end tokens; the first is the usual one
            v = v[0] if v else None
        return v if isinstance(v, int) and 0 <= v < vocab else None

    return dict(vocab_size=vocab, d_model=d, nhead=heads, num_layers=config_value(c, "num_hidden_layers", int,
                                                                                  owner=OWNER),
                dim_feedforward=config_value(c, "intermediate_size", int, owner=OWNER), num_kv_heads=kv,
                head_dim=config_value(c, "head_dim", int, d // heads, owner=OWNER),
                max_len=config_value(c, "max_position_embeddings", int, owner=OWNER), **_rope(c),
                rms_norm_eps=config_value(c, "rms_norm_eps", float, 1e-6, owner=OWNER),
                tie_weights=config_value(c, "tie_word_embeddings", bool, False, owner=OWNER),
                attention_bias=config_value(c, "attention_bias", bool, False, owner=OWNER),
                mlp_bias=config_value(c, "mlp_bias", bool, False, owner=OWNER),
                pad_id=token("pad_token_id"), bos_id=token("bos_token_id"), eos_id=token("eos_token_id"))


def llama_shapes(kwargs: Mapping[str, Any], layers: Any) -> Dict[str, Tuple[int, ...]]:
    """The shapes of a Llama's tensors (state-dict names) for ``layers``, from its arguments."""
    d, ff, dh = kwargs["d_model"], kwargs["dim_feedforward"], kwargs["head_dim"]
    q, kv = kwargs["nhead"] * dh, kwargs["num_kv_heads"] * dh
    shapes: Dict[str, Tuple[int, ...]] = {"embed_tokens.weight": (kwargs["vocab_size"], d), "norm.weight": (d,),
                                          "lm_head.weight": (kwargs["vocab_size"], d)}
    for i in layers:
        p = f"layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
                       p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                       p + "mlp.down_proj.weight": (d, ff)})
    return shapes


def load_llama(cls: Any, path: Any) -> Any:
    """A ``cls`` (:class:`~tfm_rs.models.Llama`) from a checkpoint directory or a ``.gguf`` file."""
    if str(path).endswith(".gguf"):
        from tfm_rs.pretrained.gguf import load_llama_gguf  # gguf imports this module

        return load_llama_gguf(cls, path)
    d = checkpoint_dir(path)
    config = read_config(d)
    index = TensorIndex(d)
    kwargs = llama_kwargs(config)
    expect_shapes(index, {f"model.{k}": v for k, v in llama_shapes(kwargs, (0, kwargs["num_layers"] - 1)).items()
                          if k != "lm_head.weight"}, OWNER)
    model = cls(**kwargs)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = kwargs["tie_weights"]
    state = load_weights(index, llama_rules(list(shapes), tied), shapes, OWNER,
                         ignore=lambda n: n.endswith("rotary_emb.inv_freq") or (tied and n == "lm_head.weight"))
    model.load_state_dict(state, strict=False)
    model.tokenizer = load_tokenizer(d, max_length=kwargs["max_len"])
    return model.eval()


def save_llama(model: Any, path: Any) -> Path:
    """Writes ``model`` as a ``LlamaForCausalLM`` checkpoint directory."""
    c = model.config
    rope = dict(c["rope_scaling"] or {"rope_type": "default"}, rope_theta=c["rope_theta"])
    d = write_config(path, {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c["vocab_size"],
        "hidden_size": c["d_model"], "num_hidden_layers": c["num_layers"], "num_attention_heads": c["nhead"],
        "num_key_value_heads": c["num_kv_heads"], "head_dim": c["head_dim"], "intermediate_size": c["dim_feedforward"],
        "hidden_act": "silu", "max_position_embeddings": c["max_len"], "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"], "rope_scaling": c["rope_scaling"], "rope_parameters": rope,
        "tie_word_embeddings": c["tie_weights"], "attention_bias": c["attention_bias"], "mlp_bias": c["mlp_bias"],
        "pad_token_id": c["pad_id"], "bos_token_id": c["bos_id"], "eos_token_id": c["eos_id"]})
    state = model.state_dict()
    save_weights(d, state, llama_rules(list(state), c["tie_weights"]))
    copy_tokenizer(getattr(model, "tokenizer", None), d)
    return checkpoint_dir(d)
