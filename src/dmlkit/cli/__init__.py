"""The ``dml`` command: the parser and training commands (``app``), the commands that use
a finished run (``use``), analysis (``analysis``), summaries (``summary``) and ``dml watch``.
"""

from dmlkit.cli.app import main

__all__ = ["main"]
