"""Deep Mutual Learning inside Hugging Face's ``Trainer``: :class:`DMLTrainer`.

``DMLTrainer(models=[m1, m2], args=TrainingArguments(...), train_dataset=..., ...)`` trains K
models mutually with the simultaneous update (one forward of every peer, every peer steps
against those predictions: the sum of the peers' losses is backpropagated once, each loss
reaching only its own peer because the mimicry targets are detached). Everything else is the
``Trainer``'s own: the optimizer (one over all peers' parameters; AdamW and the other per-
parameter optimizers then update each peer exactly as K separate ones would), the schedule,
gradient accumulation, checkpoints and resume, and Accelerate's DDP / FSDP / DeepSpeed / bf16
from the ``TrainingArguments``, unchanged.

The losses are dmlkit's (:mod:`dmlkit.losses.batches`): per sample for sequence classification
(``[B, C]``), per valid token for language models (``[B, T, V]``; a causal LM's labels shifted
as Hugging Face's models shift them). One step equals :func:`dmlkit.step` (tested within 1e-5).

Differences from a plain ``Trainer`` a user should know:

* ``max_grad_norm`` clips every peer's gradient by its own norm (as K separate runs would), not
  the norm of all peers together; under FSDP / DeepSpeed the clipping is the Trainer's (joint).
* ``evaluate()`` reports every peer and the ensemble (the mean of the peers' probabilities):
  ``eval_<peer>_accuracy``, ``eval_<peer>_ce`` (per valid token for an LM, with
  ``_perplexity``), ``eval_ensemble_*``; ``eval_loss`` is the peers' mean cross-entropy.
* ``save_model(dir)`` writes each peer as ``dir/peers/<name>`` (``from_pretrained`` /
  ``pipeline`` load it; the tokenizer goes with each), besides the wrapper's weights.
* The paper's sequential update does not fit the Trainer's one-backward step: use
  :func:`dmlkit.step` (``update="sequential"``) or ``dmlkit.fit`` for it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.engine.hf_peers import folder_name, save_pretrained_peers
from dmlkit.losses.batches import causal_models, dml_terms, flatten_valid, is_sequence, split_batch
from dmlkit.losses.dml import DML_MODES, mean_log_probs

try:
    import transformers
except ImportError as exc:  # pragma: no cover - the optional extra
    raise ImportError(
        "dmlkit.integrations.transformers needs transformers: pip install 'dmlkit[transformers]'"
    ) from exc

ENSEMBLE = "ensemble"


class MutualModels(nn.Module):
    """The K peers as one module for the ``Trainer``: ``forward(**batch)`` -> K logits.

    Args:
        models: the peers (Hugging Face models, or any module taking the batch's keys).
        names: one name per peer (default ``peer0``, ``peer1``, ...).
    """

    # The Trainer must not hand a loss normaliser to forward(): the losses are dmlkit's.
    accepts_loss_kwargs = False

    def __init__(self, models: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if len(models) < 1:
            raise ValueError("MutualModels needs at least one model")
        self.peers = nn.ModuleList(models)
        self.names = list(names) if names is not None else [f"peer{k}" for k in range(len(models))]
        if len(self.names) != len(models) or len(set(self.names)) != len(self.names):
            raise ValueError(f"give one distinct name per model, got {self.names}")

    def forward(self, **inputs: Tensor) -> list[Tensor]:
        """The batch without its labels -> one logits tensor per peer (``[B, C]`` or
        ``[B, T, V]``)."""
        out = []
        for peer in self.peers:
            o = peer(**inputs)
            out.append(o if isinstance(o, Tensor) else o["logits"])
        return out


class DMLTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains K models with Deep Mutual Learning.

    Args:
        models: K >= 1 peers; each takes the batch's keys (``input_ids``, ``attention_mask``,
            ...) and returns logits or a ``ModelOutput`` with ``logits``.
        args: the ``TrainingArguments`` (every field as for a plain ``Trainer``).
        method: ``"dml"`` (peer k mimics each other peer, paper Eq. 10), ``"dml_e"`` (the
            mean of the others, Eq. 11) or ``"independent"`` (no mimicry: the baseline).
        temperature: of the mimicry term (its value scaled by ``T**2``).
        mimicry_weight: weight of the mimicry term.
        peer_names: one name per peer (logs, metrics, saved folders).
        **kwargs: the ``Trainer``'s other arguments (``train_dataset``, ``eval_dataset``,
            ``data_collator``, ``processing_class``, ``optimizers``, ``callbacks``, ...).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        args: transformers.TrainingArguments,
        *,
        method: str = "dml",
        temperature: float = 1.0,
        mimicry_weight: float = 1.0,
        peer_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if method not in (*DML_MODES, "independent"):
            raise ValueError(f"method must be dml, dml_e or independent, got {method!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.dml_method = method
        self.dml_temperature = temperature
        self.dml_mimicry_weight = 0.0 if method == "independent" else mimicry_weight
        self.dml_causal = causal_models(list(models))
        cohort = MutualModels(models, peer_names)
        self.peer_names = cohort.names
        self._sums: dict[str, float] = {}
        self._count = 0
        super().__init__(model=cohort, args=args, **kwargs)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by GA steps
        self.model_accepts_loss_kwargs = False

    # -- the step -----------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self) -> None:
        # The dataset's columns the peers take: the first peer's forward arguments.
        if self._signature_columns is None:
            import inspect

            first = self.accelerator.unwrap_model(self.model).peers[0]
            params = list(inspect.signature(first.forward).parameters)
            self._signature_columns = [*params, "label", "label_ids", "labels"]

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The sum over peers of ``CE_k + w * mimicry_k`` (dmlkit's losses; targets detached)."""
        x, y = split_batch(inputs, causal=self.dml_causal)
        logits = model(**x)
        mode = self.dml_method if self.dml_method in DML_MODES else "dml"
        terms = dml_terms(logits, y, mode=mode, temperature=self.dml_temperature)
        losses = [ce + self.dml_mimicry_weight * m for ce, m in zip(terms.ce, terms.mimicry)]
        loss = torch.stack(losses).sum()
        if model.training:  # per-peer values for the next log line
            values = torch.stack([*terms.ce, *terms.mimicry]).detach().float().cpu().tolist()
            k = len(self.peer_names)
            for i, name in enumerate(self.peer_names):
                for key, v in (("ce", values[i]), ("mimicry", values[k + i])):
                    self._sums[f"{name}_{key}"] = self._sums.get(f"{name}_{key}", 0.0) + v
            self._count += 1
        return (loss, logits) if return_outputs else loss

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        """Each peer clipped by its own gradient norm; returns the norm of them all."""
        kind = self.accelerator.distributed_type
        if kind in (
            transformers.trainer.DistributedType.FSDP,
            transformers.trainer.DistributedType.DEEPSPEED,
        ):
            return super()._clip_grad_norm(model)
        peers = self.accelerator.unwrap_model(model).peers
        norms = [
            torch.nn.utils.clip_grad_norm_(p.parameters(), self.args.max_grad_norm) for p in peers
        ]
        return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log line, plus each peer's mean CE and mimicry since the last one."""
        if self._count and "loss" in logs:
            logs.update({k: v / self._count for k, v in self._sums.items()})
            self._sums, self._count = {}, 0
        super().log(logs, start_time)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Every peer and the ensemble on the evaluation set (summed over the processes).

        Returns:
            ``{prefix}_{peer|ensemble}_{accuracy|ce}`` (per sample, or per valid token of an
            LM, with ``_perplexity`` and ``_bits_per_token`` then), ``{prefix}_loss`` (the
            peers' mean CE) and ``{prefix}_ensemble_agreement`` (share of samples / tokens on
            which every peer predicts the same).
        """
        loader = self.get_eval_dataloader(eval_dataset)
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        was = model.training
        model.eval()
        k = len(self.peer_names)
        sums = torch.zeros(2 * (k + 1) + 2, dtype=torch.float64, device=self.args.device)
        sequence = False
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                x, y = split_batch(batch, causal=self.dml_causal)
                with self.compute_loss_context_manager():
                    logits = model(**x)
                sequence = sequence or is_sequence(logits[0])
                logits, y = flatten_valid(logits, y)
                keep = y >= 0  # labelled samples only
                lps = [F.log_softmax(z[keep].float(), dim=-1) for z in logits]
                y = y[keep]
                lps.append(mean_log_probs(lps))
                preds = [lp.argmax(-1) for lp in lps]
                for i, (lp, pred) in enumerate(zip(lps, preds)):
                    sums[2 * i] += (pred == y).sum()
                    sums[2 * i + 1] += F.nll_loss(lp, y, reduction="sum").double()
                agree = torch.stack(preds[:k]).eq(preds[0]).all(0)
                sums[-2] += agree.sum()
                sums[-1] += len(y)
        model.train(was)
        sums = self.accelerator.reduce(sums, reduction="sum")
        n = max(float(sums[-1]), 1.0)
        metrics: dict[str, float] = {}
        ces = []
        for i, name in enumerate([*self.peer_names, ENSEMBLE]):
            ce = float(sums[2 * i + 1]) / n
            metrics[f"{metric_key_prefix}_{name}_accuracy"] = float(sums[2 * i]) / n
            metrics[f"{metric_key_prefix}_{name}_ce"] = ce
            if sequence:
                metrics[f"{metric_key_prefix}_{name}_perplexity"] = math.exp(min(ce, 700.0))
                metrics[f"{metric_key_prefix}_{name}_bits_per_token"] = ce / math.log(2)
            if name != ENSEMBLE:
                ces.append(ce)
        metrics[f"{metric_key_prefix}_ensemble_agreement"] = float(sums[-2]) / n
        metrics[f"{metric_key_prefix}_loss"] = sum(ces) / len(ces)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    # -- saving -------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The wrapper's weights (what resume loads; each tied tensor once), the tokenizer and
        the arguments, as the Trainer saves them; and every peer as ``output_dir/peers/<name>``
        in ``save_pretrained``'s format, with the tokenizer."""
        if not self.args.should_save:
            return
        import safetensors.torch

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        cohort = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            state_dict = cohort.state_dict()
        seen: set[tuple[int, int]] = set()
        unique = {}
        for key, t in state_dict.items():  # a tied embedding / LM head: its first name only
            ident = (t.untyped_storage().data_ptr(), t.storage_offset())
            if ident not in seen:
                seen.add(ident)
                unique[key] = t.detach().contiguous()
        safetensors.torch.save_file(
            unique, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"}
        )
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        tokenizer = self.processing_class
        if not hasattr(tokenizer, "save_pretrained"):
            tokenizer = None
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        save_pretrained_peers(list(cohort.peers), self.peer_names, output_dir, tokenizer=tokenizer)

    def peer_dir(self, output_dir: str, name: str) -> str:
        """Where :meth:`save_model` wrote the peer ``name``."""
        return os.path.join(output_dir, "peers", folder_name(name))
