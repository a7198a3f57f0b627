"""The CLI's one console and its formatters: rich tables built from plain, JSON-able records.

Every verb computes its data first (what `--format json` prints) and renders it here, so
a table can be rendered, and tested, from a small hand-made record.
"""

from __future__ import annotations

import difflib
from collections import Counter
from itertools import zip_longest
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STYLE = {"inserted": "green", "removed": "red strike", "kept": ""}
ELIDE_AFTER, ELIDE_HEAD, ELIDE_TAIL = 32, 3, 2  # a tower of 1,250 features: its count, first and last
# a diff of more than DIFF_FULL_ROWS nodes shows KEPT_CONTEXT unchanged ones either side of a change
DIFF_FULL_ROWS, KEPT_CONTEXT = 400, 3
PIPE_WIDTH = 160  # rich's 80 columns squeeze the side-by-side diff and the wide tables when piped

Record = dict[str, Any]


def console() -> Console:
    """The terminal's console, or a wide one when the output is piped."""
    found = Console()
    return found if found.is_terminal else Console(width=PIPE_WIDTH)


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB' (the one byte formatter of the CLI's tables)."""
    for unit in ("B", "KiB", "MiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _table(title: str, columns: list[str], *, right: tuple[str, ...] = (), left_title: bool = False) -> Table:
    table = Table(title=title, title_justify="left" if left_title else "center")
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column in right else "left")
    return table


# ---------------------------------------------------------------- diff


def side_by_side(original: list[Record], rewritten: list[Record]) -> Table:
    """Original and rewritten node names aligned, inserted nodes green, removed ones struck out."""
    table = _table("original | rewritten", ["original", "rewritten", "tower / role"], left_title=True)
    # Align on node names so kept nodes sit side by side between the changes.
    matcher = difflib.SequenceMatcher(a=[r["name"] for r in original], b=[r["name"] for r in rewritten],
                                      autojunk=False)
    summarise = len(original) + len(rewritten) > DIFF_FULL_ROWS
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        pairs = list(zip_longest(original[a0:a1], rewritten[b0:b1]))
        if summarise and tag == "equal" and len(pairs) > 2 * KEPT_CONTEXT + 1:  # a long unchanged run: its ends only
            skipped = len(pairs) - 2 * KEPT_CONTEXT
            pairs = pairs[:KEPT_CONTEXT] + [None] + pairs[-KEPT_CONTEXT:]
        for pair in pairs:
            if pair is None:
                table.add_row(Text(f"… {skipped} unchanged nodes …", style="dim"), Text(""), Text(""))
            else:
                table.add_row(_name(pair[0]), _name(pair[1]), _role(pair[1]))
    return table


def _name(row: Record | None) -> Text:
    return Text("") if row is None else Text(row["name"], style=STYLE[row["status"]])


def _role(row: Record | None) -> Text:
    if row is None or row["role"] is None:
        return Text("")
    tower = "" if row["tower"] is None else f"tower {row['tower']}: "
    return Text(f"{tower}{row['role']}", style=STYLE[row["status"]])


def node_table(title: str, rows: list[Record]) -> Table:
    """Inserted nodes of one tower (or the shared ones): name, role, target, arguments."""
    table = _table(title, ["node", "role", "target", "args"], left_title=True)
    for r in rows:
        table.add_row(Text(r["name"], style="green"), r["role"] or "", r["target"], r["args"])
    return table


# ---------------------------------------------------------------- plan


def towers_table(towers: list[Record], title: str = "towers") -> Table:
    """One row per tower: host, features, tables, lookup cost and memory."""
    table = _table(title, ["tower", "host", "features", "tables", "lookup cost (B/sample)", "memory"],
                   right=("tower", "host"), left_title=True)
    for t in towers:
        leaves = [name.rpartition(".")[2] for name in t["tables"]]
        counts = Counter(leaves)  # counted once: list.count per table is quadratic at 10,000 tables
        # a leaf name shared by two tables (weight_q of two QR bags) would be ambiguous
        tables = [leaf if counts[leaf] == 1 else name for leaf, name in zip(leaves, t["tables"])]
        table.add_row(str(t["tower"]), str(t["host"]), elided(t["features"]), elided(tables),
                      f"{t['lookup_cost']:g}", human_bytes(t["memory_bytes"]))
    return table


def elided(names: list[str], limit: int = ELIDE_AFTER) -> str:
    """All names when few; else the count, the first and the last few (JSON keeps them all)."""
    if len(names) <= limit:
        return ", ".join(names)
    head, tail = names[:ELIDE_HEAD], names[-ELIDE_TAIL:]
    return f"{len(names)}: {', '.join(head)}, … {len(names) - len(head) - len(tail)} more …, {', '.join(tail)}"


def composites_table(composites: list[Record]) -> Table:
    """Embeddings made of several tables (quotient-remainder pairs), each kept in one tower."""
    table = _table("composite embeddings (tables of one feature, one tower)", ["module", "tables", "tower"],
                   right=("tower",), left_title=True)
    for c in composites:
        table.add_row(c["module"], " + ".join(c["tables"]), str(c["tower"]))
    return table


def joint_table(joint: list[Record]) -> Table:
    """Joint tables split by field: each field's row range of the one weight, and its tower."""
    table = _table("joint tables split by field (one weight, one row range per field)",
                   ["table", "field", "feature", "rows", "tower", "host"], right=("field", "tower", "host"),
                   left_title=True)
    for j in joint:
        for f in j["fields"]:
            table.add_row(j["table"], str(f["field"]), f["feature"], f"{f['rows'][0]}..{f['rows'][1] - 1}",
                          str(f["tower"]), str(f["host"]))
    return table


def sequences_table(sequences: list[Record]) -> Table:
    """Sequence (unpooled) features: one row back per id, their mean length on the example batch."""
    table = _table("sequence features (unpooled: one row per id)", ["feature", "table", "dim", "mean length", "tower"],
                   right=("dim", "mean length", "tower"), left_title=True)
    verdicts = any("reduction" in s for s in sequences)
    if verdicts:  # the model's own reduction: can a sequence tower module (seq_mean, ...) take its place?
        table.add_column("model's reduction")
    for s in sequences:
        row = [s["feature"], s["table"], str(s["dim"]), f"{s['mean_length']:.2f}", str(s["tower"])]
        table.add_row(*row, *([s.get("reduction", {}).get("verdict", "")] if verdicts else []))
    return table


def warnings_text(warnings: list[str]) -> Text:
    """The plan's warnings (what the analysis could not do, and why), one per line."""
    return Text("\n".join(f"WARNING: {w}" for w in warnings), style="bold yellow")


def plan_extras(data: Record) -> list[Any]:
    """What `dmt-fx plan` shows after the towers, when the model has it: composite embeddings
    (quotient-remainder pairs), joint tables split by field, sequence features, warnings."""
    extras: list[Any] = []
    if data.get("composites"):
        extras.append(composites_table(data["composites"]))
    if data.get("joint_tables"):
        extras.append(joint_table(data["joint_tables"]))
    if data.get("sequences"):
        extras.append(sequences_table(data["sequences"]))
    if data.get("warnings"):
        extras.append(warnings_text(data["warnings"]))
    return extras


def collectives_table(collectives: list[Record], batch_size: int) -> Table:
    """The plan's exchanges with their estimated bytes per step."""
    table = _table(f"collectives (estimated bytes per step per rank, local batch {batch_size})",
                   ["node", "kind", "tower", "group", "direction", "bytes/step"], left_title=True)
    for c in collectives:
        table.add_row(c["name"], c["kind"], str(c["tower"]), c["group"], c["direction"],
                      human_bytes(c["bytes_per_step"]))
    return table


# ---------------------------------------------------------------- run, demo and the benchmarks


def results_table(rows: list[Record], title: str, best: str | None = None) -> Table:
    """`dmt-fx run` / `demo`: one row per variant, from `dmt_fx.jobs.summary.summarize`."""
    columns = ["variant", "loss first -> last", "cross-host bytes/step", "cross-host msgs/step",
               "intra-host bytes/step", "step time (median)", "IQR"]
    table = _table(title, columns, right=tuple(columns[1:]))
    for r in rows:
        name = r["variant"] + (" (best flat)" if r["variant"] == best else "")
        table.add_row(name, f"{r['first_loss']:.4f} -> {r['final_loss']:.4f}",
                      human_bytes(r["cross_host_id_bytes"] + r["cross_host_embedding_bytes"]),
                      f"{r['cross_host_messages']:.0f}", human_bytes(r["intra_host_bytes"]),
                      _ms(r["step_time_median_s"]), _ms(r["step_time_iqr_s"]))
    return table


def traffic_table(records: list[Record], title: str) -> Table:
    """`dmt-fx bench traffic`: one section per topology, one row per variant."""
    columns = ["topology", "variant", "cross-host id B", "cross-host emb B", "cross-host msgs",
               "intra-host B", "intra-host msgs", "step (median)"]
    table = _table(title, columns, right=tuple(columns[2:]))
    last = None
    for r in records:
        if last is not None and r["topology"] != last:
            table.add_section()
        last = r["topology"]
        table.add_row(r["topology"], r["variant"], human_bytes(r["cross_host_id_bytes"]),
                      human_bytes(r["cross_host_embedding_bytes"]), f"{r['cross_host_messages']:.1f}",
                      human_bytes(r["intra_host_bytes"]), f"{r['intra_host_messages']:.1f}",
                      _ms(r["step_time_median_s"]))
    return table


def emulated_table(records: list[Record], title: str) -> Table:
    """`dmt-fx bench emulated`: step times against the best flat plan, cross-host traffic."""
    columns = ["variant", "median", "IQR", "best flat / variant", "x-host emb B", "x-host msgs"]
    table = _table(title, columns, right=tuple(columns[1:]))
    for r in records:
        speedup = r.get("speedup_vs_best_flat")
        table.add_row(r["variant"] + (" (best flat)" if r.get("is_best_flat") else ""),
                      _ms(r["step_time_median_s"]), _ms(r["step_time_iqr_s"]),
                      "n/a" if speedup is None else f"{speedup:.2f}x",
                      human_bytes(r["cross_host_embedding_bytes"]), f"{r['cross_host_messages']:.0f}")
    return table


CPU_BOUND = 0.6  # the best flat plan's ranks keep at least this share of the cores busy


def cpu_bound_note(records: list[Record]) -> str | None:
    """One line when the job kept the machine's cores busy (`cpu_busy_share` of the best flat
    plan, `dmt_fx.bench.breakdown_plot.add_cpu_bound`): there a speedup measures CPU per
    step more than the network, and the line sets each DMT row's CPU ratio beside its ideal
    from bytes. None when the records lack the fields or the cores were not that busy."""
    best = next((r for r in records if r.get("is_best_flat")), None)
    share = best and best.get("cpu_busy_share")
    if not share or share < CPU_BOUND:
        return None
    dmt = [r for r in records if str(r.get("variant", "")).startswith("dmt")
           and r.get("cpu_speedup_vs_best_flat") and r.get("ideal_speedup_vs_best_flat")]
    ratios = "; ".join(f"{r.get('label', r['variant'])} {r['cpu_speedup_vs_best_flat']:.2f}x by CPU, "
                       f"{r['ideal_speedup_vs_best_flat']:.2f}x by bytes" for r in dmt)
    return (f"CPU-bound: the {best['ranks']} ranks of {best.get('label', best['variant'])} kept "
            f"{share:.0%} of {best['machine_cores']} cores busy, so measured speedups here follow CPU per step "
            f"more than the network" + (f" ({ratios})" if ratios else "") +
            "; on hardware with a core per rank the bytes weigh more")
