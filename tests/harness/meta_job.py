"""Models built on the meta device, and the per-rank job of tests/test_meta_distribute.py.

Factories (TARGETs for `dmt-fx run` too; every rank imports this file):
- `meta_dlrm`: TorchRec's DLRM, every table and every dense layer on the meta device;
  size from DMT_FX_META_MODEL="tables=26,rows=250000,dim=64" (the test's default);
- `meta_plain`: a plain PyTorch Wide&Deep, nn.Embedding tables (one with padding_idx, one of
  width 10, which the runtime pads to 12) and an MLP, all on the meta device.
`make_inputs(batch, seed)` beside each (the worker's hook).

`python -m tests.harness.meta_job FACTORIES TOPOLOGY OUT` (under torchrun, one agent per host): per
factory, transform, distribute, train STEPS steps, save a DCP checkpoint; OUT/FACTORY/rank<r>.json says what
the rank allocated: its tables' bytes (the sharded modules' tensors), its own shards' bytes
(the ShardedTensors' local shard sizes), its RSS before `distribute` and its peak RSS.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.models.dlrm import DLRM

import dmt_fx
from dmt_fx.ir.widths import padded_dim

MODEL_ENV, CHECKPOINT_ENV = "DMT_FX_META_MODEL", "DMT_FX_META_CHECKPOINT"
DENSE, META, STEPS, BATCH = 13, torch.device("meta"), 3, 8
PLAIN_ROWS, PLAIN_DIMS, PADDING_IDX = (300_000, 200_000, 100_000, 50_000), (16, 10, 8, 4), 0


def model_config() -> dict[str, int]:
    config = {"tables": 26, "rows": 250_000, "dim": 64}
    for item in filter(None, os.environ.get(MODEL_ENV, "").split(",")):
        key, _, value = item.partition("=")
        config[key.strip()] = int(value)
    return config


def meta_dlrm() -> DLRM:
    """TorchRec's DLRM built on the meta device: no table, no layer has values."""
    config = model_config()
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=config["dim"], num_embeddings=config["rows"],
                                 feature_names=[f"f{i}"]) for i in range(config["tables"])]
    return DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=META),
                dense_in_features=DENSE, dense_arch_layer_sizes=[64, config["dim"]],
                over_arch_layer_sizes=[64, 1], dense_device=META)


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    config, g = model_config(), torch.Generator().manual_seed(seed)
    keys = [f"f{i}" for i in range(config["tables"])]
    lengths = torch.randint(0, 3, (len(keys) * batch,), generator=g)
    ids = torch.randint(0, config["rows"], (int(lengths.sum()),), generator=g)
    return torch.randn(batch, DENSE, generator=g), KeyedJaggedTensor.from_lengths_sync(keys, ids, lengths)


meta_dlrm.make_inputs = make_inputs  # type: ignore[attr-defined]


class MetaWideDeep(nn.Module):
    """Plain PyTorch: per-field wide (width 1) and deep tables, an MLP; built on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.ModuleList(nn.Embedding(n, 1, device=META) for n in PLAIN_ROWS)
        self.deep = nn.ModuleList(nn.Embedding(n, d, device=META, padding_idx=PADDING_IDX if i == 0 else None)
                                  for i, (n, d) in enumerate(zip(PLAIN_ROWS, PLAIN_DIMS)))
        self.mlp = nn.Sequential(nn.Linear(sum(PLAIN_DIMS) + DENSE, 8, device=META), nn.ReLU(),
                                 nn.Linear(8, 1, device=META))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        wide = torch.cat([t(ids[:, i]) for i, t in enumerate(self.wide)], dim=1).sum(1, keepdim=True)
        deep = torch.cat([dense] + [t(ids[:, i]) for i, t in enumerate(self.deep)], dim=1)
        return wide + self.mlp(deep)


def meta_plain() -> MetaWideDeep:
    return MetaWideDeep()


def make_plain_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in PLAIN_ROWS], dim=1)
    return torch.randn(batch, DENSE, generator=g), ids


meta_plain.make_inputs = make_plain_inputs  # type: ignore[attr-defined]


def table_bytes(model: nn.Module) -> int:
    """Bytes of the model's tables as built (meta: none allocated), fp32."""
    tables = (nn.Embedding, nn.EmbeddingBag)
    return sum(p.numel() * 4 for m in model.modules() if isinstance(m, tables) for p in m.parameters())


def own_shard_bytes(state: dict, padded: bool = False) -> int:
    """Bytes of this rank's shards, from the ShardedTensors' local shard sizes (`padded`: with
    the widths FBGEMM stores, rounded up to a multiple of 4; table- and row-wise shards)."""
    return sum(s.metadata.shard_sizes[0] * (padded_dim(s.metadata.shard_sizes[1]) if padded else
                                             s.metadata.shard_sizes[1]) * 4
               for v in state.values() if isinstance(v, ShardedTensor) for s in v.local_shards())


def allocated_table_bytes(module: nn.Module) -> int:
    """Bytes of every floating tensor the rank's sharded table modules hold (weights, optimizer
    state), each storage counted once."""
    seen: dict[int, int] = {}
    for m in module.modules():
        if isinstance(m, ShardedEmbeddingBagCollection):
            for t in [*m.parameters(), *m.buffers()]:
                if t.is_floating_point() and t.numel():
                    storage = t.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def init_stats(state: dict) -> dict[str, list[float]]:
    """Per table key, over this rank's shards before training: [max |w|, std, max |row 0|]
    (aminmax and std need no copy of a shard: the RSS figures stay the runtime's)."""
    stats = {}
    for key, value in state.items():
        if isinstance(value, ShardedTensor) and value.local_shards():
            shards = value.local_shards()
            bounds = [torch.aminmax(s.tensor) for s in shards]
            first = [s.tensor[0] for s in shards if s.metadata.shard_offsets[0] == 0]
            stats[key] = [max(max(-float(lo), float(hi)) for lo, hi in bounds),
                          sum(float(s.tensor.std()) for s in shards) / len(shards),
                          float(first[0].abs().max()) if first else -1.0]
    return stats


def memory_kb(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in kB."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def run_rank(factory: str, topology: str, out: str) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    build = globals()[factory]
    model = build()
    whole = table_bytes(model)
    gm = dmt_fx.transform(model, topology)
    rss_before = memory_kb("VmRSS")
    module, optimizer = dmt_fx.distribute(gm, optimizer_kwargs={"lr": 0.05})
    peaks = {"distribute": memory_kb("VmHWM")}
    state = module.state_dict()
    shards, allocated = own_shard_bytes(state), allocated_table_bytes(module)
    padded, init = own_shard_bytes(state, padded=True), init_stats(state)
    losses = []
    for step in range(STEPS):
        inputs = build.make_inputs(BATCH, step * world + rank)
        labels = torch.rand(BATCH, 1, generator=torch.Generator().manual_seed(step))
        loss = nn.functional.binary_cross_entropy_with_logits(module(*inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    peaks["train"] = memory_kb("VmHWM")
    if os.environ.get(CHECKPOINT_ENV, "1") != "0":  # "0": the 2x2 figure at 6.6 GB, where DCP's copy would not fit
        dcp.save(module.state_dict(), checkpoint_id=os.path.join(out, factory, "checkpoint"))
    peaks["checkpoint"] = memory_kb("VmHWM")
    return {"rank": rank, "model_table_bytes": whole, "own_shard_bytes": shards, "own_padded_shard_bytes": padded,
            "allocated_table_bytes": allocated,
            "rss_before_distribute_kb": rss_before, "peak_rss_kb": memory_kb("VmHWM"),
            "peak_rss_kb_after": peaks, "init": init, "losses": losses,
            "meta_left": [k for k, v in state.items() if isinstance(v, torch.Tensor) and not isinstance(v, ShardedTensor)
                          and v.is_meta]}


def main(argv: list[str]) -> int:
    """FACTORIES (comma-separated, one after the other in one world) TOPOLOGY OUT:
    OUT/<factory>/rank<r>.json each."""
    factories, topology, out = argv
    dist.init_process_group("gloo")
    for factory in factories.split(","):
        os.makedirs(os.path.join(out, factory), exist_ok=True)
        result = run_rank(factory, topology, out)
        with open(os.path.join(out, factory, f"rank{result['rank']}.json"), "w") as handle:
            json.dump(result, handle)
        dist.barrier()
    dmt_fx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
