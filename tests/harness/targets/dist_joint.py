"""torchrun targets for the distributed test of joint tables (tests/test_distributed_joint.py).

Every rank imports this file: NVIDIA's JointEmbedding DLRM (captured by torch.export) and
the same model written for torch.fx, their batches (`make_inputs`, the worker's hook)."""

from __future__ import annotations

import torch.nn as nn

from tests.harness.corpus.joint import NvidiaJointDLRM, SymbolicJointDLRM, make_inputs

SEED = 0


def nvidia_joint(seed: int = SEED) -> tuple[nn.Module, tuple]:
    return NvidiaJointDLRM(seed), make_inputs(4, seed)


def symbolic_joint(seed: int = SEED) -> tuple[nn.Module, tuple]:
    return SymbolicJointDLRM(seed), make_inputs(4, seed)


__all__ = ["make_inputs", "nvidia_joint", "symbolic_joint"]
