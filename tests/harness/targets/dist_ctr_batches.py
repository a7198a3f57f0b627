"""torchrun target for tests/test_distributed_ctr_inputs.py: a model whose batch is
a dict subclass that is not a pytree node (dmt_fx registers it at capture), and its batches
(`make_inputs`, the worker's hook). Every rank imports this file."""

from __future__ import annotations

import torch.nn as nn

from tests.harness.corpus.ctr_inputs import DictBatchModel, FeatureDict, features

SEED = 0


def make_inputs(batch: int, seed: int) -> tuple[FeatureDict]:
    return (FeatureDict(features(seed, batch)),)


def dict_batch(seed: int = SEED) -> tuple[nn.Module, tuple]:
    return DictBatchModel(seed), make_inputs(4, seed)


__all__ = ["dict_batch", "make_inputs"]
