"""Data-parallel training over MPI (tfm_rs.distributed): gradient hooks, buckets, and the
multi-process runs, each started through ``mpirun -n 2`` (tests/distributed_worker.py) with a
deadline.

Without Open MPI's ``mpirun`` or ``mpi4py`` the multi-process tests skip, saying why; where ``CI``
is set (or ``TFM_RS_REQUIRE_MPI=1``) ``scripts/test.sh`` installs both and they must run.

Tolerances: 2 processes × 1 micro-batch against 1 process × 2 micro-batches is **bit-identical**
(the all-reduce of two float32 values is one addition, the same one the single process's
gradient accumulation does). With accumulation (2 × 2 against 1 × 4) the sum
``(a+b)+(c+d)`` differs from ``((a+b)+c)+d`` by float32 rounding: gradients agree within
``rtol 1e-5, atol 1e-7`` (of gradients ~1e-2) and after a few Adam steps weights within 2e-5,
except the attention key biases, whose gradient is rounding noise (see the test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfm_rs
from tfm_rs import distributed as dist
from tfm_rs import nn

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
DEADLINE = 240  # seconds for one mpirun job (the runs take a few seconds)


def _truthy(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false")


MPI_REQUIRED = _truthy("CI") or _truthy("TFM_RS_REQUIRE_MPI")


def _mpi_missing():
    if shutil.which("mpirun") is None:
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
    if not dist.is_available():
        return "mpi4py not installed (pip install mpi4py)"
    return None


def need_mpi():
    why = _mpi_missing()
    if why is None:
        return
    if MPI_REQUIRED:
        pytest.fail(f"MPI tests must run under CI / TFM_RS_REQUIRE_MPI=1, but {why}")
    pytest.skip(why)


def _env():
    env = dict(os.environ, TFM_RS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", TFM_RS_DIST_TIMEOUT="60")
    env.pop("CI", None)  # the worker does not need it, and neither does Open MPI
    return env


def mpirun(nproc, *args, timeout=DEADLINE, env_extra=None, check=True):
    """Run the worker under ``mpirun -n nproc`` (``nproc=0``: one plain process, no launcher)."""
    env = _env()
    env.update(env_extra or {})
    cmd = [sys.executable, str(WORKER), *map(str, args)]
    if nproc:
        cmd = ["mpirun", "-n", str(nproc), "--bind-to", "none", *cmd]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} still running after {timeout}s (a hang): {e.stdout}\n{e.stderr}")
    proc.seconds = time.monotonic() - t0
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train(tmp_path, name, nproc, **kw):
    out = tmp_path / name
    mpirun(nproc, "train", out, *(f"{k}={v}" for k, v in kw.items()))
    return dict(np.load(out / "result.npz"))


# ------------------------------------------------------------------ hooks (one process, no MPI)


def test_post_accumulate_grad_hook_gets_the_parameter_with_its_complete_gradient():
    w = nn.Parameter(np.arange(3, dtype=np.float32))
    seen = []
    handle = w.register_post_accumulate_grad_hook(lambda p: seen.append((p, p.grad.numpy().copy())))
    x = tfm_rs.tensor(np.array([1.0, 2.0, 3.0], np.float32))
    ((w * x).sum() + (w * w).sum()).backward()  # two contributions: x + 2w
    assert len(seen) == 1 and seen[0][0] is w
    np.testing.assert_array_equal(seen[0][1], [1.0, 4.0, 7.0])
    ((w * x).sum()).backward()  # accumulates: the hook sees the sum of both passes
    np.testing.assert_array_equal(seen[1][1], [2.0, 6.0, 10.0])
    handle.remove()
    ((w * x).sum()).backward()
    assert len(seen) == 2


def test_a_hook_that_raises_stops_the_backward_with_its_own_exception():
    w = nn.Parameter(np.ones(2, np.float32))

    class Boom(Exception):
        pass

    def hook(p):
        raise Boom("from the hook")

    w.register_post_accumulate_grad_hook(hook)
    with pytest.raises(Boom, match="from the hook"):
        (w * w).sum().backward()
    with pytest.raises(tfm_rs.TfmError, match="callable"):
        w.register_post_accumulate_grad_hook(3)
    with pytest.raises(tfm_rs.AutogradError, match="leaf"):
        (w * 2).register_post_accumulate_grad_hook(lambda p: None)


def _stack(n, width=16):
    model = nn.Module()
    for i in range(n):
        setattr(model, f"l{i}", nn.Linear(width, width))
    return model


def test_buckets_follow_reverse_registration_order_and_the_cap():
    model = _stack(3)  # each layer: 16·16 + 16 = 272 values = 1088 bytes
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=1088 / 2 ** 20)  # one layer a bucket
    params = list(model.parameters())
    assert [b.members for b in ddp.buckets] == [[5, 4], [3, 2], [1, 0]]
    assert ddp.bucket_sizes() == [272, 272, 272]
    assert sum(ddp.bucket_sizes()) == sum(p.numel() for p in params)
    ddp.remove_hooks()


def test_ddp_alone_launches_buckets_during_the_backward_and_keeps_the_gradients():
    tfm_rs.manual_seed(0)
    model = _stack(4)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=300 * 4 / 2 ** 20)  # one layer per bucket
    ddp.trace = []
    x = tfm_rs.tensor(np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32))
    y = x
    for i in range(4):
        y = getattr(model, f"l{i}")(y).tanh()
    y.sum().backward()
    ddp.trace.append(("backward_returned", None))
    expected = [p.grad.numpy().copy() for p in model.parameters()]
    assert ddp.synchronize() == 0.0
    kinds = [k for k, _ in ddp.trace]
    assert kinds.index("launch") < kinds.index("backward_returned")
    # the first bucket (the last layer) starts before the first layer's gradients are ready
    assert kinds.index("launch") < max(i for i, (k, v) in enumerate(ddp.trace) if k == "ready" and v in (0, 1))
    for p, e in zip(model.parameters(), expected):
        np.testing.assert_array_equal(p.grad.numpy(), e)


def test_a_second_gradient_before_synchronize_is_an_error_unless_no_sync():
    model = _stack(1)
    ddp = dist.DistributedDataParallel(model)
    x = tfm_rs.tensor(np.ones((2, 16), np.float32))
    with ddp.no_sync():
        model.l0(x).sum().backward()
    model.l0(x).sum().backward()
    with pytest.raises(dist.DistributedError, match="no_sync"):
        model.l0(x).sum().backward()
    ddp.synchronize()
    ddp.remove_hooks()


def test_single_process_group_needs_no_mpi():
    dist.init()
    assert dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() == 1
    a = np.arange(4, dtype=np.float32)
    assert dist.all_reduce(a) is a and a.tolist() == [0, 1, 2, 3]
    dist.barrier()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="op must be"):
        dist.all_reduce(a, op="prod")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="bucket_cap_mb"):
        dist.DistributedDataParallel(_stack(1), bucket_cap_mb=0)


def test_missing_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes the import fail
    with pytest.raises(dist.DistributedError, match="pip install mpi4py"):
        dist._import_mpi()


# ------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_processes_equal_one_process_over_both_batches(tmp_path):
    need_mpi()
    one = train(tmp_path, "one", 0, accum=2, steps=4)
    two = train(tmp_path, "two", 2, accum=1, steps=4)
    assert len(one["losses"]) == 4
    for key in one:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)  # bit-identical (module docstring)
    again = train(tmp_path, "again", 2, accum=1, steps=4)
    for key in two:
        np.testing.assert_array_equal(again[key], two[key], err_msg=f"repeat: {key}")


@pytest.mark.slow
def test_two_processes_with_accumulation_match_within_float32_rounding(tmp_path):
    need_mpi()
    one = train(tmp_path, "one", 0, accum=4, steps=3)
    two = train(tmp_path, "two", 2, accum=2, steps=3)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6)
    exempt = total = 0
    for key in one:
        if key.startswith("g"):
            np.testing.assert_allclose(two[key], one[key], err_msg=key, rtol=1e-5, atol=1e-7)
        elif key.startswith("w"):
            # The attention key bias's gradient is zero in exact arithmetic (softmax ignores a
            # shift), ~1e-10 of rounding in float32; Adam scales that noise to ±lr steps, whose
            # signs depend on the summation order. Those elements only are exempt.
            g = np.abs(one["g" + key[1:]])
            noise = (g > 0) & (g < 1e-8)
            exempt += int(noise.sum())
            total += noise.size
            np.testing.assert_allclose(two[key][~noise], one[key][~noise], err_msg=key, rtol=1e-4, atol=2e-5)
    assert exempt < 0.01 * total


@pytest.mark.slow
def test_resumed_two_process_run_gives_the_uninterrupted_losses(tmp_path):
    need_mpi()
    full = train(tmp_path, "full", 2, accum=1, steps=6)
    resumed = train(tmp_path, "resumed", 2, accum=1, steps=6, resume_at=3)
    np.testing.assert_array_equal(resumed["losses"], full["losses"][3:])
    for key in full:
        if key.startswith("w"):
            np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)


@pytest.mark.slow
def test_all_reduce_starts_before_the_backward_ends(tmp_path):
    need_mpi()
    mpirun(2, "order", tmp_path)
    for rank in (0, 1):
        trace = json.loads((tmp_path / f"trace_rank{rank}.json").read_text())
        kinds = [k for k, _ in trace]
        assert json.loads((tmp_path / f"buckets_rank{rank}.json").read_text()).__len__() >= 4
        first_launch = kinds.index("launch")
        assert first_launch < kinds.index("backward_returned")
        # launched while gradients of earlier layers were still to come
        assert first_launch < max(i for i, k in enumerate(kinds) if k == "ready")
        assert [v for k, v in trace if k == "launch"] == sorted(v for k, v in trace if k == "launch")


@pytest.mark.slow
def test_unused_parameters_neither_hang_nor_double_count(tmp_path):
    need_mpi()
    mpirun(2, "unused", tmp_path)
    r0, r1 = (dict(np.load(tmp_path / f"unused_rank{r}.npz")) for r in (0, 1))
    # Reference: one process, both ranks' inputs; only0 sees rank 0's input only.
    tfm_rs.manual_seed(0)
    model = nn.Module()
    model.both = nn.Linear(5, 3)
    model.only0 = nn.Linear(5, 3)
    model.never = nn.Linear(5, 3)
    for rank in (0, 1):
        x = tfm_rs.tensor(np.random.default_rng(rank).standard_normal((4, 5)).astype(np.float32))
        y = model.both(x).sum()
        if rank == 0:
            y = y + model.only0(x).sum()
        y.backward()
    for name, p in model.named_parameters():
        for got in (r0, r1):
            if name.startswith("never"):
                assert p.grad is None and got[name].size == 0, name
            else:
                np.testing.assert_array_equal(got[name], p.grad.numpy(), err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fail_at", "die_at", "hang_at"])
def test_a_failing_rank_stops_the_job_and_the_checkpoint_stays_loadable(tmp_path, how):
    need_mpi()
    from tfm_rs.checkpoint import load_checkpoint

    out = tmp_path / how
    proc = mpirun(2, "train", out, "steps=8", f"{how}=3", check=False, timeout=120,
                  env_extra={"TFM_RS_DIST_TIMEOUT": "10"})
    assert proc.returncode != 0, proc.stdout
    assert not (out / "result.npz").exists()
    if how == "fail_at":
        assert "rank 1 fails on purpose" in proc.stderr and "aborting the job" in proc.stderr
    if how == "hang_at":
        assert "did not complete within 10 s" in proc.stderr
    ck = load_checkpoint(out / "checkpoint")
    # the last step rank 0 saved (2; 1 if the abort caught it writing step 2: the .prev fallback)
    assert ck.extra["step"] in (1, 2)
    assert proc.seconds < 100


@pytest.mark.slow
def test_zero_redundancy_optimizer_gives_adams_weights_with_half_the_state(tmp_path):
    need_mpi()
    mpirun(2, "zero", tmp_path)
    ranks = [dict(np.load(tmp_path / f"zero_rank{r}.npz")) for r in (0, 1)]
    for res in ranks:
        for key in res:
            if key.startswith("adam_"):
                # Adam is elementwise: the owner computes exactly what every rank would have.
                np.testing.assert_array_equal(res["zero_" + key[5:]], res[key], err_msg=key)
    np.testing.assert_array_equal(ranks[0]["zero_0"], ranks[1]["zero_0"])
    full = int(ranks[0]["full_state_bytes"][0])
    shares = [int(r["state_bytes"][0]) for r in ranks]
    assert sum(shares) == full and max(shares) <= 0.6 * full


def test_zero_redundancy_optimizer_alone_is_the_optimizer():
    from tfm_rs.optim import Adam

    results = []
    for make in (lambda ps: Adam(ps, lr=0.1), lambda ps: dist.ZeroRedundancyOptimizer(ps, lr=0.1)):
        tfm_rs.manual_seed(1)
        layer = nn.Linear(3, 2)
        opt = make(list(layer.parameters()))
        for _ in range(2):
            layer(tfm_rs.tensor(np.ones((1, 3), np.float32))).sum().backward()
            opt.step()
            opt.zero_grad()
        results.append([p.numpy() for p in layer.parameters()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="not supported"):
        opt.state_dict()


# ------------------------------------------------------------------ the command line


def test_nproc_without_mpirun_says_what_to_install(monkeypatch, capsys, tmp_path):
    import shutil as shutil_mod

    from tfm_rs import cli

    monkeypatch.setattr(shutil_mod, "which", lambda name: None)
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--max-steps", "1", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "needs MPI's mpirun" in err and "openmpi-bin" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_nproc_trains_resumes_and_only_rank_0_writes(tmp_path):
    need_mpi()
    run = tmp_path / "run"
    base = [sys.executable, "-m", "tfm_rs", "train", "--out", str(run), "--nproc", "2", "--no-bar"]
    env = _env()
    for extra in (["--max-steps", "3"], ["--resume", "--max-steps", "5"]):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=DEADLINE, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("data parallel over MPI: 2 processes") == 1  # rank 0 reports alone
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert steps == [1, 2, 3, 4, 5]
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 5
