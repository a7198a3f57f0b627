"""A pooled + sequence DLRM for the traffic benchmark: `dmt_fx.models.sequences:sequence_model`.

Pooled: 8 features of dim 16 (one id per bag), in a torchrec EmbeddingBagCollection.
Sequence: 2 features of dim 16 (a watch history, recent searches) in a torchrec
EmbeddingCollection, lengths uniform in 0..MAX_LEN (mean 10, empty sequences included); the
model mean-pools each sequence. Dense arch 13 -> 32 -> 16, over arch (16 + 8 x 16 + 2 x 16)
-> 64 -> 1. The pooled features are read by key (`kt[key]`), as a TorchRec model must: a
sharded EmbeddingBagCollection returns its columns in its sharding's order, not the
configs'. Usage::

    dmt-fx bench traffic --target dmt_fx.models.sequences:sequence_model \\
        --variants flat-table_wise,flat-row_wise,dmt-identity
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection

DIM = 16
DENSE = 13
MAX_LEN = 20  # lengths uniform in 0..MAX_LEN: mean MAX_LEN / 2
POOLED_ROWS = {f"p{i}": rows for i, rows in enumerate([4_000, 3_000, 2_000, 1_500, 1_000, 800, 500, 200])}
SEQUENCE_ROWS = {"history": 5_000, "searches": 3_000}


def _masked_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, L, D] padded rows -> [B, D]: the mean of each sample's first `lengths` rows (0 if none)."""
    mask = (torch.arange(values.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).to(values.dtype)
    return (values * mask.unsqueeze(2)).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)


class SequenceDLRM(nn.Module):
    """over(cat([dense_arch(x), pooled features by key, mean of each sequence]))."""

    def __init__(self) -> None:
        super().__init__()
        self.pooled = EmbeddingBagCollection(
            [EmbeddingBagConfig(name=f"t_{k}", embedding_dim=DIM, num_embeddings=n, feature_names=[k])
             for k, n in POOLED_ROWS.items()], device=torch.device("cpu"))
        self.sequences = EmbeddingCollection(
            [EmbeddingConfig(name=f"s_{k}", embedding_dim=DIM, num_embeddings=n, feature_names=[k])
             for k, n in SEQUENCE_ROWS.items()], device=torch.device("cpu"))
        self.dense_arch = nn.Sequential(nn.Linear(DENSE, 32), nn.ReLU(), nn.Linear(32, DIM), nn.ReLU())
        width = DIM * (1 + len(POOLED_ROWS) + len(SEQUENCE_ROWS))
        self.over_arch = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, dense: torch.Tensor, pooled: KeyedJaggedTensor, sequences: KeyedJaggedTensor) -> torch.Tensor:
        kt = self.pooled(pooled)
        jts = self.sequences(sequences)
        seq = [_masked_mean(jts[k].to_padded_dense(MAX_LEN), jts[k].lengths()) for k in SEQUENCE_ROWS]
        return self.over_arch(torch.cat([self.dense_arch(dense), *[kt[k] for k in POOLED_ROWS], *seq], dim=1))


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor, KeyedJaggedTensor]:
    """Dense features, one skewed id per pooled bag, sequences of 0..MAX_LEN skewed ids."""
    g = torch.Generator().manual_seed(seed)
    keys = list(POOLED_ROWS)
    ids = torch.cat([(torch.rand(batch_size, generator=g) ** 2 * n).long() for n in POOLED_ROWS.values()])
    pooled = KeyedJaggedTensor.from_lengths_sync(keys, ids, torch.ones(len(keys) * batch_size, dtype=torch.long))
    lengths = torch.randint(0, MAX_LEN + 1, (len(SEQUENCE_ROWS) * batch_size,), generator=g)
    per_key = lengths.view(len(SEQUENCE_ROWS), batch_size).sum(1).tolist()
    seq_ids = torch.cat([(torch.rand(int(k), generator=g) ** 2 * n).long()
                         for n, k in zip(SEQUENCE_ROWS.values(), per_key)])
    sequences = KeyedJaggedTensor.from_lengths_sync(list(SEQUENCE_ROWS), seq_ids, lengths)
    return torch.randn(batch_size, DENSE, generator=g), pooled, sequences


def sequence_model(seed: int = 0) -> tuple[SequenceDLRM, tuple]:
    torch.manual_seed(seed)
    return SequenceDLRM(), make_inputs(16, seed)
