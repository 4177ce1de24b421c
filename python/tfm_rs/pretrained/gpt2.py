"""GPT-2 checkpoints in Hugging Face's layout (``GPT2LMHeadModel`` with the ``transformer.``
prefix, or ``GPT2Model`` without) ↔ :class:`tfm_rs.models.GPT`.

Name mapping (``{p}`` = ``transformer.`` or nothing; ``ᵀ``: GPT-2's ``Conv1D`` stores
``[in, out]``, tfm_rs's ``Linear`` ``(out, in)``)::

    {p}wte / wpe                           tok_embed / pos_embed
    {p}h.{i}.ln_1 / ln_2                   layers.{i}.norm1 / norm2
    {p}h.{i}.attn.c_attn  ᵀ (fused q,k,v)  layers.{i}.self_attn.in_proj_*
    {p}h.{i}.attn.c_proj  ᵀ                layers.{i}.self_attn.out_proj
    {p}h.{i}.mlp.c_fc / c_proj  ᵀ          layers.{i}.linear1 / linear2
    {p}ln_f                                norm
    lm_head                                head (only when untied)

The causal-mask buffers old checkpoints carry (``attn.bias``, ``attn.masked_bias``) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from tfm_rs.pretrained.errors import UnsupportedConfigError
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

__all__ = ["load_gpt2", "save_gpt2", "gpt2_rules"]

OWNER = "GPT.from_pretrained"


def gpt2_rules(num_layers: int, prefix: str, tied: bool) -> List[Rule]:
    p = prefix
    rules = [Rule("tok_embed.weight", (f"{p}wte.weight",)), Rule("pos_embed.weight", (f"{p}wpe.weight",))]
    for i in range(num_layers):
        hf, ours = f"{p}h.{i}", f"layers.{i}"
        rules += [*linear_rules(f"{hf}.ln_1", f"{ours}.norm1"),
                  Rule(f"{ours}.self_attn.in_proj_weight", (f"{hf}.attn.c_attn.weight",), "transpose"),
                  Rule(f"{ours}.self_attn.in_proj_bias", (f"{hf}.attn.c_attn.bias",)),
                  *linear_rules(f"{hf}.attn.c_proj", f"{ours}.self_attn.out_proj", "transpose"),
                  *linear_rules(f"{hf}.ln_2", f"{ours}.norm2"),
                  *linear_rules(f"{hf}.mlp.c_fc", f"{ours}.linear1", "transpose"),
                  *linear_rules(f"{hf}.mlp.c_proj", f"{ours}.linear2", "transpose")]
    rules += linear_rules(f"{p}ln_f", "norm")
    if not tied:
        rules.append(Rule("head.weight", ("lm_head.weight",)))
    return rules


def _model_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
    c = dict(config)
    model_type = c.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise UnsupportedConfigError(f"{OWNER}: model_type {model_type!r} is not 'gpt2'")
    act = config_value(c, "activation_function", str, "gelu_new", choices=tuple(HF_ACTIVATIONS), owner=OWNER)
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False)):
        if flag in c and bool(c[flag]) != want:
            raise UnsupportedConfigError(f"{OWNER}: config {flag}={c[flag]!r} is not supported")
    d = config_value(c, "n_embd", int, owner=OWNER)
    inner = c.get("n_inner")
    return dict(vocab_size=config_value(c, "vocab_size", int, owner=OWNER), d_model=d,
                nhead=config_value(c, "n_head", int, owner=OWNER),
                num_layers=config_value(c, "n_layer", int, owner=OWNER),
                dim_feedforward=4 * d if inner is None else config_value(c, "n_inner", int, owner=OWNER),
                dropout=dropout_value(c, "resid_pdrop", OWNER),
                max_len=config_value(c, "n_positions", int, owner=OWNER),
                tie_weights=config_value(c, "tie_word_embeddings", bool, True, owner=OWNER),
                activation=HF_ACTIVATIONS[act],
                layer_norm_eps=config_value(c, "layer_norm_epsilon", float, 1e-5, owner=OWNER))


def load_gpt2(cls: Any, path: Any) -> Any:
    """A ``cls`` (:class:`~tfm_rs.models.GPT`) with the weights and tokenizer of the checkpoint
    directory ``path``, in eval mode."""
    d = checkpoint_dir(path)
    config = read_config(d)
    index = TensorIndex(d)  # headers validated (and pickles refused) before the configuration
    kwargs = _model_kwargs(config)
    names = set(index.names())
    prefix = "transformer." if "transformer.wte.weight" in names else ""
    width, ff, last = kwargs["d_model"], kwargs["dim_feedforward"], kwargs["num_layers"] - 1
    expect_shapes(index, {f"{prefix}wte.weight": (kwargs["vocab_size"], width),
                          f"{prefix}wpe.weight": (kwargs["max_len"], width),
                          f"{prefix}h.0.mlp.c_fc.weight": (width, ff),
                          f"{prefix}h.{last}.mlp.c_proj.weight": (ff, width)}, OWNER)
    model = cls(**kwargs)
    rules = gpt2_rules(kwargs["num_layers"], prefix, kwargs["tie_weights"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = kwargs["tie_weights"]
    state = load_weights(index, rules, shapes, OWNER, ignore=lambda n: n.endswith((".attn.bias", ".attn.masked_bias"))
                         or (tied and n == "lm_head.weight"))
    model.load_state_dict(state, strict=False)
    model.tokenizer = load_tokenizer(d, max_length=kwargs["max_len"])
    eos = config.get("eos_token_id")
    model.eos_id = eos if isinstance(eos, int) and 0 <= eos < kwargs["vocab_size"] else None
    return model.eval()


def save_gpt2(model: Any, path: Any) -> Path:
    """Writes ``model`` as a ``GPT2LMHeadModel`` checkpoint directory."""
    c = model.config
    act = TFM_ACTIVATIONS.get(c["activation"])
    if act is None:
        raise UnsupportedConfigError(f"GPT.save_pretrained: activation {c['activation']!r} has no GPT-2 name")
    check_standard(c, "GPT.save_pretrained", "GPT2LMHeadModel")
    tensors = hf_tensors(model.state_dict(), gpt2_rules(c["num_layers"], "transformer.", c["tie_weights"]),
                         "GPT.save_pretrained", skip=("head.weight",) if c["tie_weights"] else ())
    d = write_checkpoint(path, {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c["vocab_size"],
        "n_embd": c["d_model"], "n_layer": c["num_layers"], "n_head": c["nhead"], "n_inner": c["dim_feedforward"],
        "n_positions": c["max_len"], "activation_function": act, "layer_norm_epsilon": c["layer_norm_eps"],
        "resid_pdrop": c["dropout"], "embd_pdrop": c["dropout"], "attn_pdrop": c["dropout"],
        "tie_word_embeddings": c["tie_weights"], "bos_token_id": None, "eos_token_id": None,
        "pad_token_id": c["pad_id"]}, tensors, getattr(model, "tokenizer", None))
    return checkpoint_dir(d)
