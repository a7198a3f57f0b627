"""Emulated hosts on one Linux machine: network namespaces on a bridge, links shaped with tc.

Each emulated host is a Linux network namespace `dmtfx-<pid>-h<h>` with one interface
`eth0` (198.18.0.<h+1>/24, the benchmarking range 198.18.0.0/15). The interfaces are veth
pairs whose other ends sit on a bridge in a switch namespace `dmtfx-<pid>-sw`; every link is
created inside these namespaces, nothing is added to or changed in the caller's namespace.
Cross-host links are shaped with `tc tbf` in both directions (host egress on `eth0`,
host ingress on the switch-side veth). Ranks of one host share its namespace: a packet to
a local address is delivered over the namespace's loopback, not through `eth0`, so
intra-host traffic is not shaped.

Cleanup: the namespaces are removed on exit, on failure, on SIGINT/SIGTERM/SIGHUP and at
interpreter exit; stale ones of dead runs are removed before a new cluster is set up.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Any, Sequence

from dmt_fx.ir.errors import DMTError

PREFIX = "dmtfx"
SUBNET = "198.18.0"  # inside 198.18.0.0/15 (RFC 2544 benchmarking range)
IFNAME = "eth0"
NETNS_ETC = "/etc/netns"  # per-namespace /etc overrides, mounted by `ip netns exec`

class EmulationError(DMTError):
    """The emulated cluster cannot be set up (not root, iproute2 missing, ...) or a run failed."""


# ---------------------------------------------------------------- requirements


def check_requirements() -> None:
    """Root, `ip` and `tc`; raise EmulationError with a one-line reason otherwise."""
    if sys.platform != "linux":
        raise EmulationError(f"platform {sys.platform}", "Linux (network namespaces)",
                             ["run the emulated benchmark on Linux"])
    if os.geteuid() != 0:
        raise EmulationError("not running as root", "root, to create network namespaces and shape links",
                             ["run it as root (e.g. sudo .venv/bin/dmt-fx bench emulated)"])
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise EmulationError(f"{' and '.join(missing)} not found", "iproute2 installed (ip, tc)",
                             ["apt-get install -y iproute2"])


# Qdiscs that could add delay (netem; fq and etf hold packets to a departure time), and
# the two rate limiters; `qdisc_inventory` records which this kernel has.
QDISCS = {"netem": ["netem", "delay", "1ms"], "fq": ["fq"], "etf": ["etf", "clockid", "CLOCK_TAI", "delta", "100000"],
          "tbf": ["tbf", "rate", "1mbit", "burst", "32kb", "latency", "10ms"], "htb": ["htb"]}


def qdisc_inventory() -> dict[str, bool]:
    """Which of `QDISCS` this kernel accepts (each tried on the loopback of a scratch namespace)."""
    ns = f"{PREFIX}-{os.getpid()}-qdisctest"
    found = dict.fromkeys(QDISCS, False)
    try:
        run_command(["ip", "netns", "add", ns])
        run_command(["ip", "-n", ns, "link", "set", "lo", "up"])
        for name, spec in QDISCS.items():
            probe = subprocess.run(["tc", "-n", ns, "qdisc", "replace", "dev", "lo", "root", *spec],
                                   capture_output=True, text=True)
            found[name] = probe.returncode == 0
    except EmulationError:
        pass
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return found


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (tried on a scratch namespace)."""
    return qdisc_inventory()["netem"]


def run_command(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise EmulationError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}",
                             "the command to succeed", ["check that you are root and iproute2 is installed"])
    return done.stdout



# ---------------------------------------------------------------- the emulated cluster


_LIVE: list["EmulatedCluster"] = []  # torn down at exit / on a signal


@dataclasses.dataclass
class EmulatedCluster:
    """H hosts (namespaces) on one bridge; `with EmulatedCluster(...) as c:` sets up and tears down."""

    num_hosts: int
    tag: str = dataclasses.field(default_factory=lambda: str(os.getpid()))
    created: list[str] = dataclasses.field(default_factory=list)  # namespaces, creation order
    files: list[str] = dataclasses.field(default_factory=list)  # /etc/netns/<ns> folders we wrote
    rate_bytes_per_s: float | None = None

    @property
    def switch(self) -> str:
        return f"{PREFIX}-{self.tag}-sw"

    def namespace(self, host: int) -> str:
        return f"{PREFIX}-{self.tag}-h{host}"

    @staticmethod
    def address(host: int) -> str:
        return f"{SUBNET}.{host + 1}"

    @staticmethod
    def switch_port(host: int) -> str:
        return f"vh{host}"

    def prefix(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host)]

    def host_env(self, host: int) -> dict[str, str]:
        return {"GLOO_SOCKET_IFNAME": IFNAME, "TP_SOCKET_IFNAME": IFNAME, "DMT_FX_EMULATED_HOST": str(host)}

    def setup(self) -> "EmulatedCluster":
        check_requirements()
        remove_stale()
        _LIVE.append(self)
        _install_signal_handlers()
        try:
            self._add_namespace(self.switch)
            run_command(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
            run_command(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            for h in range(self.num_hosts):
                ns, port = self.namespace(h), self.switch_port(h)
                self._add_namespace(ns)
                run_command(["ip", "-n", ns, "link", "set", "lo", "up"])
                self._name_files(ns)
                # created inside the switch namespace, the peer lands directly in the host's
                run_command(["ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", IFNAME,
                      "netns", ns])
                run_command(["ip", "-n", self.switch, "link", "set", port, "master", "br0"])
                run_command(["ip", "-n", self.switch, "link", "set", port, "up"])
                run_command(["ip", "-n", ns, "addr", "add", f"{self.address(h)}/24", "dev", IFNAME])
                run_command(["ip", "-n", ns, "link", "set", IFNAME, "up"])
        except BaseException:
            self.teardown()
            raise
        return self

    def _name_files(self, ns: str) -> None:
        """/etc/netns/NS/{hosts,resolv.conf}, which `ip netns exec` mounts over /etc inside NS only:
        the 198.18 addresses resolve locally, and DNS (unreachable from the namespace) fails fast
        on the namespace's loopback instead of timing out (c10d looks peers' names up)."""
        folder = os.path.join(NETNS_ETC, ns)
        os.makedirs(folder, exist_ok=True)
        self.files.append(folder)
        try:
            original = open("/etc/hosts").read()
        except OSError:
            original = "127.0.0.1 localhost\n"
        ours = "".join(f"{self.address(h)} {PREFIX}-h{h}\n" for h in range(self.num_hosts))
        with open(os.path.join(folder, "hosts"), "w") as handle:
            handle.write(original.rstrip("\n") + "\n" + ours)
        with open(os.path.join(folder, "resolv.conf"), "w") as handle:
            handle.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def _add_namespace(self, name: str) -> None:
        run_command(["ip", "netns", "add", name])
        self.created.append(name)

    def shape(self, rate_bytes_per_s: float) -> None:
        """tbf at `rate` on every host link, both directions (host eth0 and switch port egress)."""
        rate_bit = max(int(rate_bytes_per_s * 8), 8000)
        burst = max(64 * 1024, int(rate_bytes_per_s * 0.001))  # >= one 64 KiB GSO segment, 1 ms at rate
        for h in range(self.num_hosts):
            for ns, dev in ((self.namespace(h), IFNAME), (self.switch, self.switch_port(h))):
                run_command(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_bit}bit",
                      "burst", str(burst), "latency", "100ms"])
        self.rate_bytes_per_s = rate_bytes_per_s

    def qdiscs(self) -> list[str]:
        return [line for h in range(self.num_hosts)
                for line in run_command(["tc", "-n", self.namespace(h), "qdisc", "show", "dev", IFNAME]).splitlines()]

    def tx_bytes(self) -> list[int]:
        """Bytes each host sent through its cross-host interface so far."""
        out = []
        for h in range(self.num_hosts):
            data = json.loads(run_command(["ip", "-n", self.namespace(h), "-s", "-j", "link", "show", "dev", IFNAME]))
            out.append(int(data[0]["stats64"]["tx"]["bytes"]))
        return out

    def teardown(self) -> None:
        """Kill what still runs inside our namespaces (our own processes), delete the namespaces."""
        for ns in reversed(self.created):
            _kill_namespace_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()
        for folder in self.files:
            shutil.rmtree(folder, ignore_errors=True)
        self.files.clear()
        if self in _LIVE:
            _LIVE.remove(self)

    def __enter__(self) -> "EmulatedCluster":
        return self.setup()

    def __exit__(self, *exc: Any) -> None:
        self.teardown()


def _kill_namespace_pids(ns: str) -> None:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in done.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def our_namespaces() -> list[str]:
    """Every dmt_fx namespace present (any run)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in done.stdout.splitlines() if line.startswith(f"{PREFIX}-")]


def remove_stale() -> list[str]:
    """Delete dmt_fx namespaces left by runs whose process is gone (killed with SIGKILL)."""
    removed = []
    for ns in our_namespaces():
        match = re.match(rf"{PREFIX}-(\d+)-", ns)
        if match and not _alive(int(match.group(1))):
            _kill_namespace_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            removed.append(ns)
    for ns in os.listdir(NETNS_ETC) if os.path.isdir(NETNS_ETC) else []:
        match = re.match(rf"{PREFIX}-(\d+)-", ns)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(os.path.join(NETNS_ETC, ns), ignore_errors=True)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _teardown_all() -> None:
    for cluster in list(_LIVE):
        cluster.teardown()


_HANDLERS_INSTALLED = False


def _install_signal_handlers() -> None:
    """SIGTERM/SIGHUP become SystemExit (so `finally` and atexit run); SIGINT stays KeyboardInterrupt."""
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    atexit.register(_teardown_all)

    def handler(signum: int, frame: Any) -> None:
        _teardown_all()
        raise SystemExit(128 + signum)

    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)
    except ValueError:  # not the main thread: atexit and finally still clean up
        pass
    _HANDLERS_INSTALLED = True
