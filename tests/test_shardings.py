"""Intra-host shardings are a registry (dmt_fx/runtime/shardings/, one file per sharding).

* each built-in's TorchRec plan for one host of examples/torchrec_dlrm.py (4 tables of dim 8,
  100/200/300/500 rows), against placements worked out by hand;
* a sharding registered from this test file is what `distribute(..., sharding=name)` runs:
  on a 1 x 2 gloo world it puts every table on the host's last rank, so rank 0 holds no
  shard and rank 1 all four, and the outputs still equal the original model's.
"""

from __future__ import annotations

import json
import os
import pkgutil
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import table_wise

import dmt_fx
from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime import shardings
from dmt_fx.runtime.optim import fused_params
from dmt_fx.runtime.shardings import SHARDINGS, host_sharding_plan, register_sharding
from examples import torchrec_dlrm as ex
from tests.harness.launch import run_world

TABLES = ("t_f0", "t_f1", "t_f2", "t_f3")


def _on_last_rank(tables, host):
    """Every table whole on the host's last rank (no built-in does this)."""
    return {config.name: table_wise(rank=host.ranks[-1]) for config in tables}


def _forgets_a_table(tables, host):
    return {config.name: table_wise(rank=host.ranks[0]) for config in tables[1:]}


register_sharding("test_on_last_rank", _on_last_rank)
register_sharding("test_forgets_a_table", _forgets_a_table)


def _plan(sharding: str, topology: str = "2x2", host: int = 1) -> dict:
    ebc = ex.make_ebc()
    sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(torch.optim.SGD, {"lr": 0.1}))
    plan = host_sharding_plan(ebc, sharding, dmt_fx.Topology.parse(topology), host, sharder)
    return {name: (p.sharding_type, list(p.ranks), p.compute_kernel) for name, p in plan.items()}


def test_every_module_of_the_package_registers_the_sharding_it_is_named_after() -> None:
    files = {m.name for m in pkgutil.iter_modules(shardings.__path__)} - {"base"}
    assert files == {"table_wise", "row_wise", "column_wise"}
    assert files <= set(SHARDINGS.names())


def test_table_wise_balances_the_host_ranks() -> None:
    # sizes 100, 200, 300, 500 rows: 500 -> rank 0, 300 -> 1, 200 -> 1 (300 < 500), 100 -> 0 (tie: lower)
    assert _plan("table_wise") == {"t_f3": ("table_wise", [0], "fused"), "t_f2": ("table_wise", [1], "fused"),
                                   "t_f1": ("table_wise", [1], "fused"), "t_f0": ("table_wise", [0], "fused")}


@pytest.mark.parametrize("sharding", ["row_wise", "column_wise"])
def test_row_and_column_wise_split_every_table_over_the_host(sharding: str) -> None:
    plan = _plan(sharding, "2x2", host=1)  # host 1 = global ranks 2, 3: the group's ranks 0, 1
    assert plan == {name: (sharding, [0, 1], "fused") for name in TABLES}


def test_column_wise_keeps_a_width_the_host_cannot_split_whole() -> None:
    plan = _plan("column_wise", "1x3", host=0)  # dim 8 over 3 ranks
    assert plan == {name: ("column_wise", [0], "fused") for name in TABLES}


def test_a_sharding_that_misses_a_table_is_refused() -> None:
    with pytest.raises(DMTError, match="one placement for each of the host's tables"):
        _plan("test_forgets_a_table")


def test_an_unknown_sharding_names_the_registered_ones() -> None:
    with pytest.raises(DMTError, match="table_wise") as info:
        _plan("no_such_sharding")
    assert "register_sharding" in str(info.value)


# ---------------------------------------------------------------- used by distribute

WORLD, B = 2, 4


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    model, example = ex.build(0)
    expected = model(*ex.make_inputs(B * WORLD, 1)).detach()[rank * B:(rank + 1) * B]
    gm = dmt_fx.transform(model, "1x2", example_inputs=example)
    module, _ = dmt_fx.distribute(gm, sharding="test_on_last_rank")
    from dmt_fx.jobs.data import slice_batch

    got = module(*slice_batch(ex.make_inputs(B * WORLD, 1), rank * B, (rank + 1) * B)).detach()
    shards = {key.split(".")[-2]: len(value.local_shards()) for key, value in module.state_dict().items()
              if hasattr(value, "local_shards")}
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"shards": shards, "max_diff": (got - expected).abs().max().item()}))


@pytest.mark.distributed
def test_a_sharding_registered_in_a_test_file_is_used_by_distribute(tmp_path) -> None:
    run_world(_worker, tmp_path, nprocs=WORLD, timeout_s=120)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["shards"] == {name: 0 for name in TABLES}
    assert ranks[1]["shards"] == {name: 1 for name in TABLES}
    assert all(r["max_diff"] <= 1e-6 for r in ranks), ranks
