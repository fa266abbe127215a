"""No silent surprises: keys the dataset ignores, relative data roots, unstable starts, threads."""

from __future__ import annotations

import math
import os

import pytest
import yaml

from dmlkit.config import DataConfig
from dmlkit.config.usage import resolve_threads, unused_data_keys
from dmlkit.engine.hints import early_instability

from helpers import FAST, image_folder, train


def test_a_key_the_dataset_does_not_read_is_named():
    msgs = unused_data_keys(DataConfig(name="digits", root="/does/not/exist"))
    assert len(msgs) == 1 and msgs[0].startswith("data.root=/does/not/exist is not used by")
    assert unused_data_keys(DataConfig(name="imagefolder", root="x")) == []
    # defaults are not "set"; a dataset registered outside dmlkit is not judged
    assert unused_data_keys(DataConfig(name="digits")) == []
    assert unused_data_keys(DataConfig(name="my-own", root="x", label_noise=0.2)) == []
    keys = {m.split("=")[0] for m in unused_data_keys(DataConfig(name="cifar100", label_noise=0.1))}
    assert keys == {"data.label_noise"}


def test_training_warns_about_an_unused_key(tmp_path):
    with pytest.warns(UserWarning, match=r"data\.root=/does/not/exist is not used by the digits"):
        assert train(tmp_path / "r", *FAST, "data.root=/does/not/exist") == 0


def test_a_relative_data_root_is_stored_resolved(tmp_path, monkeypatch):
    image_folder(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "r"
    overrides = [*FAST, "data.name=imagefolder", "data.root=imgs", "data.train_size=null"]
    assert train(run, *overrides) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    assert stored == str((tmp_path / "imgs").resolve())


def test_early_instability_hint():
    names = ["p0", "p1"]
    calm = [{"ce": 1.0, "mimicry": 0.3}, {"ce": 1.1, "mimicry": 0.2}]
    above_chance = [{"ce": 1.0, "mimicry": 0.3}, {"ce": math.log(10) + 0.6, "mimicry": 0.5}]
    loud = [{"ce": 1.0, "mimicry": 4.5}, {"ce": 1.0, "mimicry": 0.2}]
    assert early_instability(1, names, calm, 10) is None
    assert "p1 has training cross-entropy" in early_instability(2, names, above_chance, 10)
    # epoch 1's mean includes the random start: cross-entropy alone is not judged there
    assert early_instability(1, names, above_chance, 10) is None
    hint = early_instability(2, names, loud, 10)
    assert "mimicry 4.50 nats" in hint and "method.mimicry_rampup" in hint
    assert early_instability(3, names, loud, 10) is None  # only the start is judged


def test_threads_auto():
    assert resolve_threads(3, env={}) == 3
    assert resolve_threads("auto", env={"OMP_NUM_THREADS": "2"}, cpus=8, load=0.0) == 2
    assert resolve_threads("auto", env={}, cpus=8, load=0.2) == 8
    assert resolve_threads("auto", env={}, cpus=8, load=5.4) == 3
    assert resolve_threads("auto", env={}, cpus=2, load=12.0) == 1
    assert resolve_threads("auto", env={"OMP_NUM_THREADS": ""}, cpus=2, load=0.0) == 2


def test_train_threads_sets_torch_threads(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # explicit: never the machine's default
    before = torch.get_num_threads()
    try:
        assert train(tmp_path / "r", *FAST, "train.threads=2") == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert os.environ["OMP_NUM_THREADS"] == "1"
