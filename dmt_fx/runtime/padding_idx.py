"""Tables built with `padding_idx` on TorchRec's pooled tables.

`nn.Embedding(..., padding_idx=p)` / `nn.EmbeddingBag(..., padding_idx=p)`: row p is zero
(at init, and it gets no gradient), and a bag skips the ids equal to p: a sum adds the zero
row, a mean does not count it (nn.EmbeddingBag excludes padding ids from the bag's size),
an nn.Embedding lookup of p returns the zero row. TorchRec pools every id it receives, so
`PlainKJT` drops the ids equal to p from each bag before the lookup: sums and means are
those of the other ids, a bag left empty pools to zeros (the row p itself), and row p is
never looked up, so no optimizer touches it (it stays zero in every checkpoint).
"""

from __future__ import annotations

import torch


def local_padding(padding_idx: int | None, row_offset: int, rows: int) -> int | None:
    """The padding row in a table's own ids (a joint table's field reads rows from row_offset)."""
    if padding_idx is None or not row_offset <= padding_idx < row_offset + rows:
        return None
    return padding_idx - row_offset


def drop_padding(values: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None,
                 padding: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(values, lengths, weights) of the bags without their ids equal to `padding`."""
    keep = values != padding
    bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    kept = torch.zeros_like(lengths).index_add_(0, bag, keep.to(lengths.dtype))
    return values[keep], kept, None if weights is None else weights[keep]
