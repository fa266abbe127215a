"""dmlkit.integrations.transformers: DML inside Hugging Face's Trainer equals dmlkit.step;
evaluation of every peer and the ensemble; saved peers; accelerate launch with 2 processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import dmlkit  # noqa: E402
from dmlkit.integrations.transformers import DMLTrainer  # noqa: E402
from dmlkit.models import build_model  # noqa: E402

VOCAB = 40


def gpt(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "hf-config:gpt2", VOCAB, 1, None, task="causal-lm", n_layer=1, n_embd=32, n_head=2,
        n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip


class Texts(torch.utils.data.Dataset):
    """Equal-length rows, right padding in some (labels -100 there, as HF collators do)."""

    def __init__(self, n: int, seed: int, t: int = 12) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, t), generator=g)
        self.t = t

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask = torch.ones(self.t, dtype=torch.long)
        mask[self.t - (i % 3) :] = 0
        ids = self.ids[i]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100),
        }


def _args(tmp_path: Path, **kw) -> transformers.TrainingArguments:
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=1,
        learning_rate=0.5, max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no",
        logging_steps=1, seed=0, dataloader_drop_last=False, disable_tqdm=True,
    )  # fmt: skip
    return transformers.TrainingArguments(**{**base, **kw})


def _sgd(models):
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@pytest.mark.parametrize("method", ["dml", "dml_e"])
def test_one_trainer_step_equals_dmlkit_step(tmp_path, method):
    data = Texts(8, 0)
    models, twins = [gpt(0), gpt(1), gpt(2)], [gpt(0), gpt(1), gpt(2)]
    trainer = DMLTrainer(
        models, _args(tmp_path), method=method, temperature=2.0, mimicry_weight=0.7,
        train_dataset=data, optimizers=_sgd(models),
    )  # fmt: skip
    trainer.train()
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in twins]
    for m in twins:
        m.train()
    dmlkit.step(twins, opts, batch, mode=method, temperature=2.0, mimicry_weight=0.7)
    for m, t in zip(models, twins):
        for (n, p), q in zip(m.named_parameters(), t.parameters()):
            assert torch.allclose(p, q, atol=1e-5), n
    # the step moved the weights (a test that cannot pass by doing nothing)
    fresh = gpt(0)
    assert not torch.allclose(models[0].lm_head.weight, fresh.lm_head.weight, atol=1e-4)
    logged = trainer.state.log_history[0]
    assert {"peer0_ce", "peer1_mimicry", "peer2_ce"} <= set(logged)


def test_evaluate_reports_every_peer_and_the_ensemble(tmp_path):
    models = [gpt(0), gpt(1)]
    test = Texts(10, 1)
    trainer = DMLTrainer(
        models, _args(tmp_path, per_device_eval_batch_size=4), train_dataset=Texts(8, 0),
        eval_dataset=test, peer_names=["a", "b"],
    )  # fmt: skip
    metrics = trainer.evaluate()
    # dmlkit's own evaluation of the same peers on the same batches
    from dmlkit.cohort import Cohort, PeerSpec

    specs = [PeerSpec(n, "instance:x", VOCAB, 0, 0) for n in ("a", "b")]
    cohort = Cohort(specs, [], 1.0, modules=models, optimizers=[None, None], schedules=[0, 0])
    from dmlkit.engine.evaluation import evaluate

    batches = [
        torch.utils.data.default_collate([test[i] for i in range(j, min(j + 4, len(test)))])
        for j in range(0, len(test), 4)
    ]
    ref = evaluate(cohort, batches)
    for name in ("a", "b", "ensemble"):
        assert metrics[f"eval_{name}_accuracy"] == pytest.approx(ref[name]["top1"], abs=1e-9)
        assert metrics[f"eval_{name}_ce"] == pytest.approx(ref[name]["ce"], rel=1e-6)
        assert metrics[f"eval_{name}_perplexity"] == pytest.approx(ref[name]["perplexity"])
    assert metrics["eval_loss"] == pytest.approx((ref["a"]["ce"] + ref["b"]["ce"]) / 2)


def test_save_model_writes_loadable_peers(tmp_path):
    models = [gpt(0), gpt(1)]
    trainer = DMLTrainer(models, _args(tmp_path), train_dataset=Texts(8, 0))
    trainer.train()
    out = tmp_path / "final"
    trainer.save_model(str(out))
    back = transformers.AutoModelForCausalLM.from_pretrained(trainer.peer_dir(str(out), "peer1"))
    assert torch.equal(back.lm_head.weight, models[1].lm_head.weight)


ACCELERATE_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, transformers
    sys.path.insert(0, sys.argv[2])
    from test_hf_trainer import Texts, gpt
    from dmlkit.integrations.transformers import DMLTrainer

    models = [gpt(0), gpt(1)]
    args = transformers.TrainingArguments(
        output_dir=sys.argv[1], per_device_train_batch_size=4, max_steps=2, learning_rate=0.5,
        max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no", seed=0,
        disable_tqdm=True, per_device_eval_batch_size=4)
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    trainer = DMLTrainer(models, args, train_dataset=Texts(16, 0), eval_dataset=Texts(8, 1),
                         optimizers=(opt, sched))
    trainer.train()
    metrics = trainer.evaluate()
    if trainer.args.process_index == 0:
        torch.save([m.state_dict() for m in models], sys.argv[1] + "/weights.pt")
        json.dump({"world": trainer.args.world_size, **metrics},
                  open(sys.argv[1] + "/metrics.json", "w"))
    """
)


@pytest.mark.slow
def test_accelerate_launch_with_two_cpu_processes(tmp_path):
    """DDP over 2 gloo processes: every process holds both peers, gradients are averaged;
    the run trains and evaluates, and both processes end with the same weights."""
    script = tmp_path / "launch.py"
    script.write_text(ACCELERATE_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), str(out), str(Path(__file__).parent),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world"] == 2
    assert 0 <= metrics["eval_ensemble_accuracy"] <= 1 and metrics["eval_peer0_ce"] > 0
    fresh = gpt(0).state_dict()
    trained = torch.load(out / "weights.pt", weights_only=True)[0]
    assert not torch.equal(trained["lm_head.weight"], fresh["lm_head.weight"])


class Labelled(torch.utils.data.Dataset):
    """Sequence classification: one class per row (one of them unlabelled: -100)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(5)
        self.ids = torch.randint(1, VOCAB, (n, 6), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label = torch.tensor(-100 if i == 3 else i % 3)
        return {"input_ids": self.ids[i], "labels": label}


def test_one_trainer_step_on_classifiers_equals_dmlkit_step(tmp_path):
    def bert(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(
            "hf-config:bert", 3, 1, None, num_hidden_layers=1, hidden_size=32,
            num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip

    data = Labelled(8)
    models, twins = [bert(0), bert(1)], [bert(0), bert(1)]
    trainer = DMLTrainer(
        models, _args(tmp_path), train_dataset=data, optimizers=_sgd(models), temperature=3.0
    )
    trainer.train()
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in twins]
    for m in twins:
        m.train()
    dmlkit.step(twins, opts, batch, temperature=3.0)
    for m, t in zip(models, twins):
        for (n, p), q in zip(m.named_parameters(), t.parameters()):
            assert torch.allclose(p, q, atol=1e-5), n
    assert not torch.allclose(models[0].classifier.weight, bert(0).classifier.weight, atol=1e-4)
