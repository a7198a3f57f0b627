from __future__ import annotations

import pytest

from dmt_fx import Topology, TopologyError


def test_parse_and_groups() -> None:
    topo = Topology.parse("2x4")
    assert (topo.num_hosts, topo.local_world_size, topo.world_size) == (2, 4, 8)
    assert str(topo) == "2x4"
    assert topo.intra_host_ranks(1) == [4, 5, 6, 7]
    assert topo.peer_ranks(2) == [2, 6]
    assert topo.host_of(5) == 1


@pytest.mark.parametrize("text", ["2y4", "", "x4", "2x", "two x four", "2x4x1"])
def test_parse_rejects_bad_strings(text: str) -> None:
    with pytest.raises(TopologyError, match="HOSTSxRANKS_PER_HOST"):
        Topology.parse(text)


@pytest.mark.parametrize("hosts, local", [(0, 2), (2, 0), (-1, 1), (1.5, 2), (True, 2)])
def test_invalid_values(hosts, local) -> None:
    with pytest.raises(TopologyError, match="positive int"):
        Topology(hosts, local)


def test_bandwidth_must_be_positive() -> None:
    with pytest.raises(TopologyError, match="inter_host_bandwidth_gbps"):
        Topology(2, 2, inter_host_bandwidth_gbps=0)


def test_from_env() -> None:
    assert Topology.from_env({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}) == Topology(2, 4)
    with pytest.raises(TopologyError, match="6 / 4 is not a whole number"):
        Topology.from_env({"WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"})
    with pytest.raises(TopologyError, match="LOCAL_WORLD_SIZE"):
        Topology.from_env({"WORLD_SIZE": "6"})
    with pytest.raises(TopologyError, match="an integer"):
        Topology.from_env({"WORLD_SIZE": "six", "LOCAL_WORLD_SIZE": "2"})


def test_check_world_states_the_arithmetic() -> None:
    with pytest.raises(TopologyError, match=r"2 hosts x 4 ranks = 8 ranks"):
        Topology(2, 4).check_world(6, 3)
    Topology(2, 4).check_world(8, 4)


def test_domain_defaults_to_the_host() -> None:
    topo = Topology(2, 4)
    assert topo.ranks_per_host == 4 and topo == Topology(2, 4, ranks_per_host=4)
    assert (topo.num_domains, topo.domain_size, topo.hosts_per_domain, topo.num_physical_hosts) == (2, 4, 1, 2)
    assert topo.describe() == "2x4"


def test_domains_wider_than_a_host() -> None:
    """2 domains of 2 ranks on 4 hosts of 1 rank: towers and groups follow the domains."""
    topo = Topology.parse("2x2", ranks_per_host=1)
    assert str(topo) == "2x2"  # plans and fingerprints name the domain shape
    assert (topo.num_domains, topo.domain_size, topo.num_physical_hosts) == (2, 2, 4)
    assert topo.domain_ranks(1) == topo.intra_host_ranks(1) == [2, 3]
    assert topo.peer_ranks(1) == [1, 3]
    assert [topo.domain_of(r) for r in range(4)] == [0, 0, 1, 1]
    assert [topo.physical_host_of(r) for r in range(4)] == [0, 1, 2, 3]
    assert topo.describe() == "2x2 (domains of 2 hosts x 1 ranks)"


def test_ranks_per_host_must_tile_the_domain() -> None:
    with pytest.raises(TopologyError, match=r"(?s)4 / 3 is not a whole number of hosts.*\[1, 2, 4\]"):
        Topology(2, 4, ranks_per_host=3)
    with pytest.raises(TopologyError, match="positive int"):
        Topology(2, 4, ranks_per_host=0)


def test_from_env_with_a_domain_size() -> None:
    env = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "1"}
    assert Topology.from_env(env) == Topology(4, 1)
    assert Topology.from_env(env, domain_size=2) == Topology(2, 2, ranks_per_host=1)
    with pytest.raises(TopologyError, match=r"4 / 3 is not a whole number of domains"):
        Topology.from_env(env, domain_size=3)
    with pytest.raises(TopologyError, match=r"(?s)a divisor of 8 and a multiple of LOCAL_WORLD_SIZE 2.*\[2, 4, 8\]"):
        Topology.from_env({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}, domain_size=3)
    with pytest.raises(TopologyError, match=r"2 / 4 is not a whole number of hosts"):
        Topology.from_env({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, domain_size=2)


def test_check_world_accepts_domains_of_whole_hosts() -> None:
    Topology(2, 2).check_world(4, 1)  # 4 agents of 1 rank, 2 per domain
    Topology(2, 4).check_world(8, 2)
    Topology(2, 2, ranks_per_host=1).check_world(4, 1)
    with pytest.raises(TopologyError, match=r"a domain of 4 ranks would be 4 / 3 = 1.33 hosts"):
        Topology(3, 4).check_world(12, 3)
    with pytest.raises(TopologyError, match=r"4 ranks with LOCAL_WORLD_SIZE 2 \(or a divisor of it, \[1, 2\]"):
        Topology(2, 2).check_world(4, 4)  # one host of 4 ranks cannot hold two domains of 2
