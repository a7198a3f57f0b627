"""What `transform` checks and builds for a sequence tower-module kind (`seq_mean`,
`seq_attention`; `TowerModuleKind.sequences`): the towers' specs, and the refusals.

A sequence kind reduces each EmbeddingCollection sequence feature inside its host and feeds
the reduced vector to the model where the model's own code reduced the rows
(`dmt_fx.compiler.sequence_reductions`, the `sequence_towers` pass); the pooled features
keep their exact path. Refused, naming the feature and a fix: a model without sequence
features, nn.Embedding read as [B, L] sequences, a feature whose rows reach the model by more
than one (B, D) reduction, and no example inputs. plan="auto" prices the kind
(compiler/auto_plan/choose.py) and may choose it or identity.
"""

from __future__ import annotations

from typing import Mapping

import torch.fx as fx

from dmt_fx.compiler.sequence_reductions import NONE, SequenceReduction, find_reductions
from dmt_fx.compiler.tower_modules import TowerModuleKind, TowerSpec
from dmt_fx.compiler.tower_modules.sequence import reduced_width
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import SEQUENCE_KIND, ModelSites


def reductions_of(gm: fx.GraphModule, sites: ModelSites, inputs: tuple | None, route: str,
                  ) -> dict[str, SequenceReduction]:
    """The model's reductions of its sequence features, for `dmt-fx plan` (informational:
    a model whose graph cannot be run here gets none)."""
    if inputs is None or not any(f.sequence for f in sites.features):
        return {}
    try:
        return find_reductions(gm, sites, inputs, route)
    except Exception:  # noqa: BLE001 - the plan then shows no verdicts; transform itself does not depend on them
        return {}


def check_sequence_kind(kind: TowerModuleKind, sites: ModelSites, reductions: Mapping[str, SequenceReduction],
                        inputs: tuple | None) -> None:
    name = f"tower_module={kind.name!r}"
    sequences = [f for f in sites.features if f.sequence]
    if inputs is None:
        raise DMTError(f"{name} without example_inputs", "example_inputs: one batch, on which the model's own "
                       "reduction of each sequence is found", ["pass example_inputs=(...) to transform"])
    if not sequences:
        raise DMTError(f"{name} on a model without sequence (unpooled) features",
                       "an EmbeddingCollection feature for the kind to reduce",
                       ["use a compressing kind for pooled features ('linear', 'dot', 'dcn')"])
    kind_of = {s.node: s.kind for s in sites.sites}
    plain = [f.name for f in sequences if kind_of[f.site] != SEQUENCE_KIND]
    if plain:
        raise DMTError(f"{name} on nn.Embedding read as [B, L] sequences {plain}",
                       "sequence features of a torchrec EmbeddingCollection (the kind reduces its JaggedTensor "
                       "rows; neither the search for the model's own reduction nor the hosts' reduction is "
                       "built for an nn.Embedding's [B, L, D] output, padding rows included)",
                       ["keep tower_module='identity' (the default): plain sequences run exact, distributed too",
                        "or read the sequence through a torchrec EmbeddingCollection"])
    for f in sequences:
        reduction = reductions.get(f.name)
        if reduction is None or reduction.kind == NONE:
            raise DMTError(f"{name}: sequence feature {f.name!r} reaches the model with no single (B, {f.dim}) "
                           "reduction (every use of its rows going through one node)",
                           "a reduction of the feature's rows to one (B, D) tensor (a mean, a last-item pick, "
                           "attention), whose place the reduced vector takes",
                           ["keep tower_module='identity' (the default): exact",
                            "or reduce the sequence to (B, D) once, and read only that"])


def sequence_specs(plan: TowerPlan, sites: ModelSites, compression: int) -> list[TowerSpec]:
    """Per tower: its sequence features (site order), their dims and the reduced width."""
    if isinstance(compression, bool) or not isinstance(compression, int) or compression < 1:
        raise DMTError(f"compression={compression!r}", "an int >= 1: each sequence feature of width d sends "
                       "ceil(d / c) columns across hosts", ["pass e.g. compression=4"])
    tower_of = plan.tower_of()
    specs = []
    for tower in plan.towers:
        features = tuple(f.name for f in sites.features if f.sequence and tower_of[f.name] == tower.index)
        dims = tuple(sites.feature(f).dim for f in features)
        specs.append(TowerSpec(tower.index, tower.host, features, dims, compression,
                               sum(reduced_width(d, compression) for d in dims), None))
    return specs
