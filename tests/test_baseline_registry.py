"""Baselines are a registry: a new one registered from a TARGET file runs through `dmt-fx run`.

The target file calls `register_baseline`; the CLI imports it before it checks
`--baseline`, and every torchrun rank imports it before it builds the baseline. The new
baseline here is plain DDP over the whole model (every rank holds every table), which a
flat TorchRec plan is not: it records on which ranks it was built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dmt_fx.baselines
from dmt_fx.baselines import BASELINES, baseline_names
from dmt_fx.cli.main import main
from dmt_fx.ir.errors import DMTError

ROOT = Path(__file__).resolve().parents[1]

TARGET_FILE = textwrap.dedent('''
    """The default DLRM, plus a baseline of its own: DDP, every table replicated."""
    import os
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from dmt_fx.baselines import register_baseline
    from dmt_fx.models.zoo import default_dlrm as build, make_inputs  # noqa: F401


    def replicated(model, *, topology, optimizer_class, optimizer_kwargs, plan):
        Path(os.environ["DMT_FX_TEST_MARKERS"], f"rank{dist.get_rank()}").write_text(str(topology))
        module = DistributedDataParallel(model)
        return module, optimizer_class(module.parameters(), **optimizer_kwargs)


    register_baseline("replicated", replicated)
''')


@pytest.fixture
def target(tmp_path) -> str:
    path = tmp_path / "replicated_target.py"
    path.write_text(TARGET_FILE)
    return f"{path}:build"


def test_built_ins_register_through_the_registry():
    qcomms = tuple(f"flat-{s}+{p}" for p in ("fp16", "bf16") for s in ("table_wise", "row_wise", "table_row_wise"))
    assert baseline_names("flat") == ("flat-table_wise", "flat-row_wise", "flat-table_row_wise", *qcomms,
                                      "flat-grid_shard", "torchrec-2d")  # grid and 2D count in "best flat",
    # and so do the flat plans with TorchRec's qcomms
    assert "torchrec-towers" in BASELINES and "torchrec-towers" not in baseline_names("flat")
    # every module of the package was imported by the package itself: a new file is picked up
    package = Path(dmt_fx.baselines.__file__).parent
    assert {p.stem for p in package.glob("*.py")} - {"__init__"} <= {
        name.rpartition(".")[2] for name in sys.modules if name.startswith("dmt_fx.baselines.")}


def test_unknown_baseline_is_a_user_error_listing_the_registered_ones(target, capsys):
    assert main(["run", target, "--baseline", "no-such-baseline", "--steps", "2", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmt-fx: error: baseline 'no-such-baseline'") and len(err.splitlines()) == 1
    assert "replicated" in err and "flat-table_row_wise" in err and "register_baseline" in err
    with pytest.raises(DMTError):
        dmt_fx.baselines.build_baseline("no-such-baseline", None, topology="1x1")


def test_run_help_lists_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for name in BASELINES.names():
        assert name in help_text


@pytest.mark.distributed
def test_run_a_baseline_registered_in_the_target_file(target, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dmt_fx.cli.main", "run", target, "--baseline", "replicated",
                           "--topology", "2x1", "--steps", "2", "--batch-size", "8", "--format", "json",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DMT_FX_TEST_MARKERS": str(markers)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert [r["variant"] for r in rows] == ["dmt", "replicated"]
    # the target's builder ran on every rank (the registration reached them all)
    assert sorted(p.name for p in markers.iterdir()) == ["rank0", "rank1"]
    assert (markers / "rank0").read_text() == "2x1"
    dmt, replicated = rows
    # same weights, same first batch: before any update both compute the original model's loss
    assert replicated["first_loss"] == pytest.approx(dmt["first_loss"], abs=1e-6)
    # every table is local: no embedding all-to-all at all, while DMT exchanges across hosts
    assert replicated["cross_host_embedding_bytes"] == 0 and dmt["cross_host_embedding_bytes"] > 0
