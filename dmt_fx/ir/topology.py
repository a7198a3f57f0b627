"""The cluster shape DMT optimises for: `num_hosts` fast domains of `local_world_size` ranks.

A *domain* is the set of ranks on the fast interconnect (NVLink): usually one host, but on
rack-scale systems (one NVLink domain over several trays) several torchrun hosts. Towers
map to domains, the intra-host group is the ranks of one domain and the peer group the
ranks with the same index in every domain. `num_hosts` / `local_world_size` keep their
names (every plan, fingerprint and JSON field speaks of "hosts"): they are the domain
shape. `ranks_per_host` is the physical torchrun host (LOCAL_WORLD_SIZE), a divisor of the
domain size, by default the whole domain (one host per domain, as before).

Bandwidths and latencies feed the cost model (alpha-beta per link tier: "intra-host" is
the fast domain's link); they never change what the rewritten model computes.
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
    """`num_hosts` domains x `local_world_size` ranks; domain h owns ranks h*L .. h*L+L-1.

    `ranks_per_host` (None: `local_world_size`) is how many of a domain's ranks one
    torchrun host runs; hosts are numbered like the ranks, host p owns ranks p*R .. p*R+R-1.

    Args:
        num_hosts: H, the hosts (fast-interconnect domains); one tower each by default.
        local_world_size: L, the ranks of each.
        intra_host_bandwidth_gbps, inter_host_bandwidth_gbps: link bandwidths in GB/s per
            rank, for the cost model (defaults: an H100 host and a 400 Gb/s NIC per GPU).
        intra_host_latency_us, inter_host_latency_us: per-message latencies, for the cost model.
        ranks_per_host: R, the ranks one torchrun host runs (a divisor of L; default L).

    Raises:
        TopologyError: a size that is not a positive int, a bandwidth <= 0, or R not a
            divisor of L.

    Example:
        >>> from dmt_fx import Topology
        >>> t = Topology(2, 4)
        >>> str(t), t.world_size
        ('2x4', 8)
        >>> Topology(2, 4, ranks_per_host=2).ranks_per_host
        2
    """

    num_hosts: int
    local_world_size: int
    # Defaults: an H100 host (NVLink, ~450 GB/s per direction) and one 400 Gb/s NIC
    # per GPU (50 GB/s), the shape the DMT paper targets.
    intra_host_bandwidth_gbps: float = 450.0
    inter_host_bandwidth_gbps: float = 50.0
    intra_host_latency_us: float = 5.0
    inter_host_latency_us: float = 20.0
    ranks_per_host: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_hosts", "local_world_size"):
            _check_positive(name, getattr(self, name))
        for name in ("intra_host_bandwidth_gbps", "inter_host_bandwidth_gbps"):
            if not getattr(self, name) > 0:
                raise TopologyError(
                    f"{name}={getattr(self, name)!r}",
                    f"{name} > 0 (GB/s)",
                    ["give a positive bandwidth in GB/s"],
                )
        if self.ranks_per_host is None:  # one host per domain; resolved so equal shapes compare equal
            object.__setattr__(self, "ranks_per_host", self.local_world_size)
        _check_positive("ranks_per_host", self.ranks_per_host)
        if self.local_world_size % self.ranks_per_host:
            raise TopologyError(
                f"ranks_per_host={self.ranks_per_host} with domains of {self.local_world_size} ranks: "
                f"{self.local_world_size} / {self.ranks_per_host} is not a whole number of hosts",
                f"ranks_per_host a divisor of {self.local_world_size} (a domain spans whole hosts)",
                [f"pass ranks_per_host in {_divisors(self.local_world_size)}"],
            )

    # -- the domain shape (what towers and process groups follow)

    @property
    def world_size(self) -> int:
        return self.num_hosts * self.local_world_size

    @property
    def num_domains(self) -> int:
        """Fast-interconnect domains: one tower each (the same number as `num_hosts`)."""
        return self.num_hosts

    @property
    def domain_size(self) -> int:
        """Ranks per domain (the same number as `local_world_size`)."""
        return self.local_world_size

    def __str__(self) -> str:
        return f"{self.num_hosts}x{self.local_world_size}"

    def host_of(self, rank: int) -> int:
        """The domain of `rank` (the tower "host" of plans and groups)."""
        return rank // self.local_world_size

    def domain_of(self, rank: int) -> int:
        return self.host_of(rank)

    def intra_host_ranks(self, host: int) -> list[int]:
        """Ranks of domain `host` (the intra-host group)."""
        return [host * self.local_world_size + r for r in range(self.local_world_size)]

    def domain_ranks(self, domain: int) -> list[int]:
        return self.intra_host_ranks(domain)

    def peer_ranks(self, local_rank: int) -> list[int]:
        """Ranks with index `local_rank` in every domain (the cross-domain peer group)."""
        return [local_rank + h * self.local_world_size for h in range(self.num_hosts)]

    # -- the physical hosts (how torchrun launches the world)

    @property
    def hosts_per_domain(self) -> int:
        return self.local_world_size // self.ranks_per_host

    @property
    def num_physical_hosts(self) -> int:
        """torchrun hosts (agents, `--nnodes`), each of `ranks_per_host` ranks."""
        return self.num_hosts * self.hosts_per_domain

    def physical_host_of(self, rank: int) -> int:
        return rank // self.ranks_per_host

    def describe(self) -> str:
        """`str(self)` plus the hosts when a domain spans several: "2x2 (domains of 2 hosts x 1 rank)"."""
        if self.hosts_per_domain == 1:
            return str(self)
        return f"{self} (domains of {self.hosts_per_domain} hosts x {self.ranks_per_host} ranks)"

    @classmethod
    def parse(cls, text: str, *, ranks_per_host: int | None = None, **links: float) -> Topology:
        """`"2x4"` -> 2 hosts (domains) x 4 ranks, torchrun hosts of `ranks_per_host` ranks."""
        match = _SHAPE.match(str(text))
        if match is None:
            raise TopologyError(
                f"topology string {text!r}",
                "HOSTSxRANKS_PER_HOST, e.g. '2x4' (2 hosts of 4 ranks, world size 8)",
                ["write the number of hosts, an 'x', then the ranks per host"],
            )
        return cls(int(match.group(1)), int(match.group(2)), ranks_per_host=ranks_per_host, **links)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, domain_size: int | None = None,
                 **links: float) -> Topology:
        """Read torchrun's WORLD_SIZE and LOCAL_WORLD_SIZE; domains of `domain_size` ranks
        (None: one host each)."""
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
        domain = local if domain_size is None else domain_size
        _check_positive("domain_size", domain)
        if world % domain:
            raise TopologyError(
                f"domain_size={domain} with WORLD_SIZE {world}: {world} / {domain} is not a whole number of domains",
                f"domain_size a divisor of {world} and a multiple of LOCAL_WORLD_SIZE {local}",
                [f"pass domain_size in {[d for d in _divisors(world) if d % local == 0]}"],
            )
        return cls(world // domain, domain, ranks_per_host=local, **links)

    def check_world(self, world_size: int, local_world_size: int) -> None:
        """Raise unless this topology describes the running world: the same number of ranks,
        and torchrun hosts (LOCAL_WORLD_SIZE) that tile every domain."""
        if world_size != self.world_size or local_world_size < 1 or self.local_world_size % local_world_size:
            raise TopologyError(self._world_found(world_size, local_world_size), self._world_expected(),
                                self._world_fixes(world_size, local_world_size))

    def _world_found(self, world_size: int, local: int) -> str:
        found = f"a world of WORLD_SIZE {world_size} with LOCAL_WORLD_SIZE {local}"
        if world_size == self.world_size and local >= 1:
            found += (f": a domain of {self.local_world_size} ranks would be {self.local_world_size} / {local} = "
                      f"{self.local_world_size / local:.3g} hosts, not a whole number")
        return found

    def _world_expected(self) -> str:
        expected = (f"topology {self}: {self.num_hosts} hosts x {self.local_world_size} ranks = "
                    f"{self.world_size} ranks with LOCAL_WORLD_SIZE {self.local_world_size}")
        if self.local_world_size > 1:
            expected += f" (or a divisor of it, {_divisors(self.local_world_size)}: a domain of whole hosts)"
        return expected

    def _world_fixes(self, world_size: int, local: int) -> list[str]:
        fixes = [f"launch with --nnodes={self.num_physical_hosts} --nproc-per-node={self.ranks_per_host}"]
        if local >= 1 and world_size % local == 0:
            fixes.append(f"or transform with Topology({world_size // local}, {local})")
        return fixes


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TopologyError(
            f"{name}={value!r}",
            f"{name} a positive int",
            ["pass e.g. Topology(num_hosts=2, local_world_size=4) or Topology.parse('2x4')"],
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise TopologyError(f"{key}={env[key]!r}", f"{key} an integer", ["check the launcher's environment"]) from None
