"""Issue 12, item 4: distributed property test.

Generated models (tests/random_models.py: TorchRec models with shared tables, weighted
features, one or two collections; plain nn.EmbeddingBag models when `distribute` accepts
them) x random valid plans (each table on a random host, hosts may hold none) x topologies
{2x2, 4x1, 1x4, 2x1}: DMT trained 3 steps on the world equals single-process training of
the original (every step's outputs and the final parameters within 1e-5). Table dims 2 are
drawn as 4: TorchRec's sharded tables need dims divisible by 4.

Every topology's examples run in ONE torchrun launch (the worker's --cases). CI: 2 examples
on 2x2 and 4x1 (tests/test_distributed_plans.py covers 2x1 in CI); the slow suite
(-m slow): 26 per topology, 104 in all
(DMT_DIST_PROPERTY_EXAMPLES overrides the per-topology count).
"""

from __future__ import annotations

import os

import pytest

from dmt_fx import Topology
from tests.dist_cases import check_case, run_cases
from tests.dist_property import draw_cases

STEPS = 3
TOPOLOGIES = ("2x2", "4x1", "1x4", "2x1")


def _run(tmp_path, topology: str, examples: int) -> None:
    counts: dict[str, int] = {}
    drawn = draw_cases(topology, examples, str(tmp_path), counts)
    result = run_cases(tmp_path, topology, drawn, steps=STEPS, deadline_s=60 + 40 * examples)
    assert result.ok, result.log_tail(60)
    world, worst = Topology.parse(topology).world_size, 0.0
    for case in drawn:
        worst = max(worst, *check_case(result, case, world, STEPS))
    print(f"{topology}: {len(drawn)} examples {counts}, max |diff| {worst:.3g}")


@pytest.mark.parametrize("topology", ("2x2", "4x1"))  # CI cost: about 45 s a topology
def test_generated_models_train_equal_to_single_process(tmp_path, topology: str) -> None:
    _run(tmp_path, topology, 2)


@pytest.mark.slow
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_many_generated_models_train_equal_to_single_process(tmp_path, topology: str) -> None:
    _run(tmp_path, topology, int(os.environ.get("DMT_DIST_PROPERTY_EXAMPLES", 26)))
