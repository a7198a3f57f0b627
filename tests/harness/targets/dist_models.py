"""Models for the distributed plan tests (tests/test_distributed_plans.py).

`TwoSidedModel` is a two-sided model: a user-side EmbeddingBagCollection and an
item-side one, each fed by its own KJT, and a hand-written DLRM dot interaction (no
torchrec arch classes). `build` (3 user tables, 2 item tables) is the default model: on
2x2 the balanced plan puts u2 with both item tables on host 0 and u0, u1 on host 1, so the
item collection has no table on host 1.
`build_small` (2 user tables, 1 item table) has a collection with a single
table, and fewer tables than the 4x1 world has hosts. Both are worker targets
(`tests/harness/targets/dist_models.py:build`); `build_small.make_inputs` makes its batches.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

DIM, DENSE_IN = 4, 6
# key -> (rows, max ids per bag); user keys u*, item keys i*
USER = {"u0": (30, 8), "u1": (30, 8), "u2": (30, 10)}
ITEM = {"i0": (30, 1), "i1": (30, 1)}
SMALL_USER = {"u0": (40, 3), "u1": (30, 1)}
SMALL_ITEM = {"i0": (20, 2)}


def _ebc(tables: dict[str, tuple[int, int]]) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name=f"t_{key}", embedding_dim=DIM, num_embeddings=rows, feature_names=[key])
        for key, (rows, _) in tables.items()])


class TwoSidedModel(nn.Module):
    def __init__(self, user: dict[str, tuple[int, int]], item: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.user_ebc, self.item_ebc = _ebc(user), _ebc(item)
        self.bottom = nn.Sequential(nn.Linear(DENSE_IN, 8), nn.ReLU(), nn.Linear(8, DIM), nn.ReLU())
        n = 1 + len(user) + len(item)  # vectors in the interaction: dense + one per feature
        self.li = [i for i in range(n) for j in range(i)]  # strictly lower triangle, like DLRM_Net
        self.lj = [j for i in range(n) for j in range(i)]
        self.top = nn.Sequential(nn.Linear(DIM + len(self.li), 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense: torch.Tensor, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor) -> torch.Tensor:
        x = self.bottom(dense)
        user = self.user_ebc(user_kjt).values()
        item = self.item_ebc(item_kjt).values()
        t = torch.cat([x, user, item], dim=1).reshape(x.shape[0], -1, DIM)
        z = torch.bmm(t, t.transpose(1, 2))
        return self.top(torch.cat([x, z[:, self.li, self.lj]], dim=1))


def _kjt(tables: dict[str, tuple[int, int]], batch: int, g: torch.Generator) -> KeyedJaggedTensor:
    lengths = torch.cat([torch.randint(0, most + 1, (batch,), generator=g) for _, most in tables.values()])
    ids = torch.cat([torch.randint(0, rows, (int(n),), generator=g)
                     for (rows, _), n in zip(tables.values(), lengths.view(len(tables), batch).sum(1))])
    return KeyedJaggedTensor.from_lengths_sync(list(tables), ids, lengths)


def _inputs(user: dict, item: dict, batch: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, DENSE_IN, generator=g), _kjt(user, batch, g), _kjt(item, batch, g)


def make_inputs(batch: int, seed: int) -> tuple:
    return _inputs(USER, ITEM, batch, seed)


def build(seed: int = 0) -> tuple[nn.Module, tuple]:
    torch.manual_seed(seed)
    return TwoSidedModel(USER, ITEM), make_inputs(16, 1000 + seed)


def make_small_inputs(batch: int, seed: int) -> tuple:
    return _inputs(SMALL_USER, SMALL_ITEM, batch, seed)


def build_small(seed: int = 0) -> tuple[nn.Module, tuple]:
    torch.manual_seed(seed)
    return TwoSidedModel(SMALL_USER, SMALL_ITEM), make_small_inputs(16, 1000 + seed)


build_small.make_inputs = make_small_inputs  # the worker prefers the factory's make_inputs
