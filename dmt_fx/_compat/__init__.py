"""The one place where dmt_fx reads or overrides private names of torch, TorchRec and Python.

Everything of another library whose name begins with an underscore (a private module such as
`torch.distributed._shard`, a field such as `EmbeddingBagCollection._embedding_names`, a hook
such as `GraphModule._wrapped_call`) is reached through a named function or alias here, with a
comment saying why it is needed and which release it was checked on. The rest of the package
imports these names from `dmt_fx._compat`. tests/test_compat.py checks each one against the
installed releases and says, when an upgrade removed or changed one, which entry and why.
How to upgrade torch or TorchRec: docs/compat.md.

One module per library: torch_core (nn.Module internals, aten ops, dispatch, pytree),
torch_fx, torch_distributed, torchrec (collection fields), torchrec_lazy (the lazy KJT and
KeyedTensor subclasses), torchrec_2d (DMPCollection on CPU) and python (the standard library).
"""

from dmt_fx._compat.python import exit_now
from dmt_fx._compat.torch_core import (
    ASSERT_OPS,
    BATCH_NORM_LEGIT_OPS,
    EMBEDDING_BAG_OP,
    ConvNd,
    DropoutNd,
    NormBase,
    TorchDispatchMode,
    in_backward,
    module_buffers,
    module_children,
    module_parameters,
    non_persistent_buffers,
    op_argument_names,
    pytree,
    register_state_dict_post_hook,
    set_module_dicts,
    state_dict_hooks,
)
from dmt_fx._compat.torch_distributed import (
    Shard,
    ShardedTensor,
    ShardedTensorMetadata,
    ShardMetadata,
    TensorProperties,
    all_process_groups,
    ddp_ignore,
    functional_collective_namespaces,
    resolve_process_group,
    sharded_from_local_shards,
    sharded_group,
)
from dmt_fx._compat.torch_fx import (
    copy_attr,
    copy_codegen,
    graph_module_call,
    graph_root,
    plain_tuple_output,
    qualified_name,
    set_graph_module_call,
)
from dmt_fx._compat.torchrec import (
    StagedTrainPipeline,
    collection_device,
    crossnet_shape,
    ebc_embedding_names,
    ebc_feature_names,
    ebc_lengths_per_embedding,
    embedding_shardings,
    pipelined_modules,
    set_all_to_all_codecs,
    set_ebc_embedding_names,
    set_ebc_fields,
    set_ec_fields,
    solo_layout,
    solo_pooled,
)
from dmt_fx._compat.torchrec_2d import CpuDMPCollection
from dmt_fx._compat.torchrec_lazy import merged_keyed_tensor, pooled_keyed_tensor, tower_features

__all__ = [
    "ASSERT_OPS", "BATCH_NORM_LEGIT_OPS", "EMBEDDING_BAG_OP", "ConvNd", "CpuDMPCollection", "DropoutNd", "NormBase",
    "Shard", "ShardMetadata", "ShardedTensor", "ShardedTensorMetadata", "StagedTrainPipeline", "TensorProperties",
    "TorchDispatchMode", "all_process_groups", "collection_device", "copy_attr", "copy_codegen",
    "crossnet_shape", "ddp_ignore", "ebc_embedding_names", "ebc_feature_names",
    "ebc_lengths_per_embedding", "embedding_shardings", "exit_now", "functional_collective_namespaces",
    "graph_module_call", "graph_root", "in_backward", "merged_keyed_tensor", "module_buffers",
    "module_children", "module_parameters", "non_persistent_buffers", "op_argument_names",
    "pipelined_modules", "plain_tuple_output", "pooled_keyed_tensor", "pytree", "qualified_name",
    "register_state_dict_post_hook", "resolve_process_group", "set_all_to_all_codecs",
    "set_ebc_embedding_names", "set_ebc_fields", "set_ec_fields", "set_graph_module_call",
    "set_module_dicts", "sharded_from_local_shards", "sharded_group", "solo_layout", "solo_pooled",
    "state_dict_hooks", "tower_features",
]
