"""The ``torchrec-towers`` baseline: SPTT written by hand with TorchRec's own tower modules.

One ``EmbeddingTower`` per tower of a dmt_fx ``TowerPlan`` (its tables, an interaction that
just returns the pooled embeddings), gathered in an ``EmbeddingTowerCollection`` that
replaces the model's EmbeddingBagCollection (an adapter re-keys the tower outputs into the
original KeyedTensor), sharded by ``EmbeddingTowerCollectionSharder`` under DMP: peer KJT
all-to-all, a row-wise lookup inside the host, peer pooled all-to-all back. No tower
module, no partitioner of its own (the plan comes from dmt_fx).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed import embedding_tower_sharding
from torchrec.distributed.embedding_tower_sharding import EmbeddingTowerCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_row_wise
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, get_embedding_names_by_table
from torchrec.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection
from torchrec.optim.keyed import CombinedOptimizer
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt_fx.baselines import dmp
from dmt_fx.baselines.registry import register_baseline
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.collections import sub_collection
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.result import tower_plan
from dmt_fx.ir.topology import Topology

__all__ = ["TowerCollectionAdapter", "build_towers"]


class PooledValues(nn.Module):
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


@dataclasses.dataclass
class TowerBuild:
    path: str
    adapter: TowerCollectionAdapter
    hosts: dict[str, int]  # table -> host
    tower_ebcs: list[EmbeddingBagCollection]


def _configs_by_tower(path: str, ebc: EmbeddingBagCollection, plan: TowerPlan) -> dict[int, list]:
    tower_of = plan.tower_of()
    by_tower: dict[int, list] = {}
    for config in ebc.embedding_bag_configs():
        missing = [f for f in config.feature_names if f not in tower_of]
        owners = {tower_of[f] for f in config.feature_names if f in tower_of}
        if missing or len(owners) != 1:
            raise DMTError(f"table {config.name} of {path} reads features {list(config.feature_names)}, "
                           f"towers {sorted(owners)}, not in the plan: {missing}",
                           "every table's features in exactly one tower of the plan",
                           ["build the plan from this model: dmt_fx.tower_plan(dmt_fx.transform(model, topology))"])
        by_tower.setdefault(owners.pop(), []).append(config)
    return by_tower


def _widths(configs: Sequence[EmbeddingBagConfig]) -> list[int]:
    return [c.embedding_dim for c in configs for _ in c.feature_names]


def tower_collection(path: str, ebc: EmbeddingBagCollection, plan: TowerPlan) -> TowerBuild:
    """The EmbeddingTowerCollection (behind its adapter) replacing `ebc`, one tower per plan tower."""
    by_tower = _configs_by_tower(path, ebc, plan)
    hosts_of = {t.index: t.host for t in plan.towers}
    configs = ebc.embedding_bag_configs()
    names_by_table = dict(zip([c.name for c in configs], get_embedding_names_by_table(configs)))
    # Host order = the order the sharded collection concatenates its output in (physical
    # towers by host, logical towers in order within a host); the unsharded one follows
    # the list order, so both agree.
    order = sorted(by_tower, key=lambda i: (hosts_of[i], i))
    features = [f for i in order for c in by_tower[i] for f in c.feature_names]
    if len(features) != len(set(features)):
        raise DMTError(f"features read by tables of different towers in {path}",
                       "each feature read by the tables of one tower (TorchRec's tower sharder sends it once)",
                       ["put the tables sharing a feature into the same tower"])
    towers, tower_ebcs, tower_keys, hosts = [], [], [], {}
    for index in order:
        sub = sub_collection([ebc], {c.name for c in by_tower[index]})  # keeps the original output names
        keys = [n for c in by_tower[index] for n in names_by_table[c.name]]
        towers.append(EmbeddingTower(sub, PooledValues(keys)))
        tower_ebcs.append(sub)
        tower_keys += keys
        hosts.update({c.name: hosts_of[index] for c in by_tower[index]})
    tower_widths = _widths([c for i in order for c in by_tower[i]])
    adapter = TowerCollectionAdapter(EmbeddingTowerCollection(towers), tower_keys, tower_widths,
                                     [n for c in configs for n in names_by_table[c.name]], _widths(configs),
                                     ebc.is_weighted())
    return TowerBuild(path, adapter, hosts, tower_ebcs)


class Unreplicated(nn.Module):
    """What `cpu_tower_ddp` returns for a parameter-free interaction: exposes `.module`
    like DDP (the sharded tower collection reads `interaction.module`)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def cpu_tower_ddp(module: nn.Module, *args: Any, device_ids: Any = None, **kwargs: Any) -> nn.Module:
    """DDP as the tower sharder builds it, in a form CPU allows.

    ShardedEmbeddingTowerCollection builds its "hierarchical DDP" with
    device_ids=[device], which DDP refuses for a CPU module; and DDP refuses a module
    without trainable parameters (our interactions just return the embeddings)."""
    if not any(p.requires_grad for p in module.parameters()):
        return Unreplicated(module)
    if device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids):
        device_ids = None
    return DistributedDataParallel(module, *args, device_ids=device_ids, **kwargs)


@contextlib.contextmanager
def _tower_ddp_patched() -> Iterator[None]:
    original = embedding_tower_sharding.DistributedDataParallel
    embedding_tower_sharding.DistributedDataParallel = cpu_tower_ddp
    try:
        yield
    finally:
        embedding_tower_sharding.DistributedDataParallel = original


class CpuEmbeddingTowerCollectionSharder(EmbeddingTowerCollectionSharder):
    """TorchRec's tower sharder, with its intra-host DDP built the way CPU allows.

    Minimal patch: during `shard` only, the name `DistributedDataParallel` in
    torchrec.distributed.embedding_tower_sharding resolves to `cpu_tower_ddp`."""

    def shard(self, *args: Any, **kwargs: Any):
        with _tower_ddp_patched():
            return super().shard(*args, **kwargs)


def _checked_plan(model: nn.Module, topology: Topology, plan: TowerPlan | None) -> TowerPlan:
    if plan is None:  # plan the towers as dmt_fx would
        plan = tower_plan(transform(model, topology))
    if plan.topology and plan.topology != str(topology):
        raise DMTError(f"a tower plan for topology {plan.topology}", f"a plan for {topology}",
                       ["pass the plan made for this topology"])
    bad = [t.index for t in plan.towers if not 0 <= t.host < topology.num_hosts]
    if bad:
        raise DMTError(f"towers {bad} on hosts outside 0..{topology.num_hosts - 1}",
                       "every tower on a host of the topology", ["fix the plan"])
    return plan


def build_towers(model: nn.Module, *, topology: Topology, optimizer_class: type,
                 optimizer_kwargs: Mapping[str, Any], plan: TowerPlan | None = None,
                 ) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """Replace every collection by its tower collection, shard the towers row-wise inside their host."""
    collections = dmp.embedding_collections(model)
    plan = _checked_plan(model, topology, plan)
    builds = [tower_collection(path, ebc, plan) for path, ebc in collections]
    sharder = CpuEmbeddingTowerCollectionSharder(fused_params=dmp.fused_params(optimizer_class, optimizer_kwargs))
    sharding_plan, tables = {}, {}
    for build in builds:
        module_plan = construct_module_sharding_plan(
            build.adapter.towers, {table: table_row_wise(host_index=h) for table, h in build.hosts.items()},
            sharder=sharder, local_size=topology.local_world_size, world_size=topology.world_size,
            device_type=dmp.runtime_device().type)
        for parameter_sharding in module_plan.values():
            parameter_sharding.compute_kernel = dmp.FUSED
        sharding_plan[f"{build.path}.towers"] = module_plan
        tables[f"{build.path}.towers"] = {f"towers.{i}.embedding.{k}": v for i, sub in enumerate(build.tower_ebcs)
                                          for k, v in dmp.table_weights(sub).items()}
        parent, _, name = build.path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, build.adapter)
    return dmp.shard(model, sharding_plan, sharder, tables, optimizer_class, optimizer_kwargs)


register_baseline("torchrec-towers", build_towers, family="towers")
