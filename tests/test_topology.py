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
