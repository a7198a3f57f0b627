"""Batches for distributed runs: global synthetic batches and each rank's slice of them."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from dmt_fx._compat import pytree


def slice_kjt(kjt: KeyedJaggedTensor, start: int, stop: int) -> KeyedJaggedTensor:
    """Samples [start, stop) of every feature (ids, lengths and weights)."""
    jts = {}
    for key, jt in kjt.to_dict().items():
        offsets = jt.offsets()
        lo, hi = int(offsets[start]), int(offsets[stop])
        weights = jt.weights_or_none()
        jts[key] = JaggedTensor(values=jt.values()[lo:hi], lengths=jt.lengths()[start:stop],
                                weights=None if weights is None else weights[lo:hi])
    return KeyedJaggedTensor.from_jt_dict(jts)


def slice_batch(inputs: Any, start: int, stop: int) -> Any:
    """Rows [start, stop) of a batch: tensors along dim 0, KJTs per sample, the fields of a
    batch dataclass that is not a pytree node (a user's batch class) as the rest."""
    def cut(x):
        if isinstance(x, KeyedJaggedTensor):
            return slice_kjt(x, start, stop)
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return x[start:stop]
        if _is_dataclass_batch(x):
            return dataclasses.replace(x, **{f.name: slice_batch(getattr(x, f.name), start, stop)
                                             for f in dataclasses.fields(x) if f.init})
        return x
    return pytree.tree_map(cut, inputs, is_leaf=lambda x: isinstance(x, KeyedJaggedTensor))


def _is_dataclass_batch(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def _tensor_leaves(inputs: Any) -> list[torch.Tensor]:
    """The batch's tensors, inside batch dataclasses too."""
    found = []
    for leaf in pytree.tree_leaves(inputs):
        if _is_dataclass_batch(leaf):
            found += _tensor_leaves([getattr(leaf, f.name) for f in dataclasses.fields(leaf)])
        elif isinstance(leaf, torch.Tensor):
            found.append(leaf)
    return found


def clicks(inputs: Any, seed: int) -> torch.Tensor:
    """Learnable synthetic labels: a noisy linear rule on the first dense tensor's first
    features (random labels when the batch has no dense tensor)."""
    tensors = _tensor_leaves(inputs)
    dense = next((x for x in tensors if x.is_floating_point() and x.dim() == 2), None)
    if dense is None:
        return labels(len(tensors[0]), seed)
    g = torch.Generator().manual_seed(20_000 + seed)
    score = dense[:, 0] - 0.5 * dense[:, 1 % dense.shape[1]] + 0.5 * torch.randn(dense.shape[0], generator=g)
    return (score > 0).float().unsqueeze(1)


def labels(batch_size: int, seed: int) -> torch.Tensor:
    """Click labels for a synthetic global batch (deterministic in the seed)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randint(0, 2, (batch_size, 1), generator=g).float()


def synthetic_inputs(example_inputs: tuple, num_embeddings: dict[str, int], batch_size: int, seed: int) -> tuple:
    """A random batch shaped like `example_inputs`: dense tensors with the same trailing
    shape, KJTs with 0-3 ids per bag below each feature's table size."""
    g = torch.Generator().manual_seed(seed)

    def make(x):
        if isinstance(x, KeyedJaggedTensor):
            keys = x.keys()
            lengths = torch.randint(0, 4, (len(keys) * batch_size,), generator=g)
            ids = torch.cat([torch.randint(0, num_embeddings.get(k, 1), (int(n),), generator=g)
                             for k, n in zip(keys, lengths.view(len(keys), batch_size).sum(1))])
            weights = torch.rand(ids.numel(), generator=g) if x.weights_or_none() is not None else None
            return KeyedJaggedTensor.from_lengths_sync(keys, ids, lengths, weights=weights)
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0:
            return torch.randn((batch_size, *x.shape[1:]), generator=g, dtype=x.dtype)
        return x
    return pytree.tree_map(make, example_inputs, is_leaf=lambda x: isinstance(x, KeyedJaggedTensor))
