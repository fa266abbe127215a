"""The figures of a ``dml bench`` run: the median of several rounds, the table, the page."""

from __future__ import annotations

from typing import Any


def median_round(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """One measurement repeated in several rounds -> the round with the median ``key``.

    The median round, not the best: the figure stays a typical one on a shared machine.
    ``round_<key>`` keeps every round's value for the record; rounds without ``key`` (failed)
    are left out of the choice, and if every round failed the first is returned as it is.
    """
    ok = sorted((r for r in runs if key in r), key=lambda r: r[key])
    if not ok:
        return runs[0]
    merged = dict(ok[(len(ok) - 1) // 2])
    merged[f"round_{key}"] = [r.get(key) for r in runs]
    return merged


def results_table(results: list[dict[str, Any]], peak: float) -> str:
    head = (
        "| model | K | batch | variant | step ms | img/s/peer | vs independent | "
        "vs independent+cl | vs pytorch-dml | peak MB | % of matmul peak |"
    )
    lines = [head, "|" + "---|" * 11]
    by = {(r["model"], r["k"], r["batch"], r["variant"]): r for r in results if "step_s" in r}

    def ratio(r: dict[str, Any], ref: dict[str, Any] | None) -> str:
        return f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"

    for r in results:
        key = (r["model"], r["k"], r["batch"])
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['k']} | {r['batch']} | {r['variant']} | "
                f"failed: {r['error'][:60]} | | | | | | |"
            )
            continue
        ext = by.get((*key, "pytorch-dml"))
        rel_ext = f"{ext['step_s'] / r['step_s']:.2f}x faster" if ext else "-"
        lines.append(
            f"| {r['model']} | {r['k']} | {r['batch']} | {r['variant']} | "
            f"{1000 * r['step_s']:.1f} | {r['images_per_s_per_peer']:.0f} | "
            f"{ratio(r, by.get((*key, 'independent')))} | "
            f"{ratio(r, by.get((*key, 'independent+cl')))} | "
            f"{rel_ext} | {r['peak_mem_mb']:.0f} | {100 * r['flops_per_s'] / peak:.0f} |"
        )
    return "\n".join(lines)


def markdown(payload: dict[str, Any]) -> str:
    """The Markdown page of one ``dml bench`` run (from its JSON payload)."""
    env, peak, results = payload["environment"], payload["matmul_peak_flops"], payload["results"]
    first = results[0] if results else {"steps": "?", "warmup": "?"}
    return (
        f"# dml bench on {env['device']}\n\nCommand: `{payload['command'].strip()}`\n\n"
        f"Machine: {env.get('gpu') or env['cpu']}, {env['cpu_count']} CPUs, "
        f"torch {env['torch']} ({env['torch_threads']} threads), Python {env['python']}. "
        f"Matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s.\n\n"
        f"Median of {first['steps']} steps after {first['warmup']} warm-up steps; each case in "
        f"its own process; {payload.get('rounds', 1)} round(s) of all cases one after another, "
        f"the median round reported (every round's figure is in the JSON). FLOPs: 3 x the "
        f"forward's, counted by torch.utils.flop_counter.\n\n{results_table(results, peak)}\n"
    )
