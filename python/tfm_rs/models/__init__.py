"""Complete models built from :mod:`tfm_rs.nn`.

* :class:`Seq2SeqTransformer`: the paper's encoder-decoder (presets ``transformer_base``,
  ``transformer_big``, ``transformer_small``, ``transformer_tiny``).
* :class:`GPT` (also ``GPT2LMHeadModel``): a decoder-only causal language model (pre-LN, learned
  positions, tied head).
* :class:`BertEncoder`: an encoder with a masked-LM head and the 80/10/10 masking rule
  (``BertForMaskedLM`` is the same class, under Hugging Face's name).
* :class:`BertForSequenceClassification`, :class:`BertForTokenClassification`: fine-tuning heads
  on it, with Hugging Face's names, semantics and checkpoint layout.
* :class:`Llama` (also ``LlamaForCausalLM``): the Llama family (RMSNorm, rotary positions, SwiGLU,
  grouped-query attention).
* :class:`RNNSeq2Seq`: RNNsearch, the attentional GRU encoder-decoder (a baseline).
* :class:`ConvEncoder`: a ConvS2S-style convolutional encoder (GLU + residual blocks; a baseline);
  :class:`ConvBlocks`, its blocks, also the encoder of ``Seq2SeqTransformer(encoder="conv")``.

Every model has a JSON ``config`` and ``from_config``; :func:`load_model_state` puts a checkpoint's
weights into a model after checking that the checkpoint was written by the same architecture.
"""

from typing import Any, Iterable

from tfm_rs.checkpoint import Checkpoint, check_compatible, check_state_dict_compatible, load_checkpoint
from tfm_rs.models.bert import BertEncoder
from tfm_rs.models.bert_heads import BertForSequenceClassification, BertForTokenClassification
from tfm_rs.models.gpt import GPT
from tfm_rs.models.llama import Llama
from tfm_rs.models._pruning import head_importance
from tfm_rs.models._reduction import factorize_ffn
from tfm_rs.models.presets import (
    PRESETS,
    preset_config,
    transformer_base,
    transformer_big,
    transformer_small,
    transformer_tiny,
)
from tfm_rs.models.seq2seq import Seq2SeqTransformer
from tfm_rs.models.rnn_seq2seq import RNNSeq2Seq
from tfm_rs.models.conv_encoder import ConvBlocks, ConvEncoder

ARCHITECTURES = {cls.arch: cls for cls in (Seq2SeqTransformer, GPT, BertEncoder, Llama, RNNSeq2Seq,
                                             BertForSequenceClassification, BertForTokenClassification)}

# Hugging Face's class names for the models that load and save their checkpoints.
BertForMaskedLM = BertEncoder
GPT2LMHeadModel = GPT
LlamaForCausalLM = Llama


def load_model_state(model: Any, checkpoint: Any, ignore: Iterable[str] = ("dropout",)) -> None:
    """Load the weights of ``checkpoint`` (a :class:`tfm_rs.checkpoint.Checkpoint` or a path) into
    ``model``. Raises :class:`tfm_rs.checkpoint.IncompatibleCheckpointError` listing every
    configuration difference (``ignore``: keys allowed to differ) and then every state-dict key or
    shape difference, before anything is copied."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    check_compatible(ckpt.config, model.config, ignore=ignore)
    check_state_dict_compatible(ckpt.model_state, model.state_dict())
    model.load_state_dict(ckpt.model_state)


def model_from_checkpoint(checkpoint: Any) -> Any:
    """A model of the checkpoint's architecture and configuration, with its weights."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    arch = ckpt.config.get("arch")
    if arch not in ARCHITECTURES:
        raise KeyError(f"model_from_checkpoint: unknown architecture {arch!r}; one of {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch].from_config(ckpt.config)
    load_model_state(model, ckpt, ignore=())
    return model


__all__ = ["ARCHITECTURES", "BertEncoder", "BertForMaskedLM", "BertForSequenceClassification",
           "BertForTokenClassification", "ConvBlocks", "ConvEncoder", "GPT", "GPT2LMHeadModel", "Llama",
           "LlamaForCausalLM", "PRESETS", "RNNSeq2Seq", "Seq2SeqTransformer",
           "factorize_ffn", "head_importance",
           "load_model_state", "model_from_checkpoint", "preset_config", "transformer_base", "transformer_big",
           "transformer_small", "transformer_tiny"]
