"""A trained cohort on new images (``dml predict``; ``dml export`` writes it for use outside
dmlkit, :mod:`dmlkit.engine.export`).

Both start from :func:`dmlkit.engine.checkpoint.load_cohort`, the one checkpoint -> peers
path. What an image goes through before the network (channels, size, the training set's
per-channel mean and std) and the class names come from the run's ``summary.json`` (written
since they are stored there), else from rebuilding the run's dataset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dmlkit.data import DataBundle, build_data
from dmlkit.data.imagefolder import IMAGE_EXTENSIONS
from dmlkit.data.images import decode_rgb
from dmlkit.engine.checkpoint import load_cohort
from dmlkit.engine.rundir import RunDir
from dmlkit.errors import UserError, first_line
from dmlkit.losses.dml import ensemble_log_probs


def preprocess_of(data: DataBundle) -> dict[str, Any] | None:
    """What a new image needs to look like the training batches: channels, ``[H, W]``, and the
    per-channel ``mean`` / ``std`` of pixel values scaled to 0..1 (None if the loader has no
    plain normalisation)."""
    transform = getattr(data.train, "transform", None)
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    if mean is None or std is None:
        return None
    return {
        "in_channels": data.in_channels,
        "image_size": list(data.image_size),
        "scale": "pixel / 255",
        "mean": [float(v) for v in torch.as_tensor(mean).flatten()],
        "std": [float(v) for v in torch.as_tensor(std).flatten()],
        "resize": "bilinear",
    }


class Ensemble(nn.Module):
    """The cohort's ensemble as one module: log of the mean of the peers' softmax ``[N, C]``."""

    def __init__(self, peers: list[nn.Module]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, x: Tensor) -> Tensor:
        return ensemble_log_probs([p(x) for p in self.peers])


@dataclass
class Predictor:
    """One peer or the ensemble of a run, ready for image files.

    ``model(x)`` maps a normalised batch ``[N, C, H, W]`` to logits or log-probabilities
    ``[N, classes]``; a softmax of either gives the class probabilities.
    """

    model: nn.Module
    which: str  # a peer's name, or "ensemble"
    classes: list[str]
    preprocess: dict[str, Any]
    device: torch.device
    peers: list[dict[str, Any]]  # arch, kwargs, ... of the peers in the model (to rebuild it)

    def load_images(self, files: list[Path]) -> Tensor:
        """Image files -> the normalised float batch ``[N, C, H, W]`` the model expects."""
        size = tuple(self.preprocess["image_size"])
        return self._normalise([decode_rgb(f, size) for f in files])  # [H, W, 3] uint8 each

    def _decoded(
        self, files: list[Path], skipped: list[tuple[str, str]] | None
    ) -> tuple[list[Path], Tensor | None]:
        """The files that decode and their batch; with ``skipped`` (a list), an undecodable
        file is appended there as ``(file, reason)`` instead of stopping everything."""
        size = tuple(self.preprocess["image_size"])
        kept, arrays = [], []
        for f in files:
            try:
                arrays.append(decode_rgb(f, size))
            except UserError as exc:
                if skipped is None:
                    raise
                skipped.append((str(f), first_line(exc)))
                continue
            kept.append(f)
        return kept, (self._normalise(arrays) if arrays else None)

    def _normalise(self, arrays: list[np.ndarray]) -> Tensor:
        p = self.preprocess
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        if p["in_channels"] == 1:  # grey, as PIL's "L" weighs the channels
            weights = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
            x = (x * weights).sum(1, keepdim=True)
        mean = torch.tensor(p["mean"])[None, :, None, None]
        std = torch.tensor(p["std"])[None, :, None, None]
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def probabilities(self, files: list[Path], batch_size: int = 256) -> Tensor:
        """Class probabilities ``[N, classes]`` of the files, in their order."""
        out = [
            torch.softmax(self.model(self.load_images(files[i : i + batch_size])).float(), 1)
            for i in range(0, len(files), batch_size)
        ]
        return torch.cat(out).cpu() if out else torch.zeros(0, len(self.classes))

    @torch.no_grad()
    def predict(
        self,
        inputs: list[str | Path],
        top_k: int = 1,
        skipped: list[tuple[str, str]] | None = None,
        batch_size: int = 256,
    ) -> list[dict[str, Any]]:
        """The ``top_k`` classes of every image among ``inputs`` (files, or folders searched
        recursively), as ``{"file", "top": [{"class", "index", "probability"}, ...]}``.

        ``skipped``: a list to collect ``(file, reason)`` of the images that cannot be decoded
        (``dml predict --skip-bad``); without it the first such image stops everything.
        """
        files, out = [], []
        wanted = image_files(inputs)
        for i in range(0, len(wanted), batch_size):
            kept, x = self._decoded(wanted[i : i + batch_size], skipped)
            if x is not None:
                files += kept
                out.append(torch.softmax(self.model(x).float(), 1).cpu())
        probs = torch.cat(out) if out else torch.zeros(0, len(self.classes))
        k = max(1, min(top_k, len(self.classes)))
        values, indices = probs.topk(k, dim=1) if len(files) else (probs, probs.long())
        return [
            {
                "file": str(f),
                "top": [
                    {"class": self.classes[i], "index": int(i), "probability": float(v)}
                    for v, i in zip(values[n].tolist(), indices[n].tolist())
                ],
            }
            for n, f in enumerate(files)
        ]


def image_files(inputs: list[str | Path]) -> list[Path]:
    """The image files named, and those under the folders named (sorted), in order given."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                f for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise UserError(f"{item}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it")
            files += found
        elif item.is_file():
            files.append(item)
        elif item.exists():  # a FIFO would block the read forever; a device is no image
            raise UserError(f"{item}: not a regular file; name image files or folders")
        else:
            raise UserError(f"{item}: no such file or folder")
    return files


def _run_facts(run: RunDir) -> tuple[list[str], dict[str, Any]]:
    """(class names, preprocessing) of a run: from summary.json, else from its dataset."""
    if run.summary_path.is_file():
        summary = run.read_summary()  # a damaged file: one line naming it
        if summary.get("classes") and summary.get("preprocess"):
            _check_preprocess(run.summary_path, summary["classes"], summary["preprocess"])
            return summary["classes"], summary["preprocess"]
    cfg = run.load_config()  # an older or unfinished run: rebuild its data to learn them
    data = build_data(cfg.data, seed=cfg.seed)
    preprocess = preprocess_of(data)
    if preprocess is None:
        raise UserError(
            f"{run.path}: the {cfg.data.name} data has no plain image preprocessing (per-channel "
            f"mean and std), so new images cannot be prepared as its batches were; load the "
            f"weights with dmlkit.load_peers and prepare the images yourself"
        )
    return list(data.class_names), preprocess


# A summary.json's image size, as the config allows (data.image_size <= 4096).
_MAX_SIDE = 4096


def _check_preprocess(path: Path, classes: Any, p: Any) -> None:
    """What summary.json says about classes and preprocessing is usable (edited or damaged
    files: one line, instead of a NaN in the output or a giant allocation)."""

    def bad(what: str) -> UserError:
        return UserError(
            f"{path}: {what}; the file was edited or damaged: delete it (predict then rebuilds "
            f"the classes and preprocessing from the run's data, and dml train --resume "
            f"rewrites it)"
        )

    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("classes is not a list of names")
    if not isinstance(p, dict):
        raise bad("preprocess is not a mapping")
    channels = p.get("in_channels")
    if channels not in (1, 3):
        raise bad(f"preprocess.in_channels is {channels!r}, not 1 or 3")
    size = p.get("image_size")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and 1 <= v <= _MAX_SIDE for v in size)
    ):
        raise bad(f"preprocess.image_size is {str(size)[:40]}, not [H, W] of 1..{_MAX_SIDE}")
    for key in ("mean", "std"):
        v = p.get(key)
        if (
            not isinstance(v, list)
            or len(v) != channels
            or not all(isinstance(x, int | float) and math.isfinite(x) for x in v)
        ):
            raise bad(f"preprocess.{key} is {str(v)[:40]}, not {channels} finite numbers")
    if any(x <= 0 for x in p["std"]):
        raise bad(f"preprocess.std holds {min(p['std'])}, not a positive number")


def peer_index(names: list[str], peer: int | str, source: str | Path) -> int:
    """The index of ``peer`` (an index, or one of ``names``) among a run's peers.

    ``source`` (the run or checkpoint given) names the run in the one-line error.
    """
    index = names.index(peer) if isinstance(peer, str) and peer in names else peer
    if isinstance(index, str) and index.lstrip("-").isdigit():  # "1" from a command line
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
        raise UserError(
            f"{source}: no peer {peer!r}; the run has peers 0..{len(names) - 1} "
            f"({', '.join(names)}): give an index or a name"
        )
    return index


def load_predictor(
    run_dir: str | Path,
    peer: int | str | None = None,
    device: torch.device | str = "cpu",
    trust_code: bool = False,
) -> Predictor:
    """Peer ``peer`` (its index or name) of a run (or of its checkpoint file), or the ensemble
    when ``peer`` is None. ``trust_code``: build import-path archs the checkpoint names (the
    user's opt-in, ``--trust-code``; :mod:`dmlkit.trust`).

    Example::

        from dmlkit.engine.predict import load_predictor
        p = load_predictor("runs/my-run")
        p.predict(["cat.png", "more_images/"], top_k=3)
    """
    path = Path(run_dir).expanduser()
    if not path.exists():  # else the message would name its parent's parent
        raise UserError(f"{path}: no such run directory or checkpoint file")
    run = RunDir(path if path.is_dir() else path.parent.parent)
    if not run.config_path.is_file():
        raise UserError(f"{run.path}: not a run directory (no config.yaml)")
    cohort, _ = load_cohort(path, device, trust_code=trust_code)
    classes, preprocess = _run_facts(run)
    spec = cohort.specs[0]
    if len(classes) != spec.num_classes or preprocess["in_channels"] != spec.in_channels:
        raise UserError(
            f"{run.summary_path}: says {len(classes)} classes of {preprocess['in_channels']}-"
            f"channel images, the peers take {spec.in_channels} channels and predict "
            f"{spec.num_classes}; the file was edited or belongs to another run: delete it"
        )
    specs = [dataclasses.asdict(s) for s in cohort.specs]
    if peer is None:
        model, which = Ensemble(list(cohort.peers)), "ensemble"
    else:
        i = peer_index([s.name for s in cohort.specs], peer, run_dir)
        model, which, specs = cohort.peers[i], cohort.specs[i].name, [specs[i]]
    return Predictor(model.eval(), which, classes, preprocess, torch.device(device), specs)
