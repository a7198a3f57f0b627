"""The one collection slicer: an EmbeddingBagCollection over some tables of others.

Used by the SPTT pass (a tower's slice of a collection), the runtime (a host's tables of
several towers) and the baselines (a tower of TorchRec's EmbeddingTowerCollection). The
slice shares the original table modules (no copy, no allocation): it is filled with the
original's fields, because constructing it from configs would allocate and initialise
tables only to throw them away (the private fields it fills: dmt_fx/_compat/torchrec.py).
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Sequence

import torch.nn as nn
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingCollection,
    get_embedding_names_by_table,
)

from dmt_fx._compat import collection_device, ebc_embedding_names, set_ebc_fields, set_ec_fields


def sub_collection(ebcs: Sequence[EmbeddingBagCollection], tables: Collection[str] | None = None,
                   ) -> EmbeddingBagCollection:
    """One collection over the tables of `ebcs` named in `tables` (all when None), in order.

    Keeps the original output names: torchrec renames a key read by several tables, and a
    KJT key may be read by tables of different towers."""
    if tables is not None and not isinstance(tables, (set, frozenset, dict)):
        tables = set(tables)  # membership per config: a list would make the slice quadratic
    chosen = [(ebc, c) for ebc in ebcs for c in ebc.embedding_bag_configs() if tables is None or c.name in tables]
    weighted = ebcs[0].is_weighted() if ebcs else False
    device = collection_device(ebcs[0]) if ebcs else None
    out = EmbeddingBagCollection([], is_weighted=weighted, device=device)
    out.embedding_bags = nn.ModuleDict({c.name: ebc.embedding_bags[c.name] for ebc, c in chosen})
    names = {id(ebc): _names_by_table(ebc) for ebc in ebcs}  # once per collection, not per table
    set_ebc_fields(out, [dataclasses.replace(c) for _, c in chosen], [list(c.feature_names) for _, c in chosen],
                   [c.embedding_dim for _, c in chosen for _ in c.feature_names],
                   [n for ebc, c in chosen for n in names[id(ebc)][c.name]])
    return out


def _names_by_table(ebc: EmbeddingBagCollection) -> dict[str, list[str]]:
    """Output names per table, as the collection itself names them."""
    configs = ebc.embedding_bag_configs()
    if len(ebc_embedding_names(ebc)) == sum(len(c.feature_names) for c in configs):
        names, out, start = ebc_embedding_names(ebc), {}, 0
        for c in configs:  # a slice keeps its parent's names: read them, do not recompute
            out[c.name] = names[start:start + len(c.feature_names)]
            start += len(c.feature_names)
        return out
    return dict(zip((c.name for c in configs), get_embedding_names_by_table(configs)))


def sub_sequence_collection(ecs: Sequence[EmbeddingCollection], tables: Collection[str] | None = None,
                            ) -> EmbeddingCollection:
    """`sub_collection` for torchrec EmbeddingCollections (unpooled): one over the tables of
    `ecs` named in `tables` (all when None), sharing the original table modules."""
    if tables is not None and not isinstance(tables, (set, frozenset, dict)):
        tables = set(tables)
    chosen = [(ec, i, c) for ec in ecs for i, c in enumerate(ec.embedding_configs())
              if tables is None or c.name in tables]
    out = EmbeddingCollection([], device=collection_device(ecs[0]) if ecs else None,
                              need_indices=ecs[0].need_indices() if ecs else False)
    out.embeddings = nn.ModuleDict({c.name: ec.embeddings[c.name] for ec, _, c in chosen})
    set_ec_fields(out, [dataclasses.replace(c) for _, _, c in chosen], chosen[0][2].embedding_dim if chosen else -1,
                  [list(c.feature_names) for _, _, c in chosen],
                  [list(ec.embedding_names_by_table()[i]) for ec, i, _ in chosen])
    return out
