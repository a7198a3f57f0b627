"""Private fields of TorchRec modules. Each entry says why we need it; all were checked on
torchrec 1.8.0. tests/test_compat.py checks that each still exists with the shape we rely on.

A collection sliced over some tables of others (dmt_fx/ir/collections.py) shares the original
table modules: it is filled with the original's fields, because constructing it from configs
would allocate and initialise tables only to throw them away.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Sequence

import torch
import torch.nn as nn
from torchrec.distributed.train_pipeline.train_pipelines import TrainPipelineSparseDist
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection


# EmbeddingBagCollection's output keys, in output order (a key read by two tables is renamed
# `key@table`); no public getter (torchrec 1.8.0).
def ebc_embedding_names(ebc: EmbeddingBagCollection) -> list[str]:
    return ebc._embedding_names


# Its output widths, one per output key, and the features each table reads (torchrec 1.8.0).
def ebc_lengths_per_embedding(ebc: EmbeddingBagCollection) -> list[int]:
    return ebc._lengths_per_embedding


def ebc_feature_names(ebc: EmbeddingBagCollection) -> list[list[str]]:
    return ebc._feature_names


# The device a collection was made for (its `device` argument) (torchrec 1.8.0).
def collection_device(collection: nn.Module) -> Any:
    return collection._device


def set_ebc_fields(out: EmbeddingBagCollection, configs: list[Any], feature_names: list[list[str]],
                   lengths_per_embedding: list[int], embedding_names: list[str]) -> None:
    """Fill an empty EmbeddingBagCollection with the fields its __init__ derives from
    `configs` (torchrec 1.8.0)."""
    out._embedding_bag_configs = configs
    out._feature_names = feature_names
    out._lengths_per_embedding = lengths_per_embedding
    out._embedding_names = embedding_names


# Keep a parent's output names on a collection rebuilt from its configs (torchrec 1.8.0).
def set_ebc_embedding_names(ebc: EmbeddingBagCollection, names: Sequence[str]) -> None:
    ebc._embedding_names = list(names)


def set_ec_fields(out: EmbeddingCollection, configs: list[Any], embedding_dim: int,
                  feature_names: list[list[str]], names_by_table: list[list[str]]) -> None:
    """Fill an empty EmbeddingCollection with the fields its __init__ derives from `configs`
    (torchrec 1.8.0)."""
    out._embedding_configs = configs
    out._embedding_dim = embedding_dim
    out._feature_names = feature_names
    out._embedding_names_by_table = names_by_table


# LowRankCrossNet's layer count and low rank (constructor arguments it keeps only privately):
# a DCN interaction is rebuilt for the towers' outputs; None when it has not both (torchrec 1.8.0).
def crossnet_shape(net: nn.Module) -> tuple[int, int] | None:
    layers, rank = getattr(net, "_num_layers", None), getattr(net, "_low_rank", None)
    return (layers, rank) if isinstance(layers, int) and isinstance(rank, int) else None


# The codecs a PooledEmbeddingsAllToAll was made with, read by every forward: quantized comms
# set after the lowering made the module (torchrec 1.8.0).
def set_all_to_all_codecs(dist_module: nn.Module, codecs: Any) -> None:
    dist_module._codecs = codecs


# A sharded collection's shardings (one per sharding type): the feature order it reads;
# None for a module without (torchrec 1.8.0).
def embedding_shardings(lookup: Any) -> list[Any] | None:
    return getattr(lookup, "_embedding_shardings", None)


# A host of one rank (torchrec 1.8.0): a table-wise ShardedEmbeddingBagCollection on a
# process group of one hands its lookup the KJT as given (KJTAllToAll with one worker skips
# the collective) and its output dist returns the lookup's tensor (alltoall_pooled on a group
# of one), wrapped in a KeyedTensor. For such a module, whose one sharding reads each feature
# once and pools without a mean callback, `solo_layout` gives (feature order, embedding
# names, embedding dims) and `solo_pooled` runs its lookup alone: the same tensor, without
# the dists' Python. None: a module the dists change something for.
def solo_layout(lookup: Any) -> tuple[list[str], list[str], list[int]] | None:
    if (getattr(lookup, "_sharding_types", None) != ["table_wise"] or lookup._env.world_size != 1
            or lookup._has_mean_pooling_callback or len(lookup._lookups) != 1):
        return None
    features = list(lookup._embedding_shardings[0].feature_names())
    if len(set(features)) != len(features):  # a feature two tables read: the input dist repeats it
        return None
    return features, list(lookup._embedding_names), list(lookup._embedding_dims)


def solo_pooled(lookup: Any, kjt: Any) -> torch.Tensor:
    return lookup._lookups[0](kjt)


# The sharded modules whose input dist a TrainPipelineSparseDist pipelined (torchrec 1.8.0).
def pipelined_modules(pipeline: Any) -> list[Any]:
    return pipeline._pipelined_modules


# TrainPipelineSparseDist's backward and optimizer step are private methods that progress()
# calls: a pipeline that times them (profiler ranges) overrides them (torchrec 1.8.0).
class StagedTrainPipeline(TrainPipelineSparseDist):
    """TorchRec's TrainPipelineSparseDist whose backward and optimizer step each run inside
    `self.stage("backward")` / `self.stage("optimizer")`, a context manager subclasses give."""

    def stage(self, name: str) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        with self.stage("backward"):
            super()._backward(losses)

    def _optimizer_step(self) -> None:
        with self.stage("optimizer"):
            super()._optimizer_step()
