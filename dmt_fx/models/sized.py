"""The emulated-network benchmark's model: a TorchRec DLRM whose size the launcher sets.

`DMT_FX_BENCH_MODEL="tables=16,dim=64,rows=10000,ids=2"` (the environment of every rank,
set by `dmt-fx bench emulated`): `tables` tables of `rows` x `dim`, one feature each,
0 to 2 x `ids` ids per bag skewed towards small ids; dense arch 13 -> 64 -> dim, over arch
128 -> 64 -> 1, dot interaction.
"""

from __future__ import annotations

import os

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

MODEL_ENV = "DMT_FX_BENCH_MODEL"
TARGET = "dmt_fx.models.sized:bench_model"
DENSE = 13


def model_config() -> dict[str, int]:
    """Model size from DMT_FX_BENCH_MODEL="tables=16,dim=64,rows=10000" (the launcher sets it)."""
    config = {"tables": 16, "dim": 64, "rows": 10_000, "ids": 2}
    for item in filter(None, os.environ.get(MODEL_ENV, "").split(",")):
        key, _, value = item.partition("=")
        config[key.strip()] = int(value)
    return config


def _keys(config: dict[str, int]) -> list[str]:
    return [f"f{i}" for i in range(config["tables"])]


def bench_model(seed: int = 0) -> tuple[DLRM, tuple[torch.Tensor, KeyedJaggedTensor]]:
    """A TorchRec DLRM with `tables` tables of `rows` x `dim`, one feature each."""
    config = model_config()
    torch.manual_seed(seed)
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=config["dim"], num_embeddings=config["rows"],
                                 feature_names=[key]) for i, key in enumerate(_keys(config))]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE,
                 dense_arch_layer_sizes=[64, config["dim"]], over_arch_layer_sizes=[128, 64, 1])
    return model, make_inputs(16, seed)


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    config = model_config()
    keys = _keys(config)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 2 * config["ids"] + 1, (len(keys) * batch_size,), generator=g)
    total = int(lengths.sum())
    ids = (torch.rand(total, generator=g) ** 2 * config["rows"]).long()
    kjt = KeyedJaggedTensor.from_lengths_sync(keys, ids, lengths)
    return torch.randn(batch_size, DENSE, generator=g), kjt
