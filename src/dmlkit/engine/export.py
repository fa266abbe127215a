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
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from dmlkit.engine.checkpoint import atomic_write_bytes_with, load_checkpoint
from dmlkit.engine.faults import maybe_enospc
from dmlkit.engine.outputs import check_out_folder, check_writable
from dmlkit.engine.predict import Predictor, peer_index
from dmlkit.errors import UserError, write_advice

#: The files ``dml export`` writes into its folder (one of the two weights files).
EXPORT_FILES = ("weights.safetensors", "weights.pt", "model.pt2", "model.json")


def have_safetensors() -> bool:
    """Whether the (optional) safetensors package is installed."""
    return importlib.util.find_spec("safetensors") is not None


def save_weights(state: Mapping[str, Tensor], dest: str | Path) -> Path:
    """Write a state dict ``{name: tensor}`` as ``dest``: ``.safetensors`` by its suffix, else
    ``torch.save``; tensors on the CPU, contiguous. Written to a temporary file and renamed, so
    a failure leaves no partial file. Loaded back with ``safetensors.torch.load_file(dest)`` or
    ``torch.load(dest, weights_only=True)``, no dmlkit needed."""
    dest = Path(dest)
    data = weights_bytes(state, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes_with(dest, lambda f: f.write(data))
    return dest


def weights_bytes(state: Mapping[str, Tensor], dest: Path) -> bytes:
    """The bytes :func:`save_weights` writes for ``dest`` (its suffix picks the format)."""
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
    return data


def _ours_json(path: Path, keys: tuple[str, ...]) -> bool:
    """Whether ``path`` is a JSON object with ``keys`` (a file dmlkit wrote), read safely."""
    try:
        if path.stat().st_size > 64 << 20:
            return False
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(k in meta for k in keys)


def check_export_dir(out: str | Path, force: bool = False) -> Path:
    """Refuse, before any work, an ``--out`` folder that cannot take ``dml export``'s files.

    A folder whose ``model.json`` dmlkit wrote is an earlier export: replaced. Any other file
    of the names :data:`EXPORT_FILES` is not replaced without ``force``.
    """
    out = Path(out)
    # a file named ``out`` passes the two checks below (nothing is under it) and is named next
    ours = _ours_json(out / "model.json", ("which", "preprocess", "peers"))
    theirs = [n for n in EXPORT_FILES if (out / n).exists() or (out / n).is_symlink()]
    if theirs and not ours and not force:
        raise UserError(
            f"--out {out}: {theirs[0]} is there and was not written by dml export; choose "
            f"another folder, or add --force to replace it"
        )
    odd = [n for n in theirs if not (out / n).is_file() or (out / n).is_symlink()]
    if odd:
        raise UserError(f"--out {out}: {odd[0]} is not a plain file; remove it or choose another")
    check_out_folder(out, "--out", holds="the model files")
    return out


def check_output_file(
    path: str | Path, force: bool, ours: bool, inputs: list[Path] = (), flag: str = "--out"
) -> Path:
    """Refuse, before any work, an output file that would replace what dmlkit did not write.

    Args:
        path: the file to write.
        force: replace an existing file that is not ``ours`` (never one of ``inputs``).
        ours: whether an existing ``path`` holds an earlier output of the same command.
        inputs: files the command reads (an output must not replace them, even with force).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() or path.is_symlink():
        if not path.is_file() or path.is_symlink():
            raise UserError(f"{flag} {path}: is not a plain file; choose another path")
        if any(path.resolve() == Path(i).resolve() for i in inputs):
            raise UserError(f"{flag} {path}: is one of the inputs; choose another path")
        if not ours and not force:
            raise UserError(
                f"{flag} {path}: exists and was not written by this command; choose another "
                f"path, or add --force to replace it"
            )
    if not path.parent.is_dir():
        raise UserError(
            f"{flag} {path}: cannot write there (No such folder: {path.parent}); create it or "
            f"choose another path"
        )
    check_writable(path.parent, flag)
    return path


def write_files(files: Mapping[Path, bytes], flag: str = "--out") -> list[Path]:
    """Write every file whole or none: each to a temporary name first, renamed once all are
    written. A full disk or a read-only folder is one line (UserError), nothing left behind."""
    staged: list[tuple[Path, Path]] = []
    try:
        for dest, data in files.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            staged.append((Path(tmp), dest))
            with os.fdopen(fd, "wb") as f:
                maybe_enospc("enospc-in-export", 1, dest)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, dest in staged:
            os.replace(tmp, dest)
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        where = Path(exc.filename) if exc.filename else next(iter(files))
        raise UserError(
            f"{flag}: cannot write {where} ({exc.strerror or exc}); "
            f"{write_advice(exc, where.parent)}"
        ) from None
    return list(files)


def export_peer(path: str | Path, peer: int | str, dest: str | Path) -> Path:
    """One peer's weights straight from a checkpoint (no network built) into ``dest``
    (:func:`save_weights`). ``path``: a run directory (its newest checkpoint) or a checkpoint."""
    state = load_checkpoint(path)
    index = peer_index([p["name"] for p in state["peers"]], peer, path)
    return save_weights(state["cohort"]["models"][index], dest)


def export(predictor: Predictor, out: str | Path, force: bool = False) -> list[Path]:
    """Write the predictor for use without dmlkit into folder ``out``.

    ``weights.safetensors`` (``weights.pt`` without the safetensors package): the state dict;
    ``model.json``: class names, preprocessing, and the peers' architecture names and kwargs;
    ``model.pt2``: the network as a ``torch.export`` program (loaded with
    ``torch.export.load(path).module()``, no dmlkit needed), when the model can be exported.
    Returns the files written. Every file is written whole or not at all (all renamed into
    place once all are written); files of an earlier export there are replaced, any other
    file of those names only with ``force`` (:func:`check_export_dir`).
    """
    out = check_export_dir(out, force)
    earlier = _ours_json(out / "model.json", ("which", "preprocess", "peers"))
    model = predictor.model.cpu().eval()
    suffix = ".safetensors" if have_safetensors() else ".pt"  # safetensors is optional
    files = {out / f"weights{suffix}": weights_bytes(model.state_dict(), out / f"weights{suffix}")}
    p = predictor.preprocess
    example = torch.zeros(2, p["in_channels"], *p["image_size"])  # 2: not specialised to 1
    program = None
    try:
        batch = torch.export.Dim("batch")  # any batch size
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        # into memory: torch's own file writer aborts the process on a full disk
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        files[out / "model.pt2"] = buffer.getvalue()
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
    files[out / "model.json"] = json.dumps(meta, indent=2).encode("utf-8")
    written = write_files(files)
    for stale in EXPORT_FILES if earlier else ():  # an earlier export's other files
        if out / stale not in files and (out / stale).is_file():
            (out / stale).unlink()
    return written
