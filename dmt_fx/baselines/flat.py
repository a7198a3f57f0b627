"""The baselines a TorchRec user would run instead of dmt_fx, behind one call.

`build_baseline(name, model, topology=...)`, on every rank after init_process_group,
returns `(module, optimizer)` for this rank, like `dmt_fx.runtime.distribute.distribute`:

* ``flat-table_wise``, ``flat-row_wise``, ``flat-table_row_wise``: the ORIGINAL model
  under TorchRec's DistributedModelParallel over the whole world, with an explicit
  ShardingPlan (``construct_module_sharding_plan``) for every EmbeddingBagCollection:
  table-wise (tables, largest first, onto the least loaded of all N ranks), row-wise
  (every table over all N ranks) or table-row-wise (every table row-wise over the ranks
  of one host, tables spread over hosts by size). This is the flat all-to-all over N
  ranks that DMT replaces.
* ``torchrec-towers``: SPTT written by hand with TorchRec's own tower modules: one
  ``EmbeddingTower`` per tower of a dmt_fx ``TowerPlan`` (its tables, an interaction
  that just returns the pooled embeddings), gathered in an
  ``EmbeddingTowerCollection`` that replaces the model's EmbeddingBagCollection (an
  adapter re-keys the tower outputs into the original KeyedTensor), sharded by
  ``EmbeddingTowerCollectionSharder`` under DMP: peer KJT all-to-all, a row-wise lookup
  inside the host, peer pooled all-to-all back. No tower module, no partitioner.

Common to all: the tables use TorchRec's FUSED kernel with the optimizer matching the
dense one (`dmt_fx.runtime.distribute.fused_params`), updated during backward as in production.
The plan asks for FUSED explicitly: for plain parameters `construct_module_sharding_plan`
picks the DENSE kernel, whose sharded tables are ordinary parameters that only a dense
optimizer would step (and the fused optimizer is empty). The shards start from the original
model's table weights (DMP re-initialises sharded tables). Dense parameters are
data-parallel under DMP's default DDP wrapper (no device_ids on CPU) and stepped by a
`KeyedOptimizerWrapper`; the returned optimizer is
`CombinedOptimizer([dmp.fused_optimizer, dense])`, TorchRec's usual pattern.

Scaling: TorchRec divides embedding gradients by the group size in the backward of
every all-to-all / reduce-scatter (`comm_ops.GRADIENT_DIVISION`, on by default); over a
world of N ranks (N, or H then L for towers) that is exactly the 1/N DDP applies to the
dense gradients, so a per-rank mean loss trains like the global-batch mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (
    construct_module_sharding_plan,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, get_embedding_names_by_table
from torchrec.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.topology import Topology
from dmt_fx.runtime.distribute import _copy_into_shards, _device, check_world, fused_params

__all__ = ["BASELINES", "build_baseline", "flat_sharding_plan", "TowerCollectionAdapter"]

BASELINES = ("flat-table_wise", "flat-row_wise", "flat-table_row_wise", "torchrec-towers")
_FUSED = EmbeddingComputeKernel.FUSED.value


# ---------------------------------------------------------------- shared helpers


def _collections(model: nn.Module) -> list[tuple[str, EmbeddingBagCollection]]:
    found = [(path, m) for path, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]
    if not found:
        raise DMTError(f"a {type(model).__name__} without a TorchRec EmbeddingBagCollection",
                       "a model whose tables are EmbeddingBagCollections (what TorchRec shards)",
                       ["express the tables as an EmbeddingBagCollection taking a KeyedJaggedTensor"])
    if any(path == "" for path, _ in found):
        raise DMTError("an EmbeddingBagCollection as the whole model",
                       "a model that contains its EmbeddingBagCollection(s) as submodules",
                       ["wrap the collection in a small nn.Module"])
    return found


def _table_weights(ebc: nn.Module) -> dict[str, torch.Tensor]:
    """The collection's full tables by state_dict key, referenced (no copy)."""
    return {k: v for k, v in ebc.state_dict(keep_vars=True).items() if k.startswith("embedding_bags.")}


def _by_size(configs) -> list:
    return sorted(configs, key=lambda c: (-c.num_embeddings * c.embedding_dim, c.name))


def _combined_optimizer(dmp: DistributedModelParallel, optimizer_class: type,
                        kwargs: Mapping[str, Any]) -> CombinedOptimizer:
    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    return CombinedOptimizer([("fused", dmp.fused_optimizer),
                              ("dense", KeyedOptimizerWrapper(dense, lambda ps: optimizer_class(ps, **kwargs)))])


# ---------------------------------------------------------------- flat baselines


def flat_sharding_plan(model: nn.Module, sharding: str, topology: Topology,
                       sharder: EmbeddingBagCollectionSharder) -> ShardingPlan:
    """TorchRec ShardingPlan over the whole world for every collection of `model`.

    `sharding`: "table_wise" (largest table first onto the least loaded rank, over all N
    ranks and all collections), "row_wise" (every table over all N ranks) or
    "table_row_wise" (every table row-wise inside one host; largest table first onto the
    least loaded host). Kernels are FUSED."""
    n, hosts = topology.world_size, topology.num_hosts
    rank_load, host_load = [0] * n, [0] * hosts
    plan = {}
    for path, ebc in _collections(model):
        per_table = {}
        for config in _by_size(ebc.embedding_bag_configs()):
            size = config.num_embeddings * config.embedding_dim
            if sharding == "table_wise":
                r = min(range(n), key=lambda i: (rank_load[i], i))
                rank_load[r] += size
                per_table[config.name] = table_wise(rank=r, compute_kernel=_FUSED)
            elif sharding == "row_wise":
                per_table[config.name] = row_wise(compute_kernel=_FUSED)
            elif sharding == "table_row_wise":
                h = min(range(hosts), key=lambda i: (host_load[i], i))
                host_load[h] += size
                per_table[config.name] = table_row_wise(host_index=h)
            else:
                raise DMTError(f"flat sharding {sharding!r}", "table_wise, row_wise or table_row_wise",
                               [f"pick one of {BASELINES}"])
        module_plan = construct_module_sharding_plan(
            ebc, per_table, sharder=sharder, local_size=topology.local_world_size,
            world_size=n, device_type=_device().type)
        for parameter_sharding in module_plan.values():
            parameter_sharding.compute_kernel = _FUSED  # table_row_wise() takes no kernel
        plan[path] = module_plan
    return ShardingPlan(plan)


def _build_flat(sharding: str, model: nn.Module, topology: Topology, optimizer_class: type,
                kwargs: Mapping[str, Any]) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(optimizer_class, kwargs))
    plan = flat_sharding_plan(model, sharding, topology, sharder)
    full = {path: _table_weights(ebc) for path, ebc in _collections(model)}
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(torch.distributed.group.WORLD),
                                   device=_device(), plan=plan, sharders=[sharder])
    for path, weights in full.items():
        _copy_into_shards(dmp.module.get_submodule(path).state_dict(), weights)
    return dmp, _combined_optimizer(dmp, optimizer_class, kwargs)


# ---------------------------------------------------------------- torchrec-towers


class _PooledValues(nn.Module):
    """A tower's interaction module: its pooled embeddings as one [B, sum(dims)] tensor.

    Reads by key: the sharded lookup orders its KeyedTensor by shard placement."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__()
        self.keys = list(keys)

    def forward(self, pooled: KeyedTensor) -> torch.Tensor:
        values = pooled.to_dict()
        return torch.cat([values[k] for k in self.keys], dim=1)


class TowerCollectionAdapter(nn.Module):
    """Stands where the model's EmbeddingBagCollection stood: runs the tower collection
    and returns the KeyedTensor the rest of the model expects, in the original key order."""

    def __init__(self, towers: EmbeddingTowerCollection, tower_keys: Sequence[str], tower_widths: Sequence[int],
                 keys: Sequence[str], widths: Sequence[int], weighted: bool) -> None:
        super().__init__()
        self.towers = towers
        self._tower_keys, self._tower_widths = list(tower_keys), list(tower_widths)
        self._keys, self._widths = list(keys), list(widths)
        self._weighted = weighted

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        # Positional: the unsharded collection names them (features, weighted_features),
        # the sharded one (kjt_features, wkjt_features).
        values = self.towers(None, features) if self._weighted else self.towers(features)
        parts = dict(zip(self._tower_keys, torch.split(values, self._tower_widths, dim=1)))
        return KeyedTensor(keys=self._keys, length_per_key=self._widths,
                           values=torch.cat([parts[k] for k in self._keys], dim=1))


def _sub_collection(ebc: EmbeddingBagCollection, configs: list) -> EmbeddingBagCollection:
    """A collection over some of `ebc`'s tables, sharing their modules (no allocation)."""
    sub = EmbeddingBagCollection([], is_weighted=ebc.is_weighted())
    sub.embedding_bags = nn.ModuleDict({c.name: ebc.embedding_bags[c.name] for c in configs})
    sub._embedding_bag_configs = [dataclasses.replace(c) for c in configs]
    sub._feature_names = [list(c.feature_names) for c in configs]
    sub._lengths_per_embedding = [c.embedding_dim for c in configs for _ in c.feature_names]
    sub._embedding_names = [n for names in get_embedding_names_by_table(configs) for n in names]
    sub._device = ebc._device
    return sub


@dataclasses.dataclass
class _TowerBuild:
    path: str
    adapter: TowerCollectionAdapter
    hosts: dict[str, int]  # table -> host
    tower_ebcs: list[EmbeddingBagCollection]


def _tower_collection(path: str, ebc: EmbeddingBagCollection, plan: TowerPlan) -> _TowerBuild:
    tower_of = plan.tower_of()
    towers = {t.index: t for t in plan.towers}
    configs_by_tower: dict[int, list] = {}
    for config in ebc.embedding_bag_configs():
        missing = [f for f in config.feature_names if f not in tower_of]
        owners = {tower_of[f] for f in config.feature_names if f in tower_of}
        if missing or len(owners) != 1:
            raise DMTError(f"table {config.name} of {path} reads features {list(config.feature_names)}, "
                           f"towers {sorted(owners)}, not in the plan: {missing}",
                           "every table's features in exactly one tower of the plan",
                           ["build the plan from this model: dmt_fx.tower_plan(dmt_fx.transform(model, topology))"])
        configs_by_tower.setdefault(owners.pop(), []).append(config)
    names_by_table = dict(zip([c.name for c in ebc.embedding_bag_configs()],
                              get_embedding_names_by_table(ebc.embedding_bag_configs())))
    keys = [n for c in ebc.embedding_bag_configs() for n in names_by_table[c.name]]
    widths = [c.embedding_dim for c in ebc.embedding_bag_configs() for _ in c.feature_names]
    # Host order = the order the sharded collection concatenates its output in (physical
    # towers by host, logical towers in order within a host); the unsharded one follows
    # the list order, so both agree.
    order = sorted(configs_by_tower, key=lambda i: (towers[i].host, i))
    embedding_towers, tower_ebcs, tower_keys, tower_widths, hosts = [], [], [], [], {}
    for index in order:
        configs = configs_by_tower[index]
        sub = _sub_collection(ebc, configs)
        own_keys = sub._embedding_names  # the names this tower's lookup will emit
        original = [n for c in configs for n in names_by_table[c.name]]
        embedding_towers.append(EmbeddingTower(sub, _PooledValues(own_keys)))
        tower_ebcs.append(sub)
        tower_keys += original
        tower_widths += [c.embedding_dim for c in configs for _ in c.feature_names]
        hosts.update({c.name: towers[index].host for c in configs})
    features = [f for index in order for c in configs_by_tower[index] for f in c.feature_names]
    if len(features) != len(set(features)):
        raise DMTError(f"features read by tables of different towers in {path}",
                       "each feature read by the tables of one tower (TorchRec's tower sharder sends it once)",
                       ["put the tables sharing a feature into the same tower"])
    adapter = TowerCollectionAdapter(EmbeddingTowerCollection(embedding_towers), tower_keys, tower_widths,
                                     keys, widths, ebc.is_weighted())
    return _TowerBuild(path, adapter, hosts, tower_ebcs)


class _Unreplicated(nn.Module):
    """What `_cpu_tower_ddp` returns for a parameter-free interaction: exposes `.module`
    like DDP (the sharded tower collection reads `interaction.module`)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def _cpu_tower_ddp(module: nn.Module, *args: Any, device_ids: Any = None, **kwargs: Any) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # ShardedEmbeddingTowerCollection builds its "hierarchical DDP" with
    # device_ids=[device], which DDP refuses for a CPU module; and DDP refuses a module
    # without trainable parameters (our interactions just return the embeddings).
    if not any(p.requires_grad for p in module.parameters()):
        return _Unreplicated(module)
    if device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids):
        device_ids = None
    return DistributedDataParallel(module, *args, device_ids=device_ids, **kwargs)


@contextlib.contextmanager
def _tower_ddp_patched() -> Iterator[None]:
    from torchrec.distributed import embedding_tower_sharding as ets

    original = ets.DistributedDataParallel
    ets.DistributedDataParallel = _cpu_tower_ddp
    try:
        yield
    finally:
        ets.DistributedDataParallel = original


def _tower_sharder_class():
    from torchrec.distributed.embedding_tower_sharding import EmbeddingTowerCollectionSharder

    class CpuEmbeddingTowerCollectionSharder(EmbeddingTowerCollectionSharder):
        """TorchRec's tower sharder, with its intra-host DDP built the way CPU allows.

        Minimal patch: during `shard` only, the name `DistributedDataParallel` in
        torchrec.distributed.embedding_tower_sharding resolves to `_cpu_tower_ddp`
        (no device_ids on CPU; no DDP for a parameter-free interaction)."""

        def shard(self, *args: Any, **kwargs: Any):
            with _tower_ddp_patched():
                return super().shard(*args, **kwargs)

    return CpuEmbeddingTowerCollectionSharder


def _build_towers(model: nn.Module, topology: Topology, plan: TowerPlan | None, optimizer_class: type,
                  kwargs: Mapping[str, Any]) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    collections = _collections(model)
    if plan is None:
        import dmt_fx  # the compiler is only needed to choose towers

        plan = dmt_fx.tower_plan(dmt_fx.transform(model, topology))
    if plan.topology and plan.topology != str(topology):
        raise DMTError(f"a tower plan for topology {plan.topology}", f"a plan for {topology}",
                       ["pass the plan made for this topology"])
    bad = [t.index for t in plan.towers if not 0 <= t.host < topology.num_hosts]
    if bad:
        raise DMTError(f"towers {bad} on hosts outside 0..{topology.num_hosts - 1}",
                       "every tower on a host of the topology", ["fix the plan"])
    builds = [_tower_collection(path, ebc, plan) for path, ebc in collections]
    sharder = _tower_sharder_class()(fused_params=fused_params(optimizer_class, kwargs))
    sharding_plan, full = {}, {}
    for build in builds:
        etc = build.adapter.towers
        module_plan = construct_module_sharding_plan(
            etc, {table: table_row_wise(host_index=h) for table, h in build.hosts.items()}, sharder=sharder,
            local_size=topology.local_world_size, world_size=topology.world_size, device_type=_device().type)
        for parameter_sharding in module_plan.values():
            parameter_sharding.compute_kernel = _FUSED
        sharding_plan[f"{build.path}.towers"] = module_plan
        full[build.path] = {f"towers.{i}.embedding.{k}": v
                            for i, sub in enumerate(build.tower_ebcs) for k, v in _table_weights(sub).items()}
        parent, _, name = build.path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, build.adapter)
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(torch.distributed.group.WORLD),
                                   device=_device(), plan=ShardingPlan(sharding_plan), sharders=[sharder])
    for build in builds:
        _copy_into_shards(dmp.module.get_submodule(f"{build.path}.towers").state_dict(), full[build.path])
    return dmp, _combined_optimizer(dmp, optimizer_class, kwargs)


# ---------------------------------------------------------------- public API


def build_baseline(name: str, model: nn.Module, *, topology: Topology | str,
                   optimizer_class: type = torch.optim.SGD, optimizer_kwargs: Mapping[str, Any] | None = None,
                   plan: TowerPlan | None = None) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """This rank's (module, optimizer) for baseline `name`; call on every rank after
    init_process_group. Takes ownership of `model` (its dense parameters are trained in
    place; torchrec-towers replaces its EmbeddingBagCollections). `plan` (a dmt_fx
    TowerPlan) is used by torchrec-towers only; None plans towers with dmt_fx.
    The module takes this rank's local batch and returns its local outputs."""
    if name not in BASELINES:
        raise DMTError(f"baseline {name!r}", f"one of {', '.join(BASELINES)}", ["pick a listed baseline"])
    if isinstance(topology, str):
        topology = Topology.parse(topology)
    check_world(topology)
    kwargs = dict(optimizer_kwargs or {})
    if name == "torchrec-towers":
        return _build_towers(model, topology, plan, optimizer_class, kwargs)
    return _build_flat(name.removeprefix("flat-"), model, topology, optimizer_class, kwargs)
