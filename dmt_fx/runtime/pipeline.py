"""A sparse-dist train pipeline for DMT, modeled on TorchRec's `TrainPipelineSparseDist`.

TorchRec's pipeline finds the sharded modules a model calls on its batch's attributes and
runs their `input_dist` for batch i+1 while batch i computes. A DMT rank module does not
fit it: its sparse stage is one `HostTowerExchange` / `HostTowerBlock` whose inputs are
computed in the graph (features selected in tower order, plain ids turned into KJTs),
and whose dist is the peer id exchange followed by each collection's TorchRec input dist.
So this pipeline has the same API (`progress(dataloader_iter)` -> output, batches
`Pipelineable`, model_fwd returning (loss, output)) and drives the exchange's own stages
(`dmt_fx.runtime.exchange.SparseDist`):

    progress(i):  zero_grad
                  batch i+1: its exchange inputs (the graph's prologue), stage 0 in flight
                  forward(batch i)          <- uses batch i's dist, pushed before
                  batch i+1: stage 1 (peer ids' values all-to-all)
                  backward(batch i)
                  batch i+1: stage 2 (ids in; intra-host splits all-to-all)
                  optimizer.step()
                  batch i+1: stage 3 (intra-host ids all-to-all); pushed for forward i+1

Batch i+1's inputs are checked and agreed on (the rank module's `AgreedValidator`,
`dmt_fx.runtime.rank_status`) before its stage 0, so a batch one rank refuses, or one
sample short on one rank, stops every rank by name instead of in gloo's all-to-all; its
forward then skips the agreement (`agreed_ahead`), so a pipelined step spends one agreement,
as an unpipelined one does. Every stage is issued at the same
point of the step on every rank, so each process group
sees its collectives in one order everywhere; gloo runs async collectives on its own
threads, so the ids travel while this thread computes. No Python thread issues a
collective. Ids only move: parameters never enter the dist, so pipelined training
computes exactly what unpipelined training computes (tests/test_pipeline.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx as fx
from torch.autograd.profiler import record_function
from torchrec.streamable import Pipelineable

from dmt_fx._compat import plain_tuple_output
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import Role, role_of
from dmt_fx.ir.stages import Stage, stage_range

__all__ = ["DMTTrainPipeline", "PipelineBatch", "sparse_prologue"]


@dataclasses.dataclass
class PipelineBatch(Pipelineable):
    """A batch as TorchRec's pipelines take it (`Pipelineable`): the model's positional
    inputs and the labels; `to` moves every part that can move."""

    inputs: tuple
    labels: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> PipelineBatch:
        def move(x: Any) -> Any:
            return x.to(device, non_blocking=non_blocking) if hasattr(x, "to") else x
        return PipelineBatch(tuple(move(x) for x in self.inputs), self.labels.to(device, non_blocking=non_blocking))

    def record_stream(self, stream: Any) -> None:
        for x in (*self.inputs, self.labels):
            if hasattr(x, "record_stream"):
                x.record_stream(stream)

    def pin_memory(self) -> PipelineBatch:
        return self


def exchange_node(graph: fx.Graph) -> fx.Node:
    """The rank graph's host exchange (identity towers) or tower block (compressing ones)."""
    found = [n for n in graph.nodes if role_of(n) in (Role.HOST_TOWER_EXCHANGE, Role.HOST_TOWER_BLOCK)]
    if len(found) != 1:
        raise DMTError(f"{len(found)} host exchange modules in the rank's graph",
                       "one HostTowerExchange or HostTowerBlock (what dmt_fx.distribute builds)",
                       ["pass the module dmt_fx.distribute returned", "train without the pipeline"])
    return found[0]


def sparse_prologue(gm: fx.GraphModule, node: fx.Node,
                    inputs: Sequence[fx.Node] | None = None) -> fx.GraphModule | None:
    """A module that computes only `node`'s arguments (the KJTs the exchange sends): the
    inputs' part of the graph the next batch needs before its forward. It takes `gm`'s
    signature, or the nodes `inputs` in their order (e.g. the validator's arguments); None
    when the arguments need a placeholder that `inputs` lacks."""
    needed, todo = set(), list(node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n not in needed:
            needed.add(n)
            todo.extend(n.all_input_nodes)
    graph = fx.Graph()
    env: dict[Any, fx.Node] = {}
    for position, given in enumerate(inputs or ()):  # one per position: a node may be given twice
        env.setdefault(given, graph.placeholder(f"input_{position}"))
    for n in gm.graph.nodes:
        if n.op == "placeholder" and inputs is not None:
            if n in needed and n not in env:
                return None
        elif n.op == "placeholder" or n in needed:
            env[n] = graph.node_copy(n, lambda x: env[x])
    graph.output(tuple(env[a] for a in node.args))
    if inputs is None:
        plain_tuple_output(gm.graph, graph)  # export route: same inputs, a plain tuple out
    return fx.GraphModule(gm, graph, class_name="DMTSparsePrologue")


@dataclasses.dataclass(frozen=True)
class EarlyValidator:
    """The rank module's input validator (`module`, an AgreedValidator once distributed) and
    where its arguments sit among the model's positional inputs."""

    module: torch.nn.Module
    positions: tuple[int, ...]

    def __call__(self, inputs: tuple) -> None:
        self.module(*(inputs[i] for i in self.positions))


def early_validator(gm: fx.GraphModule) -> EarlyValidator | None:
    """The rank module's input validator as a call on a batch's positional inputs, or None
    when the model has none (validate_inputs=False) or it reads more than the inputs."""
    nodes = [n for n in gm.graph.nodes if role_of(n) == Role.VALIDATE_INPUTS and n.op == "call_module"]
    placeholders = {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}
    if len(nodes) != 1 or nodes[0].kwargs or not all(a in placeholders for a in nodes[0].args):
        return None
    return EarlyValidator(gm.get_submodule(str(nodes[0].target)), tuple(placeholders[a] for a in nodes[0].args))


class DMTTrainPipeline:
    """`progress(iter)`: one training step of batch i with batch i+1's sparse dist overlapped.

    `module`: what `dmt_fx.distribute` returned; `model_fwd(module, batch)` -> (loss,
    output) (default: the module on `batch.inputs`, binary cross-entropy on `batch.labels`)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 model_fwd: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Any]] | None = None) -> None:
        self.module, self.optimizer = module, optimizer
        physical = getattr(module, "physical", module)
        node = exchange_node(physical.graph)
        self.exchange = physical.get_submodule(str(node.target))
        if hasattr(self.exchange, "pipeline_refusal"):  # an exchange without stages: refused before any step
            raise self.exchange.pipeline_refusal()
        prologue = sparse_prologue(physical, node)
        assert prologue is not None  # over gm's own placeholders: always built
        self.prologue = prologue
        self.validate = early_validator(physical)
        self.model_fwd = model_fwd or bce_forward
        self.current: Any = None
        self.exhausted = False

    def start(self, batch: Any) -> Any:
        """Batch's exchange inputs and its first dist stage in flight, once every rank has
        agreed on the batch."""
        if self.validate is not None:
            self.validate(batch.inputs)
        with torch.no_grad():
            kjts = self.prologue(*batch.inputs)
        return self.exchange.dist_start(kjts)

    def progress(self, dataloader_iter: Iterator[Any]) -> Any:
        if self.current is None:  # fill: batch 0's dist runs unoverlapped
            batch = None if self.exhausted else next(dataloader_iter, None)
            if batch is None:
                raise StopIteration
            flight = self.start(batch)
            self.exchange.push(flight)
            self.current = batch
        batch, self.current = self.current, None
        self.optimizer.zero_grad()
        upcoming = None if self.exhausted else next(dataloader_iter, None)
        self.exhausted = upcoming is None
        flight = self.start(upcoming) if upcoming is not None else None
        with record_function(stage_range(Stage.DENSE_FORWARD)):
            loss, output = self.forward_agreed(batch)
        self.advance(flight)
        with record_function(stage_range(Stage.BACKWARD)):
            loss.backward()
        self.advance(flight)
        with record_function(stage_range(Stage.OPTIMIZER)):
            self.optimizer.step()
        if flight is not None:
            self.exchange.push(flight)  # stage 3 issued here; forward i+1 waits for it
            self.current = upcoming
        return output

    def forward_agreed(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """model_fwd on a batch `start` checked and agreed on: the forward's own agreement is
        skipped once (every rank runs this same code, so every rank skips it)."""
        agreement: Any = self.validate.module if self.validate is not None else None
        if not hasattr(agreement, "agreed_ahead"):  # not distributed (or no validator): nothing agreed
            return self.model_fwd(self.module, batch)
        agreement.agreed_ahead = True
        try:
            return self.model_fwd(self.module, batch)
        finally:
            agreement.agreed_ahead = False  # model_fwd may not call the module: never leave it set

    def advance(self, flight: Any) -> None:
        if flight is not None:
            self.exchange.dist_advance(flight)


def bce_forward(module: torch.nn.Module, batch: PipelineBatch) -> tuple[torch.Tensor, tuple[torch.Tensor, Any]]:
    """The worker's step: logits of the local batch, mean binary cross-entropy; the output is
    (loss, logits) detached, as TorchRec's train wrappers return (losses, output)."""
    out = module(*batch.inputs)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, batch.labels)
    return loss, (loss.detach(), out.detach())
