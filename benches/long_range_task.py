"""Train the same small classifier with each attention kind on a long-sequence task.

The task is :class:`tfm_rs.tasks.FarRecallTask`: ``--length`` tokens (2,048), ``[CLS]`` and a
query first, the key-value pairs somewhere in the second half, the label the queried key's value
(8 classes, chance 12.5%). The model is ``BertForSequenceClassification`` (d_model 32, 2 heads,
2 layers, FFN 64, pooled at ``[CLS]``), built with each kind of ``--kinds``:

* ``dense``: full attention;
* ``window``: a window of ``--window`` keys each side, no global token: after 2 layers ``[CLS]``
  has seen positions 0 … 2·window (256 at the defaults), the pairs lie at 1,024 or beyond, so it
  cannot do better than chance, whatever it learns;
* ``window+global``: the same window with ``[CLS]`` global (Longformer);
* ``block_sparse``: BigBird, blocks of 64, a 3-block window, the first block global, 3 random;
* ``linear``: linear attention (elu + 1 feature map);
* ``lsh``: Reformer LSH attention, 4 hashes, buckets of 64 (queries and keys shared).

Every kind trains ``--steps`` AdamW steps of ``--batch`` sequences (the same batches for all)
in its own process, so that its peak resident memory (``ru_maxrss``) is its own; the accuracy is
on ``--eval`` held-out sequences. Each run writes ``OUT/<kind>/metrics.jsonl`` (train and valid
records with ``train_time``), so ``tfm-rs plot --compare OUT/compare.png OUT/*/`` draws the losses
against training minutes; this script draws that figure and ``OUT/accuracy.png`` (held-out
accuracy against training minutes) itself, and writes ``OUT/summary.json``.

Run:  python3 benches/long_range_task.py [--out runs/long_range] [--threads 2] [--kinds dense window ...]
      python3 benches/long_range_task.py --smoke     # 256 tokens, 4 steps, into a temporary folder
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from tfm_rs.bench import cpu_model

BLOCK = 64


def kinds(window: int) -> dict:
    from tfm_rs.claims.efficient_attention import classifier_kinds

    labels = {"dense": "dense", "window": "window", "window + global": "window+global",
              "block sparse": "block_sparse", "linear": "linear", "lsh": "lsh"}
    return {labels[k]: v for k, v in classifier_kinds(window, BLOCK).items()}


def worker(args: argparse.Namespace, label: str) -> dict:
    import tfm_rs
    from tfm_rs.claims.efficient_attention import train_far_recall
    from tfm_rs.tasks import FarRecallTask

    tfm_rs.set_num_threads(args.threads)
    task = FarRecallTask(length=args.length, num_keys=args.keys, seed=0)
    run_dir = Path(args.out) / label
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w", buffering=1) as f:
        result = train_far_recall(task, kinds(args.window)[label], args.steps, batch=args.batch, lr=args.lr,
                                  eval_every=args.eval_every, eval_size=args.eval,
                                  log=lambda r: f.write(json.dumps(r) + "\n"))
    del result["records"]
    return {**result, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "window_can_reach": task.window_can_reach(args.window, 2), "chance": task.chance}


def plots(out: Path, labels: list) -> None:
    from tfm_rs import plots as tplots
    from tfm_rs.runs import read_metrics

    try:
        plt = tplots._pyplot()
    except tplots.PlotError as e:
        print(f"plots skipped: {e}")
        return
    records = {label: read_metrics(out / label) for label in labels}
    print(f"wrote {tplots.plot_compare(records, out / 'compare.png')}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, recs in records.items():
        valid = [r for r in recs if r.get("type") == "valid"]
        ax.plot([r["train_time"] / 60 for r in valid], [100 * r["accuracy"] for r in valid], "o-", ms=3, label=label)
    ax.axhline(100 / 8, color="grey", ls=":", lw=1, label="chance (8 classes)")
    ax.set(xlabel="training time (minutes)", ylabel="held-out accuracy (%)", ylim=(0, 102),
           title="Far recall: the answer lies beyond the window's reach from [CLS]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    print(f"wrote {tplots._save(fig, out / 'accuracy.png')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/long_range", help="run folders and plots (default: runs/long_range)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--keys", type=int, default=1, help="keys per sequence (FarRecallTask num_keys)")
    ap.add_argument("--window", type=int, default=64, help="keys each side of the window kinds")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval", type=int, default=256, help="held-out sequences")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--kinds", nargs="+", default=None, help="a subset of the kinds (default: all)")
    ap.add_argument("--smoke", action="store_true", help="256 tokens, 4 steps: checks that the script runs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.length, args.window, args.steps, args.eval, args.eval_every = 256, 16, 4, 16, 2
        args.out = args.out if args.out != "runs/long_range" else tempfile.mkdtemp(prefix="long_range_smoke")
    if args.worker:
        print(json.dumps(worker(args, args.worker)))
        return
    labels = args.kinds or list(kinds(args.window))
    unknown = set(labels) - set(kinds(args.window))
    if unknown:
        raise SystemExit(f"unknown kinds {sorted(unknown)}; choose among {', '.join(kinds(args.window))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_model()}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at start; FarRecallTask "
          f"length {args.length}, {args.keys} key(s), 8 values; BertForSequenceClassification d_model 32, 2 heads, "
          f"2 layers; {args.steps} steps of {args.batch}; accuracy on {args.eval} held-out sequences")
    print(f"{'kind':>14} {'attention':>50} {'accuracy':>9} {'train s':>8} {'s/step':>7} {'RSS MB':>7}")
    summary = {}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
             if k not in ("worker", "kinds", "smoke", "out") and v is not None]
    for label in labels:
        done = subprocess.run([sys.executable, __file__, *flags, f"--out={out}", f"--worker={label}"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{label} failed:\n{done.stderr[-2000:]}")
        r = summary[label] = {"attention": kinds(args.window)[label],
                              **json.loads(done.stdout.strip().splitlines()[-1])}
        print(f"{label:>14} {r['attention']:>50} {100 * r['accuracy']:8.1f}% {r['train_seconds']:8.1f} "
              f"{r['train_seconds'] / r['steps']:7.3f} {r['rss_mb']:7.0f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end; chance {100 / 8:.1f}%")
    (out / "summary.json").write_text(json.dumps({"cpu": cpu_model(), "args": vars(args), "runs": summary},
                                                 indent=2) + "\n")
    plots(out, labels)


if __name__ == "__main__":
    main()
