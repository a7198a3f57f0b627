"""The cluster shape DMT optimises for: `num_hosts` hosts of `local_world_size` ranks.

Bandwidths and latencies feed the cost model (alpha-beta per link tier); they never
change what the rewritten model computes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

from dmt_fx.ir.errors import TopologyError

_SHAPE = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """`num_hosts` x `local_world_size` ranks; host h owns ranks h*L .. h*L+L-1."""

    num_hosts: int
    local_world_size: int
    # Defaults: an H100 host (NVLink, ~450 GB/s per direction) and one 400 Gb/s NIC
    # per GPU (50 GB/s), the shape the DMT paper targets.
    intra_host_bandwidth_gbps: float = 450.0
    inter_host_bandwidth_gbps: float = 50.0
    intra_host_latency_us: float = 5.0
    inter_host_latency_us: float = 20.0

    def __post_init__(self) -> None:
        for name in ("num_hosts", "local_world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TopologyError(
                    f"{name}={value!r}",
                    f"{name} a positive int",
                    ["pass e.g. Topology(num_hosts=2, local_world_size=4) or Topology.parse('2x4')"],
                )
        for name in ("intra_host_bandwidth_gbps", "inter_host_bandwidth_gbps"):
            if not getattr(self, name) > 0:
                raise TopologyError(
                    f"{name}={getattr(self, name)!r}",
                    f"{name} > 0 (GB/s)",
                    ["give a positive bandwidth in GB/s"],
                )

    @property
    def world_size(self) -> int:
        return self.num_hosts * self.local_world_size

    def __str__(self) -> str:
        return f"{self.num_hosts}x{self.local_world_size}"

    def host_of(self, rank: int) -> int:
        return rank // self.local_world_size

    def intra_host_ranks(self, host: int) -> list[int]:
        """Ranks sharing host `host` (the intra-host group)."""
        return [host * self.local_world_size + r for r in range(self.local_world_size)]

    def peer_ranks(self, local_rank: int) -> list[int]:
        """Ranks with local rank `local_rank` on every host (the cross-host peer group)."""
        return [local_rank + h * self.local_world_size for h in range(self.num_hosts)]

    @classmethod
    def parse(cls, text: str, **links: float) -> Topology:
        """`"2x4"` -> 2 hosts x 4 ranks per host."""
        match = _SHAPE.match(str(text))
        if match is None:
            raise TopologyError(
                f"topology string {text!r}",
                "HOSTSxRANKS_PER_HOST, e.g. '2x4' (2 hosts of 4 ranks, world size 8)",
                ["write the number of hosts, an 'x', then the ranks per host"],
            )
        return cls(int(match.group(1)), int(match.group(2)), **links)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **links: float) -> Topology:
        """Read torchrun's WORLD_SIZE and LOCAL_WORLD_SIZE."""
        env = os.environ if env is None else env
        missing = [k for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE") if k not in env]
        if missing:
            raise TopologyError(
                f"environment without {', '.join(missing)}",
                "WORLD_SIZE and LOCAL_WORLD_SIZE as set by torchrun",
                ["launch with torchrun (or `dmt-fx run`)", "or build Topology(num_hosts, local_world_size) yourself"],
            )
        world, local = _env_int(env, "WORLD_SIZE"), _env_int(env, "LOCAL_WORLD_SIZE")
        if local < 1 or world % local != 0:
            raise TopologyError(
                f"WORLD_SIZE {world} and LOCAL_WORLD_SIZE {local}: {world} / {local} is not a whole number of hosts",
                "WORLD_SIZE = num_hosts x LOCAL_WORLD_SIZE",
                ["give every host the same number of ranks (torchrun --nproc-per-node)"],
            )
        return cls(world // local, local, **links)

    def check_world(self, world_size: int, local_world_size: int) -> None:
        """Raise unless this topology describes the running world."""
        if (world_size, local_world_size) != (self.world_size, self.local_world_size):
            raise TopologyError(
                f"a world of WORLD_SIZE {world_size} with LOCAL_WORLD_SIZE {local_world_size}",
                f"topology {self}: {self.num_hosts} hosts x {self.local_world_size} ranks = "
                f"{self.world_size} ranks with LOCAL_WORLD_SIZE {self.local_world_size}",
                [
                    f"launch with --nnodes={self.num_hosts} --nproc-per-node={self.local_world_size}",
                    f"or transform with Topology({world_size // max(local_world_size, 1)}, {local_world_size})",
                ],
            )


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise TopologyError(f"{key}={env[key]!r}", f"{key} an integer", ["check the launcher's environment"]) from None
