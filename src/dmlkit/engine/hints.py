"""Hints printed while a run trains, when its numbers say something is going wrong."""

from __future__ import annotations

import math

# Mimicry (KL to the other peers, nats) above this in the first epochs: peers that push each
# other around instead of agreeing (a stable DML start stays well under 1 nat).
MIMICRY_NATS = 2.0
EARLY_EPOCHS = 2
# Mean training cross-entropy this far above chance (ln C) in epoch 2: worse than guessing after
# a whole epoch. Not judged in epoch 1, whose mean includes the random start (often above ln C).
ABOVE_CHANCE_NATS = 0.5
# The page the warning points to; the README links the same section (tests/test_messages.py).
FINDINGS = "docs/findings.md#when-does-mutual-learning-help"


def early_instability(
    epoch: int, names: list[str], logs: list[dict[str, float]], num_classes: int
) -> str | None:
    """One warning line if epoch 1-2's training logs show an unstable start, else None.

    Unstable: a peer's mean training cross-entropy in epoch 2 more than
    :data:`ABOVE_CHANCE_NATS` above chance (ln C, what a uniform guess scores), or its mimicry
    term above :data:`MIMICRY_NATS` in epoch 1 or 2. Both were seen together in the
    DML runs that ended below their independent twins (docs/findings.md, "When does mutual
    learning help?", the page the warning and the README name).
    """
    if epoch > EARLY_EPOCHS or num_classes < 2:
        return None
    chance = math.log(num_classes)
    for name, log in zip(names, logs):
        ce, mimicry = log.get("ce", 0.0), log.get("mimicry", 0.0)
        if (epoch == 2 and ce > chance + ABOVE_CHANCE_NATS) or mimicry > MIMICRY_NATS:
            return (
                f"epoch {epoch}: {name} has training cross-entropy {ce:.2f} (chance: "
                f"{chance:.2f}) and mimicry {mimicry:.2f} nats: an unstable start; consider "
                f"method.mimicry_rampup=5 (mimicry weight raised over 5 epochs) or a lower "
                f"optim.lr ({FINDINGS})"
            )
    return None
