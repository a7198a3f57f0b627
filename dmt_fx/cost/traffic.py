"""Traffic per rank and step from the formulas of DMT.md and the one byte model (`dmt_fx.cost.wire`).

`analytic_traffic`: what ONE rank sends per step (forward + backward) for flat table-wise or
DMT, as the traffic meter measures it (the record `dmt_fx.cost.steptime.breakdown` times).
`scale_traffic` / `scale_load`: the same per tier and group size for the layouts the
extrapolation on a measured latency model compares (flat table-wise, grid, 2D, DMT).
Layouts are named here without parsing variant names: `dmt_fx.bench.cost_model` maps a
variant (`dmt-c4+fp16`) onto them.
"""

from __future__ import annotations

from typing import Any, Mapping

from dmt_fx.cost import wire
from dmt_fx.cost.links import TierLoad
from dmt_fx.cost.steptime import StepLoad

__all__ = ["FLAT_TABLE_WISE", "DMT", "SCALE_LAYOUTS", "analytic_traffic", "scale_load", "scale_traffic"]

FLAT_TABLE_WISE, DMT = "flat-table_wise", "dmt"
SCALE_LAYOUTS = ("flat-table_wise", "flat-grid_shard", "torchrec-2d", "dmt")


def analytic_traffic(layout: str, hosts: int, ranks_per_host: int, *, batch: int, width: int,
                     features: int, ids_per_feature: float = 1.0, elem_bytes: int = wire.EMBEDDING_BYTES,
                     id_bytes: int = wire.ID_BYTES, length_bytes: int = wire.LENGTH_BYTES,
                     id_collectives: int = wire.ID_COLLECTIVES, compression: int = 1, precision: str = "fp32",
                     handshake: bool = True, peer_id_collectives: int | None = None,
                     intra_width: int | None = None, narrow_peer_ids: bool = True) -> dict[str, float]:
    """Traffic ONE rank sends per step (forward + backward), `layout` "flat-table_wise" or "dmt".

    batch B = local batch, width D = total pooled width (elements), features F, ids per
    feature k; the tables are spread evenly (each rank/tower owns an equal share of D and F).
    Ids: a rank's KJT is B F lengths and B F k ids; the id exchange is `id_collectives`
    collectives (TorchRec: handshake, lengths, values), and `handshake` adds the split sizes
    each KJT all-to-all sends to every destination. DMT's ids cross hosts in its own peer
    exchange instead, no handshake: int32 lengths and ids in one all-to-all
    (`narrow_peer_ids`; False: the KJT's own `length_bytes` / `id_bytes` in two, as a model
    transformed with validate_inputs=False sends them; `peer_id_collectives` overrides the
    count, `wire.peer_id_collectives` by default); inside the host they still
    go through TorchRec's KJT all-to-all. Embeddings: one forward
    all-to-all of pooled outputs and one backward all-to-all of their gradients, same bytes.

    * flat table-wise: all-to-all over N = H L ranks: a fraction (H-1)/H of a rank's
      B D bytes crosses hosts, (L-1)/N stays inside; N-1 messages per collective
      ((H-1) L cross-host, L-1 intra-host).
    * dmt, tower modules of `compression` c: peer all-to-all over the H ranks with the same
      local rank: ids and pooled outputs cross hosts once, H-1 messages per collective; the
      tower lookup inside the host is an all-to-all over L ranks on H B samples of 1/H of the
      features: B F (L-1)/L ids and B D (L-1)/L embedding elements per direction, L-1
      messages per collective. c divides the cross-host embedding bytes (the intra-host
      lookup is unchanged).
    * precision (qcomms, `wire.PRECISION_BYTES`): the pooled embeddings travel in its bytes
      both ways (`elem_bytes` is then the fp32 width): flat's whole all-to-all, DMT's peer
      exchange (its intra-host lookup stays fp32).

    intra_width: DMT's pooled width inside the host when it differs from `width`: tables
    whose dim is not a multiple of 4 are sharded at the padded width and cut back before the
    peer exchange (`dmt_fx.ir.widths.wire_widths(dims)` gives both widths). Flat TorchRec
    plans run only aligned widths, so for them `width` is the one width.
    """
    scale = wire.precision_scale(precision)  # both directions, vs fp32
    H, L = hosts, ranks_per_host
    N = H * L
    ids = wire.kjt_bytes(batch, features, batch * features * ids_per_feature, length_bytes=length_bytes,
                         id_bytes=id_bytes)
    emb = wire.pooled_bytes(batch, width, elem_bytes=elem_bytes)
    intra_emb = emb if intra_width is None else wire.pooled_bytes(batch, intra_width, elem_bytes=elem_bytes)
    split = wire.handshake_bytes() if handshake else 0  # per destination of each KJT all-to-all
    colls = id_collectives + 2  # id exchange + forward + backward embedding all-to-alls
    counts = {"intra_host_messages": colls * (L - 1),
              "cross_host_collectives": colls if H > 1 else 0, "intra_host_collectives": colls if L > 1 else 0}
    if layout == FLAT_TABLE_WISE:
        return {"cross_host_id_bytes": ids * (H - 1) / H + split * (N - L),
                "cross_host_embedding_bytes": 2 * emb * scale * (H - 1) / H,
                "cross_host_messages": colls * (N - L),
                "intra_host_bytes": (ids + 2 * emb * scale) * (L - 1) / N + split * (L - 1), **counts}
    if layout == DMT:
        if peer_id_collectives is None:
            peer_id_collectives = wire.peer_id_collectives(announced=narrow_peer_ids)
        peer_colls = peer_id_collectives + 2  # the lean peer exchange: no split handshake
        peer_ids = wire.peer_id_bytes(batch, features, batch * features * ids_per_feature) if narrow_peer_ids else ids
        return {"cross_host_id_bytes": peer_ids * (H - 1) / H,
                "cross_host_embedding_bytes": 2 * emb * scale * (H - 1) / H / compression,
                "cross_host_messages": peer_colls * (H - 1),
                "intra_host_bytes": (ids + 2 * intra_emb) * (L - 1) / L + split * (L - 1),
                **counts, "cross_host_collectives": peer_colls if H > 1 else 0}
    raise ValueError(f"no analytic traffic for layout {layout!r} ({FLAT_TABLE_WISE!r} or {DMT!r})")


def scale_traffic(layout: str, H: int, L: int, m: Mapping[str, Any], sync_every: float = 1,
                  compression: int = 1) -> list[tuple[str, int, float, float]]:
    """(tier, group size, collectives, bytes) per rank per step for one layout at H x L, model
    `m` (local_batch, features, dim, ids_per_feature, rows). flat-grid_shard: TorchRec's grid
    sharding, table-row-wise per column shard (ids over N, pooled outputs reduce-scattered
    inside the host, then all-to-all over the H peers); torchrec-2d: DMPCollection, table-wise
    over a sharding group of H peers, its weight sync an all-reduce over the L ranks of a host
    every `sync_every` steps (weights + row-wise Adagrad state)."""
    N, B, D = H * L, m["local_batch"], m["features"] * m["dim"]
    ids = wire.kjt_bytes(B, m["features"], B * m["features"] * m["ids_per_feature"])
    emb = wire.pooled_bytes(B, D)
    idc, pc = wire.ID_COLLECTIVES, wire.PEER_ID_COLLECTIVES
    if layout == FLAT_TABLE_WISE:
        return [("inter", N, idc + 2, ids * (H - 1) / H + 2 * emb * (H - 1) / H),
                ("intra", L, 0, (ids + 2 * emb) * (L - 1) / N)]
    if layout == "flat-grid_shard":
        return [("inter", N, idc, ids * (H - 1) / H), ("inter", H, 2, 2 * emb * (H - 1) / H),
                ("intra", L, 2, 2 * emb * (L - 1))]
    if layout == "torchrec-2d":
        shard = m["features"] * m["rows"] * (m["dim"] + 1) * wire.EMBEDDING_BYTES / H  # weights + row-wise state
        return [("inter", H, idc + 2, (ids + 2 * emb) * (H - 1) / H),
                ("intra", L, 1 / sync_every, 2 * shard * (L - 1) / L / sync_every)]
    if layout == DMT:
        peer_ids = wire.peer_id_bytes(B, m["features"], B * m["features"] * m["ids_per_feature"])
        return [("inter", H, pc + 2, peer_ids * (H - 1) / H + 2 * emb * (H - 1) / H / compression),
                ("intra", L, idc + 2, (ids + 2 * emb) * (L - 1) / L)]
    raise ValueError(f"no scale traffic for layout {layout!r} (one of {SCALE_LAYOUTS})")


def scale_load(parts: list[tuple[str, int, float, float]], t_compute_s: float) -> StepLoad:
    """`scale_traffic`'s parts as a StepLoad: a collective over n ranks sends n - 1 messages."""
    def tier(name: str) -> TierLoad:
        mine = [(n, colls, nbytes) for t, n, colls, nbytes in parts if t == name]
        return TierLoad(sum(colls * (n - 1) for n, colls, _ in mine), sum(b for *_, b in mine),
                        sum(colls for _, colls, _ in mine))
    return StepLoad(t_compute_s, intra=tier("intra"), cross=tier("inter"))
