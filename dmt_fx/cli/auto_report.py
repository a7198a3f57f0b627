"""The explanation of a plan chosen by `--auto` (plan="auto"): every candidate, the winner, why.

Rendered from the JSON-able record `AutoPlan.to_dict()` (what `dmt-fx plan --auto --format
json` prints under "auto"), so a test can render a hand-made record.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from dmt_fx.cli.tables import human_bytes

Record = dict[str, Any]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def candidates_table(auto: Record) -> Table:
    """One row per candidate: towers (k per host), c, shardings, predicted step, kept affinity, memory, status."""
    table = Table(title="plan=auto: candidates (predicted per step, busiest rank)", title_justify="left")
    for name in ("#", "towers", "c", "tower module", "sharding per tower", "step", "vs chosen",
                 "kept affinity", "tables / rank", "x-host / rank", "status"):
        table.add_column(name, justify="right" if name in ("#", "towers", "c", "step", "vs chosen",
                                                           "kept affinity", "tables / rank", "x-host / rank")
                         else "left")
    best = auto["candidates"][auto["winner"]]["step_s"]
    for i, c in enumerate(auto["candidates"]):
        kept = "n/a" if c["kept_affinity"] is None else f"{c['kept_affinity']:.3f}"
        status = "[bold green]chosen[/]" if i == auto["winner"] else (f"[red]{c['refused']}[/]" if c["refused"]
                                                                        else "")
        k = c.get("towers_per_domain", 1)  # records written before k candidates have none
        towers = f"{c['towers']} ({k}/host)" if k > 1 else str(c["towers"])
        table.add_row(str(i), towers, str(c["compression"]), c["tower_module"], ", ".join(c["shardings"]),
                      _us(c["step_s"]), f"{c['step_s'] / best:.3f}x" if best else "-", kept,
                      human_bytes(c["memory_per_rank"]), human_bytes(c["cross_bytes"]), status)
    return table


def render_auto(out: Console, auto: Record) -> None:
    """The candidates, the reason, the notes and how to run the choice."""
    out.print(candidates_table(auto))
    out.print(f"[bold]chosen[/]: {auto['why']}")
    budget, memory = auto["quality_budget"], auto["memory_per_rank"]
    out.print(f"quality budget {budget:g} (share of pairwise affinity kept inside towers; binds c > 1 only), "
              f"memory per rank {'unlimited' if memory is None else f'{memory:,} B'}, "
              f"local batch {auto['batch_size']}")
    for note in auto["notes"]:
        out.print(f"note: {note}")
    hosts = auto.get("tower_hosts") or list(range(len(auto["shardings"])))
    per_host = {h: s for h, s in zip(hosts, auto["shardings"])}
    said = (f"every host {per_host[0]}" if len(set(per_host.values())) == 1
            else ", ".join(f"host {h} {s}" for h, s in sorted(per_host.items())))
    out.print(f"run it: distribute(gm): the plan carries each host's sharding ({said})")
