"""The tfm-rs command line, run as ``python -m tfm_rs`` in a subprocess."""

import os
import subprocess
import sys

import pytest


def run(*args, timeout=120):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "tfm_rs", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_info():
    import tfm_rs

    r = run("info")
    assert r.returncode == 0, r.stderr
    assert tfm_rs.__version__ in r.stdout
    assert f"SIMD path: {tfm_rs.cpu_features()['isa']}" in r.stdout
    assert f"threads: {tfm_rs.get_num_threads()}" in r.stdout
    gpu_line = next(line for line in r.stdout.splitlines() if line.startswith("GPU backend: "))
    if tfm_rs.gpu_available():
        assert tfm_rs.gpu_info()["name"] in gpu_line
    else:
        assert "not built" in gpu_line or "no device" in gpu_line


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("tfm_rs ")
    r = run("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "info" in r.stdout
    r = run()
    assert r.returncode == 2


def test_short_demo():
    r = run("demo", "--steps", "30", "--lang", "en", "--heldout", "200", timeout=90)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "step     1/30  loss" in out and "step    30/30  loss" in out and "tok/s" in out
    assert "samples (held out):" in out
    assert "held-out exact match:" in out
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["demo", "--lang", "xx"], "invalid choice: 'xx'"),
    (["demo", "--steps", "0"], "--steps must be a positive int"),
    (["demo", "--minutes", "abc"], "--minutes must be a positive float"),
    (["demo", "--seed", "-3"], "non-negative integer"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_user_errors_are_one_line(args, needle):
    r = run(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("tfm-rs: error:") and needle in lines[0]
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = run("demo", "--lang", "xx", "--debug")
    assert r.returncode != 0
    assert "Traceback" in r.stderr


@pytest.mark.slow
def test_demo_learns():
    """A fixed number of steps (not the default time budget, which a slow machine would cut
    short) reaches a high held-out exact match; about two minutes on 2 cores."""
    r = run("demo", "--lang", "en", "--steps", "500", timeout=900)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("held-out exact match:")][0]
    assert float(line.split()[3].rstrip("%")) >= 90.0, line
