"""Renderers shared by the CLI verbs: rich tables built from plain records."""

from __future__ import annotations

import difflib
from itertools import zip_longest

from rich.table import Table
from rich.text import Text

from dmt_fx.cli.report import human_bytes

STYLE = {"inserted": "green", "removed": "red strike", "kept": ""}


def side_by_side(original: list[dict], rewritten: list[dict]) -> Table:
    table = Table(title="original | rewritten", title_justify="left")
    for header in ("original", "rewritten", "tower / role"):
        table.add_column(header, overflow="fold")
    # Align on node names so kept nodes sit side by side between the changes.
    matcher = difflib.SequenceMatcher(a=[r["name"] for r in original], b=[r["name"] for r in rewritten],
                                      autojunk=False)
    for _, a0, a1, b0, b1 in matcher.get_opcodes():
        for left, right in zip_longest(original[a0:a1], rewritten[b0:b1]):
            table.add_row(_name(left), _name(right), _role(right))
    return table


def _name(row: dict | None) -> Text:
    return Text("") if row is None else Text(row["name"], style=STYLE[row["status"]])


def _role(row: dict | None) -> Text:
    if row is None or row["role"] is None:
        return Text("")
    tower = "" if row["tower"] is None else f"tower {row['tower']}: "
    return Text(f"{tower}{row['role']}", style=STYLE[row["status"]])




def traffic_table(records: list[dict], title: str):
    table = Table(title=title)
    for column in ("topology", "variant", "cross-host id B", "cross-host emb B", "cross-host msgs",
                   "intra-host B", "intra-host msgs", "step (median)"):
        table.add_column(column, justify="left" if column in ("topology", "variant") else "right")
    last = None
    for r in records:
        if last is not None and r["topology"] != last:
            table.add_section()
        last = r["topology"]
        table.add_row(r["topology"], r["variant"], human_bytes(r["cross_host_id_bytes"]),
                      human_bytes(r["cross_host_embedding_bytes"]), f"{r['cross_host_messages']:.1f}",
                      human_bytes(r["intra_host_bytes"]), f"{r['intra_host_messages']:.1f}",
                      f"{r['step_time_median_s'] * 1000:.1f} ms")
    return table
