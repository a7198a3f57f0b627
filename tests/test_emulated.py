"""`dmt-fx bench emulated`: network namespaces, tbf shaping, cleanup (root + iproute2 only)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess

import pytest

from dmt_fx.bench import emulated, netns
from dmt_fx.bench.netns import EmulatedCluster, EmulationError

needs_root = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
    reason="needs root and iproute2 (ip, tc)")


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_parse_rate() -> None:
    assert emulated.parse_rate("800mbit") == pytest.approx(100e6)
    assert emulated.parse_rate("100MB/s") == pytest.approx(100e6)
    assert emulated.parse_rate("1.5gbit") == pytest.approx(187.5e6)
    assert emulated.parse_rate("5000") == 5000
    with pytest.raises(EmulationError):
        emulated.parse_rate("fast")


def test_not_root_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EmulationError, match="root"):
        netns.check_requirements()


def test_missing_iproute2_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(EmulationError, match="ip and tc not found"):
        netns.check_requirements()


@needs_root
def test_setup_and_teardown_even_when_the_body_raises() -> None:
    before = namespaces()
    cluster = EmulatedCluster(2, tag=f"{os.getpid()}t")
    with pytest.raises(RuntimeError, match="boom"):
        with cluster:
            created = namespaces() - before
            assert created == {cluster.switch, cluster.namespace(0), cluster.namespace(1)}
            for h in range(2):
                addrs = json.loads(subprocess.run(["ip", "-n", cluster.namespace(h), "-j", "addr", "show", "dev",
                                                   netns.IFNAME], capture_output=True, text=True).stdout)
                ips = [a["local"] for a in addrs[0]["addr_info"] if a["family"] == "inet"]
                assert ips == [cluster.address(h)]
                assert ipaddress.ip_address(ips[0]) in ipaddress.ip_network("198.18.0.0/15")
            cluster.shape(10e6)
            assert all("tbf" in q for q in cluster.qdiscs())
            # hosts reach each other over the bridge
            ping = subprocess.run(["ip", "netns", "exec", cluster.namespace(0), "ping", "-c", "1", "-W", "2",
                                   cluster.address(1)], capture_output=True)
            assert ping.returncode in (0, 127) or shutil.which("ping") is None  # ping may be missing
            raise RuntimeError("boom")
    assert namespaces() == before
    assert not any(name.startswith(f"{netns.PREFIX}-{os.getpid()}t") for name in
                   (os.listdir(netns.NETNS_ETC) if os.path.isdir(netns.NETNS_ETC) else []))


@needs_root
def test_stale_namespaces_of_dead_runs_are_removed() -> None:
    dead = 2 ** 22 + 7  # above pid_max's default: no such process
    name = f"{netns.PREFIX}-{dead}-h0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in netns.remove_stale()
        assert name not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_root
@pytest.mark.slow
def test_short_benchmark_run(tmp_path) -> None:
    """One variant, 3 steps, tiny model: JSON + PNG, intra-host traffic not through eth0, no leftovers."""
    parser = argparse.ArgumentParser()
    emulated.add_arguments(parser)
    args = parser.parse_args(["--variants", "dmt-c4", "--steps", "3", "--warmup", "1", "--batch-size", "32",
                              "--tables", "4", "--embedding-dim", "16", "--rows", "500", "--out", str(tmp_path)])
    before = namespaces()
    records = emulated.run(args, progress=lambda text: None)
    assert namespaces() == before
    assert [r["variant"] for r in records] == ["dmt-c4"]
    row = records[0]
    for key in ("topology", "variant", "cross_host_id_bytes", "cross_host_embedding_bytes", "cross_host_messages",
                "intra_host_bytes", "step_time_median_s", "step_time_iqr_s", "intra_host_bandwidth_bytes_per_s",
                "inter_host_rate_bytes_per_s"):
        assert key in row
    assert row["cross_host_embedding_bytes"] > 0 and row["step_time_median_s"] > 0
    report = json.load(open(tmp_path / "emulated.json"))
    network = report["network"]
    assert network["inter_host_rate_bytes_per_s_per_rank"] == pytest.approx(
        network["intra_host_bandwidth_bytes_per_s"] / 20)
    # the intra-host all-to-all did not go through the shaped interface
    assert network["intra_phase_eth0_tx_bytes_per_iter"] < 0.01 * network["intra_phase_payload_bytes_per_iter"]
    # the cross-host one did, and was slowed down to about the configured rate
    assert network["cross_host_shaped_bandwidth_bytes_per_s"] < 1.5 * network["inter_host_rate_bytes_per_s_per_rank"]
    assert "netem" in network["delay_emulation"]
    assert (tmp_path / "emulated.png").stat().st_size > 0
