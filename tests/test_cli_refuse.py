"""`dmt-fx run` / `dmt-fx demo` refuse a model `distribute` cannot run BEFORE torchrun starts:
the whole DMTError (found, expected, fixes) printed once, exit code 2."""

from __future__ import annotations

import os
import time

import pytest

from dmt_fx.cli.main import main

MAX_POOLED = '''
import torch
from torch import nn


class MaxPooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.bags = nn.ModuleList([nn.EmbeddingBag(20, 4, mode="max"), nn.EmbeddingBag(30, 4, mode="sum")])
        self.top = nn.Linear(3 + 8, 1)

    def forward(self, dense, ids_a, offsets_a, ids_b, offsets_b):
        pooled = [self.bags[0](ids_a, offsets_a), self.bags[1](ids_b, offsets_b)]
        return self.top(torch.cat([dense] + pooled, dim=1))


def make_inputs(batch, seed):
    g = torch.Generator().manual_seed(seed)
    out = [torch.rand(batch, 3, generator=g)]
    for rows in (20, 30):
        lengths = torch.randint(1, 3, (batch,), generator=g)
        out += [torch.randint(0, rows, (int(lengths.sum()),), generator=g), torch.cumsum(lengths, 0) - lengths]
    return tuple(out)


def build():
    torch.manual_seed(0)
    return MaxPooled(), make_inputs(4, 0)
'''


@pytest.mark.parametrize("verb", ["run", "demo"])
def test_an_undistributable_model_is_refused_before_torchrun(tmp_path, capsys, verb: str) -> None:
    target = tmp_path / "max_pooled.py"
    target.write_text(MAX_POOLED)
    out = tmp_path / "out"
    start = time.monotonic()
    code = main([verb, f"{target}:build", "--topology", "2x2", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("dmt-fx: error:") == 1, captured.err
    error = captured.err.split("dmt-fx: error:", 1)[1]
    assert "bags.0" in error and "max" in error, error  # found: the module and its option
    assert "expected" in error and "fix:" in error, error  # the whole DMTError, not its first line
    assert "graph diff" not in captured.out  # demo: nothing printed before the refusal
    assert not os.path.exists(out) or not any(name.startswith("agent") for _, _, files in os.walk(out)
                                                for name in files), "torchrun started"
    assert time.monotonic() - start < 30
