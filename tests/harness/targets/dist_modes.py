"""torchrun targets for the distributed test of modes (tests/test_distributed_modes.py).

Every rank imports this file: the BatchNorm / Dropout models of tests/harness/corpus/modes.py, each
built in the mode it is captured in, and their batches (`make_inputs`, the worker's hook)."""

from __future__ import annotations

import torch
import torch.nn as nn

from tests.harness.corpus import dcn
from tests.harness.corpus.joint import field_ids
from tests.harness.corpus.modes import BNDropoutMLP, CTRBlockModel, ExportBNDropoutMLP, RootDropoutModel, TorchFMDeepFM
from tests.harness.corpus.modes import make_inputs as make_inputs  # the worker's hook

SEED = 0


class Logit(nn.Module):
    """torchfm's DeepFM returns probabilities [B]; the job's loss takes a [B, 1] score."""

    def __init__(self) -> None:
        super().__init__()
        self.model = TorchFMDeepFM(SEED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).unsqueeze(1)


def fx_mlp() -> nn.Module:
    return BNDropoutMLP(SEED)


def export_mlp_eval() -> nn.Module:
    return ExportBNDropoutMLP(SEED).eval()


def ctr_block() -> nn.Module:
    return CTRBlockModel(SEED)


def root_dropout_eval() -> nn.Module:
    return RootDropoutModel(SEED).eval()


def deepfm() -> nn.Module:
    return Logit()


def _target(build):  # the worker's factory: (model, example inputs)
    def factory() -> tuple[nn.Module, tuple]:
        return build(), make_inputs(4, SEED)
    factory.__name__ = build.__name__
    return factory


fx_mlp_target, export_mlp_eval_target = _target(fx_mlp), _target(export_mlp_eval)
ctr_block_target, root_dropout_eval_target = _target(ctr_block), _target(root_dropout_eval)


def deepfm_target() -> tuple[nn.Module, tuple]:
    return deepfm(), (field_ids(SEED, 4),)


def deepfm_inputs(batch: int, seed: int) -> tuple[torch.Tensor]:
    return (field_ids(seed, batch),)


deepfm_target.make_inputs = deepfm_inputs  # type: ignore[attr-defined]


def dcn_mix_eval() -> nn.Module:
    return dcn.DCNv2(SEED, "mix").eval()


def dcn_mix_target() -> tuple[nn.Module, tuple]:
    return dcn_mix_eval(), dcn.make_inputs(4, SEED)


dcn_mix_target.make_inputs = dcn.make_inputs  # type: ignore[attr-defined]
