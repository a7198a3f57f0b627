"""An alpha-beta cost model of a training step, per link tier (a MODEL, not a measurement).

    t_step = t_compute
             + alpha_intra * intra_host_messages + intra_host_bytes / beta_intra
             + alpha_inter * cross_host_messages + cross_host_bytes / beta_inter
             [+ dense all-reduce term, optional]

per rank per step, where the messages and bytes are what ONE rank sends in one step
(forward and backward), as `dmt-fx bench traffic` measures them (TrafficMeter) or as
`analytic_traffic` derives them from the formulas of DMT.md and the one byte model
(`dmt_fx.bench.bytes`). The link tiers come from measurements (the probe's latency mode,
fitted by `dmt_fx.bench.cost_fit`) (`tiers_from`) or from a
`Topology`, whose four link fields (intra/inter bandwidth in GB/s, latency in us) are the
links the prediction is for (`tiers_of`; `predict` and `breakdown` take either).

Assumptions, stated once:

* No overlap: collectives of a step run one after the other and never overlap compute
  or each other (so the model is pessimistic for pipelined/overlapped runtimes).
* Every message pays the tier's latency alpha once (serially), so an all-to-all over N
  ranks costs (N - 1) alphas (`alpha_per="message"`, the default: pessimistic for
  runtimes that post a collective's messages concurrently; `alpha_per="collective"` is
  the optimistic bound, one alpha per collective that touches the tier, from
  record["cross_host_collectives"] / record["intra_host_collectives"]); a rank's bytes on a tier go through one link of bandwidth
  beta (per-GPU NIC share for cross-host, per-GPU NVLink share intra-host).
* Ranks are symmetric: the step time is the per-rank mean traffic's time (skew ignored).
* t_compute is measured (single-process step of the model at the local batch,
  `measure_compute`) or given; it is the same on every rank.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Mapping, Union

from dmt_fx.bench import bytes as wire
from dmt_fx.bench.variants import DMT, parse
from dmt_fx.compiler.auto_plan.steptime import Tier, Tiers, tiers_of
from dmt_fx.ir.topology import Topology
from dmt_fx.runtime.qcomms import wire_bytes

__all__ = ["Tier", "Tiers", "predict", "breakdown", "analytic_traffic", "measure_compute", "tiers_from", "tiers_of"]


# Tier, Tiers and tiers_of live with the compiler's step-time arithmetic (plan="auto" ranks
# candidates with them; the compiler may not import dmt_fx.bench) and are re-exported here.
Links = Union[Tiers, Topology]


def _cross_bytes(record: Mapping[str, Any]) -> float:
    if "cross_host_id_bytes" in record or "cross_host_embedding_bytes" in record:
        return float(record.get("cross_host_id_bytes", 0.0)) + float(record.get("cross_host_embedding_bytes", 0.0))
    return float(record.get("cross_host_bytes", 0.0))


def breakdown(record: Mapping[str, Any], links: Links, t_compute_s: float | None = None, *,
              include_dense: bool = False, alpha_per: str = "message") -> dict[str, float]:
    """The terms of `predict`, in seconds: compute, intra_alpha, intra_beta, inter_alpha,
    inter_beta, dense, total. `links`: Tiers, or a Topology whose link fields give them.
    `t_compute_s` defaults to record["t_compute_s"] (else 0).

    include_dense: add DDP's dense gradient all-reduce as a ring, from the measured
    record["dense_allreduce_bytes"] (bytes one rank sends; else the older
    record["dense_allreduce_bytes_estimate"]) and record["dense_allreduce_messages"]
    (ring steps; default 2 (N - 1) with N = record["ranks"]): the ring runs at the speed
    of its slowest hop, the inter-host one when there are hosts >= 2 (record["hosts"],
    else parsed from record["topology"])."""
    tiers = tiers_of(links)
    compute = float(t_compute_s if t_compute_s is not None else record.get("t_compute_s", 0.0))
    if alpha_per not in ("message", "collective"):
        raise ValueError(f"alpha_per={alpha_per!r}: 'message' or 'collective'")
    unit = "messages" if alpha_per == "message" else "collectives"
    out = {"compute": compute,
           "intra_alpha": tiers.intra.alpha_s * float(record.get(f"intra_host_{unit}", 0.0)),
           "intra_beta": float(record.get("intra_host_bytes", 0.0)) / tiers.intra.beta_Bps,
           "inter_alpha": tiers.inter.alpha_s * float(record.get(f"cross_host_{unit}", 0.0)),
           "inter_beta": _cross_bytes(record) / tiers.inter.beta_Bps,
           "dense": 0.0}
    if include_dense:
        nbytes = float(record.get("dense_allreduce_bytes", record.get("dense_allreduce_bytes_estimate", 0.0)))
        hosts, ranks = _shape(record)
        messages = float(record.get("dense_allreduce_messages", 2 * (ranks - 1)))
        tier = tiers.inter if hosts > 1 else tiers.intra
        out["dense"] = tier.time(messages, nbytes)
    out["total"] = sum(out.values())
    return out


def predict(record: Mapping[str, Any], links: Links, t_compute_s: float | None = None, *,
            include_dense: bool = False, alpha_per: str = "message") -> float:
    """Predicted step time in seconds (see the module doc for the model and assumptions)."""
    return breakdown(record, links, t_compute_s, include_dense=include_dense, alpha_per=alpha_per)["total"]


def _shape(record: Mapping[str, Any]) -> tuple[int, int]:
    if "hosts" in record and "ranks" in record:
        return int(record["hosts"]), int(record["ranks"])
    h, l = (int(x) for x in str(record.get("topology", "1x1")).lower().split("x"))
    return h, h * l


# ---------------------------------------------------------------- analytic traffic (DMT.md)


def analytic_traffic(variant: str, hosts: int, ranks_per_host: int, *, batch: int, width: int,
                     features: int, ids_per_feature: float = 1.0, elem_bytes: int = wire.EMBEDDING_BYTES,
                     id_bytes: int = wire.ID_BYTES, length_bytes: int = wire.LENGTH_BYTES,
                     id_collectives: int = wire.ID_COLLECTIVES, compression: int = 1,
                     handshake: bool = True, peer_id_collectives: int = wire.PEER_ID_COLLECTIVES,
                     intra_width: int | None = None) -> dict[str, float]:
    """Traffic ONE rank sends per step (forward + backward), from the formulas of DMT.md
    and the byte model of `dmt_fx.bench.bytes` (the widths default to it).

    batch B = local batch, width D = total pooled width (elements), features F, ids per
    feature k; the tables are spread evenly (each rank/tower owns an equal share of D and F).
    Ids: a rank's KJT is B F lengths and B F k ids; the id exchange is `id_collectives`
    collectives (TorchRec: handshake, lengths, values), and `handshake` adds the split sizes
    each KJT all-to-all sends to every destination. DMT's ids cross hosts in its own peer
    exchange instead: `peer_id_collectives` collectives (lengths, values), no handshake;
    inside the host they still go through TorchRec's KJT all-to-all. Embeddings: one forward
    all-to-all of pooled outputs and one backward all-to-all of their gradients, same bytes.

    variants:
    * "flat-table_wise": all-to-all over N = H L ranks: a fraction (H-1)/H of a rank's
      B D bytes crosses hosts, (L-1)/N stays inside; N-1 messages per collective
      ((H-1) L cross-host, L-1 intra-host).
    * "dmt-identity" / "dmt-c<c>" (or compression=c): peer all-to-all over the H ranks
      with the same local rank: ids and pooled outputs cross hosts once, H-1 messages
      per collective; the tower lookup inside the host is an all-to-all over L ranks on
      H B samples of 1/H of the features: B F (L-1)/L ids and B D (L-1)/L embedding
      elements per direction, L-1 messages per collective. A tower module of compression
      c divides the cross-host embedding bytes by c (the intra-host lookup is unchanged).
    * NAME+fp16 / NAME+bf16 (qcomms, `dmt_fx.runtime.qcomms`): the pooled embeddings travel
      in 2 bytes per element both ways (`elem_bytes` is then the fp32 width): flat's whole
      all-to-all, DMT's peer exchange (its intra-host lookup stays fp32).

    intra_width: DMT's pooled width inside the host when it differs from `width`: tables
    whose dim is not a multiple of 4 are sharded at the padded width and cut back before the
    peer exchange (`dmt_fx.ir.widths.wire_widths(dims)` gives both widths). Flat TorchRec
    plans run only aligned widths, so for them `width` is the one width.
    """
    typed = parse(variant)
    if typed.family == DMT and typed.kind == "linear":
        compression = typed.compression
    scale = sum(wire_bytes(typed.precision)) / (2 * wire.EMBEDDING_BYTES)  # both directions, vs fp32
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
    if typed.base == "flat-table_wise":
        return {"cross_host_id_bytes": ids * (H - 1) / H + split * (N - L),
                "cross_host_embedding_bytes": 2 * emb * scale * (H - 1) / H,
                "cross_host_messages": colls * (N - L),
                "intra_host_bytes": (ids + 2 * emb * scale) * (L - 1) / N + split * (L - 1), **counts}
    if typed.family == DMT:
        peer_colls = peer_id_collectives + 2  # the lean peer exchange: no split handshake
        return {"cross_host_id_bytes": ids * (H - 1) / H,
                "cross_host_embedding_bytes": 2 * emb * scale * (H - 1) / H / compression,
                "cross_host_messages": peer_colls * (H - 1),
                "intra_host_bytes": (ids + 2 * intra_emb) * (L - 1) / L + split * (L - 1),
                **counts, "cross_host_collectives": peer_colls if H > 1 else 0}
    raise ValueError(f"no analytic traffic for variant {variant!r} (flat-table_wise, dmt-identity, dmt-c<c>, "
                     "each [+fp16|+bf16])")


# ---------------------------------------------------------------- measured compute


def measure_compute(model, inputs: tuple, labels, *, steps: int = 20, warmup: int = 3, lr: float = 0.05) -> float:
    """Median seconds of one single-process training step (forward, BCE loss, backward, SGD)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = model(*inputs)
        loss = F.binary_cross_entropy_with_logits(out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- tiers from measurements

_INTRA_BETA = ("intra_host_bandwidth_bytes_per_s", "intra_host_Bps", "intra_Bps", "intra_bytes_per_s", "intra_bandwidth_Bps", "intra_beta_Bps")
_INTRA_ALPHA = ("intra_host_alpha_s", "intra_alpha_s", "intra_latency_s")
_INTER_BETA = ("inter_host_rate_bytes_per_s", "inter_host_rate_bytes_per_s_per_rank", "inter_host_Bps", "inter_Bps", "cross_host_Bps", "inter_bytes_per_s", "inter_bandwidth_Bps",
               "inter_beta_Bps", "cross_host_bytes_per_s")
_INTER_ALPHA = ("inter_host_alpha_s", "inter_alpha_s", "cross_host_alpha_s", "inter_latency_s",
                "cross_host_latency_s")


def tiers_from(*sources: Mapping[str, Any]) -> Tiers | None:
    """Tiers from measured rates in the first source that has them: either
    {"tiers": {"intra": {"alpha_s", "beta_Bps"}, "inter": {...}}} or flat keys such as
    intra_host_Bps / intra_alpha_s and inter_host_Bps / inter_alpha_s (alpha defaults to 0
    when only bandwidths are given). None if no source has both bandwidths."""
    for src in sources:
        if not isinstance(src, Mapping):
            continue
        if isinstance(src.get("network"), Mapping):  # dmt_fx.bench.emulated's report: rates under "network"
            found = tiers_from(src["network"])
            if found is not None:
                return found
        nested = src.get("tiers")
        if isinstance(nested, Mapping) and "intra" in nested and "inter" in nested:
            return Tiers(Tier(float(nested["intra"].get("alpha_s", 0.0)), float(nested["intra"]["beta_Bps"])),
                         Tier(float(nested["inter"].get("alpha_s", 0.0)), float(nested["inter"]["beta_Bps"])))

        def first(keys, src=src):
            return next((float(src[k]) for k in keys if src.get(k) is not None), None)
        intra_b, inter_b = first(_INTRA_BETA), first(_INTER_BETA)
        if intra_b and inter_b and not math.isinf(intra_b + inter_b):
            return Tiers(Tier(first(_INTRA_ALPHA) or 0.0, intra_b), Tier(first(_INTER_ALPHA) or 0.0, inter_b))
    return None
