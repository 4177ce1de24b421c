"""Claim 23: quantization, pruning and distillation accelerate a model.

One teacher is trained on the dictionary translation of claim 18 (``Seq2SeqTransformer``,
d = 128, 2+2 layers, d_ff = 512, pre-LN, plain embeddings; d = 64 in quick mode), and
compressed four ways:

* int8 dynamic quantization (:func:`tfm_rs.quantization.quantize_dynamic`);
* mask pruning (:mod:`tfm_rs.nn.utils.prune`): half of all matrix weights, smallest first
  (``global_unstructured``), left as masks;
* structural pruning: half of every attention's heads (``prune_heads``) and half of every
  feed-forward layer's channels (``prune_ffn``, the weakest), one-shot and after a fine-tune of a
  tenth of the teacher's steps;
* word-level distillation (:func:`tfm_rs.train.distill.distillation_loss`, T = 2, α = 0.5) into
  a student of half the width and 1+1 layers, trained for as many steps as the teacher; and the
  same student trained from the references alone, for reference.

For each: parameters, the size of its weights file (``save_checkpoint``'s ``model.safetensors``,
``save_quantized``'s file for int8), greedy decoding speed in tokens/s at batch 1 and batch 64
(all models timed in the same run, interleaved, median of the rounds), and quality (greedy token
accuracy and BLEU on held-out sentences).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

import tfm_rs
from tfm_rs import optim
from tfm_rs.checkpoint import save_checkpoint
from tfm_rs.claims.base import Claim, Outcome
from tfm_rs.claims.hashed_embeddings import BATCH, LENGTH, clone, DictionaryTask, make_model, score, test_set, train
from tfm_rs.models import Seq2SeqTransformer
from tfm_rs.nn.utils import prune
from tfm_rs.quantization import quantize_dynamic, quantized_state_dict, save_quantized
from tfm_rs.train.distill import distillation_loss

TEMPERATURE, ALPHA = 2.0, 0.5
# Speed ratios: "faster" from 1.25× (with less weight work, see below), "not faster" up to 1.1×
# (between: too close to call under load).
FASTER, NOT_FASTER = 1.25, 1.1
# Quality "holds" while the token accuracy stays within this of the teacher's.
MARGIN = 0.05


def distill(student: Seq2SeqTransformer, teacher: Seq2SeqTransformer, task: DictionaryTask, steps: int,
            seed: int) -> None:
    """Word-level distillation: the student matches the teacher's softened distributions."""
    opt = optim.Adam(student.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    teacher.eval()
    student.train()
    for _ in range(steps):
        src, tgt_in, tgt_out = task.batch(rng, BATCH)
        with tfm_rs.no_grad():
            soft = teacher(src, tgt_in).reshape(-1, task.vocab)
        loss = distillation_loss(student(src, tgt_in).reshape(-1, task.vocab), tgt_out.reshape(-1), soft,
                                 temperature=TEMPERATURE, alpha=ALPHA, ignore_index=student.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()


def mask_prune(model: Seq2SeqTransformer, amount: float) -> Seq2SeqTransformer:
    """Every weight matrix of the attention, feed-forward and output layers, pruned together by
    magnitude; the masks stay (no ``prune.remove``), as a model pruned during training keeps them."""
    targets: List[Tuple[Any, str]] = [(model.generator, "weight")]
    for stack in (model.transformer.encoder.layers, model.transformer.decoder.layers):
        for layer in stack:
            attentions = [layer.self_attn] + ([layer.multihead_attn] if hasattr(layer, "multihead_attn") else [])
            for attn in attentions:
                targets += [(attn, "in_proj_weight"), (attn.out_proj, "weight")]
            targets += [(layer.linear1, "weight"), (layer.linear2, "weight")]
    prune.global_unstructured(targets, prune.L1Unstructured, amount=amount)
    return model


def structural_prune(model: Seq2SeqTransformer) -> Seq2SeqTransformer:
    c = model.config
    keys = [f"encoder.{i}" for i in range(c["num_encoder_layers"])]
    keys += [f"decoder.{i}{kind}" for i in range(c["num_decoder_layers"]) for kind in ("", ".cross")]
    model.prune_heads({key: list(range(c["nhead"] // 2)) for key in keys})
    model.prune_ffn(amount=0.5)
    return model


def file_bytes(model: Any, folder: Path, name: str) -> int:
    if name == "int8":
        path = folder / "model.int8.safetensors"
        save_quantized(model, path)
        return path.stat().st_size
    return (save_checkpoint(folder / name, model.state_dict(), model.config, keep_previous=False)
            / "model.safetensors").stat().st_size


def multiplied_bytes(model: Any, quantized: bool) -> int:
    """The bytes of weights a forward pass reads and multiplies: the stored tensors, less the
    pruning masks (which only zero entries of the dense matrices they sit beside)."""
    state = quantized_state_dict(model) if quantized else model.state_dict()
    return int(sum(np.asarray(v.numpy() if hasattr(v, "numpy") else v).nbytes for k, v in state.items()
                   if not k.endswith("_mask")))


def decode_seconds(model: Any, src: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(src), batch):
        model.generate(src[i:i + batch], max_new_tokens=LENGTH + 1)
    return time.perf_counter() - start


def experiment(quick: bool) -> Outcome:
    words, steps, test_n, speed_n, rounds, width = ((300, 100, 256, 16, 3, 64) if quick
                                                    else (1000, 700, 1024, 64, 5, 128))
    finetune = steps // 10
    task = DictionaryTask(words)
    src, ref = test_set(task, test_n)
    seed = 0
    tfm_rs.manual_seed(seed)
    teacher = make_model(task.vocab, d_model=width, layers=2)
    train(teacher, task, steps, seed)
    teacher.eval()

    models: Dict[str, Any] = {"teacher (float32)": teacher,
                              "int8 dynamic quantization": quantize_dynamic(teacher),
                              "mask pruning, 50% of weights": mask_prune(clone(teacher), 0.5),
                              "half the heads and FFN channels": structural_prune(clone(teacher))}
    tuned = structural_prune(clone(teacher))
    train(tuned, task, finetune, seed + 1)
    models["half the heads and FFN channels + fine-tune"] = tuned
    tfm_rs.manual_seed(seed)
    student = make_model(task.vocab, d_model=width // 2, layers=1)
    distill(student, teacher, task, steps, seed + 2)
    models[f"distilled student (d {width // 2}, 1+1 layers)"] = student
    tfm_rs.manual_seed(seed)
    scratch = make_model(task.vocab, d_model=width // 2, layers=1)
    train(scratch, task, steps, seed + 2)
    models["student trained without the teacher"] = scratch

    rows: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(models.items()):
            model.eval()
            # The int8 model has the teacher's values, one byte each for its matrices.
            counted = teacher if "int8" in name else model
            rows[name] = {"parameters": counted.num_parameters(),
                          "file_bytes": file_bytes(model, Path(tmp), "int8" if "int8" in name else f"m{i}"),
                          "multiplied_bytes": multiplied_bytes(model, "int8" in name),
                          **score(model, src, ref)}
    speed_src = src[:speed_n]
    timings: Dict[str, Dict[int, List[float]]] = {name: {1: [], 64: []} for name in models}
    for _ in range(rounds):  # interleaved, so that a change of load hits every model alike
        for name, model in models.items():
            for batch in (1, 64):
                timings[name][batch].append(decode_seconds(model, speed_src, batch))
    tokens = speed_n * (LENGTH + 1)
    base = rows["teacher (float32)"]
    for name, row in rows.items():
        for batch in (1, 64):
            row[f"tokens_per_s_batch{batch}"] = tokens / statistics.median(timings[name][batch])
        row["speedup_batch1"] = row["tokens_per_s_batch1"] / base["tokens_per_s_batch1"]
        row["speedup_batch64"] = row["tokens_per_s_batch64"] / base["tokens_per_s_batch64"]
        row["size_ratio"] = row["file_bytes"] / base["file_bytes"]
        row["work_ratio"] = row["multiplied_bytes"] / base["multiplied_bytes"]
        best = max(row["speedup_batch1"], row["speedup_batch64"])
        # A clock reading alone does not make a model faster under a shared machine's load: it must
        # also read and multiply fewer weight bytes than the teacher (mask pruning does not).
        if row["work_ratio"] > 0.95 or best <= NOT_FASTER:
            row["speed"] = "not faster"
        else:
            row["speed"] = "faster" if best >= FASTER else "unclear"
        row["quality_holds"] = row["accuracy"] >= base["accuracy"] - MARGIN

    methods = [n for n in rows if n not in ("teacher (float32)", "student trained without the teacher")]
    faster = [n for n in methods if rows[n]["speed"] == "faster"]
    if faster and len(faster) == len(methods) and all(rows[n]["quality_holds"] for n in methods):
        verdict = "holds"
    elif not faster:
        verdict = "wrong"
    else:
        verdict = "it depends"

    def part(name: str) -> str:
        r = rows[name]
        return (f"{name}: {r['parameters']:,} parameters, {r['file_bytes'] / 1e6:.2f} MB, "
                f"{r['speedup_batch1']:.2f}×/{r['speedup_batch64']:.2f}× tokens/s, accuracy {r['accuracy']:.3f}")

    summary = (f"dictionary translation of {words} words, teacher {steps} steps; greedy decoding of {speed_n} "
               f"sentences at batch 1 / batch 64, median of {rounds} interleaved rounds, speed relative to the "
               f"teacher ({base['tokens_per_s_batch1']:.0f} / {base['tokens_per_s_batch64']:.0f} tokens/s): "
               + "; ".join(part(n) for n in rows)
               + f". Faster (≥ {FASTER}×): {', '.join(faster) or 'none'}")

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, 3, figsize=(14, 5.4))
        names = list(rows)
        short = ["teacher", "int8", "mask 50%", "struct. ½", "struct. ½ + FT", "distilled", "small, no KD"]
        colours = [f"C{i}" for i in range(len(names))]
        y = np.arange(len(names))
        axes[0].barh(y, [rows[n]["file_bytes"] / 1e6 for n in names], color=colours)
        axes[0].set_xlabel("weights file (MB)")
        axes[0].set_title(f"size, speed and quality of one teacher's compressions (V = {words})", fontsize=9)
        for k, (batch, hatch) in enumerate(((1, ""), (64, "//"))):
            axes[1].barh(y + (k - 0.5) * 0.4, [rows[n][f"speedup_batch{batch}"] for n in names], height=0.4,
                         color=colours, hatch=hatch, edgecolor="k", lw=0.3, label=f"batch {batch}")
        axes[1].axvline(1.0, color="k", lw=0.8)
        axes[1].axvline(FASTER, color="k", lw=0.8, ls=":")
        axes[1].set_xlabel("greedy decoding speed / the teacher's (tokens/s ratio)")
        axes[1].set_title(f"plain: batch 1, hatched: batch 64; median of {rounds} interleaved rounds", fontsize=9)
        axes[2].barh(y, [rows[n]["accuracy"] for n in names], color=colours)
        axes[2].set_xlabel("greedy token accuracy")
        for ax in axes:
            ax.set_yticks(y, short)
            ax.invert_yaxis()
        return fig

    figures = {"words": words, "teacher_steps": steps, "finetune_steps": finetune, "student_steps": steps,
               "temperature": TEMPERATURE, "alpha": ALPHA, "test_sentences": test_n, "speed_sentences": speed_n,
               "rounds": rounds, "margin": MARGIN, "faster_from": FASTER, "not_faster_up_to": NOT_FASTER,
               "rows": rows, "decode_seconds": {n: {str(b): v for b, v in t.items()} for n, t in timings.items()},
               "faster": faster}
    return Outcome(verdict, summary, figures, {"compression_speed": draw})


CLAIM = Claim(
    name="compression-speed",
    number=23,
    statement="Quantization, pruning and distillation accelerate a model.",
    expected="it depends",
    reason="It depends on the method: only those that shrink the work make decoding faster. A student of half "
           "the width and half the layers decoded about 2× (batch 1) to 3× (batch 64) as fast at the teacher's "
           "accuracy; removing half of every layer's heads and FFN channels about 1.1–1.6×, but one-shot it lost a "
           "fifth of the accuracy, which a fine-tune of a tenth of the steps won back; int8 dynamic quantization "
           "stores a byte per matrix weight (the file is 0.4× the size) and decoded 1.1–1.4× as fast at unchanged "
           "accuracy — in a model this small much of a decoding step is not matrix products. Mask pruning saves "
           "nothing: the dense matrices stay and are multiplied, and the masks nearly double the file. On this easy "
           "task the small model trained without the teacher did as well as the distilled one: its size made it fast, "
           "not the distillation.",
    experiment=experiment,
    not_measured=("Multi30k (a synthetic dictionary translation is used)", "beam search", "GPUs",
                  "a large model, where decoding is bound by the weights' memory traffic and int8 gains more",
                  "pruning during training (the masks are applied once, after training)"),
)
