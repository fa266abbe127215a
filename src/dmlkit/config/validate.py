"""Checks of a config's values: ranges and combinations, each failing with the key and the fix."""

from __future__ import annotations

import re

from dmlkit.config.schema import Config, DataConfig, MethodConfig, OptimConfig
from dmlkit.errors import ConfigError, shown

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take this range
MAX_IMAGE_SIDE = 4096  # one 4096 x 4096 RGB image is 50 MB decoded
MIN_IMAGE_SIDE = 4  # the networks pool twice
MAX_CROP_PADDING = 128
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")


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
            f"betas must be two numbers in [0, 1), got {shown(opt.betas)}",
        ),
        ("gamma", 0 < opt.gamma <= 1, f"gamma must be in (0, 1], got {opt.gamma}"),
        ("step_size", opt.step_size > 0, f"step_size must be > 0, got {opt.step_size}"),
        (
            "milestones",
            opt.schedule != "multistep" or bool(opt.milestones),
            "milestones: the multistep schedule needs milestones (epochs), e.g. [60, 120]",
        ),
        (
            "warmup_epochs",
            opt.warmup_epochs >= 0,
            f"warmup_epochs must be >= 0, got {opt.warmup_epochs}",
        ),
        (
            "warmup_factor",
            0 <= opt.warmup_factor <= 1,
            f"warmup_factor must be in [0, 1], got {opt.warmup_factor}",
        ),
        ("pct_start", 0 < opt.pct_start < 1, f"pct_start must be in (0, 1), got {opt.pct_start}"),
        ("div_factor", opt.div_factor >= 1, f"div_factor must be >= 1, got {opt.div_factor}"),
        (
            "final_div_factor",
            opt.final_div_factor >= 1,
            f"final_div_factor must be >= 1, got {opt.final_div_factor}",
        ),
    ]
    return [(key, message) for key, ok, message in checks if not ok]


def validate(cfg: Config) -> None:
    """Range and consistency checks; raises ConfigError naming the key and the fix.

    Registered names (method, dataset, models) are checked where the registries are, by the
    layer that builds them (:func:`dmlkit.engine.names.check_names`).
    """
    k = len(cfg.peers)
    _check(0 <= cfg.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {shown(cfg.seed)}")
    for i, peer in enumerate(cfg.peers):
        _check(
            peer.seed is None or 0 <= peer.seed <= MAX_SEED,
            f"peers.{i}.seed must be in [0, {MAX_SEED}] or null, got {shown(peer.seed)}",
        )
    _check(
        k >= 1, "peers: a cohort needs at least 1 peer, got 0 (e.g. peers: [small_cnn, small_cnn])"
    )
    for i, peer in enumerate(cfg.peers):
        problems = _optim_errors(cfg.peer_optim(i))
        if problems:
            key, message = problems[0]
            where = f"peers.{i}.optim" if key in peer.optim else "optim"
            raise ConfigError(f"{where}.{message}")
    names = [cfg.peer_name(i) for i in range(k)]
    dup = sorted({n for n in names if names.count(n) > 1})
    _check(
        not dup,
        f"peers: peer names must be unique, {shown(dup)} appear more than once (set peers.N.name)",
    )
    _check_method(cfg.method)
    _check_data(cfg.data)
    _check_train(cfg)


#: The lowest ``method.temperature`` accepted.
MIN_TEMPERATURE = 0.05


def _check_method(m: MethodConfig) -> None:
    _check(m.temperature > 0, f"method.temperature must be > 0, got {m.temperature}")
    # Below this the softened distributions are one-hot in float32 and the T^2-scaled mimicry
    # gradient vanishes: DML silently becomes independent training.
    _check(
        m.temperature >= MIN_TEMPERATURE,
        f"method.temperature={m.temperature} is below {MIN_TEMPERATURE}: the peers' softened "
        f"outputs become one-hot and the mimicry term vanishes (independent training in "
        f"disguise); use a temperature >= {MIN_TEMPERATURE} (the paper: 1)",
    )
    _check(m.mimicry_weight >= 0, f"method.mimicry_weight must be >= 0, got {m.mimicry_weight}")
    _check(m.mimicry_rampup >= 0, f"method.mimicry_rampup must be >= 0, got {m.mimicry_rampup}")
    _check(0 <= m.alpha <= 1, f"method.alpha must be in [0, 1], got {m.alpha}")
    _check(0 <= m.ema_decay < 1, f"method.ema_decay must be in [0, 1), got {m.ema_decay}")
    if m.name == "kd":
        _check(
            bool(m.teacher),
            "method.teacher: kd needs the run directory or checkpoint of a "
            "trained teacher, e.g. --set method.teacher=runs/teacher",
        )


def _check_data(d: DataConfig) -> None:
    _check(0 <= d.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    _check(0 < d.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    _check(
        0 < d.labelled_fraction <= 1,
        f"data.labelled_fraction must be in (0, 1], got {d.labelled_fraction}",
    )
    _check(0 < d.fraction <= 1, f"data.fraction must be in (0, 1], got {d.fraction}")
    _check(
        d.channels in (None, 1, 3),
        f"data.channels must be 1, 3 or null (as the images are), got {d.channels}",
    )
    _check(
        d.train_size is None or d.train_size >= 1,
        f"data.train_size must be >= 1 or null, got {d.train_size}",
    )
    _check(d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}")
    _check(d.eval_batch_size >= 1, f"data.eval_batch_size must be >= 1, got {d.eval_batch_size}")
    _check(
        0 <= d.split_seed <= MAX_SEED,
        f"data.split_seed must be in [0, {MAX_SEED}], got {shown(d.split_seed)}",
    )
    _check(
        0 <= d.crop_padding <= MAX_CROP_PADDING,
        f"data.crop_padding must be in [0, {MAX_CROP_PADDING}] pixels, got {shown(d.crop_padding)}",
    )
    for key in ("image_size", "image_height", "image_width"):
        value = getattr(d, key)
        _check(
            value is None or MIN_IMAGE_SIDE <= value <= MAX_IMAGE_SIDE,
            f"data.{key} must be in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}] pixels or null, "
            f"got {shown(value)}",
        )
    _check(
        (d.image_height is None) == (d.image_width is None),
        "data.image_height and data.image_width: set both (e.g. 256 and 128) or neither",
    )
    _check(d.memory_limit_mb >= 0, f"data.memory_limit_mb must be >= 0, got {d.memory_limit_mb}")
    _check(
        d.num_workers is None or d.num_workers >= 0,
        f"data.num_workers must be >= 0 or null, got {d.num_workers}",
    )
    rrc = d.random_resized_crop
    _check(
        rrc is None or (len(rrc) == 2 and 0 < rrc[0] <= rrc[1] <= 1),
        f"data.random_resized_crop must be [min, max] with 0 < min <= max <= 1, got {rrc}",
    )
    for key in ("mean", "std"):
        value = getattr(d, key)
        _check(
            value is None or (len(value) >= 1 and (key == "mean" or min(value) > 0)),
            f"data.{key} must be a list of per-channel values (std > 0) or null, got {value}",
        )
    _check(
        (d.mean is None) == (d.std is None) and (d.mean is None or len(d.mean) == len(d.std)),
        "data.mean and data.std: give both, one value per channel (e.g. [0.5, 0.5, 0.5]), "
        "or neither",
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
    _check_text(d)


def _check_text(d: DataConfig) -> None:
    t = d.text
    _check(
        2 <= t.max_length <= 1_000_000,
        f"data.text.max_length must be in [2, 1000000] tokens, got {shown(t.max_length)}",
    )
    _check(
        300 <= t.vocab_size <= 1_000_000,
        f"data.text.vocab_size must be in [300, 1000000] (bpe: 256 bytes + specials + merges), "
        f"got {shown(t.vocab_size)}",
    )
    _check(bool(t.tokenizer), "data.text.tokenizer: give byte, bpe or a tokenizer folder")
    _check(bool(t.text_field), "data.text.text_field: give the name of the text field")
    _check(bool(t.label_field), "data.text.label_field: give the name of the label field")
    for key in ("stdlib_classes", "snippet_lines", "snippets_per_class", "lm_blocks"):
        value = getattr(t, key)
        _check(value >= 1, f"data.text.{key} must be >= 1, got {shown(value)}")
    _check(
        t.stdlib_classes >= 2 and (t.stdlib_packages is None or len(t.stdlib_packages) >= 2),
        "data.text.stdlib_classes / stdlib_packages: a classification needs at least 2 classes",
    )


def _check_train(cfg: Config) -> None:
    t = cfg.train
    _check(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    _check(
        t.iterations is None or t.iterations >= 1,
        f"train.iterations must be >= 1 or null, got {t.iterations}",
    )
    _check(t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}")
    _check(t.test_every >= 0, f"train.test_every must be >= 0 (0: never), got {t.test_every}")
    _check(t.log_every >= 0, f"train.log_every must be >= 0 (0: off), got {t.log_every}")
    _check(
        t.threads == "auto" or t.threads >= 1,
        f"train.threads must be auto or >= 1, got {t.threads}",
    )
    _check(
        t.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {t.checkpoint_every}"
    )
    _check(
        t.checkpoint_every_steps >= 0,
        f"train.checkpoint_every_steps must be >= 0 (0: at epoch ends only), got "
        f"{t.checkpoint_every_steps}",
    )
    _check(
        t.keep_checkpoints >= 0, f"train.keep_checkpoints must be >= 0, got {t.keep_checkpoints}"
    )
    _check(
        bool(_DEVICE.match(t.device)),
        f"train.device must be auto, cpu, cuda, cuda:N or mps, got {shown(t.device)}",
    )
    _check(
        not cfg.method.member_views or cfg.distributed.mode == "none",
        "method.member_views=true runs in one process; set distributed.mode=none or "
        "method.member_views=false",
    )
    _check(
        cfg.distributed.timeout_s > 0,
        f"distributed.timeout_s must be > 0 seconds, got {cfg.distributed.timeout_s}",
    )
