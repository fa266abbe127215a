"""``python -m dmlkit.cli``: the ``dml`` command."""

from dmlkit.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
