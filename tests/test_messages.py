"""Messages that name the right thing (issue 29): the path given, the flag to use, the file meant.

Each case is a row of docs/errors.md ("Messages that name the right thing", same id): exit 2,
one line, nothing written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dmlkit.cli import main
from dmlkit.engine.hints import FINDINGS, early_instability

ROOT = Path(__file__).resolve().parents[1]


def _error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 2, argv
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and "usage:" not in captured.err
    return captured.err.strip()


def test_eval_of_a_missing_relative_run_names_it_and_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # "from another folder": runs/my-dml is not here
    err = _error(capsys, "eval", "runs/my-dml")
    assert err == (
        f"dml: error: runs/my-dml: no such run directory or checkpoint file "
        f"(looked for {tmp_path / 'runs' / 'my-dml'})"
    )
    err = _error(capsys, "eval", "/nonexistent/run")
    assert err == "dml: error: /nonexistent/run: no such run directory or checkpoint file"
    err = _error(capsys, "eval", "/nonexistent/run/checkpoints/last.pt")
    assert err.startswith("dml: error: /nonexistent/run/checkpoints/last.pt: no such run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--epochs", "3"], "dml train: no option --epochs; config values are set "
         "with --set: --set train.epochs=3"),
        (["train", "--lr=0.1"], "dml train: no option --lr; config values are set with --set: "
         "--set optim.lr=0.1"),
        (["train", "--mimicry-weight", "2"], "dml train: no option --mimicry-weight; config "
         "values are set with --set: --set method.mimicry_weight=2"),
        (["reproduce", "digits", "--train.epochs", "2"], "dml reproduce: no option "
         "--train.epochs; config values are set with --set: --set train.epochs=2"),
        (["train", "--name", "dml"], "dml train: no option --name; config values are set with "
         "--set: --set method.name=dml or --set optim.name=dml or --set data.name=dml"),
        (["train", "--epochs"], "dml train: no option --epochs; config values are set with "
         "--set: --set train.epochs=VALUE"),
        (["train", "--zzz", "1"], "dml train: unrecognized arguments: --zzz 1 (see dml train "
         "--help)"),
        (["eval", "RUN", "--epochs", "3"], "dml eval: unrecognized arguments: --epochs 3 (see "
         "dml eval --help)"),
    ],
)  # fmt: skip
def test_an_unknown_option_named_like_a_config_key_gets_the_set_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    argv: list[str], expected: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert _error(capsys, *argv) == f"dml: error: {expected}"
    assert list(tmp_path.iterdir()) == []  # nothing trained, no runs/ folder


def test_train_takes_data_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The CIFAR-100 error says "--data-root PATH or --set data.root=PATH": both work on train."""
    err = _error(capsys, "train", "--set", "data.name=cifar100", "--out", str(tmp_path / "r"))
    assert "give --data-root PATH or --set data.root=PATH" in err
    for argv in (
        ["--data-root", str(tmp_path / "c100")],
        ["--set", f"data.root={tmp_path / 'c100'}"],
    ):
        err = _error(
            capsys, "train", "--set", "data.name=cifar100", *argv, "--out", str(tmp_path / "r")
        )
        # the folder was taken: the error now names the files missing in it
        assert f"data.root: {tmp_path / 'c100' / 'cifar-100-python'}" in err, err
    err = _error(
        capsys, "train", "--data-root", "a", "--set", "data.root=b", "--out", str(tmp_path / "r")
    )
    assert err == (
        "dml: error: give the dataset folder once: --data-root PATH or --set data.root=PATH"
    )
    argv = ["reproduce", "cifar100-table", "--data-root", "a", "--set", "data.root=b"]
    assert _error(capsys, *argv, "--out", str(tmp_path / "g")) == err
    assert not (tmp_path / "r").exists() and not (tmp_path / "g").exists()


def test_a_misspelt_config_file_gets_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    err = _error(capsys, "train", "-c", "configs/digit.yaml", "--out", str(tmp_path / "r"))
    assert err == (
        "dml: error: config file not found: configs/digit.yaml; did you mean "
        "configs/digits.yaml? (give an existing YAML file with -c)"
    )
    err = _error(capsys, "train", "-c", "configs/qqqqqqqq.yaml", "--out", str(tmp_path / "r"))
    assert "did you mean" not in err
    assert not (tmp_path / "r").exists()


def test_the_unstable_start_warning_and_the_readme_name_the_same_page() -> None:
    line = early_instability(2, ["p0"], [{"ce": 9.0, "mimicry": 3.0}], num_classes=10)
    assert line is not None and line.endswith(f"({FINDINGS})")
    page, anchor = FINDINGS.split("#")
    text = (ROOT / page).read_text(encoding="utf-8")
    headings = [
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    ]
    assert anchor in headings and "mimicry_rampup" in text
    assert FINDINGS in (ROOT / "README.md").read_text(encoding="utf-8")


def test_no_option_hint_keeps_argparse_for_real_mistakes(capsys: pytest.CaptureFixture) -> None:
    # a missing argument is argparse's own message (usage and the line), exit 2
    with pytest.raises(SystemExit) as exit_:
        main(["eval"])
    assert exit_.value.code == 2
    assert "the following arguments are required: run_dir" in capsys.readouterr().err


def test_dml_list_says_which_datasets_need_a_download(capsys: pytest.CaptureFixture) -> None:
    from dmlkit.cli.use import BUILTIN_NAMES

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    needs = dict(re.findall(r"^  ([\w-]+): (.+)$", out, re.M))
    assert set(needs) == set(BUILTIN_NAMES["datasets"].split())  # every dataset, no other
    assert needs["cifar100"].startswith("needs a download") and "--download" in needs["cifar100"]
    assert needs["market1501"].startswith("needs a download")
    assert "no download" in needs["digits"] and "no download" in needs["digits-pairs"]


def test_analyze_says_when_the_runs_trained_for_different_lengths() -> None:
    from dmlkit.analysis.analyze import length_note

    def run(path: str, epochs: int) -> dict:
        curve = {"epoch": list(range(1, epochs + 1)), "ce": [1.0] * epochs}
        return {"path": path, "curves": {"p0": curve, "p1": curve}}

    assert length_note([run("a", 5), run("b", 5)]) is None
    assert length_note([run("a", 5), run("b", 3)]) == (
        "note: these runs trained for different numbers of epochs (5 epochs: a; 3 epochs: b): "
        "their curves and scores are not a like-for-like comparison"
    )
    many = [run(f"s{i}", 30) for i in range(5)] + [run("short", 3)]
    assert "(30 epochs: s0, s1, s2 and 2 more; 3 epochs: short)" in length_note(many)
