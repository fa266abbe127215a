"""dml predict / dml export: a trained cohort on image files, and outside dmlkit."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main
from dmlkit.engine.predict import export, load_predictor
from dmlkit.models import build_model

from helpers import image_folder, sets

CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run, image folder): two small CNNs that learned three colours (3 epochs, Adam)."""
    tmp = tmp_path_factory.mktemp("predict")
    images = image_folder(tmp / "imgs", CLASSES, n=8)
    overrides = [
        "data.name=imagefolder",
        f"data.root={images}",
        "data.val_fraction=0",
        "train.epochs=3",
        "optim.name=adam",
        "optim.lr=0.01",
        "train.progress=false",
    ]
    assert main(["train", "--out", str(tmp / "run"), *sets(*overrides)]) == 0
    return tmp / "run", images


def test_predict_names_the_class_of_every_image(trained):
    run, images = trained
    rows = load_predictor(run).predict([images], top_k=2)
    assert len(rows) == 3 * 8
    for row in rows:
        truth = Path(row["file"]).parent.name
        assert row["top"][0]["class"] == truth, row
        probs = [t["probability"] for t in row["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert row["top"][0]["index"] == CLASSES.index(truth)


def test_summary_stores_classes_and_preprocessing(trained):
    run, _ = trained
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == list(CLASSES)
    p = summary["preprocess"]
    assert p["in_channels"] == 3 and p["image_size"] == [8, 8] and len(p["mean"]) == 3


def test_a_run_without_stored_facts_rebuilds_them_from_its_data(trained, tmp_path):
    run, images = trained
    files = [images / "dog" / "3.png", images / "fox" / "1.png"]
    expected = load_predictor(run).probabilities(files)
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    for f in (run / "checkpoints").iterdir():
        (old / "checkpoints" / f.name).write_bytes(f.read_bytes())
    # no summary.json: the classes and the normalisation come from the dataset again
    assert torch.allclose(load_predictor(old).probabilities(files), expected)


def test_predict_cli_csv_and_json(trained, tmp_path, capsys):
    run, images = trained
    assert main(["predict", str(run), str(images / "fox" / "2.png"), "--peer", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "peer1_small_cnn"
    assert [r["top"][0]["class"] for r in out["predictions"]] == ["fox"]
    target = tmp_path / "p.csv"
    argv = ["predict", str(run), str(images / "cat"), "--top-k", "3", "--format", "csv"]
    assert main([*argv, "--out", str(target)]) == 0
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(table) == 8 * 3 and {r["rank"] for r in table} == {"1", "2", "3"}
    assert {r["class"] for r in table if r["rank"] == "1"} == {"cat"}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--peer", "7"], "the run has peers 0..1"),
        (["--top-k", "0"], "--top-k must be >= 1"),
    ],
)
def test_predict_mistakes_are_one_line(trained, capsys, argv, needle):
    run, images = trained
    assert main(["predict", str(run), str(images), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_predict_missing_image_is_one_line(trained, tmp_path, capsys):
    run, _ = trained
    assert main(["predict", str(run), str(tmp_path / "nope.png")]) == 2
    assert "nope.png: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("peer", [0, None])
def test_export_round_trip(trained, tmp_path, peer):
    run, images = trained
    predictor = load_predictor(run, peer=peer)
    files = export(predictor, tmp_path / "exp")
    names = {f.name for f in files}
    assert {"weights.safetensors", "model.json", "model.pt2"} <= names
    meta = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["preprocess"] == predictor.preprocess
    x = predictor.load_images(sorted((images / "dog").iterdir()))
    with torch.no_grad():
        expected = predictor.model(x)
        # the exported program, with torch alone
        program = torch.export.load(tmp_path / "exp" / "model.pt2").module()
        assert torch.allclose(program(x), expected, atol=1e-5)
        # the weights file into networks rebuilt from model.json's architecture names
        from safetensors.torch import load_file

        weights = load_file(tmp_path / "exp" / "weights.safetensors")
        rebuilt = []
        for i, spec in enumerate(meta["peers"]):
            net = build_model(
                spec["arch"], spec["num_classes"], spec["in_channels"], **spec["kwargs"]
            )
            prefix = "" if peer is not None else f"peers.{i}."
            net.load_state_dict(
                {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            )
            rebuilt.append(net.eval()(x))
    if peer is not None:
        assert torch.allclose(rebuilt[0], expected, atol=1e-5)
    else:
        log_mean = torch.logsumexp(torch.stack([r.log_softmax(1) for r in rebuilt]), 0)
        assert torch.allclose(log_mean - torch.log(torch.tensor(2.0)), expected, atol=1e-5)


def test_an_image_file_is_prepared_as_the_training_batches_are(tmp_path):
    """A digits test image written to a PNG, loaded by the predictor, equals the batch the
    trainer would feed (up to the PNG's 8-bit rounding)."""
    import numpy as np
    from PIL import Image
    from torch import nn

    from dmlkit.config import DataConfig
    from dmlkit.data import build_data
    from dmlkit.engine.predict import Predictor, preprocess_of

    data = build_data(DataConfig(), seed=0)
    x = data.test.x[:3]  # [3, 1, 8, 8] in 0..1
    files = []
    for i, img in enumerate(x):
        grey = np.round(img[0].numpy() * 255).astype(np.uint8)
        Image.fromarray(grey).convert("RGB").save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    p = Predictor(nn.Identity(), "p", list(data.class_names), preprocess_of(data), "cpu", [])
    expected = data.test.transform(x, None)
    got = p.load_images(files)
    assert got.shape == expected.shape
    step = 1 / 255 / float(data.test.transform.std.min())  # one grey level, normalised
    assert torch.allclose(got, expected, atol=step)
