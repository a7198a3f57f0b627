"""Runtime: lower a logical DMT model to one rank of a (host x local) world.

On rank (h, l), for every embedding collection of the model:
  1. select its features in host order (the order the peer exchange sends them);
  2. peer KJT all-to-all (TorchRec `KJTAllToAll`, cross-host group = ranks with local
     rank l): the rank receives its host's features for H x B samples;
  3. host lookup: the host's tables sharded over its L ranks by TorchRec's sharder
     (`EmbeddingBagCollectionSharder` with an intra-host ShardingEnv); lookup traffic
     stays inside the host;
  4. peer pooled all-to-all back (`PooledEmbeddingsAllToAll`): each rank gets its own B
     rows of every host's output;
  5. merge into the collection's KeyedTensor in the original key order.
The rest of the model runs data-parallel over the world (DDP). One optimizer steps the
dense parameters; TorchRec's fused optimizers update the tables during backward.
The runtime never imports the passes.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import operator
import os
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn as nn
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.fx.graph_module import _copy_attr
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.dist_data import KJTAllToAll, PooledEmbeddingsAllToAll
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan, table_row_wise, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt_fx.ir import ops
from dmt_fx.ir.collections import sub_collection
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.graph import stable_toposort as _toposort
from dmt_fx.ir.result import DMTResult, dmt_result
from dmt_fx.ir.state_dict import KeyRenamer
from dmt_fx.ir.topology import Topology

DIST_ATTR = "dmt_dist"
# TorchRec's default on GPU; asked for explicitly because the CPU default is the DENSE
# kernel, whose tables would need the dense optimizer instead of a fused one.
FUSED = EmbeddingComputeKernel.FUSED.value
SHARDINGS = ("table_wise", "row_wise", "column_wise")
DEFAULT_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("DMT_FX_TIMEOUT_S", "120")))


@dataclasses.dataclass(frozen=True)
class RankInfo:
    rank: int
    topology: Topology

    @property
    def host(self) -> int:
        return self.topology.host_of(self.rank)

    @property
    def local_rank(self) -> int:
        return self.rank % self.topology.local_world_size


# ---------------------------------------------------------------- checks


def check_world(topology: Topology) -> RankInfo:
    """Step 0, on every rank and before any collective: the topology must be the world's."""
    if not dist.is_available() or not dist.is_initialized():
        raise DMTError("torch.distributed is not initialised",
                       "init_process_group() called on every rank before dmt_fx.distribute",
                       ["call torch.distributed.init_process_group('gloo' or 'nccl') first",
                        "or launch with `dmt-fx run`, which does it"])
    world = dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    topology.check_world(world, local)
    return RankInfo(dist.get_rank(), topology)


def _check_model(result: DMTResult) -> None:
    plain = [s.module for s in result.sites.sites if s.kind != "torchrec_ebc"]
    if plain:
        raise DMTError(f"plain PyTorch embedding lookups {plain[:3]}",
                       "TorchRec EmbeddingBagCollections (what TorchRec's sharders shard)",
                       ["express the tables as an EmbeddingBagCollection taking a KeyedJaggedTensor",
                        "plain nn.EmbeddingBag models transform and run in one process"])


# ---------------------------------------------------------------- per-host collections


@dataclasses.dataclass(frozen=True)
class HostSlice:
    """What one host holds of one collection: KJT keys in, embedding names and widths out."""

    keys: tuple[str, ...]
    names: tuple[str, ...]
    widths: tuple[int, ...]


def host_slices(gm: fx.GraphModule, result: DMTResult, site_module: str) -> tuple[list[HostSlice], list]:
    """Per host: the slice of collection `site_module` it owns, and its tower collections."""
    topology = result.topology
    towers_by_host: list[list[EmbeddingBagCollection]] = [[] for _ in range(topology.num_hosts)]
    for tower in result.plan.towers:
        path = f"dmt_towers.tower_{tower.index}.{site_module.replace('.', '__')}"
        try:
            towers_by_host[tower.host].append(gm.get_submodule(path))
        except AttributeError:
            continue  # this tower has no feature of this collection
    slices = []
    for ebcs in towers_by_host:
        keys = tuple(k for ebc in ebcs for c in ebc.embedding_bag_configs() for k in c.feature_names)
        names = tuple(n for ebc in ebcs for n in ebc._embedding_names)
        widths = tuple(w for ebc in ebcs for w in ebc._lengths_per_embedding)
        slices.append(HostSlice(keys, names, widths))
    return slices, towers_by_host


# ---------------------------------------------------------------- sharding inside a host


def _host_sharding_plan(ebc: EmbeddingBagCollection, me: RankInfo, sharding: str, sharder):
    """TorchRec plan for the host's tables over the host's ranks.

    Built with global ranks (ShardedTensor placements need them), then mapped to ranks of
    the intra-host group, as TorchRec's own tower sharding does."""
    topo = me.topology
    first = me.host * topo.local_world_size
    tables = sorted(ebc.embedding_bag_configs(), key=lambda c: -c.num_embeddings * c.embedding_dim)
    load = [0] * topo.local_world_size
    per_table = {}
    for config in tables:
        if sharding == "row_wise":
            per_table[config.name] = table_row_wise(host_index=me.host)
        elif sharding == "column_wise":
            # Columns split evenly over the host's ranks; a width L does not divide stays whole.
            fits = config.embedding_dim % topo.local_world_size == 0
            ranks = [first + r for r in range(topo.local_world_size)] if fits else [first]
            per_table[config.name] = column_wise(ranks=ranks)
        else:  # table_wise: largest table first onto the least loaded rank of the host
            r = min(range(topo.local_world_size), key=lambda i: (load[i], i))
            load[r] += config.num_embeddings * config.embedding_dim
            per_table[config.name] = table_wise(rank=first + r)
    plan = construct_module_sharding_plan(ebc, per_table, sharder=sharder, local_size=topo.local_world_size,
                                          world_size=topo.world_size, device_type=_device().type)
    for parameter_sharding in plan.values():
        parameter_sharding.compute_kernel = FUSED
        if parameter_sharding.sharding_type == ShardingType.TABLE_ROW_WISE.value:
            parameter_sharding.sharding_type = ShardingType.ROW_WISE.value
        parameter_sharding.ranks = [r % topo.local_world_size for r in parameter_sharding.ranks or []]
    return plan


def _copy_into_shards(sharded_state: Mapping[str, Any], full_state: Mapping[str, torch.Tensor]) -> None:
    """Start the shards from the logical model's tables (equal initial weights)."""
    with torch.no_grad():
        for key, value in sharded_state.items():
            source = full_state[key]
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    (r, c), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(source[r:r + nr, c:c + nc])
            else:
                value.copy_(source)


def fused_params(optimizer_class: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """TorchRec's fused embedding optimizer matching the dense one."""
    lr = kwargs.get("lr", 1e-3)
    if optimizer_class is torch.optim.SGD and not kwargs.get("momentum") and not kwargs.get("weight_decay"):
        return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": lr}
    if optimizer_class is torch.optim.Adagrad:
        return {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": lr, "eps": kwargs.get("eps", 1e-10)}
    if optimizer_class is torch.optim.Adam:
        betas = kwargs.get("betas", (0.9, 0.999))
        return {"optimizer": EmbOptimType.ADAM, "learning_rate": lr, "eps": kwargs.get("eps", 1e-8),
                "beta1": betas[0], "beta2": betas[1], "weight_decay": kwargs.get("weight_decay", 0.0)}
    raise DMTError(f"optimizer {optimizer_class.__name__} with {dict(kwargs)}",
                   "torch.optim.SGD (no momentum), Adagrad or Adam: the ones TorchRec fuses into embeddings",
                   ["use one of those optimizers"])


def _non_persistent(module: nn.Module) -> None:
    """TorchRec's split-size buffers are runtime state, not part of the model: keep them out
    of state_dict so checkpoints match the original model's keys."""
    module._non_persistent_buffers_set.update(name for name, _ in module.named_buffers(recurse=False))


class HostLookup(nn.Module):
    """SPTT steps 2-3 for one collection on this rank: peer ids in, host lookup.

    Returns the host's pooled embeddings for H x B samples, in the host's canonical order."""

    def __init__(self, slices: list[HostSlice], lookup: nn.Module | None,
                 peer_group: dist.ProcessGroup, me: RankInfo) -> None:
        super().__init__()
        self.slices, self.me = slices, me
        self.input_dist = KJTAllToAll(peer_group, [len(s.keys) for s in slices])
        _non_persistent(self.input_dist)
        self.lookup = lookup
        self.keys = tuple(k for s in slices for k in s.keys)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        local_batch = kjt.stride()
        received = self.input_dist(ops.select_features(kjt, self.keys)).wait().wait()
        if self.lookup is None:  # this host owns no table of the collection: empty rows
            return torch.empty(local_batch * self.me.topology.num_hosts, 0, device=kjt.device())
        pooled = self.lookup(received)
        pooled = pooled.wait() if hasattr(pooled, "wait") else pooled
        # The sharded lookup orders its output by shard placement; peers expect the host's
        # canonical order.
        return ops.merge_keyed_tensors((pooled,), self.slices[self.me.host].names).values()


def _output_dist(peer_group: dist.ProcessGroup, widths: list[int]) -> PooledEmbeddingsAllToAll:
    dist_module = PooledEmbeddingsAllToAll(peer_group, widths, device=_device())
    _non_persistent(dist_module)
    return dist_module


class HostTowerExchange(nn.Module):
    """Identity tower modules: one collection's host lookup, then its rows back to the peers
    (SPTT step 5); returns the collection's KeyedTensor for the local batch."""

    def __init__(self, host_lookup: HostLookup, peer_group: dist.ProcessGroup) -> None:
        super().__init__()
        slices = host_lookup.slices
        self.host_lookup = host_lookup
        self.output_dist = _output_dist(peer_group, [sum(s.widths) for s in slices])
        self.names = [n for s in slices for n in s.names]
        self.widths = [w for s in slices for w in s.widths]

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        rows = self.output_dist(self.host_lookup(kjt)).wait()
        return KeyedTensor(keys=self.names, length_per_key=self.widths, values=rows)


class HostTowerBlock(nn.Module):
    """Compressing tower modules: every collection's host lookup, the host's tower module
    (data-parallel inside the host), and only its output across hosts.

    Returns one (B, out_width) tensor per host, in host order."""

    def __init__(self, host_lookups: list[HostLookup], tower_module: nn.Module | None, out_widths: list[int],
                 peer_group: dist.ProcessGroup, me: RankInfo) -> None:
        super().__init__()
        self.host_lookups = nn.ModuleList(host_lookups)
        self.tower_module = tower_module
        self.out_widths, self.me = out_widths, me
        self.output_dist = _output_dist(peer_group, out_widths)

    def forward(self, *kjts: KeyedJaggedTensor) -> tuple[torch.Tensor, ...]:
        # Columns in tower order: collections in model order, features in table order.
        x = torch.cat([lookup(kjt) for lookup, kjt in zip(self.host_lookups, kjts)], dim=1)
        if self.tower_module is None:
            y = torch.empty(x.shape[0], 0, device=x.device)
        else:
            y = self.tower_module(x)[0]
        rows = self.output_dist(y).wait()
        return tuple(rows.split(self.out_widths, dim=1))


def _device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------- lowering


@dataclasses.dataclass
class _Lowered:
    module: fx.GraphModule
    fused: list
    sharded_prefixes: list[str]


def _lower(gm: fx.GraphModule, result: DMTResult, me: RankInfo, groups, sharding: str, fused: dict) -> _Lowered:
    physical = fx.GraphModule(gm, _copy_graph(gm), class_name="DMTRankModule")
    _copy_missing_state(gm, physical)
    renames, optimizers = {}, []
    lookups = [_host_lookup(gm, result, me, groups, sharding, fused, site, index, renames, optimizers)
               for index, site in enumerate(result.sites.sites)]
    if result.plan.changes_model:
        _lower_tower_modules(gm, physical, result, me, groups, lookups, renames)
    else:
        for index, (site, lookup) in enumerate(zip(result.sites.sites, lookups)):
            path = f"{DIST_ATTR}.collection_{index}"
            physical.add_submodule(path, HostTowerExchange(lookup, groups["host"]))
            _rewire_site(physical.graph, site.node, path)
    physical.graph.eliminate_dead_code()
    for attr in ("dmt_towers", "dmt_tower_modules"):
        if hasattr(physical, attr):
            delattr(physical, attr)
    physical.recompile()
    physical.register_state_dict_post_hook(KeyRenamer(renames, list(gm.state_dict().keys())))
    physical.register_load_state_dict_pre_hook(KeyRenamer({v: k for k, v in renames.items()}))
    return _Lowered(physical, optimizers, [DIST_ATTR])


def _host_lookup(gm, result, me, groups, sharding, fused, site, index, renames, optimizers) -> HostLookup:
    """This host's slice of collection `site`, sharded over the host's ranks by TorchRec."""
    slices, towers_by_host = host_slices(gm, result, site.module)
    mine = towers_by_host[me.host]
    lookup = None
    if mine:
        host_ebc = sub_collection(mine)
        sharder = EmbeddingBagCollectionSharder(fused_params=fused)
        # The sharder itself, as TorchRec's tower sharding does: DMP cannot be a submodule
        # (its state_dict re-prefixes every key of a shared destination).
        lookup = sharder.shard(host_ebc, _host_sharding_plan(host_ebc, me, sharding, sharder),
                               ShardingEnv.from_process_group(groups["local"]), _device())
        _copy_into_shards(lookup.state_dict(), host_ebc.state_dict())
        optimizers.append((f"collection_{index}", lookup.fused_optimizer))
        path = _lookup_path(index, result.plan.changes_model)
        for name in host_ebc.embedding_bags:
            renames[f"{path}.lookup.embedding_bags.{name}"] = f"{site.module}.embedding_bags.{name}"
    return HostLookup(slices, lookup, groups["host"], me)


def _lookup_path(index: int, compressing: bool) -> str:
    return f"{DIST_ATTR}.towers.host_lookups.{index}" if compressing else f"{DIST_ATTR}.collection_{index}.host_lookup"


def _lower_tower_modules(gm, physical, result, me, groups, lookups, renames) -> None:
    """One HostTowerBlock for all collections; each tower output reads its slice."""
    hosts = [t.host for t in result.plan.towers]
    if len(set(hosts)) != len(hosts):
        raise DMTError(f"towers on hosts {hosts}", "one tower per host for distributed tower modules",
                       ["use the default plan (one tower per host)"])
    tower_on = {t.host: t.index for t in result.plan.towers}
    widths = [0] * result.topology.num_hosts
    for name, module in gm.named_modules():
        if name.startswith("dmt_tower_modules.tower_") and name.count(".") == 1:
            tower = int(name.rpartition("_")[2])
            widths[result.plan.towers[tower].host] = module.spec.out_width
    module = None
    if me.host in tower_on:
        logical = f"dmt_tower_modules.tower_{tower_on[me.host]}"
        module = gm.get_submodule(logical)
        if any(p.requires_grad for p in module.parameters()):
            # Data-parallel inside the host: the host's ranks see different rows.
            module = DistributedDataParallel(module, process_group=groups["local"],
                                             device_ids=None if _device().type == "cpu" else [_device()])
            renames[f"{DIST_ATTR}.towers.tower_module.module"] = logical
        else:
            renames[f"{DIST_ATTR}.towers.tower_module"] = logical
    physical.add_submodule(f"{DIST_ATTR}.towers", HostTowerBlock(lookups, module, widths, groups["host"], me))
    graph = physical.graph
    kjts = [next(n for n in graph.nodes if n.meta.get("dmt", {}).get("role") == "select_features"
                 and n.meta["dmt"].get("origin") == site.node).args[0] for site in result.sites.sites]
    outputs = [n for n in graph.nodes if n.meta.get("dmt", {}).get("role") == "tower_output"]
    with graph.inserting_before(outputs[0]):
        block = graph.call_module(f"{DIST_ATTR}.towers", tuple(kjts))
        block.meta["dmt"] = {"pass": "distribute", "role": "host_tower_block"}
    for out in outputs:
        host = result.plan.towers[out.meta["dmt"]["tower"]].host
        with graph.inserting_before(out):
            item = graph.call_function(operator.getitem, (block, host))
        item.meta["dmt"] = {**out.meta["dmt"], "pass": "distribute"}
        out.replace_all_uses_with(item)
    _toposort(graph)


def _copy_missing_state(gm: fx.GraphModule, physical: fx.GraphModule) -> None:
    """Parameters forward() never reads are not copied by GraphModule(); keep them."""
    def names(m: nn.Module) -> list[str]:
        return [n for n, _ in itertools.chain(m.named_parameters(remove_duplicate=False),
                                              m.named_buffers(remove_duplicate=False))]
    have = set(names(physical))
    for name in names(gm):
        if name not in have and not name.startswith(("dmt_towers.", "dmt_tower_modules.")):
            _copy_attr(gm, physical, name)


def _copy_graph(gm: fx.GraphModule) -> fx.Graph:
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    graph._codegen = gm.graph._codegen
    for old, new in zip(gm.graph.nodes, graph.nodes):
        new.meta = dict(old.meta)
    return graph


def _rewire_site(graph: fx.Graph, site_node: str, path: str) -> None:
    """Replace the logical per-tower block of one collection by its physical exchange."""
    merge = next(n for n in graph.nodes
                 if n.meta.get("dmt", {}).get("role") == "merge" and n.meta["dmt"].get("origin") == site_node)
    select = next(n for n in graph.nodes
                  if n.meta.get("dmt", {}).get("role") == "select_features" and n.meta["dmt"].get("origin") == site_node)
    with graph.inserting_before(merge):
        exchange = graph.call_module(path, (select.args[0],))
        exchange.meta["dmt"] = {"pass": "distribute", "role": "host_tower_exchange", "origin": site_node}
        merged = graph.call_function(ops.merge_keyed_tensors, ((exchange,), merge.args[1]))
        merged.meta["dmt"] = {"pass": "distribute", "role": "merge", "origin": site_node}
    merge.replace_all_uses_with(merged)


# ---------------------------------------------------------------- public API


class DistributedDMT(nn.Module):
    """This rank's DMT model: takes the rank's local batch, returns its local outputs.

    `state_dict()` uses the original model's keys (tables as ShardedTensors), so
    torch.distributed.checkpoint files load into the original model and back."""

    def __init__(self, ddp: DistributedDataParallel, rank_info: RankInfo) -> None:
        super().__init__()
        self.ddp = ddp
        self.rank_info = rank_info

    @property
    def physical(self) -> fx.GraphModule:
        return self.ddp.module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any):
        return self.physical.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return self.physical.load_state_dict(state_dict, strict=strict, assign=assign)


def host_and_peer_groups(topo: Topology, timeout: datetime.timedelta) -> dict[str, dist.ProcessGroup]:
    """The intra-host group ("local") and the cross-host peer group ("host") of this rank.

    The groups of a ("host", "local") DeviceMesh, built explicitly: `new_group` would give them
    torch's 30-minute default timeout instead of the job's, and a stuck peer would hang."""
    hosts, local = topo.num_hosts, topo.local_world_size
    intra, _ = dist.new_subgroups_by_enumeration([topo.intra_host_ranks(h) for h in range(hosts)], timeout=timeout)
    peer, _ = dist.new_subgroups_by_enumeration([topo.peer_ranks(r) for r in range(local)], timeout=timeout)
    return {"local": intra, "host": peer}


def distribute(module: fx.GraphModule, *, optimizer_class: type = torch.optim.SGD,
               optimizer_kwargs: Mapping[str, Any] | None = None, sharding: str = "table_wise",
               timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> tuple[DistributedDMT, CombinedOptimizer]:
    """Run the output of `transform` on this rank; call on every rank after init_process_group.

    Takes ownership of `module`: the dense parameters are trained in place."""
    result = dmt_result(module)
    me = check_world(result.topology)
    _check_model(result)
    if sharding not in SHARDINGS:
        raise DMTError(f"sharding={sharding!r}", f"one of {SHARDINGS}", ["pick a supported sharding type"])
    kwargs = dict(optimizer_kwargs or {})
    fused = fused_params(optimizer_class, kwargs)
    topo = result.topology
    groups = host_and_peer_groups(topo, timeout)
    lowered = _lower(module, result, me, groups, sharding, fused)
    ignored = [n for n, _ in list(lowered.module.named_parameters()) + list(lowered.module.named_buffers())
               if n.startswith(DIST_ATTR + ".")]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(lowered.module, ignored)
    ddp = DistributedDataParallel(lowered.module, device_ids=None if _device().type == "cpu" else [_device()],
                                  broadcast_buffers=False)
    # Everything but the sharded tables (updated by their fused optimizers): the dense layers
    # and the tower modules.
    dense = {n: p for n, p in lowered.module.named_parameters() if ".lookup." not in n and p.requires_grad}
    optimizers = [("dense", KeyedOptimizerWrapper(dense, lambda ps: optimizer_class(ps, **kwargs)))]
    optimizer = CombinedOptimizer(optimizers + lowered.fused)
    return DistributedDMT(ddp, me), optimizer
