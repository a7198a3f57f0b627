"""The models shipped in the installed torchrec, as a user would instantiate them, each
twice: from torchrec itself and from a user's copy of its source file (same code, another
module: class identity differs, non-persistent buffers are plain attributes to the tracer)."""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from typing import Any

import torch
import torch.nn as nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.harness.corpus.entry import Entry

BATCH, DENSE, DIM, ROWS = 6, 13, 8, 20
KEYS = [f"f{i}" for i in range(4)]
SOURCES = {
    "dlrm": "torchrec.models.dlrm",
    "deepfm": "torchrec.models.deepfm",
    "transformer": "torchrec.models.experimental.transformerdlrm",
    "test_model": "torchrec.distributed.test_utils.test_model",
}


@functools.lru_cache(maxsize=None)
def user_copy(module_name: str) -> types.ModuleType:
    """`module_name`'s source file executed as the user's own module `user_<name>`."""
    path = importlib.util.find_spec(module_name).origin
    copy = types.ModuleType("user_" + module_name.rpartition(".")[2])
    copy.__file__ = f"/home/user/models/{copy.__name__}.py"
    sys.modules[copy.__name__] = copy  # dataclasses look their module up
    with open(path) as f:
        exec(compile(f.read(), copy.__file__, "exec"), copy.__dict__)  # noqa: S102 - the point of the test
    return copy


def source(kind: str, copied: bool) -> types.ModuleType:
    name = SOURCES[kind]
    return user_copy(name) if copied else importlib.import_module(name)


def ebc(seed: int, num: int = 4) -> EmbeddingBagCollection:
    torch.manual_seed(seed)
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=DIM, num_embeddings=ROWS, feature_names=[f"f{i}"])
        for i in range(num)])


def kjt(seed: int, keys: list[str] = KEYS, rows: int = ROWS) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(keys) * BATCH,), generator=g)
    values = torch.randint(0, rows, (int(lengths.sum()),), generator=g)
    return KeyedJaggedTensor.from_lengths_sync(keys, values, lengths)


def dense(seed: int) -> torch.Tensor:
    return torch.randn(BATCH, DENSE, generator=torch.Generator().manual_seed(seed + 1))


def dlrm(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    m = source("dlrm", copied)
    return m.DLRM(ebc(seed), DENSE, [16, DIM], [16, 1]), (dense(seed), kjt(seed))


def dlrm_dcn(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    m = source("dlrm", copied)
    model = m.DLRM_DCN(ebc(seed), DENSE, [16, DIM], [16, 1], dcn_num_layers=2, dcn_low_rank_dim=4)
    return model, (dense(seed), kjt(seed))


def dlrm_projection(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    m = source("dlrm", copied)
    model = m.DLRM_Projection(ebc(seed), DENSE, [16, DIM], [16, 1], interaction_branch1_layer_sizes=[16, 3 * DIM],
                              interaction_branch2_layer_sizes=[16, 3 * DIM])
    return model, (dense(seed), kjt(seed))


def dlrm_train(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    """A training wrapper taking torchrec's Batch (dense, sparse and labels in one object)."""
    m = source("dlrm", copied)
    labels = torch.randint(0, 2, (BATCH,), generator=torch.Generator().manual_seed(seed))
    return m.DLRMTrain(m.DLRM(ebc(seed), DENSE, [16, DIM], [16, 1])), (Batch(dense(seed), kjt(seed), labels),)


def deepfm(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    m = source("deepfm", copied)
    return m.SimpleDeepFMNN(DENSE, ebc(seed), hidden_layer_size=20, deep_fm_dimension=5), (dense(seed), kjt(seed))


def transformer(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    """Attention over [dense, embeddings]; dropout in the encoder, so compared in eval mode."""
    m = source("transformer", copied)
    model = m.DLRM_Transformer(ebc(seed), DENSE, [16, DIM], [16, 1], nhead=2, ntransformer_layers=1)
    return model.eval(), (dense(seed), kjt(seed))


def _test_tables() -> tuple[list[EmbeddingBagConfig], list[EmbeddingBagConfig]]:
    tables = [EmbeddingBagConfig(name=f"table_{i}", embedding_dim=DIM, num_embeddings=ROWS,
                                 feature_names=[f"feature_{i}"]) for i in range(4)]
    weighted = [EmbeddingBagConfig(name=f"weighted_table_{i}", embedding_dim=DIM, num_embeddings=ROWS,
                                   feature_names=[f"weighted_feature_{i}"]) for i in range(2)]
    return tables, weighted


def _model_input(m: types.ModuleType, seed: int) -> Any:
    tables, weighted = _test_tables()
    batch, _ = m.ModelInput.generate(batch_size=BATCH, world_size=1, num_float_features=10, tables=tables,
                                     weighted_tables=weighted, random_seed=seed)
    return batch


def sparse_nn(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    """torchrec's test model: a ModelInput dataclass, an unweighted and a weighted collection."""
    m = source("test_model", copied)
    tables, weighted = _test_tables()
    torch.manual_seed(seed)
    return m.TestSparseNN(tables=tables, weighted_tables=weighted, num_float_features=10), (_model_input(m, seed),)


def tower_sparse_nn(copied: bool, seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    """Already towered by its author: two torchrec EmbeddingTowers plus a sparse arch."""
    m = source("test_model", copied)
    tables, weighted = _test_tables()
    torch.manual_seed(seed)
    model = m.TestTowerSparseNN(tables=tables, weighted_tables=weighted, num_float_features=10)
    return model, (_model_input(m, seed),)


BUILDERS = [
    ("DLRM", "torchrec DLRM (dense, KJT)", dlrm),
    ("DLRM_DCN", "torchrec DLRM (dense, KJT)", dlrm_dcn),
    ("DLRM_Projection", "torchrec DLRM (dense, KJT)", dlrm_projection),
    ("DLRMTrain", "batch object (torchrec Batch)", dlrm_train),
    ("SimpleDeepFMNN", "torchrec DeepFM (dense, KJT)", deepfm),
    ("DLRM_Transformer", "attention over embeddings", transformer),
    ("TestSparseNN", "batch object (ModelInput), weighted KJT", sparse_nn),
    ("TestTowerSparseNN", "already towered (EmbeddingTower)", tower_sparse_nn),
]

TORCHREC_ENTRIES: tuple[Entry, ...] = tuple(
    Entry(f"{name}{' (user copy)' if copied else ''}", style, functools.partial(build, copied))
    for name, style, build in BUILDERS for copied in (False, True))
