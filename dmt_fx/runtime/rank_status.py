"""One bad rank stops every rank, by name: the ranks agree on each batch before any exchange.

Input validation (`dmt_fx.compiler.validation.InputValidator`, the first node of the graph)
refuses a bad batch in ONE process. Distributed, the other ranks would go on into the peer
id exchange and wait for the refusing rank until the collective timed out (120 s by
default), each with a gloo traceback that names no cause. So on every rank `distribute`
wraps the validator in `AgreedValidator`:

  1. run the rank's own checks; its `InputValidationError` (or any other error of the
     checks) is held, not raised yet;
  2. one all-gather over the world, on a group of its own (the status group,
     `STATUS_GROUP_DESC`), of a few int64 per rank: 1 + its rank when its batch was refused
     (else 0), its local batch, and the ids it will send each host in the peer id exchange
     (`PeerIdExchange.announce`, on the exchange's inputs computed from the validated ones).
     The local batches are compared because the peer exchanges assume every rank sends the
     same B samples (a rank with one sample fewer would otherwise abort inside gloo's
     all-to-all); the counts let that exchange send lengths and ids in one all-to-all
     (`PeerIdExchange.expect`). This is the step's first collective, so no rank has entered
     one that a peer will never join. Cost per forward: one all-gather of (2 + hosts) x 8
     bytes per rank; the traffic meter counts it apart, as `control_*`;
  3. only when some rank refused: one `all_gather_object` of each rank's one-line message;
     the refusing rank raises its InputValidationError, now naming its rank, host and local
     rank; every other rank raises `PeerInputError`, whose message is ONE line naming the
     refusing rank(s) and why. When every rank's checks passed but the local batches
     differ in size, every rank raises `BatchSizeMismatchError` naming its own batch and
     the smallest and largest;
  4. (the worker, `settle_refusal`) once a rank has printed its error, one barrier on the
     status group, so the first rank to exit cannot cut a peer's line from the logs.

A model transformed with `validate_inputs=False` has no validator: nothing is checked,
nothing is agreed, and no collective is added.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn as nn

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import Role, role_of
from dmt_fx.runtime.groups import RankInfo, runtime_device
from dmt_fx.runtime.peer_ids import PeerIdExchange
from dmt_fx.runtime.pipeline import sparse_prologue
from dmt_fx.runtime.traffic import STATUS_GROUP_DESC  # the meter counts this group's collectives as control

__all__ = ["STATUS_GROUP_DESC", "AgreedValidator", "BatchSizeMismatchError", "PeerInputError", "agree_on_inputs", "refusal_line",
           "settle_refusal"]

REFUSED = "refused its batch"  # the words every rank's message carries (the launcher looks for them)
PEER_EXPECTED = "every rank's batch to fit the model"  # where a peer's own words start


class PeerInputError(DMTError):
    """Another rank refused its batch; this rank's own batch was fine. One line (`str`), so
    a job's log says once per rank which rank failed and why."""

    def __str__(self) -> str:
        return self.one_line()


def where(me: RankInfo) -> str:
    return f"rank {me.rank} (host {me.host}, local rank {me.local_rank})"


class AgreedValidator(nn.Module):
    """The graph's InputValidator, then the world's agreement on its verdict (module doc)."""

    _is_impure = True  # like the validator: dead-code elimination must keep it

    def __init__(self, validator: nn.Module, group: dist.ProcessGroup, me: RankInfo,
                 announcers: Sequence[tuple[Callable[..., Any], PeerIdExchange]] = ()) -> None:
        super().__init__()
        self.validator, self.group, self.me = validator, group, me
        # (the exchange's inputs from the validator's, its id exchange): a plain list, so the
        # prologues' modules stay out of this module's tree and state_dict
        self.announcers = list(announcers)
        # set by the train pipeline (`DMTTrainPipeline.forward_agreed`) around a forward whose
        # batch it checked and agreed on before sending its ids: that forward agrees no more
        self.agreed_ahead = False

    def forward(self, *values: Any) -> None:
        if self.agreed_ahead:
            self.agreed_ahead = False  # once: a second call in the same model_fwd agrees again
            return
        refusal = None
        try:
            self.validator(*values)
        except Exception as error:  # held until every rank knows: raised alone, it would strand the peers
            refusal = error
        batch = local_batch(self.validator, values)
        active = [(prologue, ids) for prologue, ids in self.announcers if ids.wire_ids is not None]  # same on every rank
        counts: list[int] = []
        if refusal is None:
            try:
                counts = [n for prologue, ids in active for n in ids.announce(prologue(*values))]
            except Exception as error:  # the exchange's inputs failed on a batch the checks passed
                refusal = error
        hosts = self.me.topology.num_hosts
        row = [self.me.rank + 1 if refusal is not None else 0, batch, *(counts or [0] * (hosts * len(active)))]
        mine = torch.tensor(row, dtype=torch.int64, device=runtime_device())  # NCCL gathers device tensors
        table = mine.new_empty(dist.get_world_size(self.group) * len(row))
        dist.all_gather_single(table, mine, group=self.group)
        rows = table.view(-1, len(row)).tolist()  # one read back
        if any(r[0] for r in rows):
            self.refuse(refusal)
        sizes = [r[1] for r in rows]
        if max(sizes) != min(sizes):
            raise self.agreed(BatchSizeMismatchError(
                f"{where(self.me)}: a local batch of {batch} samples, while the ranks' batches range from "
                f"{min(sizes)} to {max(sizes)}", "the same local batch size on every rank (each rank sends its B "
                "samples to every peer in the exchanges)",
                ["give every rank the same number of samples per step (e.g. DataLoader(drop_last=True))"]))
        for index, (_, ids) in enumerate(active):
            ids.expect(*self.counts_of(rows, index))

    def counts_of(self, rows: list[list[int]], index: int) -> tuple[list[int], list[int]]:
        """For the `index`-th announcing exchange: (ids this rank sends each host, ids each
        host's peer of this rank sends it), read off the gathered rows."""
        topology, hosts = self.me.topology, self.me.topology.num_hosts
        first = 2 + index * hosts
        peers = topology.peer_ranks(self.me.local_rank)  # one per host, in host order
        return rows[self.me.rank][first:first + hosts], [rows[p][first + self.me.host] for p in peers]

    def refuse(self, refusal: Exception | None) -> None:
        """Step 3: every rank learns every refusal; each raises its own error."""
        mine = f"{where(self.me)} {REFUSED}: {_one_line(refusal)}" if refusal is not None else None
        said: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(said, mine, group=self.group)
        if isinstance(refusal, DMTError):  # the validator's InputValidationError (the runtime imports no compiler)
            own = type(refusal)(f"{where(self.me)}: {refusal.found}", refusal.expected, refusal.fixes)
            raise self.agreed(own) from refusal
        if refusal is not None:
            raise self.agreed(refusal)
        bad = [rank for rank, line in enumerate(said) if line is not None]
        ranks = ", ".join(map(str, bad))
        raise self.agreed(PeerInputError(
            " | ".join(line for line in said if line is not None),
            f"{PEER_EXPECTED} (rank {self.me.rank}'s did; it stops because "
            f"its peers would wait for rank(s) {ranks} in the next collective)",
            [f"read the log of rank(s) {ranks} for the whole error and fix their input data"]))

    def agreed(self, error: Exception) -> Exception:
        """Mark `error` as raised on every rank at once, so `settle_refusal` may wait for all."""
        setattr(error, AGREED_ON, self.group)
        return error


class BatchSizeMismatchError(DMTError):
    """The ranks' local batches differ in size (every rank raises it, at the same step)."""


def local_batch(validator: nn.Module, values: Sequence[Any]) -> int:
    """The batch size the validator reads off its inputs (it knows which argument is a KJT,
    a plain lookup's ids or a dense input; it has checked that they agree); -1 when it
    cannot tell, or for a validator saved before it could: then nothing is compared."""
    read = getattr(validator, "local_batch", None)
    return int(read(*values)) if callable(read) else -1


AGREED_ON = "_dmt_agreed_on"  # attribute of an error every rank raised together: the status group


def settle_refusal(error: BaseException) -> None:
    """After an agreed refusal, once this rank has said why: wait until every rank has.

    Every rank raises at the same step, but the first to exit ends the job: torchrun then
    kills the ranks still writing their line, and a log would lack one rank's reason. One
    barrier on the status group (every rank reaches it: they all raised) closes that race.
    Any other error returns at once: its peers may never arrive."""
    group = getattr(error, AGREED_ON, None)
    if group is not None:
        try:
            dist.barrier(group=group)
        except Exception:  # a peer died meanwhile: its line is lost either way, exit now
            pass


def _one_line(error: Exception) -> str:
    if isinstance(error, DMTError):
        return error.one_line()
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def status_group(timeout: datetime.timedelta) -> dist.ProcessGroup:
    """The world's ranks in a group of their own (made on every rank, like every group)."""
    return dist.new_group(timeout=timeout, group_desc=STATUS_GROUP_DESC)


def agree_on_inputs(physical: fx.GraphModule, me: RankInfo, timeout: datetime.timedelta) -> bool:
    """Wrap the rank module's validator (if any) in an AgreedValidator; call on every rank.

    Returns whether there was one (a model transformed with validate_inputs=False has none).
    The status group is made on every rank either way: group creation is collective."""
    group = status_group(timeout)
    nodes = [n for n in physical.graph.nodes if role_of(n) == Role.VALIDATE_INPUTS and n.op == "call_module"]
    for node in nodes:
        owner_path, _, name = str(node.target).rpartition(".")
        owner = physical.get_submodule(owner_path) if owner_path else physical
        setattr(owner, name, AgreedValidator(getattr(owner, name), group, me, announcers(physical, node)))
    return bool(nodes)


def announcers(physical: fx.GraphModule, validator: fx.Node) -> list[tuple[Callable[..., Any], PeerIdExchange]]:
    """The host exchanges whose id counts the agreement can announce: their inputs computed
    from the validator's arguments (`sparse_prologue`), and their peer id exchange."""
    if validator.kwargs or not all(isinstance(a, fx.Node) and a.op == "placeholder" for a in validator.args):
        return []
    found: list[tuple[Callable[..., Any], PeerIdExchange]] = []
    for node in physical.graph.nodes:
        if role_of(node) not in (Role.HOST_TOWER_EXCHANGE, Role.HOST_TOWER_BLOCK) or node.op != "call_module":
            continue
        ids = getattr(physical.get_submodule(str(node.target)), "ids", None)
        prologue = sparse_prologue(physical, node, [a for a in validator.args if isinstance(a, fx.Node)])
        if isinstance(ids, PeerIdExchange) and prologue is not None:
            found.append((prologue, ids))
    return found


def refusal_line(lines: list[str]) -> str | None:
    """The first line of a job's logs that says which rank refused its batch and why (a
    peer's one-line message carries the refusing rank's own), else None."""
    for line in lines:
        at = line.find("rank ", line.find("error:"))
        if REFUSED in line and at >= 0:
            return line[at:].split(f"; expected {PEER_EXPECTED}")[0]
    return None
