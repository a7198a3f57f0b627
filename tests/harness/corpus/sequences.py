"""Sequence (unpooled) embedding models: lookups that return one row per id.

- `PooledSequenceDLRM`: a pooled torchrec EmbeddingBagCollection (user, item) next to an
  EmbeddingCollection of a watch history and recent searches (width 6: padded to 8 inside
  the sharded table), each sequence mean-pooled in the model, an MLP over all;
- `Bert4RecStyle`: a sequence-only model in the shape of BERT4Rec (torchrec 1.8 ships no
  bert4rec example): an EmbeddingCollection over an item history, padded to a fixed length,
  learned positions, one transformer encoder layer (no dropout), a masked mean, a head;
- `PlainSequence`: plain nn.Embedding read as [B, L] sequences (a [B, L, D] output; one
  with padding_idx=0), an attention-style reduction in the model, and a pooled
  nn.EmbeddingBag beside them.
Inputs: (dense [B, DENSE], KJT) or (dense, ids [B, L], bag ids [B, 2]); outputs [B, 1] logits.
Sequence lengths vary from 0 to MAX_LEN: empty sequences in every batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

DENSE, MAX_LEN, SEQ_LEN = 3, 5, 4
POOLED_ROWS = {"user": 13, "item": 17}
SEQUENCE_ROWS = {"history": 19, "searches": 11}


def _kjt(rows: dict[str, int], batch: int, g: torch.Generator, max_len: int) -> KeyedJaggedTensor:
    lengths = torch.randint(0, max_len + 1, (len(rows) * batch,), generator=g)
    lengths[::3] = 0  # empty sequences in every batch
    per_key = lengths.view(len(rows), batch).sum(1).tolist()
    ids = torch.cat([torch.randint(0, n, (int(k),), generator=g) for n, k in zip(rows.values(), per_key)])
    return KeyedJaggedTensor.from_lengths_sync(list(rows), ids, lengths)


def _masked_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, L, D] padded rows -> [B, D]: the mean of each sample's first `lengths` rows (0 if none)."""
    mask = (torch.arange(values.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).to(values.dtype)
    return (values * mask.unsqueeze(2)).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)


class PooledSequenceDLRM(nn.Module):
    def __init__(self, seed: int = 0, seq_dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.pooled = EmbeddingBagCollection([EmbeddingBagConfig(name=f"t_{k}", embedding_dim=8, num_embeddings=n,
                                                                 feature_names=[k]) for k, n in POOLED_ROWS.items()])
        self.sequences = EmbeddingCollection([EmbeddingConfig(name=f"s_{k}", embedding_dim=seq_dim, num_embeddings=n,
                                                              feature_names=[k]) for k, n in SEQUENCE_ROWS.items()])
        self.dense = nn.Linear(DENSE, 8)
        self.over = nn.Sequential(nn.Linear(8 * 3 + 2 * seq_dim, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense: torch.Tensor, pooled: KeyedJaggedTensor, sequences: KeyedJaggedTensor) -> torch.Tensor:
        kt = self.pooled(pooled)
        jts = self.sequences(sequences)
        seq = [_masked_mean(jts[k].to_padded_dense(MAX_LEN), jts[k].lengths()) for k in SEQUENCE_ROWS]
        return self.over(torch.cat([self.dense(dense), kt.values(), *seq], dim=1))


def pooled_sequence_inputs(batch: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed + 2300)
    return torch.rand(batch, DENSE, generator=g), _kjt(POOLED_ROWS, batch, g, 3), _kjt(SEQUENCE_ROWS, batch, g, MAX_LEN)


class Bert4RecStyle(nn.Module):
    """The sequence-only shape of BERT4Rec: item history -> positions -> encoder -> pooled -> head."""

    def __init__(self, seed: int = 0, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.items = EmbeddingCollection([EmbeddingConfig(name="item_table", embedding_dim=dim, num_embeddings=23,
                                                          feature_names=["history", "searches"])])
        self.positions = nn.Parameter(torch.randn(MAX_LEN, dim) * 0.1)
        # No biases: attention's key bias has a zero gradient up to rounding, which Adagrad
        # would turn into full-size steps of noise (different noise in one process and on a world).
        self.encoder = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=16, dropout=0.0, batch_first=True,
                                                  bias=False)
        self.head = nn.Linear(2 * dim + DENSE, 1)

    def forward(self, dense: torch.Tensor, sequences: KeyedJaggedTensor) -> torch.Tensor:
        jts = self.items(sequences)
        pooled = []
        for key in ("history", "searches"):
            hidden = self.encoder(jts[key].to_padded_dense(MAX_LEN) + self.positions)
            pooled.append(_masked_mean(hidden, jts[key].lengths()))
        return self.head(torch.cat([*pooled, dense], dim=1))


def bert4rec_inputs(batch: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed + 2301)
    return torch.rand(batch, DENSE, generator=g), _kjt(SEQUENCE_ROWS, batch, g, MAX_LEN)


class PlainSequence(nn.Module):
    """nn.Embedding on [B, L] ids (two tables, one of width 6), weighted by a dense query."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.history = nn.Embedding(19, 8)
        self.clicks = nn.Embedding(11, 6, padding_idx=0)  # 0 pads: a zero row that never trains
        self.bag = nn.EmbeddingBag(13, 8, mode="sum")
        self.query = nn.Linear(DENSE, 8)
        self.head = nn.Linear(8 + 6 + 8 + 8, 1)

    def forward(self, dense: torch.Tensor, history: torch.Tensor, clicks: torch.Tensor,
                bag_ids: torch.Tensor) -> torch.Tensor:
        q = self.query(dense)
        seq = self.history(history)  # [B, L, 8]
        attention = torch.softmax((seq * q.unsqueeze(1)).sum(2), dim=1)
        return self.head(torch.cat([(seq * attention.unsqueeze(2)).sum(1), self.clicks(clicks).mean(1),
                                    self.bag(bag_ids), q], dim=1))


def plain_sequence_inputs(batch: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed + 2302)
    return (torch.rand(batch, DENSE, generator=g), torch.randint(0, 19, (batch, SEQ_LEN), generator=g),
            torch.randint(0, 11, (batch, 3), generator=g), torch.randint(0, 13, (batch, 2), generator=g))


def pooled_sequence(seed: int = 0) -> tuple[nn.Module, tuple]:
    return PooledSequenceDLRM(seed), pooled_sequence_inputs(4, 0)


def bert4rec(seed: int = 0) -> tuple[nn.Module, tuple]:
    return Bert4RecStyle(seed), bert4rec_inputs(4, 0)


def plain_sequence(seed: int = 0) -> tuple[nn.Module, tuple]:
    return PlainSequence(seed), plain_sequence_inputs(4, 0)


pooled_sequence.make_inputs = pooled_sequence_inputs
bert4rec.make_inputs = bert4rec_inputs
plain_sequence.make_inputs = plain_sequence_inputs
