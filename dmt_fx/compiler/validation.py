"""Run-time input validation: a bad batch gets a clear error naming the feature and value,
never a crash inside a kernel or a silently wrong lookup.

`InputValidator` is inserted at the top of the graph by passes/validate_inputs.py (on by
default; `transform(..., validate_inputs=False)` turns it off for speed). It checks, per
KeyedJaggedTensor input: missing keys (keys the model never reads
are accepted, as the original accepts them), dtypes (integer ids and lengths,
float weights), lengths that do not sum to the number of ids, ids outside
[0, rows of the feature's table); per plain lookup: id dtype and range, offsets; and that
every dense and sparse input has the same batch size. All checks are vectorised: one pass
over the ids, no per-feature Python loop on the ids. A valid batch costs a few kernels and one
read back per input (a KJT: FBGEMM's bounds check per key, the least id and length); the
messages are worked out only for a refused batch.

In one process on the CPU the id range check of a KJT is left to the lookups when every
lookup reading it is a TorchRec EmbeddingBagCollection of plain nn.EmbeddingBag modules:
torch's CPU kernel refuses an id < 0 or >= rows in every mode (sum, mean, max; weighted or
not; int32 or int64 ids), so a bad id cannot give a silently wrong answer. The model's call
then runs under `LookupGuard`, which turns the lookup's error into the same
InputValidationError (the full check, run only then). Lengths stay checked up front (a
negative length makes offsets that decrease, which some modes accept silently), and so does
everything else. Without the guard (the distributed runtime's rank module, a copied or
unpickled model, ids on a GPU) the validator runs the full check.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt_fx._compat import graph_module_call, set_graph_module_call
from dmt_fx.ir.errors import DMTError

_INT = (torch.int32, torch.int64)
_FATAL = 0  # FBGEMM's BoundsCheckMode.FATAL: raise, change nothing
# Set by LookupGuard for the duration of one call of the model: the validator's inputs go
# into the list (to check them fully if a lookup fails); None: no guard, check everything.
_GUARDED: contextvars.ContextVar[list | None] = contextvars.ContextVar("dmt_lookups_guarded", default=None)


class InputValidationError(DMTError):
    """A batch that does not fit the model."""


def _fail(found: str, expected: str, fix: str) -> None:
    raise InputValidationError(found, expected, [fix, "transform(..., validate_inputs=False) skips these checks"])


class InputValidator(nn.Module):
    """Checks one batch; returns nothing. `_is_impure` keeps dead-code elimination off it."""

    _is_impure = True

    def __init__(self, sparse: Sequence[tuple[str, tuple[str, ...], Mapping[str, int], bool]],
                 plain: Sequence[tuple[str, str, int]], dense: Sequence[str],
                 lookups_check_ids: Sequence[bool] = (), dense_shapes: Sequence[tuple[int, ...] | None] = ()) -> None:
        super().__init__()
        # sparse: (argument, keys, rows per key, weighted); plain: (argument, feature, rows)
        self.sparse, self.plain, self.dense = list(sparse), list(plain), list(dense)
        # per dense argument: its shape after the batch dimension in example_inputs (None: unknown)
        self.dense_shapes = list(dense_shapes) or [None] * len(self.dense)
        # per sparse argument: the rows of each key's table as a tensor, per key order and device
        self.bounds: list[dict] = [{} for _ in self.sparse]
        # per sparse argument: every lookup reading it refuses a bad id on the CPU (see the module doc)
        self.lookups_check_ids = [bool(x) for x in lookups_check_ids] or [False] * len(self.sparse)

    def forward(self, *values: Any) -> None:
        n_sparse, n_plain = len(self.sparse), len(self.plain)
        guarded = _GUARDED.get()
        if guarded is not None:  # keep them: if a lookup fails, LookupGuard checks them fully
            guarded.append(values)
        batch: dict[str, int] = {}
        for spec, bounds, later, kjt in zip(self.sparse, self.bounds, self.lookups_check_ids, values[:n_sparse]):
            batch[spec[0]] = _check_kjt(kjt, *spec, bounds, ids_later=later and guarded is not None)
        for (argument, feature, rows), ids in zip(self.plain, values[n_sparse:n_sparse + n_plain]):
            _check_ids(ids, argument, feature, rows)
        shapes = getattr(self, "dense_shapes", None) or [None] * len(self.dense)  # a validator pickled before
        for argument, shape, tensor in zip(self.dense, shapes, values[n_sparse + n_plain:]):
            if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
                _check_dense(tensor, argument, shape)
                batch[argument] = tensor.shape[0]
        if len(set(batch.values())) > 1:
            _fail(f"batch sizes {batch}", "one batch size for every dense and sparse input",
                  "give every input of forward() the same samples")

    def local_batch(self, *values: Any) -> int:
        """The batch size these inputs carry: a KJT's stride, else a dense input's first
        dimension; -1 when neither comes (a plain lookup's flat ids say nothing of it).
        The distributed runtime compares it across ranks (`runtime/rank_status.py`)."""
        n_sparse, n_plain = len(self.sparse), len(self.plain)
        for kjt in values[:n_sparse]:
            if isinstance(kjt, KeyedJaggedTensor):
                return kjt.stride()
        for tensor in values[n_sparse + n_plain:]:
            if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
                return tensor.shape[0]
        return -1

    def extra_repr(self) -> str:
        return f"sparse={[s[0] for s in self.sparse]}, plain={len(self.plain)}, dense={self.dense}"


class LookupGuard:
    """The model's call (GraphModule's `_wrapped_call`) in one process: the validator may leave
    the id ranges of a KJT to the lookups (`_GUARDED`); when the call fails, the validator's
    inputs are checked fully and a refused batch raises its InputValidationError (from the
    lookup's error). Any other failure, or a batch the full check accepts, re-raises as is."""

    def __init__(self, call: Callable[..., Any], path: str) -> None:
        self.call, self.path = call, path

    def __call__(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen: list = []
        token = _GUARDED.set(seen)
        try:
            return self.call(module, *args, **kwargs)
        except (RuntimeError, IndexError) as error:
            _GUARDED.reset(token)
            token = None
            for values in seen[:1]:  # the validator ran: check what it left to the lookups
                try:
                    module.get_submodule(self.path)(*values)
                except InputValidationError as refusal:
                    raise refusal from error
            raise
        finally:
            if token is not None:
                _GUARDED.reset(token)


def install_lookup_guard(gm: nn.Module, path: str) -> bool:
    """Run `gm`'s calls under LookupGuard (its own class: a GraphModule's class is made for it
    alone, and keeps `_wrapped_call` when recompiled). False, and the full checks stay, where
    the class has no `_wrapped_call` to wrap."""
    cls = type(gm)
    call = graph_module_call(cls)
    if call is None or isinstance(call, LookupGuard):
        return isinstance(call, LookupGuard)
    set_graph_module_call(cls, LookupGuard(call, path))
    return True


def _check_kjt(kjt: Any, argument: str, keys: tuple[str, ...], rows: Mapping[str, int], weighted: bool,
               bounds: dict, ids_later: bool = False) -> int:
    if not isinstance(kjt, KeyedJaggedTensor):
        _fail(f"argument {argument!r} of type {type(kjt).__name__}", "a KeyedJaggedTensor",
              "pass the sparse features as a torchrec KeyedJaggedTensor")
    given = kjt.keys()
    # Keys the model never reads are accepted, as the original accepts them; missing ones
    # would fail inside the lookup. A key order once found complete is remembered.
    order = tuple(given)
    missing = [] if order in bounds else [k for k in keys if k not in given]
    if not missing:
        bounds[order] = True
    if missing:
        _fail(f"argument {argument!r} with keys {list(given)} (missing {missing})",
              f"at least the keys {list(keys)}", "add the missing features to the KeyedJaggedTensor")
    values, lengths = kjt.values(), kjt.lengths()
    if values.dtype not in _INT or lengths.dtype not in _INT:
        _fail(f"argument {argument!r} with ids of dtype {values.dtype} and lengths of dtype {lengths.dtype}",
              "int32 or int64 ids and lengths", "cast with .long()")
    weights = kjt.weights_or_none()
    if weighted and (weights is None or not weights.is_floating_point()):
        _fail(f"argument {argument!r} with weights {None if weights is None else weights.dtype}",
              "float per-id weights (the collection is weighted)", "pass weights=... to the KeyedJaggedTensor")
    stride = kjt.stride()
    if lengths.numel() != stride * len(given):
        _check_sum(int(lengths.sum()), values, argument, bool((lengths < 0).any()))  # the first complaint
        _fail(f"argument {argument!r}: {lengths.numel()} lengths for {len(given)} keys x batch {stride}",
              "one length per key and sample", "rebuild the KeyedJaggedTensor with from_lengths_sync")
    # The KJT's own per-key sums, cached on it: the lookups that follow reuse them.
    _check_sum(sum(kjt.length_per_key()), values, argument)  # negative lengths: in the fused check
    if ids_later and values.device.type == "cpu":  # the lookups refuse bad ids; lengths only
        if lengths.numel() and int(lengths.min()) < 0:
            _diagnose(values, lengths, given, argument, rows, "a negative length")
        return stride
    refused = _refusal(kjt, values, given, rows, bounds)
    if refused is not None:
        _diagnose(values, lengths, given, argument, rows, refused)
    return stride


def _check_negative_length(lengths: torch.Tensor, given: Sequence[str], argument: str) -> None:
    """The first negative length, named by feature and sample."""
    negative = (lengths < 0).nonzero()
    if negative.numel() and lengths.numel() % max(len(given), 1) == 0:
        i, stride = int(negative[0]), lengths.numel() // len(given)
        _fail(f"feature {given[i // stride]!r} length {int(lengths[i])} (argument {argument!r}, sample {i % stride})",
              f"non-negative lengths for feature {given[i // stride]!r}", "rebuild the lengths from the bags")


def _check_sum(total: int, values: torch.Tensor, argument: str, negative: bool = False) -> None:
    if total != values.numel() or negative:
        _fail(f"argument {argument!r}: lengths sum to {total} for {values.numel()} ids",
              "non-negative lengths that sum to the number of ids", "rebuild the lengths from the bags")


def _refusal(kjt: KeyedJaggedTensor, values: torch.Tensor, given: list[str], rows: Mapping[str, int],
             bounds: dict) -> str | None:
    """Why the batch is refused (None: every length >= 0, every id in [0, rows of its key's
    table)). On the CPU four small kernels and one read back: FBGEMM's bounds check (the check
    TorchRec's own lookups run) over the ids with one bag per key (the KJT's per-key offsets,
    cached on it: 8 segments, not 8 x batch), and the least id and length; the message is
    worked out afterwards, by _diagnose, only for a refused batch."""
    if values.numel() == 0:
        return "a negative length" if bool((kjt.lengths() < 0).any()) else None
    limit = _limits(bounds, tuple(given), rows, values.device)
    if values.device.type != "cpu":  # FBGEMM's check asserts on the device: compare instead
        # Per-key counts summed on the device and the output size given: no read back but
        # the verdict's (each is a GPU sync; lengths.numel() == keys x stride was checked).
        per_key = kjt.lengths().view(len(given), -1).sum(1)
        bad = (values < 0) | (values >= limit.repeat_interleave(per_key, output_size=values.numel()))
        return "out of range" if bool(bad.any() | (kjt.lengths() < 0).any()) else None
    try:  # raises on an id >= its table's rows
        torch.ops.fbgemm.bounds_check_indices(limit, values, torch.tensor(kjt.offset_per_key(), dtype=values.dtype),
                                              _FATAL, _no_warnings(bounds))
    except RuntimeError as error:
        return str(error).split("\n")[0]
    # the check above lets negative ids through, and per-key offsets hide a negative length
    return "a negative id or length" if int(torch.minimum(values.min(), kjt.lengths().min())) < 0 else None


def _limits(bounds: dict, given: tuple[str, ...], rows: Mapping[str, int], device: torch.device) -> torch.Tensor:
    """Rows of each given key's table (keys no lookup reads: any id), made once per key order."""
    limit = bounds.get((given, device))
    if limit is None:
        unread = torch.iinfo(torch.int64).max  # ids of keys no lookup reads are never used
        limit = bounds[(given, device)] = torch.tensor([rows.get(k, unread) for k in given], device=device)
    return limit


def _no_warnings(bounds: dict) -> torch.Tensor:
    """The counter FBGEMM's check takes; written only in its warning mode, never in FATAL."""
    if "warnings" not in bounds:
        bounds["warnings"] = torch.zeros(1, dtype=torch.int64)
    return bounds["warnings"]


def _diagnose(values: torch.Tensor, lengths: torch.Tensor, given: list[str], argument: str,
              rows: Mapping[str, int], refused: str) -> None:
    """The first bad length or id of a KJT the fused check refused, named (runs only then;
    on the CPU, whatever device the ids are on: the message costs nothing on a valid batch)."""
    values, lengths = values.cpu(), lengths.cpu()
    _check_negative_length(lengths, given, argument)
    _check_sum(int(lengths.sum()), values, argument)
    per_key = lengths.view(len(given), -1).sum(1)
    unread = torch.iinfo(torch.int64).max
    limit = torch.repeat_interleave(torch.tensor([rows.get(k, unread) for k in given]), per_key)
    bad = (values < 0) | (values >= limit)
    if not bool(bad.any()):  # not a length nor an id: FBGEMM's own words
        _fail(f"argument {argument!r}: {refused}", "ids and offsets FBGEMM's bounds check accepts",
              "rebuild the KeyedJaggedTensor with from_lengths_sync")
    i = int(bad.nonzero()[0])
    key = given[int(torch.searchsorted(per_key.cumsum(0), torch.tensor(i), right=True))]
    _fail(f"feature {key!r} id {int(values[i])} (argument {argument!r}, position {i})",
          f"ids in [0, {rows[key]}) for feature {key!r}", "map ids into the table's range (e.g. modulo the size)")


def _check_dense(tensor: torch.Tensor, argument: str, shape: tuple[int, ...] | None) -> None:
    """A dense input must keep the per-sample shape of example_inputs: a wrong width would
    fail later inside the first dense layer (and, distributed, after this rank's peers
    entered a collective it never joins)."""
    if shape is not None and tuple(tensor.shape[1:]) != tuple(shape):
        width = f" (width {tensor.shape[-1]})" if tensor.dim() == 2 else ""
        _fail(f"dense input {argument!r} of shape {list(tensor.shape)}{width}",
              f"shape [batch, {', '.join(map(str, shape))}] as in example_inputs",
              f"give every sample of {argument!r} the shape {list(shape)}")


def _check_ids(ids: Any, argument: str, feature: str, rows: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype not in _INT:
        _fail(f"ids of {feature!r} ({argument}) of {getattr(ids, 'dtype', type(ids).__name__)}",
              "an int32 or int64 tensor", "cast with .long()")
    if not ids.numel():
        return
    low, high = (int(x) for x in torch.aminmax(ids))  # one kernel for both
    if low < 0 or high >= rows:
        bad = low if low < 0 else high
        _fail(f"feature {feature!r} id {bad} ({argument})", f"ids in [0, {rows}) for feature {feature!r}",
              "map ids into the table's range")
