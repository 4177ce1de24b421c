"""One process of the data-parallel tests (tests/test_distributed.py starts it, under
``mpirun -n 2`` or alone). ``python distributed_worker.py SCENARIO OUT_DIR [key=value ...]``.

Scenarios:

* ``train``: a small numbers-task Transformer (dropout on) trained ``steps`` updates with
  ``accum`` micro-batches per rank and clipping; rank 0 writes ``OUT/result.npz`` (losses, the
  first step's reduced gradients, the final weights). ``resume_at=K``: train K steps, save, build
  everything afresh, resume from the checkpoint and finish. ``fail_at=K`` / ``die_at=K`` /
  ``hang_at=K``: rank 1 raises / is killed / stops responding during step K (checkpoints every
  step).
* ``order``: one backward of a model with small buckets, the DDP trace written to ``OUT/trace.json``.
* ``zero``: the same small model trained with DDP + Adam and with DDP + ZeroRedundancyOptimizer;
  both sets of weights and the per-rank optimizer-state bytes written to ``OUT/zero_rank{r}.npz``.
* ``unused``: a model whose parameters are used by rank 0 only, by both, or by none; the reduced
  gradients written to ``OUT/unused_rank{r}.npz``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import tfm_rs
from tfm_rs import distributed as dist
from tfm_rs import nn
from tfm_rs.models import Seq2SeqTransformer
from tfm_rs.tasks import NumbersTask
from tfm_rs.train import Seq2SeqTrainer, TrainConfig


def small_trainer(out, accum, steps, save_every=0):
    task = NumbersTask("en", num_train=400, num_heldout=10, seed=0)
    tfm_rs.manual_seed(0)
    model = Seq2SeqTransformer(len(task.src_vocab), len(task.tgt_vocab), d_model=32, nhead=2, num_encoder_layers=1,
                               num_decoder_layers=1, dim_feedforward=64, dropout=0.1, max_len=32)
    config = TrainConfig(max_tokens=200, lr=3e-3, warmup_steps=2, max_steps=steps, accum_steps=accum, clip_norm=0.5,
                         print_every=0, save_every=save_every, seed=3, distributed=True, bucket_cap_mb=0.02)
    return Seq2SeqTrainer(model, task.train_pairs(), config, out_dir=out)


def scenario_train(out, accum=1, steps=4, resume_at=0, fail_at=0, die_at=0, hang_at=0):
    grads = {}
    trainer = small_trainer(out, accum, steps, save_every=1 if (fail_at or die_at or hang_at) else 0)
    rank = dist.get_rank()

    def capture():
        step = trainer.optimizer.step

        def wrapped():
            if trainer.step == 0:
                grads.update({f"g{i}": p.grad.numpy() for i, p in enumerate(trainer.params) if p.grad is not None})
            step()
        trainer.optimizer.step = wrapped

    capture()

    def callback(rec):
        # Runs after update rec["step"]; the trouble starts inside the next one.
        if rank == 1 and rec["step"] + 1 == fail_at:
            raise RuntimeError(f"rank 1 fails on purpose in step {fail_at}")
        if rank == 1 and rec["step"] + 1 == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == 1 and rec["step"] + 1 == hang_at:
            time.sleep(3600)

    if resume_at:
        trainer.train(max_steps=resume_at, verbose=False)
        trainer.save()
        trainer.close()
        dist.barrier()
        trainer = small_trainer(out, accum, steps)
        trainer.resume(Path(out) / "checkpoint")
    trainer.train(verbose=False, callback=callback)
    trainer.close()
    if rank == 0:
        losses = [r["loss"] for r in trainer.history if r["type"] == "train"]
        weights = {f"w{i}": p.numpy() for i, p in enumerate(trainer.params)}
        np.savez(Path(out) / "result.npz", losses=np.array(losses), **grads, **weights)


def scenario_order(out):
    tfm_rs.manual_seed(0)
    layers = [nn.Linear(64, 64) for _ in range(6)]
    model = nn.Module()
    for i, layer in enumerate(layers):
        setattr(model, f"l{i}", layer)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.02)  # ~ one layer per bucket
    ddp.trace = []
    x = tfm_rs.tensor(np.random.default_rng(dist.get_rank()).standard_normal((8, 64)).astype(np.float32))
    for layer in layers:
        x = layer(x).tanh()
    x.sum().backward()
    ddp.trace.append(("backward_returned", None))
    ddp.synchronize()
    Path(out, f"trace_rank{dist.get_rank()}.json").write_text(json.dumps(ddp.trace))
    Path(out, f"buckets_rank{dist.get_rank()}.json").write_text(json.dumps(ddp.bucket_sizes()))


def scenario_unused(out):
    tfm_rs.manual_seed(0)
    model = nn.Module()
    model.both = nn.Linear(5, 3)
    model.only0 = nn.Linear(5, 3)
    model.never = nn.Linear(5, 3)
    rank = dist.get_rank()
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=1e-4, reduce_op="sum")
    x = tfm_rs.tensor(np.random.default_rng(rank).standard_normal((4, 5)).astype(np.float32))
    y = model.both(x).sum()
    if rank == 0:
        y = y + model.only0(x).sum()
    y.backward()
    ddp.synchronize()
    arrays = {name: (p.grad.numpy() if p.grad is not None else np.array([])) for name, p in model.named_parameters()}
    np.savez(Path(out) / f"unused_rank{rank}.npz", **arrays)


def scenario_zero(out, steps=3):
    """DDP + Adam against DDP + ZeroRedundancyOptimizer(Adam) from the same weights and data."""
    from tfm_rs.optim import Adam

    rank = dist.get_rank()
    results = {}
    for name in ("adam", "zero"):
        tfm_rs.manual_seed(0)
        model = nn.Module()
        for i in range(4):
            setattr(model, f"l{i}", nn.Linear(24, 24 + i))
            setattr(model, f"p{i}", nn.Linear(24 + i, 24))
        ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.001)
        params = list(model.parameters())
        opt = Adam(params, lr=1e-2) if name == "adam" else dist.ZeroRedundancyOptimizer(params, lr=1e-2)
        for step in range(steps):
            x = tfm_rs.tensor(np.random.default_rng([rank, step]).standard_normal((5, 24)).astype(np.float32))
            for i in range(4):
                x = getattr(model, f"p{i}")(getattr(model, f"l{i}")(x).tanh())
            (x * x).mean().backward()
            ddp.synchronize()
            opt.step()
            opt.zero_grad()
        ddp.remove_hooks()
        results.update({f"{name}_{i}": p.numpy() for i, p in enumerate(params)})
        if name == "zero":
            results["state_bytes"] = np.array([opt.state_bytes()])
            results["full_state_bytes"] = np.array([8 * sum(p.numel() for p in params)])
    np.savez(Path(out) / f"zero_rank{rank}.npz", **results)


def main(argv):
    scenario, out = argv[0], argv[1]
    kwargs = {k: int(v) for k, v in (a.split("=", 1) for a in argv[2:])}
    dist.init()
    Path(out).mkdir(parents=True, exist_ok=True)
    scenarios = {"train": scenario_train, "order": scenario_order, "unused": scenario_unused, "zero": scenario_zero}
    scenarios[scenario](out, **kwargs)
    print(f"rank {dist.get_rank()}/{dist.get_world_size()}: {scenario} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
