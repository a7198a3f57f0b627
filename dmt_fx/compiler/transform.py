"""`transform(model, topology)`: the compiler's entry point.

  1. check the topology and the example inputs (one eager run, which also measures each
     feature's pooling factor for the cost model);
  2. capture the model into a GraphModule (symbolic tracing, else torch.export);
  3. analyse: embedding sites and the interaction site;
  4. plan the towers (a registered partitioner, "balanced" by default, or a user plan,
     validated);
  5. run the passes (`graph_passes`): SPTT rewrite, tower modules of a registered kind,
     the interaction rewrite when they compress, cleanup, input validation;
  6. install state_dict hooks so checkpoints use the original model's keys;
  7. verify against the original on the example inputs, when given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import warnings
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from dmt_fx._compat import pytree
from dmt_fx.compiler.analysis import analyze, require_interaction
from dmt_fx.compiler.auto_plan import AutoOptions, auto_plan
from dmt_fx.compiler.capture import capture
from dmt_fx.compiler.eager import run_with_hooks
from dmt_fx.compiler.interactions import interaction_kind
from dmt_fx.compiler.modes import has_mode_dependent
from dmt_fx.compiler.partitioners import Partitioner, make_partition
from dmt_fx.compiler.partitioners.user_towers import user_tower_paths
from dmt_fx.compiler.pass_runner import Pass, run_passes
from dmt_fx.compiler.plans import validate_plan
from dmt_fx.compiler.sequence_towers import check_sequence_kind, reductions_of, sequence_specs
from dmt_fx.compiler.sequences import pooling_by_feature, with_sequences
from dmt_fx.compiler.tower_modules import TowerModuleFactory, TowerModuleKind, TowerSpec, out_width, tower_module_kind
from dmt_fx.ir.errors import DMTError, ExampleInputsError, PassError, TopologyError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.result import DMTResult
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.state_dict import install_state_dict_hooks
from dmt_fx.ir.topology import Topology
from dmt_fx.passes.cleanup import cleanup_pass
from dmt_fx.passes.interaction import interaction_pass
from dmt_fx.passes.sequence_towers import sequence_towers_pass
from dmt_fx.passes.sptt import sptt_pass
from dmt_fx.passes.tower_modules import tower_modules_pass
from dmt_fx.passes.validate_inputs import validate_inputs_pass

log = logging.getLogger("dmt_fx")


def transform(
    model: nn.Module,
    topology: Topology | str,
    *,
    example_inputs: Sequence[Any] | None = None,
    plan: TowerPlan | Mapping | str | AutoOptions | None = None,
    partitioner: str | Partitioner | None = None,
    tower_module: str | TowerModuleFactory = "identity",
    compression: int = 1,
    seed: int = 0,
    validate_inputs: bool = True,
    disable_passes: Sequence[str] = (),
    verify: bool = True,
    towers_per_domain: int = 1,
) -> fx.GraphModule:
    """Rewrite a flat DLRM into DMT form. The result shares the model's parameters.

    `partitioner` names a registered partitioner (`PARTITIONERS`: "balanced", "learned",
    "random", ...) or is a function `(PartitionRequest) -> TowerPlan | feature groups`; by
    default "user_towers" for a model already towered with torchrec EmbeddingTowers (their
    towers stay whole), else "balanced".
    `towers_per_domain` k: the partitioner makes H x k towers, tower t on domain t // k, each
    with its own tower module, the k sharing the domain's ranks for lookup (default 1).
    `plan="auto"` (or `plan=AutoOptions(memory_per_rank=..., quality_budget=...)`) lets the cost
    model choose the towers (k per host too; `towers_per_domain=k` > 1 fixes k), the
    compression (c > 1 only with a compressing `tower_module`) and each host's sharding, which
    the plan carries for `distribute`; `gm.meta["dmt_auto"]` keeps the candidates and the reason.
    `tower_module` names a registered kind (`TOWER_MODULES`) or is a factory
    `(TowerSpec) -> nn.Module`. "identity" preserves numerics; the compressing kinds
    ("linear", "dot", "dcn", factories) compress each tower's output by `compression` before
    the cross-host hop and rebuild the interaction for it: that changes the model (opt-in).

    Args:
        model, topology: the flat model (not modified) and a `Topology` or "HxL".
        example_inputs: one batch of forward()'s positional arguments: captures models fx
            cannot trace, measures pooling, and verifies the rewrite in train and eval mode.
        plan: a `TowerPlan`, its dict or JSON (string or file), "auto" or `AutoOptions`.

    Returns:
        A `GraphModule` with the model's signature and parameters; `gm.meta["dmt"]`: the result.

    Raises:
        DMTError: bad model, topology, plan or inputs (what was found, expected, the fix).

    Example:
        >>> import torch, dmt_fx; from dmt_fx.models.zoo import default_dlrm
        >>> model, batch = default_dlrm()
        >>> torch.equal(dmt_fx.transform(model, "2x2", example_inputs=batch)(*batch), model(*batch))
        True
    """
    if not isinstance(model, nn.Module):
        raise DMTError(f"a {type(model).__name__}", "a torch.nn.Module", ["pass the model object itself"])
    topology = _as_topology(topology)
    inputs = None if example_inputs is None else _as_tuple(example_inputs)
    pooling = _measure_pooling(model, inputs) if inputs is not None else {}
    gm, route = capture(model, inputs)
    _copy_unused_state(model, gm)
    sites = analyze(gm, route)
    pooling = pooling_by_feature(sites, pooling)
    sites = with_sequences(sites, pooling)  # unpooled lookups, marked with their mean lengths
    kind = tower_module_kind(tower_module)
    reductions = reductions_of(gm, sites, inputs, route)  # the model's own reductions of its sequences
    if kind.sequences:  # the sequences reduced in their towers feed the model's reductions
        check_sequence_kind(kind, sites, reductions, inputs)
    auto = None
    if plan == "auto" or isinstance(plan, AutoOptions):  # the cost model picks towers, c and shardings
        if partitioner is not None or compression != 1:
            warnings.warn(f"dmt_fx: plan='auto' chooses the towers and the compression itself: "
                          f"partitioner={partitioner!r} and compression={compression!r} are ignored", stacklevel=2)
        options = plan if isinstance(plan, AutoOptions) else AutoOptions()
        if towers_per_domain != 1:  # auto with a k tries only that k (1, the default, lets it try k = 1, 2, ...)
            options = dataclasses.replace(options, towers_per_domain=(towers_per_domain,))
        auto = auto_plan(sites, topology, pooling, kind=kind, model=model, example_inputs=inputs, seed=seed,
                         options=options)
        plan, compression, kind = auto.plan, auto.compression, tower_module_kind(auto.tower_module)
        towers_per_domain = 1  # the chosen plan places its towers itself
    changes_model = kind.changes_model
    if changes_model and not kind.sequences:  # compressed towers feed the interaction: a model must have one
        require_interaction(sites, f"tower_module={kind.name!r}")
    made = _make_plan(plan, partitioner, sites, topology, pooling, model, inputs, seed, towers_per_domain)
    tower_plan_ = dataclasses.replace(made, changes_model=changes_model)
    specs = sequence_specs(tower_plan_, sites, compression) if kind.sequences else tower_specs(
        tower_plan_, sites, compression, inputs, changes_model=changes_model)
    if changes_model:
        log.warning("transform: tower_module=%r with compression %d changes the model "
                    "(tower modules and the layers they feed are new or rebuilt and must be trained)", kind.name, compression)
    passes = graph_passes(sites, tower_plan_, kind, specs, inputs, validate_inputs=validate_inputs,
                          reductions=reductions)
    records = run_passes(gm, passes, disabled=disable_passes)
    gm.meta["dmt_sequence_reductions"] = {f: r.as_record() for f, r in reductions.items()}  # for dmt-fx plan
    renames = dict(gm.meta.pop("dmt_renames", {}))
    gm.meta["dmt"] = DMTResult.of(gm, tower_plan_, sites, topology, route, records, renames)
    if auto is not None:  # why plan="auto" chose this plan (dmt-fx plan --auto renders it)
        gm.meta["dmt_auto"] = auto
    install_state_dict_hooks(gm, renames, list(model.state_dict().keys()))
    if verify and inputs is not None and not changes_model:
        _verify(model, gm, inputs)
    log.info("transform: %d features in %d towers on %s (%s capture)",
             len(sites.features), len(tower_plan_.towers), topology, route)
    return gm


# ---------------------------------------------------------------- inputs and topology


def _as_topology(topology: Topology | str) -> Topology:
    if isinstance(topology, Topology):
        return topology
    if isinstance(topology, str):
        return Topology.parse(topology)
    raise TopologyError(f"topology of type {type(topology).__name__}",
                        "a dmt_fx.Topology or a string like '2x4'", ["pass Topology.parse('2x4')"])


def _as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _measure_pooling(model: nn.Module, inputs: tuple) -> dict[tuple[str, str], float]:
    """Run the model once on the example inputs; record ids per bag of each lookup (per
    sample for nn.Embedding, whose [B, F] ids are F lookups)."""
    _check_signature(model, inputs)
    stats: dict[tuple[str, str], float] = {}
    calls: dict[str, int] = {}

    def ebc_hook(fqn: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        kjt = args[0] if args else kwargs["features"]
        for key, count in zip(kjt.keys(), kjt.length_per_key()):
            stats[(fqn, key)] = count / max(kjt.stride(), 1)

    def bag_hook(fqn: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = args[0] if args else kwargs["input"]
        offsets = args[1] if len(args) > 1 else kwargs.get("offsets")
        bags = ids.shape[0] if ids.dim() == 2 else max(offsets.numel() - int(module.include_last_offset), 1)
        index = calls[fqn] = calls.get(fqn, -1) + 1
        stats[(fqn, str(index))] = ids.numel() / max(bags, 1)

    def embedding_hook(fqn: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # nn.Embedding on [B, F] ids does F lookups per sample (one per field), on [B] one.
        ids = args[0] if args else kwargs["input"]
        index = calls[fqn] = calls.get(fqn, -1) + 1
        stats[(fqn, str(index))] = ids.numel() / max(ids.shape[0], 1) if ids.dim() > 1 else 1.0

    handles = []
    for fqn, module in model.named_modules():
        hook = ebc_hook if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection)) else (
            bag_hook if isinstance(module, nn.EmbeddingBag) else (
                embedding_hook if isinstance(module, nn.Embedding) else None))
        if hook is not None:
            handles.append(module.register_forward_pre_hook(functools.partial(hook, fqn), with_kwargs=True))
    run_with_hooks(model, inputs, handles,
                   extra_fix="check ids are within each table's num_embeddings and offsets/lengths match the ids")
    return stats


def _check_signature(model: nn.Module, inputs: tuple) -> None:
    try:
        inspect.signature(model.forward).bind(*inputs)
    except TypeError as exc:
        params = list(inspect.signature(model.forward).parameters)
        raise ExampleInputsError(f"{len(inputs)} example inputs ({exc})",
                                 f"positional arguments for forward({', '.join(params)})",
                                 ["pass example_inputs as a tuple with one entry per forward() argument"]) from None


# ---------------------------------------------------------------- plan, tower modules and passes


def _make_plan(plan: TowerPlan | Mapping | str | None, partitioner: str | Partitioner | None, sites: ModelSites,
               topology: Topology, pooling: Mapping[str, float], model: nn.Module, inputs: tuple | None,
               seed: int, towers_per_domain: int = 1) -> TowerPlan:
    if plan is not None and towers_per_domain != 1:  # a plan already places its towers on domains
        raise DMTError(f"towers_per_domain={towers_per_domain!r} together with a plan",
                       "towers_per_domain only with a partitioner (a plan lists its towers and their hosts)",
                       ["drop towers_per_domain, or give two towers of the plan the same host"])
    if plan is not None:
        given = TowerPlan.load(plan)  # validate_plan rebuilds the towers: keep their shardings
        return validate_plan(given, sites, topology, pooling).with_shardings([t.sharding for t in given.towers])
    if partitioner is None:  # the author's own towers, when the model has them
        partitioner = "user_towers" if user_tower_paths(model) else "balanced"
    return make_partition(partitioner, sites, topology, pooling, model=model, example_inputs=inputs, seed=seed,
                          towers_per_domain=towers_per_domain)


def graph_passes(sites: ModelSites, plan: TowerPlan, kind: TowerModuleKind, specs: Sequence[TowerSpec],
                 inputs: tuple | None, *, validate_inputs: bool = True,
                 reductions: Mapping[str, Any] | None = None) -> list[tuple[str, Pass, bool]]:
    """The pass list, configuration bound: (name, pass, changes_model). Pure: runs nothing."""
    changes = kind.changes_model
    passes: list[tuple[str, Pass, bool]] = [("sptt", functools.partial(sptt_pass, sites=sites, plan=plan), False)]
    if kind.sequences:  # instead of tower_modules + interaction (passes/sequence_towers.py)
        passes.append(("sequence_towers", functools.partial(sequence_towers_pass, sites=sites, plan=plan, kind=kind,
                                                            specs=list(specs), reductions=reductions or {}), True))
    else:
        passes.append(("tower_modules", functools.partial(tower_modules_pass, plan=plan,
                                                          make_module=lambda tower: kind.build(specs[tower.index])),
                       changes))
    if changes and not kind.sequences:
        passes.append(("interaction", functools.partial(interaction_pass, sites=sites, specs=list(specs),
                                                        example_inputs=inputs), True))
    passes.append(("cleanup", cleanup_pass, False))
    if validate_inputs:  # run-time checks of every batch; off for speed
        passes.append(("validate_inputs", functools.partial(validate_inputs_pass, sites=sites, example_inputs=inputs), False))
    return passes


def tower_specs(plan: TowerPlan, sites: ModelSites, compression: int, inputs: tuple | None, *,
                changes_model: bool = True) -> list[TowerSpec]:
    """Per tower: its features in lookup order, their dims and the compressed width.

    Numerics-preserving kinds get compression 1 and no vectors, and need no example inputs."""
    vector_dim = None
    if changes_model:
        _check_compression(compression, inputs)
        vector_dim = _vector_dim(sites)
    else:
        if compression != 1:
            warnings.warn(f"dmt_fx: compression={compression} is ignored by a tower module that keeps the "
                          "model's numerics (tower_module='identity')", stacklevel=3)
        compression = 1
    tower_of = plan.tower_of()
    specs = []
    for tower in plan.towers:
        features = tuple(f for site in sites.sites for f in site.features if tower_of[f] == tower.index)
        dims = tuple(sites.feature(f).dim for f in features)
        specs.append(TowerSpec(tower.index, tower.host, features, dims, compression,
                               out_width(dims, compression, vector_dim), vector_dim))
    return specs


def _check_compression(compression: int, inputs: tuple | None) -> None:
    if isinstance(compression, bool) or not isinstance(compression, int) or compression < 1:
        raise DMTError(f"compression={compression!r}", "an int >= 1 dividing the width a tower sends across hosts",
                       ["pass e.g. compression=4"])
    if inputs is None:
        raise DMTError("a compressing tower module without example_inputs",
                       "example_inputs: one batch, used to size the rebuilt interaction and over-arch layers",
                       ["pass example_inputs=(...) to transform"])


def _vector_dim(sites: ModelSites) -> int | None:
    """D when the interaction works on D-wide vectors (tower outputs are whole vectors), else None."""
    if not interaction_kind(sites.interaction.kind).vectors:  # an unknown kind says how to register it
        return None
    dims = {f.dim for f in sites.features}
    if len(dims) != 1:
        raise DMTError(f"a {sites.interaction.kind} interaction over embedding dims {sorted(dims)}",
                       "one embedding dim for an interaction of vectors", ["use equal embedding dims"])
    return dims.pop()


# ---------------------------------------------------------------- state and checks


def _copy_unused_state(model: nn.Module, gm: fx.GraphModule) -> None:
    """Tracing drops parameters forward() never reads; keep them so checkpoints match."""
    have = set(gm.state_dict().keys())
    for fqn in model.state_dict().keys():
        if fqn not in have:
            _copy_state_entry(model, gm, fqn)


def _copy_state_entry(model: nn.Module, gm: fx.GraphModule, fqn: str) -> None:
    """Put the model's parameter or buffer `fqn` at the same path in `gm` (the same tensor)."""
    *path, leaf = fqn.split(".")
    source, target = model, gm
    for name in path:
        source = getattr(source, name)
        if not hasattr(target, name):
            target.add_module(name, nn.Module())  # owners of unused state are missing after tracing
        target = getattr(target, name)
    value = getattr(source, leaf)
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        target.register_buffer(leaf, value)  # in model.state_dict(): a persistent buffer
    else:
        setattr(target, leaf, value)


def _verify(model: nn.Module, gm: fx.GraphModule, inputs: tuple) -> None:
    """A last guard against a silently wrong rewrite: equal outputs on the example inputs.

    In both modes when the model has mode-dependent modules (dropout with the same RNG seed,
    batch norm with batch statistics and its running-statistics updates compared too); the
    buffers are restored afterwards, so the check leaves the user's model as it was."""
    modes = (True, False) if has_mode_dependent(model) else (model.training,)
    if "dmt_one_mode" in gm.meta:  # forward() branches on self.training: its capture mode only
        modes = (gm.meta["dmt_one_mode"],)
    for training in modes:
        with _checked_mode(model, gm, training):
            expected, expected_state = _run_seeded(model, inputs)
        with _checked_mode(model, gm, training):
            got, got_state = _run_seeded(gm, inputs)
        mode = "train" if training else "eval"
        _compare(expected, got, f"outputs in {mode} mode")
        _compare(expected_state, got_state, f"buffers (e.g. batch-norm running statistics) after a {mode}-mode call")


@contextlib.contextmanager
def _checked_mode(model: nn.Module, gm: nn.Module, training: bool) -> Any:
    """Both models in one mode, their buffers restored and every mode flag reset afterwards."""
    flags = [(m, m.training) for root in (model, gm) for m in root.modules()]
    buffers = {id(b): (b, b.detach().clone()) for root in (model, gm) for b in root.buffers()}
    try:
        for m, _ in flags:  # not .train(mode): exported modules may refuse it
            m.training = training
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers.values():
                buffer.copy_(saved)
        for m, flag in flags:
            m.training = flag


def _run_seeded(module: nn.Module, inputs: tuple) -> tuple[list, dict[str, torch.Tensor]]:
    """Outputs and the buffers after one call, with dropout's RNG seeded the same each time."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out = [x for x in pytree.tree_leaves(module(*inputs)) if isinstance(x, torch.Tensor)]
    return out, {name: b.detach().clone() for name, b in module.named_buffers() if b.is_floating_point()}


def _compare(expected: list | dict, got: list | dict, what: str) -> None:
    if isinstance(expected, dict):  # buffers by name: the ones both models have
        assert isinstance(got, dict)
        names = [n for n in expected if n in got]
        expected, got = [expected[n] for n in names], [got[n] for n in names]
    for e, g in zip(expected, got):
        if e.shape != g.shape:
            found = f"shapes {tuple(e.shape)} and {tuple(g.shape)}"
        elif not torch.allclose(e, g, rtol=0, atol=1e-6, equal_nan=True):
            found = f"max abs difference {(e - g).abs().max().item():.3g}"
        else:
            continue
        raise PassError(f"the rewritten model differs from the original on example_inputs: {what} ({found})",
                        "identical outputs (the rewrite preserves numerics)",
                        ["please report this with the model; transform(..., verify=False) skips the check"])
