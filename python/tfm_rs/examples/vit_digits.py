"""A Vision Transformer on scikit-learn's 8×8 handwritten digits (shipped inside scikit-learn,
no download): ``python -m tfm_rs.examples.vit_digits [--epochs N] [--plot attention.png]``.

1,797 images, 10 classes; a stratified 80/20 split (seed 0) gives 1,437 training and 360
held-out images. 2×2 patches (16 tokens + the class token), 4 pre-LN layers of width 64, no
dropout; AdamW (lr 3e-3, weight decay 0.05) with warmup and cosine decay, batches of 64;
training images shifted by up to one pixel at random. Prints the
held-out accuracy; ``--plot`` draws each layer's attention of the class token over the patches.
"""

from __future__ import annotations

import argparse
import time
from typing import Tuple

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs.autograd import no_grad
from tfm_rs.models.vit import ViT
from tfm_rs.optim import AdamW
from tfm_rs.optim.lr_scheduler import WarmupCosineLR


def load_digits_split(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn (pip install scikit-learn), which ships the digits") from None
    data = load_digits()
    x, y = (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in range(10):  # stratified: 20% of each class held out
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[:round(0.2 * len(idx))]] = True
    return x[~test], y[~test], x[test], y[test]


def shift(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by up to one pixel in each direction (zeros fill in)."""
    out = np.zeros_like(images)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, len(images)), rng.integers(0, 3, len(images))
    for i in range(len(images)):
        out[i] = padded[i, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


def accuracy(model: ViT, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with no_grad():
        pred = np.concatenate([model(x[i:i + 256]).numpy().argmax(1) for i in range(0, len(x), 256)])
    model.train()
    return float((pred == y).mean())


def train(epochs: int = 150, batch_size: int = 64, seed: int = 0, verbose: bool = True, lr: float = 3e-3,
          dropout: float = 0.0, patch_size: int = 2) -> Tuple[ViT, float]:
    tfm_rs.manual_seed(seed)
    xtr, ytr, xte, yte = load_digits_split(seed)
    model = ViT(image_size=8, patch_size=patch_size, num_classes=10, d_model=64, nhead=4, num_layers=4,
                dim_feedforward=128, dropout=dropout)
    steps = epochs * (len(xtr) // batch_size)
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = WarmupCosineLR(opt, warmup_steps=max(1, steps // 20), total_steps=steps + 1)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(xtr))
        for i in range(len(xtr) // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(shift(xtr[idx], rng)), ytr[idx])
            loss.backward()
            opt.step()
            sched.step()
        if verbose and (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.3f}  held-out accuracy {accuracy(model, xte, yte):.4f}"
                  f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return model, accuracy(model, xte, yte)


def plot_attention(model: ViT, image: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = model.attention_maps(image)          # (L, H, 17, 17)
    cls = maps[:, :, 0, 1:].mean(axis=1)        # the class token over the 16 patches, mean of heads
    fig, axes = plt.subplots(1, len(cls) + 1, figsize=(2.2 * (len(cls) + 1), 2.4))
    axes[0].imshow(image, cmap="gray_r")
    axes[0].set_title("input")
    for i, (ax, m) in enumerate(zip(axes[1:], cls)):
        ax.imshow(m.reshape(4, 4), cmap="viridis")
        ax.set_title(f"layer {i}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the attention maps of a held-out image to this PNG")
    args = parser.parse_args(argv)
    model, acc = train(args.epochs, seed=args.seed)
    print(f"held-out accuracy: {acc:.4f} ({round(acc * 360)}/360)")
    if args.plot:
        plot_attention(model, load_digits_split(args.seed)[2][0], args.plot)
        print(f"attention maps: {args.plot}")


if __name__ == "__main__":
    main()
