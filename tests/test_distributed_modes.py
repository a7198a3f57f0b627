"""train() / eval() on a real world: BatchNorm / Dropout models trained on 2x2,
each captured in train or eval mode, switched with module.train() / module.eval() on the
distributed model, against single-process training that runs each rank's batch as the rank
does (`per_rank_reference`: per-rank running statistics, per-(step, rank) dropout seeds).

Per case, within 1e-5: every training step's outputs, eval-mode outputs after training,
each rank's batch-norm buffers and dense weights, and the DCP checkpoint."""

from __future__ import annotations

import pytest

from dmt_fx import Topology
from tests.harness.cases import Case, check_modes_case
from tests.harness.corpus import dcn
from tests.harness.corpus.modes import make_inputs
from tests.harness.launch import run_cases
from tests.harness.targets import dist_modes

pytestmark = pytest.mark.distributed  # every test here starts processes

TARGET = dist_modes.__file__
STEPS, EVAL_STEPS = 3, 2
FLAGS = ("--step-seed", "--eval-steps", str(EVAL_STEPS))

# (case, the mode the training steps run in: None keeps the capture mode)
CASES = [
    (Case("fx-train", f"{TARGET}:fx_mlp_target", dist_modes.fx_mlp, make_inputs, args=FLAGS), None),
    (Case("export-eval-then-train", f"{TARGET}:export_mlp_eval_target", dist_modes.export_mlp_eval, make_inputs,
          args=(*FLAGS, "--train-mode", "train")), True),
    (Case("ctr-block-train-in-eval", f"{TARGET}:ctr_block_target", dist_modes.ctr_block, make_inputs,
          args=(*FLAGS, "--train-mode", "eval")), False),
    (Case("root-dropout-eval-then-train", f"{TARGET}:root_dropout_eval_target", dist_modes.root_dropout_eval,
          make_inputs, args=(*FLAGS, "--train-mode", "train")), True),
    (Case("torchfm-deepfm", f"{TARGET}:deepfm_target", dist_modes.deepfm, dist_modes.deepfm_inputs, args=FLAGS),
     None),
    (Case("dcn-v2-mix-eval-then-train", f"{TARGET}:dcn_mix_target", dist_modes.dcn_mix_eval, dcn.make_inputs,
          args=(*FLAGS, "--train-mode", "train")), True),
]


def test_modes_train_and_evaluate_as_single_process(tmp_path) -> None:
    topology = "2x2"
    world = Topology.parse(topology).world_size
    result = run_cases(tmp_path, topology, [case for case, _ in CASES], steps=STEPS)
    assert result.ok, result.log_tail(60)
    for case, training in CASES:
        diffs = check_modes_case(result, case, world, STEPS, EVAL_STEPS, training)
        print(f"{topology} {case.name}: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
