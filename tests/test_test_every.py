"""``train.test_every``: the test split evaluated after some epochs, for best-epoch reporting;
it must not change training, and the final test record stays the last epoch's."""

from __future__ import annotations

import json

import torch

from helpers import FAST, records, train, weights


def test_test_every_records_the_test_split_without_changing_training(tmp_path) -> None:
    args = [*FAST, "train.epochs=3"]
    plain, probed = tmp_path / "plain", tmp_path / "probed"
    assert train(plain, *args) == 0
    assert train(probed, *args, "train.test_every=1") == 0
    for a, b in zip(weights(plain), weights(probed), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)  # evaluation consumed no randomness
    curve = records(probed, "test_epoch")
    assert sorted({r["epoch"] for r in curve}) == [1, 2]  # epoch 3: the final "test" records
    assert {r["peer"] for r in curve} == {r["peer"] for r in records(probed, "test")}
    assert all(0 <= r["top1"] <= 1 for r in curve)
    assert not records(plain, "test_epoch")
    mine, theirs = (json.loads((r / "summary.json").read_text()) for r in (probed, plain))
    assert [p["metrics"] for p in mine["peers"]] == [p["metrics"] for p in theirs["peers"]]
