"""tfm_rs.claims: every claim's experiment, in quick mode, reaches its shipped verdict (so a
library change that breaks a finding fails here), writes result.json and its plots, and the
``tfm-rs claims`` command lists and runs them."""

from __future__ import annotations

import json

import pytest

from tfm_rs import claims
from tfm_rs.claims.base import VERDICTS, Outcome
from tfm_rs.cli import main


@pytest.mark.parametrize("name", list(claims.CLAIMS))
def test_claim_reaches_its_verdict(name, tmp_path):
    pytest.importorskip("matplotlib", reason="the claims' plots need matplotlib")
    claim = claims.get(name)
    assert claim.expected in VERDICTS and claim.statement and claim.reason
    result = claims.run(name, quick=True, out=tmp_path)
    assert result.verdict == claim.expected, result.summary
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["verdict"] == result.verdict and saved["quick"] is True
    assert result.plots and all((tmp_path / p).stat().st_size > 1000 for p in result.plots)


def test_claim_numbers_and_names_are_unique():
    numbers = [c.number for c in claims.CLAIMS.values()]
    assert len(set(numbers)) == len(numbers) == len(claims.CLAIMS)


def test_an_outcome_needs_a_known_verdict():
    with pytest.raises(ValueError, match="verdict"):
        Outcome("probably", "", {})


def test_command_lists_and_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the claims' plots need matplotlib")
    out = tmp_path / "c"
    assert main(["claims", "run", "which-masks", "--quick", "--out", str(out)]) == 0
    assert "which-masks: wrong" in capsys.readouterr().out
    assert main(["claims", "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "which-masks" in listing and "wrong" in listing and "not run" in listing
    assert main(["claims", "run", "no-such-claim"]) == 2
    assert "no claim named" in capsys.readouterr().err
    assert main(["claims", "run"]) == 2
    assert main(["claims", "run", "which-masks", "--all"]) == 2
