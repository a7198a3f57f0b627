"""Step 0 of the runtime: check the world, then build this rank's process groups.

A (domain x local) world has two kinds of groups besides the world itself (`GroupKind` in
`dmt_fx.ir.names`): the intra-host group (the ranks of one fast domain: the sharded lookups
and the tower modules' DDP) and the peer group (the ranks with the same index in every
domain: the exchanges). A domain is one torchrun host by default, or several whole hosts
(`Topology.ranks_per_host`): the groups follow the domains, never LOCAL_WORLD_SIZE. The rewritten graph names the kind of each collective in its
`group=` argument; `ProcessGroups.of(kind)` turns that name into this rank's group. No
process group is cached at module level: each `distribute` call builds its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import GroupKind
from dmt_fx.ir.topology import Topology

DEFAULT_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("DMT_FX_TIMEOUT_S", "120")))


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """Where this rank sits in the topology."""

    rank: int
    topology: Topology

    @property
    def host(self) -> int:
        """This rank's domain (its tower's "host")."""
        return self.topology.host_of(self.rank)

    @property
    def local_rank(self) -> int:
        """The index in this rank's domain (not torchrun's LOCAL_RANK when a domain spans hosts)."""
        return self.rank % self.topology.local_world_size

    @property
    def host_ranks(self) -> tuple[int, ...]:
        """The global ranks of this rank's domain, in local-rank order."""
        return tuple(self.topology.intra_host_ranks(self.host))


def check_world(topology: Topology) -> RankInfo:
    """On every rank and before any collective: the topology must be the world's (the same
    number of ranks, and domains made of whole torchrun hosts of LOCAL_WORLD_SIZE ranks)."""
    if not dist.is_available() or not dist.is_initialized():
        raise DMTError("torch.distributed is not initialised",
                       "init_process_group() called on every rank before dmt_fx.distribute",
                       ["call torch.distributed.init_process_group('gloo' or 'nccl') first",
                        "or launch with `dmt-fx run`, which does it"])
    world = dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    topology.check_world(world, local)
    return RankInfo(dist.get_rank(), topology)


@dataclasses.dataclass(frozen=True)
class ProcessGroups:
    """This rank's group of each `GroupKind`."""

    by_kind: Mapping[str, dist.ProcessGroup]

    def of(self, kind: str) -> dist.ProcessGroup:
        """The group a graph node's `group=` argument names."""
        if kind not in self.by_kind:
            raise DMTError(f"a collective on group {kind!r}", f"a group kind of {sorted(self.by_kind)}",
                           ["transform the model with this version of dmt_fx (the graph names the group kinds)"])
        return self.by_kind[kind]


def build_groups(topology: Topology, timeout: datetime.timedelta) -> ProcessGroups:
    """The intra-domain and peer groups of this rank: the groups of a ("domain", "local") DeviceMesh
    (a domain may span several torchrun hosts: the groups come from the topology, not the env).

    Built explicitly: `new_group` would give them torch's 30-minute default timeout instead of
    the job's, and a stuck peer would hang the job. Every rank makes the same calls."""
    hosts, local = topology.num_hosts, topology.local_world_size
    intra, _ = dist.new_subgroups_by_enumeration([topology.intra_host_ranks(h) for h in range(hosts)],
                                                 timeout=timeout)
    peer, _ = dist.new_subgroups_by_enumeration([topology.peer_ranks(r) for r in range(local)], timeout=timeout)
    return ProcessGroups({GroupKind.INTRA_HOST: intra, GroupKind.PEER: peer})


def runtime_device() -> torch.device:
    """The device the runtime's modules live on: this rank's GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def ddp_device_ids() -> list[torch.device] | None:
    """DDP's `device_ids`: none on CPU (DDP refuses them there)."""
    device = runtime_device()
    return None if device.type == "cpu" else [device]


def host_data_parallel(module: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """`module` data-parallel over the ranks of one host (`group`): wrapped in DDP, except on
    a host of one rank, where there is nothing to average and DDP would only add an
    all-reduce on a group of one (a gloo collective per step, about a millisecond on a small
    machine) and its hooks."""
    if dist.get_world_size(group) == 1:
        return module
    return DistributedDataParallel(module, process_group=group, device_ids=ddp_device_ids())
