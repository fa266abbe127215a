"""Text runs from configs: hf-config: peers on the stdlib data through dml train, dml eval,
dml predict, resume; bits per byte; the text recipes' report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from dmlkit.cli import main  # noqa: E402
from dmlkit.metrics.text import token_byte_lengths  # noqa: E402

TINY_GPT = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}
TINY_BERT = {
    "num_hidden_layers": 1,
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}


def _write(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def lm_config(tmp_path: Path, epochs: int = 1) -> Path:
    return _write(
        tmp_path / "lm.yaml",
        {
            "seed": 0,
            "data": {
                "name": "stdlib-lm",
                "batch_size": 8,
                "text": {
                    "tokenizer": "byte",
                    "max_length": 32,
                    "stdlib_classes": 2,
                    "lm_blocks": 48,
                },
            },
            "peers": [
                {"arch": "hf-config:gpt2", "name": "a", "kwargs": TINY_GPT},
                {"arch": "hf-config:gpt2", "name": "b", "kwargs": TINY_GPT},
            ],
            "optim": {"name": "adamw", "lr": 0.003},
            "train": {"epochs": epochs, "device": "cpu", "progress": False},
        },
    )


def test_token_byte_lengths_of_byte_and_bpe_tokenizers():
    from dmlkit.data.tokenize import byte_tokenizer, train_bpe

    byte = token_byte_lengths(byte_tokenizer())
    assert byte[:256].tolist() == [1] * 256 and byte[256:].tolist() == [0, 0]  # pad, eos
    bpe = train_bpe(["naïve café au lait, naïve café "] * 20, 300)
    lengths = token_byte_lengths(bpe)
    for text in ("naïve café", "au lait"):
        ids = bpe(text)["input_ids"]
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


@pytest.mark.slow
def test_lm_config_trains_evaluates_predicts_and_resumes(tmp_path, capsys):
    cfg = lm_config(tmp_path, epochs=2)
    run = tmp_path / "run"
    assert main(["train", "-c", str(cfg), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    for entry in [*summary["peers"], summary["ensemble"]]:
        m = entry["metrics"]
        # the byte tokenizer: one byte per token except <eos> (0 bytes), so bits per byte is
        # bits per token times (tokens / bytes) >= bits per token
        assert m["bits_per_byte"] >= m["bits_per_token"] > 0
        assert m["bits_per_byte"] < m["bits_per_token"] * 1.2
        assert m["perplexity"] == pytest.approx(math.exp(m["ce"]))
    # the run's tokenizer and text record; peers saved with it
    assert (run / "tokenizer" / "tokenizer.json").is_file() and (run / "text-data.json").is_file()
    assert (run / "peers" / "a" / "tokenizer.json").is_file()
    # dml eval re-loads the run's tokenizer and gives the same numbers
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    again = json.loads((run / "eval_test.json").read_text())
    assert again["ensemble"]["metrics"] == pytest.approx(summary["ensemble"]["metrics"])
    # predict: bits per byte of a line under peer a agrees with the model's own loss
    lines = tmp_path / "lines.txt"
    lines.write_text("import os\n\nx = 1\n")
    capsys.readouterr()
    assert main(["predict", str(run), "--lines", str(lines), "--peer", "a", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "a" and [r["text"] for r in out["predictions"]] == ["import os", "x = 1"]
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(run / "peers" / "a")
    tok = transformers.AutoTokenizer.from_pretrained(run / "tokenizer")
    ids = tok("import os", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert out["predictions"][0]["bits_per_token"] == pytest.approx(loss / math.log(2), rel=1e-4)
    assert len(out["predictions"][0]["next"]) == 3
    # image files given to a text run: one line, exit 2
    assert main(["predict", str(run), str(lines)]) == 2
    assert "is a text run" in capsys.readouterr().err


@pytest.mark.slow
def test_lm_resume_is_bitwise(tmp_path):
    import os
    import subprocess
    import sys

    cfg = lm_config(tmp_path, epochs=2)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", "-c", str(cfg), "--out", str(whole)]) == 0
    env = {**os.environ, "DMLKIT_FAULT": "kill-at-step@7", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "dmlkit.cli", "train", "-c", str(cfg), "--out", str(cut)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and not (cut / "summary.json").exists(), done.stderr[-2000:]
    assert main(["train", "--resume", str(cut)]) == 0

    def weights(run: Path) -> list[dict[str, torch.Tensor]]:
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        return state["cohort"]["models"]

    for a, b in zip(weights(whole), weights(cut)):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_classification_config_and_text_recipe_report(tmp_path, capsys):
    """The text-stdlib recipe at a tiny scale: the report's table, CSV and plot."""
    out = tmp_path / "rep"
    args = ["reproduce", "text-stdlib", "--out", str(out), "--seeds", "2", "--scale", "0.2"]
    sets = [
        "data.text.stdlib_classes=3",
        "data.text.snippets_per_class=24",
        "data.text.max_length=32",
        "peers.0.kwargs.max_position_embeddings=32",
        "peers.1.kwargs.n_positions=32",
    ]
    assert main([*args, *[x for s in sets for x in ("--set", s)]]) == 0
    md = (out / "results.md").read_text()
    assert "| encoder |" in md and "| ensemble |" in md and "95 % CI" in md
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "member,arm,seed,metric,value" and len(rows) == 1 + 3 * 2 * 2
    assert (out / "plots" / "text-gains.png").stat().st_size > 1000
    from dmlkit.analysis.stats import ci95

    def top1(arm: str, seed: int) -> float:
        summary = json.loads((out / arm / f"seed{seed}" / "summary.json").read_text())
        return 100 * summary["ensemble"]["metrics"]["top1"]

    mean, half = ci95([top1("dml", s) - top1("independent", s) for s in (0, 1)])
    assert "| ensemble | " in md and f"{mean:+.3f} ± {half:.3f} |" in md
