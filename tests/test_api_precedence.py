"""dmlkit's public API never drops an argument silently: ``fit`` / ``fit_config`` settings given
both as arguments and in ``config`` must agree; the method guard is the registry, wherever the
method was named; ``dir(dmlkit)`` shows the public names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dmlkit
from dmlkit.api import FIT_DEFAULTS, fit_config
from dmlkit.errors import ConfigError, UserError


def _models() -> list[nn.Module]:
    return [nn.Linear(4, 3), nn.Linear(4, 3)]


def test_an_argument_and_config_that_disagree_are_one_error() -> None:
    # Before: kdcl for 3 epochs was trained, method="dml" and epochs=10 silently dropped.
    with pytest.raises(UserError, match=r"method='dml' and config method.name='kdcl' disagree"):
        fit_config(
            _models(),
            method="dml",
            epochs=10,
            config={"method": {"name": "kdcl"}, "train": {"epochs": 3}},
        )
    with pytest.raises(UserError, match=r"epochs=10 and config train.epochs=3 disagree") as info:
        fit_config(_models(), epochs=10, config={"train": {"epochs": 3}})
    assert "\n" not in str(info.value)
    for arg, cfg in [
        ("update", {"method": {"update": "sequential"}}),
        ("batch_size", {"data": {"batch_size": 8}}),
        ("seed", {"seed": 5}),
    ]:
        value = {"update": "simultaneous", "batch_size": 16, "seed": 1}[arg]
        with pytest.raises(UserError, match=f"{arg}="):
            fit_config(_models(), config=cfg, **{arg: value})


def test_a_setting_given_once_is_taken_wherever_it_was_given() -> None:
    from_config = fit_config(
        _models(), config={"method": {"name": "kdcl"}, "train": {"epochs": 3}, "seed": 4}
    )
    assert (from_config.method.name, from_config.train.epochs, from_config.seed) == ("kdcl", 3, 4)
    from_args = fit_config(_models(), method="dml_e", epochs=2, batch_size=8, update="sequential")
    assert (from_args.method.name, from_args.train.epochs, from_args.data.batch_size) == (
        "dml_e",
        2,
        8,
    )
    assert from_args.method.update == "sequential"
    both = fit_config(_models(), epochs=3, config={"train": {"epochs": 3, "eval_every": 1}})
    assert both.train.epochs == 3 and both.train.eval_every == 1
    neither = fit_config(_models())
    assert neither.method.name == FIT_DEFAULTS["method"] == "dml"
    assert neither.train.epochs == FIT_DEFAULTS["epochs"]
    assert neither.data.batch_size == FIT_DEFAULTS["batch_size"]


class _Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((4,), float(i)), i % 3


@pytest.mark.parametrize(
    "kwargs",
    [{"method": "dlm"}, {"config": {"method": {"name": "dlm"}}}],
    ids=["argument", "config"],
)
def test_the_method_guard_is_the_registry_wherever_the_method_is_named(tmp_path, kwargs) -> None:
    with pytest.raises(ConfigError, match=r"dlm.*kdcl") as info:  # every method is listed
        dmlkit.fit(_models(), _Pairs(), test=_Pairs(), out=tmp_path / "run", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_dir_shows_the_public_names() -> None:
    assert {"fit", "step", "load_peers", "export_peer", "__version__"} <= set(dir(dmlkit))
    assert set(dmlkit.__all__) >= {"fit", "step", "load_peers", "export_peer"}
    assert not {"Any", "annotations"} & set(dir(dmlkit))
    for name in dmlkit.__all__:
        assert getattr(dmlkit, name) is not None
