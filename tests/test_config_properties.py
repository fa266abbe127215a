"""Property-based tests: no input to the config parser escapes as anything but a ConfigError."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmlkit.config import Config, config_from_dict, load_config
from dmlkit.errors import ConfigError

KEYS = [
    "seed",
    "method.name",
    "method.update",
    "method.temperature",
    "method.mimicry_weight",
    "peers",
    "peers.0.arch",
    "peers.1.seed",
    "peers.0.kwargs.width",
    "optim.lr",
    "optim.name",
    "optim.schedule",
    "optim.milestones",
    "optim.betas",
    "data.name",
    "data.batch_size",
    "data.val_fraction",
    "data.labelled_fraction",
    "data.train_size",
    "train.epochs",
    "train.iterations",
    "train.device",
    "train.precision",
    "nonsense",
    "optim",
    "data.name.x",
]
yaml_scalars = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True).map(repr),
    st.booleans().map(str),
    st.sampled_from(
        ["null", "[]", "[1, 2]", "{a: 1}", "[small_cnn, mlp]", "'x'", "-", ":", "{", "1e-3"]
    ),
    st.text(string.printable, max_size=12),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


@given(st.lists(st.tuples(st.sampled_from(KEYS), yaml_scalars), max_size=4))
def test_random_overrides_give_a_config_or_a_config_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    assert isinstance(cfg, Config) and len(cfg.peers) >= 1 and cfg.optim.lr > 0


@given(
    st.dictionaries(
        st.sampled_from(["seed", "method", "peers", "optim", "data", "train", "x"]),
        json_values,
        max_size=4,
    )
)
def test_random_documents_give_a_config_or_a_config_error(doc):
    try:
        cfg = config_from_dict(doc)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, Config)


@given(st.text(max_size=40))
def test_any_set_string(assignment):
    try:
        cfg = load_config(None, [assignment])
    except ConfigError as exc:
        assert "--set" in str(exc) or "config key" in str(exc) or ":" in str(exc)
        return
    assert isinstance(cfg, Config)
