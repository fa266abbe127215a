"""dmlkit: Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu; CVPR 2018) for PyTorch.

Where things are:
    dmlkit.losses   the mimicry KL and the DML / DML_e / KD losses (pure functions)
    dmlkit.methods  independent, dml (sequential | simultaneous), dml_e, kd: the update order
    dmlkit.cohort   the K peers with their optimizers and schedules
    dmlkit.engine   the trainer, checkpoints, evaluation, run directory
"""

__version__ = "0.1.0"
