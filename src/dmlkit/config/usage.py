"""Which ``data.*`` keys each built-in dataset reads, to say when a set key does nothing.

``--set data.root=/elsewhere`` with the bundled digits used to train on digits silently. A key
that only some datasets read, set away from its default for a dataset that ignores it, now
gets one warning line (the run still starts: the same config may serve several datasets).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from dmlkit.config.schema import DataConfig

TEXT_DATASETS = ("text", "text-lm", "stdlib-modules", "stdlib-lm")
# key -> the built-in datasets that read it; keys every dataset reads are not listed, nor
# data.strict (a safety switch `--strict-data` sets for a whole grid).
_READ_BY: dict[str, tuple[str, ...]] = {
    "root": ("cifar100", "imagefolder", "market1501", *("text", "text-lm")),
    "download": ("cifar100",),
    "test_fraction": ("digits", "digits-pairs", "imagefolder", *TEXT_DATASETS),
    "image_size": ("imagefolder", "market1501"),
    "image_height": ("market1501",),
    "image_width": ("market1501",),
    "reid_distance": ("market1501",),
    "reid_normalize": ("market1501",),
    "multi_query": ("market1501",),
    "pairs_per_class": ("digits-pairs",),
    "pairs_eval_per_class": ("digits-pairs",),
    "pairs_classes": ("digits-pairs",),
    "label_noise": ("digits-pairs",),
    "channels": ("cifar100", "digits", "digits-pairs", "imagefolder"),
    # data.text.* (dmlkit.data.text_files, stdlib_text)
    "text.format": ("text",),
    "text.text_field": ("text",),
    "text.label_field": ("text",),
    "text.tokenizer": TEXT_DATASETS,
    "text.vocab_size": TEXT_DATASETS,
    "text.max_length": TEXT_DATASETS,
    "text.padding": TEXT_DATASETS,
    "text.stdlib_packages": ("stdlib-modules", "stdlib-lm"),
    "text.stdlib_classes": ("stdlib-modules", "stdlib-lm"),
    "text.snippet_lines": ("stdlib-modules",),
    "text.snippets_per_class": ("stdlib-modules",),
    "text.lm_blocks": ("stdlib-lm",),
}
BUILTIN_DATASETS = ("cifar100", "digits", "digits-pairs", "imagefolder", "market1501")
BUILTIN_DATASETS += TEXT_DATASETS


def unused_data_keys(data: DataConfig) -> list[str]:
    """One message per ``data.*`` key set away from its default that ``data.name`` never reads.

    Datasets registered outside dmlkit are not judged (their keys are unknown here).
    """
    if data.name not in BUILTIN_DATASETS:
        return []
    defaults = DataConfig()
    out = []
    for key, readers in _READ_BY.items():
        value = _get(data, key)
        if data.name not in readers and value != _get(defaults, key):
            out.append(
                f"data.{key}={value} is not used by the {data.name} dataset (only by "
                f"{', '.join(readers)}); remove it, or check data.name"
            )
    return out


def _get(data: DataConfig, key: str) -> object:
    value: object = data
    for part in key.split("."):  # "text.tokenizer": data.text.tokenizer
        value = getattr(value, part)
    return value


def resolved_root(data: DataConfig) -> DataConfig:
    """``data`` with ``root`` made absolute, so the run can be evaluated from any folder."""
    if data.root is None:
        return data
    return dataclasses.replace(data, root=str(Path(data.root).expanduser().resolve()))


def resolve_threads(
    setting: str | int,
    env: dict[str, str] | None = None,
    cpus: int | None = None,
    load: float | None = None,
) -> int:
    """The number of CPU threads for ``train.threads`` (``"auto"`` or a count).

    auto: ``OMP_NUM_THREADS`` when the environment sets it (the user's choice), else the CPUs
    this process may use minus the 1-minute load average already on them, at least 1. On a
    2-core machine with two other jobs running, torch's default (one thread per core) made a
    3-epoch digits run 5x slower than one thread: threads that wait for each other on cores
    that other jobs hold.
    """
    if setting != "auto":
        return int(setting)
    env = os.environ if env is None else env
    given = env.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) >= 1:
        return int(given)
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus or 1, round((cpus or 1) - load)))
