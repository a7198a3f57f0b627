"""The bandwidth probe of `dmt-fx bench emulated`: all-to-all bandwidth inside and across hosts.

`probe(cluster, topology, out)` launches one torchrun agent per emulated host running
`python -m dmt_fx.bench.probe`: every rank times `all_to_all_single` among the ranks of its
host (intra-host bandwidth per rank), then among its peers (cross-host), and counts the
bytes `eth0` sent meanwhile (intra-host traffic must not go through it). Rank 0 writes
OUT/probe.json.

Latency mode (`--latency`; `probe(..., latency=True)` or DMT_FX_PROBE_LATENCY=1, which is how
`dmt-fx bench emulated` runs it without a flag of its own): per tier, k all-to-alls back to
back with a FIXED total of bytes (k = 1 .. 16: more messages, same bytes) and one all-to-all
of varying bytes; the slowest rank's median per point, and alpha (seconds per collective and
per message) and beta (bytes per second) fitted by least squares
(`dmt_fx.cost.fit.fit_alpha_beta`) with the residuals, under probe.json["latency"].
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist

from dmt_fx.bench.netns import IFNAME, EmulatedCluster, EmulationError
from dmt_fx.cost.fit import fit_alpha_beta
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.launch import launch

LATENCY_ENV = "DMT_FX_PROBE_LATENCY"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dmt_fx.bench.probe")
    p.add_argument("--topology", required=True)
    p.add_argument("--bytes", type=int, default=8 << 20)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--cross-iters", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--latency", action="store_true", help="also fit alpha and beta per tier")
    p.add_argument("--latency-iters", type=int, default=5)
    return p.parse_args(argv)


def _tx_bytes() -> int:
    """Bytes this host's cross-host interface sent so far (0 where there is none)."""
    counter = f"/sys/class/net/{os.environ.get('GLOO_SOCKET_IFNAME', IFNAME)}/statistics/tx_bytes"
    try:
        return int(open(counter).read())
    except OSError:
        return 0


def _phase(group: dist.ProcessGroup, n: int, iters: int, nbytes: int, first_local: bool) -> dict[str, Any]:
    """Time `iters` all-to-alls of `nbytes` per rank in `group` (n ranks); every rank gets the result."""
    numel = (nbytes // 4) // n * n
    send, recv = torch.ones(numel), torch.empty(numel)
    dist.all_to_all_single(recv, send, group=group)  # warm-up: connections
    dist.barrier()
    before = _tx_bytes()
    seconds = torch.zeros(iters)
    for i in range(iters):  # one timed all-to-all at a time, started together
        dist.barrier(group=group)
        start = time.perf_counter()
        dist.all_to_all_single(recv, send, group=group)
        seconds[i] = time.perf_counter() - start
    after = _tx_bytes()
    dist.barrier()
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the slowest member of each call
    veth = torch.tensor([float(after - before) if first_local else 0.0])  # one counter per host
    dist.all_reduce(veth)
    median = float(seconds.median())
    sent = numel * 4 * (n - 1) / n
    return {"group_size": n, "bytes_sent_per_rank": sent, "seconds_median": median, "seconds": seconds.tolist(),
            "bandwidth_bytes_per_s": sent / median, "eth0_tx_bytes_all_hosts": veth.item() / iters}


LATENCY_TOTAL_BYTES = 64 << 10  # per rank, split over k all-to-alls
LATENCY_SPLITS = (1, 2, 4, 8, 16)
LATENCY_SIZES = (4 << 10, 64 << 10, 256 << 10, 1 << 20)  # one all-to-all of this many bytes per rank


def _timed_calls(group: dist.ProcessGroup, n: int, calls: int, nbytes: int, iters: int) -> float:
    """The slowest rank's median seconds for `calls` all-to-alls of `nbytes` per rank each."""
    numel = max(n, (nbytes // 4) // n * n)
    send, recv = torch.ones(numel), torch.empty(numel)
    dist.all_to_all_single(recv, send, group=group)  # warm-up
    seconds = torch.zeros(iters)
    for i in range(iters):
        dist.barrier(group=group)
        start = time.perf_counter()
        for _ in range(calls):
            dist.all_to_all_single(recv, send, group=group)
        seconds[i] = time.perf_counter() - start
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=group)
    return float(seconds.median())


def _latency(group: dist.ProcessGroup, n: int, iters: int) -> dict[str, Any]:
    """Fixed bytes and varying collectives, then one collective of varying bytes; the fit."""
    grid = [(k, LATENCY_TOTAL_BYTES // k) for k in LATENCY_SPLITS] + [(1, b) for b in LATENCY_SIZES]
    points = []
    for calls, nbytes in grid:
        seconds = _timed_calls(group, n, calls, nbytes, iters)
        numel = max(n, (nbytes // 4) // n * n)
        points.append({"collectives": calls, "messages": calls * (n - 1),
                       "bytes": calls * numel * 4 * (n - 1) / n, "seconds": seconds})
    fit = fit_alpha_beta(points)
    return {"group_size": n, "iters": iters, "points": points, **fit,
            "alpha_per_message_s": fit["alpha_s"] / (n - 1)}


def main(argv: Sequence[str] | None = None) -> int:
    """One rank of the probe (run by torchrun inside the namespaces)."""
    args = _parse(argv)
    topology = Topology.parse(args.topology)
    H, L = topology.num_hosts, topology.local_world_size
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    host, local = divmod(rank, L)
    # every rank creates every group (new_group is collective), then keeps its own
    intra = [dist.new_group([h * L + i for i in range(L)]) for h in range(H)][host]
    peer = [dist.new_group([h * L + i for h in range(H)]) for i in range(L)][local]
    results = {}
    for phase, group, n, iters in (("intra", intra, L, args.iters), ("cross", peer, H, args.cross_iters)):
        if n >= 2:
            results[phase] = _phase(group, n, iters, args.bytes, local == 0)
            sent = results[phase]["bytes_sent_per_rank"]
            results[phase]["payload_cross_host_bytes_all_hosts"] = sent * H * L if phase == "cross" else 0.0
    if args.latency:
        results["latency"] = {phase: _latency(group, n, args.latency_iters)
                              for phase, group, n in (("intra", intra, L), ("cross", peer, H)) if n >= 2}
    if rank == 0:
        with open(os.path.join(args.out, "probe.json"), "w") as handle:
            json.dump(results, handle)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def probe(cluster: EmulatedCluster, topology: Topology, out_dir: str, *, nbytes: int = 8 << 20,
          iters: int = 12, cross_iters: int = 4, deadline_s: float = 120,
          latency: bool | None = None) -> dict[str, Any]:
    """Run the probe on the emulated hosts; `latency` (default: DMT_FX_PROBE_LATENCY=1) adds the
    latency mode's alpha-beta fit per tier."""
    if latency is None:
        latency = os.environ.get(LATENCY_ENV, "") not in ("", "0")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "probe.json")
    if os.path.exists(path):
        os.remove(path)
    result = launch(topology, ["--topology", str(topology), "--bytes", str(nbytes), "--iters", str(iters),
                               "--cross-iters", str(cross_iters), "--out", out_dir,
                               *(["--latency"] if latency else [])], out_dir,
                    deadline_s=deadline_s, grace_s=20, prefix=cluster.prefix, master_addr=cluster.address(0),
                    host_env=cluster.host_env, module="dmt_fx.bench.probe")
    if not result.ok or not os.path.exists(path):
        raise EmulationError(f"the bandwidth probe failed (exit codes {result.returncodes}, "
                             f"timed out: {result.timed_out}):\n{result.log_tail(15)}",
                             "the probe to run inside the namespaces", [f"read {out_dir}/agent*.log"])
    return json.load(open(path))


if __name__ == "__main__":
    sys.exit(main())
