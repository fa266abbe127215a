"""An exclusive lock on a run folder or a grid folder, for the life of one process.

Two ``dml train`` into one ``--out`` (or two ``dml reproduce`` into one grid) would interleave
their metrics and train every run twice. The lock is ``fcntl.flock`` on ``FOLDER/.dml.lock``:
the kernel releases it when the process exits in any way (a crash, SIGKILL included), so a lock
left by a dead process is never in force; the file holds the holder's pid and command for the
one-line message the second process prints.

A ``flock`` belongs to the open file description, which a ``fork`` shares: DataLoader workers
(and any other forked child) would hold the lock as long as they live, and after a SIGKILL of
the trainer its orphaned workers keep it for seconds, so a supervisor's immediate
``--resume`` was refused naming a dead pid. Every forked child therefore closes its copies of
the held descriptors at once (:func:`os.register_at_fork`; closing never unlocks the parent's,
``LOCK_UN`` would), and a refusal whose recorded holder is dead waits a few seconds for its
children to go before it says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import time
from pathlib import Path

from dmlkit.errors import UserError

LOCK_NAME = ".dml.lock"
#: Seconds a refusal waits when the recorded holder is dead (its children were still exiting).
DEAD_HOLDER_GRACE_S = 15.0

# Descriptors of the locks this process holds: a forked child closes its copies (never unlocks).
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 300).decode("utf-8", "replace").strip().replace("\n", " ")


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
        self._owner = 0  # the pid that acquired it (a forked child must not release it)

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + DEAD_HOLDER_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                holder = _holder(fd)
                match = re.match(r"pid (\d+)", holder)
                dead = match is not None and not _pid_alive(int(match.group(1)))
                if dead and time.monotonic() < deadline:
                    time.sleep(0.2)  # the dead holder's children (older dmlkit) are exiting
                    continue
                os.close(fd)
                if dead:
                    raise UserError(
                        f"{self.what} is still locked by a child of a dml process that has "
                        f"exited ({holder[:200]}); find it with: fuser {path}; stop it, or "
                        f"choose another folder"
                    ) from None
                raise UserError(
                    f"{self.what} is in use by another dml process ({holder[:200] or 'unknown'}); "
                    f"wait for it to finish, or choose another folder"
                ) from None
        # flock is released by the kernel when the holder dies, so what this file says is only
        # read while its writer is alive.
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)  # a refused try above read the file: write from its start
        command = " ".join(sys.argv[:4])[:120]
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()}, since {started}: {command}\n".encode())
        self._fd, self._owner = fd, os.getpid()
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None and self._owner != os.getpid():
            self._fd = None  # a forked child's copy: closed at the fork, the parent's lock
            return
        if self._fd is not None:
            _HELD.discard(self._fd)
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
