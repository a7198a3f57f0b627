"""TorchRec's BERT4Rec example (tests/harness/corpus/torchrec_bert4rec.py) as a DMT job,
run by torchrun for tests/test_torchrec_bert4rec.py.

transform (its KJT keys fixed by the example batch), distribute (SGD), STEPS steps of the
example's masked-item cross-entropy on each rank's slice of the global batch, every step's
local logits to OUT/outputs_rank<r>.pt, a DCP checkpoint to OUT/ckpt, `dmt_fx.shutdown`.
The loss of a rank is its share of the global mean: its positions' summed cross-entropy x
world / the global number of positions (DDP averages the ranks' gradients), so the job
trains what one process trains on the global batch with the plain mean.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import dmt_fx
from dmt_fx.jobs.data import slice_batch
from tests.harness.corpus.torchrec_bert4rec import bert4rec, bert4rec_inputs, masked_item_loss

LOCAL_BATCH, STEPS, LR = 4, 3, 0.05


def positions(kjt) -> int:
    """The batch's item positions (every id is a real item: 1..VOCAB-1)."""
    return int(kjt.lengths().sum())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--topology", default="2x2")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, example = bert4rec(dropout=0.0)
    gm = dmt_fx.transform(model, args.topology, example_inputs=example)
    module, optimizer = dmt_fx.distribute(gm, optimizer_kwargs={"lr": LR})
    outputs = []
    for step in range(STEPS):
        batch = bert4rec_inputs(LOCAL_BATCH * world, step + 1)
        local = slice_batch(batch, rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        logits = module(*local)
        loss = masked_item_loss(logits, *local) * world / positions(batch[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        outputs.append(logits.detach().clone())
    torch.save(outputs, os.path.join(args.out, f"outputs_rank{rank}.pt"))
    dcp.save(module.state_dict(), checkpoint_id=os.path.join(args.out, "ckpt"))
    dmt_fx.shutdown(module)
    return 0


if __name__ == "__main__":
    sys.exit(main())
