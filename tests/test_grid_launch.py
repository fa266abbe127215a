"""Grids spread over processes (``--jobs``), Ray and Slurm (submitit), and ``dml grid``.

The end-to-end checks compare the files a launched grid writes with those of ``--jobs 1`` (one
process, one cell after another) byte for byte: on the CPU each cell is deterministic at a
given ``train.threads``, so the tables must not move by one digit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from dmlkit.cli import main
from dmlkit.engine.lock import FolderLock
from dmlkit.errors import ConfigError, UserError
from dmlkit.experiments import EXPERIMENTS, Experiment, LaunchOptions, run_experiment
from dmlkit.experiments import launch as L
from dmlkit.experiments import schedule as S
from dmlkit.experiments.cell import check_marker
from dmlkit.experiments.grid import build_grid, parse_arm, parse_sweep

from helpers import sets

# 200 training images, one epoch, one thread per cell (the same in every mode: the thread
# count changes a CPU run's last digits).
TINY = [
    "train.progress=false",
    "data.train_size=200",
    "train.epochs=1",
    "train.threads=1",
    "train.device=cpu",
]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("dml: error: ")
    return err[0]


# ------------------------------------------------------------------------------------------------
# the choices, without processes


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", ""])
def test_bad_jobs_is_refused_in_one_line(text):
    with pytest.raises(UserError, match=r"--jobs .*: give the number of cells"):
        L.parse_jobs(text)


def test_jobs_parses_counts_and_auto():
    assert L.parse_jobs("3") == 3 and L.parse_jobs(2) == 2 and L.parse_jobs("AUTO") == "auto"


def test_auto_jobs_one_per_gpu_else_one_per_core():
    assert L.auto_jobs(10, ["0", "1", "2"], cpus=64, threads="auto") == 3
    assert L.auto_jobs(2, ["0", "1", "2"], cpus=64, threads="auto") == 2  # never above cells
    assert L.auto_jobs(10, [], cpus=2, threads="auto") == 2  # a 2-core box: 2 x 1 thread
    assert L.auto_jobs(10, [], cpus=8, threads=4) == 2  # train.threads=4: 8 // 4
    assert L.auto_jobs(10, [], cpus=1, threads=4) == 1


def test_threads_split_between_jobs_unless_the_user_set_them():
    assert L.threads_per_cell("auto", 2, cpus=8, env={}) == 4
    assert L.threads_per_cell("auto", 3, cpus=2, env={}) == 1
    assert L.threads_per_cell(2, 2, cpus=8, env={}) is None  # train.threads set
    assert L.threads_per_cell("auto", 2, cpus=8, env={"OMP_NUM_THREADS": "3"}) is None


def test_visible_gpus_from_the_environment_or_the_count():
    assert L.visible_gpus(env={}, count=0) == []
    assert L.visible_gpus(env={}, count=3) == ["0", "1", "2"]
    assert L.visible_gpus(env={"CUDA_VISIBLE_DEVICES": "4,6"}, count=2) == ["4", "6"]
    assert L.visible_gpus(env={"CUDA_VISIBLE_DEVICES": "GPU-a, GPU-b"}, count=2) == [
        "GPU-a",
        "GPU-b",
    ]


def test_each_worker_gets_its_own_gpu_round_robin(tmp_path, monkeypatch):
    """A fake device list: worker slot k gets device k mod n, its threads cores // jobs."""
    started: list[dict[str, str]] = []

    class FakeWorker:
        def __init__(self, slot, env, log, gpu):
            self.slot, self.gpu, self.cell = slot, gpu, None
            started.append({"slot": slot, "gpu": env.get("CUDA_VISIBLE_DEVICES"), **env})

            class P:
                pid = 1

                def poll(self):
                    return None

            self.proc = P()

        def send(self, cell, spec):
            self.cell = cell

    monkeypatch.setattr(S, "_Worker", FakeWorker)
    monkeypatch.setattr(S, "usable_cpus", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    exp = EXPERIMENTS.get("digits")
    cells = L_cells(exp, tmp_path, ["train.device=auto"])
    backend = S._LocalBackend(tmp_path, 3, ["5", "7"], print)
    backend.submit(cells[:3])
    assert [w["gpu"] for w in started] == ["5", "7", "5"]
    assert all(w["OMP_NUM_THREADS"] == "2" for w in started)  # 6 cores // 3 jobs
    # a cell whose device is cpu gets no GPU
    backend = S._LocalBackend(tmp_path, 2, ["5", "7"], print)
    started.clear()
    backend.submit(L_cells(exp, tmp_path, ["train.device=cpu"])[:2])
    assert [w["gpu"] for w in started] == [None, None]


def L_cells(exp: Experiment, out: Path, extra: list[str]):  # noqa: N802
    from dmlkit.experiments import plan_cells

    return plan_cells(exp, out, 2, [*TINY[:-2], *extra], 1.0)


def test_a_kd_student_waits_for_its_teacher_run():
    from dmlkit.experiments import plan_cells

    exp = Experiment(
        name="t",
        description="",
        base={},
        arms={
            "teacher": {"method": {"name": "independent"}},
            "student": {"method": {"name": "kd", "teacher": "{run:teacher}"}},
        },
    )
    cells = plan_cells(exp, Path("grid"), 2, [], 1.0)
    assert [(c.arm, c.seed, c.needs) for c in cells] == [
        ("teacher", 0, ()),
        ("student", 0, (("teacher", 0),)),
        ("teacher", 1, ()),
        ("student", 1, (("teacher", 1),)),
    ]
    # --arms student alone: the teacher's run is read from disk, nothing to wait for
    alone = dataclasses.replace(exp, arms={"student": exp.arms["student"]})
    assert [c.needs for c in plan_cells(alone, Path("grid"), 2, [], 1.0)] == [(), ()]


def test_obviously_local_paths():
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "nfs:/home /home nfs4 rw 0 0\n"
        "tmpfs /scratch/ram tmpfs rw 0 0\n"
        "lustre@o2ib:/fs /lustre lustre rw 0 0\n"
    )
    assert L.obviously_local(Path("/tmp/grid"), mounts)
    assert L.obviously_local(Path("/dev/shm/x"), mounts)
    assert L.obviously_local(Path("/scratch/ram/grid"), mounts)
    assert not L.obviously_local(Path("/home/me/grid"), mounts)
    assert not L.obviously_local(Path("/lustre/me/grid"), mounts)
    assert not L.obviously_local(Path("/tmpfoo/grid"), mounts)  # a prefix, not a folder


def test_a_worker_that_cannot_read_the_marker_says_out_is_not_shared(tmp_path):
    marker = L.write_marker(tmp_path)
    check_marker(marker)  # the same filesystem: fine
    assert (tmp_path / L.MARKER_NAME).read_text().strip() == marker["token"]
    with pytest.raises(UserError, match=L.NOT_SHARED):
        check_marker({**marker, "token": "another command's"})
    (tmp_path / L.MARKER_NAME).unlink()
    with pytest.raises(UserError, match=rf"--out {tmp_path} {L.NOT_SHARED}"):
        check_marker(marker)


def test_a_slurm_grid_under_tmp_is_refused_before_anything_is_submitted(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = Path("/tmp") / f"dml-test-{os.getpid()}" / "grid"
    code = main(
        ["reproduce", "digits", "--seeds", "1", "--out", str(out), "--launcher", "slurm",
         *sets(*TINY)]
    )  # fmt: skip
    assert code == 2
    line = _one_error(capsys)
    assert L.NOT_SHARED in line and "Slurm nodes" in line
    assert not out.exists()  # nothing submitted, nothing written


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--jobs", "0"], "--jobs 0"),
        (["--jobs", "many"], "--jobs many: give the number"),
        (["--launcher", "kubernetes"], "choose one of local, ray, slurm"),
        (["--partition", "gpu"], "--partition and --time are for --launcher slurm"),
        (["--launcher", "slurm", "--cpus-per-cell", "0"], "--cpus-per-cell 0"),
    ],
)
def test_bad_launch_flags_fail_in_one_line_before_any_run(tmp_path, capsys, flags, words):
    out = tmp_path / "grid"
    assert main(["reproduce", "digits", "--out", str(out), *flags]) == 2
    assert words in _one_error(capsys)
    assert not out.exists()


def test_launcher_config_conflicting_with_a_flag(tmp_path, capsys):
    pytest.importorskip("submitit")
    cfg = tmp_path / "launch.yaml"
    cfg.write_text("slurm:\n  partition: gpu\n  time: 600\n")
    args = ["reproduce", "digits", "--out", str(tmp_path / "g"), "--launcher", "slurm"]
    assert main([*args, "--launcher-config", str(cfg), "--partition", "cpu"]) == 2
    assert "--partition cpu conflicts with partition: gpu" in _one_error(capsys)
    cfg.write_text("kubernetes: {}\n")
    assert main([*args, "--launcher-config", str(cfg)]) == 2
    assert "unknown block 'kubernetes'" in _one_error(capsys)


@pytest.mark.parametrize(
    ("launcher", "module", "extra"), [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")]
)
def test_a_launcher_without_its_package_names_the_extra(
    tmp_path, capsys, monkeypatch, launcher, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)  # import fails, as when not installed
    out = tmp_path / "grid"
    assert main(["reproduce", "digits", "--out", str(out), "--launcher", launcher]) == 2
    assert f"pip install 'dmlkit[{extra}]'" in _one_error(capsys)
    assert not out.exists()


def test_a_second_launched_command_on_one_grid_is_refused(tmp_path):
    grid = tmp_path / "grid"
    with FolderLock(grid, f"--out {grid}"), pytest.raises(UserError, match="in use by another"):
        run_experiment(
            EXPERIMENTS.get("digits"), grid, seeds=1, overrides=TINY, launch=LaunchOptions(jobs=2)
        )
    assert not (grid / "logs").exists()


# ------------------------------------------------------------------------------------------------
# dml grid: parsing and building


def test_arm_and_sweep_syntax():
    assert parse_arm("dml:method.name=dml method.temperature=2") == (
        "dml",
        ["method.name=dml", "method.temperature=2"],
    )
    assert parse_sweep("method.mimicry_weight=0.5,1,2") == (
        "method.mimicry_weight",
        ["0.5", "1", "2"],
        None,
    )
    assert parse_sweep("peers.*.kwargs.hidden=[16,16],[32]") == (
        "peers.*.kwargs.hidden",
        ["[16,16]", "[32]"],
        None,
    )
    assert parse_sweep("dml,dml_e:method.temperature=1,4") == (
        "method.temperature",
        ["1", "4"],
        ["dml", "dml_e"],
    )


@pytest.mark.parametrize(
    "arm", ["dml", "dml:", ":method.name=dml", "dml:method.name", "a/b:method.name=dml"]
)
def test_bad_arm_syntax(arm):
    with pytest.raises(UserError, match="expected NAME:KEY=VALUE"):
        parse_arm(arm)


@pytest.mark.parametrize(
    "sweep", ["method.mimicry_weight", "method.mimicry_weight=", "=1,2", "k=1,,2"]
)
def test_bad_sweep_syntax(sweep):
    with pytest.raises(UserError, match=r"expected \[ARM:\]KEY=VALUE,VALUE"):
        parse_sweep(sweep)


def test_grid_arms_at_every_sweep_point():
    exp = build_grid(
        {},
        ["independent:method.name=independent", "dml:method.name=dml"],
        ["method.mimicry_weight=0.5,2"],
        seeds=2,
    )
    assert list(exp.arms) == [
        "mimicry_weight=0.5/independent",
        "mimicry_weight=2/independent",
        "mimicry_weight=0.5/dml",
        "mimicry_weight=2/dml",
    ]
    assert exp.baseline == "independent"
    assert exp.arms["mimicry_weight=2/dml"]["method"]["mimicry_weight"] == 2
    assert exp.arms["mimicry_weight=2/dml"]["method"]["name"] == "dml"


def test_a_sweep_of_one_arm_leaves_the_baseline_one_set_of_runs():
    exp = build_grid(
        {},
        ["independent:method.name=independent", "dml:method.name=dml"],
        ["dml:method.mimicry_weight=0.5,2"],
        seeds=2,
    )
    assert list(exp.arms) == ["independent", "mimicry_weight=0.5/dml", "mimicry_weight=2/dml"]
    from dmlkit.experiments.grid import _sections

    assert _sections(exp) == {
        "mimicry_weight=0.5": {"independent": "independent", "dml": "mimicry_weight=0.5/dml"},
        "mimicry_weight=2": {"independent": "independent", "dml": "mimicry_weight=2/dml"},
    }
    with pytest.raises(UserError, match="--sweep dlm:method.mimicry_weight: no --arm dlm"):
        build_grid(
            {},
            ["independent:method.name=independent", "dml:method.name=dml"],
            ["dlm:method.mimicry_weight=0.5,2"],
            seeds=2,
        )


@pytest.mark.parametrize(
    ("arms", "sweeps", "sets_", "words"),
    [
        (["a:method.nme=dml", "b:method.name=dml"], [], [], "--arm a: "),
        (["a:method.name=independent", "b:method.name=dml"], ["method.mimicri_weight=1,2"], [],
         "--sweep method.mimicri_weight (at 1)"),
        (["a:method.name=independent", "b:method.name=dml"], ["method.mimicry_weight=1,-5"], [],
         "mimicry_weight"),
        (["a:method.name=independent"], [], [], "two or more --arm"),
        (["a:method.name=independent", "a:method.name=dml"], [], [], "the name 'a' twice"),
        (["a:method.name=independent", "b:method.name=dml"], [], ["method.name=dml"],
         "--set method.name conflicts"),
        (["a:method.name=independent", "b:method.mimicry_weight=2"], ["method.mimicry_weight=1,2"],
         [], "--arm b sets method.mimicry_weight too"),
    ],
)  # fmt: skip
def test_bad_grids_are_refused(arms, sweeps, sets_, words):
    with pytest.raises(UserError) as info:
        build_grid({}, arms, sweeps, seeds=1, overrides=sets_)
    assert words in str(info.value)


def test_unknown_key_in_an_arm_is_a_config_error_naming_the_arm():
    with pytest.raises(ConfigError, match="--arm b: .*method.mimicry_weight"):
        build_grid({}, ["a:method.name=dml", "b:method.mimicri_weight=2"], [], seeds=1)


def test_grid_cli_bad_arm_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["grid", "--arm", "independent", "--arm", "dml:method.name=dml",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "expected NAME:KEY=VALUE" in _one_error(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# end to end


def _files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("results.md", "results.csv")}


@pytest.mark.slow
def test_jobs_2_writes_the_same_files_as_jobs_1_and_resumes(tmp_path, capsys):
    base = ["reproduce", "digits", "--seeds", "2", "--no-progress", *sets(*TINY)]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*base, "--out", str(one)]) == 0
    assert main([*base, "--out", str(two), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "(4/4 done, 0 running, 0 failed)" in printed
    assert _files(one) == _files(two)
    for arm in ("independent", "dml"):
        for seed in (0, 1):
            assert (two / "logs" / arm / f"seed{seed}.log").is_file()
            a = json.loads((one / arm / f"seed{seed}" / "summary.json").read_text())
            b = json.loads((two / arm / f"seed{seed}" / "summary.json").read_text())
            assert a["peers"] == b["peers"]
    # an interrupted cell (no summary.json yet) is resumed, a finished one reused
    (two / "dml" / "seed1" / "summary.json").unlink()
    assert main([*base, "--out", str(two), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused finished run") == 3
    assert "[dml seed 1] started" in printed
    assert _files(one) == _files(two)


@pytest.mark.slow
def test_a_failed_cell_does_not_stop_the_others_and_is_named_with_its_log(tmp_path, capsys):
    """Arm ``bad`` points at image folders that do not exist: its cells fail, the others
    finish; the command exits 1 naming each failed cell and its log."""
    exp = Experiment(
        name="t",
        description="",
        base={},
        arms={
            "good": {"method": {"name": "independent"}},
            "bad": {"data": {"name": "imagefolder", "root": str(tmp_path / "missing")}},
        },
        seeds=1,
    )
    out = tmp_path / "grid"
    with pytest.raises(L.CellsFailed) as info:
        run_experiment(exp, out, seeds=2, overrides=TINY, launch=LaunchOptions(jobs=2))
    text = str(info.value)
    assert text.startswith("2 of 4 cells failed: ") and "bad seed 0 (dml: error: " in text
    assert str(out / "logs" / "bad" / "seed0.log") in text
    assert "missing" in (out / "logs" / "bad" / "seed0.log").read_text()
    for seed in (0, 1):
        assert (out / "good" / f"seed{seed}" / "summary.json").is_file()
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "(2/4 done, 0 running, 2 failed)" in printed


@pytest.mark.slow
def test_a_worker_killed_mid_cell_leaves_a_run_the_next_command_resumes(tmp_path, monkeypatch):
    """SIGKILL right after epoch 1's checkpoint (every cell, through the environment the
    workers inherit); the second command resumes each from that checkpoint and the table is
    the one an uninterrupted --jobs 1 grid writes."""
    two_epochs = [*TINY, "train.epochs=2"]
    exp = EXPERIMENTS.get("digits")
    clean = tmp_path / "clean"
    from dmlkit.experiments import comparison_report

    comparison_report(exp, run_experiment(exp, clean, seeds=1, overrides=two_epochs), clean, 1.0)
    out = tmp_path / "grid"
    monkeypatch.setenv("DMLKIT_FAULT", "kill-after-checkpoint@1")
    with pytest.raises(L.CellsFailed, match="killed \\(signal 9\\)"):
        run_experiment(exp, out, seeds=1, overrides=two_epochs, launch=LaunchOptions(jobs=2))
    assert (out / "dml" / "seed0" / "checkpoints" / "epoch_0001.pt").is_file()
    assert not (out / "dml" / "seed0" / "summary.json").exists()
    monkeypatch.delenv("DMLKIT_FAULT")
    results = run_experiment(exp, out, seeds=1, overrides=two_epochs, launch=LaunchOptions(jobs=2))
    comparison_report(exp, results, out, 1.0)
    assert _files(out) == _files(clean)
    log = (out / "logs" / "dml" / "seed0.log").read_text()
    assert log.count("--- ") == 2  # two attempts, one log


@pytest.mark.slow
def test_ray_local_instance_writes_the_same_table_as_jobs_1(tmp_path):
    ray = pytest.importorskip("ray")
    exp = EXPERIMENTS.get("digits")
    from dmlkit.experiments import comparison_report

    one, rayed = tmp_path / "one", tmp_path / "ray"
    comparison_report(exp, run_experiment(exp, one, seeds=2, overrides=TINY), one, 1.0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # a node that cannot read the command's token: refused before any cell
        real = L.write_marker
        with pytest.MonkeyPatch.context() as m:
            m.setattr(S, "write_marker", lambda out: {**real(out), "token": "another"})
            with pytest.raises(UserError, match=f"--out {rayed} {L.NOT_SHARED} the worker on"):
                run_experiment(
                    exp, rayed, seeds=2, overrides=TINY, launch=LaunchOptions(launcher="ray")
                )
        assert not list(rayed.glob("*/seed*")) and not (rayed / L.MARKER_NAME).exists()
        results = run_experiment(
            exp, rayed, seeds=2, overrides=TINY, launch=LaunchOptions(jobs=2, launcher="ray")
        )
    finally:
        ray.shutdown()
    comparison_report(exp, results, rayed, 1.0)
    assert _files(one) == _files(rayed)
    assert not (rayed / L.MARKER_NAME).exists()  # the shared-folder token is cleaned up
    assert (rayed / "logs" / "dml" / "seed1.log").is_file()


@pytest.mark.slow
def test_submitit_local_executor_writes_the_same_table_as_jobs_1(tmp_path):
    pytest.importorskip("submitit")
    exp = EXPERIMENTS.get("digits")
    from dmlkit.experiments import comparison_report

    one, slurm = tmp_path / "one", tmp_path / "slurm"
    comparison_report(exp, run_experiment(exp, one, seeds=1, overrides=TINY), one, 1.0)
    launch = LaunchOptions(jobs=2, launcher="slurm", slurm={"cluster": "local", "time": 30})
    results = run_experiment(exp, slurm, seeds=1, overrides=TINY, launch=launch)
    comparison_report(exp, results, slurm, 1.0)
    assert _files(one) == _files(slurm)
    assert list((slurm / "logs" / "slurm").glob("*_submitted.pkl"))  # it went through submitit


@pytest.mark.slow
def test_dml_grid_end_to_end_with_paired_intervals(tmp_path, capsys):
    from dmlkit.analysis.stats import ci95

    out = tmp_path / "g"
    args = [
        "grid", "--arm", "independent:method.name=independent", "--arm", "dml:method.name=dml",
        "--sweep", "method.mimicry_weight=0.5,2", "--seeds", "2", "--jobs", "2",
        "--out", str(out), "--no-progress", *sets(*TINY),
    ]  # fmt: skip
    assert main(args) == 0
    md = (out / "results.md").read_text()
    assert "### mimicry_weight=0.5" in md and "### mimicry_weight=2" in md
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "point,peer,arch,arm,seed,top1_percent"
    assert len(rows) == 1 + 2 * 3 * 2 * 2  # points x (2 peers + ensemble) x arms x seeds

    def top1(arm: str, seed: int) -> float:
        s = json.loads(
            (out / "mimicry_weight=2" / arm / f"seed{seed}" / "summary.json").read_text()
        )
        return 100 * s["ensemble"]["metrics"]["top1"]

    mean, half = ci95([top1("dml", s) - top1("independent", s) for s in (0, 1)])
    section = md.split("### mimicry_weight=2")[1]
    assert "| ensemble |" in section and f"{mean:+.2f} ± {half:.2f} |" in section
    cfg = (out / "mimicry_weight=2" / "dml" / "seed1" / "config.yaml").read_text()
    assert "mimicry_weight: 2" in cfg and "seed: 1" in cfg


def test_without_jobs_the_cli_uses_its_explicit_default(monkeypatch):
    from dmlkit.cli import grid as cli_grid
    from dmlkit.cli.app import _parser

    args = _parser().parse_args(["reproduce", "digits"])
    assert cli_grid.launch_options(args).jobs == cli_grid.DEFAULT_JOBS
    monkeypatch.setattr(cli_grid, "DEFAULT_JOBS", "auto")  # what the lead may flip it to
    assert cli_grid.launch_options(args).jobs == "auto"
    assert cli_grid.launch_options(_parser().parse_args(["grid", "--jobs", "3"])).jobs == 3
    # on a cluster, no cap of ours unless --jobs says so
    ray_args = _parser().parse_args(["reproduce", "digits", "--launcher", "ray"])
    assert cli_grid.launch_options(ray_args).jobs == "auto"


@pytest.mark.slow
def test_grid_jobs_benchmark_tiny(tmp_path):
    """benchmarks/grid_jobs.py end to end at a tiny size (its times are not checked)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    args = ["--grids", "digits", "--seeds", "1", "--rounds", "1", "--scale", "0.05"]
    args += ["--set", "train.threads=1", "--out", str(tmp_path / "out"), "--tag", "tiny"]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "grid_jobs.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "out" / "grid_jobs-tiny.json").read_text())
    assert set(payload["median"]["digits"]) == {"1", "2"}
    assert all(t > 0 for t in payload["median"]["digits"].values())
    # one thread in both variants: the two grids' results.csv are the same bytes
    assert payload["results_csv_equal"] == {"digits": {"2": True}}
    assert "| digits | 2 |" in (tmp_path / "out" / "grid_jobs-tiny.md").read_text()


class _FakeBackend(S.Backend):
    """Finishes each cell at its first poll (writing a summary), or fails the ones in ``bad``."""

    def __init__(self, capacity: int, bad: set[str]) -> None:
        self.capacity, self.bad, self.submitted, self.events = capacity, bad, [], []

    def submit(self, cells):
        self.submitted.append([c.name for c in cells])
        self.events += [f"start {c.name}" for c in cells]
        return cells

    def poll(self, cell):
        self.events.append(f"end {cell.name}")
        if cell.arm in self.bad:
            return False, "exit status 1"
        cell.path.mkdir(parents=True, exist_ok=True)
        summary = {"peers": [{"name": "p", "arch": "a", "metrics": {"top1": 0.5}}]}
        (cell.path / "summary.json").write_text(json.dumps(summary))
        return True, ""


def _kd_cells(out: Path):
    from dmlkit.experiments import plan_cells

    exp = Experiment(
        name="t",
        description="",
        base={},
        arms={
            "teacher": {"method": {"name": "independent"}},
            "student": {"method": {"name": "kd", "teacher": "{run:teacher}"}},
            "other": {"method": {"name": "dml"}},
        },
    )
    return plan_cells(exp, out, 2, [], 1.0)


def test_a_student_starts_only_after_its_teacher_finished(tmp_path, monkeypatch):
    fake = _FakeBackend(capacity=4, bad=set())
    monkeypatch.setattr(S, "_backend", lambda *a: fake)
    lines: list[str] = []
    done = S.run_cells(_kd_cells(tmp_path), tmp_path, LaunchOptions(jobs=4), lines.append)
    assert len(done) == 6
    # first wave: every cell without needs (capacity 4); the students after their teachers
    assert fake.submitted[0] == ["teacher seed 0", "other seed 0", "teacher seed 1", "other seed 1"]
    for seed in (0, 1):
        ev = fake.events
        assert ev.index(f"end teacher seed {seed}") < ev.index(f"start student seed {seed}")
    assert lines[-1].endswith("(6/6 done, 0 running, 0 failed)")


def test_a_failed_teacher_fails_its_student_without_starting_it(tmp_path, monkeypatch):
    fake = _FakeBackend(capacity=2, bad={"teacher"})
    monkeypatch.setattr(S, "_backend", lambda *a: fake)
    lines: list[str] = []
    with pytest.raises(L.CellsFailed) as info:
        S.run_cells(_kd_cells(tmp_path), tmp_path, LaunchOptions(jobs=2), lines.append)
    text = str(info.value)
    assert text.startswith("4 of 6 cells failed: ")
    assert "student seed 0 (not started: teacher seed 0 failed; log: " in text
    assert "teacher seed 1 (exit status 1; log: " in text
    assert not any("start student" in e for e in fake.events)
    assert "The 2 finished are kept" in text  # the `other` arm ran to its end


@pytest.mark.slow
def test_dml_grid_with_a_sweep_of_one_arm_shares_the_baseline_runs(tmp_path):
    out = tmp_path / "g"
    args = [
        "grid", "--arm", "independent:method.name=independent", "--arm", "dml:method.name=dml",
        "--sweep", "dml:method.mimicry_weight=0.5,2", "--seeds", "2", "--jobs", "2",
        "--out", str(out), "--no-progress", *sets(*TINY),
    ]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "independent", "logs", "mimicry_weight=0.5", "mimicry_weight=2"
    ]  # fmt: skip
    md = (out / "results.md").read_text()
    half, two = md.split("### mimicry_weight=0.5")[1].split("### mimicry_weight=2")
    # the same independent runs in both sections: the same mean ± std column

    def column(text: str) -> list[str]:
        return [x.split(" | ")[1] for x in text.splitlines() if x.startswith("| ")]

    assert column(half) == column(two) and len(column(half)) == 4  # header, 2 peers, ensemble
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2 + 2 * 3 * 2  # independent once, dml at 2 points
    assert sum(r.startswith(",") and ",independent," in r for r in rows) == 3 * 2


def test_a_worker_without_the_command_s_folder_says_so(tmp_path):
    from dmlkit.experiments.cell import execute_cell

    spec = {"cwd": str(tmp_path / "not-here"), "marker": None, "config": {}, "run": "", "desc": ""}
    with pytest.raises(UserError, match="not-here, does not exist on the worker on "):
        execute_cell(spec)
