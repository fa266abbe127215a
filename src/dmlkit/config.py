"""The configuration schema (dataclasses), YAML files, ``--set`` overrides and validation.

Precedence: dataclass defaults < YAML file < ``--set key=value`` (values parsed as YAML).
Unknown keys are rejected with the closest valid key; types and ranges are checked before any
work starts. The library itself takes these dataclasses; only the CLI reads files.

The defaults are the bundled-digits cohort that ``dml reproduce digits`` trains.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from dmlkit.errors import ConfigError, first_line


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule of a peer (``optim`` applies to every peer)."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam only
    # The schedule is a function of the (fractional) epoch, applied at every iteration.
    schedule: Literal["constant", "step", "multistep", "cosine"] = "cosine"
    step_size: float = 60.0  # step: multiply by gamma every step_size epochs
    milestones: list[float] = field(default_factory=list)  # multistep: epochs
    gamma: float = 0.1


@dataclass
class PeerConfig:
    """One member of the cohort. In YAML a bare string is shorthand for ``{arch: NAME}``."""

    arch: str = "small_cnn"
    name: str | None = None  # default: peer{index}_{arch}
    seed: int | None = None  # initialisation seed; default derived from the run seed and index
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model constructor
    optim: dict[str, Any] = field(default_factory=dict)  # overrides of the top-level optim


@dataclass
class MethodConfig:
    """The training scheme: ``independent``, ``dml``, ``dml_e`` or ``kd``."""

    name: str = "dml"
    # sequential = the paper's Algorithm 1 (each peer steps against the others' current
    # predictions); simultaneous = every peer steps against the same forward pass.
    update: Literal["sequential", "simultaneous"] = "simultaneous"
    temperature: float = 1.0  # paper: 1 (kd: softmax temperature of the soft targets)
    mimicry_weight: float = 1.0  # paper: 1
    # Epochs over which the mimicry weight rises linearly from 0 to mimicry_weight (0 = the
    # paper's constant weight from the first step).
    mimicry_rampup: float = 0.0
    teacher: str | None = None  # kd: a run directory or checkpoint file of an earlier run
    teacher_peer: int = 0  # kd: which peer of the teacher checkpoint
    alpha: float = 0.9  # kd: weight of the soft-target term


@dataclass
class DataConfig:
    """Dataset, splits and batching."""

    name: str = "digits"
    root: str | None = None  # data folder (not used by the bundled digits)
    val_fraction: float = 0.1  # carved from the training split; never the test split
    test_fraction: float = 0.25  # only for data without an official test split (digits)
    labelled_fraction: float = 1.0  # < 1: semi-supervised DML
    train_size: int | None = None  # use only this many training images (after the val carve)
    fraction: float = 1.0  # keep a stratified fraction of every split (smoke runs: --scale)
    split_seed: int = 0  # fixed so that every run of an experiment sees the same splits
    batch_size: int = 64
    eval_batch_size: int = 512
    crop_padding: int = 1  # random crop from the image padded by this many pixels
    hflip: bool = False  # random horizontal flip
    image_size: int | None = None  # imagefolder: resize to a square of this size
    # Re-id (market1501): network input height x width (default 256 x 128; the DML authors'
    # code used 224 x 224). Both or neither; if neither, a square image_size is used if set.
    image_height: int | None = None
    image_width: int | None = None
    # Re-id test protocol: distance between features, L2-normalised features, and whether to
    # also report the multiple-query setting (Market-1501: query + gt_bbox crops averaged).
    reid_distance: Literal["euclidean", "sqeuclidean", "cosine"] = "euclidean"
    reid_normalize: bool = True
    multi_query: bool = False
    # Files whose MD5 differs from the published one: a warning (false) or an error (true).
    strict: bool = False
    download: bool = False  # fetch a missing dataset into data.root (cifar100)
    # digits-pairs (two digits side by side, dmlkit.data.digits_pairs): composites per class in
    # training and in each of val and test, number of classes (<= 100), and the share of
    # training labels replaced by another class (val and test stay clean)
    pairs_per_class: int = 20
    pairs_eval_per_class: int = 20
    pairs_classes: int = 100
    label_noise: float = 0.0


@dataclass
class TrainConfig:
    """The trainer: length, evaluation and checkpoint cadence, device."""

    epochs: int = 30
    iterations: int | None = None  # if set, stop after this many steps instead
    eval_every: int = 10  # epochs between validation evaluations (the last epoch always)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always)
    keep_checkpoints: int = 1  # older epoch checkpoints kept besides the newest
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    progress: bool = True
    # loop: one module per peer; stacked: one batched (vmap) model for identical peers;
    # auto: stacked on CUDA when the cohort allows it.
    cohort_impl: Literal["auto", "loop", "stacked"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 adds loss scaling
    compile: bool = False  # torch.compile the peers' forward
    # channels-last conv weights and inputs (loop cohort): faster on CUDA and, measured, on the
    # CPU too (benchmarks/results/throughput-cpu.md); off for bitwise comparison with NCHW runs
    channels_last: bool = True
    # A NaN/inf loss: stop the run (keeping the last good checkpoint) or skip that step (with
    # the sequential update, peers that already stepped in it keep their step).
    nonfinite: Literal["stop", "skip"] = "stop"


@dataclass
class DistributedConfig:
    """torch.distributed under ``torchrun`` (see :mod:`dmlkit.distributed`).

    ``cohort``: the K peers are spread over the processes (K / world each), every process sees
    the whole batch and the peers' logits are exchanged. ``data``: every process holds the whole
    cohort and a shard of each batch; gradients are averaged. ``none``: one process.
    """

    mode: Literal["none", "cohort", "data"] = "none"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on the CPU
    # Longest wait for another process in any exchange (and at start-up); a rank that died or
    # hung makes the others stop with an error after this. Must exceed the longest time one
    # rank works alone (rank 0 writing a checkpoint).
    timeout_s: float = 300.0


def _default_peers() -> list[PeerConfig]:
    return [PeerConfig(), PeerConfig()]


@dataclass
class Config:
    """A whole run."""

    seed: int = 0  # data order and (unless a peer sets its own) peer initialisation
    method: MethodConfig = field(default_factory=MethodConfig)
    peers: list[PeerConfig] = field(default_factory=_default_peers)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def peer_optim(self, index: int) -> OptimConfig:
        """The optimizer settings of peer ``index``: ``optim`` updated by the peer's overrides."""
        merged = {**dataclasses.asdict(self.optim), **self.peers[index].optim}
        return _build(OptimConfig, merged, f"peers.{index}.optim")

    def peer_name(self, index: int) -> str:
        peer = self.peers[index]
        return peer.name or f"peer{index}_{peer.arch}"

    def peer_seed(self, index: int) -> int:
        """Initialisation seed of a peer: its own, else one derived from the run seed."""
        peer = self.peers[index]
        return peer.seed if peer.seed is not None else self.seed * 1000 + 17 * index + 1


# --------------------------------------------------------------------------------------------
# dict -> dataclass, with type checks


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{key}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}"
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = args
        return [_convert(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): v for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if tp is PeerConfig and isinstance(value, str):
            value = {"arch": value}  # shorthand: a bare model name
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # a bug in the schema


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown config key '{full}'; {hint or 'valid keys: ' + ', '.join(names)}"
            )
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# files and overrides


def merge_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``update`` replace those in ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does (1.1 reads a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader (no object construction, ever)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe loader only) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (give an existing YAML file with -c)")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    return data


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` (value parsed as YAML; list items addressed by index).

    ``*`` as a list index applies the value to every item, e.g.
    ``peers.*.kwargs.pretrained=imagenet`` for a cohort of any size.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: empty key part in {dotted!r}")
    if "*" in parts:
        star = parts.index("*")
        node: Any = data
        for part in parts[:star]:
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = None
        if not isinstance(node, list):
            raise ConfigError(f"--set {dotted}: '*' needs a list at '{'.'.join(parts[:star])}'")
        for i in range(len(node)):
            item = ".".join([*parts[:star], str(i), *parts[star + 1 :]])
            data = apply_override(data, f"{item}={raw}")
        return data
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a plain string
    data = dict(data)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _list_index(part, node, where)
            if isinstance(node[idx], str):  # peer shorthand -> mapping
                node[idx] = {"arch": node[idx]}
            node[idx] = dict(node[idx]) if isinstance(node[idx], dict) else node[idx]
            node = node[idx]
        elif isinstance(node, dict):
            child = node.get(part)
            if isinstance(child, list):
                child = list(child)
            elif isinstance(child, dict):
                child = dict(child)
            elif child is None:
                child = {}
            node[part] = child
            node = child
        else:
            raise ConfigError(f"--set {dotted}: '{where}' is not a mapping or a list")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {dotted}: the parent of '{last}' is not a mapping or a list")
    return data


def _list_index(part: str, node: list, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"--set {where}: index {part!r} is not valid for a list of {len(node)} items"
        )
    return int(part)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Defaults merged with ``data``, type-checked and validated."""
    merged = merge_dicts(dataclasses.asdict(Config()), data)
    cfg = _build(Config, merged, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults < YAML file at ``path`` < ``overrides`` (``["a.b=value", ...]``)."""
    data = load_yaml(path) if path is not None else {}
    data = merge_dicts(dataclasses.asdict(Config()), data)
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# validation of values (ranges, names, combinations)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _optim_errors(opt: OptimConfig) -> list[tuple[str, str]]:
    """(key, "key must ...") for every invalid optimizer value."""
    checks = [
        ("lr", opt.lr > 0, f"lr must be > 0, got {opt.lr}"),
        (
            "weight_decay",
            opt.weight_decay >= 0,
            f"weight_decay must be >= 0, got {opt.weight_decay}",
        ),
        ("momentum", 0 <= opt.momentum < 1, f"momentum must be in [0, 1), got {opt.momentum}"),
        (
            "betas",
            len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
            f"betas must be two numbers in [0, 1), got {opt.betas}",
        ),
        ("gamma", 0 < opt.gamma <= 1, f"gamma must be in (0, 1], got {opt.gamma}"),
        ("step_size", opt.step_size > 0, f"step_size must be > 0, got {opt.step_size}"),
        (
            "milestones",
            opt.schedule != "multistep" or bool(opt.milestones),
            "milestones: the multistep schedule needs milestones (epochs), e.g. [60, 120]",
        ),
    ]
    return [(key, message) for key, ok, message in checks if not ok]


def validate(cfg: Config) -> None:
    """Range and consistency checks; raises ConfigError naming the key and the fix."""
    from dmlkit.data import DATASETS
    from dmlkit.methods import METHODS
    from dmlkit.models import MODELS

    k = len(cfg.peers)
    _check(
        k >= 1, "peers: a cohort needs at least 1 peer, got 0 (e.g. peers: [small_cnn, small_cnn])"
    )
    METHODS.get(cfg.method.name)
    DATASETS.get(cfg.data.name)
    for i, peer in enumerate(cfg.peers):
        MODELS.get(peer.arch, key=f"peers.{i}.arch")
        problems = _optim_errors(cfg.peer_optim(i))
        if problems:
            key, message = problems[0]
            where = f"peers.{i}.optim" if key in peer.optim else "optim"
            raise ConfigError(f"{where}.{message}")
    names = [cfg.peer_name(i) for i in range(k)]
    dup = sorted({n for n in names if names.count(n) > 1})
    _check(
        not dup, f"peers: peer names must be unique, {dup} appear more than once (set peers.N.name)"
    )

    m = cfg.method
    _check(m.temperature > 0, f"method.temperature must be > 0, got {m.temperature}")
    _check(m.mimicry_weight >= 0, f"method.mimicry_weight must be >= 0, got {m.mimicry_weight}")
    _check(m.mimicry_rampup >= 0, f"method.mimicry_rampup must be >= 0, got {m.mimicry_rampup}")
    _check(0 <= m.alpha <= 1, f"method.alpha must be in [0, 1], got {m.alpha}")
    if m.name == "kd":
        _check(
            bool(m.teacher),
            "method.teacher: kd needs the run directory or checkpoint of a "
            "trained teacher, e.g. --set method.teacher=runs/teacher",
        )

    d = cfg.data
    _check(0 <= d.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    _check(0 < d.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    _check(
        0 < d.labelled_fraction <= 1,
        f"data.labelled_fraction must be in (0, 1], got {d.labelled_fraction}",
    )
    _check(0 < d.fraction <= 1, f"data.fraction must be in (0, 1], got {d.fraction}")
    _check(
        d.train_size is None or d.train_size >= 1,
        f"data.train_size must be >= 1 or null, got {d.train_size}",
    )
    _check(d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}")
    _check(d.eval_batch_size >= 1, f"data.eval_batch_size must be >= 1, got {d.eval_batch_size}")
    _check(d.crop_padding >= 0, f"data.crop_padding must be >= 0, got {d.crop_padding}")
    _check(
        d.image_size is None or d.image_size >= 1,
        f"data.image_size must be >= 1 or null, got {d.image_size}",
    )
    for key in ("image_height", "image_width"):
        value = getattr(d, key)
        _check(value is None or value >= 1, f"data.{key} must be >= 1 or null, got {value}")
    _check(
        (d.image_height is None) == (d.image_width is None),
        "data.image_height and data.image_width: set both (e.g. 256 and 128) or neither",
    )
    _check(
        d.pairs_per_class >= 1 and d.pairs_eval_per_class >= 1 and 2 <= d.pairs_classes <= 100,
        "data.pairs_per_class and data.pairs_eval_per_class must be >= 1 and "
        f"data.pairs_classes in [2, 100], got {d.pairs_per_class}, {d.pairs_eval_per_class}, "
        f"{d.pairs_classes}",
    )
    _check(0 <= d.label_noise < 1, f"data.label_noise must be in [0, 1), got {d.label_noise}")
    _check(
        d.label_noise == 0 or d.name == "digits-pairs",
        f"data.label_noise is implemented for digits-pairs only; set it to 0 for {d.name}",
    )
    _check(
        not d.download or d.root is not None,
        "data.download needs data.root, the folder to download into (--data-root PATH)",
    )

    t = cfg.train
    _check(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    _check(
        t.iterations is None or t.iterations >= 1,
        f"train.iterations must be >= 1 or null, got {t.iterations}",
    )
    _check(t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}")
    _check(
        t.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {t.checkpoint_every}"
    )
    _check(
        t.keep_checkpoints >= 0, f"train.keep_checkpoints must be >= 0, got {t.keep_checkpoints}"
    )
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda") or t.device == "mps",
        f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}",
    )
    _check(
        cfg.distributed.timeout_s > 0,
        f"distributed.timeout_s must be > 0 seconds, got {cfg.distributed.timeout_s}",
    )
