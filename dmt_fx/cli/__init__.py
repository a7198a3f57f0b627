"""The `dmt-fx` command line: one module per verb, one console and formatters."""

from dmt_fx.cli.main import main

__all__ = ["main"]
