"""``python -m tfm_rs``: the ``tfm-rs`` command line."""

import sys

from tfm_rs.cli import main

sys.exit(main())
