"""The built-in default model: a small TorchRec DLRM used by `dmt-fx demo` and `dmt-fx run`.

Eight features over seven tables (one table shared by two features), tables of 100 to
20,000 rows, embedding dim 16, 13 dense features: big enough for towers to matter, small
enough to train a few hundred steps on a 2-core CPU.
"""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

DIM = 16
DENSE = 13
ROWS = [20_000, 5_000, 2_000, 1_000, 500, 200, 100]
FEATURES = [["user_id"], ["item_id"], ["category", "subcategory"], ["city"], ["device"],
            ["hour"], ["weekday"]]


def _tables() -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=f"t_{names[0]}", embedding_dim=DIM, num_embeddings=rows,
                               feature_names=list(names)) for rows, names in zip(ROWS, FEATURES)]


def keys() -> list[str]:
    return [k for names in FEATURES for k in names]


def num_embeddings() -> dict[str, int]:
    return {k: rows for rows, names in zip(ROWS, FEATURES) for k in names}


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """Dense features and 0-3 ids per bag (a skew towards small ids, like real traffic)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(keys()) * batch_size,), generator=g)
    per_key = lengths.view(len(keys()), batch_size).sum(1)
    ids = [(torch.rand(int(n), generator=g) ** 2 * num_embeddings()[k]).long() for k, n in zip(keys(), per_key)]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys(), torch.cat(ids), lengths)
    return torch.randn(batch_size, DENSE, generator=g), kjt


def default_dlrm(seed: int = 0) -> tuple[DLRM, tuple]:
    torch.manual_seed(seed)
    ebc = EmbeddingBagCollection(tables=_tables(), device=torch.device("cpu"))
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE,
                 dense_arch_layer_sizes=[64, DIM], over_arch_layer_sizes=[64, 32, 1])
    return model, make_inputs(16, seed)


DEFAULT_TARGET = "dmt_fx.models.zoo:default_dlrm"
