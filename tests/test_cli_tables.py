"""Every table the CLI prints, rendered from small hand-made records (no model, no torchrun).

`diff`, `plan`, the `run` / `demo` results, `bench traffic` and `bench emulated` each render
their JSON-able data with `dmt_fx.cli.tables`; a renderer that reads a missing field or
imports a name that is gone (the old `bench traffic` crash) fails here in milliseconds.
"""

from __future__ import annotations

import argparse
import re

from rich.console import Console

from dmt_fx.cli import bench, demo, diff, plan
from dmt_fx.cli.tables import human_bytes, results_table


def recording() -> Console:
    return Console(record=True, width=220)


def text(console: Console) -> str:
    return console.export_text()


def line_with(out: str, *words: str) -> str:
    lines = [line for line in out.splitlines() if all(w in line for w in words)]
    assert len(lines) == 1, (words, lines)
    return lines[0]


def node(name: str, status: str, tower: int | None = None, role: str | None = None) -> dict:
    return {"name": name, "op": "call_function", "target": f"ops.{role or name}", "args": "(x,)",
            "status": status, "tower": tower, "role": role}


# ---------------------------------------------------------------- diff


DIFF = {
    "original": [node("dense_input", "kept"), node("sparse_arch_ebc", "removed"), node("over_arch", "kept")],
    "rewritten": [node("dense_input", "kept"), node("select_features", "inserted", 0, "select_features"),
                  node("peer_input_exchange", "inserted", 0, "peer_input_exchange"),
                  node("select_features_1", "inserted", 1, "select_features"),
                  node("merge_keyed_tensors", "inserted", None, "merge"), node("over_arch", "kept")],
    "inserted": 4, "removed": 1,
    "towers": {"0": ["select_features", "peer_input_exchange"], "1": ["select_features_1"]},
    "shared": ["merge_keyed_tensors"],
}


def test_diff_renders_counts_graphs_and_towers_by_host():
    console = recording()
    diff.render(console, DIFF, header="model.py:build on topology 2x2", hosts={0: 1, 1: 0})
    out = text(console)
    assert "model.py:build on topology 2x2: 4 nodes inserted, 1 removed" in out
    assert re.search(r"over_arch\s.*over_arch", line_with(out, "over_arch", "│")), "kept nodes side by side"
    assert "sparse_arch_ebc" in line_with(out, "sparse_arch_ebc", "│")
    assert "tower 0: peer_input_exchange" in out
    # the host comes from the plan, not from the tower index
    assert "tower 0 (host 1)" in out and "tower 1 (host 0)" in out
    assert "shared (all towers)" in out and "merge" in line_with(out, "merge_keyed_tensors", "ops.merge")


# ---------------------------------------------------------------- plan


def plan_data(changes_model: bool) -> dict:
    return {
        "topology": "2x2", "route": "symbolic", "partitioner": "balanced", "fingerprint": "abc123-2x2",
        "lookup_imbalance": 1.0233, "memory_imbalance": 1.2727, "balance_bound": None, "batch_size": 64,
        "interaction": {"node": "inter_arch", "kind": "torchrec.InteractionArch"}, "changes_model": changes_model,
        "towers": [{"tower": 0, "host": 0, "features": ["f1", "f3"], "tables": ["sparse.t_f1", "sparse.t_f3"],
                    "lookup_cost": 84, "memory_bytes": 2048},
                   {"tower": 1, "host": 1, "features": ["f0"], "tables": ["sparse.t_f0"],
                    "lookup_cost": 88, "memory_bytes": 700}],
        "collectives": [{"name": "peer_output_exchange", "kind": "peer_output_exchange", "tower": 0,
                         "group": "cross-host", "direction": "forward", "bytes_per_step": 1536}],
    }


def test_plan_renders_towers_collectives_and_balance():
    console = recording()
    plan.render(console, plan_data(changes_model=False), target="m.py:build", tower_module="identity",
                compression=1)
    out = text(console)
    assert "m.py:build on topology 2x2 (symbolic capture), partitioner balanced, interaction inter_arch" in out
    row = line_with(out, "f1, f3")
    assert "t_f1, t_f3" in row and "sparse." not in row and "2.0 KiB" in row and "84" in row
    assert "700 B" in line_with(out, "t_f0")
    assert "1.5 KiB" in line_with(out, "peer_output_exchange", "cross-host")
    assert "local batch 64" in out
    assert "lookup imbalance 1.0233, memory imbalance 1.2727 (max / mean; bound none)" in out
    assert "changes the model" not in out


def test_plan_says_when_tower_modules_change_the_model():
    console = recording()
    plan.render(console, plan_data(changes_model=True), target="m.py:build", tower_module="dot", compression=2)
    assert "tower modules: dot, compression 2 (this changes the model" in text(console)


# ---------------------------------------------------------------- run and demo


def row(variant: str, step_s: float, messages: float = 2.0) -> dict:
    return {"variant": variant, "first_loss": 0.69314, "final_loss": 0.5, "cross_host_id_bytes": 1000.0,
            "cross_host_embedding_bytes": 536.0, "cross_host_messages": messages, "intra_host_bytes": 3 * 2 ** 20,
            "step_time_median_s": step_s, "step_time_iqr_s": 0.0015}


def test_run_results_table():
    console = recording()
    console.print(results_table([row("dmt", 0.0123, 1.0), row("flat-table_wise", 0.02)], "m on 2x2, 4 steps"))
    out = text(console)
    dmt = line_with(out, "dmt ")
    assert "0.6931 -> 0.5000" in dmt
    assert "1.5 KiB" in dmt  # id + embedding bytes: 1000 + 536 = 1536
    assert "3.0 MiB" in dmt and "12.3 ms" in dmt and "1.5 ms" in dmt
    assert "best flat" not in out


def test_demo_marks_the_fastest_flat_plan_only():
    rows = [row("dmt-identity", 0.010, 1.0), row("dmt-c4", 0.008, 1.0), row("flat-table_wise", 0.030),
            row("flat-row_wise", 0.020), row("torchrec-towers", 0.005)]  # fastest, but not a flat plan
    for r in rows:  # the run summary's total
        r["cross_host_bytes"] = r["cross_host_id_bytes"] + r["cross_host_embedding_bytes"]
    console = recording()
    demo.render(console, rows, ("flat-table_wise", "flat-row_wise"), title="DMT vs flat")
    out = text(console)
    assert out.count("(best flat)") == 1 and "(best flat)" in line_with(out, "flat-row_wise", "│")
    assert "2.00x" in line_with(out, "dmt-identity", "│") and "2.50x" in line_with(out, "dmt-c4", "│")
    assert "torchrec-towers" not in out
    assert "other flat plans: flat-table_wise 30.0 ms" in out


# ---------------------------------------------------------------- bench


def traffic_record(topology: str, variant: str, emb: float) -> dict:
    return {"topology": topology, "variant": variant, "cross_host_id_bytes": 512.0,
            "cross_host_embedding_bytes": emb, "cross_host_messages": 3.0, "intra_host_bytes": 100.0,
            "intra_host_messages": 1.5, "step_time_median_s": 0.004}


def test_bench_traffic_table_one_section_per_topology():
    records = [traffic_record("2x2", "flat-table_wise", 8192.0), traffic_record("2x2", "dmt-c4", 2048.0),
               traffic_record("2x4", "flat-table_wise", 8192.0)]
    console = recording()
    args = argparse.Namespace(target="dmt_fx.models.wide:wide_model", batch_size=32, steps=3, warmup=1)
    bench.render_traffic(console, records, args)
    out = text(console)
    assert "local batch 32, 2 measured steps" in out
    c4 = line_with(out, "dmt-c4")
    assert "2.0 KiB" in c4 and "512 B" in c4 and "3.0" in c4 and "1.5" in c4 and "4.0 ms" in c4
    lines = out.splitlines()
    last_2x2 = max(i for i, line in enumerate(lines) if "2x2" in line and "flat" in line + "dmt")
    first_2x4 = min(i for i, line in enumerate(lines) if "2x4" in line)
    assert any(set(line.strip()) <= set("├┼┤─│ ") and "─" in line for line in lines[last_2x2 + 1:first_2x4])


def test_bench_emulated_table():
    records = [{**traffic_record("2x2", "flat-table_wise", 4096.0), "step_time_iqr_s": 0.001,
                "is_best_flat": True, "speedup_vs_best_flat": 1.0},
               {**traffic_record("2x2", "dmt-c4", 1024.0), "step_time_median_s": 0.0032, "step_time_iqr_s": 0.0002,
                "is_best_flat": False, "speedup_vs_best_flat": 1.25},
               {**traffic_record("2x2", "dmt-identity", 4096.0), "step_time_iqr_s": 0.0,
                "is_best_flat": False, "speedup_vs_best_flat": None}]
    console = recording()
    bench.render_emulated(console, records, argparse.Namespace(topology="2x2", steps=20, out="results"))
    out = text(console)
    assert "emulated two-tier network, 2x2: median step time over 20 steps" in out
    assert "(best flat)" in line_with(out, "flat-table_wise") and "1.00x" in line_with(out, "flat-table_wise")
    c4 = line_with(out, "dmt-c4")
    assert "3.2 ms" in c4 and "1.25x" in c4 and "1.0 KiB" in c4
    assert "n/a" in line_with(out, "dmt-identity")


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1536, 3 * 2 ** 20, 5 * 2 ** 30)] == \
        ["0 B", "1023 B", "1.5 KiB", "3.0 MiB", "5.0 GiB"]
