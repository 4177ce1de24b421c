"""The documentation names code that exists: every repository path in backquotes exists, every
``tests/x.py::test_name`` is defined there, and a backquoted name that follows a file path on the
same line (``rust/ops/linear.rs``: ``linear``, ``linear_backward``) occurs in that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# benches/HISTORY.md is left out: its lab notes name the code as it was at the time.
DOCS = sorted(str(p.relative_to(ROOT))
              for p in [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), ROOT / "benches" / "README.md"])
PATH = re.compile(r"^(rust|python|tests|benches|scripts|docs)/[\w./-]+$")
NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def stale_references(text: str, label: str) -> list[str]:
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{label}:{number}"
        last_file = None
        for ref in re.findall(r"`([^`]+)`", line):
            if ref.startswith("tests/") and "::" in ref:
                path, name = ref.split("::", 1)
                file = ROOT / path
                if not file.is_file() or not re.search(rf"\bdef {re.escape(name)}\b", file.read_text()):
                    problems.append(f"{where}: {ref} is not defined")
                last_file = file
            elif PATH.match(ref):
                if not (ROOT / ref).exists():
                    problems.append(f"{where}: {ref} does not exist")
                last_file = ROOT / ref
            elif NAME.match(ref) and last_file is not None and last_file.is_file():
                text = last_file.read_text()
                missing = [p for p in ref.split(".") if len(p) > 2 and not re.search(rf"\b{re.escape(p)}\b", text)]
                if missing:
                    problems.append(f"{where}: `{ref}` is not in {last_file.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("name", DOCS)
def test_documentation_names_existing_code(name):
    assert stale_references((ROOT / name).read_text(encoding="utf-8"), name) == []


def test_the_check_finds_stale_names():
    text = "`rust/ops/linear.rs`: `linear`, `no_such_kernel`; `tests/test_nn.py::test_gone`; `rust/gone.rs`\n"
    assert [p.split(": ", 1)[1] for p in stale_references(text, "x.md")] == [
        "`no_such_kernel` is not in rust/ops/linear.rs", "tests/test_nn.py::test_gone is not defined",
        "rust/gone.rs does not exist"]
