"""Cohort checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint holds only tensors and plain values: the peers' specs (to rebuild the networks),
their weights and optimizer states, the epoch and iteration reached, the RNG state and the
resolved config. Files: ``checkpoints/epoch_NNNN.pt``, each with an ``.sha256`` file (digest and
size), and ``checkpoints/last.pt`` (the newest, a hard link where the filesystem allows).

``last.pt`` is only a convenience pointer, derived from the epoch files: a crash can leave it
behind (killed before it is re-pointed) or half re-pointed (between its two renames), so no
reader trusts it. Every reader goes through :func:`load_checkpoint`, which for a run picks the
newest epoch checkpoint that verifies; a resume re-points ``last.pt`` (:func:`repair_last`).
A loaded checkpoint is checked before use: its zip records against the file's size (no
inflating archive), its keys and peer specs, finite weights, and (:func:`load_cohort`) the
size of the networks its specs describe against the bytes the file holds.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from dmlkit.cohort import Cohort, PeerSpec
from dmlkit.config import MethodConfig, OptimConfig
from dmlkit.engine.faults import fault, maybe_kill
from dmlkit.errors import UserError, first_line
from dmlkit.methods.dml import METHODS
from dmlkit.models import build_model
from dmlkit.models.hf import data_keys
from dmlkit.trust import check_peer

FORMAT = "dmlkit-cohort"
VERSION = 1
# epoch_0003.pt: after 3 epochs; epoch_0003_step_00000420.pt: inside epoch 4, at step 420
_EPOCH_FILE = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes_with(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(fileobj)`` into a temporary file, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes_with(path, lambda f: f.write(text.encode("utf-8")))


def _write_payload(f: BinaryIO, payload: bytes, epoch: int) -> None:
    """Write the serialised checkpoint; the one place where write failures can be injected.

    ``DMLKIT_FAULT=kill-in-checkpoint@E`` (SIGKILL this process half-way through epoch E's
    checkpoint) and ``DMLKIT_FAULT=enospc-in-checkpoint@E`` (a full disk there) exist so the
    tests can prove that a crash or a full disk during a write loses nothing.
    """
    if fault("kill-in-checkpoint", epoch) or fault("enospc-in-checkpoint", epoch):
        f.write(payload[: len(payload) // 2])
        f.flush()
        os.fsync(f.fileno())
        maybe_kill("kill-in-checkpoint", epoch)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    f.write(payload)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(
    ckpt_dir: Path, state: dict[str, Any], epoch: int, keep: int, step: int | None = None
) -> Path:
    """Save ``state`` as ``epoch_{epoch}.pt`` with its checksum, point ``last.pt`` at it, prune.

    The order makes every crash safe: the payload is renamed into place only when complete, its
    ``.sha256`` file after that (a payload without one never verifies), ``last.pt`` after that,
    and older epochs are deleted last.

    Args:
        ckpt_dir: the run's ``checkpoints/`` folder.
        state: plain containers of tensors and values.
        epoch: number of completed epochs.
        keep: epoch checkpoints kept besides the newest one.
        step: for a checkpoint inside an epoch, the run's step (``epoch_{epoch}_step_{step}.pt``).
            Only the newest mid-epoch checkpoint is kept, and none once a later one exists.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".*.tmp"):  # left by a write that a crash interrupted
        stale.unlink(missing_ok=True)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    payload = buf.getvalue()
    digest = f"{hashlib.sha256(payload).hexdigest()}  {len(payload)}\n"
    name = f"epoch_{epoch:04d}" + ("" if step is None else f"_step_{step:08d}")
    path = ckpt_dir / f"{name}.pt"
    at = epoch if step is None else -1  # the fault points count epoch-end checkpoints
    atomic_write_bytes_with(path, lambda f: _write_payload(f, payload, at))
    atomic_write_text(_checksum_path(path), digest)
    maybe_kill("kill-before-last", at)  # a crash window the tests exercise
    _point_last(ckpt_dir, path, at)
    ends = epoch_checkpoints(ckpt_dir, within=False)
    within = [p for p in epoch_checkpoints(ckpt_dir) if p not in ends]
    for old in ends[keep + 1 :] + [p for p in within if p != path]:
        old.unlink(missing_ok=True)
        _checksum_path(old).unlink(missing_ok=True)
    return path


def epoch_checkpoints(ckpt_dir: Path, within: bool = True) -> list[Path]:
    """The checkpoint files of a run, newest first (``within=False``: epoch ends only)."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _EPOCH_FILE.match(p.name)
        if m and (within or m.group(2) is None):
            found.append(((int(m.group(1)), int(m.group(2) or -1)), p))
    return [p for _, p in sorted(found, reverse=True)]


def verify_checkpoint(path: Path) -> str | None:
    """None if ``path`` matches its ``.sha256`` file, else the reason it does not."""
    sidecar = _checksum_path(path)
    if not sidecar.is_file():
        return "no checksum file (the write was interrupted)"
    try:
        digest, size = sidecar.read_text().split()
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if len(data) != int(size):
        return f"truncated ({len(data)} of {size} bytes)"
    if hashlib.sha256(data).hexdigest() != digest:
        return "checksum mismatch (corrupted)"
    return None


def newest_valid_checkpoint(ckpt_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest epoch checkpoint that verifies, and the newer ones skipped with the reason."""
    skipped = []
    for path in epoch_checkpoints(ckpt_dir):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def _point_last(ckpt_dir: Path, target: Path, epoch: int = -1) -> None:
    """Make ``last.pt`` the same file as ``target`` (hard link, else a copy).

    Two renames (checksum, then payload): a crash between them leaves a ``last.pt`` that does
    not verify, which no reader trusts and the next resume repairs.
    """
    for src, name in ((_checksum_path(target), "last.pt.sha256"), (target, "last.pt")):
        tmp = ckpt_dir / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, ckpt_dir / name)
        maybe_kill("kill-in-last", epoch)
    _fsync_dir(ckpt_dir)


def repair_last(ckpt_dir: Path) -> None:
    """Re-point ``last.pt`` at the newest epoch checkpoint that verifies, if it is not that."""
    newest, _ = newest_valid_checkpoint(ckpt_dir)
    last = ckpt_dir / "last.pt"
    if newest is None:
        return
    if verify_checkpoint(last) is None and _checksum_path(last).read_bytes() == (
        _checksum_path(newest).read_bytes()
    ):
        return
    _point_last(ckpt_dir, newest)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (-> its newest epoch checkpoint that verifies)."""
    path = Path(path).expanduser()
    if path.is_dir():
        ckpt_dir = path / "checkpoints"
        found, skipped = newest_valid_checkpoint(ckpt_dir)
        if found is not None:
            return found
        if skipped:
            bad, reason = skipped[0]
            raise UserError(
                f"{path}: no checkpoint verifies ({bad.name}: {reason}); the run cannot be "
                f"read, train it again"
            )
        raise UserError(f"{path}: no checkpoint found in {ckpt_dir}; was the run started?")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give a run directory or a .pt file)")
    return path


# A checkpoint's archive may hold a little more than its records (headers, the directory).
_ARCHIVE_SLACK = 1 << 20


def _check_archive(path: Path) -> None:
    """Refuse an archive whose records would inflate past the file's own size before loading.

    ``torch.save`` stores records uncompressed, so their sizes add up to about the file's; a
    crafted archive of compressed records can claim gigabytes from a few megabytes.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not a readable dmlkit checkpoint (not a torch.save archive: "
            f"{first_line(exc, 80)})"
        ) from None
    if total > size + _ARCHIVE_SLACK:
        raise UserError(
            f"{path}: not a dmlkit checkpoint: its records claim {total} bytes but the file "
            f"holds {size}; it will not be loaded"
        )


_REQUIRED = ("epoch", "iteration", "peers", "cohort")
_SPEC_FIELDS = {f for f in PeerSpec.__dataclass_fields__}


def _check_state(path: Path, state: dict[str, Any]) -> None:
    """A loaded checkpoint has our keys, well-formed peer specs and finite weights."""
    missing = [k for k in _REQUIRED if k not in state]
    peers = state.get("peers")
    models = (
        state.get("cohort", {}).get("models") if isinstance(state.get("cohort"), dict) else None
    )
    if missing or not isinstance(peers, list) or not isinstance(models, list):
        what = f"missing {', '.join(missing)}" if missing else "malformed peers or weights"
        raise UserError(f"{path}: not a complete dmlkit checkpoint ({what}); use another one")
    for i, spec in enumerate(peers):
        extra = sorted(set(spec) - _SPEC_FIELDS) if isinstance(spec, dict) else ["?"]
        absent = sorted(_SPEC_FIELDS - set(spec)) if isinstance(spec, dict) else []
        required_absent = [f for f in absent if f in ("name", "arch", "num_classes", "seed")]
        if extra or required_absent or len(peers) != len(models):
            bad = ", ".join(extra or required_absent) or "peer count"
            raise UserError(
                f"{path}: peer {i} of the checkpoint has a malformed spec ({bad:.60}); "
                f"not a checkpoint dmlkit wrote"
            )
    for spec, weights in zip(peers, models):
        for name, tensor in weights.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise UserError(
                    f"{path}: peer {str(spec.get('name'))[:40]!r} has non-finite weights "
                    f"({name}); use an earlier checkpoint of the run"
                )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a dmlkit checkpoint safely: the one verified loader of every reader (see
    :func:`load_verified`, which also says which file it read)."""
    return load_verified(path, map_location)[1]


def load_verified(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file read and its content, verified.

    A run directory gives its newest epoch checkpoint that verifies; a file is verified against
    its ``.sha256`` file when it has one. Then the archive is checked against the file's size,
    loaded with ``weights_only=True`` (no code runs) and its content checked (keys, specs,
    finite weights).
    """
    path = resolve_checkpoint(path)
    reason = verify_checkpoint(path) if _checksum_path(path).exists() else None
    if reason is not None:
        raise UserError(f"{path}: {reason}; use an earlier checkpoint of the run")
    _check_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: not a readable dmlkit checkpoint: loading it would run code or build "
            f"objects a checkpoint never holds, so it will not be loaded"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise UserError(f"{path}: not a readable dmlkit checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a dmlkit cohort checkpoint (no '{FORMAT}' format tag)")
    _check_state(path, state)
    return path, state


def _check_spec_size(path: Path, spec: PeerSpec) -> None:
    """The network a spec describes must fit in the file that holds its weights.

    Built on the meta device (no memory), so a crafted ``kwargs.width: 300000`` is refused
    before terabytes are allocated.
    """
    kwargs = dict(spec.kwargs)
    image_size = kwargs.pop("image_size", spec.image_size)
    try:
        with torch.device("meta"):
            model = build_model(spec.arch, spec.num_classes, spec.in_channels, image_size, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a spec no model accepts
        raise UserError(
            f"{path}: peer {spec.name[:40]!r} cannot be rebuilt ({first_line(exc, 120)}); "
            f"not a checkpoint dmlkit wrote"
        ) from None
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if need > path.stat().st_size:
        raise UserError(
            f"{path}: peer {spec.name[:40]!r} ({spec.arch[:40]}) would need {need} bytes of "
            f"weights but the file holds {path.stat().st_size}; it will not be loaded"
        )


def _check_specs_against_config(path: Path, specs: list[PeerSpec], config: Any) -> None:
    """A checkpoint's peers are those of the config saved with it (arch and kwargs)."""
    peers = config.get("peers") if isinstance(config, dict) else None
    if not isinstance(peers, list):
        return
    # the trainer adds the method's model arguments (PCL's temporal mean...) the arch takes
    method = config.get("method")
    name = method.get("name") if isinstance(method, dict) else None
    extra = METHODS.get(name).model_kwargs if name in METHODS else {}
    ours = [
        (p.get("arch"), p.get("kwargs") or {}) if isinstance(p, dict) else (p, {}) for p in peers
    ]
    # and, to a Hugging Face peer, what the text data tells it (task, vocabulary, special ids)
    ours = [
        (a, {**kw, **{k: v for k, v in extra.items() if k in s.kwargs}, **data_keys(a, s.kwargs)})
        for (a, kw), s in zip(ours, specs)
    ] + ours[len(specs) :]
    theirs = [(s.arch, s.kwargs) for s in specs]
    if ours != theirs:
        raise UserError(
            f"{path}: its peer specs differ from the config saved with it; "
            f"not a checkpoint dmlkit wrote, it will not be loaded"
        )


def load_cohort(
    path: str | Path, device: torch.device | str = "cpu", trust_code: bool = False
) -> tuple[Cohort, dict[str, Any]]:
    """Rebuild a checkpoint's peers with their trained weights, for evaluation or as a teacher.

    The one place that turns a checkpoint back into networks (``dml eval``, ``dml analyze``,
    a kd teacher). Peers are built without their ``pretrained`` kwarg: the checkpoint holds
    their weights, so the ImageNet file a run started from need not exist any more.

    Args:
        path: a checkpoint file or a run directory (its ``checkpoints/last.pt``).
        device: where the peers live.
        trust_code: build import-path archs the checkpoint names (the user's opt-in,
            ``--trust-code``); without it they are refused before anything is imported
            (:mod:`dmlkit.trust`).

    Returns:
        ``(cohort, state)``: a loop :class:`Cohort` in eval mode whose specs are the
        checkpoint's minus ``pretrained`` (its optimizers are fresh: not the run's), and the
        whole checkpoint (``epoch``, ``iteration``, ``config``, ...).
    """
    found, state = load_verified(path, map_location=device)
    for spec in state["peers"]:  # before any arch is resolved, imported or built
        check_peer(spec["arch"], spec.get("kwargs"), str(found), trust_code)
    full = [PeerSpec(**s) for s in state["peers"]]
    _check_specs_against_config(found, full, state.get("config"))
    specs = [s.without_pretrained() for s in full]
    for spec in specs:
        _check_spec_size(found, spec)
    cohort = Cohort(specs, [OptimConfig()] * len(specs), 1.0, device)
    try:
        cohort.load_training_state(state["cohort"], optimizers=False)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise UserError(
            f"{found}: its weights do not fit its peer specs ({first_line(exc, 120)})"
        ) from None
    return cohort.eval(), state


def load_teacher(
    cfg: MethodConfig, num_classes: int, device: torch.device | str, trust_code: bool = False
) -> nn.Module | None:
    """The method's frozen teacher: peer ``cfg.teacher_peer`` of the run ``cfg.teacher``.

    Args:
        cfg: the method's config; None is returned for a method that takes no teacher.
        num_classes: classes of the students' data; the teacher must predict the same.
        trust_code: build an import-path teacher arch (the user's opt-in, ``--trust-code``).
    """
    if not METHODS.get(cfg.name).needs_teacher:
        return None
    cohort, _ = load_cohort(cfg.teacher, device, trust_code=trust_code)
    if not 0 <= cfg.teacher_peer < len(cohort):
        raise UserError(
            f"{resolve_checkpoint(cfg.teacher)}: has {len(cohort)} peers, no peer index "
            f"{cfg.teacher_peer} (set method.teacher_peer to 0..{len(cohort) - 1})"
        )
    spec = cohort.specs[cfg.teacher_peer]
    if spec.num_classes != num_classes:
        raise UserError(
            f"method.teacher: the teacher {spec.name!r} predicts {spec.num_classes} classes but "
            f"the data has {num_classes}; distil from a teacher trained on the same data"
        )
    return cohort.peers[cfg.teacher_peer]
