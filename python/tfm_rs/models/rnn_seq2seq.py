"""RNNsearch (Bahdanau et al., 2015): the attentional recurrent encoder-decoder the Transformer
replaced, as a baseline trained and decoded through the same interfaces as
:class:`~tfm_rs.models.Seq2SeqTransformer`.

* Encoder: embeddings, then a bidirectional :class:`tfm_rs.nn.GRU` (``num_encoder_layers``)
  over each source up to its length (padding never enters a state).
* Decoder: a GRU started from ``tanh(bridge(backward state of the encoder))``; at step t its
  state ``h_t`` queries the encoder outputs with :class:`tfm_rs.nn.AdditiveAttention` (padded
  source positions get weight 0), and ``o_t = tanh(combine([h_t; c_t]))`` feeds the output
  projection. With ``input_feeding`` (Luong et al., 2015) ``o_{t-1}`` is also an input of step
  t, so training runs step by step; without it the decoder GRU runs over the whole target in
  one op and attention over all steps at once.

Shapes and methods as :class:`Seq2SeqTransformer`: ``forward(src_ids (B, S), tgt_ids (B, T))``
→ logits ``(B, T, V)``, ``loss``, ``generate`` (greedy / beam search), ``translate``, ``config``
/ ``from_config`` (checkpoints). Decoding runs its search in Python over a step function: the
native search in :mod:`tfm_rs.decode` drives the Transformer decoder's key/value cache in Rust
and takes no other kind of step.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import nn
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.autograd import no_grad
from tfm_rs.decode.generate import GenerationOutput, _count, _number
from tfm_rs.models._common import as_ids, check_config_arch

__all__ = ["RNNSeq2Seq"]

# The decoder state between steps: the GRU state (1, N, H) and the previous output o_{t-1}
# (N, H) (None without input feeding).
State = Tuple[Tensor, Optional[Tensor]]


class _Memory:
    """What every decoding step reads from the encoder: its outputs (N, S, 2H), their projection
    by the attention's key layer, and the source padding mask (N, S)."""

    def __init__(self, outputs: Tensor, keys: Tensor, pad: np.ndarray) -> None:
        self.outputs, self.keys, self.pad = outputs, keys, pad

    def select(self, rows: np.ndarray) -> "_Memory":
        return _Memory(_rows(self.outputs, rows), _rows(self.keys, rows), self.pad[rows])


def _rows(t: Tensor, rows: np.ndarray) -> Tensor:
    """``t[rows]`` along the first axis (no gradient needed: decoding only)."""
    return tfm_rs.tensor(t.numpy()[rows])


class RNNSeq2Seq(nn.Module):
    """The attentional GRU encoder-decoder (see the module docstring).

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes.
        embed_dim: token embedding width (source and target).
        hidden_size: GRU state width (the encoder's outputs are twice as wide).
        attention_dim: width of the additive attention's hidden layer (default ``hidden_size``).
        num_encoder_layers: stacked bidirectional encoder layers.
        dropout: on embeddings, between encoder layers and before the output projection.
        input_feeding: feed the previous attentional output into each decoder step.
        max_len, pad_id, bos_id, eos_id: as :class:`Seq2SeqTransformer`.
    """

    arch = "RNNSeq2Seq"

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_dim: int = 256, hidden_size: int = 256,
                 attention_dim: Optional[int] = None, num_encoder_layers: int = 1, dropout: float = 0.1,
                 input_feeding: bool = True, max_len: int = 1024, pad_id: int = 0, bos_id: int = 1,
                 eos_id: int = 2) -> None:
        super().__init__()
        if src_vocab_size <= 0 or tgt_vocab_size <= 0:
            raise InvalidArgumentError(f"RNNSeq2Seq: vocabulary sizes must be positive, got {src_vocab_size} "
                                       f"and {tgt_vocab_size}")
        if max_len <= 0:
            raise InvalidArgumentError(f"RNNSeq2Seq: max_len must be positive, got {max_len}")
        for name, v in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= v < tgt_vocab_size:
                raise InvalidArgumentError(f"RNNSeq2Seq: {name}={v} outside the target vocabulary")
        attention_dim = hidden_size if attention_dim is None else attention_dim
        self._config: Dict[str, Any] = dict(
            src_vocab_size=int(src_vocab_size), tgt_vocab_size=int(tgt_vocab_size), embed_dim=int(embed_dim),
            hidden_size=int(hidden_size), attention_dim=int(attention_dim),
            num_encoder_layers=int(num_encoder_layers), dropout=float(dropout), input_feeding=bool(input_feeding),
            max_len=int(max_len), pad_id=int(pad_id), bos_id=int(bos_id), eos_id=int(eos_id))
        self.max_len, self.hidden_size = int(max_len), int(hidden_size)
        self.src_vocab_size, self.tgt_vocab_size = int(src_vocab_size), int(tgt_vocab_size)
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
        self.input_feeding = bool(input_feeding)
        h = self.hidden_size
        self.src_embed = nn.Embedding(src_vocab_size, embed_dim,
                                      padding_idx=pad_id if pad_id < src_vocab_size else None)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, embed_dim, padding_idx=pad_id)
        self.encoder = nn.GRU(embed_dim, h, num_layers=num_encoder_layers, batch_first=True, dropout=dropout,
                              bidirectional=True)
        self.bridge = nn.Linear(h, h)
        self.attention = nn.AdditiveAttention(h, 2 * h, attention_dim)
        self.decoder = nn.GRU(embed_dim + (h if self.input_feeding else 0), h, batch_first=True)
        self.combine = nn.Linear(3 * h, h)
        self.dropout = nn.Dropout(dropout)
        self.generator = nn.Linear(h, tgt_vocab_size)

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments plus ``"arch"`` (JSON-serializable); see :meth:`from_config`."""
        return {"arch": self.arch, **self._config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RNNSeq2Seq":
        return cls(**check_config_arch(config, cls.arch))

    def num_parameters(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.parameters()))

    def source_ids(self, src_ids: Any) -> np.ndarray:
        """``src_ids`` checked as int64 ``(B, S)``, right-padded with ``pad_id``, no empty row."""
        src = as_ids(src_ids, "src_ids", self.src_vocab_size, self.max_len, type(self).__name__)
        empty = np.all(src == self.pad_id, axis=1)
        if empty.any():
            raise InvalidArgumentError(f"RNNSeq2Seq: src_ids row {int(np.flatnonzero(empty)[0])} is empty (only "
                                       f"pad_id={self.pad_id})")
        return src

    def _tgt(self, tgt_ids: Any) -> np.ndarray:
        return as_ids(tgt_ids, "tgt_ids", self.tgt_vocab_size, self.max_len, type(self).__name__)

    # ------------------------------------------------------------------ model

    def _encode(self, src: np.ndarray) -> Tuple[_Memory, Tensor]:
        """The decoder's memory and initial GRU state (1, B, H)."""
        pad = src == self.pad_id
        outputs, h_n = self.encoder(self.dropout(self.src_embed(src)), lengths=(~pad).sum(axis=1))
        # h_n[-1]: the last layer's backward direction, which ends at the first source token.
        h0 = self.bridge(h_n[h_n.shape[0] - 1:]).tanh()
        return _Memory(outputs, self.attention.project_keys(outputs), pad), h0

    def _attend(self, h: Tensor, memory: _Memory) -> Tensor:
        """``o = tanh(combine([h; context]))`` for decoder states ``h`` (N, [T,] H)."""
        context, _ = self.attention(h, memory.outputs, key_padding_mask=memory.pad, projected_key=memory.keys)
        return self.combine(tfm_rs.cat([h, context], h.ndim - 1)).tanh()

    def _step(self, emb: Tensor, state: State, memory: _Memory) -> Tuple[Tensor, State]:
        """One decoder step: target embeddings (N, E) → (o_t (N, H), next state)."""
        h, feed = state
        x = emb if feed is None else tfm_rs.cat([emb, feed], 1)
        out, h = self.decoder(x.unsqueeze(1), h)
        o = self._attend(out.squeeze(1), memory)
        return o, (h, o if self.input_feeding else None)

    def _initial_state(self, h0: Tensor) -> State:
        feed = tfm_rs.tensor(np.zeros((h0.shape[1], self.hidden_size), np.float32)) if self.input_feeding else None
        return h0, feed

    def forward(self, src_ids: Any, tgt_ids: Any) -> Tensor:
        """src_ids ``(B, S)``, tgt_ids ``(B, T)`` (decoder input, ``[bos] + y``) → logits ``(B, T, V)``."""
        src, tgt = self.source_ids(src_ids), self._tgt(tgt_ids)
        if src.shape[0] != tgt.shape[0]:
            raise ShapeError(f"RNNSeq2Seq: src_ids has batch size {src.shape[0]} but tgt_ids has {tgt.shape[0]}")
        memory, h0 = self._encode(src)
        emb = self.dropout(self.tgt_embed(tgt))
        if self.input_feeding:
            state, outs = self._initial_state(h0), []
            for t in range(tgt.shape[1]):
                o, state = self._step(emb[:, t], state, memory)
                outs.append(o.unsqueeze(1))
            hidden = tfm_rs.cat(outs, 1)
        else:
            states, _ = self.decoder(emb, h0)
            hidden = self._attend(states, memory)
        return self.generator(self.dropout(hidden))

    def loss(self, src_ids: Any, tgt_in: Any, tgt_out: Any, label_smoothing: float = 0.0,
             reduction: str = "mean") -> Tensor:
        """Cross-entropy of ``tgt_out (B, T)`` given ``tgt_in (B, T)``, ignoring ``pad_id`` targets."""
        tgt_out_a = as_ids(tgt_out, "tgt_out", self.tgt_vocab_size, self.max_len, type(self).__name__)
        logits = self.forward(src_ids, tgt_in)
        return F.cross_entropy(logits.reshape(-1, self.tgt_vocab_size), tgt_out_a.reshape(-1),
                               ignore_index=self.pad_id, reduction=reduction, label_smoothing=label_smoothing)

    # ------------------------------------------------------------------ decoding

    def _log_probs(self, tokens: np.ndarray, state: State, memory: _Memory) -> Tuple[np.ndarray, State]:
        o, state = self._step(self.tgt_embed(tokens), state, memory)
        lp = F.log_softmax(self.generator(o), -1).numpy().astype(np.float64)
        lp[:, self.pad_id] = -np.inf  # padding is never generated
        return lp, state

    def generate(self, src_ids: Any, max_new_tokens: Optional[int] = None, max_len_a: float = 1.5,
                 max_len_b: int = 10, num_beams: int = 1, length_penalty: float = 0.6,
                 num_return_sequences: int = 1) -> GenerationOutput:
        """Translations of ``src_ids (B, S)``: greedy (``num_beams=1``) or beam search ranking
        finished hypotheses by ``log_prob / ((5 + len) / 6)^length_penalty`` (as the native
        search). At most ``max_new_tokens`` tokens, else ``max_len_a · S_i + max_len_b`` (capped by
        ``max_len``). A beam stops once it holds ``num_beams`` finished hypotheses."""
        src = self.source_ids(src_ids)
        beams = _count("num_beams", num_beams, 1)
        n_ret = _count("num_return_sequences", num_return_sequences, 1)
        if n_ret > beams:
            raise InvalidArgumentError(f"generate: num_return_sequences ({n_ret}) > num_beams ({beams})")
        alpha = _number("length_penalty", length_penalty)
        if max_new_tokens is not None:
            limits = [_count("max_new_tokens", max_new_tokens, 0)] * src.shape[0]
        else:
            a, b = _number("max_len_a", max_len_a), _number("max_len_b", max_len_b)
            limits = [int(min(max(a * n + b, 0), self.max_len)) for n in (src != self.pad_id).sum(axis=1)]
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                memory, h0 = self._encode(src)
                results = [self._beam(memory.select(np.array([i])), h0[:, i:i + 1], limits[i], beams, alpha)
                           for i in range(src.shape[0])] if beams > 1 else self._greedy(memory, h0, limits)
        finally:
            self.train(was_training)
        out = GenerationOutput(num_return_sequences=n_ret)
        for hyps in results:
            for tokens, log_prob, score in hyps[:n_ret]:
                out.sequences.append(tokens)
                out.log_probs.append(float(log_prob))
                out.scores.append(float(score))
        return out

    def _greedy(self, memory: _Memory, h0: Tensor, limits: List[int]) -> List[List[Tuple[List[int], float, float]]]:
        n = h0.shape[1]
        state = self._initial_state(h0)
        tokens = np.full(n, self.bos_id, np.int64)
        seqs: List[List[int]] = [[] for _ in range(n)]
        total = np.zeros(n)
        alive = np.array([lim > 0 for lim in limits])
        for _ in range(max(limits, default=0)):
            if not alive.any():
                break
            lp, state = self._log_probs(tokens, state, memory)
            tokens = lp.argmax(axis=1)
            for i in np.flatnonzero(alive):
                seqs[i].append(int(tokens[i]))
                total[i] += lp[i, tokens[i]]
                if tokens[i] == self.eos_id or len(seqs[i]) >= limits[i]:
                    alive[i] = False
        return [[(seqs[i], total[i], total[i])] for i in range(n)]

    def _beam(self, memory: _Memory, h0: Tensor, limit: int, k: int,
              alpha: float) -> List[Tuple[List[int], float, float]]:
        """Beam search for one source (``memory`` and ``h0`` of one row)."""
        def penalty(length: int) -> float:
            return ((5.0 + length) / 6.0) ** alpha

        seqs: List[List[int]] = [[]]
        scores = np.zeros(1)
        state = self._initial_state(h0)
        finished: List[Tuple[List[int], float, float]] = []
        mem = memory
        for step in range(limit):
            lp, state = self._log_probs(np.array([s[-1] if s else self.bos_id for s in seqs]), state, mem)
            cand = (scores[:, None] + lp).ravel()
            order = np.argsort(-cand, kind="stable")[: 2 * k]
            parents, next_seqs, next_scores = [], [], []
            for c in order:
                if not np.isfinite(cand[c]):
                    break
                p, tok = divmod(int(c), lp.shape[1])
                seq = seqs[p] + [tok]
                if tok == self.eos_id or step + 1 == limit:
                    finished.append((seq, float(cand[c]), float(cand[c]) / penalty(len(seq))))
                else:
                    parents.append(p)
                    next_seqs.append(seq)
                    next_scores.append(cand[c])
                if len(next_seqs) == k:
                    break
            if len(finished) >= k or not next_seqs:
                break
            rows = np.array(parents)
            h, feed = state
            state = (_rows(h.transpose(0, 1), rows).transpose(0, 1), None if feed is None else _rows(feed, rows))
            if len(rows) != len(seqs) or mem.outputs.shape[0] != len(rows):
                mem = memory.select(np.zeros(len(rows), np.int64))
            seqs, scores = next_seqs, np.array(next_scores)
        if not finished:  # a limit of 0
            finished.append(([], 0.0, 0.0))
        return sorted(finished, key=lambda f: -f[2])[:k]

    def translate(self, sentences: Sequence[str], tokenizer: Any, num_beams: int = 4, length_penalty: float = 0.6,
                  batch_size: int = 64, **generate: Any) -> List[str]:
        """Text in, text out (see :func:`tfm_rs.decode.translate`)."""
        from tfm_rs.decode.translate import translate
        return translate(self, sentences, tokenizer, num_beams, length_penalty, batch_size, **generate)

    def extra_repr(self) -> str:
        c = self._config
        return (f"embed_dim={c['embed_dim']}, hidden_size={c['hidden_size']}, "
                f"encoder_layers={c['num_encoder_layers']}, input_feeding={c['input_feeding']}")

