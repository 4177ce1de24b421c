"""Compression measured on Multi30k (``docs/compression.md``): for a trained run (the 20-minute
model of ``tfm-rs train --config multi30k``),

* ``heads``: test BLEU (greedy, beam 4) and decoding time against the fraction of attention heads
  removed, least important first by ``head_importance`` (Michel et al. 2019) on training batches;
  the heads are physically removed (``prune_heads``), one layer always keeps one;
* ``sparsity``: test BLEU against global magnitude pruning of every weight matrix (embeddings
  included) at 0–90 %, with the decoding time, which does not fall (the zeros are still multiplied);
  ``sparsity-linear`` the same without the (shared) embedding matrix;
* ``students``: a student with about a quarter of the teacher's parameters (preset ``mini``),
  trained from scratch, with word-level and with sequence-level distillation for the same time.

    python benches/compress_multi30k.py --teacher runs/m30k --out runs/compress [--parts heads sparsity students]
    python benches/compress_multi30k.py --smoke    # a 2-step teacher, two points of each curve
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import tfm_rs
from tfm_rs import _core, config, metrics, nn, runs
from tfm_rs.data import collate, load_multi30k
from tfm_rs.bench import cpu_model, multi30k_or_skip
from tfm_rs.models import head_importance
from tfm_rs.nn.utils import prune

HEAD_FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)


def evaluate(model, tokenizer, test, beams=(1, 4)):
    """Test BLEU and decoding seconds for each beam size (greedy batch 128, beam batch 64)."""
    out = {}
    for b in beams:
        t0 = time.perf_counter()
        hyp = model.translate(test.src, tokenizer, num_beams=b, batch_size=128 if b == 1 else 64)
        out[f"seconds_beam{b}"] = time.perf_counter() - t0
        out[f"bleu_beam{b}"] = metrics.bleu(hyp, test.tgt)
    return out


def importance_batches(run, n_sentences, batch=64):
    data = load_multi30k("train", "de", "en")
    tok = run.tokenizer
    m = run.model
    cut = m.max_len - 1  # room for BOS/EOS
    src = [s[:cut] for s in tok.encode_batch(list(data.src[:n_sentences]))]
    tgt = [t[:cut] for t in tok.encode_batch(list(data.tgt[:n_sentences]))]
    for i in range(0, len(src), batch):
        b = collate(src[i:i + batch], tgt[i:i + batch], m.pad_id, m.bos_id, m.eos_id)
        yield b.src, b.tgt_in, b.tgt_out


def head_plan(scores, fraction):
    """The globally least important heads, ``fraction`` of all, keeping one head in every layer."""
    ranked = sorted((s, key, h) for key, layer in scores.items() for h, s in enumerate(layer))
    total = len(ranked)
    want = int(round(fraction * total))
    left = {key: len(layer) for key, layer in scores.items()}
    plan = {}
    for _, key, h in ranked:
        if sum(len(v) for v in plan.values()) == want:
            break
        if left[key] > 1:
            plan.setdefault(key, []).append(h)
            left[key] -= 1
    return plan, total


def part_heads(run, test, args, log):
    teacher = run.model.eval()
    scores = head_importance(teacher, importance_batches(run, args.importance_sentences))
    rows = []
    for frac in args.head_fractions:
        model = copy.deepcopy(teacher)
        plan, total = head_plan(scores, frac)
        if plan:
            model.prune_heads(plan)
        removed = sum(len(v) for v in plan.values())
        row = {"fraction": frac, "heads_removed": removed, "heads_total": total,
               "parameters": model.num_parameters(), "plan": {k: [int(h) for h in v] for k, v in plan.items()},
               **evaluate(model.eval(), run.tokenizer, test)}
        rows.append(row)
        log(f"heads -{removed}/{total}: BLEU {row['bleu_beam1']:.2f} / {row['bleu_beam4']:.2f} "
            f"(greedy / beam 4), {row['seconds_beam1']:.1f} s / {row['seconds_beam4']:.1f} s")
    return {"scores": {k: [float(x) for x in v] for k, v in scores.items()},
            "importance_sentences": args.importance_sentences, "rows": rows}


def weight_matrices(model, embeddings=True):
    """Every 2-D weight (linear, attention projections and, with ``embeddings``, the embedding
    tables) as ``(module, name)``, each tensor once: a tied output projection is the embedding."""
    out, seen, skip = [], set(), set()
    if not embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.ndim == 2 and "weight" in name and id(p) not in seen and id(p) not in skip:
                seen.add(id(p))
                out.append((module, name))
    return out


def sparsify(model, sparsity, embeddings):
    """Global magnitude pruning made permanent; returns the pruned ``(module, name)`` list."""
    params = weight_matrices(model, embeddings)
    if sparsity > 0:
        prune.global_unstructured(params, prune.L1Unstructured, amount=sparsity)
        for module, name in params:
            prune.remove(module, name)
    return params


def part_sparsity(run, test, args, log, embeddings=True):
    rows = []
    for sparsity in args.sparsities:
        model = copy.deepcopy(run.model)
        params = sparsify(model, sparsity, embeddings)
        zeros = sum(int((getattr(m, n).numpy() == 0).sum()) for m, n in params)
        size = sum(getattr(m, n).numpy().size for m, n in params)
        row = {"sparsity": sparsity, "zero_fraction": zeros / size, "matrices": len(params), "weights": size,
               **evaluate(model.eval(), run.tokenizer, test)}
        rows.append(row)
        log(f"sparsity {sparsity:.0%}{'' if embeddings else ' (no embeddings)'}: BLEU {row['bleu_beam1']:.2f} / "
            f"{row['bleu_beam4']:.2f}, {row['seconds_beam1']:.1f} s / {row['seconds_beam4']:.1f} s")
    return {"embeddings": embeddings, "rows": rows}


def row_name(part, row):
    if part == "heads":
        return f"heads {row['heads_removed']}/{row['heads_total']}"
    return f"sparsity {row['sparsity']:.0%}"


def part_timing(run, test, args, log, result):
    """Decoding seconds of the pruned models measured again, interleaved (every model once per
    round, median of ``--rounds``), so load that drifts during the BLEU passes cancels out."""
    models = {}
    for row in result.get("heads", {}).get("rows", []):
        model = copy.deepcopy(run.model)
        if row["plan"]:
            model.prune_heads(row["plan"])
        models[row_name("heads", row)] = model.eval()
    for row in result.get("sparsity", {}).get("rows", []):
        model = copy.deepcopy(run.model)
        sparsify(model, row["sparsity"], embeddings=True)
        models[row_name("sparsity", row)] = model.eval()
    if not models:
        raise SystemExit("timing: run the heads or sparsity part first (their rows give the models)")
    src = test.src[:args.timing_sentences]
    times = {name: {1: [], 4: []} for name in models}
    tokens = {name: {} for name in models}  # a pruned model may write longer output: per token is fairer
    for _ in range(args.rounds):
        for name, model in models.items():
            for b in (1, 4):
                t0 = time.perf_counter()
                hyp = model.translate(src, run.tokenizer, num_beams=b, batch_size=128 if b == 1 else 64)
                times[name][b].append(time.perf_counter() - t0)
                tokens[name][b] = sum(len(ids) + 1 for ids in run.tokenizer.encode_batch(hyp))
    rows = []
    for name, t in times.items():
        row = {"model": name}
        for b in (1, 4):
            row[f"seconds_beam{b}"] = statistics.median(t[b])
            row[f"tokens_beam{b}"] = tokens[name][b]
            row[f"tok_s_beam{b}"] = tokens[name][b] / row[f"seconds_beam{b}"]
            row[f"all_seconds_beam{b}"] = t[b]
        rows.append(row)
        log(f"{name}: greedy {row['seconds_beam1']:.2f} s ({row['tok_s_beam1']:.0f} tok/s), "
            f"beam 4 {row['seconds_beam4']:.2f} s ({row['tok_s_beam4']:.0f} tok/s)")
    return {"sentences": len(src), "rounds": args.rounds, "rows": rows}


def part_students(args, out, log):
    from tfm_rs.train.distill import distill_run

    teacher = runs.load_run(args.teacher, need_valid=False)
    budget = {"max_steps": args.student_steps} if args.student_steps else {"minutes": args.student_minutes}
    results = {"teacher_parameters": teacher.model.num_parameters(), "budget": budget, "rows": []}
    for kind in args.students:
        run_dir = out / f"student-{kind}"
        if kind == "scratch":
            cfg = {s: dict(v) for s, v in teacher.config.items()}
            cfg["model"] = {"preset": args.student_preset}
            cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in ("minutes", "max_steps")}
            cfg["train"].update(out=str(run_dir), **budget)
            cfg["data"]["tokenizer"] = str(Path(args.teacher) / runs.TOKENIZER_FILE)
            r = runs.train_run(config.resolve(cfg, {}), quiet=True, out=log)
        else:
            r = distill_run(args.teacher, run_dir, preset=args.student_preset, level=kind, quiet=True,
                            out=log, **budget)
        row = {"student": kind, "parameters": r.get("params"), "steps": r.get("steps"),
               "bleu_beam1": r.get("bleu_greedy"), "bleu_beam4": r.get("bleu"),
               "train_minutes": r.get("train_minutes"), "teacher_seconds": r.get("distill", {}).get("teacher_seconds")}
        results["rows"].append(row)
        log(f"student {kind}: {row}")
    return results


def plot(result, outdir):
    """One PNG per measured curve: BLEU (left axis) and decoding time relative to the unpruned
    model (right axis) against the fraction removed."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    curves = (("heads", "fraction", "fraction of attention heads removed (by importance)", "compress_heads.png"),
              ("sparsity", "sparsity", "fraction of weights zeroed (global magnitude)", "compress_sparsity.png"))
    for part, key, xlabel, name in curves:
        if part not in result:
            continue
        rows = result[part]["rows"]
        x = [r[key] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for b, style in ((1, "o-"), (4, "s-")):
            ax.plot(x, [r[f"bleu_beam{b}"] for r in rows], style, label=f"BLEU, {'greedy' if b == 1 else 'beam 4'}")
        if part == "sparsity" and "sparsity-linear" in result:
            lin = result["sparsity-linear"]["rows"]
            ax.plot([r["sparsity"] for r in lin], [r["bleu_beam4"] for r in lin], "^--",
                    label="BLEU, beam 4, embeddings kept dense")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test BLEU (test_2016_flickr)")
        timed = {r["model"]: r for r in result.get("timing", {}).get("rows", [])}
        names = [row_name(part, r) for r in rows]
        if all(n in timed for n in names):  # the interleaved re-timing is the better figure
            rows_t = [timed[n] for n in names]
        else:
            rows_t = rows
        ax2 = ax.twinx()
        top = 1.0
        for b, style in ((1, "o:"), (4, "s:")):
            base = rows_t[0][f"seconds_beam{b}"]
            ratios = [r[f"seconds_beam{b}"] / base for r in rows_t]
            top = max(top, *ratios)
            ax2.plot(x, ratios, style, color="grey", alpha=0.7,
                     label=f"decoding time, {'greedy' if b == 1 else 'beam 4'} (right)")
        ax2.set_ylabel("decoding time / unpruned")
        ax2.set_ylim(0, 1.15 * top)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower left")
        ax.set_title(f"Multi30k 20-minute model: {part} pruning", fontsize=10)
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="a trained Multi30k run directory")
    ap.add_argument("--out", default="runs/compress")
    ap.add_argument("--parts", nargs="+", default=["heads", "sparsity", "students"],
                    choices=("heads", "sparsity", "sparsity-linear", "students", "timing"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timing: interleaved rounds (median)")
    ap.add_argument("--timing-sentences", type=int, default=500, help="timing: test sentences decoded per model")
    ap.add_argument("--importance-sentences", type=int, default=1024)
    ap.add_argument("--student-preset", default="mini")
    ap.add_argument("--students", nargs="+", default=["scratch", "word", "sequence"],
                    choices=("scratch", "word", "sequence"))
    ap.add_argument("--student-minutes", type=float, default=10.0)
    ap.add_argument("--student-steps", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--plots", help="write the PNGs into this directory (default: --out)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plots from --out/compress.json")
    ap.add_argument("--smoke", action="store_true", help="a 2-step tiny teacher, two points per curve")
    args = ap.parse_args()
    args.head_fractions, args.sparsities = HEAD_FRACTIONS, SPARSITIES
    if args.plot_only:
        plot(json.loads((Path(args.out) / "compress.json").read_text()), Path(args.plots or args.out))
        return
    if not multi30k_or_skip(args.smoke):
        return
    tfm_rs.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="compress-smoke-") if args.smoke else args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.head_fractions, args.sparsities, args.importance_sentences = (0.0, 0.5), (0.0, 0.5), 64
        args.student_steps, args.test_limit, args.student_preset, args.rounds = 2, 10, "tiny", 1
        args.parts = [*args.parts, "timing"]
        args.teacher = str(out / "teacher")
        data = {"task": "parallel", "vocab_size": 500}
        for split, name, n in (("train", "", 300), ("val", "valid_", 30), ("test", "test_", 10)):
            corpus = load_multi30k(split, "de", "en")
            for side, lines in (("src", corpus.src), ("tgt", corpus.tgt)):
                path = out / f"{split}.{side}"
                path.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
                data[name + side] = str(path)
        train = {"out": args.teacher, "max_steps": 2, "valid_every": 0, "bleu_every": 0, "save_every": 0,
                 "average": 1, "threads": args.threads, "test_limit": 10}
        cfg = config.resolve({"data": data, "train": train, "optim": {"max_tokens": 300},
                              "model": {"preset": "tiny"}})
        runs.train_run(cfg, quiet=True)
    elif not args.teacher:
        ap.error("--teacher RUN_DIR is required (or --smoke)")

    def log(msg):
        print(msg, flush=True)

    run = runs.load_run(args.teacher, need_valid=False)
    corpus = load_multi30k("test", "de", "en")
    test = SimpleNamespace(src=corpus.src[:args.test_limit], tgt=corpus.tgt[:args.test_limit])
    saved = out / "compress.json"
    result = json.loads(saved.read_text()) if saved.exists() else {}
    result.update({"cpu": cpu_model(), "isa": _core.cpu_features(),
                   "threads": args.threads, "teacher": str(args.teacher), "test_sentences": len(test.src)})
    parts = {"heads": lambda: part_heads(run, test, args, log),
             "sparsity": lambda: part_sparsity(run, test, args, log),
             "sparsity-linear": lambda: part_sparsity(run, test, args, log, embeddings=False),
             "students": lambda: part_students(args, out, log),
             "timing": lambda: part_timing(run, test, args, log, result)}
    for name in args.parts:
        t0 = time.perf_counter()
        result[name] = parts[name]()
        result[name]["seconds"] = time.perf_counter() - t0
        (out / "compress.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    plot(result, Path(args.plots) if args.plots else out)
    log(f"wrote {out / 'compress.json'} and the plots")


if __name__ == "__main__":
    main()
