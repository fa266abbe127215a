"""``dml grid``: a user's own paired comparison, built into an :class:`Experiment`.

``--arm NAME:KEY=VALUE [KEY=VALUE ...]`` names an arm by its config changes; ``--sweep
[ARM[,ARM]:]KEY=V1,V2,...`` (repeatable: the product of all) runs every arm (or the arms named)
at every value. The grid is an ordinary :class:`~dmlkit.experiments.core.Experiment` whose arms
are ``<point>/<arm>`` (just ``<arm>`` for an arm no sweep applies to), so it runs, resumes, is
launched and locked exactly as ``dml reproduce``'s grids; its report compares every arm with
the baseline (the first ``--arm`` unless ``--baseline``) at each sweep point (an unswept
baseline is the same runs at every point), paired by seed, with 95 % t-intervals.
"""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path
from typing import Any

from dmlkit.analysis import stats
from dmlkit.config import Config, apply_override, build_config, merge_dicts
from dmlkit.errors import ConfigError, UserError, shown
from dmlkit.experiments.core import (
    Experiment,
    RunResult,
    comparison_rows,
    write_results_files,
)


def paired_interval(diffs: list[float]) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its 95 % interval.

    The one place ``dml grid`` takes its statistics from (:mod:`dmlkit.analysis.stats`).
    """
    return stats.ci95(diffs)


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``NAME:KEY=VALUE [KEY=VALUE ...]`` -> (name, assignments); one line when malformed."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    try:
        assignments = shlex.split(rest)
    except ValueError as exc:
        raise UserError(f"--arm {shown(text)}: {exc} (quote values with spaces)") from None
    bad_name = not name or any(c in name for c in "/\\=,") or name.startswith(".")
    if not sep or bad_name or not assignments or not all("=" in a for a in assignments):
        raise UserError(
            f"--arm {shown(text)}: expected NAME:KEY=VALUE [KEY=VALUE ...], e.g. "
            f"--arm dml:method.name=dml (NAME without / = , and not starting with .)"
        )
    return name, assignments


def _split_values(raw: str) -> list[str]:
    """``0.5,1,[2,3]`` -> ``["0.5", "1", "[2,3]"]``: commas inside brackets stay."""
    values, depth, cur = [], 0, ""
    for ch in raw:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    values.append(cur.strip())
    return values


def parse_sweep(text: str) -> tuple[str, list[str], list[str] | None]:
    """``[ARM[,ARM]:]KEY=V1,V2,...`` -> (key, values, arms or None for every arm).

    One line when malformed or a value repeats.
    """
    head, sep, raw = text.partition("=")
    only, colon, key = head.rpartition(":")
    key = key.strip()
    arms = [a.strip() for a in only.split(",")] if colon else None
    values = _split_values(raw) if sep else []
    bad_arms = arms is not None and not all(arms)
    if not key or not values or any(v == "" for v in values) or " " in key or bad_arms:
        raise UserError(
            f"--sweep {shown(text)}: expected [ARM:]KEY=VALUE,VALUE,..., e.g. "
            f"--sweep method.mimicry_weight=0.5,1,2 or --sweep dml:method.mimicry_weight=0.5,1,2"
        )
    if len(set(values)) != len(values):
        raise UserError(f"--sweep {shown(text)}: a value is given twice")
    return key, values, arms


def _point_name(point: list[tuple[str, str]]) -> str:
    """A sweep point as a folder name: ``mimicry_weight=0.5,temperature=2``."""
    return ",".join(f"{key.split('.')[-1]}={value}".replace("/", "_") for key, value in point)


def _key(assignment: str) -> str:
    return assignment.split("=", 1)[0].strip()


def _apply(data: dict[str, Any], assignment: str, where: str) -> dict[str, Any]:
    try:
        return apply_override(data, assignment)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _culprit(message: str, arm: str, assignments: list[str], point: tuple[Any, ...]) -> str:
    """Which flag a config error comes from: the one whose key the message names."""
    for a in assignments:
        if _key(a) in message:
            return f"--arm {arm}"
    for key, value in point:
        if key in message:
            return f"--sweep {key} (at {value})"
    return f"--arm {arm} with the config file and --set"


def build_grid(
    base: dict[str, Any],
    arms: list[str],
    sweeps: list[str],
    *,
    seeds: int,
    baseline: str | None = None,
    overrides: list[str] | None = None,
    name: str = "grid",
) -> Experiment:
    """The Experiment of ``dml grid``: every arm at every sweep point, ``seeds`` seeds.

    Args:
        base: the user's config file as a dict (may be empty: the defaults).
        arms: ``--arm`` texts (two or more).
        sweeps: ``--sweep`` texts.
        seeds: seeds per cell.
        baseline: the arm the others are compared with (default: the first).
        overrides: ``--set`` assignments, applied to every run; setting a key an arm or a
            sweep sets is a conflict, refused.
        name: what the results' title calls it.

    Raises:
        UserError: malformed ``--arm`` / ``--sweep``, an unknown key or a bad value (checked by
            building every arm's config at every point), a conflict, fewer than two arms.
    """
    parsed = [parse_arm(a) for a in arms]
    names = [n for n, _ in parsed]
    if len(parsed) < 2:
        raise UserError("dml grid needs two or more --arm to compare (e.g. an independent one)")
    if len(set(names)) != len(names):
        raise UserError(f"--arm: the name {next(n for n in names if names.count(n) > 1)!r} twice")
    baseline = baseline or names[0]
    if baseline not in names:
        raise UserError(f"--baseline {shown(baseline)}: no such --arm; arms: {', '.join(names)}")
    swept = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _, _ in swept]
    if len(set(keys)) != len(keys):
        raise UserError(f"--sweep: the key {next(k for k in keys if keys.count(k) > 1)} twice")
    for key, _, only in swept:
        unknown = [a for a in only or [] if a not in names]
        if unknown:
            raise UserError(
                f"--sweep {unknown[0]}:{key}: no --arm {unknown[0]}; arms: {', '.join(names)}"
            )
    # the sweeps each arm runs at (all, unless a sweep names its arms)
    own = {n: [(k, vs) for k, vs, only in swept if only is None or n in only] for n in names}
    set_keys = {_key(a) for a in overrides or []}
    for arm, assignments in parsed:
        clash = set_keys & ({_key(a) for a in assignments} | {k for k, _ in own[arm]})
        if clash:
            raise UserError(
                f"--set {sorted(clash)[0]} conflicts with --arm {arm} / --sweep, which set it "
                f"too; set it in one place"
            )
        for key, _ in own[arm]:
            if any(key == _key(a) for a in assignments):
                raise UserError(f"--sweep {key}: --arm {arm} sets {key} too; set it in one place")
    full = merge_dicts(Config().to_dict(), base)
    exp_arms: dict[str, dict[str, Any]] = {}
    n_points = 1
    for arm, assignments in parsed:
        points = list(itertools.product(*[[(k, v) for v in vs] for k, vs in own[arm]]))
        n_points = max(n_points, len(points))
        for point in points:
            prefix = _point_name(list(point)) + "/" if point else ""
            data = full
            for a in assignments:
                data = _apply(data, a, f"--arm {arm}")
            for key, value in point:
                data = _apply(data, f"{key}={value}", f"--sweep {key}")
            try:
                build_config(data, overrides=overrides or ())  # unknown keys, bad values
            except ConfigError as exc:
                raise ConfigError(f"{_culprit(str(exc), arm, assignments, point)}: {exc}") from None
            exp_arms[prefix + arm] = data
    return Experiment(
        name=name,
        description=f"{', '.join(names)} (baseline {baseline})"
        + (f" at {n_points} sweep points" if swept else ""),
        base={},
        arms=exp_arms,
        baseline=baseline,
        seeds=seeds,
        report=grid_report,
        notes=[f"arm {n}: {' '.join(a)}" for n, a in parsed] + [f"sweep {s}" for s in sweeps],
    )


def _sections(exp: Experiment) -> dict[str, dict[str, str]]:
    """Sweep point -> {arm name: the grid arm compared there}, arms in their --arm order.

    An arm no sweep applies to (``--sweep OTHER:KEY=...``) is one run set, in every section.
    """
    names = list(dict.fromkeys(arm.rpartition("/")[2] for arm in exp.arms))
    points = list(dict.fromkeys(arm.rpartition("/")[0] for arm in exp.arms if "/" in arm))
    sections: dict[str, dict[str, str]] = {}
    for point in points or [""]:
        shown_ = {}
        for n in names:
            for grid_arm in (f"{point}/{n}" if point else n, n):
                if grid_arm in exp.arms:
                    shown_[n] = grid_arm
                    break
        sections[point] = shown_
    return sections


def grid_report(exp: Experiment, results: list[RunResult], out: Path, scale: float) -> str:
    """Per sweep point: test top-1 per arm (mean ± std) and each arm's paired gain over the
    baseline with its 95 % interval; results.md and results.csv (every per-seed value)."""
    seeds = sorted({r.seed for r in results})
    lines = [
        f"Test top-1 % over {len(seeds)} seed(s), mean ± std; gain = arm − {exp.baseline}, "
        f"paired by seed, mean ± half-width of its 95 % t-interval.",
    ]
    csv_rows: dict[tuple[str, str, str, int], list[Any]] = {}
    for point, shown_ in _sections(exp).items():
        arms = list(shown_)
        sub = Experiment(
            name=exp.name, description="", base={}, arms={a: {} for a in arms},
            baseline=exp.baseline,
        )  # fmt: skip
        back = {grid_arm: a for a, grid_arm in shown_.items()}
        mine = [RunResult(back[r.arm], r.seed, r.path, r.summary) for r in results if r.arm in back]
        rows = comparison_rows(sub, mine)
        others = [a for a in arms if a != exp.baseline]
        head = ["peer", *arms, *[f"gain {a} (95 % interval)" for a in others]]
        if point:
            lines += ["", f"### {point}"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = [row["peer"], *[stats.mean_std(row[a]) for a in arms]]
            for a in others:
                diffs = row[f"gain_{a}"]
                if not diffs:
                    cells.append(stats.MISSING)
                    continue
                mean, half = paired_interval(diffs)
                cells.append(f"{mean:+.2f} ± {half:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
            for a in arms:
                where = shown_[a].rpartition("/")[0]  # "" for an arm no sweep applies to
                for seed, v in zip(seeds, row[a], strict=False):
                    csv_rows[(where, row["peer"], a, seed)] = [
                        where, row["peer"], row["arch"], a, seed, f"{v:.4f}"
                    ]  # fmt: skip
    text = "\n".join(lines)
    if scale != 1.0:
        text = f"Smoke run at --scale {scale:g} (epochs and data x {scale:g}).\n\n{text}"
    header = ["point", "peer", "arch", "arm", "seed", "top1_percent"]
    write_results_files(exp, out, text, header, list(csv_rows.values()))
    return text
