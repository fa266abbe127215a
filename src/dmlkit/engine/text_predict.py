"""A trained text run on new text (``dml predict RUN --text ...`` / ``--lines FILE``).

The run's own tokenizer (``RUN/tokenizer/``, :mod:`dmlkit.data.text`) encodes the texts as its
batches were; the peers come from the checkpoint (:func:`dmlkit.engine.checkpoint.load_cohort`).

* A classifier gives each text's top-k classes with their probabilities (one peer's softmax,
  or the ensemble's: the mean of the peers' probabilities).
* A causal language model gives each text's bits per byte and per token under the model (the
  ensemble: the mean of the peers' next-token probabilities) and the top-k next tokens after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.data.text import CAUSAL_LM, run_tokenizer
from dmlkit.engine.checkpoint import load_cohort
from dmlkit.engine.predict import peer_index
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError
from dmlkit.losses.batches import model_logits
from dmlkit.losses.dml import mean_log_probs
from dmlkit.metrics.text import token_byte_lengths


def is_text_run(run_dir: str | Path) -> bool:
    """Whether a run folder (or a checkpoint inside one) holds a text run's tokenizer record."""
    path = Path(run_dir).expanduser()
    run = path if path.is_dir() else path.parent.parent
    return (run / "text-data.json").is_file()


@dataclass
class TextPredictor:
    """One peer or the ensemble of a text run, with the run's tokenizer."""

    peers: list[nn.Module]
    which: str
    tokenizer: Any
    task: str
    classes: list[str]
    max_length: int
    device: torch.device

    @torch.no_grad()
    def log_probs(self, ids: list[int]) -> Tensor:
        """``[T, C]`` (an LM: per position) or ``[1, C]`` log-probabilities of the model."""
        x = torch.tensor([ids], device=self.device)
        inputs = {"input_ids": x, "attention_mask": torch.ones_like(x)}
        lps = [F.log_softmax(model_logits(p, inputs).float(), dim=-1)[0] for p in self.peers]
        lp = lps[0] if len(lps) == 1 else mean_log_probs(lps)
        return lp if lp.dim() == 2 else lp[None]

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=self.task != CAUSAL_LM)["input_ids"]
        if not ids:
            raise UserError("an empty text cannot be scored; give at least one character")
        return list(ids)[: self.max_length]

    def predict(self, texts: list[str], top_k: int = 1) -> list[dict[str, Any]]:
        """One row per text: ``{"text", "top": [{"class", "index", "probability"}]}`` for a
        classifier; ``{"text", "tokens", "bits_per_token", "bits_per_byte", "next": [{"token",
        "index", "probability"}]}`` for a language model (the text cut to the model's length)."""
        rows = []
        lengths = token_byte_lengths(self.tokenizer) if self.task == CAUSAL_LM else None
        for text in texts:
            ids = self._encode(text)
            lp = self.log_probs(ids)
            if self.task != CAUSAL_LM:
                k = max(1, min(top_k, len(self.classes)))
                values, indices = lp[0].exp().topk(k)
                top = [
                    {"class": self.classes[i], "index": int(i), "probability": float(v)}
                    for v, i in zip(values.tolist(), indices.tolist())
                ]
                rows.append({"text": text, "top": top})
                continue
            target = torch.tensor(ids[1:], device=lp.device)
            nats = float(-lp[:-1].gather(1, target[:, None]).sum()) if len(ids) > 1 else 0.0
            n_bytes = int(lengths[target.cpu()].sum()) if len(ids) > 1 else 0  # type: ignore[index]
            values, indices = lp[-1].exp().topk(max(1, min(top_k, lp.shape[-1])))
            rows.append(
                {
                    "text": text,
                    "tokens": len(ids),
                    "bits_per_token": nats / math.log(2) / max(len(ids) - 1, 1),
                    "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else None,
                    "next": [
                        {"token": self.tokenizer.decode([i]), "index": int(i), "probability": v}
                        for v, i in zip(values.tolist(), indices.tolist())
                    ],
                }
            )
        return rows


def load_text_predictor(
    run_dir: str | Path, peer: int | str | None = None, device: torch.device | str = "cpu"
) -> TextPredictor:
    """Peer ``peer`` (index or name) of a text run, or the ensemble when None."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such run directory or checkpoint file")
    run = RunDir(path if path.is_dir() else path.parent.parent)
    saved = run_tokenizer(run.path)
    if saved is None:
        raise UserError(f"{run.path}: not a text run (no text-data.json); give image files")
    tokenizer, state = saved
    cohort, _ = load_cohort(path, device)
    names = [s.name for s in cohort.specs]
    classes: list[str] = []
    if run.summary_path.is_file():
        classes = list(run.read_summary().get("classes") or [])
    peers = [p.eval() for p in cohort.peers]
    which = "ensemble"
    if peer is not None:
        i = peer_index(names, peer, run_dir)
        peers, which = [peers[i]], names[i]
    if state["task"] != CAUSAL_LM and not classes:
        n = cohort.specs[0].num_classes
        classes = [str(c) for c in range(n)]
    return TextPredictor(
        peers, which, tokenizer, state["task"], classes, int(state["max_length"]),
        torch.device(device),
    )  # fmt: skip


def read_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file (one input each)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--lines {p}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--lines {p}: not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"--lines {p}: cannot read it ({exc.strerror or exc})") from None
    return [line for line in text.splitlines() if line.strip()]
