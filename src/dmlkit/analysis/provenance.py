"""The setup and provenance of a ``dml report`` page: the commands, the shared config and what
differs between the arms, the machine and software, the timing, and every run."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dmlkit.analysis.runs import IGNORED_KEYS, RunInfo, SeedGroup, flatten_config
from dmlkit.analysis.stats import MISSING
from dmlkit.engine.evaluation import ENSEMBLE
from dmlkit.machine import cpu_name

# Always shown in the config summary (other keys only when they differ from the defaults).
_CORE_KEYS = (
    "method.name",
    "method.update",
    "method.temperature",
    "method.mimicry_weight",
    "method.mimicry_rampup",
    "peers",
    "optim.name",
    "optim.lr",
    "optim.weight_decay",
    "optim.schedule",
    "data.name",
    "data.train_size",
    "data.batch_size",
    "train.epochs",
)


def config_section(groups: list[SeedGroup]) -> str:
    """The config every run shares (the main keys and any changed default), then the arms."""
    from dmlkit.config import Config

    defaults = flatten_config(Config().to_dict())
    flats = [r.flat for g in groups for r in g.runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    shared = {
        k: flats[0].get(k)
        for k in keys
        if k not in IGNORED_KEYS and all(f.get(k) == flats[0].get(k) for f in flats)
    }
    shown = {k: v for k, v in shared.items() if k in _CORE_KEYS or defaults.get(k) != v}
    rows = [f"| `{k}` | {_fmt(v)} |" for k, v in shown.items()]
    lines = [
        "Shared by every run (the main keys, and every other key changed from its default; "
        "each run's full config is its `config.yaml`):",
        "",
        "| key | value |",
        "|---|---|",
        *rows,
    ]
    varying = [k for k in keys if k not in shared and k not in IGNORED_KEYS]
    if varying:
        lines += ["", "What differs between the arms:", ""]
        lines += ["| arm | runs | seeds | " + " | ".join(f"`{k}`" for k in varying) + " |"]
        lines += ["|---|---|---|" + "---|" * len(varying)]
        for g in groups:
            seeds = ", ".join(str(s) for s in sorted(g.by_seed()))
            cells = [_fmt(g.runs[0].flat.get(k)) for k in varying]
            lines.append(f"| {g.label} | {len(g.runs)} | {seeds} | " + " | ".join(cells) + " |")
    else:
        seeds = sorted({r.seed for g in groups for r in g.runs})
        lines += ["", f"Seeds: {', '.join(map(str, seeds))}."]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    return str(v)


def environment_section(runs: list[RunInfo]) -> str:
    keys = (
        "dmlkit",
        "git_commit",
        "python",
        "torch",
        "torchvision",
        "platform",
        "machine",
        "cpu_count",
        "torch_threads",
        "device",
        "gpu",
        "cuda",
    )
    lines = ["| | value (from the runs' env.json) |", "|---|---|"]
    for k in keys:
        vals = list(dict.fromkeys(str(r.env[k]) for r in runs if k in r.env))
        if vals:
            lines.append(f"| {k} | {'; '.join(vals)} |")
    cpu = cpu_name()
    if cpu:
        lines.append(f"| CPU of the machine that wrote this page | {cpu} |")
    return "\n".join(lines)


def timing_section(runs: list[RunInfo], analysis_seconds: float | None) -> str:
    starts = [r.started for r in runs if r.started is not None]
    ends = [r.finished for r in runs if r.finished is not None]
    lines = []
    train = sum(r.train_seconds for r in runs)
    lines.append(
        f"- Training: {len(runs)} runs, {train:.0f} s of logged epoch time in total "
        f"({train / max(len(runs), 1):.1f} s per run)."
    )
    if starts and ends:
        span = max(ends) - min(starts)
        first = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(min(starts)))
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(ends)))
        lines.append(
            f"- Wall clock from the first run's start ({first}) to the last run's end ({last}): "
            f"{span:.0f} s ({span / 60:.1f} min)."
        )
    if analysis_seconds is not None:
        lines.append(f"- `dml analyze` of these runs: {analysis_seconds:.0f} s.")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()
        lines.append(
            f"- Load average when this page was written: {load[0]:.2f} / {load[1]:.2f} / "
            f"{load[2]:.2f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs: a load above the CPU "
            f"count means other work shared the machine and the times above are inflated."
        )
    return "\n".join(lines)


def commands_section(runs: list[RunInfo], extra: Sequence[str]) -> str:
    cmds = []
    for r in runs:
        argv = r.env.get("argv")
        if argv:
            cmds.append(_command(argv))
    cmds = list(dict.fromkeys(cmds))
    cmds += [c for c in extra if c not in cmds]
    return "```bash\n" + "\n".join(cmds) + "\n```" if cmds else "(no command recorded)"


def _command(argv: Sequence[str]) -> str:
    argv = list(argv)
    if argv and Path(argv[0]).name == "dml":
        argv[0] = "dml"
    elif argv and argv[0].endswith(".py"):
        argv.insert(0, "python")
    return shlex.join(argv)


def runs_section(runs: list[RunInfo], base: Path) -> str:
    lines = ["| run | label | seed | test top-1 % per peer | ensemble |", "|---|---|---|---|---|"]
    for r in runs:
        if r.summary is None:
            peers, ens = "(not finished)", MISSING
        else:
            peers = (
                ", ".join(
                    f"{r.metric(m, 'top1'):.2f}"
                    for m in r.members[:-1]
                    if r.metric(m, "top1") is not None
                )
                or MISSING
            )
            ens_v = r.metric(ENSEMBLE, "top1")
            ens = f"{ens_v:.2f}" if ens_v is not None else MISSING
        lines.append(f"| `{rel_path(r.path, base)}` | {r.label} | {r.seed} | {peers} | {ens} |")
    return "\n".join(lines)


def rel_path(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return str(path)
