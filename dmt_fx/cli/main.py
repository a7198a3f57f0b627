"""`dmt-fx`: inspect what the compiler does to a model, and run it, from the shell.

  dmt-fx diff TARGET --topology 2x4 [--format rich|json] [--plan FILE]       (cli/diff.py)
  dmt-fx plan TARGET --topology 2x4 [--format rich|json] [--batch-size N]     (cli/plan.py)
  dmt-fx run [TARGET] --topology 2x2 --steps N [--baseline NAME]             (cli/run.py)
  dmt-fx demo [TARGET] [--topology 2x2] [--steps 300]                        (cli/demo.py, the main job)
  dmt-fx bench traffic | emulated [--format json]                             (cli/bench.py)

TARGET is `pkg.module:factory` or `path/to/file.py:factory`. User errors (bad target,
topology, plan, model) print one `dmt-fx: error:` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dmt_fx.cli import bench, demo, diff, plan, run
from dmt_fx.ir.errors import DMTError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
VERBS = (diff, plan, run, demo, bench)  # each adds its sub-parser, in the order of `dmt-fx --help`


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except DMTError as err:
        print(f"dmt-fx: error: {' '.join(err.one_line().split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def parser() -> argparse.ArgumentParser:
    """The whole command line: one sub-parser per verb."""
    top = argparse.ArgumentParser(prog="dmt-fx", description="Inspect the DMT rewrite of a recommendation model.")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(verbs)
    return top


if __name__ == "__main__":
    sys.exit(main())
