"""Fixtures shared by several test files (the plain helpers are in ``helpers.py``)."""

from __future__ import annotations

import pytest

from dmlkit.testing import MarketFixture, write_market_fixture


@pytest.fixture(scope="session")
def market(tmp_path_factory) -> MarketFixture:
    """The default synthetic Market-1501 folder (8 training and 6 test identities, with
    ``gt_bbox/``), written once per session; the tests only read it."""
    return write_market_fixture(tmp_path_factory.mktemp("market"), gt_bbox=True)
