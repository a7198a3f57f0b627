"""plan="auto": towers, compression and shardings chosen by the cost model.

The traffic the candidates are timed on is held to MEASURED bytes (the traffic meter's
figures of `dmt-fx bench traffic` in the README), the sharding model to the runtime's own
placement rule, the memory refusal to its threshold, and the CLI is rendered."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console
from torchrec.modules.embedding_configs import EmbeddingBagConfig

import dmt_fx
from dmt_fx.cli.auto_report import render_auto
from dmt_fx.cli.main import main
from dmt_fx.cli.plan import memory_size
from dmt_fx.compiler.auto_plan import SHARDING_MODELS, AutoOptions, Hardware
from dmt_fx.compiler.auto_plan.candidates import Setup, cross_load, evaluate, intra_bytes
from dmt_fx.compiler.auto_plan.shardings import TableLoad, table_wise_slots
from dmt_fx.compiler.partitioners.balanced import balanced_plan
from dmt_fx.cost import tiers_of, wire
from dmt_fx.models.wide import wide_model
from dmt_fx.models.zoo import default_dlrm
from dmt_fx.runtime.shardings import SHARDINGS, HostRanks
from dmt_fx.runtime.shardings.table_wise import table_wise_sharding

TARGET = "dmt_fx.models.zoo:default_dlrm"


@pytest.fixture(scope="module")
def wide_sites():
    model, inputs = wide_model()
    return dmt_fx.dmt_result(dmt_fx.transform(model, "2x2", example_inputs=inputs)).sites


# Measured by the traffic meter in real gloo runs (README, "Exact traffic": bytes one rank sends
# per step, mean over ranks, wide_model, local batch 32): topology -> (x-host id B, x-host
# embedding B at c = 1, intra-host B). The id bytes are the payload alone: the lean peer id
# exchange sends no KJTAllToAll handshake, and its lengths and ids cross as int32, half the
# KJT's int64 bytes (tests/test_traffic.py holds the meter to both).
MEASURED = {"2x2": (2_048, 32_768, 36_888), "2x4": (2_048, 32_768, 55_368), "4x2": (3_072, 49_152, 36_888)}


@pytest.mark.parametrize("topology", sorted(MEASURED))
@pytest.mark.parametrize("c", [1, 2, 4, 8])
def test_candidate_traffic_matches_the_measured_bytes(wide_sites, topology, c):
    topo = dmt_fx.Topology.parse(topology)
    pooling = {f.name: 1.0 for f in wide_sites.features}
    groups = [list(t.features) for t in balanced_plan(wide_sites, topo, pooling).towers]
    setup = Setup(wide_sites, pooling, topo.num_hosts, topo.local_world_size, 32, tiers_of(topo),
                  Hardware(), None, 0.0, None, shardings=("table_wise",))
    widths = [16 * len(g) // c for g in groups]  # concat interaction: W_t / c exactly
    candidate = evaluate(setup, groups, c, "linear", widths, [0.0] * len(groups))
    ids, embedding, intra = MEASURED[topology]
    id_bytes = [wire.peer_id_bytes(32, len(g), 32 * len(g)) for g in groups]  # no weighted features here
    cross = [cross_load(setup, h, list(range(len(groups))), id_bytes, widths)[1] for h in range(topo.num_hosts)]
    assert sum(cross) / len(cross) == ids + embedding // c  # the meter's figure is the mean over ranks
    assert candidate.cross_bytes == max(cross)
    # 3 peer collectives per step (lengths and ids in one, pooled forward, backward), H - 1
    # messages each: what tests/test_traffic.py measures for the runtime's peer exchange
    assert cross_load(setup, 0, list(range(len(groups))), id_bytes, widths)[0] == 3 * (topo.num_hosts - 1)
    sent = []
    for group in groups:  # every rank of every host
        tables = [TableLoad(f.table, 10, 16, 4, 1, 1.0) for f in wide_sites.features if f.name in group]
        load = SHARDING_MODELS["table_wise"](tables, topo.local_world_size, topo.num_hosts * 32)
        sent += [intra_bytes(setup, load, r) for r in range(topo.local_world_size)]
    assert sum(sent) / len(sent) == intra


def test_sharding_models_follow_the_runtime():
    assert set(SHARDING_MODELS) <= set(SHARDINGS.names())
    rows = [20_000, 5_000, 2_000, 2_000, 1_000, 500, 300, 100]
    configs = sorted((EmbeddingBagConfig(name=f"t{i}", embedding_dim=16, num_embeddings=r, feature_names=[f"f{i}"])
                      for i, r in enumerate(rows)), key=lambda c: -c.num_embeddings)
    runtime = table_wise_sharding(configs, HostRanks(0, (0, 1, 2)))
    slots = table_wise_slots([TableLoad(f"t{i}", r, 16, 4, 1, 1.0) for i, r in enumerate(rows)], 3)
    ours = {t.name: rank for rank, slot in enumerate(slots) for t in slot}
    # TorchRec's generator holds the rank it was given in its closure (table_wise(rank=r))
    theirs = {name: dict(zip(gen.__code__.co_freevars, (c.cell_contents for c in gen.__closure__)))["rank"]
              for name, gen in runtime.items()}
    assert ours == theirs


@pytest.fixture(scope="module")
def built_in():
    return default_dlrm()


def test_transform_auto_identity_keeps_the_model_and_explains(built_in):
    model, inputs = built_in
    gm = dmt_fx.transform(model, "2x4", example_inputs=inputs, plan="auto")  # verify=True: outputs equal
    auto = gm.meta["dmt_auto"]
    plan = dmt_fx.tower_plan(gm)
    assert plan.partitioner == "auto" and auto.compression == 1 and auto.tower_module == "identity"
    # one tower per host (T = 1 .. min(hosts, tables)), then k = 2, 3 per host (H x k <= 7 tables)
    assert [(c.towers, c.towers_per_domain) for c in auto.candidates] == [(1, 1), (2, 1), (4, 2), (6, 3)]
    admissible = [c for c in auto.candidates if not c.refused]
    assert auto.candidates[auto.winner].step_s == min(c.step_s for c in admissible)
    # the step times pinned when the step model moved to dmt_fx.cost (a pure move: the same
    # bits), then with the peer ids priced as int32, then with lengths and ids in one
    # all-to-all: one inter-host latency (20 us) less for every candidate
    assert [c.step_s for c in auto.candidates] == [0.0001433195911111111, 0.0001424400888888889,
                                                   0.00014236983111111113, 0.00014236983111111113]
    assert len(plan.towers) == auto.candidates[auto.winner].towers
    assert all(0.0 <= c.kept_affinity <= 1.0 for c in auto.candidates)
    assert auto.candidates[0].kept_affinity == 1.0  # one tower keeps every pair
    assert "fastest of 4" in auto.why and auto.notes  # says why c > 1 was not tried
    assert auto.sharding in SHARDINGS.names()


def test_quality_budget_refuses_compressing_candidates(built_in):
    model, inputs = built_in
    options = AutoOptions(quality_budget=1.0)
    gm = dmt_fx.transform(model, "4x1", example_inputs=inputs, plan=options, tower_module="dot")
    auto = gm.meta["dmt_auto"]
    assert sorted({c.compression for c in auto.candidates}) == [1, 2, 4, 8]
    for c in auto.candidates:
        if c.compression > 1 and c.kept_affinity < 1.0 and not c.refused.startswith("kind"):
            assert c.refused.startswith("quality"), c
        if c.compression == 1:
            assert not c.refused  # identity towers compute the original model whatever the split
    chosen = auto.candidates[auto.winner]
    assert chosen.compression == 1 or chosen.kept_affinity == 1.0


def test_compression_wins_when_quality_allows(built_in):
    model, inputs = built_in
    gm = dmt_fx.transform(model, "4x1", example_inputs=inputs, plan=AutoOptions(quality_budget=0.0),
                          tower_module="dot")
    auto = gm.meta["dmt_auto"]
    assert auto.compression > 1 and dmt_fx.tower_plan(gm).changes_model
    same_towers = [c for c in auto.candidates if c.towers == auto.candidates[auto.winner].towers]
    identity = next(c for c in same_towers if c.compression == 1)
    assert auto.candidates[auto.winner].cross_bytes < identity.cross_bytes


def test_memory_that_cannot_fit_is_refused_with_the_arithmetic(built_in):
    model, inputs = built_in
    with pytest.raises(dmt_fx.DMTError) as info:
        dmt_fx.transform(model, "2x4", example_inputs=inputs, plan=AutoOptions(memory_per_rank=1000))
    message = str(info.value)
    assert "bytes of tables on the busiest rank" in message and "<= 1,000" in message
    least = int(message.split(" bytes of tables")[0].split()[-1].replace(",", ""))
    total = sum(t.num_embeddings * t.embedding_dim * 4 for t in model.sparse_arch.embedding_bag_collection
                .embedding_bag_configs())
    assert math.ceil(total / 8) <= least <= 20_000 * 16 * 4  # an even spread .. the largest table whole
    gm = dmt_fx.transform(model, "2x4", example_inputs=inputs, plan=AutoOptions(memory_per_rank=least))
    assert gm.meta["dmt_auto"].candidates[gm.meta["dmt_auto"].winner].memory_per_rank <= least


def test_memory_limit_steers_the_sharding(built_in):
    """On 2x8 a 16-wide table cannot split by columns (2-column shards): unlimited, the user_id
    table stays whole (table_wise); one byte short of it, its tower must spread it by rows."""
    model, inputs = built_in
    limit = 20_000 * 16 * 4 - 1
    chosen = {}
    for memory in (None, limit):
        auto = dmt_fx.transform(model, "2x8", example_inputs=inputs,
                                plan=AutoOptions(memory_per_rank=memory)).meta["dmt_auto"]
        best = auto.candidates[auto.winner]
        chosen[memory] = (best.shardings[next(i for i, g in enumerate(best.groups) if "user_id" in g)],
                          best.memory_per_rank)
    assert chosen[None] == ("table_wise", 20_000 * 16 * 4)
    assert chosen[limit][0] == "row_wise" and chosen[limit][1] <= limit


def test_memory_size_parser():
    assert memory_size("512MiB") == 512 * 2**20
    assert memory_size("40GB") == 40 * 10**9
    assert memory_size("4e10") == 4 * 10**10


def test_cli_plan_auto_json_and_table(capsys):
    assert main(["plan", TARGET, "--topology", "2x4", "--auto", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    auto = data["auto"]
    assert data["plan"]["partitioner"] == "auto" and len(auto["candidates"]) == 4
    assert {"step_s", "kept_affinity", "memory_per_rank", "refused", "shardings"} <= set(auto["candidates"][0])
    assert auto["why"] and auto["quality_budget"] == dmt_fx.compiler.auto_plan.DEFAULT_QUALITY_BUDGET
    assert main(["plan", TARGET, "--topology", "2x4", "--auto", "--link-bandwidths", "450,5"]) == 0
    out = capsys.readouterr().out
    assert "plan=auto: candidates" in out and "chosen" in out and "run it: distribute" in out


def test_cli_plan_auto_refuses_memory(capsys):
    assert main(["plan", TARGET, "--topology", "2x4", "--auto", "--memory-per-rank", "1kB"]) == 2
    assert "bytes of tables on the busiest rank" in capsys.readouterr().err


def test_auto_without_example_inputs_plans_identity_towers(built_in):
    model, _ = built_in
    with pytest.warns(UserWarning, match="are ignored"):  # auto picks the partition itself
        auto = dmt_fx.transform(model, "2x2", plan="auto", tower_module="dot", partitioner="learned").meta["dmt_auto"]
    assert {c.compression for c in auto.candidates} == {1} and auto.tower_module == "identity"
    assert all(c.kept_affinity is None for c in auto.candidates)  # no batch: no affinity measured
    assert any("no example_inputs" in n for n in auto.notes)


def test_k_towers_per_host_sends_the_measured_bytes(wide_sites):
    """k = 2 on 2x2 (4 towers, hosts [0, 0, 1, 1]) sends across hosts what `bench traffic`
    measured for it (34,816 B per rank per step with int32 peer ids, the same as k = 1), and the cost
    model sees it so: the same cross bytes as the 2-tower plan."""
    topo = dmt_fx.Topology.parse("2x2")
    pooling = {f.name: 1.0 for f in wide_sites.features}
    setup = Setup(wide_sites, pooling, 2, 2, 32, tiers_of(topo), Hardware(), None, 0.0, None)
    names = [f.name for f in wide_sites.features]
    four = [names[i::4] for i in range(4)]
    widths = [16 * len(g) for g in four]
    k2 = evaluate(setup, four, 1, "identity", widths, [0.0] * 4, towers_per_domain=2)
    assert k2.tower_hosts == (0, 0, 1, 1) and k2.towers_per_domain == 2 and "2 per host" in k2.label
    ids = [wire.peer_id_bytes(32, len(g), 32 * len(g)) for g in four]
    cross = [cross_load(setup, h, [0, 0, 1, 1], ids, widths)[1] for h in range(2)]
    assert sum(cross) / 2 == 34_816 == k2.cross_bytes  # int32 peer ids: 2,048 B less
    two = [four[0] + four[1], four[2] + four[3]]
    k1 = evaluate(setup, two, 1, "identity", [16 * len(g) for g in two], [0.0] * 2)
    assert k1.cross_bytes == k2.cross_bytes
    assert k2.shardings[0] == k2.shardings[1] and k2.shardings[2] == k2.shardings[3]  # one per host


def test_auto_tries_k_towers_per_host_and_the_plan_places_them(built_in):
    model, inputs = built_in
    auto = dmt_fx.transform(model, "2x2", example_inputs=inputs, plan="auto").meta["dmt_auto"]
    layouts = {(c.towers, c.towers_per_domain): c for c in auto.candidates}
    assert set(layouts) == {(1, 1), (2, 1), (4, 2), (6, 3)}
    for c in auto.candidates:
        assert c.tower_hosts == tuple(t // c.towers_per_domain for t in range(c.towers)) and c.step_s > 0
        by_host = {}
        for h, s in zip(c.tower_hosts, c.shardings):
            by_host.setdefault(h, set()).add(s)
        assert all(len(s) == 1 for s in by_host.values()), c  # a host's towers share its sharding
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=AutoOptions(towers_per_domain=(2,)))
    auto, plan = gm.meta["dmt_auto"], dmt_fx.tower_plan(gm)
    assert [(c.towers, c.towers_per_domain) for c in auto.candidates] == [(4, 2)]
    assert [t.host for t in plan.towers] == [0, 0, 1, 1] and auto.to_dict()["tower_hosts"] == [0, 0, 1, 1]
    # transform's towers_per_domain=k with plan="auto": only that k
    again = dmt_fx.transform(model, "2x2", example_inputs=inputs, plan="auto", towers_per_domain=3)
    assert [t.host for t in dmt_fx.tower_plan(again).towers] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(dmt_fx.DMTError, match="H x k <= 7 units"):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=AutoOptions(towers_per_domain=(4,)))


def test_auto_plan_carries_each_towers_sharding(built_in):
    """The chosen shardings are in the plan (Tower.sharding), so distribute runs them; on 2x4
    the user_id tower's host splits by columns, the other keeps tables whole."""
    model, inputs = built_in
    gm = dmt_fx.transform(model, "2x4", example_inputs=inputs, plan=AutoOptions(towers_per_domain=(1,)))
    auto, plan = gm.meta["dmt_auto"], dmt_fx.tower_plan(gm)
    assert tuple(t.sharding for t in plan.towers) == auto.shardings
    assert len(set(auto.shardings)) == 2  # column_wise / table_wise, per host
    assert dmt_fx.TowerPlan.from_json(plan.to_json()).towers == plan.towers
    out = Console(record=True, width=240)
    render_auto(out, auto.to_dict())
    per_host = ", ".join(f"host {t.host} {t.sharding}" for t in plan.towers)
    assert f"run it: distribute(gm): the plan carries each host's sharding ({per_host})" in out.export_text()


def test_cli_plan_auto_shows_k_and_the_host_shardings(capsys):
    assert main(["plan", TARGET, "--topology", "2x2", "--auto", "--towers-per-domain", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 (2/host)" in out and "the plan carries each host's sharding (" in out
    assert "fastest of 1 admissible" in out  # --towers-per-domain K: only that k
    assert main(["plan", TARGET, "--topology", "2x2", "--auto", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all("sharding" in t for t in data["plan"]["towers"])
    assert {c["towers_per_domain"] for c in data["auto"]["candidates"]} == {1, 2, 3}


def test_auto_options_exported():
    assert dmt_fx.AutoOptions is AutoOptions and "AutoOptions" in dmt_fx.__all__
