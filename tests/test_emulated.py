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


@pytest.mark.distributed
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


@pytest.mark.distributed
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


@pytest.mark.distributed
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
    assert network["kernel_qdiscs"]["tbf"]  # the shaping itself uses tbf
    assert row["cpu_busy_share"] > 0 and row["machine_cores"] >= 1
    assert 0 < row["step_main_thread_cpu_median_s"] <= row["step_cpu_median_s"] * 1.5  # slowest ranks may differ
    assert (tmp_path / "emulated.png").stat().st_size > 0
    # the breakdown: stages of the DMT runtime and of the worker, and its stacked bars
    assert {"peer_input_exchange", "dense_forward", "backward", "optimizer"} <= set(row["breakdown_s"])
    assert row["exposed_comm_s"]["cross_host"] > 0
    assert (tmp_path / "emulated_breakdown.png").stat().st_size > 0


def test_ideal_speedup_from_the_bytes_on_the_shaped_link() -> None:
    """Independent arithmetic: flat 100 ms with 1 MB cross-host at 20 MB/s (50 ms on the wire);
    a variant with 250 kB needs 12.5 ms: 100 / (100 - 50 + 12.5) = 1.6x."""
    from dmt_fx.bench.breakdown_plot import add_ideal_speedups

    flat = {"variant": "flat-table_wise", "is_best_flat": True, "step_time_median_s": 0.1, "cross_host_bytes": 1e6,
            "breakdown_s": {"dense_forward": 0.02, "input_dist": 0.03, "output_dist": 0.04, "backward": 0.01},
            "exposed_comm_s": {"cross_host": 0.0, "intra_host": 0.0, "mixed": 0.07}}
    dmt = {"variant": "dmt-c4", "is_best_flat": False, "step_time_median_s": 0.08, "cross_host_bytes": 2.5e5}
    add_ideal_speedups([flat, dmt], rate_bytes_per_s=20e6)
    assert dmt["ideal_speedup_vs_best_flat"] == pytest.approx(1.6)
    assert flat["ideal_speedup_vs_best_flat"] == pytest.approx(1.0)
    assert flat["cross_host_wire_share"] == pytest.approx(0.5)
    assert flat["exposed_exchange_share"] == pytest.approx(0.7)


def test_grid_and_2d_count_as_flat_plans() -> None:
    assert {"flat-grid_shard", "torchrec-2d"} <= set(emulated.DEFAULT_VARIANTS)
    rows = [{"variant": v, "step_time_median_s": t} for v, t in
            (("flat-table_wise", 0.2), ("torchrec-2d", 0.1), ("dmt-c4", 0.05))]
    emulated.best_flat(rows)
    assert rows[0]["best_flat"] == "torchrec-2d" and rows[2]["speedup_vs_best_flat"] == pytest.approx(2.0)


def test_latency_probe_flag_reaches_the_probe_option() -> None:
    """--latency-probe / --no-latency-probe, and no flag: the probe's own default (the environment)."""
    parser = argparse.ArgumentParser()
    emulated.add_arguments(parser)
    assert parser.parse_args([]).latency_probe is None
    assert parser.parse_args(["--latency-probe"]).latency_probe is True
    assert parser.parse_args(["--no-latency-probe"]).latency_probe is False


def test_cpu_bound_share_and_cpu_speedup() -> None:
    """4 ranks using 0.16 s of CPU together per 0.1 s step on 2 cores: 80% busy; the DMT row's
    slowest rank uses 0.05 s of CPU against flat's 0.04 s: 0.8x by CPU, whatever its bytes."""
    from dmt_fx.bench.breakdown_plot import add_cpu_bound, add_ideal_speedups
    from dmt_fx.cli.tables import cpu_bound_note

    flat = {"variant": "flat-table_wise", "is_best_flat": True, "ranks": 4, "step_time_median_s": 0.1,
            "step_cpu_median_s": 0.04, "step_cpu_all_ranks_median_s": 0.16, "cross_host_bytes": 1e6}
    dmt = {"variant": "dmt-c4", "is_best_flat": False, "ranks": 4, "step_time_median_s": 0.1,
           "step_cpu_median_s": 0.05, "step_cpu_all_ranks_median_s": 0.18, "cross_host_bytes": 0.25e6}
    add_cpu_bound(add_ideal_speedups([flat, dmt], rate_bytes_per_s=20e6), cores=2)
    assert flat["cpu_busy_share"] == pytest.approx(0.8) and dmt["cpu_busy_share"] == pytest.approx(0.9)
    assert dmt["cpu_speedup_vs_best_flat"] == pytest.approx(0.8) and flat["cpu_speedup_vs_best_flat"] == 1.0
    note = cpu_bound_note([flat, dmt])
    assert note.startswith("CPU-bound: the 4 ranks of flat-table_wise kept 80% of 2 cores busy")
    assert "dmt-c4 0.80x by CPU, 1.60x by bytes" in note
    assert cpu_bound_note([{**flat, "cpu_busy_share": 0.3}, dmt]) is None  # an idle-CPU run: no note
    assert add_cpu_bound([{"variant": "x", "step_time_median_s": 0.1}], cores=2)[0]["cpu_busy_share"] is None


def test_delay_emulation_names_what_the_kernel_lacks() -> None:
    from dmt_fx.bench.emulated import delay_emulation

    none = delay_emulation({"netem": False, "fq": False, "etf": False, "tbf": True, "htb": True})
    assert none.startswith("none: the netem qdisc is not available") and "no qdisc here can delay" in none
    assert "fq present but not used" in delay_emulation({"netem": False, "fq": True, "tbf": True})
    assert delay_emulation({"netem": True}).startswith("netem available")
