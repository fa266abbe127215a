"""Hugging Face ``transformers`` models as peers: ``hf:PATH_OR_NAME`` and ``hf-config:TYPE``.

* ``hf:PATH_OR_NAME`` - a model folder (``save_pretrained``'s) or a name already in the local
  Hugging Face cache, built with the Auto class of the task and its weights; nothing is
  downloaded (``local_files_only=True``).
* ``hf-config:TYPE`` - a ``transformers`` model type (``bert``, ``gpt2``, ``llama``, ...) with
  random weights from ``AutoConfig.for_model(TYPE, **kwargs)``: for tests and small runs, e.g.
  ``{arch: "hf-config:gpt2", kwargs: {task: causal-lm, n_layer: 2, n_embd: 64, n_head: 2}}``.

``peers[].kwargs`` keys read here (the others go to the model's config):

* ``task``: ``sequence-classification`` (``num_labels`` = the data's classes) or ``causal-lm``
  (``vocab_size`` = the data's vocabulary for ``hf-config:``). Default: ``causal-lm`` for an
  ``hf:`` folder whose config names a causal-LM architecture, else ``sequence-classification``.
* ``trust_remote_code``: passed to ``transformers`` only when the user's own config sets it
  (never by default): a model folder's code then runs.

The peer's initial weights come from its seed (``PeerSpec.build`` seeds the generator), so two
``hf-config:`` peers with different seeds differ and a run is reproducible.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from dmlkit.errors import ConfigError, UserError

PREFIXES = ("hf:", "hf-config:")
TASKS = ("sequence-classification", "causal-lm")
#: peers[].kwargs that are ours, not the model config's
OWN_KEYS = ("task", "trust_remote_code")
#: what the trainer adds to an hf peer's kwargs from a text dataset (:func:`data_kwargs`)
DATA_KEYS = ("task", "vocab_size", "pad_token_id", "eos_token_id", "bos_token_id")


def is_hf(arch: str) -> bool:
    """Whether ``arch`` names a Hugging Face model (``hf:`` / ``hf-config:``)."""
    return arch.startswith(PREFIXES)


def _transformers(arch: str, key: str) -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(
            f"{key}: arch {arch!r} needs the transformers package; "
            f"pip install 'dmlkit[transformers]'"
        ) from None


def _auto_class(transformers: Any, task: str) -> Any:
    if task == "causal-lm":
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForSequenceClassification


def default_task(config: Any) -> str:
    """``causal-lm`` when a config names a causal-LM architecture, else sequence-classification."""
    names = getattr(config, "architectures", None) or []
    causal = any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names)
    return "causal-lm" if causal else "sequence-classification"


def _task(kwargs: dict[str, Any], config: Any, arch: str, key: str) -> str:
    task = kwargs.get("task") or default_task(config)
    if task not in TASKS:
        raise ConfigError(f"{key}: task {task!r} for {arch!r}; use one of {', '.join(TASKS)}")
    return task


def _local_config(transformers: Any, name: str, arch: str, key: str, trust: bool) -> Any:
    try:
        return transformers.AutoConfig.from_pretrained(
            name, local_files_only=True, trust_remote_code=trust
        )
    except (OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        where = "folder" if Path(name).expanduser().exists() else "local folder or cached name"
        raise ConfigError(
            f"{key}: cannot load {arch!r} as a {where} ({detail}); give a folder written by "
            f"save_pretrained, or a name already in the Hugging Face cache (nothing is "
            f"downloaded)"
        ) from None


def check_hf(arch: str, key: str) -> None:
    """Fail now (before any work) if an ``hf:`` / ``hf-config:`` arch cannot be built."""
    transformers = _transformers(arch, key)
    kind, _, name = arch.partition(":")
    if not name:
        raise ConfigError(f"{key}: {arch!r} names no model; write {kind}:NAME")
    if kind == "hf-config":
        if name not in transformers.CONFIG_MAPPING:
            raise ConfigError(
                f"{key}: transformers has no model type {name!r} (e.g. bert, gpt2, llama); "
                f"see transformers.CONFIG_MAPPING"
            )
        return
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{key}: {folder} has no config.json; give a folder written by save_pretrained"
            )
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ConfigError(
            f"{key}: {arch!r} is neither a folder nor a model in the local Hugging Face cache "
            f"(nothing is downloaded); give a folder written by save_pretrained"
        )


def build_hf(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build an ``hf:`` / ``hf-config:`` peer (see the module docstring).

    Args:
        arch: ``hf:PATH_OR_NAME`` or ``hf-config:TYPE``.
        num_classes: the data's classes (sequence classification) or vocabulary (causal LM).
        kwargs: ``task``, ``trust_remote_code`` and, for ``hf-config:``, config fields.
    """
    key = "peers[].arch"
    transformers = _transformers(arch, key)
    check_hf(arch, key)
    kind, _, name = arch.partition(":")
    trust = bool(kwargs.get("trust_remote_code", False))  # only ever from the user's config
    fields = {k: v for k, v in kwargs.items() if k not in OWN_KEYS}
    try:
        if kind == "hf-config":
            config = transformers.AutoConfig.for_model(name, **fields)
            task = _task(kwargs, config, arch, key)
            if task == "causal-lm":
                if "vocab_size" not in fields:
                    config.vocab_size = num_classes
            else:
                config.num_labels = num_classes
            _prepare(config, task)
            model = _auto_class(transformers, task).from_config(config, trust_remote_code=trust)
        else:
            config = _local_config(transformers, name, arch, key, trust)
            task = _task(kwargs, config, arch, key)
            for field, value in fields.items():
                setattr(config, field, value)
            if task != "causal-lm":  # a new classification head for the data's classes
                config.num_labels = num_classes
            _prepare(config, task)
            model = _auto_class(transformers, task).from_pretrained(
                name,
                config=config,
                local_files_only=True,
                trust_remote_code=trust,
                ignore_mismatched_sizes=True,  # a head of another size: fresh, not an error
            )
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"peers[].kwargs for {arch!r}: {str(exc).strip().splitlines()[0][:160]}; check "
            f"the model config's fields"
        ) from None
    except OSError as exc:
        raise UserError(f"{arch}: {str(exc).strip().splitlines()[0][:200]}") from None
    if task == "causal-lm" and model.get_output_embeddings().weight.shape[0] < num_classes:
        raise ConfigError(
            f"{key}: {arch!r} has a vocabulary of "
            f"{model.get_output_embeddings().weight.shape[0]} tokens, the data's tokenizer "
            f"{num_classes}; use the model's own tokenizer or a model of that vocabulary"
        )
    return model


def _prepare(config: Any, task: str) -> None:
    """Config settings for training with dmlkit's losses."""
    # No key/value cache in training: it is memory the loss never reads.
    if hasattr(config, "use_cache"):
        config.use_cache = False
    # Sequence classification by a decoder reads the last non-padding token, which needs a pad
    # id (0 unless the user's config sets one; the data's collate pads with the tokenizer's).
    if task == "sequence-classification" and getattr(config, "pad_token_id", 0) is None:
        config.pad_token_id = 0


def data_kwargs(
    arch: str, kwargs: dict[str, Any], task: str, text: Any, image_size: Any = (0, 0)
) -> dict[str, Any]:
    """What a text dataset tells an ``hf:`` / ``hf-config:`` peer, unless its kwargs say it.

    Args:
        arch: the peer's arch (other archs get nothing).
        kwargs: the peer's ``peers[].kwargs``.
        task: the data's task (``classification`` or ``causal-lm``).
        text: the data's text facts (``vocab_size``, ``pad_id``), or None.
        image_size: the data's image size (``(0, 0)``: not images).

    Returns:
        The kwargs to add: ``task``; for ``hf-config:`` the tokenizer's ``vocab_size`` and the
        pad id (a decoder classifies a sequence by its last non-padding token).
    """
    if not is_hf(arch):
        return {}
    if tuple(image_size or (0, 0)) != (0, 0):
        raise ConfigError(
            f"peers[].arch: {arch} takes token ids, but the data are images; use a text dataset "
            f"(data.name: text, text-lm, stdlib-modules, stdlib-lm) or an image model"
        )
    extra: dict[str, Any] = {}
    if "task" not in kwargs:
        extra["task"] = "causal-lm" if task == "causal-lm" else "sequence-classification"
    if text is not None and arch.startswith("hf-config:"):
        if extra.get("task", kwargs.get("task")) != "causal-lm":
            extra.setdefault("vocab_size", int(text.vocab_size))
        extra["pad_token_id"] = int(text.pad_id)
        eos = getattr(text.tokenizer, "eos_token_id", None)
        if eos is not None:  # not the model type's default (GPT-2's 50256), out of vocabulary
            extra["eos_token_id"] = extra["bos_token_id"] = int(eos)
    return {k: v for k, v in extra.items() if k not in kwargs}


def data_keys(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The :data:`DATA_KEYS` of an hf peer's kwargs (a checkpoint's spec against its config)."""
    return {k: kwargs[k] for k in DATA_KEYS if k in kwargs} if is_hf(arch) else {}
