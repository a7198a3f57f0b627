"""Runtime entry point: `distribute` runs a logical DMT model on one rank of a (host x local) world.

On rank (h, l), for every embedding collection of the model (`lowering.py` does it):
  1. select its features in host order (the order the peer exchange sends them);
  2. peer KJT all-to-all (TorchRec `KJTAllToAll`, cross-host group = ranks with local
     rank l): the rank receives its host's features for H x B samples;
  3. host lookup: the host's tables sharded over its L ranks by TorchRec's sharder with an
     intra-host sharding from `dmt_fx.runtime.shardings`; lookup traffic stays in the host;
  4. peer pooled all-to-all back (`PooledEmbeddingsAllToAll`): each rank gets its own B
     rows of every host's output;
  5. merge into the collection's KeyedTensor in the original key order.
The rest of the model runs data-parallel over the world (DDP). One optimizer steps the
dense parameters; TorchRec's fused optimizers update the tables during backward.

Module map: `groups.py` (world check, process groups by `GroupKind`, timeouts),
`exchange.py` (the host exchange modules), `shardings/` (intra-host shardings, one file
each), `optim.py` (fused optimizers, initial shards), `lowering.py` (the graph lowering).
The runtime imports `dmt_fx.ir`, torch and torchrec, never a pass or the compiler.
"""

from __future__ import annotations

import datetime
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.optim.keyed import CombinedOptimizer

from dmt_fx._compat import ddp_ignore, module_parameters
from dmt_fx.ir.names import RUNTIME_ATTR
from dmt_fx.ir.result import DMTResult, dmt_result
from dmt_fx.runtime.fingerprint import one_model
from dmt_fx.runtime.groups import DEFAULT_TIMEOUT, RankInfo, build_groups, check_world, ddp_device_ids, runtime_device
from dmt_fx.runtime.joint_state import JointState, JointTable, joint_tables
from dmt_fx.runtime.lowering import lower
from dmt_fx.runtime.meta_init import materialise_dense, move_real_tensors, refuse_rank0_weights
from dmt_fx.runtime.optim import DENSE, combined_optimizer, fused_params, table_kernel
from dmt_fx.runtime.peer_ids import narrow_peer_ids
from dmt_fx.runtime.plain import plain_groups, plain_lookups
from dmt_fx.runtime.qcomms import FP32, check_precision, compress_exchanges
from dmt_fx.runtime.rank_status import agree_on_inputs
from dmt_fx.runtime.sequence_lowering import check_sequences
from dmt_fx.runtime.sequence_towers import freeze_unread
from dmt_fx.runtime.shardings import SHARDINGS
from dmt_fx.runtime.shutdown import keep_until_exit

# Names this module offered before the runtime was split; kept importable from here.
__all__ = ["DEFAULT_TIMEOUT", "SHARDINGS", "DistributedDMT", "RankInfo", "check_distributable", "check_world",
           "distribute", "fused_params"]


class DistributedDMT(nn.Module):
    """This rank's DMT model: takes the rank's local batch, returns its local outputs.

    `state_dict()` uses the original model's keys (tables as ShardedTensors; a joint table
    split by field is one ShardedTensor over the world, `JointState`), so
    torch.distributed.checkpoint files load into the original model and back."""

    def __init__(self, ddp: DistributedDataParallel, rank_info: RankInfo, joint: JointState | None = None) -> None:
        super().__init__()
        self.ddp = ddp
        self.rank_info = rank_info
        self.joint = joint

    @property
    def physical(self) -> fx.GraphModule:
        return self.ddp.module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = self.physical.state_dict(*args, **kwargs)
        return self.joint.merge(state) if self.joint is not None else state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if self.joint is not None:
            state_dict = self.joint.split(state_dict, self.physical.state_dict())
        return self.physical.load_state_dict(state_dict, strict=strict, assign=assign)


def distribute(module: fx.GraphModule, *, optimizer_class: type = torch.optim.SGD,
               optimizer_kwargs: Mapping[str, Any] | None = None, sharding: str = "table_wise",
               timeout: datetime.timedelta = DEFAULT_TIMEOUT,
               comm_precision: str = FP32,
               weights_from_rank0: bool = False) -> tuple[DistributedDMT, CombinedOptimizer]:
    """Run the output of `transform` on this rank; call on every rank after init_process_group.

    `sharding`: how each host's tables are sharded over its ranks, one of `SHARDINGS.names()`
    (table_wise, row_wise, column_wise, or one registered with `register_sharding`); a host
    whose towers name a sharding in the plan (`Tower.sharding`, as plan="auto" sets it) uses
    that one instead (`TowerPlan.sharding_of_host`).
    Takes ownership of `module`: the dense parameters are trained in place.

    Args:
        module: the `GraphModule` `transform` returned, for the world's topology.
        optimizer_class: the optimizer (SGD, Adagrad, Adam): fused into the sharded tables,
            a plain one for the dense parameters.
        optimizer_kwargs: its arguments, e.g. {"lr": 0.1}.
        sharding: the default intra-host sharding, as above.
        timeout: for every collective, on the world and both DMT groups.
        comm_precision: what the peer pooled exchanges send (`dmt_fx.runtime.qcomms`):
            "fp32" (default), "fp16" (TorchRec's qcomms: FP16 forward, BF16 backward) or
            "bf16"; ids always cross as integers.
        weights_from_rank0: every rank takes rank 0's weights (one broadcast of the model).
            Off (the default), the ranks' models are compared (`runtime/fingerprint.py`:
            two small all-gathers) and a difference is refused, naming the tensors.

    Returns:
        (module, optimizer): the rank's module (same call signature; `state_dict()` keeps the
        original keys, tables as `ShardedTensor`s) and one optimizer for all its parameters.

    Raises:
        DMTError: the world does not match the plan's topology, a sharding name is unknown,
            the model holds a form the runtime cannot run (named, with a fix), or the ranks
            built different models (`ModelMismatchError`, naming the tables that differ).

    Example:
        >>> import torch, torch.distributed as dist, dmt_fx
        >>> from dmt_fx.models.zoo import default_dlrm
        >>> dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
        >>> model, batch = default_dlrm()
        >>> module, optimizer = dmt_fx.distribute(dmt_fx.transform(model, "1x1"),
        ...                                       optimizer_kwargs={"lr": 0.1})
        >>> module(*batch).sum().backward(); optimizer.step()
        >>> dist.destroy_process_group()
    """
    result = dmt_result(module)
    me = check_world(result.topology)  # before any collective
    check_distributable(module)
    for name in {sharding, *result.plan.host_shardings().values()}:  # the plan's per-host ones too
        SHARDINGS.get(name)  # an unknown name fails here, on every rank, before any collective
    check_precision(comm_precision)
    refuse_rank0_weights(module, weights_from_rank0)  # a meta model: rank 0 has nothing to send
    kwargs = dict(optimizer_kwargs or {})
    fused = fused_params(optimizer_class, kwargs)
    dense_tables = table_kernel(optimizer_class, runtime_device()) == DENSE
    groups = build_groups(result.topology, timeout)
    place_on(module, runtime_device())
    one_model(module, result, runtime_device(), weights_from_rank0)  # every rank: one model, not a mixture
    order = list(module.state_dict().keys())  # the original's keys, before lowering takes the tables
    joints = joint_tables(module, plain_lookups(module, result))
    lowered = lower(module, result, me, groups, sharding=sharding, fused_params=None if dense_tables else fused)
    _drop_joint_weights(lowered.module, joints)
    materialise_dense(lowered.module, runtime_device())  # a meta model's dense layers (meta_init.py)
    compress_exchanges(lowered.module, comm_precision)  # before DDP and the pipeline see the module
    if result.plan.changes_model:  # layers the rewrite bypassed get no gradient (runtime/sequence_towers.py)
        freeze_unread(lowered.module, module)
    if agree_on_inputs(lowered.module, me, timeout):  # a refused batch stops every rank, by name (rank_status.py)
        narrow_peer_ids(lowered.module, largest_table(result))  # validated ids cross as int32 (peer_ids.py)
    # The runtime's modules sync inside their own groups (sharded tables, the host's tower
    # module); DDP over the world covers the rest.
    ignored = [n for n, _ in list(lowered.module.named_parameters()) + list(lowered.module.named_buffers())
               if n.startswith(RUNTIME_ATTR + ".")]
    ddp_ignore(lowered.module, ignored)
    ddp = DistributedDataParallel(lowered.module, device_ids=ddp_device_ids(), broadcast_buffers=False)
    # Everything but the sharded tables (updated by their fused optimizers): the dense layers
    # and the tower modules; the tables too where they are on the DENSE kernel (table_kernel).
    fused_lookups, dense_lookups = ([], lowered.lookups) if dense_tables else (lowered.lookups, [])
    optimizer = combined_optimizer(lowered.module, fused_lookups, optimizer_class, kwargs, lowered.fused,
                                   dense_tables=dense_lookups)
    joint = JointState.gather(lowered.module, joints, order) if joints else None  # on every rank
    keep_until_exit()  # no gloo destructor may join its threads under the GIL (runtime/shutdown.py)
    return DistributedDMT(ddp, me, joint), optimizer


def largest_table(result: DMTResult) -> int:
    """The most rows any table of the model has (a joint field counts its whole weight's)."""
    return max((t.row_offset + t.num_embeddings for t in result.sites.tables), default=0)


def place_on(module: fx.GraphModule, device: torch.device) -> None:
    """Under NCCL the runtime runs on this rank's GPU: move the transformed model there first
    (parameters, buffers and the graph's tensor constants, which `Module.to` skips), so the
    shards, the tower modules' DDP and the world's DDP all see one device. A no-op on CPU.
    (Seen on an H200: DDP refused `device_ids=[cuda:0]` over parameters left on the CPU.)
    Meta tensors stay: the lowering shards meta tables, `materialise_dense` the rest."""
    move_real_tensors(module, device)
    for node in module.graph.nodes:
        if node.op != "get_attr":
            continue
        owner_path, _, name = node.target.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        value = getattr(owner, name, None)
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.device != device:
            setattr(owner, name, value.to(device))


def _drop_joint_weights(physical: nn.Module, joints: list[JointTable]) -> None:
    """A joint weight lives on in its fields' TorchRec tables: keep the whole weight out of DDP,
    the dense optimizer and the rank's state dict (the lowering drops an nn.Embedding owner;
    an exported module's owner is a plain module holding the parameter)."""
    for table in joints:
        owner_path, _, attr = table.key.rpartition(".")
        try:
            owner = physical.get_submodule(owner_path)
        except AttributeError:
            continue
        if attr in module_parameters(owner):
            delattr(owner, attr)


def check_distributable(model: DMTResult | fx.GraphModule) -> None:
    """Raise DMTError when `distribute` cannot run this model; needs no process group, so the
    CLI calls it before torchrun starts. Pass the transformed GraphModule: its plain lookups'
    options (pooling mode, max_norm, padding_idx, per-sample weights, ...) are read from its
    graph and modules; a DMTResult alone has nothing to check. Any table width runs: the
    runtime pads widths FBGEMM cannot take (`dmt_fx.runtime.padded`)."""
    result = model if isinstance(model, DMTResult) else dmt_result(model)
    if isinstance(model, fx.GraphModule):
        plain_groups(plain_lookups(model, result))
        check_sequences(model, result)  # nn.Embedding read as [B, L] ids (runtime/sequence_lowering.py)

