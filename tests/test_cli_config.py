"""tfm-rs configuration and error paths: one clear line, exit status 2, a traceback only with --debug."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tfm_rs import config as cfg_lib
from tfm_rs.cli import build_parser, main
from tfm_rs.progress import Progress, format_seconds


def cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------ configuration

def test_defaults_are_the_demo_for_numbers_and_the_recipe_for_text(tmp_path):
    cfg = cfg_lib.resolve()
    assert cfg["data"]["task"] == "numbers" and cfg["model"]["preset"] == "numbers"
    assert (cfg["optim"]["schedule"], cfg["optim"]["lr"], cfg["optim"]["warmup"]) == ("cosine", 2e-3, 150)
    assert cfg["train"]["minutes"] == 3.0 and cfg["train"]["out"] == "runs/numbers"
    (tmp_path / "a").write_text("x\n")
    cfg = cfg_lib.resolve({"data": {"task": "parallel", "src": "a", "tgt": "a"}}, base_dirs=[tmp_path])
    assert (cfg["model"]["preset"], cfg["optim"]["schedule"], cfg["optim"]["lr"]) == ("small", "noam", 7e-4)
    assert cfg["data"]["src"] == str(tmp_path / "a")
    assert cfg_lib.resolve({"train": {"max_steps": 5}})["train"]["minutes"] is None


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\npreset = "tiny"\nd_model = 64\n[optim]\nlr = 0.01\n[train]\nmax_steps = 9\n')
    args = build_parser().parse_args(["train", "--config", str(path), "--d-model", "48", "--layers", "3"])
    cfg = cfg_lib.resolve(cfg_lib.load_toml(path), cfg_lib.flag_values(args))
    assert cfg["model"]["d_model"] == 48 and cfg["model"]["layers"] == 3  # flags win
    assert cfg["optim"]["lr"] == 0.01 and cfg["train"]["max_steps"] == 9  # the file's stay
    kw = cfg_lib.model_kwargs(cfg)
    assert (kw["d_model"], kw["nhead"], kw["num_encoder_layers"], kw["num_decoder_layers"]) == (48, 2, 3, 3)


def test_dumps_round_trips():
    cfg = cfg_lib.resolve({"model": {"preset": "tiny", "norm_first": True, "dropout": 0.2},
                           "train": {"out": 'we"ird\\dir', "max_steps": 3}})
    again = cfg_lib.resolve(cfg_lib.loads(cfg_lib.dumps(cfg)))
    assert again == cfg


def test_every_key_has_a_flag_and_help():
    parser = build_parser()
    helptext = parser._subparsers._group_actions[0].choices["train"].format_help()
    for f in cfg_lib.FIELDS:
        assert f.flag in helptext, f.flag
        assert f.help


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("toml, needle", [
    ("[model]\nd_modle = 3\n", "unknown key model.d_modle; valid keys in [model]: preset, d_model, nhead"),
    ("[modle]\nd_model = 3\n", "unknown table [modle]; valid tables: [data], [model], [optim], [train]"),
    ("d_model = 3\n", "did you mean model.d_model, under [model]?"),
    ('[model]\nd_model = "wide"\n', "model.d_model must be an int, got 'wide'"),
    ('[optim]\nschedule = "linear"\n', "optim.schedule must be one of noam, inverse_sqrt, cosine, constant"),
    ("[train]\nmax_steps = 0\n", "train.max_steps must be positive"),
    ("[model\n", "not valid TOML"),
    ('[data]\ntask = "parallel"\n', "the parallel task needs data.src and data.tgt"),
    ('[data]\ntask = "lm"\n', "the lm task needs data.text"),
    ("[model]\nd_model = 30\nnhead = 4\n", "model.d_model (30) must be a multiple of model.nhead (4)"),
])
def test_bad_config_is_one_line(tmp_path, capsys, toml, needle):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    status, out, err = cli(capsys, "train", "--config", path)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfm-rs: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["train", "--config", "missing.toml"], "no such config file: missing.toml"),
    (["train", "--task", "parallel", "--src", "nope.de", "--tgt", "nope.en"], "no such file:"),
    (["train", "--task", "lm", "--text", "nope.txt"], "nope.txt (data.text)"),
    (["train", "--lr", "-1"], "argument --lr: must be positive, got -1.0"),
    (["train", "--max-steps", "two"], "argument --max-steps: must be an int, got 'two'"),
    (["train", "--resume"], "--resume needs the run directory: --out RUN_DIR"),
    (["train", "--resume", "--out", "no/such/run"], "nothing to resume in no/such/run"),
    (["translate", "no/such/run", "x"], "no such run directory: no/such/run"),
    (["eval", "no/such/run"], "no such run directory"),
    (["plot", "no/such/run"], ""),
    (["generate", "no/such/run"], "no such run directory"),
    (["generate", "x", "--top-p", "1.5"], "must be a number in (0, 1]"),
    (["bench", "fft"], "unknown benchmark 'fft'"),
])
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, *args)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfm-rs: error:"), err
    assert needle in lines[0]


def test_run_directory_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status, _, err = cli(capsys, "translate", tmp_path / "empty", "x")
    assert status == 2 and "is not a tfm-rs run directory (no config.toml)" in err
    assert main(["train", "--preset", "tiny", "--num-train", "100", "--num-heldout", "20", "--max-steps", "1",
                 "--quiet", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    status, _, err = cli(capsys, "translate", tmp_path / "r", "twelve")
    assert status == 2 and "not a number in digits: 'twelve'" in err
    status, _, err = cli(capsys, "eval", tmp_path / "r", "--src", tmp_path / "nope")
    assert status == 2 and "give both --src and --ref" in err
    status, _, err = cli(capsys, "generate", tmp_path / "r", "--prompt", "x")
    assert status == 2 and "is a translation model; use 'tfm-rs translate'" in err
    # A checkpoint of another architecture: the configuration differences, on one line.
    status, _, err = cli(capsys, "train", "--resume", "--out", tmp_path / "r", "--d-model", "64", "--max-steps", "2")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "d_model: checkpoint 32 vs model 64" in err


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "bad.toml").write_text("[model]\nd_modle = 3\n")
    r = subprocess.run([sys.executable, "-m", "tfm_rs", "train", "--config", str(tmp_path / "bad.toml"), "--debug"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_missing_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    status, _, err = cli(capsys, "plot", tmp_path)
    assert status == 2 and "plotting needs matplotlib: pip install 'tfm_rs[plot]'" in err
    assert len(err.strip().splitlines()) == 1


def test_importing_tfm_rs_does_not_import_matplotlib_or_tqdm():
    code = "import sys, tfm_rs, tfm_rs.cli, tfm_rs.plots, tfm_rs.runs; " \
           "print('matplotlib' in sys.modules, 'tqdm' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------ progress

def rec(step, t, loss=2.0):
    return {"type": "train", "step": step, "loss": loss, "lr": 1e-3, "tokens": 1000, "step_time": 0.5,
            "train_time": t}


def test_progress_plain_lines_with_eta():
    out = io.StringIO()
    p = Progress(total_steps=10, seconds=None, every_s=1.0, stream=out)
    for s in range(1, 11):
        p(rec(s, 0.5 * s))
    p({"type": "valid", "step": 10, "loss": 1.5, "ppl": 4.48, "accuracy": 0.5})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step     1/10  loss 2.000  lr 1.00e-03") and "2,000 tok/s" in lines[0]
    assert "ETA 0:04" in lines[0]  # 9 steps left at 0.5 s each
    assert lines[-2].startswith("step    10/10") and "ETA" not in lines[-2]
    assert lines[-1] == "valid @ step 10: loss 1.500  ppl 4.480  accuracy 0.500"
    assert 3 <= len(lines) <= 8  # about one line per second of training, not one per step
    assert format_seconds(3725) == "1:02:05"


def test_progress_quiet_prints_only_validation():
    out = io.StringIO()
    p = Progress(total_steps=3, seconds=None, quiet=True, stream=out)
    for s in range(1, 4):
        p(rec(s, s))
    assert out.getvalue() == ""
    p({"type": "valid", "step": 3, "loss": 1.0})
    assert out.getvalue() == "valid @ step 3: loss 1.000\n"
    assert p.bar is None  # never a bar when not on a terminal (pytest captures stderr)


def test_shipped_multi30k_config_is_the_recipe():
    from tfm_rs import config as cfg_lib
    from tfm_rs.data.corpus import find_multi30k

    path = cfg_lib.shipped_config("multi30k")
    assert path is not None and path == cfg_lib.shipped_config("multi30k.toml") and path.parent.name == "configs"
    try:
        find_multi30k()
    except FileNotFoundError as e:
        pytest.skip(f"Multi30k is not on this machine ({e})")
    cfg = cfg_lib.resolve(cfg_lib.load_toml(path), {"data": {"pair": "fr-en"}})
    d, o, t = cfg["data"], cfg["optim"], cfg["train"]
    assert d["src"].endswith(("train.fr.gz", "train.fr")) and d["test_tgt"].endswith(("test_2016_flickr.en.gz",
                                                                                       "test_2016_flickr.en"))
    assert (o["schedule"], o["lr"], o["warmup"], o["warmup_fraction"], o["clip_norm"]) == ("noam", 7e-4, 800, 0.0, 0.0)
    assert (t["minutes"], t["seed"], t["average"], t["beam"], t["length_penalty"]) == (20.0, 1, 5, 4, 1.0)
    with pytest.raises(cfg_lib.ConfigError, match="data.pair"):
        cfg_lib.resolve(cfg_lib.load_toml(path), {"data": {"pair": "de"}})
