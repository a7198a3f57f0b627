"""Compile cost grows linearly in the number of features (issue: compile time at scale).

Asserts growth, not wall time: the number of Python function calls transform() makes
(counted by cProfile, so independent of the machine's load) at F and 4F features. Linear
work gives a ratio near 4 (below it, with fixed costs); a loop over tables inside a loop
over tables gives near 16. The sizes are small (tables on the meta device: nothing is
allocated) so the test stays well under its budget; benchmarks/pass_speed.py has the times.
"""

from __future__ import annotations

import cProfile
import pstats

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.models.dlrm import DLRM

import dmt_fx

OURS = "dmt_fx"

SMALL, SCALE = 100, 4
LINEAR_BOUND = SCALE * 1.3  # generous: linear is <= 4x; a quadratic loop over tables is ~16x


def dlrm(num_features: int) -> DLRM:
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=8, num_embeddings=10, feature_names=[f"f{i}"])
              for i in range(num_features)]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    return DLRM(embedding_bag_collection=ebc, dense_in_features=4, dense_arch_layer_sizes=[8],
                over_arch_layer_sizes=[4, 1], dense_device=torch.device("meta"))


def calls(fn) -> int:
    """Calls of dmt_fx's own functions (its passes included): torch's share is linear and
    would dilute a quadratic loop of ours."""
    profile = cProfile.Profile()
    profile.runcall(fn)
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (primitive calls, calls, ...)
    return sum(entry[1] for (path, _, _), entry in stats.items() if OURS in path or "/passes/" in path)


@pytest.fixture(scope="module")
def models() -> dict[int, DLRM]:
    return {n: dlrm(n) for n in (SMALL, SMALL * SCALE)}


def growth(models: dict[int, DLRM], run) -> float:
    small, large = (calls(lambda m=models[n]: run(m)) for n in (SMALL, SMALL * SCALE))
    return large / small


def test_transform_calls_grow_linearly(models):
    ratio = growth(models, lambda m: dmt_fx.transform(m, "8x8"))
    assert ratio <= LINEAR_BOUND, f"transform made {ratio:.1f}x the calls for {SCALE}x the features"


def test_given_plan_calls_grow_linearly(models):
    plans = {id(m): dmt_fx.dmt_result(dmt_fx.transform(m, "8x8")).plan.to_dict() for m in models.values()}
    ratio = growth(models, lambda m: dmt_fx.transform(m, "8x8", plan=plans[id(m)]))
    assert ratio <= LINEAR_BOUND, f"transform(plan=...) made {ratio:.1f}x the calls for {SCALE}x the features"
