"""A child made by fork works: a thread pool's workers do not survive `fork`, so after the parent
has run a parallel op the child must get a fresh pool (with as many threads) instead of waiting
forever on the dead one. Every child runs under a deadline, so a regression fails instead of
hanging the test run."""

import multiprocessing as mp
import os
import sys
import time

import numpy as np
import pytest
import tfm_rs
import tfm_rs.functional as F
from helpers import assert_close, randn

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no fork")

DEADLINE_S = 60


def _wait(pid: int) -> int:
    """The child's exit status; kills it and fails if it has not finished by the deadline."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish within {DEADLINE_S} s (a hang)")


def _in_child(body) -> int:
    """Runs `body` in a forked child; its exit code: 0 when `body` returned True."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if body() else 2
        except BaseException as e:  # noqa: BLE001 - a forked child must never return into pytest
            print(f"child failed: {e!r}", file=sys.stderr)
        finally:
            os._exit(code)
    return _wait(pid)


def test_os_fork_after_a_parallel_op_keeps_the_pool_size():
    a, b = randn((300, 257), seed=1), randn((257, 301), seed=2)
    expect = a.astype(np.float64) @ b
    tol = {"rtol": 1e-4, "atol": 2e-4}  # float32 sums of 257 products of O(1) values
    before = tfm_rs.get_num_threads()
    # A GEMM this size is split over the pool, so the parent's workers exist at the fork.
    assert_close(F.matmul(a, b), expect, **tol)

    def child():
        ok = tfm_rs.get_num_threads() == before
        for _ in range(3):
            ok &= bool(np.allclose(F.matmul(a, b).numpy(), expect, **tol))
        return ok

    assert _in_child(child) == 0
    # The parent's own pool is untouched by the fork.
    assert_close(F.matmul(a, b), expect, **tol)


def test_fork_after_set_num_threads_keeps_that_size():
    before = tfm_rs.get_num_threads()
    try:
        tfm_rs.set_num_threads(3)
        F.matmul(randn((256, 256)), randn((256, 256)))
        eye = np.eye(200, dtype=np.float32)
        assert _in_child(lambda: tfm_rs.get_num_threads() == 3 and F.matmul(eye, eye).numpy().trace() == 200) == 0
    finally:
        tfm_rs.set_num_threads(before)


def test_gpu_in_a_forked_child_is_a_clear_device_error():
    tfm_rs.gpu_available()  # the parent asks for the GPU (whether or not there is one)

    def child():
        if tfm_rs.gpu_available():
            return False
        try:
            tfm_rs.tensor([1.0, 2.0]).to("gpu")
        except tfm_rs.DeviceError as e:
            return "fork" in str(e)
        return False

    assert _in_child(child) == 0


def _train_one_step(seed: int) -> np.ndarray:
    """One step of a tiny model: forward, cross-entropy, backward, Adam; the new weights."""
    tfm_rs.manual_seed(seed)
    model = tfm_rs.nn.Sequential(tfm_rs.nn.Linear(64, 96), tfm_rs.nn.ReLU(), tfm_rs.nn.Linear(96, 10))
    opt = tfm_rs.optim.Adam(model.parameters(), lr=1e-2)
    x = randn((128, 64), seed=seed)
    y = np.arange(128) % 10
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def test_fork_pool_workers_train_a_step_like_the_parent():
    expect = [_train_one_step(s) for s in (0, 1)]  # the parent's pool is busy before the fork
    with mp.get_context("fork").Pool(2) as workers:
        got = workers.map_async(_train_one_step, [0, 1]).get(timeout=DEADLINE_S)
    for g, e in zip(got, expect):
        np.testing.assert_array_equal(g, e)
