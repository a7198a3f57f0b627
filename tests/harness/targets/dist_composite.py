"""torchrun targets for the distributed test of composite embeddings (tests/test_distributed_composite.py).

Every rank imports this file: the models of tests/harness/corpus/composite.py (quotient-remainder bags
in both combine modes, mixed-dimension bags), their batches and the DLRM_Net batch slicer.
"""

from __future__ import annotations

import torch.nn as nn

from examples.reference_dlrm import slice_inputs  # noqa: F401 (the worker's hook: (dense, offsets, indices))
from tests.harness.corpus.composite import CompositeDLRM, make_inputs  # noqa: F401 (make_inputs: the worker's hook)

SEED = 0


def qr_mult() -> tuple[nn.Module, tuple]:
    return CompositeDLRM(SEED, "qr", "mult"), make_inputs(4, SEED)


def qr_concat() -> tuple[nn.Module, tuple]:
    return CompositeDLRM(SEED, "qr", "concat"), make_inputs(4, SEED)


def mixed_dims() -> tuple[nn.Module, tuple]:
    return CompositeDLRM(SEED, "md"), make_inputs(4, SEED)
