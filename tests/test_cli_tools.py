"""Attention capture for the plots, the in-package benchmark, and the native module's type stubs."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import tfm_rs
from tfm_rs.models import GPT, transformer_tiny
from tfm_rs.plots import attention_maps, attention_modules, capture_attention


def test_attention_maps_of_a_seq2seq_model():
    tfm_rs.manual_seed(0)
    model = transformer_tiny(30, num_encoder_layers=2, num_decoder_layers=2, nhead=4, dropout=0.3)
    src, tgt = [5, 6, 7, 8, 9], [1, 10, 11, 12]
    model.eval()
    plain = model(np.array([src]), np.array([tgt])).numpy()
    model.train()
    maps = attention_maps(model, src, tgt)
    assert model.training  # the mode is restored
    assert sorted(maps) == ["cross/L0", "cross/L1", "decoder_self/L0", "decoder_self/L1", "encoder_self/L0",
                            "encoder_self/L1"]
    assert maps["encoder_self/L0"].shape == (4, 5, 5)
    assert maps["decoder_self/L1"].shape == (4, 4, 4)
    assert maps["cross/L0"].shape == (4, 4, 5)
    for w in maps.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)  # each query's weights are a distribution
    assert np.all(np.triu(maps["decoder_self/L0"], 1) == 0)  # causal: no weight on later positions
    # The modules are restored, and the model computes what it did before.
    assert all("forward" not in m.__dict__ for m in attention_modules(model).values())
    model.eval()
    np.testing.assert_array_equal(model(np.array([src]), np.array([tgt])).numpy(), plain)


def test_captured_weights_are_the_layers_softmax():
    """The first encoder layer's weights, recomputed from its projections by hand."""
    tfm_rs.manual_seed(1)
    model = transformer_tiny(30).eval()
    src = np.array([[5, 6, 7, 8]])
    layer = model.transformer.encoder.layers[0].self_attn
    with capture_attention({"enc": layer}) as got:
        model.encode(src)
    x = model.pos(model.src_embed(src) * model.emb_scale).numpy()[0]  # (S, E), no dropout in eval
    w = layer.in_proj_weight.numpy()
    b = layer.in_proj_bias.numpy()
    E, H = x.shape[1], layer.num_heads
    q, k = x @ w[:E].T + b[:E], x @ w[E:2 * E].T + b[E:2 * E]
    q = q.reshape(-1, H, E // H).transpose(1, 0, 2)
    k = k.reshape(-1, H, E // H).transpose(1, 0, 2)
    s = q @ k.transpose(0, 2, 1) / np.sqrt(E // H)
    ref = np.exp(s - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(got["enc"][0], ref, rtol=1e-4, atol=1e-6)


def test_attention_maps_of_a_gpt():
    tfm_rs.manual_seed(0)
    model = GPT(20, d_model=16, nhead=2, num_layers=3, max_len=16)
    maps = attention_maps(model, [3, 4, 5, 6, 7])
    assert sorted(maps) == ["self/L0", "self/L1", "self/L2"]
    assert maps["self/L2"].shape == (2, 5, 5) and np.all(np.triu(maps["self/L2"], 1) == 0)


def test_plot_compare_draws_several_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plot --compare draws with matplotlib")
    import json

    from tfm_rs.cli import main

    dirs = []
    for name, scale in (("layer", 1.0), ("rms", 0.9)):
        d = tmp_path / name
        d.mkdir()
        lines = [{"type": "train", "step": i, "loss": scale * 9 / i, "train_time": 6.0 * i} for i in range(1, 121)]
        lines += [{"type": "valid", "step": 60, "loss": 2.5, "train_time": 360.0}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
        dirs.append(str(d))
    out = tmp_path / "compare.png"
    assert main(["plot", "--compare", str(out), *dirs]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", *dirs]) == 2
    assert "several RUN_DIRs need --compare" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text(json.dumps({"type": "valid", "loss": 1.0}))
    assert main(["plot", "--compare", str(out), str(empty)]) == 2


def test_bench_runs_and_checks_its_cases():
    from tfm_rs import bench

    results = bench.run(["gemm", "attention"], repeat=1, gemm_size=64, seq_len=32)
    assert [r.case for r in results] == ["gemm", "attention"]
    for r in results:
        assert r.seconds > 0 and "numpy" in r.baselines and r.ratio("numpy") > 0
    lines = bench.format_results(results)
    assert lines[0].startswith(f"tfm_rs {tfm_rs.__version__} on {bench.cpu_model()}, SIMD") and "numpy" in lines[1]
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.run(["fft"])


def test_bench_multi30k_or_skip(monkeypatch, tmp_path, capsys):
    from tfm_rs import bench

    assert bench.cpu_model().strip()
    monkeypatch.setenv("TFM_RS_MULTI30K", str(tmp_path / "absent"))
    assert bench.multi30k_or_skip(smoke=True) is False
    assert capsys.readouterr().out.startswith("skipped: Multi30k not found")
    with pytest.raises(SystemExit, match="Multi30k not found"):
        bench.multi30k_or_skip(smoke=False)
    monkeypatch.setenv("TFM_RS_MULTI30K", str(tmp_path))
    assert bench.multi30k_or_skip(smoke=True) is True


def test_bench_command(capsys):
    from tfm_rs.cli import main

    assert main(["bench", "train_step", "--repeat", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("train_step") and "tok/s" in out[1]


# ------------------------------------------------------------------------------ stubs

STUB = Path(tfm_rs.__file__).with_name("_core.pyi")


def stub_names():
    tree = ast.parse(STUB.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_stubs_cover_the_native_module():
    assert STUB.is_file() and STUB.with_name("py.typed").is_file()
    public = {n for n in dir(tfm_rs._core) if not n.startswith("_")} | {"__version__"}
    declared = stub_names()
    assert public - declared == set(), "in tfm_rs._core but not in _core.pyi"
    assert declared - public - {"ArrayLike", "Hypothesis"} == set(), "in _core.pyi but not in tfm_rs._core"


def test_stub_tensor_methods_exist():
    tree = ast.parse(STUB.read_text())
    (tensor,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Tensor"]
    methods = {n.name for n in tensor.body if isinstance(n, ast.FunctionDef)}
    missing = [m for m in methods if not hasattr(tfm_rs.Tensor, m)]
    assert missing == []
    public = {m for m in dir(tfm_rs.Tensor) if not m.startswith("_")}
    assert public - methods == set(), "Tensor methods missing from the stub"
