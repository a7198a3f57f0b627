"""`dmt-fx bench traffic`: exact per-rank, per-step traffic of DMT and the flat baselines.

One torchrun launch per topology runs every variant one after the other in the same
process group (`dmt_fx.jobs.worker --variants ...`), a few steps each; the TrafficMeter counts
what every rank sends (bytes and messages, cross-host vs intra-host) and the records are
the per-rank means over the measured steps (warm-up excluded), averaged over ranks.

The benchmark model (`dmt_fx.models.wide:wide_model`) is a DLRM-like model with a CONCAT
interaction: 16 features of dim 16, one table each, dense arch 13 -> 32 -> 16, over arch
(16 + 256) -> 64 -> 1. With a concat interaction a compressing tower module's output is
W_t / c wide (W_t = 16 x features of tower t), exact for c = 2, 4, 8 whatever the plan,
so the cross-host embedding bytes of dmt-c<N> show the compression exactly. (The built-in
DLRM's dot interaction needs whole D-wide vectors: ceil(n_t / c) x D, not exact for
c = 8 with 2 to 4 features per tower.)

`--target dmt_fx.models.sequences:sequence_model` is a pooled + sequence model (8 pooled
features, 2 sequences of mean length 10, dim 16): the flat plans shard its
EmbeddingCollection with TorchRec's sequence sharder, DMT sends its rows in the jagged peer
exchange (benchmarks/reports/2026-12-07-sequence-traffic.md).

Fast domains wider than a host (`ranks_per_host`, `--ranks-per-host`): "2x2" with
ranks_per_host=1 is 2 domains of 2 ranks run as 4 torchrun agents of 1 rank. The meter's
tiers follow the topology's domains (its `host_of`), so on such a world `cross_host_*` is
the traffic that leaves a domain; the record repeats it as `cross_domain_*` (and
`intra_host_*` as `intra_domain_*`) and says the world: `ranks_per_host`,
`num_physical_hosts`, `world` ("2x2 (domains of 2 hosts x 1 ranks)"). With one rank per
host every intra-domain byte also leaves its host.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Sequence

from dmt_fx.baselines import baseline_names
from dmt_fx.bench.variants import QCOMMS, of_precision
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.launch import LaunchResult, launch
from dmt_fx.jobs.summary import summarize
from dmt_fx.models.wide import DIM, NUM_FEATURES  # noqa: F401 (the record sizes refer to them)

BENCH_TARGET = "dmt_fx.models.wide:wide_model"
TOPOLOGIES = ("2x2", "2x4", "4x2")
DMT_VARIANTS = ("dmt-identity", "dmt-c2", "dmt-c4", "dmt-c8")  # identity towers, linear towers with c = 2, 4, 8
# every registered fp32 baseline, the flat plans with qcomms (+fp16), then DMT and its qcomms variants
VARIANTS = (*of_precision(baseline_names()), *of_precision(baseline_names(), QCOMMS), *DMT_VARIANTS,
            "dmt-identity+fp16", "dmt-c4+fp16")


def traffic_bench(topologies: Sequence[str] = TOPOLOGIES, variants: Sequence[str] = VARIANTS, *,
                  target: str = BENCH_TARGET, steps: int = 3, warmup: int = 1, batch_size: int = 32,
                  out: str = "results/traffic", deadline_s: float = 600,
                  on_topology: Callable[[str], None] | None = None,
                  ranks_per_host: int | None = None, towers_per_domain: int = 1) -> list[dict]:
    """Measure every variant on every topology; a record per (topology, variant).

    One torchrun launch per topology (all variants in its process group, one after the
    other). Traffic: bytes and messages THIS rank sends per step (forward and backward,
    ids and embeddings), from `TrafficMeter` (exact counts of the Python-level
    collectives), averaged over the `steps - warmup` measured steps and over ranks; DDP's
    dense all-reduce is C++ and only estimated (`dense_allreduce_bytes_estimate`).
    `step_time_median_s`: median over measured steps of the slowest rank's step time:
    emulated hosts sharing a small CPU, noisy, informative only. `ranks_per_host`: torchrun
    hosts of that many ranks in every topology (None: a host per domain). `towers_per_domain`
    k: the DMT variants plan H x k towers (each its own tower module); records carry k."""
    if steps <= warmup:
        raise DMTError(f"steps={steps}, warmup={warmup}", "more steps than warm-up steps",
                       ["pass e.g. --steps 3 --warmup 1"])
    records = []
    for spec in topologies:
        topology = Topology.parse(spec, ranks_per_host=ranks_per_host)
        out_dir = os.path.join(out, _dir_name(topology) + (f"-k{towers_per_domain}" if towers_per_domain != 1 else ""))
        shutil.rmtree(out_dir, ignore_errors=True)
        if on_topology is not None:
            on_topology(topology.describe())
        args = ["--target", target, "--topology", str(topology), "--variants", ",".join(variants),
                "--steps", str(steps), "--warmup", str(warmup), "--batch-size", str(batch_size),
                "--optimizer", "sgd", "--lr", "0.05", "--out", out_dir, "--towers-per-domain", str(towers_per_domain)]
        start = time.monotonic()
        result = launch(topology, args, out_dir, deadline_s=deadline_s)
        if not result.ok:
            reason = "timed out" if result.timed_out else f"exit codes {result.returncodes}"
            raise DMTError(f"the traffic run on {topology} failed ({reason}); logs in {out_dir}/agent*.log:\n"
                           f"{result.log_tail(15)}", "every rank to finish every variant",
                           ["read the agent logs", "run fewer variants (--variants) or topologies"])
        wall = time.monotonic() - start
        for variant in variants:
            ranks = LaunchResult(result.returncodes, wall, os.path.join(out_dir, variant), False).ranks()
            if len(ranks) != topology.world_size:
                raise DMTError(f"{len(ranks)} rank results for {variant} on {topology}",
                               f"{topology.world_size}", [f"read {out_dir}/agent*.log"])
            record = summarize(variant, ranks, warmup=warmup)
            records.append({**record, **domain_fields(topology, record), "towers_per_domain": towers_per_domain,
                            "launch_wall_s": wall})
    return records


DOMAIN_KEYS = {f"cross_domain{k}": f"cross_host{k}" for k in ("_bytes", "_id_bytes", "_embedding_bytes", "_messages")}
DOMAIN_KEYS.update({f"intra_domain{k}": f"intra_host{k}" for k in ("_bytes", "_messages")})


def domain_fields(topology: Topology, record: dict[str, Any]) -> dict[str, Any]:
    """The world of a record and its traffic per domain tier (the meter's host tier is the domain)."""
    return {"world": topology.describe(), "ranks_per_host": topology.ranks_per_host,
            "num_physical_hosts": topology.num_physical_hosts,
            **{ours: record.get(theirs, 0.0) for ours, theirs in DOMAIN_KEYS.items()}}


def _dir_name(topology: Topology) -> str:
    return str(topology) if topology.hosts_per_domain == 1 else f"{topology}-hosts-of-{topology.ranks_per_host}"


def write_json(path: str, payload: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
