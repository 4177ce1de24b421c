"""Pictures of a run (``tfm-rs plot RUN_DIR``): training curves, attention, positional encodings.

* :func:`attention_maps` runs a model once on one example and returns every attention layer's
  weights per head — encoder self-attention, decoder self-attention and cross-attention for a
  :class:`~tfm_rs.models.Seq2SeqTransformer`, self-attention for a :class:`~tfm_rs.models.GPT`.
  It needs no plotting library: each ``nn.MultiheadAttention`` is re-run through its explicit
  path (``need_weights=True, average_attn_weights=False``, the weights after masking and before
  dropout) for the duration of one forward pass.
* :func:`plot_curves`, :func:`plot_compare` (several runs' losses in one figure),
  :func:`plot_attention`, :func:`plot_positional_encoding` and :func:`plot_run` write PNG files
  with matplotlib (the optional extra ``tfm_rs[plot]``; the Agg backend, so no display is
  needed). Importing this module does not import matplotlib.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfm_rs.autograd import no_grad

__all__ = ["PlotError", "attention_maps", "capture_attention", "plot_attention", "plot_compare", "plot_curves",
           "plot_positional_encoding", "plot_run"]


class PlotError(ImportError):
    """matplotlib is missing (one line saying how to install it)."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'tfm_rs[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------ attention weights

@contextlib.contextmanager
def capture_attention(modules: Mapping[str, Any]) -> Iterator[Dict[str, np.ndarray]]:
    """While active, every ``nn.MultiheadAttention`` in ``modules`` (name → module) computes its
    weights per head and records them, as ``(N, H, L, S)`` arrays, under its name in the yielded
    dict (the last call wins). The modules' own ``forward`` is restored on exit."""
    captured: Dict[str, np.ndarray] = {}

    def recording(name: str, module: Any):
        forward = type(module).forward

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.update(need_weights=True, average_attn_weights=False)
            out, weights = forward(module, *args, **kwargs)
            captured[name] = weights.numpy()
            return out, weights
        return call

    try:
        for name, module in modules.items():
            module.forward = recording(name, module)  # an instance attribute shadows the method
        yield captured
    finally:
        for module in modules.values():
            if "forward" in module.__dict__:
                del module.forward


def attention_modules(model: Any) -> Dict[str, Any]:
    """The attention modules of a Seq2SeqTransformer (``encoder_self/L0``, ``decoder_self/L0``,
    ``cross/L0``, …) or of a GPT (``self/L0``, …), by name."""
    mods: Dict[str, Any] = {}
    if hasattr(model, "transformer"):
        for i, layer in enumerate(model.transformer.encoder.layers):
            mods[f"encoder_self/L{i}"] = layer.self_attn
        for i, layer in enumerate(model.transformer.decoder.layers):
            mods[f"decoder_self/L{i}"] = layer.self_attn
            mods[f"cross/L{i}"] = layer.multihead_attn
    elif hasattr(model, "layers"):
        for i, layer in enumerate(model.layers):
            mods[f"self/L{i}"] = layer.self_attn
    else:
        raise TypeError(f"attention_modules: {type(model).__name__} is neither a Seq2SeqTransformer nor a GPT")
    return mods


def attention_maps(model: Any, src_ids: Sequence[int],
                   tgt_ids: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Per-head attention weights of one example: name → ``(H, L, S)``.

    Seq2SeqTransformer: ``src_ids`` (no BOS/EOS) and ``tgt_ids``, the decoder input starting with
    BOS; names ``encoder_self/L{i}`` ``(H, S, S)``, ``decoder_self/L{i}`` ``(H, T, T)``,
    ``cross/L{i}`` ``(H, T, S)``. GPT: ``src_ids`` is the token sequence; names ``self/L{i}``.
    Eval mode (no dropout) during the pass; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with no_grad(), capture_attention(attention_modules(model)) as captured:
            src = np.asarray(src_ids, dtype=np.int64)[None]
            if tgt_ids is None:
                model(src)
            else:
                model(src, np.asarray(tgt_ids, dtype=np.int64)[None])
    finally:
        model.train(was_training)
    return {name: w[0] for name, w in captured.items()}


# ------------------------------------------------------------------------------ figures

def plot_curves(records: Sequence[Mapping[str, Any]], out_dir: Path) -> List[Path]:
    """``loss.png`` (training loss, its running mean, validation loss) and ``lr.png`` (the
    learning rate per step) from metrics records."""
    plt = _pyplot()
    train = [r for r in records if r.get("type", "train") == "train" and "loss" in r]
    valid = [r for r in records if r.get("type") == "valid" and "loss" in r]
    if not train:
        raise ValueError("no training records to plot (metrics.jsonl has no train lines)")
    steps = np.array([r["step"] for r in train])
    loss = np.array([r["loss"] for r in train], dtype=np.float64)
    out = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.8, alpha=0.4, label="train (label-smoothed)")
    k = max(1, len(loss) // 50)
    if k > 1:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"train, mean of {k}")
    if valid:
        ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="validation NLL")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    out.append(_save(fig, out_dir / "loss.png"))
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(steps, [r["lr"] for r in train])
    ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    out.append(_save(fig, out_dir / "lr.png"))
    return out


def plot_compare(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """One figure of several runs' losses against training minutes (``train_time``), so that runs
    of equal time budgets compare at a glance: each run's training loss as a running mean
    (label-smoothed, as logged) and its validation NLL as markers. ``runs`` maps a label to the
    run's metrics records (:func:`tfm_rs.runs.read_metrics`)."""
    if not runs:
        raise ValueError("plot_compare: no runs given")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, records in runs.items():
        train = [r for r in records if r.get("type", "train") == "train" and "loss" in r and "train_time" in r]
        if not train:
            raise ValueError(f"plot_compare: run {label!r} has no training records with train_time")
        minutes = np.array([r["train_time"] for r in train]) / 60.0
        loss = np.array([r["loss"] for r in train], dtype=np.float64)
        k = max(1, len(loss) // 50)
        line, = ax.plot(minutes[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5,
                        label=f"{label}: train")
        valid = [r for r in records if r.get("type") == "valid" and "loss" in r and "train_time" in r]
        if valid:
            ax.plot([r["train_time"] / 60.0 for r in valid], [r["loss"] for r in valid], "o--",
                    color=line.get_color(), ms=4, lw=0.8, label=f"{label}: validation NLL")
    ax.set(xlabel="training time (minutes)", ylabel="loss (nats/token)", title="Loss against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, Path(path))


def plot_attention(maps: Mapping[str, np.ndarray], tokens: Mapping[str, Tuple[List[str], List[str]]],
                   out_dir: Path) -> List[Path]:
    """One PNG per attention layer (``attention_encoder_self_L0.png``, …), one heatmap per head;
    ``tokens[kind] = (query labels, key labels)`` with ``kind`` the part of the name before ``/``."""
    plt = _pyplot()
    titles = {"encoder_self": "encoder self-attention", "decoder_self": "decoder self-attention (causal)",
              "cross": "encoder-decoder (cross) attention", "self": "self-attention (causal)"}
    out = []
    for name, w in maps.items():
        kind, layer = name.split("/")
        rows, cols = tokens[kind]
        H = w.shape[0]
        ncol = min(H, 4)
        nrow = math.ceil(H / ncol)
        size = max(2.6, 0.28 * max(len(rows), len(cols)))
        fig, axes = plt.subplots(nrow, ncol, figsize=(size * ncol + 1, size * nrow + 0.8), squeeze=False,
                                 constrained_layout=True)
        for h in range(nrow * ncol):
            ax = axes[h // ncol][h % ncol]
            if h >= H:
                ax.axis("off")
                continue
            im = ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"head {h}", fontsize=9)
            ax.set_xticks(range(len(cols)))
            ax.set_xticklabels(cols, rotation=90, fontsize=7)
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(rows, fontsize=7)
        fig.colorbar(im, ax=axes, shrink=0.6)
        fig.suptitle(f"{titles.get(kind, kind)}, layer {layer[1:]}  (rows: queries, columns: keys)")
        out.append(_save(fig, out_dir / f"attention_{kind}_{layer}.png"))
    return out


def plot_positional_encoding(d_model: int, max_len: int, out_dir: Path) -> Path:
    """``positional_encoding.png``: the sinusoidal table ``PE (max_len, d_model)`` as a heatmap,
    and a few of its dimensions as curves over positions (section 3.5 of the paper)."""
    from tfm_rs.nn.positional import sinusoidal_table

    plt = _pyplot()
    pe = sinusoidal_table(max_len, d_model)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    im = a.imshow(pe, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    a.set(xlabel="dimension i", ylabel="position", title=f"sin/cos positional encoding ({max_len}×{d_model})")
    fig.colorbar(im, ax=a)
    for i in sorted({0, 2, 6, d_model // 8 * 2, d_model // 4 * 2} & set(range(d_model))):
        b.plot(pe[:, i], label=f"dim {i} (sin)")
    b.set(xlabel="position", title="some dimensions: lower ones turn faster")
    b.legend(fontsize=8)
    return _save(fig, out_dir / "positional_encoding.png")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ a run

def _labels(run: Any, ids: Sequence[int], side: str) -> List[str]:
    task = run.data.task
    if task is not None:
        vocab = task.src_vocab if side == "src" else task.tgt_vocab
        return [vocab.itos[i].replace(" ", "␣") for i in ids]
    tok = run.tokenizer
    return [str(tok.id_to_token(int(i))) for i in ids]


Labels = Dict[str, Tuple[List[str], List[str]]]


def example_attention(run: Any, sentence: Optional[str]) -> Tuple[Dict[str, np.ndarray], Labels, str]:
    """Attention maps of a run's model on ``sentence`` (default: the first validation source or
    a fixed number for the numbers task) with the axis labels; a translation model attends over
    its own greedy translation. Returns ``(maps, labels, description)``."""
    from tfm_rs.runs import translate_sentences

    model, tok, task = run.model, run.tokenizer, run.data.task
    if run.kind == "lm":
        text = sentence or run.data.sample_text or ""
        ids = tok.encode(text)[: model.max_len] or [tok.eos_id]
        labels = _labels(run, ids, "tgt")
        return attention_maps(model, ids), {"self": (labels, labels)}, f"\"{text}\""
    if sentence is None:
        sentence = run.data.valid_texts[0][0] if run.data.valid_texts and run.data.valid_texts[0] else "3 452"
    src = task.encode_source(sentence) if task is not None else tok.encode(sentence)
    if not src:
        raise ValueError("the sentence is empty after tokenization")
    src = src[: model.max_len]
    hyp = translate_sentences(model, tok, [sentence], task=task)[0]
    tgt = [model.bos_id] + (task.encode_target(hyp) if task is not None else tok.encode(hyp))
    tgt = tgt[: model.max_len]
    s_lab, t_lab = _labels(run, src, "src"), ["<s>"] + _labels(run, tgt[1:], "tgt")
    labels = {"encoder_self": (s_lab, s_lab), "decoder_self": (t_lab, t_lab), "cross": (t_lab, s_lab)}
    return attention_maps(model, src, tgt), labels, f"\"{sentence}\" -> \"{hyp}\""


def plot_run(run_dir: Path, sentence: Optional[str] = None, out_dir: Optional[Path] = None) -> Tuple[List[Path], str]:
    """Every plot of a run into ``out_dir`` (default ``RUN_DIR/plots``): curves, positional
    encoding, and attention heatmaps for ``sentence``. Returns the files and a description of
    the example the attention maps show."""
    from tfm_rs.runs import load_run, read_metrics

    _pyplot()  # fail first, and in one line, without matplotlib
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    run = load_run(run_dir)
    files = plot_curves(read_metrics(run_dir), out_dir)
    c = run.model.config
    files.append(plot_positional_encoding(c["d_model"], min(c["max_len"], 128), out_dir))
    maps, labels, example = example_attention(run, sentence)
    files.extend(plot_attention(maps, labels, out_dir))
    return files, example
