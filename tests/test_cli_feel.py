"""The command line's feel: no heavy import before it is needed, --version, --no-progress,
bars that switch themselves off, plurals, no top-5 column for a few classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dmlkit import __version__
from dmlkit.cli import main
from dmlkit.cli.summary import print_summary, run_line
from dmlkit.cli.use import BUILTIN_NAMES, registered_names

from helpers import FAST, sets

HEAVY = ("torch", "torchvision", "matplotlib", "sklearn")


def _heavy_imports(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return its exit status and the heavy modules loaded.

    OMP_NUM_THREADS is set explicitly so the result never depends on the machine's defaults.
    """
    probe = (
        "import sys, json\n"
        f"{code}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**_env(), "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}


def _env() -> dict:
    return dict(os.environ)


def _last_json(out: str) -> list:
    return json.loads(out.strip().splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_module():
    done = _heavy_imports("import dmlkit.cli")
    assert done["rc"] == 0, done["err"]
    assert _last_json(done["out"]) == []


@pytest.mark.parametrize(
    "argv, rc",
    [
        (["list"], 0),
        (["train", "--set", "train.epochs=x"], 2),  # a config error
        (["train", "--set", "data.nope=1"], 2),
    ],
)
def test_list_and_config_errors_import_no_heavy_module(argv, rc):
    done = _heavy_imports(f"from dmlkit.cli import main\nstatus = main({argv!r})")
    assert done["rc"] == 0, done["err"]
    assert _last_json(done["out"]) == []
    if rc == 2:
        assert done["err"].startswith("dml: error: ")


def test_builtin_names_are_the_registries():
    import dmlkit.data  # noqa: F401  (importing fills the registries)
    import dmlkit.experiments  # noqa: F401
    import dmlkit.methods  # noqa: F401
    import dmlkit.models  # noqa: F401

    for kind in BUILTIN_NAMES:
        table = sorted(BUILTIN_NAMES[kind].split())
        assert registered_names(kind) == table, (
            f"dmlkit.cli.use.BUILTIN_NAMES[{kind!r}] differs from the registry: "
            f"add or remove names there"
        )


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"dml (dmlkit) {__version__}"


def test_every_command_takes_no_progress():
    for command in ("train", "eval", "reproduce", "analyze", "report", "list"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
    # and it is accepted, not just listed
    assert main(["list", "--no-progress"]) == 0


def test_bars_switch_off_when_output_is_not_a_terminal(tmp_path, capsys):
    # progress left on: stderr under capsys is not a terminal, so no bar may be drawn
    overrides = [o for o in FAST if o != "train.progress=false"]
    assert main(["train", "--out", str(tmp_path / "r"), *sets(*overrides)]) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err and "|" not in err, err


def test_summary_line_counts_in_words(capsys):
    s = {"epochs": 1, "method": "dml", "update": "sequential", "dataset": "digits"}
    assert run_line({**s, "device": "cpu"}) == "after 1 epoch (dml, sequential; digits; on cpu)"
    assert run_line({**s, "epochs": 3}).startswith("after 3 epochs (")


def _summary(num_classes: int) -> dict:
    m = {"top1": 0.5, "top5": 1.0, "ce": 1.0}
    return {
        "epochs": 2,
        "method": "dml",
        "update": None,
        "dataset": "imagefolder",
        "num_classes": num_classes,
        "peers": [{"name": "p0", "metrics": m}],
        "ensemble": {"metrics": m},
    }


def test_no_top5_for_five_classes_or_fewer(capsys):
    print_summary(_summary(3))
    out = capsys.readouterr().out
    assert "top-5" not in out and "100.00%" not in out
    print_summary(_summary(10))
    out = capsys.readouterr().out
    assert "top-1 / top-5" in out and "100.00%" in out


def test_train_summary_names_dataset_device_and_classes(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *sets(*FAST)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["device"] == "cpu"
    assert summary["classes"] == [str(d) for d in range(10)] and summary["num_classes"] == 10
    assert "after 1 epoch (dml" in capsys.readouterr().out
