"""`dml analyze` and `dml report` end to end on a tiny grid of real runs (bundled digits)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib.image
import pytest

from dmlkit.cli import main
from dmlkit.experiments import EXPERIMENTS, Experiment, run_experiment

from helpers import QUIET, records

# Tiny and quick: 3 small MLPs, 300 training images, 3 epochs (BatchNorm networks under noise
# are covered in test_analysis.py).
TINY = [
    *QUIET,
    "data.train_size=300",
    "train.epochs=3",
    "train.eval_every=1",
    "optim.lr=0.1",
    "peers=[{arch: mlp, kwargs: {hidden: [32]}}, {arch: mlp, kwargs: {hidden: [32]}}, "
    "{arch: mlp, kwargs: {hidden: [32]}}]",
]
ARMS = {
    "independent": {"method": {"name": "independent"}},
    "dml": {"method": {"name": "dml"}},
    "dml_e": {"method": {"name": "dml_e"}},
}
PNGS = ("loss_curves.png", "noise.png", "entropy.png", "agreement.png")


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid")
    exp = Experiment(name="tiny", description="tiny grid", base={}, arms=ARMS)
    run_experiment(exp, out, seeds=2, overrides=TINY, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def analysed(grid) -> Path:
    """The grid after `dml analyze GRID --out GRID/analysis --relative --draws 2`."""
    args = ["analyze", str(grid), "--out", str(grid / "analysis"), "--draws", "2", "--relative"]
    assert main(args) == 0
    return grid


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0.01  # not a blank canvas


def test_analyze_one_run_writes_its_csv_and_png(grid, capsys):
    run = grid / "dml" / "seed0"
    assert main(["analyze", str(run), "--sigmas", "0,0.02", "--draws", "2"]) == 0
    out = run / "analysis"
    assert "## entropy" in capsys.readouterr().out
    for name in PNGS:
        _assert_png(out / name)
    rows = list(csv.DictReader((out / "noise.csv").open()))
    # 3 peers x 2 sigmas x 2 draws; sigma 0 leaves the loss exactly unchanged
    assert len(rows) == 12
    assert all(float(r["increase"]) == 0.0 for r in rows if float(r["sigma"]) == 0)
    assert all(float(r["increase"]) != 0.0 for r in rows if float(r["sigma"]) > 0)
    curves = list(csv.DictReader((out / "curves.csv").open()))
    assert len(curves) == 3 * 3  # 3 peers x 3 epochs, read from the log
    logged = records(run, "train")
    assert sorted(float(r["ce"]) for r in curves) == pytest.approx(
        sorted(r["ce"] for r in logged), rel=1e-5
    )
    entropy = list(csv.DictReader((out / "entropy.csv").open()))
    assert {r["split"] for r in entropy} == {"train", "test"}
    assert all(0 < float(r["entropy_nats"]) < 2.303 for r in entropy)  # (0, log 10)


def test_analyze_a_grid_overlays_the_arms(analysed):
    out = analysed / "analysis"
    for name in PNGS:
        _assert_png(out / name)
    analysis = json.loads((out / "analysis.json").read_text())["runs"]
    assert sorted((r["label"], r["seed"]) for r in analysis) == sorted(
        (arm, s) for arm in ARMS for s in (0, 1)
    )
    assert all(r["noise"]["relative"] for r in analysis)
    agreement = list(csv.DictReader((out / "agreement.csv").open()))
    assert len(agreement) == 6 * 2  # every run, train and test
    assert all(0 <= float(r["all_agree"]) <= float(r["pairwise_agree"]) <= 1 for r in agreement)
    summary = (out / "summary.md").read_text()
    # the independent baseline comes first in every table
    assert summary.index("| independent |") < summary.index("| dml |")
    assert "| label | epoch 1 | epoch 2 | epoch 3 |" in summary  # the first epochs, per arm


def test_report_contains_every_run_and_embeds_the_figures(analysed, tmp_path):
    grid = analysed
    page = tmp_path / "docs" / "tiny.md"
    assert main(["report", str(grid), "--out", str(page), "--title", "Tiny"]) == 0
    text = page.read_text()
    assert text.startswith("# Tiny")
    for arm in ARMS:
        for seed in (0, 1):
            assert str(grid / arm / f"seed{seed}") in text or f"{arm}/seed{seed}" in text
    for heading in ("## How to reproduce", "## Setup", "## Results", "## Machine and software"):
        assert heading in text
    assert "dml reproduce" not in text or "tiny" in text
    # per-peer and ensemble metrics for each arm, paired gains vs the independent arm
    assert "| ensemble |" in text and "dml − independent" in text
    assert "dml_e − independent" in text
    # the paper's claims, checked; the figures embedded by relative links that resolve
    assert "The paper's claims" in text and "| dml_e − dml |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 4
    for link in links:
        _assert_png(page.parent / link)
    # the environment of the runs
    assert "torch" in text and "python" in text


def test_report_of_a_single_run_without_and_with_analysis(grid, tmp_path):
    run = grid / "independent" / "seed1"
    page = tmp_path / "one.md"
    assert main(["report", str(run), "--out", str(page)]) == 0
    text = page.read_text()
    assert "independent/seed1" in text
    assert "No analysis found" in text
    assert main(["report", str(run), "--out", str(page), "--analyze"]) == 0
    text = page.read_text()
    assert "No analysis found" not in text and "### Wide minima" in text
    assert (tmp_path / "one_analysis" / "noise.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["analyze", "/no/such/run"], "no such run"),
        (["analyze", "{empty}"], "holds no run directory"),
        (["analyze", "{grid}", "--sigmas", "0,x"], "--sigmas"),
        (["analyze", "{grid}", "--sigmas", "0,-1"], "--sigmas"),
        (["analyze", "{grid}", "--draws", "0"], "--draws"),
        (["report", "{grid}", "--out", "{tmp}/page.txt"], ".md"),
        (["report", "{grid}", "{grid}"], "--out"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(grid, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    subs = {"{grid}": str(grid), "{empty}": str(tmp_path / "empty"), "{tmp}": str(tmp_path)}
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dml: error:") and message in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_digits_analysis_recipe_smoke_writes_report_and_docs(tmp_path, monkeypatch, capsys):
    """The registered recipe, shrunk: 1 seed, 5 % of the data and epochs, a short probe."""
    from dmlkit.analysis.analyze import AnalysisOptions
    from dmlkit.experiments import digits_analysis as recipe

    monkeypatch.setattr(recipe, "ANALYSIS", AnalysisOptions(sigmas=[0, 0.02], draws=1))
    exp = EXPERIMENTS.get("digits-analysis")
    assert {"independent", "dml", "dml_e"} <= set(exp.arms) and exp.seeds >= 5
    assert len(exp.base["peers"]) >= 3  # with K = 2, DML_e is DML by definition
    monkeypatch.chdir(tmp_path)
    args = ["reproduce", "digits-analysis", "--seeds", "1", "--scale", "0.05", "--out", "grid"]
    assert main([*args, "--docs", "docs", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "report page: docs/digits-analysis.md" in printed
    for page in (tmp_path / "grid" / "report.md", tmp_path / "docs" / "digits-analysis.md"):
        text = page.read_text()
        assert "Smoke run" in text or page.name != "report.md"
        for arm in exp.arms:
            assert f"{arm}/seed0" in text
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            _assert_png(page.parent / link)
    assert (tmp_path / "docs" / "digits-analysis" / "noise.png").is_file()
