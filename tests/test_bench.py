"""`dml bench`: the cases run and report consistent figures (timings themselves are not tested)."""

from __future__ import annotations

import json

import pytest
import torch

from dmlkit.bench import VARIANTS, Case, main, plan, run_case
from dmlkit.bench.report import results_table


@pytest.mark.parametrize(
    "variant", ["textbook", "loop", "loop+cl", "stacked", "independent", "independent+cl"]
)
def test_run_case_reports_a_step(variant):
    res = run_case(Case("small_cnn", 2, 8, variant, "cpu", steps=2, warmup=1))
    assert res["step_s"] > 0 and len(res["step_s_all"]) == 2
    assert res["images_per_s_per_peer"] == pytest.approx(8 / res["step_s"])
    assert res["flop_per_step"] > 0 and res["peak_mem_mb"] > 0


def test_plan_covers_the_issue_matrix():
    full = plan("full", "cuda")
    assert {c.model for c in full} == {"resnet32", "mobilenet"}
    assert {c.k for c in full} == {1, 2, 4} and {c.batch for c in full} == {64, 256}
    assert {c.variant for c in full} == set(VARIANTS)
    assert not [c for c in full if c.k == 1 and c.variant == "pytorch-dml"]
    quick = plan("quick", "cpu")
    assert set((c.model, c.k, c.batch, c.variant) for c in quick) < set(
        (c.model, c.k, c.batch, c.variant) for c in full
    )


def test_table_ratios():
    rows = [
        {
            "model": "m",
            "k": 2,
            "batch": 8,
            "variant": v,
            "step_s": s,
            "images_per_s_per_peer": 8 / s,
            "peak_mem_mb": 1.0,
            "flops_per_s": 1e9,
        }
        for v, s in (
            ("independent", 0.2),
            ("independent+cl", 0.1),
            ("pytorch-dml", 0.3),
            ("loop", 0.15),
        )
    ]
    table = results_table(rows, peak=2e9)
    loop_line = next(line for line in table.splitlines() if "| loop |" in line)
    cells = [c.strip() for c in loop_line.strip("|").split("|")]
    # vs independent, vs independent+cl, vs pytorch-dml, peak MB, % of matmul peak
    assert cells[6:] == ["0.75x", "1.50x", "2.00x faster", "1", "50"]


@pytest.mark.slow
def test_main_writes_json_and_markdown(tmp_path):
    args = [
        "--device",
        "cpu",
        "--models",
        "resnet32",
        "--ks",
        "2",
        "--batches",
        "64",
        "--variants",
        "loop",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    data = json.loads((tmp_path / "throughput-cpu.json").read_text())
    assert [r["variant"] for r in data["results"]] == ["loop"]
    assert data["matmul_peak_flops"] > 0 and "cpu" in data["environment"]
    assert "| resnet32 | 2 | 64 | loop |" in (tmp_path / "throughput-cpu.md").read_text()


def test_flops_per_step_of_a_known_network_counted_by_hand(monkeypatch):
    """FLOPs per step = 3 x the forward's (backward = input + weight gradients), each layer
    counted from its shapes as 2 x multiply-adds; the depthwise layer counts its groups
    (FlopCounterMode's backward would not, hence 3 x the forward)."""
    from dmlkit.bench import runner

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),  # 32x32 out, 4 x 3 x 3 x 3 weights
        torch.nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise: 4 x 1 x 3 x 3 weights
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 32 * 32, 10),
    )
    monkeypatch.setattr(runner, "case_models", lambda case: [net])
    batch = 2
    conv = 2 * batch * (32 * 32) * 4 * (3 * 3 * 3)  # per output pixel and channel: 27 MACs
    depthwise = 2 * batch * (32 * 32) * 4 * (1 * 3 * 3)  # 9 MACs: one input channel per group
    linear = 2 * batch * (4 * 32 * 32) * 10
    flops = runner._flops_per_peer_step(Case("hand", 1, batch, "loop", "cpu"))
    assert flops == 3 * (conv + depthwise + linear)
