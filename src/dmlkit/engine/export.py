"""A trained run for use without dmlkit: the one writer behind ``dml export`` and
:func:`dmlkit.export_peer`.

Both choose a peer with :func:`dmlkit.engine.predict.peer_index` (its 0-based index or its
name) and write weights with :func:`save_weights` (a plain state dict: ``.safetensors`` by the
file's suffix, else a torch ``.pt``), so the same peer of the same run gives the same bytes
either way. ``dml export`` adds ``model.json`` and a ``torch.export`` program (:func:`export`).
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from dmlkit.engine.checkpoint import atomic_write_bytes_with, atomic_write_text, load_checkpoint
from dmlkit.engine.predict import Predictor, peer_index
from dmlkit.errors import UserError


def have_safetensors() -> bool:
    """Whether the (optional) safetensors package is installed."""
    return importlib.util.find_spec("safetensors") is not None


def save_weights(state: Mapping[str, Tensor], dest: str | Path) -> Path:
    """Write a state dict ``{name: tensor}`` as ``dest``: ``.safetensors`` by its suffix, else
    ``torch.save``; tensors on the CPU, contiguous. Written to a temporary file and renamed, so
    a failure leaves no partial file. Loaded back with ``safetensors.torch.load_file(dest)`` or
    ``torch.load(dest, weights_only=True)``, no dmlkit needed."""
    dest = Path(dest)
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if dest.suffix == ".safetensors":
        if not have_safetensors():
            raise UserError(
                f"{dest}: writing .safetensors needs the safetensors package "
                f"(pip install safetensors); or name the file .pt"
            )
        from safetensors.torch import save

        data = save(weights)
    else:
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        data = buffer.getvalue()
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes_with(dest, lambda f: f.write(data))
    return dest


def export_peer(path: str | Path, peer: int | str, dest: str | Path) -> Path:
    """One peer's weights straight from a checkpoint (no network built) into ``dest``
    (:func:`save_weights`). ``path``: a run directory (its newest checkpoint) or a checkpoint."""
    state = load_checkpoint(path)
    index = peer_index([p["name"] for p in state["peers"]], peer, path)
    return save_weights(state["cohort"]["models"][index], dest)


def export(predictor: Predictor, out: str | Path) -> list[Path]:
    """Write the predictor for use without dmlkit into folder ``out``.

    ``weights.safetensors`` (``weights.pt`` without the safetensors package): the state dict;
    ``model.json``: class names, preprocessing, and the peers' architecture names and kwargs;
    ``model.pt2``: the network as a ``torch.export`` program (loaded with
    ``torch.export.load(path).module()``, no dmlkit needed), when the model can be exported.
    Returns the files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = predictor.model.cpu().eval()
    suffix = ".safetensors" if have_safetensors() else ".pt"  # safetensors is optional
    written = [save_weights(model.state_dict(), out / f"weights{suffix}")]
    p = predictor.preprocess
    example = torch.zeros(2, p["in_channels"], *p["image_size"])  # 2: not specialised to 1
    program = None
    try:
        batch = torch.export.Dim("batch")  # any batch size
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, out / "model.pt2")
        written.append(out / "model.pt2")
    except Exception as exc:  # noqa: BLE001  (any model torch.export cannot trace: say so)
        program = f"not exported: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    meta = {
        "which": predictor.which,
        "output": "log-probabilities" if predictor.which == "ensemble" else "logits",
        "classes": predictor.classes,
        "preprocess": p,
        "peers": predictor.peers,
        "program": "model.pt2" if not isinstance(program, str) else program,
    }
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2))
    written.append(out / "model.json")
    return written
