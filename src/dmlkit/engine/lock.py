"""An exclusive lock on a run folder or a grid folder, for the life of one process.

Two ``dml train`` into one ``--out`` (or two ``dml reproduce`` into one grid) would interleave
their metrics and train every run twice. The lock is ``fcntl.flock`` on ``FOLDER/.dml.lock``:
the kernel releases it when the process exits in any way (a crash, SIGKILL included), so a lock
left by a dead process is never in force; the file holds the holder's pid and command for the
one-line message the second process prints.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from dmlkit.errors import UserError

LOCK_NAME = ".dml.lock"


class FolderLock:
    """``with FolderLock(folder, what):`` holds the folder's lock, or fails with one line.

    Args:
        folder: created if missing.
        what: how the message names the folder, e.g. ``"--out runs/a"``.
    """

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 300).decode("utf-8", "replace").strip().replace("\n", " ")
            os.close(fd)
            raise UserError(
                f"{self.what} is in use by another dml process ({holder[:200] or 'unknown'}); "
                f"wait for it to finish, or choose another folder"
            ) from None
        # flock is released by the kernel when the holder dies, so what this file says is only
        # read while its writer is alive.
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv[:4])[:120]
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()}, since {started}: {command}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # emptied while still held: a free folder's lock file says nothing, and a command
            # that failed leaves the folder exactly as it found it
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
