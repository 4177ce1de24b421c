"""``python -m tfm_rs.train.seq2seq``: the Multi30k recipe's former command, now an alias of

    tfm-rs train --config multi30k [flags]

(the configuration ``tfm_rs/configs/multi30k.toml``; see ``docs/training.md``). It accepts the
old flags and translates them: ``--data multi30k --src de --tgt en`` becomes ``--pair de-en``;
``--data DIR`` takes ``DIR/{train,val,<test-split>}.<lang>[.gz]``; ``--no-share`` is
``--no-share-embeddings``, ``--accum`` is ``--accum-steps``; ``--print-every`` is accepted and
ignored (the progress display replaces it). Every other flag is the same in both. With
``--resume`` the run's saved configuration is the base (``tfm-rs train --resume``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["main", "translate_argv"]

# Old flag → new flag, for those renamed; the value (if any) follows unchanged.
_RENAMED = {"--no-share": "--no-share-embeddings", "--accum": "--accum-steps"}
_DROPPED = {"--print-every"}


def _file(root: Path, split: str, lang: str) -> str:
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (root / name).is_file():
            return str(root / name)
    raise FileNotFoundError(f"no {root / (split + '.' + lang)}[.gz]")


def translate_argv(argv: Sequence[str]) -> List[str]:
    """The ``tfm-rs`` arguments equivalent to the recipe's ``argv``."""
    args = list(argv)
    opts = {"--data": "multi30k", "--src": "de", "--tgt": "en", "--test-split": "test_2016_flickr"}
    rest: List[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in opts or name in _DROPPED:
            if not eq:
                if i + 1 >= len(args):
                    raise SystemExit(f"python -m tfm_rs.train.seq2seq: {name} needs a value")
                value = args[i + 1]
                i += 1
            if name in opts:
                opts[name] = value
        else:
            rest.append(_RENAMED.get(name, name) + (eq + value if eq else ""))
        i += 1
    src, tgt = opts["--src"], opts["--tgt"]
    if opts["--data"] == "multi30k":
        if opts["--test-split"] not in ("test", "test_2016_flickr"):
            raise SystemExit("python -m tfm_rs.train.seq2seq: Multi30k's test split here is test_2016_flickr")
        data = ["--pair", f"{src}-{tgt}"]
    else:
        root = Path(opts["--data"])
        data = ["--corpus", "none"]
        for split, prefix in (("train", ""), ("val", "valid-"), (opts["--test-split"], "test-")):
            data += [f"--{prefix}src", _file(root, split, src), f"--{prefix}tgt", _file(root, split, tgt)]
    # A resumed run's own config.toml is its base; the shipped file on top would undo its flags.
    config = [] if "--resume" in rest else ["--config", "multi30k"]
    return ["train", *config, *data, *rest]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tfm_rs import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    new = translate_argv(argv)
    print("python -m tfm_rs.train.seq2seq is an alias of: tfm-rs " + " ".join(new), flush=True)
    return cli.main(new)


if __name__ == "__main__":
    sys.exit(main())
