"""Fixtures shared by several test files (the plain helpers are in ``helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmlkit.cli import main
from dmlkit.testing import MarketFixture, write_market_fixture

from helpers import FAST, sets


@pytest.fixture(scope="session")
def market(tmp_path_factory) -> MarketFixture:
    """The default synthetic Market-1501 folder (8 training and 6 test identities, with
    ``gt_bbox/``), written once per session; the tests only read it."""
    return write_market_fixture(tmp_path_factory.mktemp("market"), gt_bbox=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch digits run, one per test module; tests copy it (``copy_run``)
    before changing anything."""
    run = tmp_path_factory.mktemp("done") / "run"
    assert main(["train", "--out", str(run), *sets(*FAST)]) == 0
    return run
