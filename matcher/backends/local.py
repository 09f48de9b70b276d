"""The local backend: both jobs run in this process (the feature stage's threads and batches, the pair
verifier's thread pool, the GPU when there is one), as they always have; nothing to install or connect."""

from __future__ import annotations

from ..io import device as devices
from . import Node


class LocalBackend:
    name = "local"
    remote = None  # the feature stage and the pair verifier do the work themselves

    def __init__(self, workers: int = 1, device: str = "cpu"):
        self.workers = max(1, int(workers))
        self.device = device

    @property
    def label(self) -> str:
        return f"this machine, {self.workers} worker{'s' * (self.workers != 1)}"

    def nodes(self) -> list[Node]:
        return [Node("this machine", float(self.workers), 1.0 if devices.is_cuda(self.device) else 0.0)]

    @property
    def slots(self) -> int:
        """Pair-verification workers."""
        return self.workers

    def work(self) -> dict:
        """Work measured per node (nothing: the local path does not time itself per task)."""
        return {}
