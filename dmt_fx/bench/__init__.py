"""Benchmarks: exact traffic, the emulated two-tier network, the cost model."""

# `dmt_fx.bench:wide_model` is the documented name of the traffic benchmark's model.
from dmt_fx.models.wide import wide_model

__all__ = ["wide_model"]
