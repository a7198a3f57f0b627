"""The one byte model: what TorchRec's exchanges carry, as the traffic meter measures it.

Used by the plan report (`dmt-fx plan`), plan="auto"'s candidates, the analytic traffic of
the cost model (`dmt_fx.cost.traffic`) and the tests that hold the meter to it. Read from torchrec 1.8 (`torchrec/distributed/dist_data.py`):

* `KJTAllToAll` sends, to every destination, three tensors in three collectives:
  1. a split-size handshake: one int64 per tensor that follows (lengths, values, and
     weights for a weighted KJT) plus the batch size: `handshake_bytes()`;
  2. the lengths of the destination's features: one per sample and feature, in the
     input KJT's own dtype, unchanged (`KeyedJaggedTensor.dist_tensors`). Every dmt_fx
     model and data loader builds KJTs from `torch.randint` lengths, i.e. int64: 8 bytes;
  3. the values: one int64 per id (and one fp32 weight per id when weighted).
* `PooledEmbeddingsAllToAll` sends B x width fp32 pooled embeddings forward, and their
  gradient, the same bytes, backward.
* DMT's peer id exchange across hosts (`dmt_fx/runtime/peer_ids.py`, the lean runtime) is
  not a KJTAllToAll: one exchange for all collections and no handshake (every rank sends
  the same local batch, so the lengths' splits are known). When the model validates its
  inputs and no table has more than 2**31 - 1 rows (the default), its lengths and ids cross
  as int32 (`PEER_ID_BYTES`, `peer_id_bytes`) in ONE all-to-all, sized by the id counts the
  batch agreement announced (`PEER_ID_COLLECTIVES`; per-id weights in a second when a
  collection is weighted). Otherwise they cross as the KJT holds them (`kjt_bytes`), the
  lengths in one all-to-all and the ids in a second (`UNANNOUNCED_PEER_ID_COLLECTIVES`). Inside the host TorchRec's KJTAllToAll still runs
  (`ID_COLLECTIVES`, with its handshake, on the KJT's own dtypes); flat plans keep theirs
  everywhere.

* With qcomms (`dmt_fx.runtime.qcomms`), the pooled embeddings travel in 2 bytes per element
  (FP16 / BF16) instead of 4: `PRECISION_BYTES` (forward, backward) per comm precision, the
  runtime's `wire_bytes` reads it from here.

A KJT whose lengths are int32 sends 4 bytes per length: pass `length_bytes=4` (the meter
counts what the tensors hold; `tests/test_traffic.py` checks both against it).
"""

from __future__ import annotations

ID_BYTES = 8  # int64 ids (KJT values)
LENGTH_BYTES = 8  # int64 lengths, one per sample and feature (see above)
WEIGHT_BYTES = 4  # fp32 per-id weights of a weighted KJT
EMBEDDING_BYTES = 4  # fp32 pooled embeddings and their gradients
SPLIT_BYTES = 8  # int64 split sizes of the handshake
ID_COLLECTIVES = 3  # KJTAllToAll: handshake, lengths, values (weights ride a 4th when weighted)
PEER_ID_COLLECTIVES = 1  # DMT's peer id exchange, validated ids: lengths and ids in one (weights a 2nd)
UNANNOUNCED_PEER_ID_COLLECTIVES = 2  # validate_inputs=False: lengths, then ids (weights a 3rd)
PEER_ID_BYTES = 4  # DMT's peer id exchange: int32 lengths and ids (validated ids; see above)
EMBEDDING_COLLECTIVES = 2  # pooled all-to-all forward, its gradient backward
# bytes per pooled-embedding element on the wire, (forward, backward), per comm precision
PRECISION_BYTES: dict[str, tuple[int, int]] = {"fp32": (4, 4), "fp16": (2, 2), "bf16": (2, 2)}

__all__ = ["EMBEDDING_BYTES", "EMBEDDING_COLLECTIVES", "ID_BYTES", "ID_COLLECTIVES", "LENGTH_BYTES",
           "PEER_ID_BYTES", "PEER_ID_COLLECTIVES", "PRECISION_BYTES", "SPLIT_BYTES", "UNANNOUNCED_PEER_ID_COLLECTIVES", "WEIGHT_BYTES", "handshake_bytes", "kjt_bytes",
           "peer_id_bytes", "peer_id_collectives", "pooled_bytes", "precision_scale"]


def handshake_bytes(*, weighted: bool = False) -> int:
    """Bytes of KJTAllToAll's split-size handshake to ONE destination: an int64 per tensor
    sent (lengths, values[, weights]) and the batch size."""
    return (3 + int(weighted)) * SPLIT_BYTES


def peer_id_collectives(*, weighted: bool = False, announced: bool = True) -> int:
    """Collectives of DMT's peer id exchange per step (all collections together); `announced`:
    the batch agreement announced the id counts (validated, int32 ids: the default)."""
    return (PEER_ID_COLLECTIVES if announced else UNANNOUNCED_PEER_ID_COLLECTIVES) + int(weighted)


def kjt_bytes(samples: float, features: float, ids: float, *, weighted: bool = False,
              length_bytes: int = LENGTH_BYTES, id_bytes: int = ID_BYTES) -> float:
    """Bytes of a KJT's payload: `samples` x `features` lengths and `ids` ids (+ weights)."""
    return samples * features * length_bytes + ids * (id_bytes + (WEIGHT_BYTES if weighted else 0))


def peer_id_bytes(samples: float, features: float, ids: float, *, weighted: bool = False,
                  narrow: bool = True) -> float:
    """Bytes of DMT's peer id exchange for a KJT (`kjt_bytes` of int32 lengths and ids when
    `narrow`, the default; `narrow=False`: a model transformed with validate_inputs=False)."""
    if not narrow:
        return kjt_bytes(samples, features, ids, weighted=weighted)
    return kjt_bytes(samples, features, ids, weighted=weighted, length_bytes=PEER_ID_BYTES, id_bytes=PEER_ID_BYTES)


def pooled_bytes(samples: float, width: float, *, elem_bytes: int = EMBEDDING_BYTES) -> float:
    """Bytes of `samples` pooled embedding rows `width` elements wide (one direction)."""
    return samples * width * elem_bytes


def precision_scale(precision: str) -> float:
    """Pooled-embedding bytes of `precision` against fp32, both directions together."""
    return sum(PRECISION_BYTES[precision]) / (2 * EMBEDDING_BYTES)
