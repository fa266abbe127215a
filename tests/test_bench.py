"""`dml bench`: the cases run and report consistent figures (timings themselves are not tested)."""

from __future__ import annotations

import json

import pytest

from dmlkit.bench import VARIANTS, Case, _table, main, plan, run_case


@pytest.mark.parametrize("variant", ["textbook", "loop", "loop+cl", "stacked", "independent"])
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
        for v, s in (("independent", 0.2), ("pytorch-dml", 0.3), ("loop", 0.15))
    ]
    table = _table(rows, peak=2e9)
    loop_line = next(line for line in table.splitlines() if "| loop |" in line)
    assert "0.75x" in loop_line and "2.00x faster" in loop_line and "| 50 |" in loop_line


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
