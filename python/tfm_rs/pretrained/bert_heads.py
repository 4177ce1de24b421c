"""BERT classifiers in Hugging Face's layout (``BertForSequenceClassification``,
``BertForTokenClassification``) ↔ :mod:`tfm_rs.models.bert_heads`.

The encoder is :mod:`tfm_rs.pretrained.bert`'s mapping under the classifier's ``bert.`` prefix
(``bert.{p}`` here = tfm_rs's ``bert.`` submodule), plus::

    classifier.weight / classifier.bias     classifier

``config.json`` carries the labels as Hugging Face writes them: ``id2label`` / ``label2id``
(``num_labels`` is their count), ``problem_type`` and ``classifier_dropout``.

A checkpoint without a classifier — a bare ``BertModel``, a ``BertForMaskedLM`` — loads with a
freshly initialized one (and pooler, where it lacks one), with a warning naming those tensors,
as ``transformers`` does; the tensors of other heads (``cls.*``, and the pooler for token
classification, which has none) are ignored.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tfm_rs.pretrained.bert import bert_config, bert_rules, open_bert
from tfm_rs.pretrained.errors import UnsupportedConfigError, WeightsMismatchError
from tfm_rs.pretrained.hf import Rule, check_standard, checkpoint_dir, hf_tensors, load_weights, write_checkpoint

__all__ = ["PROBLEM_TYPES", "load_bert_classifier", "save_bert_classifier"]

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def classifier_rules(num_layers: int, prefix: str, pooler: bool) -> List[Rule]:
    """The rules of a classifier whose encoder is the submodule ``bert`` (state-dict names
    ``bert.…``), reading the encoder's tensors under ``prefix``."""
    rules = [Rule(f"bert.{r.target}", r.sources, r.kind) for r in bert_rules(num_layers, prefix, pooler, mlm=False)]
    return rules + [Rule("classifier.weight", ("classifier.weight",)), Rule("classifier.bias", ("classifier.bias",))]


def _labels(config: Dict[str, Any], owner: str) -> Optional[List[str]]:
    """The label names of ``id2label`` in id order (``None`` if the config has none)."""
    id2label = config.get("id2label")
    if id2label is None:
        return None
    if not isinstance(id2label, dict) or not all(str(k).isdigit() and isinstance(v, str) for k, v in id2label.items()):
        raise UnsupportedConfigError(f"{owner}: config id2label={id2label!r} is not a map of ids to names")
    by_id = {int(k): v for k, v in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise UnsupportedConfigError(f"{owner}: config id2label has ids {sorted(by_id)}, not 0 … {len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))]


def load_bert_classifier(cls: Any, path: Any, num_labels: Optional[int] = None,
                         id2label: Optional[Sequence[str]] = None, problem_type: Optional[str] = None) -> Any:
    """A ``cls`` (a classifier of :mod:`tfm_rs.models.bert_heads`) from the checkpoint directory
    ``path``, in eval mode. ``num_labels`` overrides the config's label count (it must agree with
    a classifier the checkpoint has), ``id2label`` the config's label names, ``problem_type``
    (sequence classification only) the config's."""
    owner = f"{cls.__name__}.from_pretrained"
    d, config, index, prefix, kwargs, tokenizer = open_bert(path, owner)
    names = set(index.names())
    labels = _labels(config, owner)
    saved = len(labels) if labels else config.get("num_labels", 2)
    if id2label is not None:
        labels = [str(name) for name in id2label]
        num_labels = len(labels) if num_labels is None else num_labels
    if "classifier.weight" in names:
        have = index.shape("classifier.weight")[0]
        if num_labels is not None and num_labels != have:
            raise WeightsMismatchError(f"{owner}: the checkpoint's classifier has {have} labels, num_labels="
                                       f"{num_labels} was asked; load it with num_labels={have}, or train a new "
                                       "classifier from the encoder (a BertModel checkpoint)")
        num_labels = have
    elif num_labels is None:
        num_labels = saved
    if labels is not None and len(labels) != num_labels:
        if id2label is not None:
            raise UnsupportedConfigError(f"{owner}: id2label names {len(labels)} labels, the classifier has "
                                         f"{num_labels}")
        labels = None  # the default LABEL_i names of a config written for another head
    head: Dict[str, Any] = {}
    if cls.arch == "BertForSequenceClassification":  # the only head whose loss reads it
        head["problem_type"] = problem_type or config.get("problem_type")
        if head["problem_type"] not in (None, *PROBLEM_TYPES):
            raise UnsupportedConfigError(f"{owner}: config problem_type={head['problem_type']!r} is not one of "
                                         f"{PROBLEM_TYPES}")
    elif problem_type is not None:
        raise UnsupportedConfigError(f"{owner}: problem_type applies to sequence classification only")
    dropout = config.get("classifier_dropout")
    model = cls(**kwargs, **head, num_labels=num_labels, id2label=labels,
                classifier_dropout=None if dropout is None else float(dropout))
    pooler = model.uses_pooler
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    other_heads = ("cls.",) if pooler else ("cls.", f"{prefix}pooler.")
    state = load_weights(index, classifier_rules(kwargs["num_layers"], prefix, pooler), shapes, owner,
                         ignore=lambda n: n.endswith("position_ids") or n.startswith(other_heads),
                         optional=lambda t: t.startswith(("classifier.", "bert.pooler.")))
    fresh = sorted(set(shapes) - set(state))
    if fresh:
        hf = {r.target: r.sources[0] for r in classifier_rules(kwargs["num_layers"], "bert.", pooler)}
        warnings.warn(f"Some weights of {cls.__name__} were not initialized from the checkpoint at {d} and are "
                      f"newly initialized: {[hf[k] for k in fresh]}. Train this model on a downstream task before "
                      "using it for predictions.", stacklevel=3)
    model.load_state_dict(state, strict=False)
    model.tokenizer = tokenizer
    return model.eval()


def save_bert_classifier(model: Any, path: Any) -> Path:
    """Writes ``model`` as a checkpoint directory of its Hugging Face class (``model.arch``)."""
    c = model.config
    owner = f"{model.arch}.save_pretrained"
    check_standard(c, owner, model.arch)
    if not model.hf_compatible:
        raise UnsupportedConfigError(f"{owner}: pooling={c['pooling']!r} has no equivalent in transformers' "
                                     f"{model.arch} (it pools with the pooler); save it with "
                                     "tfm_rs.checkpoint.save_checkpoint instead")
    tensors = hf_tensors(model.state_dict(), classifier_rules(c["num_layers"], "bert.", model.uses_pooler), owner)
    names = model.label_names()
    hf_config = {"architectures": [model.arch], **bert_config(c), "id2label": dict(enumerate(names)),
                 "label2id": {name: i for i, name in enumerate(names)}, "problem_type": c.get("problem_type"),
                 "classifier_dropout": c["classifier_dropout"]}
    return checkpoint_dir(write_checkpoint(path, hf_config, tensors, getattr(model, "tokenizer", None)))
