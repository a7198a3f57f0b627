"""The exit soak: launch the user-style job (`tests/harness/user_job.py`) many times under a
competing CPU load and time every rank's exit from its last step.

A rank still alive `limit_s` after its last collective counts as a hang: its stacks are
taken with gdb when gdb is there (the known race shows `~ProcessGroupGloo` on the main
thread), then the launch's agents and workers are killed (`launch` kills their process
groups when the poll raises). `python tests/harness/exit_soak.py N [--finish user|shutdown]`
prints the counts; the tests call `soak`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from dmt_fx import Topology  # noqa: E402
from dmt_fx.jobs.launch import launch  # noqa: E402


class Hang(Exception):
    """A rank outlived its last step by more than the limit."""


@dataclasses.dataclass
class SoakResult:
    launches: int = 0
    hangs: int = 0
    slow_exits: int = 0  # ranks that exited, but later than the limit after their last step
    failures: int = 0  # a launch that failed otherwise (non-zero exit, no last step)
    exit_delays_s: list[float] = dataclasses.field(default_factory=list)  # every rank of every clean launch
    bare_exit_s: list[float] = dataclasses.field(default_factory=list)  # teardown alone, before and after
    stacks: list[str] = dataclasses.field(default_factory=list)  # of the hung ranks


@contextlib.contextmanager
def cpu_load(processes: int | None = None) -> Iterator[None]:
    """Busy loops competing with the job for every core, stopped afterwards."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(processes or os.cpu_count() or 1)]
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and stat.rpartition(")")[2].split()[0] != "Z"


def _cpu_ticks(pid: int) -> int:
    """utime + stime of the process, all threads (0 when gone)."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split() if stat else []
    return int(fields[11]) + int(fields[12]) if len(fields) > 12 else 0


def bare_exit_s() -> float:
    """Seconds a process that imported torch, torchrec and dmt_fx takes to exit, here and now:
    what interpreter teardown alone costs on this machine under its present load."""
    code = "import time, torch, torchrec, dmt_fx; print(repr(time.time()), flush=True)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    stamp = float(child.stdout.readline())
    child.wait()
    return time.time() - stamp


def _stacks(pid: int) -> str:
    if shutil.which("gdb") is None:
        return f"pid {pid}: (no gdb for stacks)"
    run = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 12"],
                         capture_output=True, text=True, timeout=120)
    return f"pid {pid}:\n" + "\n".join(l for l in run.stdout.splitlines() if l.startswith(("#", "Thread")))


class ExitWatch:
    """launch's poll: records each rank's exit delay. A rank alive `limit_s` after its last
    step is watched: if it then uses no CPU for `idle_s` (a deadlock does not; a slow exit
    on a loaded machine does) or is still alive at `hang_s`, its stacks are taken and Hang
    is raised."""

    def __init__(self, out: str, world: int, limit_s: float, hang_s: float, idle_s: float = 5.0) -> None:
        self.out, self.world, self.limit_s, self.hang_s, self.idle_s = out, world, limit_s, hang_s, idle_s
        self.delays: dict[int, float] = {}
        self.stacks: dict[int, str] = {}
        self.cpu: dict[int, tuple[int, float]] = {}  # rank -> (CPU ticks, when they last moved)

    def __call__(self) -> None:
        now = time.time()
        for rank in range(self.world):
            last, pid = _read(f"{self.out}/last_step_rank{rank}"), _read(f"{self.out}/pid_rank{rank}")
            if last is None or pid is None or rank in self.delays:
                continue
            if not _alive(int(pid)):
                self.delays[rank] = now - float(last)
            elif now - float(last) > self.limit_s:
                self._check(rank, int(pid), now, now - float(last))

    def _check(self, rank: int, pid: int, now: float, waited: float) -> None:
        ticks = _cpu_ticks(pid)
        seen, since = self.cpu.get(rank, (-1, now))
        if ticks != seen:
            self.cpu[rank] = (ticks, now)
        elif now - since > self.idle_s or waited > self.hang_s:
            self.stacks[rank] = _stacks(pid)
            raise Hang(f"rank {rank} alive {waited:.1f} s after its last step, no CPU used for "
                       f"{now - since:.1f} s")
        if waited > self.hang_s:
            self.stacks[rank] = _stacks(pid)
            raise Hang(f"rank {rank} alive {waited:.1f} s after its last step")


def soak(launches: int, *, finish: str = "user", limit_s: float = 10.0, hang_s: float = 60.0, load: bool = True,
         workdir: str | None = None, log=print) -> SoakResult:
    """`launches` runs of the user job on 2x2; each rank must exit within `limit_s` of its last step."""
    result, topology = SoakResult(), Topology(2, 2)
    base = workdir or tempfile.mkdtemp(prefix="dmt_soak_")
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path  # the agents' workers import tests.harness.user_job and examples
    try:
        with cpu_load() if load else contextlib.nullcontext():
            result.bare_exit_s.append(bare_exit_s())
            for number in range(launches):
                out = os.path.join(base, f"launch{number}")
                os.makedirs(out, exist_ok=True)
                watch = ExitWatch(out, topology.world_size, limit_s, hang_s)
                try:
                    run = launch(topology, ["--out", out, "--finish", finish], out, module="tests.harness.user_job",
                                 deadline_s=600, grace_s=30, on_poll=watch)
                except Hang as hang:
                    result.hangs += 1
                    result.stacks.append(f"launch {number}: {hang}\n" + "\n".join(watch.stacks.values()))
                    log(f"launch {number}: HANG: {hang}")
                else:
                    watch()  # the ranks that exited since the last poll
                    if not run.ok or len(watch.delays) != topology.world_size:
                        result.failures += 1
                        log(f"launch {number}: FAILED {run.returncodes}\n{run.log_tail(20)}")
                    else:
                        result.exit_delays_s += watch.delays.values()
                        result.slow_exits += sum(d > limit_s for d in watch.delays.values())
                        log(f"launch {number}: ok, slowest exit {max(watch.delays.values()):.2f} s")
                result.launches += 1
            if launches > 1:  # and once more at the end of a long soak (the load may have changed)
                result.bare_exit_s.append(bare_exit_s())
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
    return result


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a kill runs the cleanup: no busy loop left
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 13
    mode = sys.argv[sys.argv.index("--finish") + 1] if "--finish" in sys.argv else "user"
    outcome = soak(count, finish=mode, load="--no-load" not in sys.argv)
    delays = outcome.exit_delays_s
    print(f"launches {outcome.launches}, hangs {outcome.hangs}, slow exits {outcome.slow_exits}, "
          f"other failures {outcome.failures}, "
          f"slowest exit {max(delays) if delays else float('nan'):.2f} s, "
          f"median {sorted(delays)[len(delays) // 2] if delays else float('nan'):.2f} s; "
          f"bare torch process exit {', '.join(f'{b:.2f}' for b in outcome.bare_exit_s)} s")
    for stack in outcome.stacks:
        print(stack)
