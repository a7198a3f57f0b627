"""`dmt-fx bench emulated`: flat TorchRec plans against DMT on emulated hosts with a slow network.

Each emulated host is a Linux network namespace `dmtfx-<pid>-h<h>` with one interface
`eth0` (198.18.0.<h+1>/24, the benchmarking range 198.18.0.0/15). The interfaces are veth
pairs whose other ends sit on a bridge in a switch namespace `dmtfx-<pid>-sw`; every link is
created inside these namespaces, nothing is added to or changed in the caller's namespace.
Cross-host links are shaped with `tc tbf` in both directions (host egress on `eth0`,
host ingress on the switch-side veth). Ranks of one host share its namespace: a packet to
a local address is delivered over the namespace's loopback, not through `eth0`, so
intra-host traffic is not shaped (the probe checks this: intra-host bandwidth with and
without shaping, and the bytes `eth0` sent during the intra-host phase).

One torchrun agent per host runs under `ip netns exec`, with GLOO_SOCKET_IFNAME=eth0 so that
gloo uses the host's 198.18 address, and rendezvous at 198.18.0.1.

Sequence: (1) set up the namespaces; (2) probe, unshaped: all_to_all_single among the ranks
of each host (intra-host bandwidth per rank) and among peers (cross-host); (3) shape every
host link to L x (intra-host bandwidth / ratio): one emulated NIC per rank at 1/ratio of the
intra-host bandwidth (an H100's NVLink against a 400 Gb/s NIC per GPU, roughly);
(4) probe again, shaped; (5) train every variant, median and IQR of the slowest rank's
step time after warm-up; (6) JSON and PNG; the namespaces are removed on exit, on failure,
on SIGINT/SIGTERM/SIGHUP and at interpreter exit; stale ones of dead runs are removed too.

`netem` is not available in every kernel (not on the machine this was built on): when it
is missing there is no added latency, only a rate limit, and the output says so.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology

PREFIX = "dmtfx"
SUBNET = "198.18.0"  # inside 198.18.0.0/15 (RFC 2544 benchmarking range)
IFNAME = "eth0"
NETNS_ETC = "/etc/netns"  # per-namespace /etc overrides, mounted by `ip netns exec`
FLAT_VARIANTS = ("flat-table_wise", "flat-row_wise", "flat-table_row_wise")
DEFAULT_VARIANTS = (*FLAT_VARIANTS, "dmt-identity", "dmt-c4")
MODEL_ENV = "DMT_FX_BENCH_MODEL"
TARGET = "dmt_fx.bench.emulated:bench_model"


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


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (tried on a dummy veth in a scratch namespace)."""
    ns = f"{PREFIX}-{os.getpid()}-netemtest"
    try:
        _cmd(["ip", "netns", "add", ns])
        _cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        probe = subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                               capture_output=True, text=True)
        return probe.returncode == 0
    except EmulationError:
        return False
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _cmd(argv: Sequence[str]) -> str:
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
            _cmd(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
            _cmd(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            for h in range(self.num_hosts):
                ns, port = self.namespace(h), self.switch_port(h)
                self._add_namespace(ns)
                _cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
                self._name_files(ns)
                # created inside the switch namespace, the peer lands directly in the host's
                _cmd(["ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", IFNAME,
                      "netns", ns])
                _cmd(["ip", "-n", self.switch, "link", "set", port, "master", "br0"])
                _cmd(["ip", "-n", self.switch, "link", "set", port, "up"])
                _cmd(["ip", "-n", ns, "addr", "add", f"{self.address(h)}/24", "dev", IFNAME])
                _cmd(["ip", "-n", ns, "link", "set", IFNAME, "up"])
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
        _cmd(["ip", "netns", "add", name])
        self.created.append(name)

    def shape(self, rate_bytes_per_s: float) -> None:
        """tbf at `rate` on every host link, both directions (host eth0 and switch port egress)."""
        rate_bit = max(int(rate_bytes_per_s * 8), 8000)
        burst = max(64 * 1024, int(rate_bytes_per_s * 0.001))  # >= one 64 KiB GSO segment, 1 ms at rate
        for h in range(self.num_hosts):
            for ns, dev in ((self.namespace(h), IFNAME), (self.switch, self.switch_port(h))):
                _cmd(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_bit}bit",
                      "burst", str(burst), "latency", "100ms"])
        self.rate_bytes_per_s = rate_bytes_per_s

    def unshape(self) -> None:
        for h in range(self.num_hosts):
            for ns, dev in ((self.namespace(h), IFNAME), (self.switch, self.switch_port(h))):
                subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True)
        self.rate_bytes_per_s = None

    def qdiscs(self) -> list[str]:
        return [line for h in range(self.num_hosts)
                for line in _cmd(["tc", "-n", self.namespace(h), "qdisc", "show", "dev", IFNAME]).splitlines()]

    def tx_bytes(self) -> list[int]:
        """Bytes each host sent through its cross-host interface so far."""
        out = []
        for h in range(self.num_hosts):
            data = json.loads(_cmd(["ip", "-n", self.namespace(h), "-s", "-j", "link", "show", "dev", IFNAME]))
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


# ---------------------------------------------------------------- the benchmark model


def model_config() -> dict[str, int]:
    """Model size from DMT_FX_BENCH_MODEL="tables=16,dim=64,rows=10000" (the launcher sets it)."""
    config = {"tables": 16, "dim": 64, "rows": 10_000, "ids": 2}
    for item in filter(None, os.environ.get(MODEL_ENV, "").split(",")):
        key, _, value = item.partition("=")
        config[key.strip()] = int(value)
    return config


def _keys(config: dict[str, int]) -> list[str]:
    return [f"f{i}" for i in range(config["tables"])]


def bench_model(seed: int = 0):
    """A TorchRec DLRM with `tables` tables of `rows` x `dim`, one feature each."""
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.models.dlrm import DLRM

    config = model_config()
    torch.manual_seed(seed)
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=config["dim"], num_embeddings=config["rows"],
                                 feature_names=[key]) for i, key in enumerate(_keys(config))]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=13,
                 dense_arch_layer_sizes=[64, config["dim"]], over_arch_layer_sizes=[128, 64, 1])
    return model, make_inputs(16, seed)


def make_inputs(batch_size: int, seed: int):
    import torch
    from torchrec import KeyedJaggedTensor

    config = model_config()
    keys = _keys(config)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 2 * config["ids"] + 1, (len(keys) * batch_size,), generator=g)
    total = int(lengths.sum())
    ids = (torch.rand(total, generator=g) ** 2 * config["rows"]).long()
    kjt = KeyedJaggedTensor.from_lengths_sync(keys, ids, lengths)
    return torch.randn(batch_size, 13, generator=g), kjt


# ---------------------------------------------------------------- the bandwidth probe


def _probe_main(argv: Sequence[str]) -> int:
    """One rank of the probe (run by torchrun inside the namespaces)."""
    import torch
    import torch.distributed as dist

    p = argparse.ArgumentParser(prog="dmt_fx.bench.emulated probe")
    p.add_argument("--topology", required=True)
    p.add_argument("--bytes", type=int, default=8 << 20)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--cross-iters", type=int, default=4)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    topology = Topology.parse(args.topology)
    H, L = topology.num_hosts, topology.local_world_size
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    host, local = divmod(rank, L)
    intra = [dist.new_group([h * L + l for l in range(L)]) for h in range(H)][host]
    peer = [dist.new_group([h * L + l for h in range(H)]) for l in range(L)][local]
    counter = f"/sys/class/net/{os.environ.get('GLOO_SOCKET_IFNAME', IFNAME)}/statistics/tx_bytes"

    def tx() -> int:
        try:
            return int(open(counter).read())
        except OSError:
            return 0

    results = {}
    for phase, group, n, iters in (("intra", intra, L, args.iters), ("cross", peer, H, args.cross_iters)):
        if n < 2:
            continue
        numel = (args.bytes // 4) // n * n
        send, recv = torch.ones(numel), torch.empty(numel)
        dist.all_to_all_single(recv, send, group=group)  # warm-up: connections
        dist.barrier()
        before = tx()
        seconds = torch.zeros(iters)
        for i in range(iters):  # one timed all-to-all at a time, started together
            dist.barrier(group=group)
            start = time.perf_counter()
            dist.all_to_all_single(recv, send, group=group)
            seconds[i] = time.perf_counter() - start
        after = tx()
        dist.barrier()
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the slowest member of each call
        median = float(seconds.median())
        veth = torch.tensor([float(after - before) if local == 0 else 0.0])
        dist.all_reduce(veth)
        sent = numel * 4 * (n - 1) / n
        results[phase] = {"group_size": n, "bytes_sent_per_rank": sent, "seconds_median": median,
                          "seconds": seconds.tolist(), "bandwidth_bytes_per_s": sent / median,
                          "eth0_tx_bytes_all_hosts": veth.item() / iters,
                          "payload_cross_host_bytes_all_hosts": (sent * H * L if phase == "cross" else 0.0)}
    if rank == 0:
        with open(os.path.join(args.out, "probe.json"), "w") as handle:
            json.dump(results, handle)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def probe(cluster: EmulatedCluster, topology: Topology, out_dir: str, *, nbytes: int = 8 << 20,
          iters: int = 12, cross_iters: int = 4, deadline_s: float = 120) -> dict[str, Any]:
    from dmt_fx.jobs.launch import launch

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "probe.json")
    if os.path.exists(path):
        os.remove(path)
    result = launch(topology, ["probe", "--topology", str(topology), "--bytes", str(nbytes), "--iters", str(iters),
                               "--cross-iters", str(cross_iters), "--out", out_dir], out_dir,
                    deadline_s=deadline_s, grace_s=20, prefix=cluster.prefix, master_addr=cluster.address(0),
                    host_env=cluster.host_env, module="dmt_fx.bench.emulated")
    if not result.ok or not os.path.exists(path):
        raise EmulationError(f"the bandwidth probe failed (exit codes {result.returncodes}, "
                             f"timed out: {result.timed_out}):\n{result.log_tail(15)}",
                             "the probe to run inside the namespaces", [f"read {out_dir}/agent*.log"])
    return json.load(open(path))


# ---------------------------------------------------------------- the benchmark


_RATE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(bit|b/s|bps|B/s|B)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """'800mbit', '100MB/s', '1.5gbit', '50000000' (bytes/s) -> bytes per second."""
    match = _RATE.match(text)
    if not match:
        raise EmulationError(f"inter-host rate {text!r}", "a rate like 800mbit, 100MB/s or a number of bytes/s",
                             ["e.g. --inter-host-rate 800mbit"])
    value, scale, unit = float(match.group(1)), match.group(2).lower(), (match.group(3) or "B")
    value *= {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[scale]
    if unit.lower() in ("bit", "bps"):
        value /= 8
    if value <= 0:
        raise EmulationError(f"inter-host rate {text!r}", "a positive rate", ["e.g. --inter-host-rate 800mbit"])
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dmt-fx bench emulated`."""
    parser.add_argument("--topology", default="2x2", help="HOSTSxRANKS_PER_HOST (default 2x2)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated variants (default {','.join(DEFAULT_VARIANTS)}); the best "
                             "flat-* is reported as 'best flat'")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant after warm-up (>= 20 "
                        "for the report; default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps left out (default 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="local batch per rank (default 256)")
    parser.add_argument("--tables", type=int, default=16, help="model size: embedding tables, one feature "
                        "each (default 16)")
    parser.add_argument("--embedding-dim", type=int, default=64, help="model size: embedding dim (default 64)")
    parser.add_argument("--rows", type=int, default=10_000, help="model size: rows per table (default 10000)")
    parser.add_argument("--inter-host-rate", default=None,
                        help="per-rank (per emulated NIC) inter-host rate, e.g. 800mbit or 100MB/s; "
                             "default: measured intra-host all-to-all bandwidth / --ratio")
    parser.add_argument("--ratio", type=float, default=20.0,
                        help="intra-host / inter-host bandwidth when --inter-host-rate is not given (default 20)")
    parser.add_argument("--out", default="results", help="writes OUT/emulated.json, OUT/emulated.png and "
                        "the run logs under OUT/emulated/ (default results)")
    parser.add_argument("--deadline-s", type=float, default=540, help="stop the training runs after this "
                        "long (default 540)")


def _worker_has_variants() -> bool:
    from dmt_fx.jobs.runs import worker

    try:
        worker.parse_args(["--target", "x", "--topology", "1x1", "--out", "x", "--variants", "a"])
        return True
    except SystemExit:
        return False


def run(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The whole benchmark; returns one record per (topology, variant); writes JSON and PNG."""
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    topology = Topology.parse(args.topology)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise EmulationError("no variants", "at least one variant", ["e.g. --variants flat-table_wise,dmt-c4"])
    for name, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--tables", args.tables),
                        ("--embedding-dim", args.embedding_dim), ("--rows", args.rows), ("--ratio", args.ratio)):
        if not value > 0:
            raise EmulationError(f"{name} {value}", f"{name} > 0", [f"pass a positive {name}"])
    if topology.num_hosts < 2:
        raise EmulationError(f"topology {topology}", "at least 2 hosts (the inter-host link is what is emulated)",
                             ["e.g. --topology 2x2"])
    rate_override = parse_rate(args.inter_host_rate) if args.inter_host_rate else None
    check_requirements()
    started = time.monotonic()
    work = os.path.join(args.out, "emulated")
    os.makedirs(work, exist_ok=True)
    netem = netem_available()
    model = {"tables": args.tables, "dim": args.embedding_dim, "rows": args.rows}
    L = topology.local_world_size
    with EmulatedCluster(topology.num_hosts) as cluster:
        say(f"emulated cluster {topology}: namespaces {', '.join(cluster.created)}")
        unshaped = probe(cluster, topology, os.path.join(work, "probe-unshaped"))
        intra = unshaped.get("intra", {}).get("bandwidth_bytes_per_s")
        cross_unshaped = unshaped["cross"]["bandwidth_bytes_per_s"]
        reference = intra if intra else cross_unshaped  # Hx1: no intra-host group, use the unshaped link
        per_rank_rate = rate_override or reference / args.ratio
        link_rate = per_rank_rate * L  # one emulated NIC per rank, all of a host's NICs share its link
        say(f"intra-host all-to-all: {_fmt(intra)} per rank; inter-host rate {_fmt(per_rank_rate)} per rank "
            f"({_fmt(link_rate)} per host link, tbf)")
        cluster.shape(link_rate)
        shaped = probe(cluster, topology, os.path.join(work, "probe-shaped"))
        say(f"shaped: intra-host {_fmt(shaped.get('intra', {}).get('bandwidth_bytes_per_s'))}, "
            f"cross-host {_fmt(shaped['cross']['bandwidth_bytes_per_s'])} per rank")
        runs = _train_all(cluster, topology, variants, args, model, work, say,
                          deadline_s=max(30.0, args.deadline_s - (time.monotonic() - started)))
        qdiscs = cluster.qdiscs()
    network = {
        "topology": str(topology), "namespaces": "removed", "subnet": f"{SUBNET}.0/24 (198.18.0.0/15)",
        "intra_host_bandwidth_bytes_per_s": intra, "cross_host_unshaped_bandwidth_bytes_per_s": cross_unshaped,
        "intra_host_bandwidth_shaped_run_bytes_per_s": shaped.get("intra", {}).get("bandwidth_bytes_per_s"),
        "cross_host_shaped_bandwidth_bytes_per_s": shaped["cross"]["bandwidth_bytes_per_s"],
        "intra_phase_eth0_tx_bytes_per_iter": shaped.get("intra", {}).get("eth0_tx_bytes_all_hosts"),
        "intra_phase_payload_bytes_per_iter": (shaped.get("intra", {}).get("bytes_sent_per_rank", 0)
                                               * topology.world_size),
        "inter_host_rate_bytes_per_s_per_rank": per_rank_rate, "inter_host_link_rate_bytes_per_s": link_rate,
        "rate_source": "--inter-host-rate" if rate_override else f"intra-host bandwidth / {args.ratio:g}",
        "ratio": args.ratio, "shaping": "tc tbf on both directions of every host link", "qdiscs": qdiscs,
        "delay_emulation": ("netem available but not used: rate limit only" if netem else
                            "none: the netem qdisc is not available on this kernel, so no latency is added "
                            "(rate limit only)"),
        "probes": {"unshaped": unshaped, "shaped": shaped},
    }
    records = _records(runs, topology, variants, network, model, args)
    report = {"network": network, "model": model, "batch_size": args.batch_size, "steps": args.steps,
              "warmup": args.warmup, "records": records, "wall_s": time.monotonic() - started}
    with open(os.path.join(args.out, "emulated.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    plot(records, os.path.join(args.out, "emulated.png"), network)
    return records


def _train_all(cluster: EmulatedCluster, topology: Topology, variants: list[str], args: argparse.Namespace,
               model: dict[str, int], work: str, say: Callable[[str], None], *,
               deadline_s: float) -> dict[str, dict[str, Any]]:
    """Train every variant; per variant: its LaunchResult-like summary and eth0 bytes."""
    from dmt_fx.jobs.launch import LaunchResult, launch

    model_env = ",".join(f"{k}={v}" for k, v in model.items())

    def env(host: int) -> dict[str, str]:
        return {**cluster.host_env(host), MODEL_ENV: model_env}

    common = ["--target", TARGET, "--topology", str(topology), "--steps", str(args.steps + args.warmup),
              "--batch-size", str(args.batch_size), "--lr", "0.05", "--optimizer", "adagrad",
              "--warmup", str(args.warmup), "--timeout-s", "120"]
    launch_kw = dict(prefix=cluster.prefix, master_addr=cluster.address(0), host_env=env, grace_s=30)
    runs: dict[str, dict[str, Any]] = {}
    start = time.monotonic()
    if _worker_has_variants():  # one launch for all variants
        out = os.path.join(work, "train")
        _clear(out, variants)
        marks = {"_start": cluster.tx_bytes()}

        def poll() -> None:  # eth0 counters when a variant's result files appear
            for v in variants:
                if v not in marks and len(_rank_files(os.path.join(out, v))) == topology.world_size:
                    marks[v] = cluster.tx_bytes()
                    say(f"  {v} done ({time.monotonic() - start:.0f} s)")

        say(f"training {', '.join(variants)} in one launch ({args.warmup} + {args.steps} steps each)")
        result = launch(topology, [*common, "--variants", ",".join(variants), "--out", out], out,
                        deadline_s=deadline_s, on_poll=poll, **launch_kw)
        poll()
        _check(result, "the training launch")
        previous = marks["_start"]
        for v in variants:
            after = marks.get(v, cluster.tx_bytes())
            runs[v] = {"result": LaunchResult(result.returncodes, result.seconds, os.path.join(out, v), False),
                       "eth0_tx_bytes": sum(after) - sum(previous)}
            previous = after
        return runs
    for v in variants:  # the worker trains one variant per launch
        out = os.path.join(work, "train", v)
        _clear(out, ())
        before = cluster.tx_bytes()
        say(f"training {v} ({args.warmup} + {args.steps} steps)")
        left = deadline_s - (time.monotonic() - start)
        result = launch(topology, [*common, "--variant", v, "--out", out], out, deadline_s=max(left, 10),
                        **launch_kw)
        _check(result, f"the {v} run")
        runs[v] = {"result": result, "eth0_tx_bytes": sum(cluster.tx_bytes()) - sum(before)}
    return runs


def _rank_files(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if re.fullmatch(r"rank\d+\.json", n)] if os.path.isdir(folder) else []


def _clear(out: str, variants: Sequence[str]) -> None:
    for folder in [out, *(os.path.join(out, v) for v in variants)]:
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.startswith(("rank", "progress", "outputs_rank")):
                os.remove(os.path.join(folder, name))


def _check(result: Any, what: str) -> None:
    if not result.ok:
        reason = "timed out" if result.timed_out else f"exit codes {result.returncodes}"
        raise EmulationError(f"{what} failed ({reason}); logs in {result.out_dir}/agent*.log:\n"
                             f"{result.log_tail(12)}", "every rank to finish its steps",
                             ["read the agent logs", "try fewer --steps, a smaller --batch-size or model"])


def _records(runs: dict[str, dict[str, Any]], topology: Topology, variants: list[str], network: dict,
             model: dict, args: argparse.Namespace) -> list[dict[str, Any]]:
    from dmt_fx.jobs.runs import summarize

    rows = []
    for v in variants:
        row = summarize(v, runs[v]["result"], warmup=args.warmup)
        ranks = runs[v]["result"].ranks()
        times = [max(r["step_times_s"][i] for r in ranks) for i in range(len(ranks[0]["step_times_s"]))]
        timed = times[args.warmup:]
        steps_total = len(times)
        rows.append({
            "topology": str(topology), "variant": v,
            "cross_host_id_bytes": row["cross_host_id_bytes"],
            "cross_host_embedding_bytes": row["cross_host_embedding_bytes"],
            "cross_host_messages": row["cross_host_messages"], "intra_host_bytes": row["intra_host_bytes"],
            "step_time_median_s": row["step_time_median_s"], "step_time_iqr_s": row["step_time_iqr_s"],
            "step_time_q1_s": _quartiles(timed)[0], "step_time_q3_s": _quartiles(timed)[2],
            "timed_steps": len(timed), "warmup_steps": args.warmup,
            "intra_host_bandwidth_bytes_per_s": network["intra_host_bandwidth_bytes_per_s"],
            "inter_host_rate_bytes_per_s": network["inter_host_rate_bytes_per_s_per_rank"],
            "inter_host_link_rate_bytes_per_s": network["inter_host_link_rate_bytes_per_s"],
            # all bytes the hosts' eth0 sent during the variant (setup included: rank 0's weight
            # broadcast, DDP, rendezvous), per step: an upper bound check on the metered bytes
            "eth0_tx_bytes_per_step_incl_setup": runs[v]["eth0_tx_bytes"] / max(steps_total, 1),
            "metered_cross_host_bytes_per_step": (row["cross_host_id_bytes"] + row["cross_host_embedding_bytes"])
                                                 * topology.world_size,
            "dense_allreduce_bytes_estimate": row["dense_allreduce_bytes_estimate"],
            "first_loss": row["first_loss"], "final_loss": row["final_loss"],
            "model": model, "batch_size": args.batch_size, "delay_emulation": network["delay_emulation"],
        })
    flats = [r for r in rows if r["variant"].startswith("flat-")]
    best = min(flats, key=lambda r: r["step_time_median_s"]) if flats else None
    for r in rows:
        r["best_flat"] = best["variant"] if best else None
        r["is_best_flat"] = r is best
        r["speedup_vs_best_flat"] = (best["step_time_median_s"] / r["step_time_median_s"]
                                     if best and r["step_time_median_s"] > 0 else None)
    return rows


def _quartiles(values: list[float]) -> list[float]:
    return statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3 if values else [0.0] * 3


def _fmt(bytes_per_s: float | None) -> str:
    if not bytes_per_s:
        return "n/a"
    return f"{bytes_per_s / 1e6:.1f} MB/s ({bytes_per_s * 8 / 1e9:.2f} Gbit/s)"


def plot(records: list[dict[str, Any]], path: str, network: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] + (" (best flat)" if r["is_best_flat"] else "") for r in records]
    medians = [r["step_time_median_s"] * 1e3 for r in records]
    low = [max(0.0, (r["step_time_median_s"] - r["step_time_q1_s"]) * 1e3) for r in records]
    high = [max(0.0, (r["step_time_q3_s"] - r["step_time_median_s"]) * 1e3) for r in records]
    colors = ["tab:blue" if r["variant"].startswith("flat-") else "tab:orange" for r in records]
    fig, ax = plt.subplots(figsize=(1.6 * len(records) + 3, 4.5))
    ax.bar(range(len(records)), medians, yerr=[low, high], capsize=5, color=colors)
    for i, r in enumerate(records):
        if r["speedup_vs_best_flat"] and not r["variant"].startswith("flat-"):
            ax.annotate(f"{r['speedup_vs_best_flat']:.2f}x", (i, medians[i] + high[i]), ha="center",
                        va="bottom")
    ax.set_xticks(range(len(records)), names, rotation=20, ha="right")
    ax.set_ylabel("median step time, slowest rank (ms); bars: IQR")
    ax.set_title(f"{network['topology']} emulated hosts; inter-host {_fmt(network['inter_host_rate_bytes_per_s_per_rank'])}"
                 f" per rank, intra {_fmt(network['intra_host_bandwidth_bytes_per_s'])}\n"
                 f"delay emulation: {'none (no netem)' if 'none' in network['delay_emulation'] else 'no'}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dmt_fx.bench.emulated probe ...` (a probe rank) or `python -m dmt_fx.bench.emulated [options]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["probe"]:
        return _probe_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m dmt_fx.bench.emulated")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        records = run(args)
    except DMTError as err:
        print(f"dmt-fx: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
