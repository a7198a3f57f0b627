"""Every rank must distribute the same model: a fingerprint of each tensor, compared at `distribute`.

Why: `distribute` copies each host's tables from that host's ranks' own copies, while DDP
makes the dense part rank 0's. Ranks that built different models (a script that seeds torch
but not numpy, whose global RNG the reference DLRM draws its weights from) would train a
mixture that equals no rank's model, silently.

How (`check_same_model`, on every rank, before any table is sharded):
  1. per floating tensor of the logical model's state dict (original keys, in order): four
     float64 numbers, the sum, the sum of absolute values, and both again with each row
     weighted by its index + 1 (so rows swapped or moved are seen too); a tensor on the meta
     device has no values: NaN, never compared;
  2. one all-gather of a 3-number header (how many tensors, a hash of their keys and
     shapes, a hash of the tower plan: a partitioner fed each rank's own example_inputs can
     choose different towers per rank), then, when the headers agree, one all-gather of
     the P x 4 fingerprints: 24 + 32 P bytes per rank, once per `distribute` call;
  3. tensors whose fingerprints differ beyond `RTOL` of their magnitude on some rank are
     named, tables first, in one DMTError raised on every rank (all ranks see the same
     gathered numbers, so all of them stop, before any other collective).
`take_rank0_weights` (distribute(..., weights_from_rank0=True)) first broadcasts every
tensor from rank 0 (the whole model's bytes, once), after which the weights agree by
construction (the plans are still compared).
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.result import DMTResult

__all__ = ["RTOL", "ModelMismatchError", "check_same_model", "fingerprints", "take_rank0_weights"]

RTOL = 1e-6  # of a tensor's sum of absolute values: summation order may differ, weights may not
SHOWN = 6  # tensors named in the message; the rest are counted


class ModelMismatchError(DMTError):
    """The ranks' models differ (weights or structure)."""


def compared(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors compared: the state dict's floating tensors (original keys)."""
    return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def fingerprints(tensors: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Step 1: a [P, 4] float64 tensor on `device` (NaN rows for meta tensors)."""
    rows = [_fingerprint(t) for t in tensors.values()]
    return torch.tensor(rows, dtype=torch.float64, device=device).reshape(len(rows), 4)


def _fingerprint(t: torch.Tensor) -> list[float]:
    if t.is_meta:
        return [math.nan] * 4
    with torch.no_grad():
        x = t.detach().reshape(t.shape[0] if t.dim() else 1, -1).double()
        per_row, per_row_abs = x.sum(1), x.abs().sum(1)
        weight = torch.arange(1, x.shape[0] + 1, dtype=torch.float64, device=x.device)
        return [float(v) for v in torch.stack([per_row.sum(), per_row_abs.sum(), (per_row * weight).sum(),
                                               (per_row_abs * weight).sum()])]


def _digest(text: str) -> float:
    return float(int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big"))  # 48 bits: exact in float64


def _header(tensors: Mapping[str, torch.Tensor], result: DMTResult | None, device: torch.device) -> torch.Tensor:
    layout = "\n".join(f"{k}|{tuple(v.shape)}|{v.dtype}" for k, v in tensors.items())
    # what the lowering reads (towers, hosts, features, tables, shardings), not the measured costs
    plan = "" if result is None else "\n".join(f"{t.index}|{t.host}|{t.features}|{t.tables}|{t.sharding}"
                                                for t in result.plan.towers)
    return torch.tensor([float(len(tensors)), _digest(layout), _digest(plan)], dtype=torch.float64, device=device)


def _gather(x: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return out


def check_same_model(module: nn.Module, result: DMTResult | None = None,
                     device: torch.device | None = None) -> None:
    """Raise ModelMismatchError on every rank when the ranks' models differ (module doc).

    `module`: the transformed model (or any module every rank built); `result`: its
    DMTResult, to name tables as tables. Call on every rank: it runs two all-gathers."""
    device = device or torch.device("cpu")
    tensors = compared(module)
    headers = _gather(_header(tensors, result, device))
    if any(not torch.equal(h[2], headers[0][2]) for h in headers):
        raise ModelMismatchError("ranks whose transformed models have different tower plans",
                                 "one plan on every rank (the partitioner chose towers from each rank's own "
                                 "example_inputs, or the ranks passed different plans)",
                                 ["pass the same example_inputs to transform on every rank (seed what makes them)",
                                  "pass an explicit plan=... (e.g. rank 0's tower_plan(gm).to_json()) on every rank"])
    if any(not torch.equal(h[:2], headers[0][:2]) for h in headers):
        counts = [int(h[0]) for h in headers]
        raise ModelMismatchError(f"ranks whose models hold different tensors (per rank: {counts} floating tensors, "
                                 "or the same number with other names or shapes)",
                                 "every rank to build the same model (same class, same arguments)",
                                 _fixes())
    prints = torch.stack(_gather(fingerprints(tensors, device))).cpu()  # [world, P, 4]
    differ = _differing(prints)
    if differ:
        raise ModelMismatchError(_found(list(tensors), differ, prints, _table_keys(result)),
                                 "every rank to start from the same weights (distribute trains one model: DDP "
                                 "would keep rank 0's dense layers, each host its own ranks' tables)",
                                 _fixes())


def _differing(prints: torch.Tensor) -> list[int]:
    """Indices of tensors whose fingerprints differ between ranks (meta rows skipped)."""
    known = ~torch.isnan(prints).any(dim=(0, 2))
    scale = prints[..., 1::2].abs().amax(dim=0).repeat_interleave(2, dim=-1)  # |sum| <= abs-sum, per column pair
    gap = (prints - prints[:1]).abs().amax(dim=0)
    bad = (gap > RTOL * scale + 1e-30).any(dim=-1) & known
    return [int(i) for i in bad.nonzero().flatten()]


def _table_keys(result: DMTResult | None) -> set[str]:
    if result is None:
        return set()
    return {t.param for t in result.sites.tables} | {t.joint for t in result.sites.tables if t.joint}


def _found(keys: list[str], differ: list[int], prints: torch.Tensor, tables: set[str]) -> str:
    names = [keys[i] for i in differ]
    table_names = [n for n in names if n in tables or n.removesuffix(".weight") in tables]
    dense = [n for n in names if n not in table_names]
    parts = []
    if table_names:
        parts.append(f"{len(table_names)} table(s) differ across ranks: {_shown(table_names)}")
    if dense:
        parts.append(f"{len(dense)} dense parameter(s)/buffer(s) differ: {_shown(dense)}")
    first = differ[0]
    sums = ", ".join(f"rank {r}: {float(prints[r, first, 0]):.6g}" for r in range(prints.shape[0]))
    return "; ".join(parts) + f" (sum of {keys[first]}: {sums})"


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _fixes() -> list[str]:
    return ["seed every RNG the model uses on every rank before building it (torch.manual_seed, numpy.random.seed, "
            "random.seed: the reference DLRM draws its weights from numpy's global RNG)",
            "load one checkpoint into the model on every rank before distribute",
            "pass distribute(..., weights_from_rank0=True): every rank takes rank 0's weights"]


def take_rank0_weights(module: nn.Module) -> int:
    """Broadcast every tensor of `module`'s state dict from rank 0 (meta tensors skipped);
    returns the bytes broadcast. Call on every rank."""
    sent = 0
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                dist.broadcast(tensor, src=0)
                sent += tensor.numel() * tensor.element_size()
    return sent


def one_model(module: nn.Module, result: DMTResult, device: torch.device, weights_from_rank0: bool) -> None:
    """What `distribute` runs on every rank: take rank 0's weights if asked, then check that
    the ranks agree (the plan always; the weights agree by construction after the broadcast)."""
    if weights_from_rank0:
        take_rank0_weights(module)
    check_same_model(module, result, device)
