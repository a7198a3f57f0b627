"""The modules a rank runs in place of the logical tower blocks (SPTT steps 2-5).

  `HostLookup`        steps 2-3 for one collection: peer KJT all-to-all (TorchRec
                      `KJTAllToAll`), then the host's tables sharded over its ranks;
  `HostTowerExchange` identity tower modules: a host lookup, then step 5, the peer pooled
                      all-to-all back (`PooledEmbeddingsAllToAll`), as a KeyedTensor;
  `HostTowerBlock`    compressing tower modules: every collection's host lookup, the host's
                      tower module (data-parallel inside the host), and only its output back.
Each receives its process groups; which group is which comes from the graph (the lowering).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torchrec.distributed.dist_data import KJTAllToAll, PooledEmbeddingsAllToAll
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt_fx.ir import ops
from dmt_fx.runtime.groups import RankInfo, runtime_device


@dataclasses.dataclass(frozen=True)
class HostSlice:
    """What one host holds of one collection: KJT keys in, embedding names and widths out."""

    keys: tuple[str, ...]
    names: tuple[str, ...]
    widths: tuple[int, ...]


def non_persistent(module: nn.Module) -> None:
    """TorchRec's split-size buffers are runtime state, not part of the model: keep them out
    of state_dict so checkpoints match the original model's keys."""
    module._non_persistent_buffers_set.update(name for name, _ in module.named_buffers(recurse=False))


def output_dist(group: dist.ProcessGroup, widths: Sequence[int]) -> PooledEmbeddingsAllToAll:
    """Step 5: each peer gets its own rows; `widths` are the columns every host sends."""
    dist_module = PooledEmbeddingsAllToAll(group, list(widths), device=runtime_device())
    non_persistent(dist_module)
    return dist_module


def empty_rows(num_rows: int, device: torch.device) -> torch.Tensor:
    """What a host without tables (or without a tower module) sends: no columns, but a tensor
    that requires grad. TorchRec's pooled all-to-all runs its backward collective only where
    its input requires grad; a rank whose input did not would skip the backward all-to-all
    that its peers wait in, and the job would hang (issue 12: a collection with no table on
    some host)."""
    return torch.zeros(num_rows, 0, device=device, requires_grad=True)


class HostLookup(nn.Module):
    """SPTT steps 2-3 for one collection on this rank: peer ids in, host lookup.

    Returns the host's pooled embeddings for H x B samples, in the host's canonical order."""

    def __init__(self, slices: Sequence[HostSlice], lookup: nn.Module | None,
                 group: dist.ProcessGroup, me: RankInfo) -> None:
        super().__init__()
        self.slices, self.me = list(slices), me
        self.input_dist = KJTAllToAll(group, [len(s.keys) for s in slices])
        non_persistent(self.input_dist)
        self.lookup = lookup
        self.keys = tuple(k for s in slices for k in s.keys)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        local_batch = kjt.stride()
        received = self.input_dist(ops.select_features(kjt, self.keys)).wait().wait()
        if self.lookup is None:  # this host owns no table of the collection: empty rows
            return empty_rows(local_batch * self.me.topology.num_hosts, kjt.device())
        pooled = self.lookup(received)
        pooled = pooled.wait() if hasattr(pooled, "wait") else pooled
        # The sharded lookup orders its output by shard placement; peers expect the host's
        # canonical order.
        return ops.merge_keyed_tensors((pooled,), self.slices[self.me.host].names).values()


class HostTowerExchange(nn.Module):
    """Identity tower modules: one collection's host lookup, then its rows back to the peers
    (SPTT step 5); returns the collection's KeyedTensor for the local batch."""

    def __init__(self, host_lookup: HostLookup, group: dist.ProcessGroup) -> None:
        super().__init__()
        slices = host_lookup.slices
        self.host_lookup = host_lookup
        self.output_dist = output_dist(group, [sum(s.widths) for s in slices])
        self.names = [n for s in slices for n in s.names]
        self.widths = [w for s in slices for w in s.widths]

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        rows = self.output_dist(self.host_lookup(kjt)).wait()
        return KeyedTensor(keys=self.names, length_per_key=self.widths, values=rows)


class HostTowerBlock(nn.Module):
    """Compressing tower modules: every collection's host lookup, the host's tower module
    (data-parallel inside the host), and only its output across hosts.

    Returns one (B, out_width) tensor per host, in host order."""

    def __init__(self, host_lookups: Sequence[HostLookup], tower_module: nn.Module | None,
                 out_widths: Sequence[int], group: dist.ProcessGroup) -> None:
        super().__init__()
        self.host_lookups = nn.ModuleList(host_lookups)
        self.tower_module = tower_module
        self.out_widths = list(out_widths)
        self.output_dist = output_dist(group, out_widths)

    def forward(self, *kjts: KeyedJaggedTensor) -> tuple[torch.Tensor, ...]:
        # Columns in tower order: collections in model order, features in table order.
        x = torch.cat([lookup(kjt) for lookup, kjt in zip(self.host_lookups, kjts)], dim=1)
        if self.tower_module is None:
            y = empty_rows(x.shape[0], x.device)
        else:
            y = self.tower_module(x)[0]
        rows = self.output_dist(y).wait()
        return tuple(rows.split(self.out_widths, dim=1))
