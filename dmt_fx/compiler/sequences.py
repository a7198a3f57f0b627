"""Sequence (unpooled) features: which lookups return one row per id, and their mean lengths.

A torchrec `EmbeddingCollection` is unpooled by construction (the analysis marks its
features). An `nn.Embedding` is unpooled when it reads more than one id per sample ([B, L]
ids, L > 1: a [B, L, D] output); the symbolic capture keeps no shapes, so the example batch
decides: `transform` measures ids per sample of every lookup (its pooling factor), and a
plain `nn.Embedding` lookup measured above 1 is marked a sequence here. `distribute` runs
sequence features on TorchRec's sharded EmbeddingCollection (`dmt_fx.runtime.sequence`),
and `dmt-fx plan` shows them with their mean lengths.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from dmt_fx.ir.sites import TORCHREC_KINDS, ModelSites


def pooling_by_feature(sites: ModelSites, stats: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """Ids per sample of each feature (its pooling factor; a sequence's mean length)."""
    site_of = {s.node: s for s in sites.sites}
    pooling = {}
    for f in sites.features:
        site = site_of[f.site]
        if site.kind in TORCHREC_KINDS:
            key = (site.module, f.key)
        else:
            key = (site.module, f.name.rpartition("@")[2] if "@" in f.name else "0")
        # a field of a joint table: one id per sample (its column), not the table's F per sample
        pooling[f.name] = 1.0 if f.field >= 0 else stats.get(key, 1.0)
    return pooling


def with_sequences(sites: ModelSites, pooling: Mapping[str, float]) -> ModelSites:
    """`sites` with every unpooled feature marked (`Feature.sequence`) and its mean length."""
    kind = {s.node: s.kind for s in sites.sites}

    def marked(f):
        plain_sequence = kind[f.site] == "embedding" and f.field < 0 and pooling.get(f.name, 1.0) > 1.0
        if not (f.sequence or plain_sequence):
            return f
        return dataclasses.replace(f, sequence=True, mean_length=float(pooling.get(f.name, 0.0)))

    features = tuple(marked(f) for f in sites.features)
    if features == sites.features:
        return sites
    return dataclasses.replace(sites, features=features)
