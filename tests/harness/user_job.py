"""A DMT job as a user writes it, run by torchrun in the exit soak.

transform, distribute, train 6 steps on 2x2 (gloo), all_reduce a metric, barrier,
destroy_process_group, return from main: nothing of the job's teardown is dmt_fx's, so a
hang at interpreter exit here is what a user meets. `--finish shutdown` ends the job with
`dmt_fx.shutdown(module)` instead (the documented way). Each rank writes OUT/pid_rank<r>
at start and OUT/last_step_rank<r> (wall time) after its last collective, so the soak can
time every rank's exit from its last step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch.distributed as dist
import torch.nn.functional as F

import dmt_fx
from dmt_fx.jobs.data import slice_batch
from examples.torchrec_dlrm import build, make_inputs

LOCAL_BATCH, STEPS = 4, 6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--finish", choices=("user", "shutdown"), default="user")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    with open(os.path.join(args.out, f"pid_rank{rank}"), "w") as handle:
        handle.write(str(os.getpid()))
    model, batch = build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=batch)
    module, optimizer = dmt_fx.distribute(gm, optimizer_kwargs={"lr": 0.1})
    for step in range(STEPS):
        dense, kjt = slice_batch(make_inputs(LOCAL_BATCH * world, step), rank * LOCAL_BATCH,
                                 (rank + 1) * LOCAL_BATCH)
        labels = (dense[:, :1] > 0.5).float()
        loss = F.binary_cross_entropy_with_logits(module(dense, kjt), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    metric = loss.detach().clone()
    dist.all_reduce(metric)
    dist.barrier()
    with open(os.path.join(args.out, f"last_step_rank{rank}"), "w") as handle:
        handle.write(repr(time.time()))
    if args.finish == "shutdown":
        dmt_fx.shutdown(module)
    else:
        dist.destroy_process_group()
    print(f"rank {rank}: mean loss {metric.item() / world:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
