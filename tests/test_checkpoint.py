"""tfm_rs.checkpoint: exact round trips, no pickle, corruption detection, atomic replacement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import tfm_rs
import tfm_rs.checkpoint as ckpt_mod
from helpers import leaf, randn
from tfm_rs.checkpoint import (CheckpointError, CheckpointNotFoundError, CorruptCheckpointError,
                               IncompatibleCheckpointError, check_compatible, check_state_dict_compatible,
                               load_checkpoint, rng_from_state, rng_state, save_checkpoint, set_rng_state)
from tfm_rs.data import token_batches
from tfm_rs.optim import Adam, NoamLR

CONFIG = {"d_model": 16, "nhead": 2, "num_layers": 2, "dropout": 0.1, "vocab_size": 50, "tie": True,
          "shape": [3, 4], "name": "tiny"}


def model_state(seed=0):
    rng = np.random.default_rng(seed)
    return OrderedDict([
        ("encoder.layers.0.linear1.weight", rng.standard_normal((8, 16)).astype(np.float32)),
        ("encoder.layers.0.linear1.bias", rng.standard_normal(8).astype(np.float32)),
        ("embed.weight", rng.standard_normal((50, 16)).astype(np.float32)),
        ("a_scalar", np.array(np.float32(np.pi))),
        ("denormals_and_specials", np.array([1e-45, -0.0, np.inf, -np.inf, np.nan], np.float32)),
        ("steps", np.arange(5, dtype=np.int64)),
    ])


def trained_optimizer(steps=3):
    params = [leaf(randn((4, 3), seed=1)), leaf(randn((5,), seed=2))]
    opt = Adam(params, lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = NoamLR(opt, d_model=16, warmup_steps=4)
    for k in range(steps):
        for i, p in enumerate(params):
            p.grad = randn(p.shape, seed=10 * k + i)
        opt.step()
        sched.step()
    return params, opt, sched


def assert_state_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k  # bit-exact, NaN payloads and -0.0 included


def test_round_trip_bit_exact_and_json(tmp_path):
    params, opt, sched = trained_optimizer()
    gen = np.random.default_rng(123)
    gen.standard_normal(7)
    src = [[5] * (1 + i % 9) for i in range(50)]
    sampler = token_batches(src, src, 64, seed=4)
    next(iter(sampler))
    extra = {"step": 3, "epoch": 0, "rng": rng_state(gen), "data": sampler.state_dict(), "best_bleu": 12.5,
             "history": [1.0, 0.5], "pair": (1, "x"), "ema": np.ones(3, np.float64)}
    path = save_checkpoint(tmp_path / "ckpt", model_state(), CONFIG, opt.state_dict(), sched.state_dict(), extra)
    assert path == (tmp_path / "ckpt").absolute()

    c = load_checkpoint(tmp_path / "ckpt")
    assert_state_equal(c.model_state, model_state())
    assert c.config == CONFIG
    assert c.scheduler_state == sched.state_dict()
    assert c.extra["pair"] == (1, "x") and c.extra["history"] == [1.0, 0.5] and c.extra["best_bleu"] == 12.5
    np.testing.assert_array_equal(c.extra["ema"], np.ones(3))
    assert c.extra["data"] == sampler.state_dict()

    # Optimizer state: same structure (int keys, tuples), moments bit-exact.
    want = opt.state_dict()
    got = c.optimizer_state
    assert got["param_groups"] == want["param_groups"]
    assert sorted(got["state"]) == sorted(want["state"]) == [0, 1]
    for i in want["state"]:
        for k, v in want["state"][i].items():
            if isinstance(v, np.ndarray):
                assert got["state"][i][k].tobytes() == v.tobytes()
            else:
                assert got["state"][i][k] == v

    # Resuming continues identically: optimizer, scheduler, RNG, data order.
    _, opt2, sched2 = trained_optimizer(steps=0)
    params2 = [p for g in opt2.param_groups for p in g["params"]]
    for p, q in zip(params2, params):
        p.copy_(tfm_rs.tensor(q.numpy()))
    opt2.load_state_dict(got)
    sched2.load_state_dict(c.scheduler_state)
    for k in range(3, 6):
        for ps, o, s in ((params, opt, sched), (params2, opt2, sched2)):
            for i, p in enumerate(ps):
                p.grad = randn(p.shape, seed=10 * k + i)
            o.step()
            s.step()
    for p, q in zip(params, params2):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert rng_from_state(c.extra["rng"]).standard_normal(4).tolist() == gen.standard_normal(4).tolist()
    resumed = token_batches(src, src, 64, seed=4)
    resumed.load_state_dict(c.extra["data"])
    assert list(resumed) == list(sampler)


def test_only_safetensors_and_json_no_pickle(tmp_path):
    _, opt, sched = trained_optimizer()
    save_checkpoint(tmp_path / "c", model_state(), CONFIG, opt.state_dict(), sched.state_dict(),
                    {"step": 1, "arr": np.zeros(2)})
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["checkpoint.json", "config.json", "extra.json", "extra.safetensors", "model.safetensors",
                     "optimizer.json", "optimizer.safetensors", "scheduler.json"]
    for p in (tmp_path / "c").iterdir():
        data = p.read_bytes()
        if p.suffix == ".json":
            json.loads(data)
        else:
            n = int.from_bytes(data[:8], "little")  # safetensors: u64 header length + JSON header
            json.loads(data[8: 8 + n])
        assert b"\x80\x04\x95" not in data[:16] and not data.startswith(b"\x80")  # no pickle protocol header
    src = Path(ckpt_mod.__file__).read_text()
    assert "import pickle" not in src and "np.load(" not in src and "allow_pickle" not in src


def test_minimal_checkpoint_and_tensor_values(tmp_path):
    state = {"w": tfm_rs.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))}
    save_checkpoint(tmp_path / "m", state, {"d_model": 2})
    c = load_checkpoint(tmp_path / "m")
    np.testing.assert_array_equal(c.model_state["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert c.optimizer_state is None and c.scheduler_state is None and c.extra == {}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["checkpoint.json", "config.json", "model.safetensors"]


def test_unserializable_values_fail_before_touching_disk(tmp_path):
    save_checkpoint(tmp_path / "c", model_state(0), CONFIG)
    with pytest.raises(TypeError, match="extra.fn"):
        save_checkpoint(tmp_path / "c", model_state(1), CONFIG, extra={"extra": {"fn": object()}})
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "c", model_state(1), {"x": {1, 2}})
    assert_state_equal(load_checkpoint(tmp_path / "c").model_state, model_state(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# ----------------------------------------------------------------------------------------------
# corruption
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    _, opt, sched = trained_optimizer()
    return save_checkpoint(tmp_path / "ckpt", model_state(), CONFIG, opt.state_dict(), sched.state_dict(), {"step": 3})


def test_truncated_weights_named(saved):
    f = saved / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors.*truncated") as err:
        load_checkpoint(saved)
    assert isinstance(err.value, tfm_rs.TfmError)


def test_flipped_bit_named(saved):
    f = saved / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"optimizer\.safetensors: SHA-256"):
        load_checkpoint(saved)


def test_bad_safetensors_header_named_even_unverified(saved):
    # Also when the manifest was rewritten to match (verify=False): the parser's error is wrapped.
    f = saved / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[0:8] = (10 ** 12).to_bytes(8, "little")  # absurd header length
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        load_checkpoint(saved, verify=False)


def test_bad_json_named(saved):
    manifest = json.loads((saved / "checkpoint.json").read_text())
    (saved / "config.json").write_bytes(b'{"d_model": 16,')
    manifest["files"]["config.json"] = {"bytes": 15, "sha256": "x"}
    (saved / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptCheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(saved, verify=False)
    (saved / "checkpoint.json").write_text("{")
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint\.json: not valid JSON"):
        load_checkpoint(saved)


def test_missing_files(saved, tmp_path):
    (saved / "scheduler.json").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"scheduler\.json: missing"):
        load_checkpoint(saved)
    (saved / "checkpoint.json").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint\.json: missing"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):  # also an OSError for generic handlers
        load_checkpoint(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------
# atomicity
# ----------------------------------------------------------------------------------------------

def test_second_save_keeps_previous(tmp_path):
    save_checkpoint(tmp_path / "c", model_state(0), CONFIG, extra={"step": 1})
    save_checkpoint(tmp_path / "c", model_state(1), CONFIG, extra={"step": 2})
    assert load_checkpoint(tmp_path / "c").extra["step"] == 2
    assert load_checkpoint(tmp_path / "c.prev").extra["step"] == 1
    save_checkpoint(tmp_path / "c", model_state(2), CONFIG, extra={"step": 3}, keep_previous=False)
    assert load_checkpoint(tmp_path / "c").extra["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_failed_final_rename_leaves_previous_loadable(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c", model_state(0), CONFIG, extra={"step": 1})
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".c.tmp-"):
            raise OSError("simulated crash during the final rename")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path / "c", model_state(1), CONFIG, extra={"step": 2})
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    c = load_checkpoint(tmp_path / "c")
    assert c.extra["step"] == 1
    assert_state_equal(c.model_state, model_state(0))
    assert not list(tmp_path.glob(".c.tmp-*"))  # no temp dir left behind


def test_crash_between_renames_falls_back_to_prev(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c", model_state(0), CONFIG, extra={"step": 1})
    real_replace = os.replace
    calls = []

    def die_after_first_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            # A process killed here runs no rollback: skip it by raising something the code's
            # `except BaseException` rollback sees, after disabling rollback renames.
            monkeypatch.setattr(ckpt_mod.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", die_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c", model_state(1), CONFIG, extra={"step": 2})
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    assert not (tmp_path / "c").exists() and (tmp_path / "c.prev").exists()
    with pytest.warns(RuntimeWarning, match="interrupted"):
        c = load_checkpoint(tmp_path / "c")
    assert c.extra["step"] == 1 and c.path == tmp_path / "c.prev"
    # The next save recovers the normal layout.
    save_checkpoint(tmp_path / "c", model_state(2), CONFIG, extra={"step": 3})
    assert load_checkpoint(tmp_path / "c").extra["step"] == 3


def test_killed_process_mid_write_leaves_previous_loadable(tmp_path):
    """A real crash: a child process dies (os._exit, no cleanup) while writing the weights."""
    save_checkpoint(tmp_path / "c", model_state(0), CONFIG, extra={"step": 1})
    script = textwrap.dedent(f"""
        import os, numpy as np
        import tfm_rs.checkpoint as m
        real = m._write_bytes
        def dying(path, data):
            if path.name == "model.safetensors":
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                os._exit(9)
            return real(path, data)
        m._write_bytes = dying
        m.save_checkpoint({str(tmp_path / 'c')!r}, {{"w": np.ones(3, np.float32)}}, {{}}, extra={{"step": 2}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    assert list(tmp_path.glob(".c.tmp-*"))  # the half-written temp dir is there…
    c = load_checkpoint(tmp_path / "c")  # …but the checkpoint is the previous one
    assert c.extra["step"] == 1
    save_checkpoint(tmp_path / "c", model_state(1), CONFIG, extra={"step": 3})
    assert not list(tmp_path.glob(".c.tmp-*"))  # and the next save cleans it up


# ----------------------------------------------------------------------------------------------
# compatibility, RNG
# ----------------------------------------------------------------------------------------------

def test_check_compatible_lists_differing_keys():
    check_compatible(CONFIG, dict(CONFIG, shape=(3, 4)))  # tuple vs JSON list: equal
    check_compatible(CONFIG, dict(CONFIG, dropout=0.3), ignore=["dropout"])
    other = dict(CONFIG, d_model=32, nhead=4)
    del other["tie"]
    other["ffn"] = 64
    with pytest.raises(IncompatibleCheckpointError) as err:
        check_compatible(CONFIG, other)
    msg = str(err.value)
    assert "4 key(s)" in msg
    for line in ("d_model: checkpoint 16 vs model 32", "nhead: checkpoint 2 vs model 4",
                 "tie: checkpoint True vs model (absent)", "ffn: checkpoint (absent) vs model 64"):
        assert line in msg
    assert "dropout" not in msg and isinstance(err.value, tfm_rs.TfmError)


def test_check_state_dict_compatible():
    a = model_state()
    check_state_dict_compatible(a, {k: v.shape for k, v in a.items()})
    b = OrderedDict(a)
    b["embed.weight"] = np.zeros((60, 16), np.float32)
    del b["a_scalar"]
    b["new.bias"] = np.zeros(2, np.float32)
    with pytest.raises(IncompatibleCheckpointError) as err:
        check_state_dict_compatible(a, b)
    msg = str(err.value)
    assert "missing in checkpoint: ['new.bias']" in msg and "not in model: ['a_scalar']" in msg
    assert "embed.weight: shape (50, 16) in checkpoint vs (60, 16) in model" in msg


@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_rng_state_round_trip(bitgen):
    g = np.random.Generator(bitgen(7))
    g.random(5)
    state = json.loads(json.dumps(rng_state(g)))
    want = g.random(6)
    assert np.array_equal(rng_from_state(state).random(6), want)
    h = np.random.Generator(bitgen(0))
    set_rng_state(h, state)
    assert np.array_equal(h.random(6), want)
    with pytest.raises(CheckpointError, match="state is for"):
        set_rng_state(np.random.Generator(np.random.PCG64DXSM()) if bitgen is not np.random.PCG64DXSM
                      else np.random.default_rng(), state)
