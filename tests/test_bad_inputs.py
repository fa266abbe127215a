"""Every row of docs/errors.md: bad input -> one line naming the problem, exit 2, nothing written.

Each case is (id, setup, argv, needle): ``setup(tmp_path)`` prepares files and returns a dict of
names substituted into ``argv``; the message must contain ``needle``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main

from helpers import FAST, sets

FAST_ARGS = sets(*FAST)  # --set pairs of a one-epoch run on 128 digits


def _nothing(tmp: Path) -> dict:
    return {}


def _yaml(text: str):
    def setup(tmp: Path) -> dict:
        path = tmp / "config.yaml"
        path.write_text(text)
        return {"cfg": str(path)}

    return setup


def _finished_run(tmp: Path, *extra: str) -> Path:
    run = tmp / "done"
    assert main(["train", "--out", str(run), *FAST_ARGS, *extra]) == 0
    return run


def _teacher_10_classes(tmp: Path) -> dict:
    return {"teacher": str(_finished_run(tmp, "--set", "peers=[small_cnn]"))}


def _corrupt_image_folder(tmp: Path) -> dict:
    from PIL import Image

    root = tmp / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / cls / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return {"root": str(root), "bad": str(root / "a" / "broken.png")}


def _checkpoint_of_another_arch(tmp: Path) -> dict:
    """A run configured with mlp peers whose checkpoints come from a small_cnn run."""
    donor = _finished_run(tmp)
    run = tmp / "mixed"
    assert main(["train", "--out", str(run), *FAST_ARGS, "--set", "peers=[mlp,mlp]"]) == 0
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(donor / "checkpoints", run / "checkpoints")
    (run / "summary.json").unlink()
    return {"run": str(run)}


def _corrupt_checkpoint(tmp: Path) -> dict:
    run = _finished_run(tmp)
    for path in (run / "checkpoints").glob("epoch_*.pt"):  # last.pt is a hard link to one
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return {"run": str(run)}


def _file_in_the_way(tmp: Path) -> dict:
    blocker = tmp / "a-file"
    blocker.write_text("x")
    return {"out": str(blocker / "run")}


def _run_with_config(tmp: Path) -> dict:
    return {"run": str(_finished_run(tmp))}


def _empty_dir(tmp: Path) -> dict:
    (tmp / "empty").mkdir()
    return {"run": str(tmp / "empty")}


def _foreign_folder(tmp: Path) -> dict:
    """A folder that is not a dmlkit run but holds files named like a run's."""
    other = tmp / "other"
    other.mkdir()
    for name in ("summary.json", "env.json", "metrics.jsonl"):
        (other / name).write_text("{}\n")
    return {"out": str(other)}


CASES = [
    (
        "unknown-key",
        _nothing,
        ["--set", "method.temprature=2"],
        "did you mean 'method.temperature'",
    ),
    ("unknown-top-key", _nothing, ["--set", "epochs=3"], "unknown config key 'epochs'"),
    ("wrong-type", _nothing, ["--set", "train.epochs=ten"], "train.epochs: expected int"),
    ("bool-for-int", _nothing, ["--set", "train.epochs=true"], "train.epochs: expected int"),
    ("negative-lr", _nothing, ["--set", "optim.lr=-1"], "optim.lr must be > 0"),
    ("k-zero", _nothing, ["--set", "peers=[]"], "at least 1 peer"),
    (
        "unknown-model",
        _nothing,
        ["--set", "peers.1.arch=resnet9000"],
        "peers.1.arch: unknown model",
    ),
    ("unknown-dataset", _nothing, ["--set", "data.name=cifar10"], "data.name: unknown dataset"),
    ("unknown-method", _nothing, ["--set", "method.name=dmll"], "method.name: unknown method"),
    ("bad-choice", _nothing, ["--set", "method.update=parallel"], "method.update: must be one of"),
    (
        "labelled-fraction",
        _nothing,
        ["--set", "data.labelled_fraction=1.5"],
        "data.labelled_fraction must be in (0, 1]",
    ),
    ("bad-set-syntax", _nothing, ["--set", "train.epochs"], "expected KEY=VALUE"),
    ("bad-model-kwarg", _nothing, ["--set", "peers.0.kwargs.depth=3"], "'depth'"),
    (
        "missing-config",
        _nothing,
        ["-c", "/nonexistent/dml.yaml"],
        "config file not found: /nonexistent/dml.yaml",
    ),
    ("broken-yaml", _yaml("method: {name: dml\n"), ["-c", "{cfg}"], "not valid YAML"),
    ("yaml-not-mapping", _yaml("- 1\n- 2\n"), ["-c", "{cfg}"], "must be a mapping"),
    (
        "imagefolder-no-root",
        _nothing,
        ["--set", "data.name=imagefolder"],
        "imagefolder needs the folder",
    ),
    (
        "imagefolder-missing-root",
        _nothing,
        ["--set", "data.name=imagefolder", "--set", "data.root=/nonexistent/imgs"],
        "/nonexistent/imgs is not a folder",
    ),
    (
        "corrupt-image",
        _corrupt_image_folder,
        [
            "--set",
            "data.name=imagefolder",
            "--set",
            "data.root={root}",
            "--set",
            "data.image_size=8",
        ],
        "{bad}: cannot decode",
    ),
    (
        "kd-missing-teacher",
        _nothing,
        ["--set", "method.name=kd", "--set", "method.teacher=/nonexistent/teacher"],
        "/nonexistent/teacher",
    ),
    ("kd-no-teacher", _nothing, ["--set", "method.name=kd"], "kd needs the run directory"),
    (
        "unknown-optimizer",
        _nothing,
        ["--set", "optim.name=AdamX"],
        "optim.name: 'AdamX' is not a torch.optim optimizer (did you mean 'Adamax'?)",
    ),
    (
        "arch-import-fails",
        _nothing,
        ["--set", "peers.0.arch=no_such_pkg.nets:build"],
        "peers.0.arch: cannot import 'no_such_pkg.nets'",
    ),
    ("cuda-unavailable", _nothing, ["--set", "train.device=cuda"], "CUDA is not available"),
    (
        "out-is-inside-a-file",
        _file_in_the_way,
        ["--out", "{out}"],
        "cannot write the run directory",
    ),
    ("out-holds-a-run", _run_with_config, ["--out", "{run}"], "already holds a run"),
    ("out-not-a-run", _foreign_folder, ["--out", "{out}"], "is not empty and holds no dmlkit run"),
    ("resume-nothing", _empty_dir, ["--resume", "{run}"], "no run there"),
    (
        "resume-changed-config",
        _run_with_config,
        ["--resume", "{run}", "--set", "optim.lr=0.3"],
        "the config differs from the run's in optim.lr",
    ),
    (
        "checkpoint-of-another-arch",
        _checkpoint_of_another_arch,
        ["--resume", "{run}"],
        "the config has [('peer0_mlp', 'mlp'), ('peer1_mlp', 'mlp')]",
    ),
]


# A "billion laughs": nine levels of ten aliases each, 10**9 values from a few hundred bytes.
_LAUGHS = ["&a [x, x, x, x, x, x, x, x, x, x]"] + [
    f"&{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi")
]
_BOMB_FILE = (
    "anchors:\n"
    + "".join(f"  - {level}\n" for level in _LAUGHS)
    + "peers:\n  - {arch: small_cnn, kwargs: {width: *i}}\n"
)


def _big_yaml(tmp: Path) -> dict:
    path = tmp / "big.yaml"
    path.write_text("# padding\n" * 200_000)  # 2 MB of comments
    return {"cfg": str(path)}


CASES += [
    ("yaml-alias-bomb", _yaml(_BOMB_FILE), ["-c", "{cfg}"], "expand to more than 100000 values"),
    (
        "set-alias-bomb",
        _nothing,
        ["--set", f"peers.0.kwargs.width=[{', '.join(_LAUGHS)}]"],
        "--set peers.0.kwargs.width: its aliases (*name) expand to more than",
    ),
    ("yaml-too-big", _big_yaml, ["-c", "{cfg}"], "a config file is at most 1048576"),
    (
        "yaml-too-deep",
        _yaml("train: " + "[" * 500 + "]" * 500 + "\n"),
        ["-c", "{cfg}"],
        "nested more than 20 levels deep",
    ),
    (
        "yaml-duplicate-key",
        _yaml("train:\n  epochs: 1\n  epochs: 2\n"),
        ["-c", "{cfg}"],
        "key 'epochs' appears twice in one mapping (line 3)",
    ),
    (
        "long-value-in-message",
        _nothing,
        ["--set", "method.update=" + "x" * 100_000],
        "method.update: must be one of",
    ),
    ("seed-too-big", _nothing, ["--set", "seed=100000000000000000000"], "seed must be in [0, "),
    (
        "split-seed-negative",
        _nothing,
        ["--set", "data.split_seed=-1"],
        "data.split_seed must be in [0, ",
    ),
    ("device-typo", _nothing, ["--set", "train.device=cudax"], "train.device must be auto, cpu"),
    ("device-mps", _nothing, ["--set", "train.device=mps"], "MPS (Apple GPU) is not available"),
    (
        "crop-padding-huge",
        _nothing,
        ["--set", "data.crop_padding=1000000"],
        "data.crop_padding must be in [0, 128]",
    ),
    ("image-size-1", _nothing, ["--set", "data.image_size=1"], "data.image_size must be in [4,"),
    (
        "image-size-huge",
        _nothing,
        ["--set", "data.image_size=100000"],
        "data.image_size must be in [4, 4096]",
    ),
    ("lr-inf", _nothing, ["--set", "optim.lr=.inf"], "optim.lr: expected a finite number, got inf"),
    (
        "checkpoint-every-steps-negative",
        _nothing,
        ["--set", "train.checkpoint_every_steps=-1"],
        "train.checkpoint_every_steps must be >= 0 (0: at epoch ends only), got -1",
    ),
    (
        "member-views-for-dml",
        _nothing,
        ["--set", "method.member_views=true"],
        "only kdcl and pcl take one view per member); set method.member_views=false",
    ),
    (
        "rampup-shape-typo",
        _nothing,
        ["--set", "method.rampup_shape=cubic"],
        "method.rampup_shape: must be one of 'linear', 'sigmoid', got 'cubic'",
    ),
    (
        "newline-in-file-name",
        _nothing,
        ["-c", "/nonexistent/a\nb.yaml"],
        "config file not found: /nonexistent/a\\nb.yaml",
    ),
]


CASES.append(
    (
        "resnet-shortcut-typo",
        _nothing,
        ["--set", "peers.0.arch=resnet32", "--set", "peers.0.kwargs.shortcut=B"],
        "peers[].kwargs.shortcut must be 'pad'",
    )
)


CASES += [
    ("test-every-negative", _nothing, ["--set", "train.test_every=-1"], "train.test_every must"),
    (
        "dml-mean-logits-sequential",
        _nothing,
        ["--set", "method.name=dml_mean_logits", "--set", "method.update=sequential"],
        "dml_mean_logits steps every peer against one forward pass; set method.update=simultaneous",
    ),
    (
        "dml-mean-logits-one-peer",
        _nothing,
        ["--set", "method.name=dml_mean_logits", "--set", "peers=[small_cnn]"],
        "dml_mean_logits needs at least 2 peers",
    ),
]


def _kd_mismatch_setup(tmp: Path) -> dict:
    """A 10-class digits teacher for a student on a 2-class image folder."""
    names = _teacher_10_classes(tmp)
    names.update(_corrupt_image_folder(tmp))
    Path(names["bad"]).unlink()
    return names


CASES.append(
    (
        "kd-class-mismatch",
        _kd_mismatch_setup,
        [
            "--set",
            "method.name=kd",
            "--set",
            "method.teacher={teacher}",
            "--set",
            "data.name=imagefolder",
            "--set",
            "data.root={root}",
            "--set",
            "data.image_size=8",
            "--set",
            "data.train_size=null",
        ],
        "predicts 10 classes but the data has 2",
    )
)


def _snapshot(tmp: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in tmp.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("setup", "argv", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_train_input(tmp_path, capsys, setup, argv, needle):
    names = setup(tmp_path)
    capsys.readouterr()
    argv = [a.format(**names) for a in argv]
    out = [] if any(a in ("--out", "--resume") for a in argv) else ["--out", str(tmp_path / "new")]
    before = _snapshot(tmp_path)
    code = main(["train", *out, *FAST_ARGS, *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("dml: warning:")]
    assert len(lines) == 1 and lines[0].startswith("dml: error: "), err
    assert needle.format(**names) in lines[0]
    assert len(lines[0]) < 600  # never an unbounded value in a message
    assert "Traceback" not in err
    after = _snapshot(tmp_path)
    assert after == before  # nothing written, nothing changed
    assert not (tmp_path / "new").exists()


def test_eval_of_a_corrupted_run(tmp_path, capsys):
    names = _corrupt_checkpoint(tmp_path)
    capsys.readouterr()
    assert main(["eval", names["run"]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checksum mismatch" in err


def test_eval_of_something_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_reproduce_bad_arguments(tmp_path, capsys):
    assert main(["reproduce", "digits", "--seeds", "0", "--out", str(tmp_path / "g")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["reproduce", "digitz", "--out", str(tmp_path / "g")]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_crafted_teacher_checkpoint_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "teacher.pt"
    torch.save({"format": "dmlkit-cohort", "x": Evil()}, evil)
    code = main(
        [
            "train",
            "--out",
            str(tmp_path / "s"),
            *FAST_ARGS,
            "--set",
            "method.name=kd",
            "--set",
            f"method.teacher={evil}",
        ]
    )
    assert code == 2 and not marker.exists()
    assert "not a readable dmlkit checkpoint" in capsys.readouterr().err


def test_every_case_is_in_the_docs_table():
    doc = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    rows = {line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")}
    assert {c[0] for c in CASES} <= rows
    assert len(CASES) >= 20
