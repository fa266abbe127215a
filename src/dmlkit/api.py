"""Python API for your own models and data: :func:`fit`, :func:`load_peers`, :func:`export_peer`.

``dmlkit.fit(models=[m1, m2], train=..., test=..., out="runs/mine")`` trains nn.Module
instances of any architecture (heterogeneous cohorts too) with the Trainer that ``dml train``
uses: the same run directory (config.yaml, env.json, metrics.jsonl, checkpoints/,
summary.json), checkpoints after every epoch, bitwise resume (``resume=True`` with the same
modules and data), validation, the test evaluation of every peer and of the ensemble.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dmlkit.config import Config, config_from_dict, default_peer_name, merge_dicts
from dmlkit.data.hf_datasets import hf_text_bundle, is_hf_dataset, is_split_dict
from dmlkit.data.user import PYTHON_DATA, is_dict_batch, user_bundle
from dmlkit.engine.checkpoint import load_checkpoint, resolve_checkpoint
from dmlkit.errors import UserError
from dmlkit.losses.batches import model_logits, move_batch, slice_batch, split_batch
from dmlkit.methods.dml import METHODS
from dmlkit.models.external import INSTANCE
from dmlkit.optim import ConstantSchedule, TorchSchedule

#: An optimizer, or a factory ``params -> optimizer``.
OptimizerLike = torch.optim.Optimizer | Callable[[Any], torch.optim.Optimizer]
#: An LR scheduler, or a factory ``optimizer -> scheduler``.
SchedulerLike = Any

Data = Dataset | DataLoader


def _arch_name(module: nn.Module) -> str:
    # The class name only: the module path of one class differs between `python prog.py`
    # (__main__) and `import prog`, and a resumed run must match its first part.
    return f"{INSTANCE}:{type(module).__qualname__}"


# fit()'s defaults, for the settings that are both arguments and config keys. An argument left
# at None is not given: the config's value is taken, else this default.
FIT_DEFAULTS: dict[str, Any] = {
    "method": "dml",
    "update": "simultaneous",
    "epochs": 10,
    "batch_size": 64,
    "seed": 0,
}
# argument -> its key in the config
FIT_KEYS = {
    "method": ("method", "name"),
    "update": ("method", "update"),
    "epochs": ("train", "epochs"),
    "batch_size": ("data", "batch_size"),
    "seed": ("seed",),
}


def _config_value(config: dict[str, Any], key: tuple[str, ...]) -> Any:
    """``config[key[0]][key[1]]...``, or None where the dict does not say."""
    node: Any = config
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fit_config(
    models: Sequence[nn.Module],
    *,
    method: str | None = None,
    update: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    names: Sequence[str] | None = None,
    config: Config | dict[str, Any] | None = None,
) -> Config:
    """The run's Config: ``config`` (a Config or a dict like a YAML file) and the arguments.

    A setting given both as an argument and in ``config`` must agree: two different values
    are a :class:`UserError` naming both, never a silent choice. A setting given once is
    taken; one given nowhere is ``FIT_DEFAULTS``'. A ``Config`` object states every key, so
    with one, an argument that differs from it is such a conflict.
    """
    base = config.to_dict() if isinstance(config, Config) else dict(config or {})
    args = {"method": method, "update": update, "epochs": epochs, "batch_size": batch_size}
    args["seed"] = seed
    given: dict[str, Any] = {}
    for arg, key in FIT_KEYS.items():
        value, in_config = args[arg], _config_value(base, key)
        if value is not None and in_config is not None and value != in_config:
            raise UserError(
                f"fit: {arg}={value!r} and config {'.'.join(key)}={in_config!r} disagree; "
                f"give it once (as the argument, or in config)"
            )
        if value is None and in_config is None:
            value = FIT_DEFAULTS[arg]
        if value is not None:
            node = given
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = value
    given = merge_dicts(given, {"data": {"name": PYTHON_DATA, "val_fraction": 0.0}})
    given["peers"] = [
        {"arch": _arch_name(m), "name": (names[i] if names else None), "seed": 0}
        for i, m in enumerate(models)
    ]
    merged = merge_dicts(given, base)  # no conflict is left: config adds what fit() lacks
    merged["peers"] = given["peers"]  # the peers are the modules, whatever config says
    merged["data"]["name"] = PYTHON_DATA
    return config_from_dict(merged)


def _num_classes(models: Sequence[nn.Module], data: Any) -> int:
    """Class count from one forward of each peer on one training batch (no grad, eval mode)."""
    loader = data if isinstance(data, DataLoader) else None
    first = next(iter(loader)) if loader is not None else data[0]
    if is_dict_batch(first):  # Hugging Face models: dict batches, ModelOutput.logits
        return _num_outputs_of_dicts(models, first if loader is not None else None, data)
    if loader is None:
        first = data[0]
        if first is None:
            raise UserError(
                "the dataset's item 0 is None; __getitem__ must return an (input, label) pair "
                "(filter bad samples out of the dataset instead)"
            )
        x = first[0]
        x = x.unsqueeze(0) if isinstance(x, torch.Tensor) else x
    else:
        x = next(iter(loader))[0]
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UserError(
            f"train: inputs must be floating-point tensors, got "
            f"{getattr(x, 'dtype', type(x).__name__)}; convert images with transforms.ToTensor()"
        )
    outputs = []
    for k, m in enumerate(models):
        device = next(m.parameters()).device
        was = m.training
        try:
            with torch.no_grad():
                z = m.eval()(x[:2].to(device))
        except Exception as exc:  # noqa: BLE001 - any failure: name the peer and the shape
            raise UserError(
                f"models[{k}] ({type(m).__name__}) fails on a training batch of shape "
                f"{tuple(x[:2].shape)}: {str(exc).splitlines()[0][:160]}"
            ) from None
        finally:
            m.train(was)
        if not isinstance(z, torch.Tensor) or z.dim() != 2:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise UserError(
                f"models[{k}] ({type(m).__name__}) returns {got}; the Trainer needs logits "
                f"[B, num_classes]"
            )
        outputs.append(z.shape[1])
    if len(set(outputs)) != 1:
        raise UserError(f"the models predict different numbers of classes: {outputs}")
    return outputs[0]


def _num_outputs_of_dicts(models: Sequence[nn.Module], batch: Any, data: Any) -> int:
    """Classes (``[B, C]`` logits) or vocabulary (``[B, T, V]``) of peers fed dict batches."""
    if batch is None:  # a Dataset of dicts: its first two items, collated
        batch = torch.utils.data.default_collate([data[i] for i in range(min(2, len(data)))])
    inputs, _ = split_batch(batch)
    sizes = []
    for k, m in enumerate(models):
        device = next(m.parameters()).device
        was = m.training
        try:
            with torch.no_grad():
                z = model_logits(m.eval(), move_batch(slice_batch(inputs, 0, 2), device))
        except Exception as exc:  # noqa: BLE001 - any failure: name the peer and the keys
            raise UserError(
                f"models[{k}] ({type(m).__name__}) fails on a training batch with keys "
                f"{sorted(inputs)}: {str(exc).splitlines()[0][:160]}"
            ) from None
        finally:
            m.train(was)
        sizes.append(z.shape[-1])
    if len(set(sizes)) != 1:
        raise UserError(f"the models predict different numbers of classes or tokens: {sizes}")
    return sizes[0]


def _optimizers(
    models: Sequence[nn.Module], optimizers: Sequence[OptimizerLike] | None, cfg: Config
) -> list[torch.optim.Optimizer] | None:
    if optimizers is None:
        return None  # built from cfg.optim / peers[].optim
    if len(optimizers) != len(models):
        raise UserError(f"give one optimizer per model: {len(models)} models, {len(optimizers)}")
    out = []
    for k, (m, o) in enumerate(zip(models, optimizers)):
        opt = o if isinstance(o, torch.optim.Optimizer) else o(m.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise UserError(f"optimizers[{k}]: expected a torch.optim.Optimizer or a factory")
        mine = {id(p) for p in m.parameters()}
        if any(id(p) not in mine for g in opt.param_groups for p in g["params"]):
            raise UserError(f"optimizers[{k}] holds parameters that are not models[{k}]'s")
        out.append(opt)
    return out


def _check_nonempty(data: Any, split: str) -> None:
    """A Dataset with no sample, or a DataLoader that yields no batch: one line, before work."""
    try:
        n = len(data)
    except TypeError:  # an iterable-style dataset: found out when it is read
        return
    if n == 0 and isinstance(data, DataLoader):
        size = len(data.dataset) if hasattr(data.dataset, "__len__") else "?"
        raise UserError(
            f"{split}: the DataLoader yields no batch ({size} samples, batch_size "
            f"{data.batch_size}, drop_last={data.drop_last}); lower its batch_size or set "
            f"drop_last=False"
        )
    if n == 0:
        raise UserError(f"{split}: the dataset is empty; give it samples")


def _check_schedulers(
    schedulers: Sequence[SchedulerLike] | None, opts: list[torch.optim.Optimizer] | None
) -> None:
    """One scheduler per optimizer, each an LR scheduler (or a factory) of its own optimizer."""
    if schedulers is None:
        return
    if opts is None or len(schedulers) != len(opts):
        raise UserError("schedulers: give your optimizers too, one scheduler for each")
    for k, (sched, opt) in enumerate(zip(schedulers, opts)):
        if not hasattr(sched, "step") and not callable(sched):
            raise UserError(
                f"schedulers[{k}]: {sched!r:.40} is not a scheduler; give torch.optim.lr_scheduler "
                f"objects or factories optimizer -> scheduler (for a named schedule of dmlkit's "
                f"own optimizers: config={{'optim': {{'schedule': 'cosine'}}}})"
            )
        bound = getattr(sched, "optimizer", opt) if hasattr(sched, "step") else opt
        if bound is not opt:
            other = [j for j, o in enumerate(opts) if o is bound]
            whose = f"optimizers[{other[0]}]" if other else "an optimizer not given to fit"
            raise UserError(
                f"schedulers[{k}] steps {whose}, not optimizers[{k}]: models[{k}]'s learning "
                f"rate would never follow it; build scheduler k on optimizer k"
            )


def fit(
    models: Sequence[nn.Module],
    train: Data,
    *,
    out: str | Path,
    val: Data | None = None,
    test: Data | None = None,
    method: str | None = None,
    update: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    optimizers: Sequence[OptimizerLike] | None = None,
    schedulers: Sequence[SchedulerLike] | None = None,
    schedule_every: str = "epoch",
    names: Sequence[str] | None = None,
    config: Config | dict[str, Any] | None = None,
    num_workers: int = 0,
    resume: bool = False,
    callbacks: Sequence[Any] | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Train your own ``nn.Module`` peers with Deep Mutual Learning; returns summary.json.

    Args:
        models: K >= 1 peers, any architectures; ``model(x)`` returns logits ``[B, C]``.
        train: a map-style Dataset of ``(x, y)`` (batched, shuffled and seeded by dmlkit) or a
            DataLoader (used as given). ``x`` float tensors, ``y`` class indices (-1: unlabelled).
        out: the run directory to create (or to continue with ``resume=True``).
        val: evaluated every ``train.eval_every`` epochs and after the last one.
        test: evaluated once, after training (summary.json); without it, ``val`` is.
        method: a registered method (``dml list``; default ``"dml"``): ``dml``, ``dml_e``,
            ``independent`` and ``kdcl`` train any modules; ``kd`` needs ``method.teacher`` in
            ``config``; ``one``, ``okddip`` and ``pcl`` need one multi-branch module.
        update: ``"simultaneous"`` (default) or ``"sequential"`` (the paper's Algorithm 1).
        epochs, batch_size, seed: as ``train.epochs`` (default 10), ``data.batch_size`` (64),
            ``seed`` (0). These five may be given here or in ``config``; given in both, the
            two values must agree (else a ``UserError``: no value is silently dropped).
        optimizers: one per model, ``torch.optim`` objects or factories ``params -> optimizer``;
            default: built from ``config``'s ``optim`` (SGD 0.05, cosine: see dmlkit.config).
        schedulers: one per optimizer, ``torch.optim.lr_scheduler`` objects or factories
            ``optimizer -> scheduler``, stepped every ``schedule_every`` (``"epoch"`` or
            ``"step"``) and checkpointed; with your optimizers and no schedulers, the LR is
            left as you set it.
        names: the peers' names (default ``peer{i}_{class}``).
        config: any other setting, as a Config or a dict shaped like a YAML config (e.g.
            ``{"train": {"eval_every": 1, "device": "cpu"}, "method": {"temperature": 2}}``).
            ``{"distributed": {"mode": "data"}}`` under ``torchrun``: every process trains
            the whole cohort on its share of each batch (``train`` must be a Dataset).
        num_workers: DataLoader workers for Dataset inputs.
        resume: continue the run in ``out`` from its last checkpoint (same modules and data).
        tokenizer: for Hugging Face ``datasets`` with a text column: the tokenizer that
            encodes it (:func:`dmlkit.data.hf_datasets.hf_text_bundle`; a ``datasets.Dataset``
            or ``DatasetDict`` is accepted as ``train`` as it is).
        callbacks: objects with some of the Trainer's events (``Trainer.fit(callbacks=...)``,
            :mod:`dmlkit.engine.callbacks`).

    Returns:
        The summary (also written to ``out/summary.json``): final metrics per peer and of the
        ensemble.
    """
    from dmlkit.cohort import Cohort, PeerSpec
    from dmlkit.distributed import init_distributed
    from dmlkit.engine.devices import resolve_device
    from dmlkit.engine.trainer import Trainer

    models = list(models)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise UserError("models: give a list of torch.nn.Module instances (at least one)")
    if len({id(m) for m in models}) != len(models):
        raise UserError("models: the same module appears twice; give each peer its own instance")
    hf_data = is_hf_dataset(train) or is_split_dict(train)  # Hugging Face datasets
    if test is None and val is None and not hf_data:
        raise UserError("give test= (or at least val=): the data the trained peers are scored on")
    for k, m in enumerate(models):
        if next(m.parameters(), None) is None:
            raise UserError(
                f"models[{k}] ({type(m).__name__}) has no parameters: there is nothing to train; "
                f"give modules with trainable parameters"
            )
    _check_nonempty(train, "train")
    if names is None:
        names = [default_peer_name(i, type(m).__name__.lower()) for i, m in enumerate(models)]
    cfg = fit_config(
        models,
        method=method,
        update=update,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        names=names,
        config=config,
    )
    METHODS.get(cfg.method.name)  # any registered method, named here or in config
    # under torchrun (distributed.mode=data) each process joins the job and takes its device
    # (cuda -> cuda:LOCAL_RANK) before the modules move there
    dist = init_distributed(cfg.distributed, resolve_device(cfg.train.device))
    device = dist.device
    for m in models:
        m.to(device)
    if hf_data:  # dict batches of token ids (dmlkit.data.hf_datasets), tokenized if text
        data = hf_text_bundle(
            train,
            val,
            test if test is not None else val,
            tokenizer=tokenizer,
            batch_size=cfg.data.batch_size,
            eval_batch_size=cfg.data.eval_batch_size,
            seed=cfg.seed,
        )
        if data.test is None:
            raise UserError("give test= (or at least val=): the data the peers are scored on")
    else:
        data = user_bundle(
            train,
            val,
            test if test is not None else val,
            num_classes=_num_classes(models, train),
            batch_size=cfg.data.batch_size,
            eval_batch_size=cfg.data.eval_batch_size,
            seed=cfg.seed,
            num_workers=num_workers,
        )
    opts = _optimizers(models, optimizers, cfg)
    _check_schedulers(schedulers, opts)

    def cohort(specs: list[PeerSpec], total_epochs: float, steps_per_epoch: int) -> Cohort:
        optim = [cfg.peer_optim(i) for i in range(len(models))]
        schedules = None
        if opts is not None:
            schedules = [ConstantSchedule() for _ in opts]
        if schedulers is not None:
            if opts is None or len(schedulers) != len(opts):
                raise UserError("schedulers: give your optimizers too, one scheduler for each")
            schedules = [
                TorchSchedule(s if hasattr(s, "step") else s(o), steps_per_epoch, schedule_every)
                for s, o in zip(schedulers, opts)
            ]
        return Cohort(
            specs,
            optim,
            total_epochs,
            device,
            channels_last=cfg.train.channels_last,
            modules=models,
            optimizers=opts,
            schedules=schedules,
        )

    trainer = Trainer(cfg, out, resume=resume, dist=dist, data=data, cohort_factory=cohort)
    if callbacks:  # the Trainer's callback events (dmlkit.engine.callbacks)
        return trainer.fit(callbacks=list(callbacks))
    return trainer.fit()


def load_peers(path: str | Path, models: Sequence[nn.Module]) -> list[nn.Module]:
    """Load a run's trained weights into your modules (one per peer, in the run's order).

    Args:
        path: a run directory (its last checkpoint) or a checkpoint file.
        models: the modules to fill, built as they were for training.

    Returns:
        ``models``, with the checkpoint's weights, in eval mode.
    """
    state = load_checkpoint(path)
    peers, weights = state["peers"], state["cohort"]["models"]
    if len(models) != len(peers):
        raise UserError(
            f"{resolve_checkpoint(path)}: holds {len(peers)} peers "
            f"({', '.join(p['name'] for p in peers)}), got {len(models)} modules"
        )
    for m, p, sd in zip(models, peers, weights):
        try:
            m.load_state_dict(sd)
        except RuntimeError as exc:
            raise UserError(
                f"{resolve_checkpoint(path)}: peer {p['name']!r} ({p['arch']}) does not fit "
                f"{type(m).__name__}: {str(exc).splitlines()[0][:160]}"
            ) from None
        m.eval()
    return list(models)


def export_peer(path: str | Path, peer: int | str, dest: str | Path) -> Path:
    """Write one peer's weights as a plain state_dict: ``.safetensors`` or a torch ``.pt``.

    The file needs nothing of dmlkit: ``model.load_state_dict(torch.load(dest))`` or
    ``safetensors.torch.load_file(dest)``. The same writer as ``dml export RUN --peer N``
    (:mod:`dmlkit.engine.export`): the same peer gives the same ``weights.*`` bytes.

    Args:
        path: a run directory or checkpoint file.
        peer: the peer's index or name.
        dest: the file to write (``.safetensors`` by that suffix, else ``torch.save``);
            written whole or not at all.
    """
    from dmlkit.engine.export import export_peer as write_peer

    return write_peer(path, peer, dest)


__all__ = ["export_peer", "fit", "fit_config", "load_peers"]
