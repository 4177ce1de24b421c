"""Fine-tuning heads on a BERT encoder, with Hugging Face's names and semantics.

* :class:`BertForSequenceClassification`: ``classifier(dropout(pooled))`` ``(B, num_labels)``,
  pooled by BERT's pooler (``tanh(dense(h[:, 0]))``, as ``transformers``) or, with
  ``pooling="mean"``, by the mean of the non-padding hidden states (not saveable in Hugging
  Face's layout). The loss follows ``problem_type`` as ``transformers`` does: ``"regression"``
  (mean squared error), ``"single_label_classification"`` (cross-entropy; label ``-100``
  ignored) or ``"multi_label_classification"`` (binary cross-entropy on the logits); left
  ``None`` it is chosen on the first :meth:`~BertForSequenceClassification.loss` call — one
  label means regression, integer labels single-label, float labels multi-label — and kept.
* :class:`BertForTokenClassification`: ``classifier(dropout(h))`` ``(B, T, num_labels)``,
  cross-entropy over every position whose label is not ``-100`` (label padding ``-100``).

Both wrap a :class:`~tfm_rs.models.BertEncoder` as ``.bert`` (without its masked-LM head); the
padding of ``input_ids`` is where they equal ``pad_id``. ``from_pretrained`` reads a checkpoint of
the same Hugging Face class or a bare encoder (a fresh classifier, with a warning);
``save_pretrained`` writes the layout ``transformers``' class of the same name loads.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

import tfm_rs.functional as F
from tfm_rs import nn, tensor
from tfm_rs._core import IndexOutOfRangeError, InvalidArgumentError, ShapeError, Tensor
from tfm_rs.models._common import check_config_arch
from tfm_rs.models.bert import IGNORE_INDEX, BertEncoder
from tfm_rs.pretrained.bert_heads import PROBLEM_TYPES, load_bert_classifier, save_bert_classifier

__all__ = ["BertForSequenceClassification", "BertForTokenClassification"]


class _BertClassifier(nn.Module):
    """The encoder ``bert``, ``dropout`` and the linear ``classifier`` (``d_model → num_labels``,
    initialized as ``transformers`` does: N(0, 0.02²) weights, zero bias)."""

    arch = ""

    def __init__(self, num_labels: int, classifier_dropout: Optional[float], id2label: Optional[Sequence[str]],
                 encoder: Mapping[str, Any], pooler: bool = False) -> None:
        super().__init__()
        # uses_pooler: the encoder has BERT's pooler; hf_compatible: transformers has this head.
        self.uses_pooler, self.hf_compatible = pooler, True
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise InvalidArgumentError(f"{self.arch}: num_labels must be a positive integer, got {num_labels!r}")
        if id2label is not None and len(id2label) != num_labels:
            raise InvalidArgumentError(f"{self.arch}: id2label names {len(id2label)} labels, num_labels={num_labels}")
        if classifier_dropout is not None and not 0.0 <= classifier_dropout < 1.0:
            raise InvalidArgumentError(f"{self.arch}: classifier_dropout must be in [0, 1), got {classifier_dropout}")
        self.bert = BertEncoder(**encoder, pooler=self.uses_pooler, mlm_head=False)
        self.num_labels = int(num_labels)
        self._head_config: Dict[str, Any] = dict(
            num_labels=self.num_labels, classifier_dropout=classifier_dropout,
            id2label=None if id2label is None else [str(s) for s in id2label])
        self.dropout = nn.Dropout(self.bert.config["dropout"] if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(self.bert.d_model, self.num_labels)
        nn.init.normal_(self.classifier.weight, 0.0, 0.02)
        nn.init.zeros_(self.classifier.bias)
        self.tokenizer: Any = None

    @property
    def pad_id(self) -> int:
        return self.bert.pad_id

    @property
    def config(self) -> Dict[str, Any]:
        encoder = {k: v for k, v in self.bert.config.items() if k not in ("arch", "pooler", "mlm_head")}
        return {"arch": self.arch, **encoder, **self._head_config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Any:
        return cls(**check_config_arch(config, cls.arch))

    @classmethod
    def from_pretrained(cls, path: Any, num_labels: Optional[int] = None,
                        id2label: Optional[Sequence[str]] = None, problem_type: Optional[str] = None) -> Any:
        """A Hugging Face checkpoint directory of this class, or of a bare encoder (``BertModel``,
        ``BertForMaskedLM``: the classifier starts fresh, with a warning), in eval mode, with its
        ``tokenizer.json`` as ``.tokenizer``; ``num_labels``, ``id2label`` and (sequence
        classification) ``problem_type`` override the config's (see
        :mod:`tfm_rs.pretrained.bert_heads`)."""
        return load_bert_classifier(cls, path, num_labels, id2label, problem_type)

    def save_pretrained(self, path: Any) -> None:
        """Writes the checkpoint directory that ``transformers``' class of the same name loads."""
        save_bert_classifier(self, path)

    def label_names(self) -> List[str]:
        """``id2label`` in id order (Hugging Face's ``LABEL_i`` when none were given)."""
        names = self._head_config["id2label"]
        return list(names) if names is not None else [f"LABEL_{i}" for i in range(self.num_labels)]

    def _class_labels(self, labels: np.ndarray, shape: tuple) -> np.ndarray:
        """Integer ``labels`` of ``shape``, each a class or ``-100``."""
        if labels.shape != shape:
            raise ShapeError(f"{self.arch}.loss: labels have shape {labels.shape}, the logits need {shape}")
        if labels.dtype.kind not in "iu":
            raise InvalidArgumentError(f"{self.arch}.loss: class labels must be integers, got dtype {labels.dtype}")
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_labels))
        if bad.any():
            raise IndexOutOfRangeError(f"{self.arch}.loss: label {int(labels[bad][0])} is neither -100 nor a class "
                                       f"in [0, {self.num_labels})")
        return labels.astype(np.int64)


class BertForSequenceClassification(_BertClassifier):
    """A label (or ``num_labels`` scores) per sequence.

    Args:
        num_labels: classes (1: a regression score).
        problem_type: ``None`` (chosen on the first loss), or one of ``"regression"``,
            ``"single_label_classification"``, ``"multi_label_classification"``.
        classifier_dropout: dropout before the classifier (default: the encoder's ``dropout``).
        id2label: the labels' names, saved in ``config.json``.
        pooling: ``"pooler"`` (BERT's, as ``transformers``) or ``"mean"``.
        **encoder: :class:`~tfm_rs.models.BertEncoder`'s arguments (``vocab_size``, ``d_model``, …).

    ``forward(input_ids (B, T), token_type_ids=None)`` → logits ``(B, num_labels)``;
    ``loss(input_ids, labels, token_type_ids=None)`` → scalar (labels ``(B,)`` integers, ``(B,)``
    or ``(B, 1)`` floats for regression, ``(B, num_labels)`` floats for multi-label).
    """

    arch = "BertForSequenceClassification"

    def __init__(self, num_labels: int = 2, problem_type: Optional[str] = None,
                 classifier_dropout: Optional[float] = None, id2label: Optional[Sequence[str]] = None,
                 pooling: str = "pooler", **encoder: Any) -> None:
        if pooling not in ("pooler", "mean"):
            raise InvalidArgumentError(f"{self.arch}: pooling must be 'pooler' or 'mean', got {pooling!r}")
        if problem_type is not None and problem_type not in PROBLEM_TYPES:
            raise InvalidArgumentError(f"{self.arch}: problem_type must be None or one of {PROBLEM_TYPES}, "
                                       f"got {problem_type!r}")
        super().__init__(num_labels, classifier_dropout, id2label, encoder, pooler=pooling == "pooler")
        self.hf_compatible = pooling == "pooler"
        self._head_config.update(problem_type=problem_type, pooling=pooling)

    def forward(self, input_ids: Any, token_type_ids: Any = None) -> Tensor:
        """→ logits ``(B, num_labels)``."""
        hidden = self.bert.encode(input_ids, token_type_ids)                     # (B, T, d)
        if self.uses_pooler:
            pooled = self.bert.pooler_output(hidden)                             # (B, d)
        else:
            ids = self.bert._inputs(input_ids, token_type_ids)[0]
            keep = (ids != self.pad_id)[..., None].astype(np.float32)            # (B, T, 1)
            pooled = (hidden * tensor(keep)).sum(1) / tensor(keep.sum(1))
        return self.classifier(self.dropout(pooled))                             # (B, num_labels)

    def _problem_type(self, labels: np.ndarray) -> str:
        if self._head_config["problem_type"] is None:  # transformers' rule, kept once chosen
            self._head_config["problem_type"] = (
                "regression" if self.num_labels == 1 else
                "single_label_classification" if labels.dtype.kind in "iu" else "multi_label_classification")
        return self._head_config["problem_type"]

    def loss(self, input_ids: Any, labels: Any, token_type_ids: Any = None) -> Tensor:
        """The loss of ``problem_type`` against ``labels``, averaged over the batch."""
        labels = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels)
        if labels.dtype.kind not in "iuf":
            raise InvalidArgumentError(f"{self.arch}.loss: labels must be numbers, got dtype {labels.dtype}")
        kind = self._problem_type(labels)
        logits = self.forward(input_ids, token_type_ids)                         # (B, C)
        B = logits.shape[0]
        if kind == "single_label_classification":
            return F.cross_entropy(logits, self._class_labels(labels, (B,)), ignore_index=IGNORE_INDEX)
        want = (B, self.num_labels)
        if labels.shape not in (want, (B,) if self.num_labels == 1 else want):
            raise ShapeError(f"{self.arch}.loss: {kind} labels have shape {labels.shape}, the logits need {want}")
        y = labels.reshape(want).astype(np.float32)
        if not np.all(np.isfinite(y)):
            raise InvalidArgumentError(f"{self.arch}.loss: labels must be finite")
        if kind == "regression":
            d = logits - tensor(y)
            return (d * d).mean()
        if np.any((y < 0) | (y > 1)):
            raise InvalidArgumentError(f"{self.arch}.loss: multi-label targets must lie in [0, 1]")
        # max(x, 0) - x·y + log(1 + e^(-|x|)): binary cross-entropy on the logits, stable for any x.
        magnitude = F.relu(logits) + F.relu(-logits)
        return (F.relu(logits) - logits * tensor(y) + ((-magnitude).exp() + 1.0).log()).mean()


class BertForTokenClassification(_BertClassifier):
    """A label per token (named entities, parts of speech, …).

    Args:
        num_labels, classifier_dropout, id2label: as :class:`BertForSequenceClassification`'s.
        **encoder: :class:`~tfm_rs.models.BertEncoder`'s arguments.

    ``forward(input_ids (B, T), token_type_ids=None)`` → logits ``(B, T, num_labels)``;
    ``loss(input_ids, labels (B, T), token_type_ids=None)`` → mean cross-entropy over the
    positions whose label is not ``-100`` (give padding and continuation pieces ``-100``).
    """

    arch = "BertForTokenClassification"

    def __init__(self, num_labels: int = 2, classifier_dropout: Optional[float] = None,
                 id2label: Optional[Sequence[str]] = None, **encoder: Any) -> None:
        super().__init__(num_labels, classifier_dropout, id2label, encoder)

    def forward(self, input_ids: Any, token_type_ids: Any = None) -> Tensor:
        """→ logits ``(B, T, num_labels)``."""
        return self.classifier(self.dropout(self.bert.encode(input_ids, token_type_ids)))

    def loss(self, input_ids: Any, labels: Any, token_type_ids: Any = None) -> Tensor:
        labels = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels)
        logits = self.forward(input_ids, token_type_ids)                         # (B, T, C)
        B, T, C = logits.shape
        y = self._class_labels(labels, (B, T))
        return F.cross_entropy(logits.reshape(B * T, C), y.reshape(-1), ignore_index=IGNORE_INDEX)
