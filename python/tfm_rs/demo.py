"""A short demo of the core: a two-layer Transformer encoder learns to reverse sequences.

Reversal needs attention: the token for position i sits at position T-1-i, so each position has
to find and copy another one. The model is written with ``tfm_rs.functional`` only (the
``tfm_rs.nn`` modules build on the same ops). Run with ``python -m tfm_rs.demo``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs.optim import Adam


def sinusoidal_positions(length: int, d_model: int) -> np.ndarray:
    """The paper's table: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(…)."""
    pos = np.arange(length)[:, None]
    div = np.exp(np.arange(0, d_model, 2) * (-np.log(10000.0) / d_model))
    pe = np.zeros((length, d_model), np.float32)
    pe[:, 0::2], pe[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
    return pe


class ReversalModel:
    """Embedding + sinusoidal positions → post-LN encoder layers → linear head."""

    def __init__(self, vocab: int, seq_len: int, d_model: int = 64, nhead: int = 4, layers: int = 2, seed: int = 0):
        rng = np.random.default_rng(seed)

        def param(*shape: int, scale: float | None = None) -> tfm_rs.Tensor:
            scale = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
            return tfm_rs.tensor(rng.uniform(-scale, scale, shape).astype(np.float32), requires_grad=True)

        def ones(n: int) -> tfm_rs.Tensor:
            return tfm_rs.tensor(np.ones(n, np.float32), requires_grad=True)

        def zeros(n: int) -> tfm_rs.Tensor:
            return tfm_rs.tensor(np.zeros(n, np.float32), requires_grad=True)

        self.d_model, self.nhead = d_model, nhead
        self.embedding = param(vocab, d_model)
        self.pe = sinusoidal_positions(seq_len, d_model)
        self.layers = [
            dict(in_w=param(3 * d_model, d_model), in_b=zeros(3 * d_model), out_w=param(d_model, d_model),
                 out_b=zeros(d_model), ln1_w=ones(d_model), ln1_b=zeros(d_model), ff1_w=param(4 * d_model, d_model),
                 ff1_b=zeros(4 * d_model), ff2_w=param(d_model, 4 * d_model), ff2_b=zeros(d_model),
                 ln2_w=ones(d_model), ln2_b=zeros(d_model))
            for _ in range(layers)
        ]
        self.head_w, self.head_b = param(vocab, d_model), zeros(vocab)

    def parameters(self) -> list[tfm_rs.Tensor]:
        return [self.embedding, self.head_w, self.head_b] + [p for layer in self.layers for p in layer.values()]

    def attention(self, x: tfm_rs.Tensor, p: dict) -> tfm_rs.Tensor:
        b, t, d = x.shape
        h = self.nhead
        qkv = F.linear(x, p["in_w"], p["in_b"]).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, T, Dh)
        return F.linear(y.transpose(1, 2).reshape(b, t, d), p["out_w"], p["out_b"])

    def __call__(self, ids: np.ndarray, training: bool = True) -> tfm_rs.Tensor:
        x = F.embedding(ids, self.embedding) * np.sqrt(self.d_model) + self.pe[: ids.shape[1]]  # (B, T, D)
        for p in self.layers:
            x = F.layer_norm(x + F.dropout(self.attention(x, p), 0.1, training), (self.d_model,),
                             p["ln1_w"], p["ln1_b"])
            ff = F.linear(F.relu(F.linear(x, p["ff1_w"], p["ff1_b"])), p["ff2_w"], p["ff2_b"])
            x = F.layer_norm(x + F.dropout(ff, 0.1, training), (self.d_model,), p["ln2_w"], p["ln2_b"])
        return F.linear(x, self.head_w, self.head_b)  # (B, T, V)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    tfm_rs.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = ReversalModel(args.vocab, args.seq_len, seed=args.seed)
    opt = Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.98), eps=1e-9)
    feats = tfm_rs.cpu_features()
    print(f"tfm_rs {tfm_rs.__version__}: SIMD path {feats['isa']}, {feats['num_threads']} threads")
    print(f"task: reverse sequences of {args.seq_len} tokens from a vocabulary of {args.vocab}")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        src = rng.integers(0, args.vocab, (args.batch, args.seq_len))
        logits = model(src)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), src[:, ::-1].reshape(-1), label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % max(1, args.steps // 10) == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}  ({time.perf_counter() - start:.1f}s)")

    test = rng.integers(0, args.vocab, (256, args.seq_len))
    with tfm_rs.no_grad():
        pred = model(test, training=False).numpy().argmax(-1)
    accuracy = float((pred == test[:, ::-1]).all(axis=1).mean())
    print(f"held-out sequences reversed exactly: {accuracy:.1%}")
    print(f"example: {test[0].tolist()} -> {pred[0].tolist()}")
    return accuracy


if __name__ == "__main__":
    main()
