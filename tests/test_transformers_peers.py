"""Hugging Face models as peers: dict batches and ModelOutputs through dmlkit.step, DMLLoss,
dmlkit.fit and the trainer; hf-config: archs; save_pretrained folders; bitwise resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import dmlkit  # noqa: E402
from dmlkit.engine.hf_peers import save_pretrained_peers  # noqa: E402
from dmlkit.errors import ConfigError  # noqa: E402
from dmlkit.losses import sequence as sl  # noqa: E402
from dmlkit.losses.batches import is_causal_lm, split_batch  # noqa: E402
from dmlkit.models import build_model  # noqa: E402

VOCAB = 40
GPT = dict(task="causal-lm", n_layer=1, n_embd=32, n_head=2, n_positions=32)
BERT = dict(
    num_hidden_layers=1,
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=VOCAB,
)
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def gpt(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("hf-config:gpt2", VOCAB, 1, None, **{**GPT, **NO_DROPOUT, **kw})


def lm_batch(seed: int = 0, b: int = 4, t: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_hf_config_builds_seeded_models_of_the_task():
    a, b, a2 = gpt(0), gpt(1), gpt(0)
    assert type(a).__name__ == "GPT2LMHeadModel" and is_causal_lm(a)
    assert a.get_output_embeddings().weight.shape[0] == VOCAB  # vocab = the data's classes
    sd, sd2 = a.state_dict(), a2.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)
    clf = build_model("hf-config:bert", 3, 1, None, **BERT)
    assert type(clf).__name__ == "BertForSequenceClassification" and not is_causal_lm(clf)
    assert clf(input_ids=torch.ones(2, 5, dtype=torch.long)).logits.shape == (2, 3)
    with pytest.raises(ConfigError, match="no model type 'gpt9'"):
        build_model("hf-config:gpt9", 3, 1, None)
    with pytest.raises(ConfigError, match="task 'lm'"):
        build_model("hf-config:gpt2", 3, 1, None, task="lm")
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        build_model("hf:surely/not-in-the-cache-xyz", 3, 1, None)


def test_step_on_dict_batches_equals_the_token_losses_and_hf_own_loss():
    batch = lm_batch()
    batch["attention_mask"][1] = 1  # right padding only: there HF scores the same positions
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    models = [gpt(0), gpt(1)]
    twins = [gpt(0), gpt(1)]
    hf_loss = [m(**batch).loss.item() for m in models]  # Hugging Face's own shifted CE
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in models]
    logs = dmlkit.step(models, opts, batch, temperature=2.0, mimicry_weight=0.7)
    for log, ref in zip(logs, hf_loss):
        assert log["ce"].item() == pytest.approx(ref, rel=1e-5)
    # by hand: token losses on the shifted labels, one SGD step each
    inputs, y = split_batch(batch, causal=True)
    logits = [m(**inputs).logits for m in twins]
    total = sum(sl.token_dml_losses(logits, y, temperature=2.0, mimicry_weight=0.7))
    total.backward()
    with torch.no_grad():
        for m in twins:
            for p in m.parameters():
                if p.grad is not None:
                    p -= 0.5 * p.grad
    for m, t in zip(models, twins):
        for (n, p), q in zip(m.named_parameters(), t.parameters()):
            assert torch.allclose(p, q, atol=1e-6), n


def test_sequential_step_and_sequence_classification():
    clfs = []
    for s in (0, 1):
        torch.manual_seed(s)
        clfs.append(
            build_model(
                "hf-config:bert",
                3,
                1,
                None,
                **BERT,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        )
    ids = torch.randint(1, VOCAB, (4, 6), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": ids, "labels": torch.tensor([0, 2, -100, 1])}
    ref = clfs[0](**batch).loss.item()  # HF ignores -100; dmlkit reads it as unlabelled (-1)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in clfs]
    logs = dmlkit.step(clfs, opts, batch, update="sequential")
    assert logs[0]["ce"].item() == pytest.approx(ref, rel=1e-5)
    assert logs[1]["mimicry"].item() > 0


def test_dmlloss_takes_model_outputs():
    batch = lm_batch(1)
    models = [gpt(0), gpt(1)]
    inputs, y = split_batch(batch, causal=True)
    outs = [m(**inputs) for m in models]  # CausalLMOutputWithCrossAttentions
    got = dmlkit.losses.DMLLoss()(outs, y)
    expect = sum(sl.token_dml_losses([o.logits for o in outs], y))
    assert got.item() == pytest.approx(expect.item(), rel=1e-6)


def test_saved_peers_load_with_auto_classes_and_pipelines(tmp_path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(VOCAB - 1)]
    tok = Tokenizer(models.WordLevel({"<pad>": 0, **{w: i + 1 for i, w in enumerate(words)}}, "w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")
    fast.save_pretrained(tmp_path / "tok")
    lm = gpt(0, dmlkit_note="x")
    torch.manual_seed(2)
    clf = build_model("hf-config:bert", 2, 1, None, **BERT)
    out = save_pretrained_peers(
        [lm, clf], ["lm", "clf"], tmp_path / "run", class_names=["neg", "pos"],
        tokenizer_dir=tmp_path / "tok",
    )  # fmt: skip
    assert [p.name for p in out] == ["lm", "clf"]
    back = transformers.AutoModelForCausalLM.from_pretrained(out[0])
    assert torch.equal(back.lm_head.weight, lm.lm_head.weight)
    gen = transformers.pipeline("text-generation", model=str(out[0]), device="cpu")
    text = gen("w1 w2", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert text.startswith("w1 w2") and len(text.split()) >= 3
    cls = transformers.pipeline("text-classification", model=str(out[1]), device="cpu")
    assert cls("w3 w4")[0]["label"] in ("neg", "pos")
    with torch.no_grad():
        ids = fast("w3 w4", return_tensors="pt")
        expect = clf.eval()(**ids).logits.softmax(-1).max().item()
    assert cls("w3 w4")[0]["score"] == pytest.approx(expect, rel=1e-5)


PROGRAM = textwrap.dedent(
    """
    import sys, torch, dmlkit
    from dmlkit.models import build_model

    class Texts(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(1, 40, (n, 10), generator=g)
        def __len__(self):
            return len(self.ids)
        def __getitem__(self, i):
            mask = torch.ones(10, dtype=torch.long)
            mask[7 + i % 3:] = 0
            return {"input_ids": self.ids[i], "attention_mask": mask,
                    "labels": self.ids[i].masked_fill(mask == 0, -100)}

    def peer(seed):  # dropout on: resume must restore the generators too
        torch.manual_seed(seed)
        return build_model("hf-config:gpt2", 40, 1, None, task="causal-lm", n_layer=1,
                           n_embd=32, n_head=2, n_positions=32)

    def run(out, resume=False):
        return dmlkit.fit([peer(0), peer(1)], Texts(48, 0), test=Texts(16, 1), out=out,
                          epochs=2, batch_size=8, resume=resume,
                          optimizers=[lambda p: torch.optim.AdamW(p, lr=1e-3)] * 2,
                          config={"train": {"device": "cpu", "threads": 1}})

    if __name__ == "__main__":
        run(sys.argv[1])
    """
)


def _weights(run: Path) -> list[dict[str, torch.Tensor]]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["cohort"]["models"]


@pytest.mark.slow
def test_fit_evaluates_saves_and_resumes_bitwise(tmp_path: Path):
    script = tmp_path / "textprog.py"
    script.write_text(PROGRAM)
    sys.path.insert(0, str(tmp_path))
    try:
        import textprog  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    whole = tmp_path / "whole"
    summary = textprog.run(str(whole))
    for entry in [*summary["peers"], summary["ensemble"]]:
        m = entry["metrics"]
        assert m["perplexity"] == pytest.approx(torch.tensor(m["ce"]).exp().item(), rel=1e-6)
        assert m["bits_per_token"] == pytest.approx(m["ce"] / 0.6931471805599453, rel=1e-9)
        assert 0 <= m["top1"] <= m["top5"] <= 1
    # the saved folders hold the final weights
    for name, sd in zip([p["name"] for p in summary["peers"]], _weights(whole)):
        back = transformers.AutoModelForCausalLM.from_pretrained(whole / "peers" / name)
        assert torch.equal(back.lm_head.weight, sd["lm_head.weight"])
    cut = tmp_path / "cut"
    env = {**os.environ, "DMLKIT_FAULT": "kill-at-step@9", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script), str(cut)], env=env, capture_output=True)
    assert done.returncode != 0 and not (cut / "summary.json").exists()
    textprog.run(str(cut), resume=True)
    for a, b in zip(_weights(whole), _weights(cut)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((whole / "summary.json").read_text()) == json.loads(
        (cut / "summary.json").read_text()
    )


def test_fit_takes_hugging_face_datasets_as_they_are(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    from dmlkit.data.tokenize import byte_tokenizer

    texts = [f"line {i}: {'ab' * (i % 5 + 1)}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": texts[:32], "label": labels[:32]}),
        test=datasets.Dataset.from_dict({"text": texts[32:], "label": labels[32:]}),
    )
    tok = byte_tokenizer()
    peers = []
    for s in (0, 1):
        torch.manual_seed(s)
        peers.append(build_model("hf-config:bert", 2, 1, None, **{**BERT, "vocab_size": len(tok)}))
    summary = dmlkit.fit(
        peers, splits, tokenizer=tok, out=tmp_path / "run", epochs=1, batch_size=8,
        config={"train": {"device": "cpu", "progress": False}},
    )  # fmt: skip
    assert summary["num_classes"] == 2 and len(summary["peers"]) == 2
    # 8 test texts: accuracies are multiples of 1/8
    for entry in [*summary["peers"], summary["ensemble"]]:
        assert (entry["metrics"]["top1"] * 8) == pytest.approx(round(entry["metrics"]["top1"] * 8))
    assert (tmp_path / "run" / "peers").is_dir()


def test_fit_sequential_update_on_dict_batches(tmp_path: Path):
    """The paper's sequential update with HF peers: peer 1 steps against peer 0's *updated*
    prediction (the cohort re-predicts through the dict batch)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (16, 8), generator=g)
    data = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]
    summary = dmlkit.fit(
        [gpt(0), gpt(1)], data, test=data[:8], out=tmp_path / "run", update="sequential",
        epochs=1, batch_size=8, config={"train": {"device": "cpu", "progress": False}},
    )  # fmt: skip
    assert summary["update"] == "sequential"
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2 and all(r["mimicry"] > 0 for r in train)


def test_hf_folder_loads_its_weights_and_gets_a_new_head_for_our_classes(tmp_path: Path):
    lm = gpt(3)
    lm.save_pretrained(tmp_path / "lm")
    back = build_model(f"hf:{tmp_path / 'lm'}", VOCAB, 1, None)  # task from its config
    assert type(back).__name__ == "GPT2LMHeadModel"
    assert torch.equal(back.lm_head.weight, lm.lm_head.weight)
    clf = build_model(f"hf:{tmp_path / 'lm'}", 5, 1, None, task="sequence-classification")
    assert type(clf).__name__ == "GPT2ForSequenceClassification"
    assert clf.score.weight.shape[0] == 5  # a fresh head for the data's classes
    assert torch.equal(clf.transformer.wte.weight, lm.transformer.wte.weight)  # the body kept
