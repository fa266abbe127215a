"""Peers from the libraries users already use, named in configs like the built-in ones.

``peers[].arch`` may be, besides a registered name:

* ``timm:NAME`` - any ``timm.create_model`` name (``timm:resnet18``), built with
  ``num_classes`` and ``in_chans`` from the data and ``peers[].kwargs`` passed through;
* ``torchvision:NAME`` - any ``torchvision.models.get_model`` name (3-channel images);
* ``hf:PATH_OR_NAME`` / ``hf-config:TYPE`` - Hugging Face models (:mod:`dmlkit.models.hf`);
* ``package.module:function`` - an import path to your own constructor. It is called with the
  ``peers[].kwargs``, plus ``num_classes``, ``in_channels`` and ``image_size`` for those of
  them its signature takes (or all three if it takes ``**kwargs``).

Each is rebuilt from the run's own config by ``dml eval``, ``dml analyze`` and the kd teacher,
like any peer. ``kwargs.pretrained: PATH`` loads weights from a local file (``.safetensors``,
``.pt``/``.pth``/``.bin`` holding a state_dict): nothing is ever downloaded. Weights whose shape
differs from the model's (the classifier of a 1000-class checkpoint) are left at their fresh
initialisation; any other mismatch is an error naming the file.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmlkit.errors import ConfigError, UserError
from dmlkit.models.hf import build_hf, check_hf, is_hf

PREFIXES = ("timm:", "torchvision:")
#: ``instance:package.module.Class``: the arch recorded for a module given to dmlkit.fit.
INSTANCE = "instance"


def is_external(arch: str) -> bool:
    """Whether ``arch`` names a timm / torchvision model or an import path (has a ``:``)."""
    return ":" in arch


def _import_path(arch: str, key: str) -> Callable[..., nn.Module]:
    """The callable at ``package.module:function`` (the current folder is searched too)."""
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: {arch!r} is not an import path; write package.module:function")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # The `dml` script does not put the current folder on sys.path, as `python` does.
            if exc.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module: one line
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{key}: cannot import {module_name!r} for arch {arch!r} ({type(exc).__name__}: "
            f"{detail[:160]}); check the import path and that the module is on PYTHONPATH"
        ) from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(
                f"{key}: module {module_name!r} has no {attr!r} (arch {arch!r}); "
                f"name a function or class that returns an nn.Module"
            )
    if not callable(obj):
        raise ConfigError(f"{key}: {arch!r} is not callable; name a model constructor")
    return obj


def check_arch(arch: str, key: str) -> None:
    """Fail now (before any work) if an external ``arch`` cannot be built; no model is built."""
    kind, _, name = arch.partition(":")
    if kind == INSTANCE:
        return  # a module given to dmlkit.fit: named, not buildable (see build_external)
    if is_hf(arch):  # hf: / hf-config: (dmlkit.models.hf)
        return check_hf(arch, key)
    if kind == "timm":
        timm = _require("timm", arch, key)
        if not timm.is_model(name):
            raise ConfigError(
                f"{key}: timm has no model {name!r}; list them with "
                f"python -c \"import timm; print(timm.list_models('*{name[:4]}*'))\""
            )
    elif kind == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ConfigError(
                f"{key}: torchvision has no model {name!r}; list them with "
                f'python -c "import torchvision; print(torchvision.models.list_models())"'
            )
    else:
        _import_path(arch, key)


def _require(package: str, arch: str, key: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(
            f"{key}: arch {arch!r} needs the {package} package; pip install {package}"
        ) from None


def build_external(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a ``timm:`` / ``torchvision:`` / import-path model (see the module docstring)."""
    key = "peers[].arch"
    pretrained = kwargs.pop("pretrained", None)
    kind, _, name = arch.partition(":")
    if kind == INSTANCE:
        raise UserError(
            f"{key}: {name} is a module that was given to dmlkit.fit as an instance, so it cannot "
            f"be rebuilt from the config; create it in Python and load the weights with "
            f"dmlkit.load_peers(run_dir, [modules])"
        )
    if is_hf(arch):  # hf: / hf-config: (dmlkit.models.hf); their kwargs are theirs
        model = build_hf(arch, num_classes, **kwargs)
        if pretrained is not None:
            load_pretrained(model, pretrained, arch)
        return model
    try:
        if kind == "timm":
            timm = _require("timm", arch, key)
            check_arch(arch, key)
            model = timm.create_model(
                name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
            )
        elif kind == "torchvision":
            import torchvision

            check_arch(arch, key)
            if in_channels != 3:
                raise ConfigError(
                    f"{key}: {arch} takes 3-channel images, the data has {in_channels}; set "
                    f"data.channels: 3 (repeats the gray channel), or use a timm: model "
                    f"(in_chans follows the data)"
                )
            model = torchvision.models.get_model(
                name, weights=None, num_classes=num_classes, **kwargs
            )
        else:
            fn = _import_path(arch, key)
            model = fn(**_constructor_kwargs(fn, num_classes, in_channels, image_size), **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"peers[].kwargs for {arch!r}: {str(exc).splitlines()[0][:160]}; check the "
            f"constructor's arguments"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}: {arch!r} returned {type(model).__name__}, not an nn.Module")
    _materialise_lazy(model, arch, in_channels, image_size)
    if pretrained is not None:
        load_pretrained(model, pretrained, arch)
    return model


def _materialise_lazy(
    model: nn.Module, arch: str, in_channels: int, image_size: tuple[int, int] | None
) -> None:
    """Give a model's lazy modules (``nn.LazyLinear``...) their shapes with one dummy batch
    ``[2, C, H, W]`` of zeros, in eval mode: optimizers, channels-last and checkpoints need
    real parameters."""
    from torch.nn.parameter import is_lazy

    if not any(is_lazy(p) for p in model.parameters()):
        return
    if image_size is None:
        raise ConfigError(
            f"peers[].arch {arch!r} has lazy modules and the data's image size is unknown; "
            f"give the layers their input sizes"
        )
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, in_channels, *image_size))
    except Exception as exc:  # noqa: BLE001 - the user's forward: one line naming it
        raise ConfigError(
            f"peers[].arch {arch!r} has lazy modules and fails on a dummy batch "
            f"[2, {in_channels}, {image_size[0]}, {image_size[1]}] ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}); give the "
            f"layers their input sizes"
        ) from None
    finally:
        model.train(was)


def _constructor_kwargs(
    fn: Callable[..., Any], num_classes: int, in_channels: int, image_size: Any
) -> dict[str, Any]:
    """The data-dependent arguments ``fn`` accepts (all of them if it takes ``**kwargs``)."""
    offered = {"num_classes": num_classes, "in_channels": in_channels}
    if image_size is not None:
        offered["image_size"] = tuple(image_size)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: offer the essentials
        return {"num_classes": num_classes}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    return {k: v for k, v in offered.items() if k in params}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local ``.safetensors`` or torch file (safe loading, no code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"pretrained: {path} is not a file; give a local weights file (.safetensors or "
            f".pt state_dict): nothing is downloaded"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file, whatever the reason
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise UserError(
            f"pretrained: cannot read {path} ({detail}); give a state_dict file"
        ) from None
    for wrapper in ("state_dict", "model"):  # common checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"pretrained: {path} does not hold a state_dict of tensors")
    return state


def load_pretrained(model: nn.Module, path: str | Path, arch: str) -> list[str]:
    """Load the weights in ``path`` into ``model``; returns the keys left fresh (shape differs).

    Raises:
        UserError: the file's keys are not the model's (another architecture).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    fresh = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        bad = (unexpected or missing)[0]
        raise UserError(
            f"pretrained: {path} does not fit {arch} ({len(unexpected)} unexpected keys, "
            f"{len(missing)} missing, e.g. {bad!r}); give weights of the same architecture"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)
    return fresh
