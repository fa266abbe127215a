"""Reading image files: the one decoder every image dataset uses (imagefolder, re-id).

A file that cannot be read is a user error naming the file and the fix, whatever PIL raised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dmlkit.errors import UserError, first_line

# What PIL raises for a truncated, corrupt or unsupported file (or an absurdly large image).
_UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)


def _unreadable(path: Path, what: str, exc: BaseException) -> UserError:
    return UserError(
        f"{path}: cannot {what} the image ({first_line(exc, 120)}); remove or replace the file"
    )


def image_size(path: Path) -> tuple[int, int]:
    """The stored ``(H, W)`` of an image, read from its header (no decoding)."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except _UNREADABLE as exc:
        raise _unreadable(path, "read", exc) from None


def decode_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image as a writable uint8 RGB array ``[H, W, 3]``, resized to ``size = (H, W)``
    (bilinear) when given and different from the stored size."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.array(im, dtype=np.uint8)  # a copy: writable, independent of PIL
    except _UNREADABLE as exc:
        raise _unreadable(path, "decode", exc) from None
