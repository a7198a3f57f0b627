"""TorchRec's BERT4Rec example model, restated for the tests: its structure, not its file.

The installed torchrec wheel ships no bert4rec; the model lives in the torchrec repository
(examples/bert4rec/models/bert4rec.py, read at commit 17dd8f0). This module rebuilds the
same computation, op for op, under other names, so the compiler meets what that code does:

  * one KeyedJaggedTensor argument (key "item"); forward() reads its ids directly
    (`kjt["item"].to_padded_dense(max_len)`) to build the attention mask (id > 0);
  * the history arch: an EmbeddingCollection (table "item_embedding", uniform init in
    [-1, 1]); for `key in kjt.keys()` (a Python loop over the KJT's keys, which plain
    torch.fx tracing cannot follow), the rows padded with
    `torch.ops.fbgemm.jagged_2d_to_dense(values, offsets, max_len)`, concatenated on the
    sequence axis, plus a learned positional table repeated over the batch, LayerNorm over
    (max_len, dim), Dropout;
  * transformer blocks: pre-norm residuals around a multi-head attention (three Linear
    projections, scaled dot products, masked_fill(mask == 0, -1e9), softmax, Dropout on the
    weights, an output Linear) and a feed-forward (Linear, ReLU, Dropout, Linear), each
    block ending in Dropout;
  * a Linear from dim to the vocabulary: logits [B, max_len, vocab].

One change: the original passes `pad_from_beginning=False` to `to_padded_dense`, an argument
torchrec 1.8's JaggedTensor does not take (the model fails on any batch there); False is the
default side, so it is left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

VOCAB, MAX_LEN, DIM, HEADS, LAYERS = 20, 6, 8, 2, 2


class _Scores(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                dropout: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e9)
        weights = nn.functional.softmax(scores, dim=-1)
        if dropout is not None:
            weights = dropout(weights)
        return torch.matmul(weights, v), weights


class _MultiHead(nn.Module):
    def __init__(self, heads: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.d_k, self.heads = dim // heads, heads
        self.linear_layers = nn.ModuleList([nn.Linear(dim, dim) for _ in range(3)])
        self.output_linear = nn.Linear(dim, dim)
        self.attention = _Scores()
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        batch = q.size(0)
        q, k, v = [layer(x).view(batch, -1, self.heads, self.d_k).transpose(1, 2)
                   for layer, x in zip(self.linear_layers, (q, k, v))]
        x, _ = self.attention(q, k, v, mask=mask, dropout=self.dropout)
        return self.output_linear(x.transpose(1, 2).contiguous().view(batch, -1, self.heads * self.d_k))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1, self.w_2, self.dropout = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(nn.functional.relu(self.w_1(x))))


class _PreNormResidual(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm, self.dropout = nn.LayerNorm(dim), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        return x + self.dropout(sublayer(self.norm(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attention = _MultiHead(heads, dim, dropout)
        self.feed_forward = _FeedForward(dim, hidden, dropout)
        self.input_sublayer, self.output_sublayer = _PreNormResidual(dim, dropout), _PreNormResidual(dim, dropout)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.input_sublayer(x, lambda y: self.attention.forward(y, y, y, mask=mask))
        return self.dropout(self.output_sublayer(x, self.feed_forward))


class _History(nn.Module):
    def __init__(self, vocab: int, length: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.emb_dim, self.history_len = dim, length
        self.positional = nn.Parameter(torch.randn(length, dim))
        self.layernorm = nn.LayerNorm([length, dim])
        self.dropout = nn.Dropout(p=dropout)
        self.ec = EmbeddingCollection(tables=[EmbeddingConfig(
            name="item_embedding", embedding_dim=dim, num_embeddings=vocab, feature_names=["item"],
            weight_init_max=1.0, weight_init_min=-1.0)])

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        rows = self.ec(kjt)
        padded = [torch.ops.fbgemm.jagged_2d_to_dense(values=rows[key].values(), offsets=rows[key].offsets(),
                                                      max_sequence_length=self.history_len)
                  .view(-1, self.history_len, self.emb_dim) for key in kjt.keys()]
        x = torch.cat(padded, dim=1) + self.positional.unsqueeze(0).repeat(kjt.stride(), 1, 1)
        return self.dropout(self.layernorm(x))


class TorchRecBERT4Rec(nn.Module):
    """BERT4Rec(vocab_size, max_len, emb_dim, nhead, num_layers, dropout) of the example."""

    def __init__(self, vocab_size: int = VOCAB, max_len: int = MAX_LEN, emb_dim: int = DIM, nhead: int = HEADS,
                 num_layers: int = LAYERS, dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab_size, self.emb_dim, self.max_len = vocab_size, emb_dim, max_len
        self.history = _History(vocab_size, max_len, emb_dim, dropout)
        self.transformer_blocks = nn.ModuleList([_Block(emb_dim, nhead, emb_dim * 4, dropout)
                                                 for _ in range(num_layers)])
        self.out = nn.Linear(emb_dim, vocab_size)

    def forward(self, input: KeyedJaggedTensor) -> torch.Tensor:
        ids = input["item"].to_padded_dense(desired_length=self.max_len)
        mask = (ids > 0).unsqueeze(1).repeat(1, ids.size(1), 1).unsqueeze(1)
        x = self.history(input)
        for block in self.transformer_blocks:
            x = block.forward(x, mask)
        return self.out(x)


def bert4rec_inputs(batch: int, seed: int) -> tuple[KeyedJaggedTensor]:
    """Histories of 0..MAX_LEN items (ids 1..VOCAB-1; 0 is the example's padding id), the
    first sample's empty."""
    g = torch.Generator().manual_seed(seed + 4100)
    lengths = torch.randint(0, MAX_LEN + 1, (batch,), generator=g)
    lengths[0] = 0
    values = torch.randint(1, VOCAB, (int(lengths.sum()),), generator=g)
    return (KeyedJaggedTensor.from_lengths_sync(keys=["item"], values=values, lengths=lengths),)


def masked_item_loss(logits: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """The example's objective on these batches: cross-entropy of each real position's item
    (padding positions left out), summed (a sum splits exactly over ranks)."""
    targets = kjt["item"].to_padded_dense(desired_length=logits.shape[1])
    real = targets > 0
    return nn.functional.cross_entropy(logits[real], targets[real], reduction="sum")


def bert4rec(dropout: float = 0.1) -> tuple[TorchRecBERT4Rec, tuple[KeyedJaggedTensor]]:
    torch.manual_seed(0)
    return TorchRecBERT4Rec(dropout=dropout), bert4rec_inputs(8, 0)
