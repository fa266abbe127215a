"""Throughput of a DML step, measured side by side in one run (``dml bench``).

Variants, all on the same model, batch size and synthetic CIFAR-shaped data (uint8 32x32x3,
100 classes, random crop + flip augmentation where the variant has a data path):

* ``textbook``    K forwards, then per peer: its loss (KL against the others' detached
                  predictions), zero_grad, backward, step; batches from a torch DataLoader. The
                  way most reimplementations are written.
* ``pytorch-dml`` the ``pytorch-dml`` package's ``DMLTrainer.train_epoch`` (an external peer;
                  ``pip install pytorch-dml``), temperature 1, same optimizers.
* ``loop``        dmlkit's loop cohort + ``DML`` simultaneous step, in-memory batches with
                  random crop + flip (the data path is inside the timed step), NCHW layout.
* ``loop+cl``     the same with channels-last weights and inputs: what ``dml train`` runs by
                  default (``train.channels_last: true``).
* ``stacked``     dmlkit's stacked (vmap) cohort.
* ``+compile``, ``+bf16`` variants of the two.
* ``independent`` K separate single-model steps (forward, CE, backward, step) on a fixed
                  batch, NCHW: the cost a cohort should match, written the plain way.
* ``independent+cl`` the same in channels-last: the cost at equal layout.

Each case runs in its own process, so its peak memory (``ru_maxrss`` on the CPU, the CUDA
allocator's peak on a GPU) is its own. The matmul peak of the device is measured in the same
run, and each case reports model FLOP/s (forward + backward, counted by
``torch.utils.flop_counter``) as a fraction of it.
"""

from dmlkit.bench.cases import VARIANTS, Case, matmul_peak, plan
from dmlkit.bench.cli import main
from dmlkit.bench.report import markdown, median_round
from dmlkit.bench.runner import run_case

__all__ = [
    "VARIANTS",
    "Case",
    "main",
    "markdown",
    "matmul_peak",
    "median_round",
    "plan",
    "run_case",
]
