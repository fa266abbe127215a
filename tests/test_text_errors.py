"""docs/errors.md, "Transformers and text predictions": every row one line, exit 2, nothing
written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from dmlkit.cli import main  # noqa: E402

TINY_GPT = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    import yaml

    root = tmp_path_factory.mktemp("textrun")
    cfg = {
        "data": {
            "name": "stdlib-lm",
            "batch_size": 4,
            "text": {"tokenizer": "byte", "max_length": 32, "stdlib_classes": 2, "lm_blocks": 8},
        },
        "peers": [{"arch": "hf-config:gpt2", "kwargs": TINY_GPT}] * 2,
        "train": {"iterations": 1, "device": "cpu", "progress": False},
    }
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(root / "c.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


def _config(tmp_path: Path) -> Path:
    import yaml

    cfg = {
        "data": {
            "name": "stdlib-lm",
            "batch_size": 4,
            "text": {"tokenizer": "byte", "max_length": 32, "stdlib_classes": 2, "lm_blocks": 8},
        },
        "peers": [{"arch": "hf-config:gpt2", "kwargs": TINY_GPT}] * 2,
        "train": {"iterations": 1, "device": "cpu"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


CASES = {
    "hf-unknown-type": (["--set", "peers.0.arch=hf-config:gpt9"], "no model type 'gpt9'"),
    "hf-not-local": (
        ["--set", "peers.0.arch=hf:someone/not-here"],
        "neither a folder nor a model in the local Hugging Face cache",
    ),
    "hf-no-config": (["--set", "peers.0.arch=hf:{tmp}"], "has no config.json"),
    "hf-bad-task": (["--set", "peers.0.kwargs.task=lm"], "task 'lm' for 'hf-config:gpt2'"),
    "hf-bad-field": (["--set", "peers.0.kwargs.n_head=3"], "peers[].kwargs for 'hf-config:gpt2'"),
    "hf-on-images": (
        ["--set", "data.name=digits", "--set", "peers.0.arch=hf-config:bert"],
        "hf-config:bert takes token ids, but the data are images",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transformer_mistakes_are_one_line(tmp_path, capsys, case):
    argv, needle = CASES[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = tmp_path / "run"
    code = main(["train", "-c", str(_config(tmp_path)), "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_predict_text_mistakes_are_one_line(tmp_path, capsys, text_run):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"\xe9t\xe9\n")
    other = tmp_path / "images_run"
    other.mkdir()
    cases = {
        "predict-text-images": ([str(text_run), "x.png"], "is a text run: give --text"),
        "predict-text-not-text-run": ([str(other), "--text", "hi"], "not a text run"),
        "predict-lines-missing": ([str(text_run), "--lines", "nope.txt"], "no such file"),
        "predict-lines-not-utf8": ([str(text_run), "--lines", str(bad)], "not UTF-8 (byte 0)"),
        "predict-text-empty": ([str(text_run), "--text", ""], "an empty text cannot be scored"),
    }
    doc = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    for case, (argv, needle) in cases.items():
        assert f"| {case} |" in doc
        code = main(["predict", *argv])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (case, err)


def test_every_row_is_tested():
    doc = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    section = doc.split("## Transformers and text predictions", 1)[1]
    rows = re.findall(r"^\| ([a-z0-9-]+) \|", section, flags=re.M)
    tested = set(CASES) | {
        "predict-text-images",
        "predict-text-not-text-run",
        "predict-lines-missing",
        "predict-lines-not-utf8",
        "predict-text-empty",
    }
    assert set(rows) - {"id"} == tested  # "id": the header
