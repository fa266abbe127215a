"""Text batches in the torchrun data mode: 2 gloo processes equal 1 process within 1e-5.

Each process takes its half of every global batch of token sequences; the losses are per valid
token over its shard and the gradients are averaged. With as many valid tokens in every shard
(fixed-length rows, as LM blocks are) that is the gradient of the global batch's per-token mean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_fit import _torchrun_program  # noqa: E402

PROGRAM = textwrap.dedent(
    """
    import sys

    import torch

    import dmlkit
    from dmlkit.models import build_model


    class Blocks(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(0, 40, (n, 12), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            ids = self.ids[i]
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


    def peer(seed):  # no dropout: its random numbers would differ between 1 and 2 processes
        torch.manual_seed(seed)
        return build_model("hf-config:gpt2", 40, 1, None, task="causal-lm", n_layer=1,
                           n_embd=16, n_head=2, n_positions=16, resid_pdrop=0.0,
                           embd_pdrop=0.0, attn_pdrop=0.0)


    dmlkit.fit(
        [peer(0), peer(1)], Blocks(64, 1), test=Blocks(16, 2), out=sys.argv[1], epochs=2,
        batch_size=16, optimizers=[lambda p: torch.optim.SGD(p, lr=0.5)] * 2,
        config={"train": {"progress": False, "device": "cpu"},
                "distributed": {"mode": sys.argv[2]}},
    )
    """
)


@pytest.mark.slow
def test_text_batches_in_data_mode_equal_one_process(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "none"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun_program(script, str(tmp_path / "two"), "data")
    assert two.returncode == 0, two.stderr[-2000:]
    states = [
        torch.load(tmp_path / r / "checkpoints" / "last.pt", weights_only=True)
        for r in ("one", "two")
    ]
    assert states[1]["distributed"]["mode"] == "data" and states[1]["distributed"]["world"] == 2
    for a, b in zip(*(s["cohort"]["models"] for s in states)):
        assert a.keys() == b.keys() and "lm_head.weight" in a
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
