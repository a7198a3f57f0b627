"""Run-time input validation: a bad batch gets a clear error naming the feature and value,
never a crash inside a kernel or a silently wrong lookup.

`InputValidator` is inserted at the top of the graph by passes/validate_inputs.py (on by
default; `transform(..., validate_inputs=False)` turns it off for speed). It checks, per
KeyedJaggedTensor input: missing keys (keys the model never reads
are accepted, as the original accepts them), dtypes (integer ids and lengths,
float weights), lengths that do not sum to the number of ids, ids outside
[0, rows of the feature's table); per plain lookup: id dtype and range, offsets; and that
every dense and sparse input has the same batch size. All checks are vectorised: one pass
over the ids, no per-feature Python loop on the ids.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt_fx.ir.errors import DMTError

_INT = (torch.int32, torch.int64)


class InputValidationError(DMTError):
    """A batch that does not fit the model."""


def _fail(found: str, expected: str, fix: str) -> None:
    raise InputValidationError(found, expected, [fix, "transform(..., validate_inputs=False) skips these checks"])


class InputValidator(nn.Module):
    """Checks one batch; returns nothing. `_is_impure` keeps dead-code elimination off it."""

    _is_impure = True

    def __init__(self, sparse: Sequence[tuple[str, tuple[str, ...], Mapping[str, int], bool]],
                 plain: Sequence[tuple[str, str, int]], dense: Sequence[str]) -> None:
        super().__init__()
        # sparse: (argument, keys, rows per key, weighted); plain: (argument, feature, rows)
        self.sparse, self.plain, self.dense = list(sparse), list(plain), list(dense)

    def forward(self, *values: Any) -> None:
        n_sparse, n_plain = len(self.sparse), len(self.plain)
        batch: dict[str, int] = {}
        for spec, kjt in zip(self.sparse, values[:n_sparse]):
            batch[spec[0]] = _check_kjt(kjt, *spec)
        for (argument, feature, rows), ids in zip(self.plain, values[n_sparse:n_sparse + n_plain]):
            _check_ids(ids, argument, feature, rows)
        for argument, tensor in zip(self.dense, values[n_sparse + n_plain:]):
            if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
                batch[argument] = tensor.shape[0]
        if len(set(batch.values())) > 1:
            _fail(f"batch sizes {batch}", "one batch size for every dense and sparse input",
                  "give every input of forward() the same samples")

    def extra_repr(self) -> str:
        return f"sparse={[s[0] for s in self.sparse]}, plain={len(self.plain)}, dense={self.dense}"


def _check_kjt(kjt: Any, argument: str, keys: tuple[str, ...], rows: Mapping[str, int], weighted: bool) -> int:
    if not isinstance(kjt, KeyedJaggedTensor):
        _fail(f"argument {argument!r} of type {type(kjt).__name__}", "a KeyedJaggedTensor",
              "pass the sparse features as a torchrec KeyedJaggedTensor")
    given = list(kjt.keys())
    # Keys the model never reads are accepted, as the original accepts them; missing ones
    # would fail inside the lookup.
    missing = [k for k in keys if k not in given]
    if missing:
        _fail(f"argument {argument!r} with keys {given} (missing {missing})",
              f"at least the keys {list(keys)}", "add the missing features to the KeyedJaggedTensor")
    values, lengths = kjt.values(), kjt.lengths()
    if values.dtype not in _INT or lengths.dtype not in _INT:
        _fail(f"argument {argument!r} with ids of dtype {values.dtype} and lengths of dtype {lengths.dtype}",
              "int32 or int64 ids and lengths", "cast with .long()")
    weights = kjt.weights_or_none()
    if weighted and (weights is None or not weights.is_floating_point()):
        _fail(f"argument {argument!r} with weights {None if weights is None else weights.dtype}",
              "float per-id weights (the collection is weighted)", "pass weights=... to the KeyedJaggedTensor")
    if int(lengths.sum()) != values.numel() or (lengths < 0).any():
        _fail(f"argument {argument!r}: lengths sum to {int(lengths.sum())} for {values.numel()} ids",
              "non-negative lengths that sum to the number of ids", "rebuild the lengths from the bags")
    stride = kjt.stride()
    if lengths.numel() != stride * len(given):
        _fail(f"argument {argument!r}: {lengths.numel()} lengths for {len(given)} keys x batch {stride}",
              "one length per key and sample", "rebuild the KeyedJaggedTensor with from_lengths_sync")
    # One vectorised range check: each id against the rows of its key's table.
    per_key = lengths.view(len(given), stride).sum(1)
    unread = torch.iinfo(torch.int64).max  # ids of keys no lookup reads are never used
    limit = torch.repeat_interleave(torch.tensor([rows.get(k, unread) for k in given], device=values.device),
                                    per_key)
    bad = (values < 0) | (values >= limit)
    if bad.any():
        i = int(bad.nonzero()[0])
        key = given[int(torch.searchsorted(per_key.cumsum(0), torch.tensor(i), right=True))]
        _fail(f"feature {key!r} id {int(values[i])} (argument {argument!r}, position {i})",
              f"ids in [0, {rows[key]}) for feature {key!r}", "map ids into the table's range (e.g. modulo the size)")
    return stride


def _check_ids(ids: Any, argument: str, feature: str, rows: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype not in _INT:
        _fail(f"ids of {feature!r} ({argument}) of {getattr(ids, 'dtype', type(ids).__name__)}",
              "an int32 or int64 tensor", "cast with .long()")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        _fail(f"feature {feature!r} id {bad} ({argument})", f"ids in [0, {rows}) for feature {feature!r}",
              "map ids into the table's range")
