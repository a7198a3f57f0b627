"""Options shared by the compiler verbs (`diff`, `plan`): the target, the topology and the
transform's choices, and the transform they describe."""

from __future__ import annotations

import argparse
import contextlib
from typing import ContextManager

import torch.fx as fx
from rich.console import Console

from dmt_fx.cli.report import original_graph
from dmt_fx.compiler.partitioners import PARTITIONERS
from dmt_fx.compiler.tower_modules import TOWER_MODULES
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.registry import Registry
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.target import load_target

FORMATS = ("rich", "json")


def positive_int(text: str) -> int:
    """argparse type: a positive integer, else a usage error (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def registered(registry: Registry) -> str:
    """A help text's list of a registry's names, plus where more come from."""
    return f"{', '.join(registry.names())} or one TARGET registers"


RANKS_PER_HOST_HELP = ("torchrun ranks per host when a fast domain spans several hosts: --topology 2x2 "
                       "--ranks-per-host 1 is 2 domains of 2 ranks on 4 hosts of 1 rank (default: a host "
                       "is a whole domain)")


def add_ranks_per_host(parser: argparse.ArgumentParser) -> None:
    """--ranks-per-host: --topology then gives DOMAINSxRANKS_PER_DOMAIN (towers map to domains)."""
    parser.add_argument("--ranks-per-host", type=positive_int, default=None, metavar="R", help=RANKS_PER_HOST_HELP)


def topology_of(args: argparse.Namespace) -> Topology:
    """The parsed --topology with --ranks-per-host (when the verb has it)."""
    return Topology.parse(args.topology, ranks_per_host=getattr(args, "ranks_per_host", None))


TOWERS_PER_DOMAIN_HELP = ("towers per fast domain (host): the partitioner makes HOSTS x K towers, tower t on "
                          "domain t // K, each with its own tower module (default 1)")


def add_towers_per_domain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--towers-per-domain", type=positive_int, default=1, metavar="K", help=TOWERS_PER_DOMAIN_HELP)


def add_transform_options(parser: argparse.ArgumentParser) -> None:
    """TARGET, --topology, --format and every option of `dmt_fx.transform` the CLI exposes."""
    parser.add_argument("target", metavar="TARGET", help="pkg.module:factory or path/to/file.py:factory")
    parser.add_argument("--topology", required=True, help="HOSTSxRANKS_PER_HOST, e.g. 2x4")
    add_ranks_per_host(parser)
    parser.add_argument("--format", choices=FORMATS, default="rich", help="output format (default rich)")
    parser.add_argument("--plan", metavar="FILE", help="a JSON tower plan (from `dmt-fx plan --format json | jq .plan`)")
    # No argparse choices: TARGET may register its own kinds, and it is imported after parsing.
    # transform() checks the names against the registries and lists them when one is unknown.
    parser.add_argument("--partitioner", default=None, metavar="NAME",
                        help=f"how towers are chosen without --plan: {registered(PARTITIONERS)} "
                             "(default: user_towers for a model built of torchrec EmbeddingTowers, else "
                             "balanced; learned wants a trained model from TARGET)")
    parser.add_argument("--tower-module", default="identity", metavar="KIND",
                        help=f"per-tower module: {registered(TOWER_MODULES)} (default identity: the model "
                             "is unchanged)")
    parser.add_argument("--compression", type=positive_int, default=1,
                        help="with a compressing --tower-module: divide each tower's cross-host width by this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the learned / random partitioner")
    add_towers_per_domain(parser)


def transform_target(args: argparse.Namespace, keep_original: bool = False,
                     ) -> tuple[fx.GraphModule | None, fx.GraphModule]:
    """(the original graph when asked, the DMT graph) of TARGET under the parsed options."""
    topology = topology_of(args)  # before the (slow) model build: fail fast
    with progress(f"building {args.target}"):
        model, inputs = load_target(args.target)
    with progress(f"transforming for {topology}"):
        original = original_graph(model, inputs) if keep_original else None
        gm = transform(model, topology, example_inputs=inputs, plan=args.plan, partitioner=args.partitioner,
                       tower_module=args.tower_module, compression=args.compression, seed=args.seed,
                       towers_per_domain=args.towers_per_domain)
    return original, gm


def progress(what: str) -> ContextManager:
    """A spinner on stderr while a slow stage runs (tens of seconds at 10,000 features); nothing
    when stderr is not a terminal, so piped output and `--format json` stay clean."""
    err = Console(stderr=True)
    return err.status(f"{what} ...") if err.is_terminal else contextlib.nullcontext()
