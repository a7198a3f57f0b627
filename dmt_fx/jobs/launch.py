"""Launch a `dmt_fx.jobs.worker` job through torchrun, one agent per emulated host.

Each agent gets `--nnodes=H --node-rank=h --nproc-per-node=L`, so LOCAL_WORLD_SIZE and
the intra-host / cross-host groups are real. H and L are the topology's physical hosts
(`num_physical_hosts`, `ranks_per_host`): a fast domain wider than a host is launched as
several agents of `ranks_per_host` ranks each, and the ranks group into domains by
`Topology`, not by LOCAL_WORLD_SIZE. The launcher never waits forever: when an
agent fails, the others get `grace_s` to exit on their own (their workers see the broken
collective), then everything is killed; the whole job has a deadline too. An exception in
the launcher itself (Ctrl-C included) kills every agent before it propagates.

Optional hooks, used by `dmt-fx bench emulated` (defaults keep plain local agents):
`prefix(h)` is prepended to host h's agent command (e.g. `ip netns exec NS`),
`master_addr` is where the agents rendezvous, `host_env(h)` adds environment variables
for host h's agent and its workers, `module` is the module torchrun runs per rank.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

from dmt_fx.ir.topology import Topology


@dataclasses.dataclass
class LaunchResult:
    returncodes: list[int]
    seconds: float
    out_dir: str
    timed_out: bool
    unresponsive_ranks: list[int] = dataclasses.field(default_factory=list)  # stopped or hung ranks

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(code == 0 for code in self.returncodes)

    def ranks(self) -> list[dict]:
        files = sorted(glob.glob(os.path.join(self.out_dir, "rank*.json")),
                       key=lambda p: int(os.path.basename(p)[4:-5]))
        return [json.load(open(p)) for p in files]

    def log_tail(self, lines: int = 40) -> str:
        tails = []
        for path in sorted(glob.glob(os.path.join(self.out_dir, "agent*.log"))):
            with open(path, errors="replace") as handle:
                tails.append(f"== {os.path.basename(path)}\n" + "".join(handle.readlines()[-lines:]))
        return "\n".join(tails)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_command(topology: Topology, host: int, port: int, worker_args: Sequence[str], *,
                  master_addr: str = "127.0.0.1", module: str = "dmt_fx.jobs.worker",
                  prefix: Sequence[str] = ()) -> list[str]:
    return [*prefix, sys.executable, "-m", "torch.distributed.run", f"--nnodes={topology.num_physical_hosts}",
            f"--nproc-per-node={topology.ranks_per_host}", f"--node-rank={host}",
            f"--master-addr={master_addr}", f"--master-port={port}", "--max-restarts=0",
            "-m", module, *worker_args]


def launch(topology: Topology, worker_args: Sequence[str], out_dir: str, *, deadline_s: float = 600,
           grace_s: float = 60, on_poll: Callable[[], None] | None = None,
           prefix: Callable[[int], Sequence[str]] | None = None, master_addr: str = "127.0.0.1",
           host_env: Callable[[int], Mapping[str, str]] | None = None,
           module: str = "dmt_fx.jobs.worker") -> LaunchResult:
    """Start one agent per physical host, wait (bounded), return their exit codes. Logs: OUT/agent<h>.log."""
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, "pid_rank*")):
        os.remove(stale)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    agents: list[subprocess.Popen] = []
    try:
        for host in range(topology.num_physical_hosts):
            command = agent_command(topology, host, port, worker_args, master_addr=master_addr, module=module,
                                    prefix=prefix(host) if prefix is not None else ())
            with open(os.path.join(out_dir, f"agent{host}.log"), "w") as log:
                agents.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env={**env, **(host_env(host) if host_env else {})},
                                               start_new_session=True))
        start, first_failure, timed_out, unresponsive = time.monotonic(), None, False, set()
        while any(a.poll() is None for a in agents):
            now = time.monotonic()
            if first_failure is None and any(a.poll() not in (None, 0) for a in agents):
                first_failure = now
                unresponsive |= _ranks_in_state(out_dir, stopped_only=True)  # e.g. SIGSTOPped
            if now - start > deadline_s or (first_failure is not None and now - first_failure > grace_s):
                timed_out = now - start > deadline_s
                unresponsive |= _ranks_in_state(out_dir, stopped_only=False)  # still alive: hung
                _kill_all(agents)
                break
            if on_poll is not None:
                on_poll()
            time.sleep(0.2)
        codes = [a.wait() for a in agents]
    except BaseException:  # Ctrl-C, a failing on_poll, ...: leave no agent behind
        _kill_all(agents)
        for agent in agents:
            agent.wait()
        raise
    return LaunchResult(codes, time.monotonic() - start, out_dir, timed_out, sorted(unresponsive))


def _ranks_in_state(out_dir: str, *, stopped_only: bool) -> set[int]:
    """Ranks (from the workers' OUT/pid_rank<r> files) whose process is stopped, or alive."""
    found = set()
    for path in glob.glob(os.path.join(out_dir, "pid_rank*")):
        try:
            pid = int(open(path).read())
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rpartition(")")[2].split()[0]
        except (OSError, ValueError, IndexError):
            continue  # gone: it exited
        if state in ("T", "t") or (not stopped_only and state != "Z"):
            found.add(int(os.path.basename(path)[len("pid_rank"):]))
    return found


def _kill_all(agents: list[subprocess.Popen]) -> None:
    for agent in agents:
        if agent.poll() is None:
            try:
                os.killpg(agent.pid, signal.SIGKILL)  # the agent and its workers
            except ProcessLookupError:
                pass
