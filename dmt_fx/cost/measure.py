"""Measured compute: the one input of the step model that is timed, not derived."""

from __future__ import annotations

import statistics
import time

__all__ = ["measure_compute"]


def measure_compute(model, inputs: tuple, labels, *, steps: int = 20, warmup: int = 3, lr: float = 0.05) -> float:
    """Median seconds of one single-process training step (forward, BCE loss, backward, SGD)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = model(*inputs)
        loss = F.binary_cross_entropy_with_logits(out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
