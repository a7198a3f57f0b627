"""Composite embeddings on a real world: a
quotient-remainder bag (two physical tables per feature, combined by multiply or concatenation)
and mixed-dimension bags (a projection after the lookup), trained on 2x2 equal to single-process
training of the original: every step's outputs and the final parameters within 1e-5."""

from __future__ import annotations

import pytest

from dmt_fx import Topology
from tests.harness.cases import Case, check_case
from tests.harness.corpus.composite import CompositeDLRM, make_inputs
from tests.harness.launch import run_cases
from tests.harness.targets import dist_composite

pytestmark = pytest.mark.distributed  # every test here starts processes

TARGET = dist_composite.__file__
STEPS = 5
CASES = [
    Case("qr-mult", f"{TARGET}:qr_mult", lambda: CompositeDLRM(dist_composite.SEED, "qr", "mult"), make_inputs),
    Case("qr-concat", f"{TARGET}:qr_concat", lambda: CompositeDLRM(dist_composite.SEED, "qr", "concat"), make_inputs),
    Case("mixed-dims", f"{TARGET}:mixed_dims", lambda: CompositeDLRM(dist_composite.SEED, "md"), make_inputs),
]


@pytest.mark.parametrize("topology", ["2x2"])
def test_composite_embeddings_train_equal_to_single_process(tmp_path, topology: str) -> None:
    world = Topology.parse(topology).world_size
    result = run_cases(tmp_path, topology, CASES, steps=STEPS)
    assert result.ok, result.log_tail(60)
    for case in CASES:
        out_diff, param_diff = check_case(result, case, world, STEPS)
        print(f"{topology} {case.name}: max |output diff| {out_diff:.3g}, max |param diff| {param_diff:.3g}")
