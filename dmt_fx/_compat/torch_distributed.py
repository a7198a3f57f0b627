"""Private names of torch.distributed. Each entry says why we need it; all were checked on
torch 2.13.0. tests/test_compat.py checks that each still exists with the shape we rely on.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d
from torch.distributed._shard.metadata import ShardMetadata as _ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard as _Shard
from torch.distributed._shard.sharded_tensor import ShardedTensor as _ShardedTensor
from torch.distributed._shard.sharded_tensor import ShardedTensorMetadata as _ShardedTensorMetadata
from torch.distributed._shard.sharded_tensor import TensorProperties as _TensorProperties
from torch.nn.parallel import DistributedDataParallel

# TorchRec's state dicts hold ShardedTensors (torch.distributed._shard): the runtime reads,
# builds and trims them to keep checkpoints equal to the original's (torch 2.13.0).
ShardedTensor = _ShardedTensor
Shard = _Shard
ShardMetadata = _ShardMetadata
ShardedTensorMetadata = _ShardedTensorMetadata
TensorProperties = _TensorProperties


# A ShardedTensor from this rank's shards and the global layout, without the collective that
# the public constructor runs to agree on it (every rank knows it already) (torch 2.13.0).
def sharded_from_local_shards(local: list[Any], metadata: Any, process_group: Any = None) -> Any:
    return ShardedTensor._init_from_local_shards_and_global_metadata(local, metadata,
                                                                     process_group=process_group)


# The process group a ShardedTensor lives on, to build another one on it (torch 2.13.0).
def sharded_group(value: Any) -> Any:
    return value._process_group


# The ProcessGroup registered under a functional collective's group name (torch 2.13.0).
def resolve_process_group(name: Any) -> dist.ProcessGroup:  # a str, typed GroupName
    return distributed_c10d._resolve_process_group(name)


# Every process group this process made, to release them in order at exit (torch 2.13.0).
def all_process_groups() -> list[Any]:
    return list(distributed_c10d._world.pg_map)


# Keep parameters and buffers (the sharded tables, the tower modules) out of a DDP made over
# the module; DDP's only way to (torch 2.13.0).
def ddp_ignore(module: torch.nn.Module, names: Sequence[str]) -> None:
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(names))


# The namespaces of functional collectives (funcol) and their autograd forms, which the
# traffic counter recognises by op (torch 2.13.0).
def functional_collective_namespaces() -> tuple[Any, Any]:
    return torch.ops._c10d_functional, torch.ops._c10d_functional_autograd
