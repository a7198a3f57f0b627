"""The sequence models of tests/harness/targets/dist_sequences.py as jobs: the original trained
in one process, and an independent count of the cross-host embedding bytes a job sends."""

from __future__ import annotations

import torch.nn as nn

import dmt_fx
from dmt_fx import Topology
from tests.harness import training
from tests.harness.targets import dist_sequences

TARGET = dist_sequences.__file__
B, STEPS = 4, 4


def _build(factory: str, seed: int = 0) -> nn.Module:
    return getattr(dist_sequences, factory)(seed)[0]


def train_original(factory: str, optimizer: str, world: int, steps: int = STEPS) -> tuple[list, nn.Module]:
    model = _build(factory)
    return training.train_original(model, getattr(dist_sequences, factory).make_inputs, B * world, steps, optimizer)


def _rank_batches(factory: str, world: int, step: int) -> list[tuple]:
    """Each rank's local batch of step `step` (rows [r*B, (r+1)*B) of the global batch)."""
    from dmt_fx.jobs.data import slice_batch

    batch = getattr(dist_sequences, factory).make_inputs(B * world, step)
    return [slice_batch(batch, r * B, (r + 1) * B) for r in range(world)]


def expected_embedding_bytes(factory: str, topology: str, steps: range) -> float:
    """An independent count of the cross-host float bytes per step, all ranks together: every
    rank receives, from the other hosts, B pooled rows of their pooled tables and one row per
    id of its samples' sequence features they hold (forward), and sends the same bytes of
    gradients back (backward); fp32."""
    topo = Topology.parse(topology)
    model, inputs = getattr(dist_sequences, factory)()
    result = dmt_fx.dmt_result(dmt_fx.transform(model, topology, example_inputs=inputs))
    host_of = {f: t.host for t in result.plan.towers for f in t.features}
    total = 0.0
    for step in steps:
        for rank, local in enumerate(_rank_batches(factory, topo.world_size, step)):
            host = topo.host_of(rank)
            counts = {k: n for kjt in local[1:] for k, n in zip(kjt.keys(), kjt.length_per_key())}
            for f in result.sites.features:
                if host_of[f.name] != host:
                    total += 2 * 4 * f.dim * (counts[f.key] if f.sequence else B)
    return total / len(steps)
