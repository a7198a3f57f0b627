"""torchrun target for tests/test_distributed_ctr_inputs.py: tables built with
padding_idx=0 (a sum bag, a mean bag, an nn.Embedding), and their batches (`make_inputs`,
the worker's hook). Every rank imports this file."""

from __future__ import annotations

import torch.nn as nn

from tests.harness.corpus.ctr_inputs import PaddedTablesModel
from tests.harness.corpus.ctr_inputs import padded_inputs as make_inputs

SEED = 0


def padded(seed: int = SEED) -> tuple[nn.Module, tuple]:
    return PaddedTablesModel(seed), make_inputs(4, seed)


__all__ = ["make_inputs", "padded"]
