"""``data.channels: 3``: gray images (the bundled digits) for torchvision: models (RGB input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main
from dmlkit.config import DataConfig, load_config
from dmlkit.data.core import match_channels
from dmlkit.errors import ConfigError

from helpers import FAST, sets


def test_a_gray_channel_is_repeated() -> None:
    x = torch.arange(2 * 16, dtype=torch.uint8).reshape(2, 1, 4, 4)
    y = match_channels(DataConfig(channels=3), x)
    assert y.shape == (2, 3, 4, 4) and y.is_contiguous()
    assert all(torch.equal(y[:, c], x[:, 0]) for c in range(3))
    assert match_channels(DataConfig(), x) is x  # null: as the images are
    assert match_channels(DataConfig(channels=1), x) is x


def test_channels_that_cannot_be_made_are_refused() -> None:
    rgb = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ConfigError, match=r"data.channels=1: the digits images have 3 channels"):
        match_channels(DataConfig(channels=1), rgb)
    with pytest.raises(ConfigError, match=r"data.channels must be 1, 3 or null .* got 2"):
        load_config(None, ["data.channels=2"])


def test_torchvision_model_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torchvision")
    base = [*sets(*FAST), "--set", "peers=[torchvision:resnet18,small_cnn]"]
    # refused without it, and the refusal names the way
    assert main(["train", *base, "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set data.channels: 3 (repeats the gray channel)" in err
    assert not (tmp_path / "no").exists()
    # with it: trained, and the run records 3-channel input with the gray statistics repeated
    out = tmp_path / "rgb"
    assert main(["train", *base, "--set", "data.channels=3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    pre = summary["preprocess"]
    assert pre["in_channels"] == 3 and len(set(pre["mean"])) == 1 and len(pre["mean"]) == 3
    assert [p["arch"] for p in summary["peers"]] == ["torchvision:resnet18", "small_cnn"]
