"""dmlkit: Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu; CVPR 2018) for PyTorch.

Where things are (the lower layers first):
    dmlkit.errors       UserError / ConfigError: one-line messages the CLI prints (exit 2)
    dmlkit.config       the typed config, YAML loading, ``--set`` overrides, validation
    dmlkit.models       the model registry: the CIFAR networks, MobileNet v1 (re-id), small ones
    dmlkit.data         datasets by name (digits, CIFAR-100, image folders, Market-1501)
    dmlkit.metrics      top-k accuracy; re-id distances, CMC and mAP
    dmlkit.losses       the mimicry KL and the DML / DML_e / KD losses (pure functions)
    dmlkit.cohort       the K peers with their optimizers and schedules (loop and stacked)
    dmlkit.methods      independent, dml (sequential | simultaneous), dml_e, kd: the update order
    dmlkit.distributed  torchrun: data-parallel and one-peer-per-process cohorts
    dmlkit.engine       the trainer, checkpoints, evaluation, run directory
    dmlkit.experiments  the paper's grids for ``dml reproduce``
    dmlkit.analysis     the paper's Sec. 4.5 measurements and the reports of a grid
    dmlkit.cli          the ``dml`` command; ``dmlkit.bench`` its ``bench`` subcommand
"""

__version__ = "0.1.0"
