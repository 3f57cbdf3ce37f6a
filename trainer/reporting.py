"""How a trial tells the world about its epochs. Light: no TensorFlow import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Reporter(Protocol):
    """Receives each finished epoch's metrics and answers whether the trial should stop (pruned).

    Called from the training thread after every epoch, with the 1-based epoch number and the four
    metrics ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``.
    """

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool: ...


class NeverStop:
    """A reporter that lets every trial run all its epochs (a plain local call)."""

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        return False
