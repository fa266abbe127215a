"""dml predict / dml export: a trained cohort on image files, and outside dmlkit."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

import dmlkit
import dmlkit.engine.export as export_module
from dmlkit.cli import main
from dmlkit.engine.export import export
from dmlkit.engine.predict import load_predictor
from dmlkit.errors import UserError
from dmlkit.models import build_model

from helpers import QUIET, image_folder, sets

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
        *QUIET,
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


def _copy_run(run: Path, dest: Path) -> Path:
    """config.yaml and the checkpoints of a run (no summary.json)."""
    (dest / "checkpoints").mkdir(parents=True)
    (dest / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    for f in (run / "checkpoints").iterdir():
        (dest / "checkpoints" / f.name).write_bytes(f.read_bytes())
    return dest


def test_a_run_without_stored_facts_rebuilds_them_from_its_data(trained, tmp_path):
    run, images = trained
    files = [images / "dog" / "3.png", images / "fox" / "1.png"]
    expected = load_predictor(run).probabilities(files)
    old = _copy_run(run, tmp_path / "old")
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


@pytest.mark.parametrize("peer", ["1", "peer1_small_cnn"])
def test_dml_export_and_export_peer_write_the_same_file(trained, tmp_path, peer):
    """The CLI and the Python API are one writer: the same peer gives the same bytes."""
    run, _ = trained
    assert main(["export", str(run), "--peer", peer, "--out", str(tmp_path / "cli")]) == 0
    api = dmlkit.export_peer(run, int(peer) if peer.isdigit() else peer, tmp_path / "a.safetensors")
    cli = tmp_path / "cli" / "weights.safetensors"
    assert cli.read_bytes() == api.read_bytes()
    from safetensors.torch import load_file

    trained_weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    expected = trained_weights["cohort"]["models"][1]
    got = load_file(str(api))
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_without_safetensors_both_write_the_same_pt(trained, tmp_path, monkeypatch, capsys):
    run, _ = trained
    monkeypatch.setattr(export_module, "have_safetensors", lambda: False)
    assert main(["export", str(run), "--peer", "0", "--out", str(tmp_path / "cli")]) == 0
    assert not (tmp_path / "cli" / "weights.safetensors").exists()
    api = dmlkit.export_peer(run, 0, tmp_path / "api.pt")
    assert (tmp_path / "cli" / "weights.pt").read_bytes() == api.read_bytes()
    # a .safetensors file asked for without the package: one line with the fix, no file
    with pytest.raises(UserError, match="needs the safetensors package.*or name the file .pt"):
        dmlkit.export_peer(run, 0, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_an_unknown_peer_is_the_same_line_for_cli_and_api(trained, tmp_path, capsys):
    run, _ = trained
    line = "no peer 'fox'; the run has peers 0..1 (peer0_small_cnn, peer1_small_cnn)"
    assert main(["export", str(run), "--peer", "fox", "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert line in err and err.count("\n") == 1
    with pytest.raises(UserError, match=line.replace("(", r"\(").replace(")", r"\)")):
        dmlkit.export_peer(run, "fox", tmp_path / "api.pt")
    assert not (tmp_path / "cli" / "weights.safetensors").exists()
    assert not (tmp_path / "api.pt").exists()
    for bad in (2, -1, True):
        with pytest.raises(UserError, match="the run has peers 0..1"):
            dmlkit.export_peer(run, bad, tmp_path / "api.pt")


def test_predict_mistakes_documented_in_errors_md(trained, tmp_path, capsys):
    """Every `dml predict` row of docs/errors.md: exit 2, the one line shown, nothing written."""
    run, images = trained
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    stream = _copy_run(run, tmp_path / "stream")  # a run of the stream loader, no summary.json
    cfg = yaml.safe_load((stream / "config.yaml").read_text())
    cfg["data"]["loader"] = "stream"
    (stream / "config.yaml").write_text(yaml.safe_dump(cfg))
    damaged = _copy_run(run, tmp_path / "damaged")
    (damaged / "summary.json").write_text((run / "summary.json").read_text()[:40])
    img = str(images / "cat" / "0.png")
    out = tmp_path / "no" / "p.json"
    cases = [
        ("predict-no-run", [str(tmp_path / "nowhere"), img], "nowhere: no such run directory"),
        ("predict-not-a-run", [str(tmp_path), img], f"{tmp_path}: not a run directory"),
        ("predict-missing-image", [str(run), "nope.png"], "nope.png: no such file or folder"),
        ("predict-empty-folder", [str(run), str(tmp_path / "empty")], "empty: no images (.png"),
        ("predict-corrupt-image", [str(run), str(broken)], f"{broken}: cannot decode the image"),
        ("predict-unknown-peer", [str(run), img, "--peer", "7"], "no peer 7; the run has peers"),
        ("predict-top-k", [str(run), img, "--top-k", "0"], "--top-k must be >= 1, got 0"),
        ("predict-device-typo", [str(run), img, "--device", "foo"], "--device='foo': not a dev"),
        ("predict-out-unwritable", [str(run), img, "--out", str(out)], "cannot write there (No"),
        ("predict-no-preprocessing", [str(stream), img], "data has no plain image preprocessing"),
        ("predict-damaged-summary", [str(damaged), img], "summary.json: unreadable ("),
    ]
    doc = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    rows = {line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")}
    for case, argv, needle in cases:
        assert case in rows, case
        assert main(["predict", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "no").exists()
