"""Every private name of torch, TorchRec and Python that dmt_fx relies on (dmt_fx/_compat) still
exists with the shape we rely on. One check per entry of `dmt_fx._compat.__all__`; a failure
names the release, the private name, the entry that uses it and why, and points to
docs/compat.md (how to upgrade). Quick: a world of one gloo process at most, no model built.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn as nn
import torchrec
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.distributed.dist_data import PooledEmbeddingsAllToAll
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

import dmt_fx._compat as compat

COMPAT = Path(compat.__file__).parent
VERSIONS = {"torch": torch.__version__, "torchrec": torchrec.__version__, "python": sys.version.split()[0]}


@dataclasses.dataclass(frozen=True)
class Check:
    entry: str  # the name in dmt_fx._compat
    library: str  # torch | torchrec | python
    private: str  # what it reads or overrides
    why: str
    probe: Callable[[], None]  # raises (or asserts) when the name is gone or changed


def _defined_in() -> dict[str, str]:
    """Entry name -> the _compat file that defines it (read from the source)."""
    where = {}
    for path in sorted(COMPAT.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = ([t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign)
                     else [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [])
            where.update((name, f"dmt_fx/_compat/{path.name}") for name in names)
    return where


@pytest.fixture(scope="module")
def world_of_one():
    """A real gloo world of one process (what ShardedTensor and the collectives need)."""
    if dist.is_initialized():
        yield dist.group.WORLD
        return
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _ebc() -> EmbeddingBagCollection:
    """Two tables, both reading feature "f": TorchRec renames its outputs f@t0 and f@t1."""
    return EmbeddingBagCollection([EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=10, feature_names=["f", "g"]),
                                   EmbeddingBagConfig(name="t1", embedding_dim=2, num_embeddings=10, feature_names=["f"])])


def _kjt(weighted: bool = False) -> KeyedJaggedTensor:
    values = torch.tensor([1, 2, 3, 4, 5, 6])
    return KeyedJaggedTensor.from_lengths_sync(["f", "g", "h"], values, torch.tensor([1, 0, 2, 1, 1, 1]),
                                               weights=torch.rand(6) if weighted else None)


# ---------------------------------------------------------------- torch core


def _pytree() -> None:
    spec = compat.pytree.tree_flatten({"a": (1, 2)})[1]
    assert compat.pytree.tree_leaves({"a": (1, 2)}) == [1, 2] and spec.num_leaves == 2
    assert dict in compat.pytree.SUPPORTED_NODES and callable(compat.pytree.register_pytree_node)
    assert compat.pytree.MappingKey("a").key == "a" and compat.pytree.tree_map(lambda x: x + 1, [1]) == [2]


def _dispatch_mode() -> None:
    class Count(compat.TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))
    with Count() as mode:
        torch.ones(2) + 1
    assert "aten.add.Tensor" in mode.seen, mode.seen


def _subclasses(base: str, *classes: type) -> Callable[[], None]:
    def probe() -> None:
        assert all(issubclass(c, getattr(compat, base)) for c in classes)
    return probe


def _op_names(entry: str, *names: str) -> Callable[[], None]:
    def probe() -> None:
        ops = getattr(compat, entry)
        ops = ops if isinstance(ops, tuple) else (ops,)
        assert [op.name() if hasattr(op, "name") else op.__name__ for op in ops] == list(names)
    return probe


def _module_dict(entry: str, key: str) -> Callable[[], None]:
    def probe() -> None:
        m = nn.Sequential(nn.Linear(2, 2))
        m.register_buffer("b", torch.zeros(1))
        owner = m[0] if entry == "module_parameters" else m
        assert list(getattr(compat, entry)(owner))[:1] == [key]
    return probe


def _set_module_dicts() -> None:
    clone = nn.Sequential()
    compat.set_module_dicts(clone, {}, {"b": torch.ones(1)}, {"0": nn.Linear(2, 3)})
    assert [n for n, _ in clone.named_buffers()] == ["b"] and clone(torch.ones(1, 2)).shape == (1, 3)


def _non_persistent() -> None:
    m = nn.Module()
    m.register_buffer("kept", torch.zeros(1))
    m.register_buffer("dropped", torch.zeros(1), persistent=False)
    assert compat.non_persistent_buffers(m) == {"dropped"}
    compat.non_persistent_buffers(m).add("kept")
    assert list(m.state_dict()) == []


def _state_dict_hooks() -> None:
    m, calls = nn.Linear(1, 1), []

    def hook(module, state, prefix, local_metadata):
        calls.append((module, prefix))
        state[prefix + "extra"] = torch.ones(1)
    compat.register_state_dict_post_hook(m, hook)
    assert "extra" in m.state_dict() and calls == [(m, "")]
    assert hook in compat.state_dict_hooks(m).values()


def _in_backward() -> None:
    seen = []
    x = torch.ones(1, requires_grad=True)
    x.register_hook(lambda g: seen.append(compat.in_backward()))
    (x * 2).sum().backward()
    assert seen == [True] and not compat.in_backward()


def _op_arguments() -> None:
    names = compat.op_argument_names(torch.ops.aten.embedding_bag.padding_idx)
    assert names[:4] == ["weight", "indices", "offsets", "scale_grad_by_freq"] and "per_sample_weights" in names


# ---------------------------------------------------------------- torch.distributed


def _sharded_tensor(group) -> None:
    md = compat.ShardMetadata([0, 0], [2, 3], "rank:0/cpu")
    props = compat.TensorProperties(dtype=torch.float32)
    global_md = compat.ShardedTensorMetadata([md], torch.Size([2, 3]), props)
    value = compat.sharded_from_local_shards([compat.Shard(torch.ones(2, 3), md)], global_md, process_group=group)
    assert isinstance(value, compat.ShardedTensor) and value.local_shards()[0].tensor.sum() == 6
    assert compat.sharded_group(value) is group
    again = compat.sharded_from_local_shards([compat.Shard(torch.ones(2, 3), md)], global_md)  # the world's
    assert compat.sharded_group(again) is not None


def _resolve_group(group) -> None:
    assert compat.resolve_process_group(group.group_name) is group


def _all_groups(group) -> None:
    assert group in compat.all_process_groups()


def _ddp_ignore() -> None:
    m = nn.Linear(1, 1)
    compat.ddp_ignore(m, ["weight"])
    assert m.weight._ddp_ignored and not hasattr(m.bias, "_ddp_ignored")


def _funcol() -> None:
    funcol, autograd = compat.functional_collective_namespaces()
    assert all(hasattr(funcol, op) for op in ("all_reduce", "all_gather_into_tensor", "all_to_all_single",
                                              "reduce_scatter_tensor"))
    assert hasattr(autograd, "all_to_all_single")


# ---------------------------------------------------------------- torch.fx


def _qualified_name() -> None:
    assert compat.qualified_name(torch.relu) == "torch.relu"


def _copy_attr() -> None:
    source, target = nn.Module(), nn.Module()
    source.inner = nn.Linear(1, 1)
    compat.copy_attr(source, target, "inner.weight")
    assert target.inner.weight is source.inner.weight


def _graph_root() -> None:
    graph = fx.Graph()
    node = graph.placeholder("x")
    assert compat.graph_root(graph).op == "root" and compat.graph_root(graph).next is node


def _exported() -> fx.GraphModule:
    """A GraphModule with a pytree code generator, as torch.export's module() has (without the
    seconds an export takes)."""
    from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
    gm = fx.symbolic_trace(nn.Linear(2, 2))
    spec = compat.pytree.tree_flatten(((torch.ones(1, 2),), {}))[1]
    gm.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(["input"], spec, compat.pytree.tree_flatten(torch.ones(1))[1]))
    return gm


def _codegen() -> None:
    exported = _exported()
    target = fx.Graph()
    compat.copy_codegen(exported.graph, target)
    assert target._codegen is exported.graph._codegen
    target = fx.Graph()
    compat.plain_tuple_output(exported.graph, target)
    info, kept = target._codegen.pytree_info, exported.graph._codegen.pytree_info
    assert info.out_spec is None and info.in_spec == kept.in_spec and info.orig_args == kept.orig_args


def _wrapped_call() -> None:
    gm = fx.symbolic_trace(nn.ReLU())
    call = compat.graph_module_call(type(gm))
    assert call is not None

    class Counting:  # an object, not a function: the class attribute must not bind to the module
        calls: list = []

        def __call__(self, module, *args, **kwargs):
            self.calls.append(module)
            return call(module, *args, **kwargs)
    compat.set_graph_module_call(type(gm), Counting())
    assert torch.equal(gm(torch.tensor([-1.0])), torch.tensor([0.0])) and Counting.calls == [gm]
    gm.recompile()  # the class keeps it when the graph is recompiled
    gm(torch.ones(1))
    assert Counting.calls == [gm, gm]


# ---------------------------------------------------------------- torchrec


def _ebc_field(entry: str, want: Callable[[KeyedTensor], object]) -> Callable[[], None]:
    """`entry(ebc)` is what the collection's forward (or its config) says it is."""
    def probe() -> None:
        ebc = _ebc()
        assert getattr(compat, entry)(ebc) == want(ebc(_kjt()))
    return probe


def _ebc_filled() -> None:
    ebc, out = _ebc(), EmbeddingBagCollection([])
    out.embedding_bags = ebc.embedding_bags
    compat.set_ebc_fields(out, ebc.embedding_bag_configs(), [["f", "g"], ["f"]], [4, 4, 2], ["f@t0", "g", "f@t1"])
    assert torch.equal(out(_kjt()).values(), ebc(_kjt()).values())
    compat.set_ebc_embedding_names(out, ["a", "b", "c"])
    assert out(_kjt()).keys() == ["a", "b", "c"]


def _ec_filled() -> None:
    config = EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"])
    ec, out = EmbeddingCollection([config]), EmbeddingCollection([])
    out.embeddings = ec.embeddings
    compat.set_ec_fields(out, [config], 4, [["f"]], [["f"]])
    assert out.embedding_dim() == 4 and out.embedding_names_by_table() == [["f"]]
    assert torch.equal(out(_kjt())["f"].values(), ec(_kjt())["f"].values())


def _crossnet() -> None:
    assert compat.crossnet_shape(LowRankCrossNet(8, 3, 2)) == (3, 2)
    assert compat.crossnet_shape(nn.Linear(1, 1)) is None


def _codecs(group) -> None:
    module = PooledEmbeddingsAllToAll(group, [4])
    compat.set_all_to_all_codecs(module, "codecs")
    assert module._codecs == "codecs" and "codecs=self._codecs" in inspect.getsource(PooledEmbeddingsAllToAll.forward)


def _shardings() -> None:
    assert "self._embedding_shardings" in inspect.getsource(ShardedEmbeddingBagCollection.__init__)
    assert compat.embedding_shardings(nn.Linear(1, 1)) is None


def _table_wise_on_one_rank(group, ebc: EmbeddingBagCollection) -> nn.Module:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
    from torchrec.distributed.types import ShardingEnv

    sharder = EmbeddingBagCollectionSharder()
    plan = construct_module_sharding_plan(ebc, {t: table_wise(rank=0) for t in ebc.embedding_bags},
                                          local_size=1, world_size=1, device_type="cpu", sharder=sharder)
    return sharder.shard(ebc, plan, ShardingEnv.from_process_group(group), torch.device("cpu"))


def _solo(group) -> None:
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=10, feature_names=["f", "g"]),
                                  EmbeddingBagConfig(name="t1", embedding_dim=2, num_embeddings=10, feature_names=["h"])])
    sharded = _table_wise_on_one_rank(group, ebc)
    features, names, dims = compat.solo_layout(sharded)
    kjt = KeyedJaggedTensor.from_lengths_sync(features, torch.tensor([1, 2, 3, 4, 5, 6]),
                                              torch.tensor([1, 0, 2, 1, 1, 1]))
    through_dists = sharded(kjt).wait()  # TorchRec's input dist, lookup, output dist
    assert (names, dims) == (through_dists.keys(), through_dists.length_per_key())
    assert torch.equal(compat.solo_pooled(sharded, kjt), through_dists.values())
    assert compat.solo_layout(_table_wise_on_one_rank(group, _ebc())) is None  # "f" read by two tables


def _pipeline() -> None:
    assert "self._pipelined_modules" in inspect.getsource(TrainPipelineSparseDist.__init__)
    holder = type("P", (), {"_pipelined_modules": ["m"]})()
    assert compat.pipelined_modules(holder) == ["m"]


def _staged_pipeline() -> None:
    """progress() calls the two private steps the staged pipeline wraps; each runs in its stage."""
    source = inspect.getsource(TrainPipelineSparseDist.progress)
    assert "self._backward(" in source and "self._optimizer_step(" in source
    assert list(inspect.signature(TrainPipelineSparseDist._backward).parameters) == ["self", "losses"]
    assert list(inspect.signature(TrainPipelineSparseDist._optimizer_step).parameters) == ["self"]
    entered = []

    class Recording(compat.StagedTrainPipeline):
        def stage(self, name):
            entered.append(name)
            return super().stage(name)
    pipeline = Recording.__new__(Recording)
    pipeline.contexts = []
    x = torch.ones(2, requires_grad=True)
    pipeline._backward((x * 3).sum().unsqueeze(0))
    assert entered == ["backward"] and torch.equal(x.grad, torch.full((2,), 3.0))


def _dmp_collection() -> None:
    """CpuDMPCollection reruns DMPCollection.__init__: the members it sets and the methods it calls."""
    import inspect as _inspect

    from torchrec.distributed.model_parallel import DMPCollection

    init = _inspect.getsource(DMPCollection.__init__)
    for member in ("_device", "_pg", "_global_rank", "_custom_all_reduce", "_sharder_map", "_default_ctx",
                   "_submodule_ctxs", "_ctxs", "_use_sharded_relay", "_sharded_relay_state"):
        assert f"self.{member}" in init, member
    calls = {"_create_process_groups": ["self", "global_rank", "world_size", "local_size", "use_inter_host_allreduce"],
             "_remap_sharding_plan": ["self", "plan", "rank", "step", "sharding_group_size", "use_inter_host_allreduce"],
             "_group_sharded_modules": None, "_cache_sync_tensors": None}
    for name, params in calls.items():
        method = getattr(DMPCollection, name)
        if params is not None:
            assert list(_inspect.signature(method).parameters)[:len(params)] == params, name
    assert "_custom_all_reduce" in _inspect.getsource(DMPCollection), "sync() no longer takes the custom all-reduce"


def _tower_features() -> None:
    """The lazy tower KJT: what permute returns, through every field KJT's methods read."""
    assert set(compat.torchrec_lazy.KJT_LAZY_FIELDS) <= set(vars(_kjt()))
    for weighted in (False, True):
        kjt = _kjt(weighted)
        got, want = compat.tower_features(kjt, (2, 0), ["h", "f"]), kjt.permute([2, 0])
        assert got.keys() == want.keys() and got.stride() == want.stride()
        assert torch.equal(got.values(), want.values()) and torch.equal(got.lengths(), want.lengths())
        assert (got.weights_or_none() is None) == (not weighted)
        assert not weighted or torch.equal(got.weights(), want.weights())
        assert got.length_per_key() == want.length_per_key() and got.offset_per_key() == want.offset_per_key()


def _lazy_keyed() -> None:
    """The lazy KeyedTensors: `_values` filled on first read, as KeyedTensor's methods read it."""
    a, b = torch.randn(2, 3), torch.randn(2, 1)
    parts = [KeyedTensor(["x", "z"], [1, 2], a), KeyedTensor(["y"], [1], b)]
    merged = compat.merged_keyed_tensor(parts, ["x", "y", "z"], [1, 1, 2], [(0, 0, 1), (1, 0, 1), (0, 1, 3)])
    assert torch.equal(merged.to_dict()["z"], a[:, 1:]) and merged.device() == a.device
    assert torch.equal(merged.values(), torch.cat([a[:, :1], b, a[:, 1:]], dim=1))
    pooled = compat.pooled_keyed_tensor(["p", "q"], [3, 1], [a, b])
    assert torch.equal(pooled.to_dict()["q"], b) and torch.equal(pooled.values(), torch.cat([a, b], dim=1))
    assert pooled.length_per_key() == [3, 1] and pooled.offset_per_key() == [0, 3, 4]


def _exit() -> None:
    assert callable(os._exit) and compat.exit_now.__module__ == "dmt_fx._compat.python"


CHECKS = [
    Check("pytree", "torch", "torch.utils._pytree", "flattening batches and outputs", _pytree),
    Check("TorchDispatchMode", "torch", "torch.utils._python_dispatch.TorchDispatchMode", "counting ops", _dispatch_mode),
    Check("ConvNd", "torch", "torch.nn.modules.conv._ConvNd", "telling dense layers from tables",
          _subclasses("ConvNd", nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)),
    Check("DropoutNd", "torch", "torch.nn.modules.dropout._DropoutNd", "finding mode-dependent modules",
          _subclasses("DropoutNd", nn.Dropout, nn.Dropout2d, nn.AlphaDropout)),
    Check("NormBase", "torch", "torch.nn.modules.batchnorm._NormBase", "finding mode-dependent modules",
          _subclasses("NormBase", nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d)),
    Check("EMBEDDING_BAG_OP", "torch", "aten._embedding_bag", "finding lookups in exported graphs",
          _op_names("EMBEDDING_BAG_OP", "aten::_embedding_bag")),
    Check("ASSERT_OPS", "torch", "torch._assert, aten._assert_scalar/_assert_tensor_metadata",
          "ignoring export's checks", _op_names("ASSERT_OPS", "_assert", "aten::_assert_scalar",
                                                "aten::_assert_tensor_metadata")),
    Check("BATCH_NORM_LEGIT_OPS", "torch", "aten._native_batch_norm_legit(_functional)", "refusing fixed-mode ops",
          _op_names("BATCH_NORM_LEGIT_OPS", "aten::_native_batch_norm_legit",
                    "aten::_native_batch_norm_legit_functional")),
    Check("module_parameters", "torch", "nn.Module._parameters", "shallow copies, persistence",
          _module_dict("module_parameters", "weight")),
    Check("module_buffers", "torch", "nn.Module._buffers", "shallow copies, persistence",
          _module_dict("module_buffers", "b")),
    Check("module_children", "torch", "nn.Module._modules", "shallow copies, releasing DDP",
          _module_dict("module_children", "0")),
    Check("set_module_dicts", "torch", "nn.Module._parameters/_buffers/_modules", "shallow copies",
          _set_module_dicts),
    Check("non_persistent_buffers", "torch", "nn.Module._non_persistent_buffers_set", "state_dict keys",
          _non_persistent),
    Check("register_state_dict_post_hook", "torch", "nn.Module._register_state_dict_hook", "trimmed tables",
          _state_dict_hooks),
    Check("state_dict_hooks", "torch", "nn.Module._state_dict_hooks", "trimmed tables", _state_dict_hooks),
    Check("in_backward", "torch", "torch._C._current_graph_task_id", "traffic per phase", _in_backward),
    Check("op_argument_names", "torch", "OpOverload._schema", "binding an exported lookup's args", _op_arguments),
    Check("ShardedTensor", "torch", "torch.distributed._shard.sharded_tensor", "checkpoints", _sharded_tensor),
    Check("Shard", "torch", "torch.distributed._shard.sharded_tensor.Shard", "checkpoints", _sharded_tensor),
    Check("ShardMetadata", "torch", "torch.distributed._shard.metadata", "checkpoints", _sharded_tensor),
    Check("ShardedTensorMetadata", "torch", "torch.distributed._shard.sharded_tensor", "checkpoints", _sharded_tensor),
    Check("TensorProperties", "torch", "torch.distributed._shard.sharded_tensor", "checkpoints", _sharded_tensor),
    Check("sharded_from_local_shards", "torch", "ShardedTensor._init_from_local_shards_and_global_metadata",
          "checkpoints without a collective", _sharded_tensor),
    Check("sharded_group", "torch", "ShardedTensor._process_group", "trimmed and dense tables", _sharded_tensor),
    Check("resolve_process_group", "torch", "distributed_c10d._resolve_process_group", "funcol group names",
          _resolve_group),
    Check("all_process_groups", "torch", "distributed_c10d._world.pg_map", "releasing groups at exit", _all_groups),
    Check("ddp_ignore", "torch", "DistributedDataParallel._set_params_and_buffers_to_ignore_for_model",
          "keeping sharded tables out of DDP", _ddp_ignore),
    Check("functional_collective_namespaces", "torch", "torch.ops._c10d_functional(_autograd)", "traffic counts",
          _funcol),
    Check("qualified_name", "torch", "torch.fx.node._get_qualified_name", "the report's op names", _qualified_name),
    Check("copy_attr", "torch", "torch.fx.graph_module._copy_attr", "keeping unread parameters", _copy_attr),
    Check("graph_root", "torch", "fx.Graph._root", "stable_toposort", _graph_root),
    Check("copy_codegen", "torch", "fx.Graph._codegen", "copying exported graphs", _codegen),
    Check("plain_tuple_output", "torch", "torch.fx.graph._PyTreeCodeGen", "the pipeline's sparse prologue", _codegen),
    Check("graph_module_call", "torch", "GraphModule._wrapped_call", "LookupGuard", _wrapped_call),
    Check("set_graph_module_call", "torch", "GraphModule._wrapped_call", "LookupGuard", _wrapped_call),
    Check("ebc_embedding_names", "torchrec", "EmbeddingBagCollection._embedding_names", "output key order",
          _ebc_field("ebc_embedding_names", lambda out: out.keys())),
    Check("ebc_lengths_per_embedding", "torchrec", "EmbeddingBagCollection._lengths_per_embedding",
          "output widths", _ebc_field("ebc_lengths_per_embedding", lambda out: out.length_per_key())),
    Check("ebc_feature_names", "torchrec", "EmbeddingBagCollection._feature_names", "pooled columns",
          _ebc_field("ebc_feature_names", lambda out: [["f", "g"], ["f"]])),
    Check("collection_device", "torchrec", "EmbeddingBagCollection._device", "sliced collections",
          _ebc_field("collection_device", lambda out: out.values().device)),
    Check("set_ebc_fields", "torchrec", "EmbeddingBagCollection's fields", "sliced collections", _ebc_filled),
    Check("set_ebc_embedding_names", "torchrec", "EmbeddingBagCollection._embedding_names", "padded tables",
          _ebc_filled),
    Check("set_ec_fields", "torchrec", "EmbeddingCollection's fields", "sliced sequence collections", _ec_filled),
    Check("crossnet_shape", "torchrec", "LowRankCrossNet._num_layers/_low_rank", "DCN interactions", _crossnet),
    Check("set_all_to_all_codecs", "torchrec", "PooledEmbeddingsAllToAll._codecs", "quantized comms", _codecs),
    Check("embedding_shardings", "torchrec", "ShardedEmbeddingBagCollection._embedding_shardings",
          "the lookup's feature order", _shardings),
    Check("solo_layout", "torchrec", "ShardedEmbeddingBagCollection._sharding_types/_env/_lookups/"
          "_has_mean_pooling_callback/_embedding_names/_embedding_dims", "hosts of one rank", _solo),
    Check("solo_pooled", "torchrec", "ShardedEmbeddingBagCollection._lookups", "hosts of one rank", _solo),
    Check("pipelined_modules", "torchrec", "TrainPipelineSparseDist._pipelined_modules", "baseline reports",
          _pipeline),
    Check("StagedTrainPipeline", "torchrec", "TrainPipelineSparseDist._backward/_optimizer_step",
          "the flat baselines' stage times", _staged_pipeline),
    Check("CpuDMPCollection", "torchrec", "DMPCollection.__init__'s members and _create_process_groups/"
          "_remap_sharding_plan/_group_sharded_modules/_cache_sync_tensors", "the torchrec-2d baseline on CPU",
          _dmp_collection),
    Check("tower_features", "torchrec", "KeyedJaggedTensor._values/_lengths/_weights/_jt_dict", "lazy tower KJTs",
          _tower_features),
    Check("merged_keyed_tensor", "torchrec", "KeyedTensor._values/_keys", "the lazy merge", _lazy_keyed),
    Check("pooled_keyed_tensor", "torchrec", "KeyedTensor._values/_keys", "lazy pooled columns", _lazy_keyed),
    Check("exit_now", "python", "os._exit", "exiting past a dead peer", _exit),
]


@pytest.mark.parametrize("check", CHECKS, ids=[c.entry for c in CHECKS])
def test_private_name_still_there(check: Check, request) -> None:
    needs_group = "group" in inspect.signature(check.probe).parameters
    args = [request.getfixturevalue("world_of_one")] if needs_group else []
    try:
        check.probe(*args)
    except Exception as error:  # noqa: BLE001 (any failure is the message below)
        where = _defined_in().get(check.entry, "dmt_fx/_compat")
        pytest.fail(f"{check.library} {VERSIONS[check.library]} removed or changed {check.private}, used by "
                    f"{where}:{check.entry} for {check.why}; see docs/compat.md "
                    f"({type(error).__name__}: {error})", pytrace=False)


def test_every_entry_has_a_check() -> None:
    """A new entry of dmt_fx._compat comes with its check here."""
    assert sorted(c.entry for c in CHECKS) == sorted(compat.__all__)
    missing = set(compat.__all__) - set(_defined_in())
    assert not missing, f"entries not defined at the top level of a dmt_fx/_compat file: {missing}"


LIBRARIES = ("torch", "torchrec", "fbgemm_gpu")


def _own_private_names(trees: list[ast.AST]) -> set[str]:
    """Underscored names the project defines itself (functions, classes, self._x, _x = ...)."""
    own = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name) \
                    and n.value.id in ("self", "cls"):
                own.add(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                own.add(n.id)
    return {name for name in own if name.startswith("_")}


def _private_reads(tree: ast.AST, own: set[str]) -> list[str]:
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in LIBRARIES:
            if any(p.startswith("_") for p in n.module.split(".")) or any(a.name.startswith("_") for a in n.names):
                found.append(f"{n.lineno}: from {n.module} import ...")
        elif isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
            if not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")) and n.attr not in own:
                found.append(f"{n.lineno}: .{n.attr}")
    return found


def test_no_private_names_outside_compat() -> None:
    """Outside dmt_fx/_compat, dmt_fx and its passes read no private name of another library."""
    root = COMPAT.parent.parent
    unique = {p.resolve(): p for folder in ("dmt_fx", "passes") if (root / folder).is_dir()
              for p in sorted((root / folder).rglob("*.py"))}  # dmt_fx/passes may link to passes/
    files = [p for p in unique.values() if not p.resolve().is_relative_to(COMPAT.resolve())]
    trees = {p: ast.parse(p.read_text()) for p in files}
    own = _own_private_names([*trees.values(), *(ast.parse(p.read_text()) for p in COMPAT.glob("*.py"))])
    found = {str(p.relative_to(root)): reads for p, tree in trees.items() if (reads := _private_reads(tree, own))}
    assert not found, ("private torch/torchrec names read outside dmt_fx/_compat (add an entry there, with "
                       f"its check in this file; see docs/compat.md): {found}")
