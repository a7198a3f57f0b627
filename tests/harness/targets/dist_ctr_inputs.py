"""torchrun targets for tests/test_distributed_ctr_inputs.py: every rank imports
this file. NVIDIA DLRM's joint mode with `sparse=True` gradients, and its batches
(`make_inputs`, the worker's hook)."""

from __future__ import annotations

import torch.nn as nn

from tests.harness.corpus.ctr_inputs import SparseJointDLRM
from tests.harness.corpus.joint import make_inputs

SEED = 0


def sparse_joint(seed: int = SEED) -> tuple[nn.Module, tuple]:
    return SparseJointDLRM(seed), make_inputs(4, seed)


__all__ = ["make_inputs", "sparse_joint"]
