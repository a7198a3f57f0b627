"""Quantized communication: TorchRec's qcomms codecs for the pooled-embedding exchanges.

A *comm precision* names what the pooled embeddings (forward) and their gradients
(backward) are sent as; ids and lengths are never touched (integer tensors, and the
codecs only serve the pooled all-to-alls / reduce-scatters):

  "fp32"  no codec (the default);
  "fp16"  FP16 forward, BF16 backward: TorchRec's usual production choice (gradients
          need BF16's range more than FP16's mantissa);
  "bf16"  BF16 both ways.

Codecs are FBGEMM's (`torchrec.distributed.fbgemm_qcomm_codec`): the sender encodes
(float32 -> 16 bits, clamped), the receiver decodes back to float32, so the model
computes in float32 and only the wire is halved.

Why not `get_qcomm_codecs_registry`: on a CPU device it replaces every BF16 by FP16,
logging that BF16 is not supported on gloo. On this build (torch 2.x, fbgemm-gpu-cpu
1.8.0) gloo's all-to-all of bfloat16 tensors runs and decodes exactly (checked in
tests/test_qcomms.py), so the registry is built here from the same `get_qcomm_codecs`
without that fallback, and "fp16" keeps its BF16 backward on CPU as on GPU.

`distribute(..., comm_precision=...)` applies a precision to DMT's peer embedding
exchanges (`compress_exchanges`): the pooled ones and, on a model with sequence features,
the jagged exchange of the unpooled rows (`dmt_fx.runtime.sequence.JaggedReturn`: its rows
forward, their gradients backward, the same codec pair). The flat baselines
`flat-<sharding>+fp16` give the registry to TorchRec's sharders
(`EmbeddingBagCollectionSharder` and `EmbeddingCollectionSharder`, `qcomm_codecs_registry=...`).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torchrec.distributed.dist_data import PooledEmbeddingsAllToAll
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs
from torchrec.distributed.types import CommOp, QuantizedCommCodecs

from dmt_fx._compat import set_all_to_all_codecs
from dmt_fx.cost.wire import PRECISION_BYTES
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import RUNTIME_ATTR
from dmt_fx.runtime.exchange import HostTowerBlock, HostTowerExchange
from dmt_fx.runtime.sequence import HostSequenceExchange

__all__ = ["FP32", "PRECISIONS", "check_precision", "codecs", "compress_exchanges", "qcomm_codecs_registry",
           "qcomms_config", "wire_bytes"]

FP32 = "fp32"
# precision name -> (forward, backward) wire type of the pooled embeddings
PRECISIONS: dict[str, tuple[CommType, CommType]] = {
    FP32: (CommType.FP32, CommType.FP32),
    "fp16": (CommType.FP16, CommType.BF16),
    "bf16": (CommType.BF16, CommType.BF16),
}
_OPS = (CommOp.POOLED_EMBEDDINGS_ALL_TO_ALL, CommOp.POOLED_EMBEDDINGS_REDUCE_SCATTER,
        CommOp.SEQUENCE_EMBEDDINGS_ALL_TO_ALL)


def check_precision(precision: Any) -> str:
    """`precision` if it names a comm precision, else a DMTError listing them."""
    if precision not in PRECISIONS:
        raise DMTError(f"comm_precision={precision!r}", f"one of {', '.join(PRECISIONS)}",
                       ['comm_precision="fp16" (FP16 forward, BF16 backward) halves the pooled-embedding bytes'])
    return precision


def wire_bytes(precision: str) -> tuple[int, int]:
    """Bytes per pooled-embedding element on the wire: (forward, backward)."""
    return PRECISION_BYTES[check_precision(precision)]  # the cost model's byte model owns the sizes


def qcomms_config(precision: str) -> QCommsConfig | None:
    """TorchRec's QCommsConfig for `precision` (None for fp32)."""
    forward, backward = PRECISIONS[check_precision(precision)]
    if precision == FP32:
        return None
    return QCommsConfig(forward_precision=forward, backward_precision=backward)


def codecs(precision: str) -> QuantizedCommCodecs | None:
    """The forward/backward codec pair for one pooled all-to-all (None for fp32)."""
    config = qcomms_config(precision)
    return None if config is None else get_qcomm_codecs(config)


def qcomm_codecs_registry(precision: str) -> dict[str, QuantizedCommCodecs] | None:
    """What TorchRec's sharders take as `qcomm_codecs_registry` (None for fp32): the same
    codecs for every pooled / sequence embedding collective, as `get_qcomm_codecs_registry`
    builds it, without its CPU fallback of BF16 to FP16 (see the module docstring)."""
    config = qcomms_config(precision)
    return None if config is None else {op.name: get_qcomm_codecs(config) for op in _OPS}


def compress_exchanges(module: nn.Module, precision: str) -> int:
    """Give DMT's peer embedding exchanges the codecs of `precision`; returns how many: the
    pooled ones (the `PooledEmbeddingsAllToAll`s the lowering put on the runtime's exchange
    modules as `output_dist`, or a sequence model's `pooled_back` / `all_back`) and the jagged sequence
    exchange (`JaggedReturn.codecs`). TorchRec's intra-host sharded lookups are left as they
    are: their traffic stays on the fast links. A pooled exchange's codecs go where its
    constructor's `codecs` argument is kept (`_codecs`, read by every forward), so the
    lowering is unchanged."""
    pair = codecs(precision)
    runtime = getattr(module, RUNTIME_ATTR, None)
    if pair is None or runtime is None:
        return 0
    count = 0
    for owner in runtime.modules():
        dist_module = getattr(owner, "output_dist", None)
        if isinstance(owner, (HostTowerExchange, HostTowerBlock)) and isinstance(dist_module, PooledEmbeddingsAllToAll):
            set_all_to_all_codecs(dist_module, pair)
            count += 1
        if isinstance(owner, HostSequenceExchange):
            # its pooled peer exchange back (`pooled_back`; a sequence tower module's
            # `all_back`) is a direct child; TorchRec's intra-host dists sit deeper
            for child in owner.children():
                if isinstance(child, PooledEmbeddingsAllToAll):
                    set_all_to_all_codecs(child, pair)
                    count += 1
            owner.back.codecs = pair
            count += 1
    return count
