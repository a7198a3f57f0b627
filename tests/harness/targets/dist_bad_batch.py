"""A TARGET whose batches turn bad on ONE rank at one step (tests/test_rank_agreement.py).

The built-in DLRM and its batches; `DMT_TEST_BAD_BATCH="rank=R,step=S,kind=K"` spoils rank
R's local batch at step S: kind `id` (an id equal to its table's rows), `wrapping_id` (2**32:
as the int32 the peer exchange sends, it would wrap to row 0),
`length` (a negative length, the lengths' sum unchanged), `dense` (12 dense features
instead of 13) or `short` (one sample fewer than the other ranks' batches). The moment
of the fault goes to the file `DMT_TEST_BAD_BATCH_STAMP` names (the test times each rank's
exit from it).
"""

from __future__ import annotations

import os
import time

import torch
from torchrec import KeyedJaggedTensor

from dmt_fx.jobs.data import slice_batch
from dmt_fx.models import zoo

# The step of the batch being made (make_inputs is called with seed = step), kept process-wide:
# the worker imports a TARGET file once per hook, so module globals are not shared.
_STEP = "_DMT_TEST_BAD_BATCH_STEP"


def build():
    return zoo.default_dlrm()


def make_inputs(batch_size: int, seed: int):
    os.environ[_STEP] = str(seed)
    return zoo.make_inputs(batch_size, seed)


def slice_inputs(inputs, start: int, stop: int):
    dense, kjt = slice_batch(inputs, start, stop)
    spec = dict(part.split("=") for part in os.environ.get("DMT_TEST_BAD_BATCH", "").split(",") if "=" in part)
    if not spec or start // (stop - start) != int(spec["rank"]) or os.environ.get(_STEP) != spec["step"]:
        return dense, kjt
    stamp = os.environ.get("DMT_TEST_BAD_BATCH_STAMP")
    if stamp:
        with open(stamp, "w") as handle:
            handle.write(repr(time.time()))
    return spoil(dense, kjt, spec["kind"])


def spoil(dense: torch.Tensor, kjt: KeyedJaggedTensor, kind: str):
    values, lengths = kjt.values().clone(), kjt.lengths().clone()
    if kind == "dense":
        return dense[:, :-1].contiguous(), kjt
    if kind == "short":  # one sample fewer than every other rank's local batch, consistent in itself
        keys, batch = kjt.keys(), kjt.stride()
        per_key = lengths.view(len(keys), batch)
        ends = per_key.sum(1).cumsum(0)
        kept = [values[int(end - row.sum()):int(end - row[-1])] for row, end in zip(per_key, ends)]
        return dense[:-1], KeyedJaggedTensor(keys=keys, values=torch.cat(kept), lengths=per_key[:, :-1].reshape(-1))
    if kind in ("id", "wrapping_id"):  # the first id: its key's table size, one beyond the last row
        key = kjt.keys()[int(torch.searchsorted(torch.tensor(kjt.length_per_key()).cumsum(0), 0, right=True))]
        values[0] = 2**32 if kind == "wrapping_id" else zoo.num_embeddings()[key]
    elif kind == "length":  # the first non-empty bag gets -1, the next one the rest
        i = int((lengths > 0).nonzero()[0])
        lengths[i + 1] += lengths[i] + 1
        lengths[i] = -1
    return dense, KeyedJaggedTensor(keys=kjt.keys(), values=values, lengths=lengths)
