"""Decoding does not depend on the batch: every input decoded alone gives, bit for bit, the same
tokens, log-probabilities and scores as the same input decoded among others (a larger or smaller
batch, other inputs before or after it, inputs of other lengths, so padding in the encoder's
source batch). Greedy, beam search and sampling, GPT and encoder-decoder.

The sizes make the products in the decoder and the encoder take different GEMM paths for
different batches (up to 14 rows: one row panel of thin tiles; more: full tiles, row bands on
several threads); before the fix, up to 4 rows took a matrix-vector path that summed in another
order, which made near-ties come out differently.

Sampling draws sample ``j`` of input ``i`` from ``(seed, i, j)`` by design, so an input keeps its
index there while the rest of the batch changes."""

from __future__ import annotations

import numpy as np
import pytest
import tfm_rs
from tfm_rs.data import pad_batch
from tfm_rs.models import GPT, Seq2SeqTransformer

V = 301
rng = np.random.default_rng(7)
# Lengths 1..4 alone are products of 1..4 rows in the encoder; 20 prompts of up to 23 tokens
# prefill hundreds of rows (the banded, threaded GEMM).
PROMPTS = [rng.integers(3, V, n).tolist() for n in (1, 3, 4, 7, 12, 23, 5, 9, 16, 2, 11, 19, 6, 8, 21, 3, 14, 10,
                                                    4, 17)]
SEARCHES = {
    "greedy": {},
    "beam": {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.6},
    "sample": {"do_sample": True, "top_k": 40, "temperature": 1.3, "seed": 11, "num_return_sequences": 2},
}


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    tfm_rs.set_num_threads(2)
    yield


def gpt():
    tfm_rs.manual_seed(3)
    tfm_rs.nn.init.manual_seed(3)
    m = GPT(V, d_model=96, nhead=4, num_layers=2, max_len=48)
    # Spread GPT-2's near-equal 0.02-init logits so that the searches make real choices.
    for p in m.parameters():
        if len(p.shape) == 2:
            p.copy_(p.numpy() * 8)
    return m.eval()


def seq2seq(norm_first):
    tfm_rs.manual_seed(4)
    tfm_rs.nn.init.manual_seed(4)
    return Seq2SeqTransformer(V, V, d_model=96, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                              dim_feedforward=160, max_len=48, norm_first=norm_first).eval()


def hyps(out, i):
    """Input ``i``'s hypotheses: (tokens, log_prob bits, score bits) each."""
    n = out.num_return_sequences
    return [(out.sequences[k], np.float64(out.log_probs[k]).tobytes(), np.float64(out.scores[k]).tobytes())
            for k in range(i * n, (i + 1) * n)]


def compositions(n_inputs, keep_index):
    """Batches (lists of input indices) in which every input appears: alone, with all the others,
    in reverse order, and in overlapping groups of five; with ``keep_index`` an input sits at the
    same position in every batch it is compared in (the batch still changes around it)."""
    everything = list(range(n_inputs))
    if keep_index:
        # Input i at position i: the first i+1 inputs, or all of them with others' data changed.
        return [everything[: i + 1] for i in range(0, n_inputs, 3)] + [everything]
    groups = [everything[s:s + 5] for s in range(0, n_inputs, 3)]
    return [[i] for i in everything] + [everything, everything[::-1]] + groups


def check(decode, n_inputs, keep_index):
    """Decodes every composition and checks each input gets identical hypotheses everywhere."""
    seen = {}
    for batch in compositions(n_inputs, keep_index):
        out = decode(batch)
        for pos, i in enumerate(batch):
            key = (i, pos) if keep_index else i
            got = hyps(out, pos)
            if key in seen:
                assert got == seen[key][0], (
                    f"input {i}: batch {batch} gives {got[0][0]} (log_prob {got[0][1].hex()}) but batch "
                    f"{seen[key][1]} gave {seen[key][0][0][0]} (log_prob {seen[key][0][0][1].hex()})")
            else:
                seen[key] = (got, batch)
    assert len(seen) >= n_inputs


@pytest.mark.parametrize("search", SEARCHES)
def test_gpt_rows_do_not_depend_on_the_batch(search):
    m = gpt()
    kw = SEARCHES[search]
    check(lambda batch: m.generate([PROMPTS[i] for i in batch], 20, **kw), len(PROMPTS), search == "sample")


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("search", SEARCHES)
def test_seq2seq_rows_do_not_depend_on_the_batch(search, norm_first):
    m = seq2seq(norm_first)
    kw = dict(SEARCHES[search], max_new_tokens=16)
    sources = [[t for t in p if t != m.pad_id] for p in PROMPTS]
    check(lambda batch: m.generate(pad_batch([sources[i] for i in batch], m.pad_id), **kw), len(sources),
          search == "sample")


def test_the_batches_really_differ():
    """The checks above compare something: batches mix lengths (padding in the encoder), and the
    inputs get different outputs from each other."""
    m = gpt()
    out = m.generate(PROMPTS, 20)
    assert len({tuple(s[len(p):]) for s, p in zip(out.sequences, PROMPTS)}) > len(PROMPTS) // 2
    assert len({len(p) for p in PROMPTS}) > 10


def test_seq2seq_long_sources_padded_with_short_ones():
    """The encoder's attention runs over key tiles; a short source padded to a long batch gets
    many masked tiles, a long one none: neither changes a sentence's bits."""
    tfm_rs.manual_seed(1)
    tfm_rs.nn.init.manual_seed(1)
    m = Seq2SeqTransformer(V, V, d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=1,
                           dim_feedforward=96, max_len=400).eval()
    sources = [rng.integers(3, V, n).tolist() for n in (3, 150, 70, 333, 1, 65, 129)]
    check(lambda batch: m.generate(pad_batch([sources[i] for i in batch], m.pad_id), max_new_tokens=8,
                                   num_beams=2), len(sources), False)
