"""dml analyze on text runs: posterior entropy and peer agreement per valid token (causal LM)
or per sample (classifier), padding left out; the image-only measurements skipped in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dmlkit.analysis.measure import posterior_stats, text_logits
from dmlkit.losses.sequence import IGNORE_INDEX

TINY_GPT = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}


def _hand_entropy(rows: torch.Tensor) -> torch.Tensor:
    """``[N]``: -sum p log p from the softmax written out (float64)."""
    z = rows.double()
    p = z.exp() / z.exp().sum(1, keepdim=True)
    return -(p * p.log()).sum(1)


class TinyLM(nn.Module):
    """A causal LM in Hugging Face's calling convention: ``logits [B, T, V]`` from input_ids."""

    dmlkit_causal_lm = True

    def __init__(self, vocab: int = 7, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return {"logits": 3 * self.emb(input_ids)}


def _batches() -> list[dict[str, torch.Tensor]]:
    ids = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return [{"input_ids": ids, "attention_mask": mask, "labels": labels}]


def test_identical_peers_agree_fully_and_entropy_is_the_hand_computation():
    torch.manual_seed(0)
    z = torch.randn(50, 6)
    ent, agree = posterior_stats(["a", "b"], [[z[:20], z[:20]], [z[20:], z[20:]]])
    assert agree["all_agree"] == 1.0 and agree["pairwise_agree"] == 1.0
    assert agree["pairwise_kl"] == pytest.approx(0.0, abs=1e-6)
    want = float(_hand_entropy(z).mean())
    assert ent["a"] == pytest.approx(want, rel=1e-5) and ent["b"] == pytest.approx(want, rel=1e-5)
    assert ent["ensemble"] == pytest.approx(want, rel=1e-5)  # mean of two equal posteriors
    # two different peers: the fraction of rows whose argmax agrees, counted by hand
    w = torch.randn(50, 6)
    _, agree = posterior_stats(["a", "b"], [[z, w]])
    same = (z.argmax(1) == w.argmax(1)).double().mean()
    assert agree["pairwise_agree"] == pytest.approx(float(same))
    assert agree["pairwise_kl"] > 0


def test_causal_lm_is_measured_per_valid_token_padding_excluded():
    a, b = TinyLM(seed=1), TinyLM(seed=2)
    rows = list(text_logits([a, b], _batches()))
    # first sequence: 4 tokens -> 3 next-token targets; second: 2 tokens -> 1; padding: none
    assert [len(r) for r in rows[0]] == [4, 4]
    ids = _batches()[0]["input_ids"]
    with torch.no_grad():
        full = 3 * a.emb(ids)  # [2, 5, V]
    valid = torch.cat([full[0, :3], full[1, :1]])  # positions whose next token is real
    assert torch.allclose(rows[0][0], valid)
    ent, agree = posterior_stats(["a", "b"], rows)
    assert ent["a"] == pytest.approx(float(_hand_entropy(valid).mean()), rel=1e-5)
    # padding positions changed arbitrarily: the values do not move
    batch = _batches()[0]
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 6)
    ent2, agree2 = posterior_stats(["a", "b"], text_logits([a, b], [batch]))
    assert ent2 == pytest.approx(ent) and agree2 == pytest.approx(agree)
    # a peer against itself: 100 %
    _, same = posterior_stats(["a", "a2"], text_logits([a, a], _batches()))
    assert same["all_agree"] == 1.0 and same["pairwise_agree"] == 1.0


def test_classifier_is_measured_per_sample_and_limit_counts_sequences():
    class Cls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(7, 3)

        def forward(self, input_ids, attention_mask=None):
            return {"logits": self.emb(input_ids)}

    batch = {
        "input_ids": torch.tensor([[1, 2], [3, 4], [5, 6]]),
        "attention_mask": torch.ones(3, 2, dtype=torch.long),
        "labels": torch.tensor([0, IGNORE_INDEX, 2]),  # unlabelled: still one sample
    }
    model = Cls()
    rows = list(text_logits([model], [batch]))
    assert len(rows[0][0]) == 3
    assert len(next(iter(text_logits([model], [batch], limit=1)))[0]) == 1
    ent, agree = posterior_stats(["c"], rows)
    with torch.no_grad():
        want = _hand_entropy(model.emb(batch["input_ids"])).mean()
    assert ent["c"] == pytest.approx(float(want), rel=1e-5)
    assert agree["all_agree"] == 1.0 and agree["pairwise_agree"] is None


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    import yaml

    from dmlkit.cli import main

    root = tmp_path_factory.mktemp("lmrun")
    cfg = {
        "data": {
            "name": "stdlib-lm",
            "batch_size": 4,
            "text": {"tokenizer": "byte", "max_length": 32, "stdlib_classes": 2, "lm_blocks": 8},
        },
        "peers": [{"arch": "hf-config:gpt2", "kwargs": TINY_GPT}] * 2,
        "train": {"iterations": 1, "device": "cpu", "progress": False},
    }
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(root / "c.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"


def test_dml_analyze_on_a_text_run(lm_run, tmp_path, capsys):
    from dmlkit.cli import main
    from dmlkit.config import load_config
    from dmlkit.data import build_data
    from dmlkit.engine.checkpoint import load_cohort
    from dmlkit.losses.sequence import shift_labels

    capsys.readouterr()
    out = tmp_path / "ana"
    assert main(["analyze", str(lm_run), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    skips = [line for line in captured.out.splitlines() if "a text run:" in line]
    assert len(skips) == 2 and "wide-minima probe skipped" in skips[0]
    result = json.loads((out / "analysis.json").read_text())["runs"][0]
    assert result["noise"]["peers"] == {} and result["dead_units"] == {}
    assert not (out / "noise.png").exists() and (out / "entropy.png").is_file()
    assert "Not measured: wide-minima probe skipped" in (out / "summary.md").read_text()
    # the test entropy of every peer, by hand: the rebuilt peers on the run's test split,
    # next-token positions inside the attention mask only
    cohort, _ = load_cohort(lm_run, "cpu")
    cfg = load_config(lm_run / "config.yaml")
    data = build_data(cfg.data, seed=cfg.seed, run_dir=lm_run)
    data.test.train = False
    sums = [0.0, 0.0]
    n = 0
    with torch.no_grad():
        for batch in data.test:
            mask = batch.get("attention_mask")
            target = shift_labels(batch["labels"], mask)
            valid = target != IGNORE_INDEX
            for k, peer in enumerate(cohort.peers):
                peer.eval()
                logits = peer(input_ids=batch["input_ids"], attention_mask=mask).logits
                sums[k] += float(_hand_entropy(logits[valid]).sum())
            n += int(valid.sum())
    names = result["peers"]
    for k, name in enumerate(names):
        got = result["entropy"]["test"][name]
        assert got == pytest.approx(sums[k] / n, rel=1e-4)
        assert 0 < got <= math.log(result["num_classes"]) + 1e-6
    agree = result["agreement"]["test"]
    assert 0 <= agree["all_agree"] <= 1 and agree["pairwise_kl"] >= 0
    # the same split and peers as dml eval's ensemble agreement
    summary = json.loads((lm_run / "summary.json").read_text())
    assert agree["all_agree"] == pytest.approx(summary["ensemble"]["metrics"]["all_agree"])


def test_dml_analyze_on_a_text_classifier_run(tmp_path, capsys):
    pytest.importorskip("transformers")
    import yaml

    from dmlkit.cli import main

    bert = {
        "num_hidden_layers": 1,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    }
    cfg = {
        "data": {
            "name": "stdlib-modules",
            "batch_size": 8,
            "text": {
                "tokenizer": "byte",
                "max_length": 32,
                "stdlib_classes": 3,
                "snippets_per_class": 12,
            },
        },
        "peers": [{"arch": "hf-config:bert", "kwargs": bert}] * 2,
        "train": {"iterations": 1, "device": "cpu", "progress": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    result = json.loads((run / "analysis" / "analysis.json").read_text())["runs"][0]
    assert result["num_classes"] == 3
    for split in ("train", "test"):
        assert all(0 < v <= math.log(3) + 1e-6 for v in result["entropy"][split].values())
    # per sample, on the same test split as the run's own evaluation
    summary = json.loads((run / "summary.json").read_text())
    want = summary["ensemble"]["metrics"]["all_agree"]
    assert result["agreement"]["test"]["all_agree"] == pytest.approx(want)
