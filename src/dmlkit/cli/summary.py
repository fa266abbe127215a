"""The tables ``dml train`` and ``dml eval`` print from a run's summary, and the one way the
commands that train stop on Ctrl-C (:func:`ignore_interrupts`).

Every name comes from a file (a checkpoint's peer names, summary.json): printed through
:func:`dmlkit.trust.printable`, so a control character in one cannot drive the terminal.
"""

from __future__ import annotations

import signal

from dmlkit.trust import printable


def ignore_interrupts() -> None:
    """After a first Ctrl-C, a second one must not break the clean-up (atexit) in a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def run_line(summary: dict) -> str:
    """'after 3 epochs (dml, sequential; digits; on cpu)': what was trained, on what, where."""
    where = "; ".join(
        x
        for x in (
            summary.get("dataset", ""),
            f"on {summary['device']}" if summary.get("device") else "",
        )
        if x
    )
    inside = ", ".join(x for x in (summary["method"], summary.get("update")) if x)
    return f"after {plural(summary['epochs'], 'epoch')} ({inside}" + (
        f"; {where})" if where else ")"
    )


def print_summary(summary: dict) -> None:
    if "mAP" in summary["ensemble"]["metrics"]:
        _print_reid_summary(summary)
        return
    if "perplexity" in summary["ensemble"]["metrics"]:
        _print_token_summary(summary)
        return
    # top-5 of a problem with <= 5 classes is always 100 %: not worth a column
    top5 = summary.get("num_classes", 6) > 5
    split = summary.get("split", "test")
    print(printable(f"{split} top-1{' / top-5' if top5 else ''} {run_line(summary)}:"))
    members = [(p["name"], p["metrics"]) for p in summary["peers"]]
    members.append(("ensemble", summary["ensemble"]["metrics"]))
    for name, m in members:
        name = printable(name)
        print(f"  {name:<24} {100 * m['top1']:6.2f}%" + (f"  {100 * m['top5']:6.2f}%" * top5))


def _print_token_summary(summary: dict) -> None:
    """A language model: per valid token, perplexity, bits (per byte where known), accuracy."""
    split = summary.get("split", "test")
    ens = summary["ensemble"]["metrics"]
    keys = ["perplexity", "bits_per_token", *(["bits_per_byte"] * ("bits_per_byte" in ens))]
    header = ["ppl", "bits/tok", *(["bits/byte"] * ("bits_per_byte" in ens)), "top-1"]
    print(f"{split} per token {run_line(summary)}:")
    print(f"  {'':<24}" + "".join(f"{h:>10}" for h in header))
    members = [(p["name"], p["metrics"]) for p in summary["peers"]]
    members.append(("ensemble", ens))
    for name, m in members:
        row = "".join(f"{m[k]:10.3f}" for k in keys) + f"{100 * m['top1']:9.2f}%"
        print(f"  {name:<24}" + row)


def _print_reid_summary(summary: dict) -> None:
    """Re-id: mAP and CMC Rank-1/5/10/20 per peer and for the ensemble (concatenated features)."""
    split = summary.get("split", "test")
    print(printable(f"{split} retrieval {run_line(summary)}, %:"))
    keys = ["mAP", "rank1", "rank5", "rank10", "rank20"]
    multi = "mq_mAP" in summary["ensemble"]["metrics"]
    header = ["mAP", "Rank-1", "Rank-5", "Rank-10", "Rank-20"] + (["MQ mAP", "MQ R-1"] * multi)
    keys += ["mq_mAP", "mq_rank1"] * multi
    print(f"  {'':<24}" + "".join(f"{h:>9}" for h in header))
    members = [(p["name"], p["metrics"]) for p in summary["peers"]]
    members.append(("ensemble", summary["ensemble"]["metrics"]))
    for name, m in members:
        print(f"  {printable(name):<24}" + "".join(f"{100 * m[k]:9.2f}" for k in keys))
