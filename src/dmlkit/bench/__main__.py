"""``python -m dmlkit.bench``: the same program as ``dml bench`` (and the process each case
runs in)."""

import sys

from dmlkit.bench.cli import main

sys.exit(main())
