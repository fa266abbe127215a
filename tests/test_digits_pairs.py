"""digits-pairs: disjoint sources, the composition, determinism, label noise, config checks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dmlkit.config import DataConfig, load_config
from dmlkit.data import build_data
from dmlkit.data.digits import load_digits_arrays
from dmlkit.data.digits_pairs import flip_labels, make_pairs, source_split
from dmlkit.errors import ConfigError


def pairs_cfg(**kw) -> DataConfig:
    return DataConfig(name="digits-pairs", **kw)


@pytest.fixture(scope="module")
def default_pairs():
    return make_pairs(pairs_cfg())


def test_source_split_is_disjoint_and_covers_every_digit():
    _, digits = load_digits_arrays()
    train, val, test = source_split(digits, pairs_cfg())
    assert len(set(train) | set(val) | set(test)) == len(digits) == 1797
    assert len(train) + len(val) + len(test) == 1797  # so pairwise disjoint
    # stratified: test holds round(0.25 * count) of each digit (as the digits dataset)
    assert np.bincount(digits[test]).tolist() == [44, 46, 44, 46, 45, 46, 45, 45, 44, 45]


def test_no_source_image_in_both_train_and_test(default_pairs):
    tr, va, te = default_pairs.train, default_pairs.val, default_pairs.test
    train_sources = set(tr.sources.ravel().tolist())
    assert train_sources.isdisjoint(te.sources.ravel().tolist())
    assert train_sources.isdisjoint(va.sources.ravel().tolist())
    assert set(va.sources.ravel().tolist()).isdisjoint(te.sources.ravel().tolist())
    # every source image of a side is used (draws in rounds of a permutation)
    _, digits = load_digits_arrays()
    train_src, val_src, test_src = source_split(digits, pairs_cfg())
    assert train_sources == set(train_src.tolist())
    assert set(te.sources.ravel().tolist()) == set(test_src.tolist())


def test_images_are_the_two_source_digits_side_by_side(default_pairs):
    images, digits = load_digits_arrays()
    p = default_pairs
    assert p.class_names == [f"{a}{b}" for a in range(10) for b in range(10)]
    for split, per_class in ((p.train, 20), (p.val, 20), (p.test, 20)):
        assert split.x.shape == (100 * per_class, 1, 8, 16) and split.x.dtype == np.float32
        assert np.bincount(split.clean, minlength=100).tolist() == [per_class] * 100
        left, right = split.sources[:, 0], split.sources[:, 1]
        np.testing.assert_array_equal(split.x[:, :, :, :8], images[left])
        np.testing.assert_array_equal(split.x[:, :, :, 8:], images[right])
        # class "ab" shows digit a on the left and digit b on the right
        np.testing.assert_array_equal(digits[left] * 10 + digits[right], split.clean)
        np.testing.assert_array_equal(split.y, split.clean)  # no label noise by default


def test_options_set_sizes_and_class_subset():
    p = make_pairs(pairs_cfg(pairs_per_class=3, pairs_eval_per_class=5, pairs_classes=25))
    assert len(p.class_names) == 25 == len(set(p.class_names))
    assert p.class_names == sorted(p.class_names)
    assert p.train.x.shape == (75, 1, 8, 16) and p.test.x.shape == (125, 1, 8, 16)
    assert p.val.y.shape == (125,)
    _, digits = load_digits_arrays()
    names = np.array([int(n) for n in p.class_names])
    shown = digits[p.test.sources[:, 0]] * 10 + digits[p.test.sources[:, 1]]
    np.testing.assert_array_equal(names[p.test.y], shown)


def test_construction_is_deterministic_and_follows_split_seed(default_pairs):
    again = make_pairs(pairs_cfg())
    for name in ("train", "val", "test"):
        a, b = getattr(default_pairs, name), getattr(again, name)
        np.testing.assert_array_equal(a.sources, b.sources)
        np.testing.assert_array_equal(a.y, b.y)
    other = make_pairs(pairs_cfg(split_seed=1))
    assert not np.array_equal(other.test.sources, default_pairs.test.sources)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.55])
def test_label_noise_flips_exactly_that_fraction_of_training_labels(fraction):
    clean = make_pairs(pairs_cfg(pairs_per_class=10))
    noisy = make_pairs(pairs_cfg(pairs_per_class=10, label_noise=fraction))
    tr = noisy.train
    np.testing.assert_array_equal(tr.clean, clean.train.y)  # same images and true classes
    np.testing.assert_array_equal(tr.sources, clean.train.sources)
    assert (tr.y != tr.clean).sum() == round(fraction * 1000)
    assert tr.y.min() >= 0 and tr.y.max() < 100
    # validation and test labels stay clean
    np.testing.assert_array_equal(noisy.val.y, noisy.val.clean)
    np.testing.assert_array_equal(noisy.test.y, clean.test.y)


def test_flipped_labels_are_spread_over_the_other_classes():
    y = np.zeros(20_000, dtype=np.int64)
    noisy = flip_labels(y, 1.0, 5, seed=0)
    counts = np.bincount(noisy, minlength=5)
    assert counts[0] == 0  # never the true class
    assert counts[1:].min() > 4_700 and counts[1:].max() < 5_300  # about 5,000 each


def test_bundle_loaders_and_scale_fraction():
    cfg = pairs_cfg(pairs_per_class=4, pairs_eval_per_class=6, batch_size=32)
    b = build_data(cfg, seed=0)
    assert b.num_classes == 100 and b.image_size == (8, 16) and b.in_channels == 1
    assert len(b.train.y) == 400 and len(b.val.y) == 600 and len(b.test.y) == 600
    x, y = next(iter(b.train))
    assert x.shape == (32, 1, 8, 16) and y.dtype == torch.int64
    # normalised with the training images' statistics
    assert abs(float(b.train.transform.mean[0]) - float(make_pairs(cfg).train.x.mean())) < 1e-5
    half = build_data(pairs_cfg(pairs_per_class=4, pairs_eval_per_class=6, fraction=0.5), seed=0)
    assert len(half.train.y) == 200 and len(half.val.y) == 300 and len(half.test.y) == 300


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.pairs_classes=101", "data.pairs_classes"),
        ("data.pairs_per_class=0", "data.pairs_per_class"),
        ("data.label_noise=1.0", "data.label_noise must be in [0, 1)"),
    ],
)
def test_bad_pairs_options_are_config_errors(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        load_config(overrides=["data.name=digits-pairs", override])


def test_label_noise_on_another_dataset_is_refused():
    with pytest.raises(ConfigError, match="digits-pairs only"):
        load_config(overrides=["data.label_noise=0.2"])


# ---------------------------------------------------------------------------------------------
# the experiments: intervals, the selection rule, the reports

TINY = [
    "data.pairs_per_class=2",
    "data.pairs_eval_per_class=2",
    "data.batch_size=50",
    "train.epochs=1",
    "peers.*.kwargs.width=4",
    "train.device=cpu",
]


def test_t_interval_matches_the_t_quantile():
    # digits-pairs' intervals are dmlkit.analysis.stats.mean_ci95's, as every report's
    from dmlkit.analysis.stats import mean_ci95
    from dmlkit.experiments.digits_pairs import Gain

    mean, half = mean_ci95([1.0, 2.0, 3.0])  # sd 1, n 3: t(0.975, 2) = 4.3027
    assert mean == 2.0 and half == pytest.approx(4.3027 / 3**0.5, rel=1e-4)
    assert mean_ci95([5.0])[1] == float("inf")
    assert Gain("a", [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]).interval == (mean, half)


def test_selection_rule_prefers_resolved_demo_sized_regimes():
    from dmlkit.experiments.digits_pairs import Gain, Regime, select

    def gains(diffs_per_member):
        return [Gain(m, [0.0] * len(d), list(d)) for m, d in zip("abc", diffs_per_member)]

    big = Regime(per_class=20)  # resolved, largest bound, but too big for the demo
    small = Regime(per_class=5)  # resolved
    unresolved = Regime(width=8)  # one member's interval includes 0
    val = {
        big: gains([[5, 6, 7]] * 3),
        small: gains([[1, 1.2, 1.1]] * 3),
        unresolved: gains([[9, 9.5, 9.2], [9, 9.1, 9.3], [-2, 3, 1]]),
    }
    assert not big.cheap and small.cheap
    assert select(val) == (small, True)
    del val[small]
    assert select(val) == (big, True)
    del val[big]
    assert select(val) == (unresolved, False)


def test_every_regime_arm_is_a_valid_config():
    from dmlkit.experiments import arm_config
    from dmlkit.experiments.digits_pairs import REGIME_SEARCH, REGIMES, Regime

    assert len(REGIME_SEARCH.arms) == 2 * len(REGIMES)
    for arm in REGIME_SEARCH.arms:
        cfg = arm_config(REGIME_SEARCH, arm, 100, [])
        regime, method = arm.split("/")
        assert cfg.data.name == "digits-pairs" and cfg.method.name == method
        d = cfg.data
        width = cfg.peers[0].kwargs["width"]
        same = Regime(d.pairs_classes, d.pairs_per_class, width, d.label_noise, cfg.train.epochs)
        assert regime == same.name
    assert Regime(noise=0.4, epochs=60).name == "c100-n10-w16-noise0.4-e60"


def test_demo_report_pairs_test_accuracies_by_seed(tmp_path):
    from dmlkit.experiments import run_experiment
    from dmlkit.experiments.digits_pairs import DIGITS_PAIRS

    results = run_experiment(DIGITS_PAIRS, tmp_path, seeds=2, overrides=TINY, progress=False)
    table = DIGITS_PAIRS.report(DIGITS_PAIRS, results, tmp_path, 1.0)
    assert "over 2 paired seeds" in table and "| ensemble |" in table
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 3 * 2  # two peers and the ensemble, two seeds
    for row in rows:
        seed = int(row["seed_index"])
        summaries = {
            arm: json.loads((tmp_path / arm / f"seed{seed}" / "summary.json").read_text())
            for arm in ("independent", "dml")
        }
        for arm, s in summaries.items():
            if row["member"] == "ensemble":
                top1 = s["ensemble"]["metrics"]["top1"]
            else:
                top1 = next(p for p in s["peers"] if p["name"] == row["member"])["metrics"]["top1"]
            assert float(row[arm]) == pytest.approx(100 * top1, abs=1e-3)
        assert float(row["gain"]) == pytest.approx(float(row["dml"]) - float(row["independent"]))


def test_regime_search_runs_from_its_first_seed_and_reports_validation(tmp_path):
    import dataclasses

    from dmlkit.experiments import run_experiment
    from dmlkit.experiments.digits_pairs import REGIME_SEARCH

    arms = {a: c for a, c in REGIME_SEARCH.arms.items() if a.startswith("c25-")}
    exp = dataclasses.replace(REGIME_SEARCH, arms=arms)
    results = run_experiment(exp, tmp_path, seeds=2, overrides=TINY, progress=False)
    assert sorted({r.seed for r in results}) == [100, 101]
    assert (tmp_path / "c25-n10-w16-noise0" / "dml" / "seed101" / "summary.json").is_file()
    text = exp.report(exp, results, tmp_path, 1.0)
    assert "Selected on validation: c25-n10-w16-noise0" in text
    assert (tmp_path / "gains-val.png").stat().st_size > 0
    splits = {row["split"] for row in csv.DictReader((tmp_path / "results.csv").open())}
    assert splits == {"val", "test"}
