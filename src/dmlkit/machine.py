"""What machine a run or a figure comes from: env.json of every run, benchmark headers.

The one home of that record: :func:`environment` (a run's env.json, ``dml bench``, the
benchmark scripts' ``machine``) and :func:`measurement` (the same, plus the moment, the load
average and the command of a measurement: the benchmark scripts' headers).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions, machine and device of this process (a run's env.json, ``dml bench``'s header)."""
    import dmlkit

    device = torch.device(device)
    info: dict[str, Any] = {
        "dmlkit": dmlkit.__version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "argv": sys.argv,
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    import numpy

    info["numpy"] = numpy.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def measurement(device: torch.device | str = "cpu") -> dict[str, Any]:
    """:func:`environment` and the moment of a measurement: ``cores``, ``load_average`` (now:
    call it at the end of the measurement), ``when`` (UTC) and ``command``."""
    return {
        **environment(device),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
